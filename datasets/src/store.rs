//! A node's datasets on disk: writing a delivered batch as Parquet files,
//! compacting small files, applying retention.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::NaiveDate;
use polars::prelude::{
    col, Column, DataFrame, DataType, Int64Chunked, IntoColumn, IntoSeries, NamedFrom,
    NewChunkedArray, ParquetCompression, ParquetWriter, PolarsError, Series, SortMultipleOptions,
    StatisticsOptions, TimeUnit, UniqueKeepStrategy,
};
use thiserror::Error;

use crate::definition::{Cell, ColumnType, Dataset, Row, ID_COLUMN, TIME_COLUMN};
use crate::files::{self, DataFile, FileName, Level, TEMPORARY_PREFIX};

/// Files of one level in one partition that start a compaction.
pub const COMPACT_AT_FILES: usize = 16;
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("dataset files: {0}")]
    Io(#[from] std::io::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] PolarsError),
}

/// What one maintenance pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub compacted_files: usize,
    pub deleted_files: usize,
    pub deleted_bytes: u64,
}

/// Sizes of a dataset on one node.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DatasetStats {
    pub files: usize,
    pub bytes: u64,
    /// Day partitions, oldest first (`YYYY-MM-DD`).
    pub partitions: Vec<String>,
}

/// Every dataset of one node, under `<data dir>/datasets/<name>/`.
pub struct Datasets {
    root: PathBuf,
    node: u64,
    /// Per dataset: the highest outbox sequence number any of its files
    /// holds, once known (a batch starting past it needs no check for rows
    /// written before a crash).
    written: Mutex<HashMap<String, u64>>,
    /// Compaction and retention run for one dataset at a time.
    maintaining: Mutex<()>,
}

impl Datasets {
    pub fn new(root: PathBuf, node: u64) -> Datasets {
        Datasets {
            root,
            node,
            written: Mutex::new(HashMap::new()),
            maintaining: Mutex::new(()),
        }
    }

    pub fn dir(&self, dataset: &str) -> PathBuf {
        self.root.join(dataset)
    }

    /// The files a query reads: every file not covered by a compacted one.
    pub fn live_files(&self, dataset: &str) -> Result<Vec<DataFile>, DatasetError> {
        let (files, _) = files::list(&self.dir(dataset))?;
        Ok(files::split_covered(files).0)
    }

    pub fn stats(&self, dataset: &str) -> Result<DatasetStats, DatasetError> {
        let files = self.live_files(dataset)?;
        let mut partitions: Vec<String> = files.iter().map(|f| f.date.clone()).collect();
        partitions.dedup();
        Ok(DatasetStats {
            files: files.len(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            partitions,
        })
    }

    /// Write the rows of one delivered batch (outbox entries `first` to
    /// `last`; a row per entry that became one): a file per day partition.
    /// Rows a file already holds (a batch replayed after a crash) are
    /// skipped. Returns how many rows were written.
    pub fn write(
        &self,
        dataset: &Dataset,
        first: u64,
        last: u64,
        rows: Vec<(u64, Row)>,
    ) -> Result<usize, DatasetError> {
        let dir = self.dir(&dataset.name);
        // Only this node's files say what this node wrote: sequence
        // numbers are its outbox's (files copied from another node hold
        // numbers of that node's outbox).
        let own_files = || -> Result<Vec<DataFile>, DatasetError> {
            let (files, _) = files::list(&dir)?;
            Ok(files
                .into_iter()
                .filter(|f| f.name.node == self.node)
                .collect())
        };
        // The directory is listed at most once: for the high-water mark
        // after a start, and for the files of a replayed batch.
        let mut listed = None;
        let written = match self.lock_written().get(&dataset.name).copied() {
            Some(high) => high,
            None => {
                let files = own_files()?;
                let high = files.iter().map(|f| f.name.last).max().unwrap_or(0);
                listed = Some(files);
                high
            }
        };
        let mut partitions: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        let existing = match (first <= written, listed) {
            (false, _) => Vec::new(),
            (true, Some(files)) => files,
            (true, None) => own_files()?,
        };
        for (seq, row) in rows {
            let date = row.date();
            if existing.iter().any(|f| f.date == date && f.name.holds(seq)) {
                continue;
            }
            partitions.entry(date).or_default().push(row);
        }
        let mut count = 0;
        for (date, rows) in &partitions {
            let name = FileName {
                level: Level::Part,
                node: self.node,
                first,
                last,
            };
            let written = frame(dataset, rows)
                .and_then(|mut frame| write_file(&dir, date, &name, &mut frame));
            if let Err(e) = written {
                // Some days may have their file: the batch comes again, and
                // the next write lists the files to skip what they hold.
                self.lock_written().remove(&dataset.name);
                return Err(e);
            }
            count += rows.len();
        }
        self.lock_written()
            .insert(dataset.name.clone(), written.max(last));
        Ok(count)
    }

    fn lock_written(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delete what an interrupted write or compaction left, compact
    /// partitions with many small files, and apply retention.
    pub fn maintain(
        &self,
        dataset: &Dataset,
        today: NaiveDate,
    ) -> Result<Maintenance, DatasetError> {
        let _one_at_a_time = self.maintaining.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.dir(&dataset.name);
        let mut done = Maintenance::default();
        let (files, temporary) = files::list(&dir)?;
        for path in temporary {
            remove(&path, &mut done)?;
        }
        let (live, covered) = files::split_covered(files);
        for file in covered {
            remove(&file.path, &mut done)?;
        }
        let mut groups: BTreeMap<(String, Level), Vec<DataFile>> = BTreeMap::new();
        for file in live.into_iter().filter(|f| f.name.node == self.node) {
            groups
                .entry((file.date.clone(), file.name.level))
                .or_default()
                .push(file);
        }
        for ((date, _), group) in groups {
            if group.len() >= COMPACT_AT_FILES {
                compact(&dir, &date, self.node, &group)?;
                done.compacted_files += group.len();
                for file in &group {
                    remove(&file.path, &mut done)?;
                }
            }
        }
        self.apply_retention(dataset, today, &mut done)?;
        Ok(done)
    }

    fn apply_retention(
        &self,
        dataset: &Dataset,
        today: NaiveDate,
        done: &mut Maintenance,
    ) -> Result<(), DatasetError> {
        let retention = &dataset.retention;
        if retention.max_age_days.is_none() && retention.max_bytes.is_none() {
            return Ok(());
        }
        let (files, _) = files::list(&self.dir(&dataset.name))?;
        let mut kept = Vec::new();
        for file in files {
            let age = NaiveDate::parse_from_str(&file.date, "%Y-%m-%d")
                .map(|date| (today - date).num_days())
                .unwrap_or(0);
            match retention.max_age_days {
                Some(days) if age > i64::from(days) => remove(&file.path, done)?,
                _ => kept.push(file),
            }
        }
        if let Some(max_bytes) = retention.max_bytes {
            let mut total: u64 = kept.iter().map(|f| f.bytes).sum();
            // Oldest partition first, and within it the oldest rows first.
            for file in kept {
                if total <= max_bytes {
                    break;
                }
                total -= file.bytes;
                remove(&file.path, done)?;
            }
        }
        Ok(())
    }
}

fn remove(path: &Path, done: &mut Maintenance) -> Result<(), DatasetError> {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match std::fs::remove_file(path) {
        Ok(()) => {
            done.deleted_files += 1;
            done.deleted_bytes += bytes;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Merge a partition's files into one compacted file (rows sorted by
/// time, duplicates of a message id dropped). The inputs are deleted by
/// the caller after the new file is in place; until then it covers them.
fn compact(dir: &Path, date: &str, node: u64, group: &[DataFile]) -> Result<(), DatasetError> {
    let name = FileName {
        level: Level::Compacted,
        node,
        first: group.iter().map(|f| f.name.first).min().unwrap_or(0),
        last: group.iter().map(|f| f.name.last).max().unwrap_or(0),
    };
    let paths: Vec<PathBuf> = group.iter().map(|f| f.path.clone()).collect();
    let mut frame = crate::run::scan_files(&paths)?
        .unique_stable(
            Some(polars::prelude::cols([ID_COLUMN])),
            UniqueKeepStrategy::First,
        )
        .sort_by_exprs(
            vec![col(TIME_COLUMN)],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .collect()?;
    write_file(dir, date, &name, &mut frame)
}

/// Write a file into its partition: to a temporary name, synced, then
/// renamed into place (and the directory synced), so a reader never sees
/// half a file and a crash leaves the whole file or none.
fn write_file(
    dir: &Path,
    date: &str,
    name: &FileName,
    frame: &mut DataFrame,
) -> Result<(), DatasetError> {
    let partition = files::partition_dir(dir, date);
    shoal_durable::create_dir_all(&partition)?;
    let final_path = partition.join(name.render());
    let temporary = partition.join(format!("{TEMPORARY_PREFIX}{}", name.render()));
    let mut file = File::create(&temporary)?;
    ParquetWriter::new(&mut file)
        .with_compression(ParquetCompression::Zstd(None))
        .with_statistics(StatisticsOptions::full())
        .with_row_group_size(Some(ROW_GROUP_ROWS))
        .finish(frame)?;
    file.sync_all()?;
    shoal_durable::rename(&temporary, &final_path)?;
    Ok(())
}

/// Rows as a table: `_id`, `_time`, then the dataset's columns.
pub fn frame(dataset: &Dataset, rows: &[Row]) -> Result<DataFrame, DatasetError> {
    let mut columns: Vec<Column> = Vec::with_capacity(dataset.columns.len() + 2);
    columns.push(
        Series::new(
            ID_COLUMN.into(),
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        )
        .into_column(),
    );
    columns.push(micros_column(
        TIME_COLUMN,
        rows.iter().map(|r| Some(r.time)),
    )?);
    for (i, column) in dataset.columns.iter().enumerate() {
        let cells = rows.iter().map(|r| r.cells.get(i).unwrap_or(&Cell::Null));
        let name = column.name.as_str();
        let built = match column.kind {
            ColumnType::String | ColumnType::Json => Series::new(
                name.into(),
                cells
                    .map(|c| match c {
                        Cell::Text(text) => Some(text.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
            .into_column(),
            ColumnType::Int64 => Series::new(
                name.into(),
                cells
                    .map(|c| match c {
                        Cell::Int(n) => Some(*n),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
            .into_column(),
            ColumnType::Float64 => Series::new(
                name.into(),
                cells
                    .map(|c| match c {
                        Cell::Float(f) => Some(*f),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
            .into_column(),
            ColumnType::Bool => Series::new(
                name.into(),
                cells
                    .map(|c| match c {
                        Cell::Bool(b) => Some(*b),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
            .into_column(),
            ColumnType::Timestamp => micros_column(
                name,
                cells.map(|c| match c {
                    Cell::Micros(t) => Some(*t),
                    _ => None,
                }),
            )?,
        };
        columns.push(built);
    }
    Ok(DataFrame::new_infer_height(columns)?)
}

fn micros_column(
    name: &str,
    values: impl Iterator<Item = Option<i64>>,
) -> Result<Column, DatasetError> {
    let ints = Int64Chunked::from_iter_options(name.into(), values);
    Ok(ints
        .into_series()
        .cast(&DataType::Datetime(TimeUnit::Microseconds, None))?
        .into_column())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn dataset() -> Dataset {
        serde_json::from_value::<Dataset>(json!({"columns": [
            {"name": "order_id", "type": "string", "from": "/data/id"},
            {"name": "total", "type": "float64", "from": "/data/total"}],
            "retention": {"max_age_days": 30}}))
        .expect("definition")
        .validate("orders")
        .expect("valid")
    }

    fn row(dataset: &Dataset, id: &str, time: &str, total: f64) -> Row {
        dataset
            .row(&json!({"id": id, "time": time, "data": {"id": id, "total": total}}))
            .expect("row")
    }

    /// Rows `a` (2026-12-04), `b` and `c` (2026-12-05), totals 1, 2 and 3.
    fn rows_over_two_days(dataset: &Dataset) -> [Row; 3] {
        [
            row(dataset, "a", "2026-12-04T23:00:00Z", 1.0),
            row(dataset, "b", "2026-12-05T01:00:00Z", 2.0),
            row(dataset, "c", "2026-12-05T02:00:00Z", 3.0),
        ]
    }

    /// The paths of the files a query over `dataset` reads.
    pub(crate) fn live_paths(store: &Datasets, dataset: &str) -> Vec<PathBuf> {
        store
            .live_files(dataset)
            .expect("files")
            .into_iter()
            .map(|f| f.path)
            .collect()
    }

    fn rows_of(store: &Datasets) -> Vec<(String, f64)> {
        let frame = crate::run::scan_files(&live_paths(store, "orders"))
            .expect("scan")
            .sort_by_exprs(vec![col(ID_COLUMN)], SortMultipleOptions::default())
            .collect()
            .expect("collect");
        let ids = frame
            .column(ID_COLUMN)
            .expect("ids")
            .str()
            .expect("str")
            .clone();
        let totals = frame
            .column("total")
            .expect("totals")
            .f64()
            .expect("f64")
            .clone();
        ids.iter()
            .zip(totals.iter())
            .map(|(id, total)| {
                (
                    id.unwrap_or_default().to_string(),
                    total.unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn a_replayed_batch_adds_only_the_rows_no_file_holds() {
        let temp = tempfile::tempdir().expect("temp");
        let dataset = dataset();
        let store = Datasets::new(temp.path().to_path_buf(), 1);
        let [a, b, c] = rows_over_two_days(&dataset);
        // A batch of entries 10-11 is written, then the node "crashes"
        // before the outbox forgets them; after the restart (a new store,
        // nothing in memory) the batch comes again with entry 12 behind it.
        assert_eq!(
            store
                .write(&dataset, 10, 11, vec![(10, a.clone()), (11, b.clone())])
                .expect("write"),
            2
        );
        let restarted = Datasets::new(temp.path().to_path_buf(), 1);
        assert_eq!(
            restarted
                .write(&dataset, 10, 12, vec![(10, a), (11, b), (12, c)])
                .expect("write"),
            1
        );
        assert_eq!(
            rows_of(&restarted),
            vec![("a".into(), 1.0), ("b".into(), 2.0), ("c".into(), 3.0)]
        );
    }

    #[test]
    fn a_batch_that_failed_half_way_is_not_written_twice() {
        let temp = tempfile::tempdir().expect("temp");
        let dataset = dataset();
        let store = Datasets::new(temp.path().to_path_buf(), 1);
        let [a, b, c] = rows_over_two_days(&dataset);
        let earlier = row(&dataset, "0", "2026-12-04T22:00:00Z", 0.5);
        store
            .write(&dataset, 5, 5, vec![(5, earlier)])
            .expect("an earlier batch");
        // The second day's directory cannot be made: the batch fails after
        // the first day's file was written.
        let blocked = files::partition_dir(&store.dir("orders"), "2026-12-05");
        std::fs::create_dir_all(store.dir("orders")).expect("dataset dir");
        std::fs::write(&blocked, b"").expect("blocker");
        let failed = store.write(&dataset, 10, 11, vec![(10, a.clone()), (11, b.clone())]);
        assert!(failed.is_err(), "the blocked day was written: {failed:?}");
        // The outbox delivers the batch again, with an entry more behind it.
        std::fs::remove_file(&blocked).expect("unblock");
        store
            .write(&dataset, 10, 12, vec![(10, a), (11, b), (12, c)])
            .expect("write");
        assert_eq!(
            rows_of(&store),
            vec![
                ("0".into(), 0.5),
                ("a".into(), 1.0),
                ("b".into(), 2.0),
                ("c".into(), 3.0)
            ]
        );
    }

    #[test]
    fn files_of_another_node_do_not_hide_this_nodes_rows() {
        let temp = tempfile::tempdir().expect("temp");
        let dataset = dataset();
        let other = Datasets::new(temp.path().to_path_buf(), 2);
        let a = row(&dataset, "a", "2026-12-05T01:00:00Z", 1.0);
        other.write(&dataset, 1, 100, vec![(5, a)]).expect("write");
        let store = Datasets::new(temp.path().to_path_buf(), 1);
        let b = row(&dataset, "b", "2026-12-05T02:00:00Z", 2.0);
        assert_eq!(store.write(&dataset, 5, 5, vec![(5, b)]).expect("write"), 1);
        assert_eq!(rows_of(&store).len(), 2);
    }

    #[test]
    fn compaction_merges_small_files_and_drops_duplicate_ids() {
        let temp = tempfile::tempdir().expect("temp");
        let dataset = dataset();
        let store = Datasets::new(temp.path().to_path_buf(), 1);
        for seq in 1..=COMPACT_AT_FILES as u64 {
            let id = format!("m{:02}", seq.min(15));
            let r = row(&dataset, &id, "2026-12-05T01:00:00Z", seq as f64);
            store
                .write(&dataset, seq, seq, vec![(seq, r)])
                .expect("write");
        }
        let today = NaiveDate::from_ymd_opt(2026, 12, 5).expect("date");
        let done = store.maintain(&dataset, today).expect("maintain");
        assert_eq!(done.compacted_files, COMPACT_AT_FILES);
        let files = store.live_files("orders").expect("files");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name.level, Level::Compacted);
        let rows = rows_of(&store);
        assert_eq!(rows.len(), 15, "{rows:?}");
        assert_eq!(rows[14], ("m15".into(), 15.0));
        // A later replay of entries the compacted file holds adds nothing.
        let again = row(&dataset, "m03", "2026-12-05T01:00:00Z", 3.0);
        assert_eq!(
            store
                .write(&dataset, 3, 3, vec![(3, again)])
                .expect("write"),
            0
        );
    }

    #[test]
    fn an_interrupted_compaction_leaves_no_duplicate_for_queries() {
        let temp = tempfile::tempdir().expect("temp");
        let dataset = dataset();
        let store = Datasets::new(temp.path().to_path_buf(), 1);
        let mut group = Vec::new();
        for seq in 1..=3u64 {
            let r = row(&dataset, &format!("m{seq}"), "2026-12-05T01:00:00Z", 1.0);
            store
                .write(&dataset, seq, seq, vec![(seq, r)])
                .expect("write");
        }
        group.extend(store.live_files("orders").expect("files"));
        // The compacted file is in place; the inputs were not deleted yet.
        compact(&store.dir("orders"), "2026-12-05", 1, &group).expect("compact");
        assert_eq!(store.live_files("orders").expect("files").len(), 1);
        assert_eq!(rows_of(&store).len(), 3);
        std::fs::write(
            files::partition_dir(&store.dir("orders"), "2026-12-05")
                .join(".tmp-part-1-9-9.parquet"),
            b"half",
        )
        .expect("temporary");
        let today = NaiveDate::from_ymd_opt(2026, 12, 5).expect("date");
        let done = store.maintain(&dataset, today).expect("maintain");
        assert_eq!(done.deleted_files, 4);
    }

    #[test]
    fn retention_deletes_old_partitions_then_the_oldest_files_past_the_size() {
        let temp = tempfile::tempdir().expect("temp");
        let mut dataset = dataset();
        let store = Datasets::new(temp.path().to_path_buf(), 1);
        for (seq, time) in [
            (1, "2026-10-01T00:00:00Z"),
            (2, "2026-12-01T00:00:00Z"),
            (3, "2026-12-04T00:00:00Z"),
            (4, "2026-12-05T00:00:00Z"),
        ] {
            let r = row(&dataset, &format!("m{seq}"), time, 1.0);
            store
                .write(&dataset, seq, seq, vec![(seq, r)])
                .expect("write");
        }
        let today = NaiveDate::from_ymd_opt(2026, 12, 5).expect("date");
        store.maintain(&dataset, today).expect("maintain");
        assert_eq!(
            store.stats("orders").expect("stats").partitions,
            vec!["2026-12-01", "2026-12-04", "2026-12-05"]
        );
        let one_file = store.live_files("orders").expect("files")[0].bytes;
        dataset.retention.max_bytes = Some(one_file * 2);
        store.maintain(&dataset, today).expect("maintain");
        assert_eq!(
            store.stats("orders").expect("stats").partitions,
            vec!["2026-12-04", "2026-12-05"]
        );
    }
}
