//! The replicated state machine: applies committed commands to the key/value
//! state in RocksDB and tells the node about each change (for watches).
//!
//! The state machine is persistent (every apply is written to RocksDB), so a
//! snapshot is only needed to ship state to a lagging follower and to allow
//! log purging; the latest snapshot is also kept as a file so it can be
//! served after a restart.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use shoal_codec::{decode, encode};
use shoal_storage::kv::{ChangeBatch, Position, Response};
use shoal_storage::Store;

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
    snapshot_dir: PathBuf,
    sink: Arc<dyn ChangeSink>,
    /// Held while a snapshot is built, installed or read: openraft builds
    /// snapshots in a task of their own while the state machine worker may
    /// install one, and both end by replacing the current snapshot file.
    /// Holds the current file's position once known, so that a build need
    /// not read the whole file to compare positions.
    snapshot_lock: Arc<Mutex<CurrentPosition>>,
}

/// The position (last log id) of the current snapshot file: `None` until
/// the file was read or written; `Some(None)` when there is no file.
type CurrentPosition = Option<Option<LogId<NodeId>>>;

type Meta = SnapshotMeta<NodeId, NodeAddr>;
type Membership = StoredMembership<NodeId, NodeAddr>;

impl StateMachine {
    pub fn new(
        store: Store,
        snapshot_dir: PathBuf,
        sink: Arc<dyn ChangeSink>,
    ) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(&snapshot_dir)?;
        remove_stale_temporaries(&snapshot_dir);
        Ok(StateMachine {
            store,
            snapshot_dir,
            sink,
            snapshot_lock: Arc::default(),
        })
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join("current.snap")
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

    /// Read the current snapshot file and note its position. The state
    /// machine in RocksDB is the truth: a damaged file is dropped, and
    /// openraft builds a new one when it needs it (at start, whenever the log
    /// was purged). Call with the lock.
    fn load_current(
        &self,
        position: &mut CurrentPosition,
    ) -> Result<Option<(Meta, Vec<u8>)>, shoal_storage::StorageError> {
        let path = self.snapshot_path();
        let loaded = match load_snapshot_file(&path) {
            Err(e @ shoal_storage::StorageError::Corrupt { .. }) => {
                tracing::warn!(
                    error = %e,
                    path = %path.display(),
                    "removing a damaged snapshot file",
                );
                std::fs::remove_file(&path).map_err(|e| file_error(&path, e))?;
                None
            }
            other => other?,
        };
        *position = Some(loaded.as_ref().and_then(|(meta, _)| meta.last_log_id));
        Ok(loaded)
    }

    /// Make `meta` and `data` the current snapshot unless the current one is
    /// newer (a slow build must not replace a snapshot installed meanwhile).
    /// Returns the snapshot that is current afterwards. Call with the lock.
    fn keep_newest(
        &self,
        position: &mut CurrentPosition,
        meta: Meta,
        data: Vec<u8>,
    ) -> Result<(Meta, Vec<u8>), shoal_storage::StorageError> {
        let current = match *position {
            Some(current) => current,
            None => {
                self.load_current(position)?;
                position.flatten()
            }
        };
        if current > meta.last_log_id {
            if let Some(newer) = self.load_current(position)? {
                return Ok(newer);
            }
        }
        save_snapshot_file(&self.snapshot_path(), &meta, &data)?;
        *position = Some(meta.last_log_id);
        Ok((meta, data))
    }
}

/// Snapshot file format: magic, blake3 of the body, body (the bincode of
/// meta and data). A torn or corrupted file is reported, never loaded.
const SNAPSHOT_MAGIC: &[u8; 8] = b"SHOALSN2";

fn file_error(path: &Path, e: std::io::Error) -> shoal_storage::StorageError {
    shoal_storage::StorageError::Io(format!("snapshot file {}: {e}", path.display()))
}

/// Persist a snapshot file atomically: a temporary file of its own, fsync,
/// rename over the current one, fsync of the directory.
fn save_snapshot_file(
    path: &Path,
    meta: &Meta,
    data: &[u8],
) -> Result<(), shoal_storage::StorageError> {
    static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
    let body = encode(&(meta, data))?;
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(SNAPSHOT_MAGIC)?;
        file.write_all(blake3::hash(&body).as_bytes())?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| file_error(path, e))
}

fn load_snapshot_file(path: &Path) -> Result<Option<(Meta, Vec<u8>)>, shoal_storage::StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, e)),
    };
    let corrupt = |detail: &str| shoal_storage::StorageError::Corrupt {
        cf: "snapshot file",
        detail: detail.into(),
    };
    let rest = bytes
        .strip_prefix(SNAPSHOT_MAGIC.as_slice())
        .ok_or_else(|| corrupt("bad magic"))?;
    let (sum, body) = rest
        .split_at_checked(32)
        .ok_or_else(|| corrupt("truncated"))?;
    if blake3::hash(body).as_bytes() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    // As a byte buffer, not a `Vec<u8>`: serde reads a `Vec<u8>` one element
    // at a time, which made loading a 24 MiB snapshot take seconds (in an
    // unoptimized build, on a loaded machine), while the leader sent no
    // heartbeat to the follower waiting for it.
    let (meta, data): (Meta, serde_bytes::ByteBuf) = decode(body)?;
    Ok(Some((meta, data.into_vec())))
}

/// Remove temporary files a crash left behind.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("current.tmp")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, data) = self
            .blocking(
                |e| StorageIOError::write_snapshot(None, e),
                |sm| {
                    let mut position = sm.lock_snapshots();
                    let export = sm.store.sm_export()?;
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
                    sm.keep_newest(&mut position, meta, export.data)
                },
            )
            .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
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
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let meta = meta.clone();
        let data = snapshot.into_inner();
        self.blocking(
            |e| StorageIOError::write_snapshot(None, e),
            move |sm| {
                let mut position = sm.lock_snapshots();
                sm.store.sm_import(&data)?;
                sm.keep_newest(&mut position, meta, data).map(|_| ())
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
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use shoal_storage::kv::{ChangeBatch, Command, Proposal, Txn, TxnOp};

    use super::*;

    struct NoSink;
    impl ChangeSink for NoSink {
        fn changed(&self, _: &ChangeBatch) {}
        fn replaced(&self) {}
    }

    fn put_entry(index: u64, key: &str) -> Entry<TypeConfig> {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&index.to_be_bytes());
        let command = Command::Txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Put {
                key: key.into(),
                value: b"v".to_vec(),
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
        let newest_data = newest.snapshot.into_inner();

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
                    sm.install_snapshot(&meta, Box::new(Cursor::new(data)))
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
        assert_eq!(current.snapshot.into_inner(), newest_data);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "current.snap")
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
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

    /// A damaged snapshot file is dropped, not loaded or shipped.
    #[tokio::test]
    async fn a_damaged_snapshot_file_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = machine(dir.path());
        sm.apply((1..=3).map(|i| put_entry(i, "k")))
            .await
            .expect("apply");
        sm.build_snapshot().await.expect("build");
        let path = sm.snapshot_path();
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        assert!(sm.get_current_snapshot().await.expect("read").is_none());
        assert!(!path.exists());
    }
}
