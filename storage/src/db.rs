use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use rocksdb::{
    Cache, ColumnFamily, ColumnFamilyDescriptor, Options, SnapshotWithThreadMode, WriteBatch,
    WriteOptions, DB,
};

use crate::error::StorageError;
use crate::kv::{Counters, KvCache};

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
/// The same ids in the order applied, for pruning: sequence number (big-endian u64) -> id.
pub(crate) const CF_REQUEST_LOG: &str = "request_log";

/// Messages waiting for a durable destination (webhook, Kafka):
/// destination ++ 0x00 ++ seq -> encoded entry; plus the next seq under `NEXT_SEQ`.
pub(crate) const CF_OUTBOX: &str = "outbox";
/// Messages whose retries ran out, keyed like the outbox.
pub(crate) const CF_DEAD_LETTERS: &str = "dead_letters";

/// Column families that make up the replicated state machine (and so a snapshot).
pub(crate) const STATE_MACHINE_CFS: [&str; 8] = [
    CF_KV,
    CF_EVENTS,
    CF_KEY_REVS,
    CF_LEASES,
    CF_LEASE_KEYS,
    CF_SM_META,
    CF_REQUESTS,
    CF_REQUEST_LOG,
];

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

/// RocksDB's memory, shared by every column family so that it is bounded
/// by the node, not by the number of column families: each one had a
/// block cache of its own (RocksDB's default, 32 MiB each) and memtables
/// of 64 MiB unless set below. Past the memtable budget, memtables are
/// flushed early (the oldest first).
const BLOCK_CACHE_BYTES: usize = 64 << 20;
const MEMTABLE_BUDGET_BYTES: usize = 128 << 20;

/// Column families read by key on every write (the previous value, whether
/// a proposal id was seen) get bloom filters, in memtables and in SST files:
/// a lookup of an absent key, like every new proposal id, then skips the
/// memtable's skip list and the files instead of searching them.
fn cf_options(name: &str, block_cache: &Cache) -> Options {
    let mut options = Options::default();
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(block_cache);
    if matches!(name, CF_KV | CF_REQUESTS | CF_LEASES) {
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(0.1);
        table.set_bloom_filter(10.0, false);
    }
    options.set_block_based_table_factory(&table);
    // Every put inserts into `kv` and `key_revs` at a random place, and the
    // cost of that skip-list walk grows with the memtable (it was the largest
    // single item of a node's CPU under a steady write load). Most of `kv`'s
    // memtable is old versions of the same keys, which a flush drops, so a
    // small one flushes to a small file. The sizes were chosen with kv-bench
    // (bench/README.md, "kv and key_revs memtables"). The Raft log's
    // entries are purged soon after they are applied; with RocksDB's 64 MiB
    // its memtable grew to 40 MB before the node's memtable budget forced a
    // flush and a compaction of it, which every replica reached at once and
    // which held event latency at p99 110-200 ms while it ran (bench/README.md,
    // "a smaller Raft log memtable").
    match name {
        CF_KV => options.set_write_buffer_size(8 << 20),
        CF_KEY_REVS => options.set_write_buffer_size(16 << 20),
        CF_LOG => options.set_write_buffer_size(16 << 20),
        _ => {}
    }
    options
}

/// The node's RocksDB. Cheap to clone; all methods are blocking and belong on
/// a blocking thread (`spawn_blocking`), never directly on an async task.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<DB>,
    /// The state machine's recently written key/value pairs (see `kv::cache`).
    pub(crate) applied_kv: Arc<Mutex<KvCache>>,
    /// How many distinct proposals the state machine has applied (the
    /// proposal id window's position; see `kv::Proposal`).
    pub(crate) applied_proposals: Arc<AtomicU64>,
    /// Readers take the state machine's view under this lock, and a
    /// snapshot import holds it for writing while it replaces the state in
    /// several writes: a reader sees the state before the import or after
    /// it, never a mixture (see [`Store::sm_import`]).
    pub(crate) sm_gate: Arc<RwLock<()>>,
    /// While a snapshot import replaces the state: the counters of the
    /// state it replaces, for status reads that must not wait for it
    /// ([`Store::counters_unless_importing`]).
    pub(crate) importing: Arc<Mutex<Option<Counters>>>,
    /// Fault injection: an import sleeps this long once it holds the
    /// readers' gate (see [`OpenOptions::slow_snapshot_import`]).
    pub(crate) import_delay: Option<Duration>,
    /// Raised when the last clone is dropped. Declared after `db`, so fields
    /// drop in that order: the database is closed before the flag goes up.
    closed: Arc<ClosedFlag>,
}

/// Lets the process wait until the database is closed before it exits:
/// exiting while another thread is still closing RocksDB aborts the process
/// in RocksDB's static destructors ("pthread lock: Invalid argument").
#[derive(Clone)]
pub struct StoreClosed {
    state: Arc<(Mutex<bool>, Condvar)>,
}

impl StoreClosed {
    /// Whether the database was closed within `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (closed, changed) = &*self.state;
        let guard = closed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match changed.wait_timeout_while(guard, timeout, |closed| !*closed) {
            Ok((closed, _)) => *closed,
            Err(poisoned) => *poisoned.into_inner().0,
        }
    }
}

struct ClosedFlag(StoreClosed);

impl Drop for ClosedFlag {
    fn drop(&mut self) {
        let (closed, changed) = &*self.0.state;
        *closed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        changed.notify_all();
    }
}

/// How to open the database. The default is what production uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Fault injection: keep WAL writes that were not fsynced in process
    /// memory (RocksDB's manual WAL flush), so that killing the process
    /// loses exactly what a power cut would lose: every write after the last
    /// fsync. Synced writes and [`Store::sync_wal`] still reach the disk.
    pub lose_unsynced_writes: bool,
    /// Fault injection: a snapshot import holds readers off this much
    /// longer than it needs (an import of a large state on a slow disk).
    pub slow_snapshot_import: Option<Duration>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StorageError> {
        Store::open_with(path, OpenOptions::default())
    }

    pub fn open_with(path: &Path, options: OpenOptions) -> Result<Store, StorageError> {
        let mut opts = Options::default();
        opts.set_manual_wal_flush(options.lose_unsynced_writes);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET_BYTES);
        let block_cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &block_cache)));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let closed = StoreClosed {
            state: Arc::new((Mutex::new(false), Condvar::new())),
        };
        let store = Store {
            db: Arc::new(db),
            applied_kv: Arc::default(),
            applied_proposals: Arc::default(),
            sm_gate: Arc::default(),
            importing: Arc::default(),
            import_delay: options.slow_snapshot_import,
            closed: Arc::new(ClosedFlag(closed)),
        };
        store.load_applied_proposals()?;
        Ok(store)
    }

    /// A handle to wait on until every clone of this store is dropped and
    /// the database closed.
    pub fn closed(&self) -> StoreClosed {
        self.closed.0.clone()
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or(StorageError::MissingColumnFamily(name))
    }

    /// A consistent view of the database for reading the state machine:
    /// never one taken while a snapshot import is part way through.
    pub(crate) fn view(&self) -> SnapshotWithThreadMode<'_, DB> {
        let _gate = self
            .sm_gate
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.db.snapshot()
    }

    /// Write a batch; `sync` waits for the WAL to reach the disk (fsync).
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Approximate size of the replicated state machine (keys, history,
    /// leases, proposal ids): its SST files plus its memtables, which hold
    /// the newest writes before they are flushed. A memtable's figure is
    /// the memory it reserved (several MiB even when nearly empty), so past
    /// `limit` the memtables are flushed and only the files are counted:
    /// near the limit the figure is what the data takes on disk. What
    /// `--quota-backend-mb` measures.
    pub fn state_machine_bytes(&self, limit: u64) -> Result<u64, StorageError> {
        let with_memtables = self.state_machine_property("rocksdb.total-sst-files-size")?
            + self.state_machine_property("rocksdb.size-all-mem-tables")?;
        if with_memtables <= limit {
            return Ok(with_memtables);
        }
        for name in STATE_MACHINE_CFS {
            self.db.flush_cf(self.cf(name)?)?;
        }
        self.state_machine_property("rocksdb.total-sst-files-size")
    }

    fn state_machine_property(&self, property: &str) -> Result<u64, StorageError> {
        let mut total = 0;
        for name in STATE_MACHINE_CFS {
            total += self
                .db
                .property_int_value_cf(self.cf(name)?, property)?
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Rewrite the state machine's files without what deletes and history
    /// compaction removed, so that their space is given back (etcd's
    /// defragmentation). Heavy: a full compaction of those column families.
    pub fn reclaim_space(&self) -> Result<(), StorageError> {
        for name in STATE_MACHINE_CFS {
            let cf = self.cf(name)?;
            self.db.flush_cf(cf)?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
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
    let arr: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt {
            cf,
            detail: format!("key of {} bytes, want 8", bytes.len()),
        })?;
    Ok(u64::from_be_bytes(arr))
}
