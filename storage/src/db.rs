use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::error::StorageError;

/// Raft log entries, keyed by index (big-endian u64).
pub(crate) const CF_LOG: &str = "raft_log";
/// Raft vote, committed log id, last purged log id.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Current key/value pairs: key bytes -> KeyValue.
pub(crate) const CF_KV: &str = "kv";
/// Change history: revision (big-endian u64) -> ChangeBatch.
pub(crate) const CF_EVENTS: &str = "events";
/// Per-key history index: key ++ 0x00 ++ revision -> empty.
pub(crate) const CF_KEY_REVS: &str = "key_revs";
/// Leases: id (big-endian u64) -> Lease.
pub(crate) const CF_LEASES: &str = "leases";
/// Keys attached to a lease: id ++ key -> empty.
pub(crate) const CF_LEASE_KEYS: &str = "lease_keys";
/// State machine counters and the applied Raft position.
pub(crate) const CF_SM_META: &str = "sm_meta";
/// Recently applied proposal ids: id -> encoded Response (for retried proposals).
pub(crate) const CF_REQUESTS: &str = "requests";
/// The same ids in time order, for pruning: at_ms ++ id -> empty.
pub(crate) const CF_REQUEST_LOG: &str = "request_log";

/// Messages waiting for a durable destination (webhook, Kafka):
/// destination ++ 0x00 ++ seq -> encoded entry; plus the next seq under `NEXT_SEQ`.
pub(crate) const CF_OUTBOX: &str = "outbox";
/// Messages whose retries ran out, keyed like the outbox.
pub(crate) const CF_DEAD_LETTERS: &str = "dead_letters";

/// Column families that make up the replicated state machine (and so a snapshot).
pub(crate) const STATE_MACHINE_CFS: [&str; 8] =
    [CF_KV, CF_EVENTS, CF_KEY_REVS, CF_LEASES, CF_LEASE_KEYS, CF_SM_META, CF_REQUESTS, CF_REQUEST_LOG];

const ALL_CFS: [&str; 12] = [
    CF_LOG,
    CF_RAFT_META,
    CF_KV,
    CF_EVENTS,
    CF_KEY_REVS,
    CF_LEASES,
    CF_LEASE_KEYS,
    CF_SM_META,
    CF_REQUESTS,
    CF_REQUEST_LOG,
    CF_OUTBOX,
    CF_DEAD_LETTERS,
];

/// The node's RocksDB. Cheap to clone; all methods are blocking and belong on
/// a blocking thread (`spawn_blocking`), never directly on an async task.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<DB>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        let cfs = ALL_CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Store { db: Arc::new(db) })
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or(StorageError::MissingColumnFamily(name))
    }

    /// Write a batch; `sync` waits for the WAL to reach the disk (fsync).
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Approximate on-disk size of the whole database, for metrics.
    pub fn disk_bytes(&self) -> u64 {
        let mut total = 0;
        for name in ALL_CFS {
            if let Ok(cf) = self.cf(name) {
                total += self
                    .db
                    .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
            }
        }
        total
    }
}

pub(crate) fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(crate) fn key_u64(bytes: &[u8], cf: &'static str) -> Result<u64, StorageError> {
    let arr: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
        StorageError::Corrupt { cf, detail: format!("key of {} bytes, want 8", bytes.len()) }
    })?;
    Ok(u64::from_be_bytes(arr))
}
