//! The only crate that touches RocksDB.
//!
//! One RocksDB per node holds the Raft log, Raft metadata and the replicated
//! key/value state machine, each in its own column family. Because all column
//! families share one write-ahead log, a synced write (a Raft log append)
//! also makes every earlier unsynced write (state machine applies) durable,
//! and recovery always yields a prefix of the writes in order.

mod db;
mod error;
pub mod kv;
mod log;
pub mod outbox;

pub use db::{OpenOptions, Store, StoreClosed};
pub use error::StorageError;

/// A node's id, as Raft, gossip and the message router know it.
pub type NodeId = u64;

/// Wall-clock time in milliseconds since the Unix epoch (0 if the clock is
/// before it). For timestamps people read and for schedules; never for
/// anything replicas must agree on.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
