//! The Raft log in RocksDB. Appends are fsynced before openraft is told they
//! are flushed (unlike openraft's rocksdb example, which acknowledges first).
//!
//! Group commit: `append` writes the entries to the WAL and hands the flush
//! callback to a sync thread; the thread fsyncs once for every callback that
//! queued up meanwhile and then completes them in order. openraft issues one
//! append per client write, so this turns N fsyncs into one per batch.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use shoal_storage::{decode, encode, Store};
use tokio::sync::mpsc;

use crate::{io_error, NodeId, TypeConfig};

/// Flush callbacks waiting for the sync thread; a full queue makes `append` wait.
const SYNC_QUEUE: usize = 4096;

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    committed: Arc<AtomicU64>,
    to_sync: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    pub fn new(store: Store) -> std::io::Result<LogStore> {
        let (to_sync, pending) = mpsc::channel(SYNC_QUEUE);
        let sync_store = store.clone();
        std::thread::Builder::new().name("shoal-wal-sync".into()).spawn(move || sync_loop(sync_store, pending))?;
        Ok(LogStore { store, committed: Arc::new(AtomicU64::new(0)), to_sync })
    }

    /// The highest log index known committed, shared for metrics.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// Run blocking RocksDB work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        error: fn(openraft::AnyError) -> StorageIOError<NodeId>,
        work: impl FnOnce(&Store) -> Result<T, shoal_storage::StorageError> + Send + 'static,
    ) -> Result<T, StorageError<NodeId>> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(error(io_error(e)).into()),
            Err(e) => Err(error(io_error(e)).into()),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(n) => *n,
            Bound::Excluded(n) => n.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(n) => n.saturating_add(1),
            Bound::Excluded(n) => *n,
            Bound::Unbounded => u64::MAX,
        };
        self.blocking(StorageIOError::read_logs, move |store| {
            store.log_range(start, end)?.iter().map(|(_, bytes)| decode(bytes)).collect()
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.blocking(StorageIOError::read_logs, |store| {
            let last_purged_log_id: Option<LogId<NodeId>> = match store.raft_meta_get("last_purged")? {
                Some(bytes) => Some(decode(&bytes)?),
                None => None,
            };
            let last_log_id = match store.log_last()? {
                Some((_, bytes)) => Some(decode::<Entry<TypeConfig>>(&bytes)?.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState { last_purged_log_id, last_log_id })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.blocking(StorageIOError::write_vote, move |store| store.raft_meta_put("vote", &encode(&vote)?))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.blocking(StorageIOError::read_vote, |store| match store.raft_meta_get("vote")? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        })
        .await
    }

    /// Kept in memory only, for metrics: the state machine persists what it
    /// applied, so a restart needs no separate committed marker.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        self.committed.store(committed.map(|id| id.index).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| StorageIOError::write_logs(io_error(e)))?;
            encoded.push((entry.log_id.index, bytes));
        }
        self.blocking(StorageIOError::write_logs, move |store| store.log_write(&encoded)).await?;
        // Reported flushed by the sync thread, after the fsync that covers it.
        self.to_sync.send(callback).await.map_err(|_| {
            StorageIOError::write_logs(io_error(std::io::Error::other("the WAL sync thread has stopped")))
        })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(StorageIOError::write_logs, move |store| store.log_truncate_from(log_id.index)).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(StorageIOError::write_logs, move |store| {
            store.log_purge_upto(log_id.index, &encode(&log_id)?)
        })
        .await
    }
}

/// The sync thread: one fsync per batch of queued appends, then their callbacks in order.
fn sync_loop(store: Store, mut pending: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Some(first) = pending.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = pending.try_recv() {
            batch.push(more);
        }
        let result = store.sync_wal();
        if let Err(e) = &result {
            tracing::error!(error = %e, "fsync of the Raft log failed");
        }
        metrics::histogram!("shoal_wal_sync_batch").record(batch.len() as f64);
        for callback in batch {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(outcome);
        }
    }
}
