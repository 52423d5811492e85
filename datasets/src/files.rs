//! A dataset's files on one node: `<dir>/date=YYYY-MM-DD/<file>.parquet`.
//!
//! A file's name says which outbox entries it holds: `part-<node>-<first>-<last>`
//! for the rows of one delivered batch (outbox sequence numbers `first` to
//! `last`), `compacted-<node>-<first>-<last>` for a merge of such files.
//! So a node knows after a crash what it wrote already (a batch replayed
//! from the outbox skips the rows a file in their partition holds), and a
//! file that a compacted one covers (a compaction interrupted before it
//! deleted its inputs) is left out of queries and deleted.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

/// Where a new file is written before it is renamed into place. Readers
/// that list the directory (DuckDB, Spark) skip names starting with `.`.
pub const TEMPORARY_PREFIX: &str = ".tmp-";
const PARTITION_PREFIX: &str = "date=";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Part,
    Compacted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileName {
    pub level: Level,
    pub node: u64,
    pub first: u64,
    pub last: u64,
}

impl FileName {
    pub fn parse(name: &str) -> Option<FileName> {
        let stem = name.strip_suffix(".parquet")?;
        let (level, rest) = if let Some(rest) = stem.strip_prefix("part-") {
            (Level::Part, rest)
        } else {
            (Level::Compacted, stem.strip_prefix("compacted-")?)
        };
        let mut numbers = rest.split('-').map(str::parse::<u64>);
        let (Some(Ok(node)), Some(Ok(first)), Some(Ok(last)), None) = (
            numbers.next(),
            numbers.next(),
            numbers.next(),
            numbers.next(),
        ) else {
            return None;
        };
        (first <= last).then_some(FileName {
            level,
            node,
            first,
            last,
        })
    }

    pub fn render(&self) -> String {
        let level = match self.level {
            Level::Part => "part",
            Level::Compacted => "compacted",
        };
        // Zero-padded so names sort in the order the rows were written.
        format!(
            "{level}-{}-{:020}-{:020}.parquet",
            self.node, self.first, self.last
        )
    }

    /// Whether this (compacted) file holds every row of `other`.
    fn covers(&self, other: &FileName) -> bool {
        self.level == Level::Compacted
            && self.node == other.node
            && self.first <= other.first
            && other.last <= self.last
            && self != other
    }

    pub fn holds(&self, seq: u64) -> bool {
        self.first <= seq && seq <= self.last
    }
}

/// One file of a dataset.
#[derive(Clone, Debug)]
pub struct DataFile {
    /// The day partition, `YYYY-MM-DD`.
    pub date: String,
    pub name: FileName,
    pub path: PathBuf,
    pub bytes: u64,
}

pub fn partition_dir(dir: &Path, date: &str) -> PathBuf {
    dir.join(format!("{PARTITION_PREFIX}{date}"))
}

/// Every file of the dataset in `dir` (none if it does not exist), oldest
/// partition first, and within one in name order. Temporary files are
/// returned separately (they are left by a write or compaction that did
/// not finish).
pub fn list(dir: &Path) -> std::io::Result<(Vec<DataFile>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut temporary = Vec::new();
    let partitions = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((files, temporary)),
        Err(e) => return Err(e),
    };
    for partition in partitions {
        let partition = partition?;
        let Some(date) = partition
            .file_name()
            .to_str()
            .and_then(|name| name.strip_prefix(PARTITION_PREFIX))
            .filter(|date| NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok())
            .map(str::to_string)
        else {
            continue;
        };
        for file in std::fs::read_dir(partition.path())? {
            let file = file?;
            let file_name = file.file_name();
            let Some(text) = file_name.to_str() else {
                continue;
            };
            if text.starts_with(TEMPORARY_PREFIX) {
                temporary.push(file.path());
                continue;
            }
            let Some(name) = FileName::parse(text) else {
                continue;
            };
            files.push(DataFile {
                date: date.clone(),
                name,
                path: file.path(),
                bytes: file.metadata()?.len(),
            });
        }
    }
    files.sort_by(|a, b| (&a.date, a.name.render()).cmp(&(&b.date, b.name.render())));
    Ok((files, temporary))
}

/// Split files into the live ones and the ones a compacted file in the
/// same partition covers.
pub fn split_covered(files: Vec<DataFile>) -> (Vec<DataFile>, Vec<DataFile>) {
    let compacted: Vec<(String, FileName)> = files
        .iter()
        .filter(|f| f.name.level == Level::Compacted)
        .map(|f| (f.date.clone(), f.name))
        .collect();
    files.into_iter().partition(|file| {
        !compacted
            .iter()
            .any(|(date, name)| *date == file.date && name.covers(&file.name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_write_order() {
        let name = FileName {
            level: Level::Part,
            node: 3,
            first: 9,
            last: 120,
        };
        assert_eq!(FileName::parse(&name.render()), Some(name));
        assert!(name.render() < FileName { first: 10, ..name }.render());
        for bad in [
            "part-1-2.parquet",
            "part-1-5-4.parquet",
            "part-a-1-2.parquet",
            "x-1-1-2.parquet",
            "part-1-1-2-3.parquet",
        ] {
            assert_eq!(FileName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_compacted_file_hides_the_files_it_covers_in_its_partition() {
        let file = |date: &str, level, first, last| DataFile {
            date: date.into(),
            name: FileName {
                level,
                node: 1,
                first,
                last,
            },
            path: PathBuf::new(),
            bytes: 0,
        };
        let (live, covered) = split_covered(vec![
            file("2026-12-01", Level::Part, 1, 5),
            file("2026-12-01", Level::Part, 6, 9),
            file("2026-12-01", Level::Part, 10, 12),
            file("2026-12-01", Level::Compacted, 1, 9),
            file("2026-12-02", Level::Part, 6, 9),
        ]);
        let names = |files: &[DataFile]| {
            files
                .iter()
                .map(|f| (f.date.clone(), f.name.first))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&live),
            vec![
                ("2026-12-01".into(), 10),
                ("2026-12-01".into(), 1),
                ("2026-12-02".into(), 6)
            ]
        );
        assert_eq!(
            names(&covered),
            vec![("2026-12-01".into(), 1), ("2026-12-01".into(), 6)]
        );
    }
}
