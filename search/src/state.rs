//! What the log engine (`engine.rs`) and its indexer thread (`indexer.rs`)
//! both use: the configuration and the state they share. Both depend on
//! this module and neither on the other's internals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tantivy::schema::Schema;

use crate::index::{Fields, Partition};

/// How long records are kept: by age, and by size per stream.
#[derive(Clone, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes_per_stream: u64,
    /// Per-stream overrides of the above.
    pub streams: BTreeMap<String, (Option<Duration>, Option<u64>)>,
}

impl Retention {
    pub(crate) fn for_stream(&self, stream: &str) -> (Duration, u64) {
        let (age, bytes) = self.streams.get(stream).cloned().unwrap_or((None, None));
        (
            age.unwrap_or(self.max_age),
            bytes.unwrap_or(self.max_bytes_per_stream),
        )
    }
}

/// Hard caps: past one of them ingest answers "busy" instead of growing.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes of WAL not yet removed after commits.
    pub wal_bytes: u64,
    /// Bytes of acknowledged records not yet added to an index.
    pub indexing_bytes: u64,
    /// Bytes of indexes plus WAL on disk.
    pub disk_bytes: u64,
    /// Memory of one partition's index writer.
    pub writer_bytes: usize,
    /// Most streams with records on the node, its own (reserved) streams
    /// not counted (each is a directory of daily indexes and a label value
    /// of the stream metrics).
    pub streams: usize,
}

/// The names of the streams that hold records, and of those that are
/// never refused for the cap (the node's own streams).
#[derive(Default)]
pub(crate) struct StreamNames {
    pub known: BTreeSet<String>,
    pub reserved: BTreeSet<String>,
}

impl StreamNames {
    /// The streams that count against the cap (the reserved ones do not).
    pub fn counted(&self) -> usize {
        self.known
            .iter()
            .filter(|known| !self.reserved.contains(*known))
            .count()
    }

    pub fn publish_count(&self) {
        metrics::gauge!("shoal_logs_streams").set(self.counted() as f64);
    }
}

#[derive(Clone, Debug)]
pub struct LogsConfig {
    pub dir: PathBuf,
    pub node_id: u64,
    pub commit_interval: Duration,
    pub retention: Retention,
    pub limits: Limits,
}

pub(crate) type Partitions = RwLock<BTreeMap<(String, i64), Arc<Partition>>>;

impl Shared {
    pub fn stream_names(&self) -> std::sync::MutexGuard<'_, StreamNames> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What `Logs` handles and the indexer thread share.
pub(crate) struct Shared {
    pub config: LogsConfig,
    pub schema: Schema,
    pub fields: Fields,
    pub partitions: Partitions,
    /// Acknowledged bytes not yet committed (searchable).
    pub indexing_bytes: AtomicU64,
    /// Bytes of all partitions, refreshed by retention.
    pub index_bytes: AtomicU64,
    /// The highest record seq that is committed (searchable).
    pub searchable_seq: AtomicU64,
    /// Odd while a commit pass makes records searchable partition by
    /// partition: `searchable_seq` is behind what searches see until it ends.
    pub commit_epoch: AtomicU64,
    /// Set while the file system holding the node's data is nearly full
    /// (see [`crate::Logs::set_disk_low`]).
    pub disk_low: AtomicBool,
    pub streams: Mutex<StreamNames>,
}
