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

/// Encode a value with the one binary encoding used on disk and on the wire.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| StorageError::Codec(e.to_string()))
}

/// Decode a value written by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| StorageError::Codec(e.to_string()))
}
