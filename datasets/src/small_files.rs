//! A node's small files read whole, each by a reader of its own, several
//! at once. Polars' streaming scan spends about a quarter of a millisecond
//! of CPU on each file it opens (its tasks, a metadata fetch, a memory
//! map), more than reading a file of a few thousand rows costs; a
//! dataset's day partitions on each node of a cluster hold such files.
//! Large files stay on the streaming scan, which skips their row groups
//! by the filter. Small files are read in batches of bounded bytes, and
//! each batch goes through the node's part of the query on its own, so
//! memory stays bounded too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use polars::prelude::{Column, DataFrame, ParallelStrategy, ParquetReader, PolarsError, SerReader};

use crate::definition::{Dataset, DATE_COLUMN, TIME_COLUMN};
use crate::query::{invalid, QueryError};

/// Files of at most this many bytes are read whole.
pub const SMALL_FILE_BYTES: u64 = 512 << 10;
/// Most bytes of small files (on disk) read into memory at once.
pub const BATCH_BYTES: u64 = 128 << 20;

/// Files to read together.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// Small files, read whole.
    Small(Vec<PathBuf>),
    /// Files for Polars' streaming scan (none: the dataset's empty table).
    Scanned(Vec<PathBuf>),
}

/// `files` in batches: the small ones in batches of at most `batch_bytes`
/// ([`BATCH_BYTES`] but in tests), then the others (always one batch, so
/// that no files still gives the table its columns).
pub fn batches(files: &[PathBuf], batch_bytes: u64) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut small = Vec::new();
    let mut small_bytes = 0;
    let mut scanned = Vec::new();
    for path in files {
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() <= SMALL_FILE_BYTES => {
                if small_bytes + meta.len() > batch_bytes && !small.is_empty() {
                    batches.push(Batch::Small(std::mem::take(&mut small)));
                    small_bytes = 0;
                }
                small_bytes += meta.len();
                small.push(path.clone());
            }
            // Large, or unreadable: the scan reports what it cannot read.
            _ => scanned.push(path.clone()),
        }
    }
    if !small.is_empty() {
        batches.push(Batch::Small(small));
    }
    if !scanned.is_empty() || batches.is_empty() {
        batches.push(Batch::Scanned(scanned));
    }
    batches
}

/// The rows of `files`, one file after another: the stored columns of
/// `columns` (`date` comes from `_time`, which is always read: every file
/// has it, so a file's rows are all there even when it has none of the
/// other columns). A column a file lacks (written before the definition
/// gained it) is NULL.
pub fn read(
    dataset: &Dataset,
    files: &[PathBuf],
    columns: &[String],
) -> Result<DataFrame, QueryError> {
    let empty = crate::store::frame(dataset, &[]).map_err(|e| invalid(e.to_string()))?;
    let mut stored: Vec<&str> = columns
        .iter()
        .map(String::as_str)
        .filter(|c| *c != DATE_COLUMN)
        .collect();
    if !stored.contains(&TIME_COLUMN) {
        stored.push(TIME_COLUMN);
    }
    let mut read = Vec::with_capacity(stored.len());
    for name in stored {
        let column = empty
            .column(name)
            .map_err(|_| invalid(format!("{} has no column {name}", dataset.name)))?;
        read.push(column.clone());
    }
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(files.len())
        .max(1);
    let done = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = files.get(i) else {
                            return done;
                        };
                        done.push((i, read_file(path, &read)));
                    }
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|reader| reader.join())
            .collect::<Vec<_>>()
    });
    let mut frames: Vec<Option<DataFrame>> = vec![None; files.len()];
    for reader in done {
        let done = reader.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        for (i, frame) in done {
            frames[i] = Some(frame?);
        }
    }
    let mut frames = frames.into_iter().flatten();
    let Some(mut table) = frames.next() else {
        return Ok(empty.select(read.iter().map(|c| c.name().clone()))?);
    };
    for frame in frames {
        table.vstack_mut_owned(frame)?;
    }
    Ok(table)
}

/// One file's rows: the columns of `read` (its names and types), in that
/// order.
fn read_file(path: &Path, read: &[Column]) -> Result<DataFrame, PolarsError> {
    let file = std::fs::File::open(path)?;
    let mut reader = ParquetReader::new(file).read_parallel(ParallelStrategy::None);
    let schema = reader.schema()?;
    let present: Vec<String> = read
        .iter()
        .filter(|c| schema.contains(c.name()))
        .map(|c| c.name().to_string())
        .collect();
    let frame = reader.with_columns(Some(present)).finish()?;
    let height = frame.height();
    let mut columns = Vec::with_capacity(read.len());
    for column in read {
        columns.push(match frame.column(column.name()) {
            Ok(found) => found.clone(),
            Err(_) => Column::full_null(column.name().clone(), height, column.dtype()),
        });
    }
    DataFrame::new(height, columns)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::query::tests::datasets;
    use crate::store::tests::live_paths;
    use crate::store::Datasets;

    #[test]
    fn small_files_are_batched_by_bytes_and_large_ones_scanned() {
        let temp = tempfile::tempdir().expect("temp");
        let file = |name: &str, bytes: u64| {
            let path = temp.path().join(name);
            std::fs::File::create(&path)
                .and_then(|f| f.set_len(bytes))
                .expect("file");
            path
        };
        let a = file("a", 600);
        let b = file("b", 500);
        let large = file("large", SMALL_FILE_BYTES + 1);
        let c = file("c", 100);
        let gone = temp.path().join("gone");
        let files = [a.clone(), b.clone(), large.clone(), c.clone(), gone.clone()];
        assert_eq!(
            batches(&files, 1000),
            vec![
                Batch::Small(vec![a.clone()]),
                Batch::Small(vec![b.clone(), c.clone()]),
                Batch::Scanned(vec![large, gone]),
            ]
        );
        // A file past the budget alone is still a batch of its own.
        assert_eq!(
            batches(&[a.clone(), b.clone()], 100),
            vec![Batch::Small(vec![a]), Batch::Small(vec![b])]
        );
        assert_eq!(batches(&[], 1000), vec![Batch::Scanned(Vec::new())]);
    }

    #[test]
    fn a_column_a_file_lacks_reads_as_null_and_files_keep_their_order() {
        let temp = tempfile::tempdir().expect("temp");
        let datasets = datasets();
        let before = &datasets["orders"];
        // The definition gained a column after the first file.
        let mut after = before.clone();
        after.columns.push(
            serde_json::from_value(
                json!({"name": "country", "type": "string", "from": "/data/country"}),
            )
            .expect("column"),
        );
        let store = Datasets::new(temp.path().to_path_buf(), 1);
        let row = |dataset: &Dataset, id: &str, time: &str| {
            dataset
                .row(&json!({"id": id, "time": time,
                    "data": {"id": id, "customer": "c", "total": 1.0, "country": "NL"}}))
                .expect("row")
        };
        store
            .write(
                before,
                1,
                1,
                vec![(1, row(before, "a", "2026-12-04T10:00:00Z"))],
            )
            .expect("write");
        store
            .write(
                &after,
                2,
                2,
                vec![(2, row(&after, "b", "2026-12-05T10:00:00Z"))],
            )
            .expect("write");
        let files = live_paths(&store, "orders");
        assert_eq!(files.len(), 2);
        let columns = ["order_id", "country", "date"].map(String::from);
        let frame = read(&after, &files, &columns).expect("read");
        let mut frame = frame;
        let csv = crate::ipc::encode(&mut frame, crate::Format::Csv).expect("csv");
        assert_eq!(
            String::from_utf8(csv).expect("utf-8"),
            "order_id,country,_time\n\
             a,,2026-12-04T10:00:00.000000\n\
             b,NL,2026-12-05T10:00:00.000000\n"
        );
        let unknown = read(&after, &files, &["nope".to_string()]);
        assert!(
            matches!(&unknown, Err(QueryError::Invalid(e)) if e.contains("nope")),
            "{unknown:?}"
        );
    }
}
