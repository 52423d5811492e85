//! The Raft log and Raft metadata, as opaque bytes: the raft crate owns the
//! encoding of entries and votes.

use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::db::{key_u64, u64_key, Store, CF_LOG, CF_RAFT_META};
use crate::error::StorageError;

impl Store {
    /// Write entries (index, encoded entry) to the WAL without waiting for
    /// the disk. They are durable only after a later [`Store::sync_wal`] (or
    /// any synced write) returns; the caller must not report them flushed
    /// before that.
    pub fn log_write(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        for (index, bytes) in entries {
            batch.put_cf(cf, u64_key(*index), bytes);
        }
        self.write(batch, false)
    }

    /// fsync the WAL: every write made before this call is durable after it.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        Ok(self.db.flush_wal(true)?)
    }

    /// Entries with index in `[start, end)`, in order.
    pub fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let cf = self.cf(CF_LOG)?;
        let mut out = Vec::new();
        let iter = self
            .db
            .iterator_cf(cf, IteratorMode::From(&u64_key(start), Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            let index = key_u64(&key, CF_LOG)?;
            if index >= end {
                break;
            }
            out.push((index, value.into_vec()));
        }
        Ok(out)
    }

    /// The last entry in the log, if any.
    pub fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let cf = self.cf(CF_LOG)?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            Some(item) => {
                let (key, value) = item?;
                Ok(Some((key_u64(&key, CF_LOG)?, value.into_vec())))
            }
            None => Ok(None),
        }
    }

    /// Index of the first entry still in the log, if any.
    pub fn log_first_index(&self) -> Result<Option<u64>, StorageError> {
        let cf = self.cf(CF_LOG)?;
        match self.db.iterator_cf(cf, IteratorMode::Start).next() {
            Some(item) => Ok(Some(key_u64(&item?.0, CF_LOG)?)),
            None => Ok(None),
        }
    }

    /// Delete entries with index >= `from` (conflicting entries), durably.
    pub fn log_truncate_from(&self, from: u64) -> Result<(), StorageError> {
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, u64_key(from), u64_key(u64::MAX));
        batch.delete_cf(cf, u64_key(u64::MAX));
        self.write(batch, true)
    }

    /// Delete entries with index <= `upto`, recording `last_purged` (encoded
    /// log id) in the same atomic write.
    pub fn log_purge_upto(&self, upto: u64, last_purged: &[u8]) -> Result<(), StorageError> {
        let log = self.cf(CF_LOG)?;
        let meta = self.cf(CF_RAFT_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, "last_purged", last_purged);
        batch.delete_range_cf(log, u64_key(0), u64_key(upto.saturating_add(1)));
        self.write(batch, true)
    }

    pub fn raft_meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_RAFT_META)?, name)?)
    }

    /// Store a Raft metadata value (vote, committed) durably.
    pub fn raft_meta_put(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RAFT_META)?, name, value);
        self.write(batch, true)
    }
}
