//! The Raft log in RocksDB. Appends are fsynced before openraft is told they
//! are flushed (unlike openraft's rocksdb example, which acknowledges first).
//!
//! One writer thread owns every change to the log: `append` puts the entries
//! in an in-memory tail and queues them, and returns at once; the thread
//! writes whatever queued up meanwhile in one batch, fsyncs once and then
//! completes the flush callbacks in order (group commit). Truncation and
//! purging go through the same queue, so they happen in order with appends.
//! Replication reads recent entries from the tail, without RocksDB and
//! without decoding them again.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use shoal_codec::{decode, encode};
use shoal_storage::Store;
use tokio::sync::{mpsc, oneshot};

use crate::{io_error, NodeId, TypeConfig};

/// Changes waiting for the writer thread; a full queue makes `append` wait.
const WRITE_QUEUE: usize = 4096;
/// Most entries kept in the in-memory tail once they are written.
const TAIL_ENTRIES: usize = 2048;
/// Most bytes (encoded) of entries kept in the tail once they are written:
/// a count alone let 2048 entries of 1 MiB values hold 2 GiB on every node.
const TAIL_BYTES: usize = 16 << 20;
/// How long a purge waits for the state machine to reach it, and how often
/// it looks (see `LogStore::wait_applied`).
const PURGE_WAIT: Duration = Duration::from_secs(120);
const PURGE_POLL: Duration = Duration::from_millis(5);

/// What the writer thread does, in queue order.
enum LogOp {
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    /// Delete entries from this index on.
    Truncate(
        u64,
        oneshot::Sender<Result<(), shoal_storage::StorageError>>,
    ),
    /// Delete entries up to this index, recording the purged log id.
    Purge(
        u64,
        Vec<u8>,
        oneshot::Sender<Result<(), shoal_storage::StorageError>>,
    ),
}

/// The newest entries by index, shared with the writer thread, which drops
/// the oldest once written (never one that is not yet in RocksDB).
type Tail = Arc<Mutex<TailEntries>>;

/// The tail's entries, each with its encoded size, and their sum.
#[derive(Default)]
struct TailEntries {
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl TailEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    fn push(&mut self, entry: Entry<TypeConfig>, size: usize) {
        self.bytes += size;
        if let Some((_, replaced)) = self.entries.insert(entry.log_id.index, (entry, size)) {
            self.bytes -= replaced;
        }
    }

    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let mut dropped = 0;
        self.entries.retain(|index, (_, size)| {
            let kept = keep(*index);
            if !kept {
                dropped += *size;
            }
            kept
        });
        self.bytes -= dropped;
        self.report();
    }

    /// Drop the oldest entries up to `written` (those are in RocksDB) while
    /// the tail is over its count or its bytes.
    fn trim(&mut self, written: u64) {
        while self.entries.len() > TAIL_ENTRIES || self.bytes > TAIL_BYTES {
            match self.entries.first_entry() {
                Some(first) if *first.key() <= written => {
                    let (_, size) = first.remove();
                    self.bytes -= size;
                }
                _ => break,
            }
        }
        self.report();
    }

    /// The gauge follows every change that drops entries (a write adds
    /// them, and is followed by a trim).
    fn report(&self) {
        metrics::gauge!("shoal_raft_log_tail_bytes").set(self.bytes as f64);
    }
}

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    committed: Arc<AtomicU64>,
    tail: Tail,
    writer: mpsc::Sender<LogOp>,
    /// Held by the writer thread until it has dropped its store: a process
    /// that exits while that thread still closes RocksDB can abort (RocksDB's
    /// own mutexes are destroyed at exit), so tests wait for it.
    #[cfg_attr(not(test), allow(dead_code))]
    writer_alive: Arc<()>,
}

fn lock(tail: &Tail) -> MutexGuard<'_, TailEntries> {
    tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until a log store's writer thread has let go of RocksDB: a test
/// process that exits while that thread still closes RocksDB can abort
/// ("pthread lock: Invalid argument").
#[cfg(test)]
pub(crate) struct WriterGone(std::sync::Weak<()>);

#[cfg(test)]
impl WriterGone {
    /// Returns once the thread is gone, or after 5 s.
    pub(crate) async fn wait(self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.0.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl LogStore {
    /// `sync_delay` is a fault-injection hook (tests make a leader's fsync
    /// slower than its followers'); production passes `None`.
    pub fn new(store: Store, sync_delay: Option<Duration>) -> std::io::Result<LogStore> {
        let (writer, queue) = mpsc::channel(WRITE_QUEUE);
        let tail: Tail = Arc::default();
        let log_writer = LogWriter {
            store: store.clone(),
            tail: tail.clone(),
            sync_delay,
            failed: None,
        };
        let writer_alive = Arc::new(());
        let alive = writer_alive.clone();
        std::thread::Builder::new()
            .name("shoal-raft-log".into())
            .spawn(move || {
                log_writer.run(queue);
                drop(alive);
            })?;
        Ok(LogStore {
            store,
            committed: Arc::new(AtomicU64::new(0)),
            tail,
            writer,
            writer_alive,
        })
    }

    #[cfg(test)]
    pub(crate) fn writer_gone(&self) -> WriterGone {
        WriterGone(Arc::downgrade(&self.writer_alive))
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

    /// Queue a change for the writer thread.
    async fn queue(&self, op: LogOp) -> Result<(), StorageError<NodeId>> {
        self.writer.send(op).await.map_err(|_| writer_stopped())
    }

    /// Queue a truncation or purge and wait until it is done.
    async fn queue_and_wait(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), shoal_storage::StorageError>>) -> LogOp,
    ) -> Result<(), StorageError<NodeId>> {
        let (done, outcome) = oneshot::channel();
        self.queue(op(done)).await?;
        match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageIOError::write_logs(io_error(e)).into()),
            Err(_) => Err(writer_stopped()),
        }
    }
}

impl LogStore {
    /// Wait until the state machine has applied `index`. openraft 0.9.25
    /// purges the log up to an installed snapshot in the same step in which
    /// it hands the snapshot to the state machine worker, without waiting for
    /// the install: a crash in between left a log purged past what the state
    /// machine held, and the node could not start again. Purging only what
    /// the state machine has written (the purge's synced write makes the
    /// earlier state machine writes durable too: one WAL) keeps every
    /// purged entry recoverable from the state.
    async fn wait_applied(&self, index: u64) -> Result<(), StorageError<NodeId>> {
        let deadline = tokio::time::Instant::now() + PURGE_WAIT;
        loop {
            let applied = self
                .blocking(StorageIOError::read_state_machine, |store| {
                    match store.sm_applied()?.0 {
                        Some(bytes) => Ok(Some(decode::<LogId<NodeId>>(&bytes)?.index)),
                        None => Ok(None),
                    }
                })
                .await?;
            if applied.is_some_and(|applied| applied >= index) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let e = std::io::Error::other(format!(
                    "the state machine has applied {applied:?}, not yet {index}: refusing to purge the log past it"
                ));
                return Err(StorageIOError::write_logs(io_error(e)).into());
            }
            tokio::time::sleep(PURGE_POLL).await;
        }
    }
}

fn writer_stopped() -> StorageError<NodeId> {
    StorageIOError::write_logs(io_error(std::io::Error::other(
        "the Raft log writer thread has stopped",
    )))
    .into()
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
        // Recent entries come from the tail; older ones (below it) from RocksDB.
        let (tail_first, mut recent) = {
            let tail = lock(&self.tail);
            let first = tail.first_index();
            let from = first.map_or(end, |first| first.max(start));
            let recent: Vec<Entry<TypeConfig>> = if from < end {
                tail.entries
                    .range(from..end)
                    .map(|(_, (entry, _))| entry.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (first, recent)
        };
        let older_end = tail_first.map_or(end, |first| first.min(end));
        if start >= older_end {
            return Ok(recent);
        }
        let mut entries = self
            .blocking(StorageIOError::read_logs, move |store| {
                store
                    .log_range(start, older_end)?
                    .iter()
                    .map(|(_, bytes)| decode(bytes).map_err(shoal_storage::StorageError::from))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        entries.append(&mut recent);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let newest = lock(&self.tail)
            .entries
            .values()
            .next_back()
            .map(|(entry, _)| entry.log_id);
        self.blocking(StorageIOError::read_logs, move |store| {
            let last_purged_log_id: Option<LogId<NodeId>> =
                match store.raft_meta_get("last_purged")? {
                    Some(bytes) => Some(decode(&bytes)?),
                    None => None,
                };
            // The tail holds the newest entry, if any; RocksDB only otherwise.
            let last_log_id = match newest {
                Some(newest) => Some(newest),
                None => match store.log_last()? {
                    Some((_, bytes)) => Some(decode::<Entry<TypeConfig>>(&bytes)?.log_id),
                    None => last_purged_log_id,
                },
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.blocking(StorageIOError::write_vote, move |store| {
            store.raft_meta_put("vote", &encode(&vote)?)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.blocking(StorageIOError::read_vote, |store| {
            match store.raft_meta_get("vote")? {
                Some(bytes) => Ok(Some(decode(&bytes)?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// Kept in memory only, for metrics: the state machine persists what it
    /// applied, so a restart needs no separate committed marker.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.committed
            .store(committed.map(|id| id.index).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        let mut appended = Vec::new();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| StorageIOError::write_logs(io_error(e)))?;
            let index = entry.log_id.index;
            appended.push((entry, bytes.len()));
            encoded.push((index, bytes));
        }
        // Readable at once: openraft reads what it appended before it is
        // flushed (a leader replicates its entries while this thread is still
        // writing them, see vendor/openraft/SHOAL.md); reported flushed by the
        // writer thread after the fsync.
        {
            let mut tail = lock(&self.tail);
            for (entry, size) in appended {
                tail.push(entry, size);
            }
        }
        self.queue(LogOp::Append(encoded, callback)).await
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        lock(&self.tail).retain(|index| index < log_id.index);
        self.queue_and_wait(|done| LogOp::Truncate(log_id.index, done))
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.wait_applied(log_id.index).await?;
        let purged = encode(&log_id).map_err(|e| StorageIOError::write_logs(io_error(e)))?;
        self.queue_and_wait(|done| LogOp::Purge(log_id.index, purged, done))
            .await?;
        lock(&self.tail).retain(|index| index > log_id.index);
        Ok(())
    }
}

/// The writer thread's state. After a failed write nothing later is written:
/// a later batch on top of a lost one would leave a hole in the log, so every
/// change queued after the failure fails too (openraft stops the node on the
/// first failed flush).
struct LogWriter {
    store: Store,
    tail: Tail,
    sync_delay: Option<Duration>,
    failed: Option<String>,
}

impl LogWriter {
    /// Every append that queued up is written in one batch and fsynced once,
    /// then their callbacks complete in order; truncations and purges run in
    /// turn. Written entries beyond the tail's count or bytes leave the tail.
    fn run(mut self, mut queue: mpsc::Receiver<LogOp>) {
        let mut next = queue.blocking_recv();
        while let Some(op) = next.take() {
            match op {
                LogOp::Append(entries, callback) => {
                    let mut written = entries;
                    let mut callbacks = vec![callback];
                    // Everything appended meanwhile joins this write and fsync.
                    loop {
                        match queue.try_recv() {
                            Ok(LogOp::Append(more, callback)) => {
                                written.extend(more);
                                callbacks.push(callback);
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let result = self.append(&written);
                    metrics::histogram!("shoal_raft_log_sync_batch_appends")
                        .record(callbacks.len() as f64);
                    for callback in callbacks {
                        callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                    }
                }
                LogOp::Truncate(from, done) => {
                    let _ = done.send(self.guarded(|store| store.log_truncate_from(from)));
                }
                LogOp::Purge(upto, purged, done) => {
                    let _ = done.send(self.guarded(|store| store.log_purge_upto(upto, &purged)));
                }
            }
            if next.is_none() {
                next = queue.blocking_recv();
            }
        }
    }

    fn append(&mut self, written: &[(u64, Vec<u8>)]) -> Result<(), String> {
        if let Some(failed) = &self.failed {
            return Err(format!("an earlier Raft log write failed: {failed}"));
        }
        let result = self.store.log_write(written).and_then(|()| {
            if let Some(delay) = self.sync_delay {
                std::thread::sleep(delay);
            }
            self.store.sync_wal()
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "writing the Raft log failed; no later change is written");
            self.failed = Some(e.to_string());
            return Err(e.to_string());
        }
        if let Some((newest, _)) = written.last() {
            lock(&self.tail).trim(*newest);
        }
        Ok(())
    }

    fn guarded(
        &mut self,
        change: impl FnOnce(&Store) -> Result<(), shoal_storage::StorageError>,
    ) -> Result<(), shoal_storage::StorageError> {
        if let Some(failed) = &self.failed {
            return Err(shoal_storage::StorageError::Io(format!(
                "an earlier Raft log write failed: {failed}"
            )));
        }
        let result = change(&self.store);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A purge waits until the state machine has applied what it purges
    /// (a snapshot install and the purge it covers run in different tasks).
    #[tokio::test]
    async fn a_purge_waits_for_the_state_machine() {
        use openraft::{CommittedLeaderId, EntryPayload};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let entry = |index| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        let written: Vec<(u64, Vec<u8>)> = (1..=10)
            .map(|i| (i, encode(&entry(i)).expect("encode")))
            .collect();
        store.log_write(&written).expect("write");
        store.sync_wal().expect("sync");
        let mut log = LogStore::new(store.clone(), None).expect("log store");
        let writer_gone = log.writer_gone();
        let purge =
            tokio::spawn(
                async move { log.purge(LogId::new(CommittedLeaderId::new(1, 1), 8)).await },
            );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !purge.is_finished(),
            "purged past what the state machine applied"
        );
        assert_eq!(store.log_first_index().expect("first"), Some(1));
        let mut batch = store.sm_batch().expect("batch");
        let applied = encode(&entry(8).log_id).expect("encode");
        batch
            .set_position(shoal_storage::kv::Position {
                log_id: &applied,
                membership: None,
            })
            .expect("position");
        batch.commit().expect("commit");
        purge.await.expect("task").expect("purge");
        assert_eq!(store.log_first_index().expect("first"), Some(9));
        // The log store is gone with the task: wait for its writer thread to
        // let go of RocksDB before the process exits.
        writer_gone.wait().await;
    }

    /// The tail keeps at most `TAIL_BYTES` of written entries, however few
    /// they are, and never drops one that is not written yet.
    #[test]
    fn the_tail_is_bounded_by_bytes_and_keeps_unwritten_entries() {
        use openraft::{CommittedLeaderId, EntryPayload};
        let entry = |index| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        let quarter = TAIL_BYTES / 4;
        let mut tail = TailEntries::default();
        for index in 1..=10 {
            tail.push(entry(index), quarter);
        }
        let indexes = |tail: &TailEntries| tail.entries.keys().copied().collect::<Vec<_>>();
        // Written up to 5: those go, 6 to 10 stay although over the bound.
        tail.trim(5);
        assert_eq!(indexes(&tail), (6..=10).collect::<Vec<_>>());
        assert_eq!(tail.bytes, 5 * quarter);
        tail.trim(10);
        assert_eq!(indexes(&tail), (7..=10).collect::<Vec<_>>());
        assert_eq!(tail.bytes, TAIL_BYTES);
        // Replacing an entry (a new leader's) and truncating keep the sum.
        tail.push(entry(10), 1);
        assert_eq!(tail.bytes, 3 * quarter + 1);
        tail.retain(|index| index < 9);
        assert_eq!(indexes(&tail), vec![7, 8]);
        assert_eq!(tail.bytes, 2 * quarter);
    }

    /// After a failed write the writer writes nothing more: a later batch
    /// on top of a lost one would leave a hole in the log.
    #[test]
    fn nothing_is_written_after_a_failed_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut writer = LogWriter {
            store: store.clone(),
            tail: Tail::default(),
            sync_delay: None,
            failed: None,
        };
        writer
            .append(&[(1, b"one".to_vec())])
            .expect("a healthy write");
        writer.failed = Some("injected".into());
        assert!(writer.append(&[(2, b"two".to_vec())]).is_err());
        assert!(writer.guarded(|store| store.log_truncate_from(1)).is_err());
        assert!(writer
            .guarded(|store| store.log_purge_upto(1, b"purged"))
            .is_err());
        let indexes: Vec<u64> = store
            .log_range(0, u64::MAX)
            .expect("range")
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(indexes, vec![1]);
    }
}
