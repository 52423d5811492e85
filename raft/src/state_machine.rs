//! The replicated state machine: applies committed commands to the key/value
//! state in RocksDB and tells the node about each change (for watches).
//!
//! The state machine is persistent (every apply is written to RocksDB), so a
//! snapshot is only needed to ship state to a lagging follower and to allow
//! log purging; the latest snapshot is also kept as files
//! ([`crate::snapshot_dir`]) so it can be served after a restart. A
//! snapshot is built, shipped and installed as a stream of a file: none of
//! these costs a node memory that grows with the state.
//!
//! Installing a snapshot: the received data is checked whole while it is
//! copied into a data file of this node's own; `importing.meta` then names
//! that file; the import replaces the state in several writes (not
//! atomic on disk; readers wait meanwhile); the file becomes the current
//! snapshot and the note is removed. A crash part way leaves the note, and
//! the import is done again from the same file before the node starts
//! (`StateMachine::new`): the state machine is never left half old, half
//! new.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use shoal_codec::{decode, encode};
use shoal_storage::kv::{ChangeBatch, Position, Response};
use shoal_storage::Store;

use crate::snapshot_dir::{file_error, DataFile, Meta, SnapshotDir, Tee};
use crate::{io_error, NodeAddr, NodeId, TypeConfig};

/// Receives every change batch right after it is applied. Must not block.
pub trait ChangeSink: Send + Sync + 'static {
    fn changed(&self, batch: &ChangeBatch);
    /// The whole state was replaced by a snapshot: readers must re-read.
    fn replaced(&self);
}

#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    snapshots: SnapshotDir,
    sink: Arc<dyn ChangeSink>,
    /// Held while a snapshot is built, installed or read: openraft builds
    /// snapshots in a task of their own while the state machine worker may
    /// install one, and both end by replacing the current snapshot.
    /// Holds the current snapshot's position once known, so that a build
    /// need not read the current one to compare positions.
    snapshot_lock: Arc<Mutex<CurrentPosition>>,
}

/// The position (last log id) of the current snapshot: `None` until it was
/// read or written; `Some(None)` when there is none.
type CurrentPosition = Option<Option<LogId<NodeId>>>;

type Membership = StoredMembership<NodeId, NodeAddr>;

impl StateMachine {
    pub fn new(
        store: Store,
        snapshot_dir: PathBuf,
        sink: Arc<dyn ChangeSink>,
    ) -> Result<StateMachine, shoal_storage::StorageError> {
        let snapshots = SnapshotDir::open(snapshot_dir)
            .map_err(|e| shoal_storage::StorageError::Io(format!("snapshot directory: {e}")))?;
        let sm = StateMachine {
            store,
            snapshots,
            sink,
            snapshot_lock: Arc::default(),
        };
        sm.finish_interrupted_import()?;
        Ok(sm)
    }

    /// A crash while a snapshot was imported left part of the old state and
    /// part of the new: import the same data again, before anything reads
    /// the state machine. Its data file must be whole: without it the state
    /// cannot be repaired, and the node does not start.
    fn finish_interrupted_import(&self) -> Result<(), shoal_storage::StorageError> {
        let Some(data) = self.snapshots.interrupted_import()? else {
            return Ok(());
        };
        tracing::warn!(
            dir = %self.snapshots.path().display(),
            "a snapshot import was interrupted: importing it again",
        );
        self.store.sm_import(data)?;
        self.snapshots.clear_importing()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        error: fn(openraft::AnyError) -> StorageIOError<NodeId>,
        work: impl FnOnce(&StateMachine) -> Result<T, shoal_storage::StorageError> + Send + 'static,
    ) -> Result<T, StorageError<NodeId>> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || work(&this)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(error(io_error(e)).into()),
            Err(e) => Err(error(io_error(e)).into()),
        }
    }

    fn lock_snapshots(&self) -> MutexGuard<'_, CurrentPosition> {
        self.snapshot_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Open the current snapshot and note its position. Call with the lock.
    fn load_current(
        &self,
        position: &mut CurrentPosition,
    ) -> Result<Option<(Meta, File)>, shoal_storage::StorageError> {
        let loaded = self.drop_damaged(self.snapshots.open_current())?;
        *position = Some(loaded.as_ref().and_then(|(meta, _)| meta.last_log_id));
        Ok(loaded)
    }

    /// Note the current snapshot's position from its meta file alone: a
    /// comparison of positions need not read and hash the data. Call with
    /// the lock.
    fn load_position(
        &self,
        position: &mut CurrentPosition,
    ) -> Result<Option<LogId<NodeId>>, shoal_storage::StorageError> {
        let meta = self.drop_damaged(self.snapshots.current_meta())?;
        let current = meta.and_then(|meta| meta.last_log_id);
        *position = Some(current);
        Ok(current)
    }

    /// The state machine in RocksDB is the truth: a damaged snapshot is
    /// dropped (reported as none), and openraft builds a new one when it
    /// needs it (at start, whenever the log was purged).
    fn drop_damaged<T>(
        &self,
        loaded: Result<Option<T>, shoal_storage::StorageError>,
    ) -> Result<Option<T>, shoal_storage::StorageError> {
        match loaded {
            Err(e @ shoal_storage::StorageError::Corrupt { .. }) => {
                tracing::warn!(
                    error = %e,
                    dir = %self.snapshots.path().display(),
                    "removing a damaged snapshot",
                );
                self.snapshots.remove_current()?;
                Ok(None)
            }
            other => other,
        }
    }

    /// Make `meta` and `data` the current snapshot unless the current one is
    /// newer (a slow build must not replace a snapshot installed meanwhile).
    /// Returns the snapshot that is current afterwards. Call with the lock.
    fn keep_newest(
        &self,
        position: &mut CurrentPosition,
        meta: Meta,
        data: DataFile,
    ) -> Result<(Meta, File), shoal_storage::StorageError> {
        let current = match *position {
            Some(current) => current,
            None => self.load_position(position)?,
        };
        if current > meta.last_log_id {
            if let Some(newer) = self.load_current(position)? {
                self.snapshots.discard(data);
                return Ok(newer);
            }
        }
        let current = self.snapshots.make_current(meta, data)?;
        *position = Some(current.0.last_log_id);
        Ok(current)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, data) = self
            .blocking(
                |e| StorageIOError::write_snapshot(None, e),
                |sm| {
                    let mut position = sm.lock_snapshots();
                    let (export, data) = sm.snapshots.write_data(|out| sm.store.sm_export(out))?;
                    // Applied entries are written without an fsync (the log
                    // has them); the snapshot file is made durable. Synced
                    // first, the state machine is never behind its snapshot
                    // after a power cut, which openraft refuses at start.
                    sm.store.sync_wal()?;
                    let last_log_id: Option<LogId<NodeId>> = match &export.last_applied {
                        Some(bytes) => Some(decode(bytes)?),
                        None => None,
                    };
                    let last_membership: Membership = match &export.membership {
                        Some(bytes) => decode(bytes)?,
                        None => Membership::default(),
                    };
                    // The id names the position; a counter tells two builds at
                    // the same position apart (openraft wants distinct ids).
                    static BUILDS: AtomicU64 = AtomicU64::new(0);
                    let build = BUILDS.fetch_add(1, Ordering::Relaxed);
                    let snapshot_id = match last_log_id {
                        Some(id) => format!("{}-{}-{build}", id.leader_id.term, id.index),
                        None => format!("0-0-{build}"),
                    };
                    let meta = Meta {
                        last_log_id,
                        last_membership,
                        snapshot_id,
                    };
                    sm.keep_newest(&mut position, meta, data)
                },
            )
            .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        self.blocking(StorageIOError::read_state_machine, |sm| {
            let (applied, membership) = sm.store.sm_applied()?;
            let applied = match applied {
                Some(bytes) => Some(decode(&bytes)?),
                None => None,
            };
            let membership = match membership {
                Some(bytes) => decode(&bytes)?,
                None => Membership::default(),
            };
            Ok((applied, membership))
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let (responses, changes) = self
            .blocking(StorageIOError::write_state_machine, move |sm| {
                // The whole run of entries is one write, with the position
                // of its last entry (and the newest membership in it).
                let mut batch = sm.store.sm_batch()?;
                let mut responses = Vec::with_capacity(entries.len());
                let mut membership = None;
                for entry in &entries {
                    let answers = match &entry.payload {
                        EntryPayload::Normal(proposals) => proposals
                            .iter()
                            .map(|proposal| batch.apply(proposal))
                            .collect::<Result<Vec<_>, _>>()?,
                        EntryPayload::Blank => Vec::new(),
                        EntryPayload::Membership(changed) => {
                            membership = Some(encode(&Membership::new(
                                Some(entry.log_id),
                                changed.clone(),
                            ))?);
                            Vec::new()
                        }
                    };
                    responses.push(answers);
                }
                if let Some(last) = entries.last() {
                    let log_id = encode(&last.log_id)?;
                    batch.set_position(Position {
                        log_id: &log_id,
                        membership: membership.as_deref(),
                    })?;
                }
                let changes = batch.commit()?;
                Ok((responses, changes))
            })
            .await?;
        // Written: watchers may read the store now.
        for change in &changes {
            self.sink.changed(change);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let file = self
            .blocking(
                |e| StorageIOError::write_snapshot(None, e),
                |sm| sm.snapshots.unnamed_file(),
            )
            .await?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    /// Checks the received data while copying it to a data file of its own,
    /// imports that file under the `importing.meta` note, and makes it the
    /// current snapshot (see the module's documentation).
    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let meta = meta.clone();
        let mut received = snapshot.into_std().await;
        self.blocking(
            |e| StorageIOError::write_snapshot(None, e),
            move |sm| {
                received
                    .seek(SeekFrom::Start(0))
                    .map_err(|e| file_error(sm.snapshots.path(), e))?;
                let started = std::time::Instant::now();
                let mut position = sm.lock_snapshots();
                let ((), data) = sm.snapshots.write_data(|copy| {
                    sm.store.sm_check_export(Tee {
                        reader: &mut received,
                        copy,
                    })
                })?;
                let checked = started.elapsed();
                sm.snapshots.mark_importing(&data)?;
                sm.store.sm_import(sm.snapshots.open_data(&data)?)?;
                tracing::info!(
                    last_log_id = ?meta.last_log_id,
                    bytes = data.len(),
                    check_ms = checked.as_millis() as u64,
                    import_ms = (started.elapsed() - checked).as_millis() as u64,
                    "installed a snapshot from the leader"
                );
                sm.keep_newest(&mut position, meta, data)?;
                sm.snapshots.clear_importing()
            },
        )
        .await?;
        self.sink.replaced();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let loaded = self
            .blocking(
                |e| StorageIOError::read_snapshot(None, e),
                |sm| sm.load_current(&mut sm.lock_snapshots()),
            )
            .await?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use shoal_storage::kv::{ChangeBatch, Command, Proposal, Txn, TxnOp};

    use super::*;

    struct NoSink;
    impl ChangeSink for NoSink {
        fn changed(&self, _: &ChangeBatch) {}
        fn replaced(&self) {}
    }

    fn put_entry(index: u64, key: &str) -> Entry<TypeConfig> {
        put_entry_with(index, key, b"v".to_vec())
    }

    fn put_entry_with(index: u64, key: &str, value: Vec<u8>) -> Entry<TypeConfig> {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&index.to_be_bytes());
        let command = Command::Txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Put {
                key: key.into(),
                value,
                lease: 0,
            }],
            failure: vec![],
        });
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(vec![Proposal {
                id,
                issued_at: 0,
                command,
            }]),
        }
    }

    fn machine(dir: &Path) -> StateMachine {
        let store = Store::open(&dir.join("db")).expect("open");
        StateMachine::new(store, dir.join("snapshots"), Arc::new(NoSink)).expect("state machine")
    }

    /// Builds and installs overlapping: the file must always be whole (its
    /// checksum holds) and never go back to an older position than one
    /// installed, and each build must name a position it really holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn overlapping_builds_and_installs_keep_the_newest_whole_snapshot() {
        let newer_dir = tempfile::tempdir().expect("tempdir");
        let mut newer = machine(newer_dir.path());
        newer
            .apply((1..=50).map(|i| put_entry(i, &format!("k{i}"))))
            .await
            .expect("apply");
        let newest = newer.build_snapshot().await.expect("build");
        let newest_data = read_all(newest.snapshot).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = machine(dir.path());
        sm.apply((1..=10).map(|i| put_entry(i, &format!("k{i}"))))
            .await
            .expect("apply");
        let mut tasks = Vec::new();
        for round in 0..40 {
            let mut sm = sm.clone();
            let (meta, data) = (newest.meta.clone(), newest_data.clone());
            tasks.push(tokio::spawn(async move {
                if round % 2 == 0 {
                    let built = sm.build_snapshot().await.expect("build");
                    assert!(built
                        .meta
                        .last_log_id
                        .is_some_and(|id| id.index == 10 || id.index == 50));
                } else {
                    sm.install_snapshot(&meta, Box::new(received(&data).await))
                        .await
                        .expect("install");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let current = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(
            current.meta.last_log_id.map(|id| id.index),
            Some(50),
            "an older build replaced a newer install"
        );
        assert_eq!(read_all(current.snapshot).await, newest_data);
        let mut files = snapshot_files(dir.path());
        files.retain(|name| name != crate::snapshot_dir::CURRENT_FILE);
        assert_eq!(files.len(), 1, "one data file, no leftovers: {files:?}");
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir.join("snapshots"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    async fn read_all(mut data: Box<tokio::fs::File>) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).await.expect("read");
        bytes
    }

    /// A file as openraft hands a received snapshot over: written, at its end.
    async fn received(data: &[u8]) -> tokio::fs::File {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::from_std(tempfile::tempfile().expect("tempfile"));
        file.write_all(data).await.expect("write");
        file.shutdown().await.expect("shutdown");
        file
    }

    /// A machine with `entries` keys and the snapshot it built, read whole.
    async fn leader_snapshot(dir: &Path, entries: u64) -> (StateMachine, Meta, Vec<u8>) {
        let mut leader = machine(dir);
        leader
            .apply((1..=entries).map(|i| put_entry(i, &format!("k{i}"))))
            .await
            .expect("apply");
        let built = leader.build_snapshot().await.expect("build");
        (leader, built.meta, read_all(built.snapshot).await)
    }

    /// A snapshot received by a follower holds the leader's state and is
    /// served again, the same data as built, after a restart.
    #[tokio::test]
    async fn an_installed_snapshot_holds_the_state_and_survives_a_restart() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let (leader, meta, data) = leader_snapshot(leader_dir.path(), 20).await;

        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut follower = machine(dir.path());
            follower
                .install_snapshot(&meta, Box::new(received(&data).await))
                .await
                .expect("install");
            assert_eq!(
                follower.store.sm_digest().expect("digest").hash,
                leader.store.sm_digest().expect("digest").hash
            );
        }
        let mut restarted = machine(dir.path());
        let current = restarted
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(current.meta, meta);
        assert_eq!(read_all(current.snapshot).await, data);
    }

    /// What a crash can leave in the snapshot directory (a data file no
    /// snapshot names, a half-written meta file, the earlier format's file)
    /// is removed at start; the current snapshot stays.
    #[tokio::test]
    async fn leftovers_of_a_crash_are_removed_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = {
            let mut sm = machine(dir.path());
            sm.apply((1..=3).map(|i| put_entry(i, "k")))
                .await
                .expect("apply");
            sm.build_snapshot().await.expect("build")
        };
        let mut expected = snapshot_files(dir.path());
        expected.sort();
        for stray in [
            "data-1-99",
            "current.tmp-1-2",
            "importing.tmp-1-3",
            "current.snap",
        ] {
            std::fs::write(dir.path().join("snapshots").join(stray), b"x").expect("write");
        }
        let mut sm = machine(dir.path());
        let mut files = snapshot_files(dir.path());
        files.sort();
        assert_eq!(files, expected);
        let current = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(current.meta, built.meta);
    }

    /// A damaged snapshot import is refused before anything is written.
    #[tokio::test]
    async fn a_damaged_received_snapshot_is_refused() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let (_, meta, data) = leader_snapshot(leader_dir.path(), 5).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let mut follower = machine(dir.path());
        let truncated = &data[..data.len() - 1];
        assert!(follower
            .install_snapshot(&meta, Box::new(received(truncated).await))
            .await
            .is_err());
        assert!(follower
            .get_current_snapshot()
            .await
            .expect("read")
            .is_none());
        assert_eq!(snapshot_files(dir.path()), Vec::<String>::new());
    }

    /// After a crash a leader's state machine can be ahead of its own log
    /// (it applies what followers committed while its own write was still
    /// queued). At start openraft then purges the log up to what was
    /// applied; a snapshot older than that must be rebuilt, or followers
    /// that need the purged entries would be sent the old one again and
    /// again.
    #[tokio::test]
    async fn a_snapshot_older_than_the_purged_log_is_rebuilt_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = machine(dir.path());
        sm.apply((1..=3).map(|i| put_entry(i, "k")))
            .await
            .expect("apply");
        sm.build_snapshot().await.expect("build");
        sm.apply((4..=10).map(|i| put_entry(i, "k")))
            .await
            .expect("apply");
        // The node's own log reached index 5 only.
        let written: Vec<(u64, Vec<u8>)> = (1..=5)
            .map(|i| (i, encode(&put_entry(i, "k")).expect("encode")))
            .collect();
        sm.store.log_write(&written).expect("write");
        sm.store.sync_wal().expect("sync");
        let mut log = crate::LogStore::new(sm.store.clone(), None).expect("log store");
        let state = openraft::StorageHelper::new(&mut log, &mut sm)
            .get_initial_state()
            .await
            .expect("initial state");
        assert_eq!(state.snapshot_meta.last_log_id.map(|id| id.index), Some(10));
        let current = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(current.meta.last_log_id.map(|id| id.index), Some(10));
        let writer_gone = log.writer_gone();
        drop(log);
        writer_gone.wait().await;
    }

    /// A damaged snapshot is dropped, not loaded or shipped: a flipped byte
    /// in its meta file; a data file cut short; a flipped byte in the data
    /// file once the process restarted (the process that wrote a data file
    /// hashed it then, and checks its length only when it serves it again).
    #[tokio::test]
    async fn a_damaged_snapshot_file_is_dropped() {
        for damage in ["meta", "short data", "data after a restart"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut sm = machine(dir.path());
            sm.apply((1..=3).map(|i| put_entry(i, "k")))
                .await
                .expect("apply");
            sm.build_snapshot().await.expect("build");
            let files = snapshot_files(dir.path());
            assert_eq!(files.len(), 2, "{files:?}");
            let name = files
                .iter()
                .find(|name| (damage == "meta") == (*name == crate::snapshot_dir::CURRENT_FILE))
                .expect("file");
            let path = dir.path().join("snapshots").join(name);
            let mut bytes = std::fs::read(&path).expect("read");
            if damage == "short data" {
                bytes.pop();
            } else {
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
            }
            std::fs::write(&path, bytes).expect("write");
            if damage == "data after a restart" {
                drop(sm);
                sm = machine(dir.path());
            }
            assert!(
                sm.get_current_snapshot().await.expect("read").is_none(),
                "{damage}"
            );
            assert_eq!(snapshot_files(dir.path()), Vec::<String>::new(), "{damage}");
        }
    }

    /// A crash part way through an import leaves the state machine half
    /// old, half new, and the `importing.meta` note: the next start imports
    /// the same data file again, and the state is the leader's. The import
    /// writes in batches of 16 MiB, so the leader's state is larger than
    /// one.
    #[tokio::test]
    async fn an_import_a_crash_interrupted_is_done_again_at_start() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let mut leader = machine(leader_dir.path());
        leader
            .apply((1..=40).map(|i| put_entry_with(i, &format!("big/{i:02}"), vec![b'x'; 1 << 20])))
            .await
            .expect("apply");
        let built = leader.build_snapshot().await.expect("build");
        let data = read_all(built.snapshot).await;
        let want = leader.store.sm_digest().expect("digest");

        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut follower = machine(dir.path());
            follower
                .apply((1..=5).map(|i| put_entry(i, "old")))
                .await
                .expect("apply");
            // What an install does up to the import, then an import that
            // stops after its first batches (the data ends early).
            let ((), file) = follower
                .snapshots
                .write_data(|out| {
                    std::io::Write::write_all(out, &data)
                        .map_err(|e| file_error(Path::new("test"), e))
                })
                .expect("data file");
            follower.snapshots.mark_importing(&file).expect("note");
            assert!(follower.store.sm_import(&data[..data.len() / 2]).is_err());
            assert!(follower.store.kv_get("old").expect("get").1.is_none());
            assert_ne!(follower.store.sm_digest().expect("digest").hash, want.hash);
        }
        let restarted = machine(dir.path());
        let got = restarted.store.sm_digest().expect("digest");
        assert_eq!((got.hash, got.records), (want.hash, want.records));
        assert_eq!(snapshot_files(dir.path()), Vec::<String>::new());
    }

    /// Without the data file of an interrupted import the state machine
    /// cannot be repaired: the node does not start.
    #[tokio::test]
    async fn an_interrupted_import_without_its_data_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let sm = machine(dir.path());
            let ((), file) = sm.snapshots.write_data(|_| Ok(())).expect("data file");
            sm.snapshots.mark_importing(&file).expect("note");
            for name in snapshot_files(dir.path()) {
                if name.starts_with("data-") {
                    std::fs::remove_file(dir.path().join("snapshots").join(name)).expect("remove");
                }
            }
        }
        let store = Store::open(&dir.path().join("db")).expect("open");
        assert!(StateMachine::new(store, dir.path().join("snapshots"), Arc::new(NoSink)).is_err());
    }
}
