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
