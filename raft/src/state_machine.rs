//! The replicated state machine: applies committed commands to the key/value
//! state in RocksDB and tells the node about each change (for watches).
//!
//! The state machine is persistent (every apply is written to RocksDB), so a
//! snapshot is only needed to ship state to a lagging follower and to allow
//! log purging; the latest snapshot is also kept as files so it can be
//! served after a restart. A snapshot's data is a file, written, hashed,
//! shipped and installed as a stream: it is never held in memory whole, so
//! building one costs a node no memory that grows with the state.
//!
//! Files in the snapshot directory: `current.meta` names the current data
//! file with its length and blake3 hash (replaced atomically, by rename);
//! `data-*` are data files, and every one but the current one is removed
//! once the current one changes.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
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
    /// install one, and both end by replacing the current snapshot.
    /// Holds the current snapshot's position once known, so that a build
    /// need not read the current one to compare positions.
    snapshot_lock: Arc<Mutex<CurrentPosition>>,
}

/// The position (last log id) of the current snapshot: `None` until it was
/// read or written; `Some(None)` when there is none.
type CurrentPosition = Option<Option<LogId<NodeId>>>;

type Meta = SnapshotMeta<NodeId, NodeAddr>;
type Membership = StoredMembership<NodeId, NodeAddr>;

/// What `current.meta` holds.
#[derive(Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: Meta,
    data: DataFile,
}

/// A data file in the snapshot directory, as written.
#[derive(Serialize, Deserialize)]
struct DataFile {
    name: String,
    len: u64,
    hash: [u8; 32],
}

const CURRENT_FILE: &str = "current.meta";
const DATA_PREFIX: &str = "data-";

impl StateMachine {
    pub fn new(
        store: Store,
        snapshot_dir: PathBuf,
        sink: Arc<dyn ChangeSink>,
    ) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let sm = StateMachine {
            store,
            snapshot_dir,
            sink,
            snapshot_lock: Arc::default(),
        };
        sm.remove_leftovers();
        Ok(sm)
    }

    fn current_path(&self) -> PathBuf {
        self.snapshot_dir.join(CURRENT_FILE)
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

    /// Open the current snapshot and note its position. The state machine
    /// in RocksDB is the truth: a damaged snapshot is dropped, and openraft
    /// builds a new one when it needs it (at start, whenever the log was
    /// purged). Call with the lock.
    fn load_current(
        &self,
        position: &mut CurrentPosition,
    ) -> Result<Option<(Meta, File)>, shoal_storage::StorageError> {
        let loaded = match self.open_current() {
            Err(e @ shoal_storage::StorageError::Corrupt { .. }) => {
                tracing::warn!(
                    error = %e,
                    dir = %self.snapshot_dir.display(),
                    "removing a damaged snapshot",
                );
                let path = self.current_path();
                std::fs::remove_file(&path).map_err(|e| file_error(&path, e))?;
                self.remove_data_files_but(None);
                None
            }
            other => other?,
        };
        *position = Some(loaded.as_ref().and_then(|(meta, _)| meta.last_log_id));
        Ok(loaded)
    }

    /// The current snapshot's meta and its data file (positioned at its
    /// start), after checking the data's length and hash.
    fn open_current(&self) -> Result<Option<(Meta, File)>, shoal_storage::StorageError> {
        let Some(current) = read_current_file(&self.current_path())? else {
            return Ok(None);
        };
        let path = self.snapshot_dir.join(&current.data.name);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt("the data file is missing"))
            }
            Err(e) => return Err(file_error(&path, e)),
        };
        let mut summed = Summing::new(std::io::sink());
        std::io::copy(&mut file, &mut summed).map_err(|e| file_error(&path, e))?;
        if (summed.len, *summed.hasher.finalize().as_bytes())
            != (current.data.len, current.data.hash)
        {
            return Err(corrupt("the data file's length or hash does not match"));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| file_error(&path, e))?;
        Ok(Some((current.meta, file)))
    }

    /// Write a new data file through `fill`, and make it durable. Removed
    /// again if anything fails.
    fn write_data_file<T>(
        &self,
        fill: impl FnOnce(&mut Summing<BufWriter<File>>) -> Result<T, shoal_storage::StorageError>,
    ) -> Result<(T, DataFile), shoal_storage::StorageError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{DATA_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.snapshot_dir.join(&name);
        let written = (|| {
            let file = File::create(&path).map_err(|e| file_error(&path, e))?;
            let mut out = Summing::new(BufWriter::with_capacity(1 << 20, file));
            let value = fill(&mut out)?;
            let hash = *out.hasher.finalize().as_bytes();
            let file = out
                .inner
                .into_inner()
                .map_err(|e| file_error(&path, e.into_error()))?;
            file.sync_all().map_err(|e| file_error(&path, e))?;
            Ok((
                value,
                DataFile {
                    name: name.clone(),
                    len: out.len,
                    hash,
                },
            ))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        written
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
            None => {
                self.load_current(position)?;
                position.flatten()
            }
        };
        if current > meta.last_log_id {
            if let Some(newer) = self.load_current(position)? {
                let _ = std::fs::remove_file(self.snapshot_dir.join(&data.name));
                return Ok(newer);
            }
        }
        let path = self.snapshot_dir.join(&data.name);
        let file = File::open(&path).map_err(|e| file_error(&path, e))?;
        let current = CurrentSnapshot { meta, data };
        save_current_file(&self.current_path(), &current)?;
        *position = Some(current.meta.last_log_id);
        self.remove_data_files_but(Some(&current.data.name));
        Ok((current.meta, file))
    }

    /// Remove every data file but `keep`. A file still open (being sent)
    /// stays readable until it is closed.
    fn remove_data_files_but(&self, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.snapshot_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(DATA_PREFIX) && Some(&*name) != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Remove what a crash left behind: temporary files, data files no
    /// snapshot names, and the single file of the earlier format.
    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.snapshot_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("current.tmp") || name == "current.snap" {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let current = read_current_file(&self.current_path()).ok().flatten();
        self.remove_data_files_but(current.as_ref().map(|c| c.data.name.as_str()));
    }
}

/// Passes bytes through to `inner`, keeping their count and blake3 hash.
struct Summing<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W> Summing<W> {
    fn new(inner: W) -> Summing<W> {
        Summing {
            inner,
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads from `reader` and writes what it read to `copy`.
struct Tee<'a, R, W> {
    reader: R,
    copy: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// `current.meta`: magic, blake3 of the body, body (the bincode of
/// [`CurrentSnapshot`]). A torn or corrupted file is reported, never loaded.
const CURRENT_MAGIC: &[u8; 8] = b"SHOALSN3";

fn file_error(path: &Path, e: std::io::Error) -> shoal_storage::StorageError {
    shoal_storage::StorageError::Io(format!("snapshot file {}: {e}", path.display()))
}

fn corrupt(detail: &str) -> shoal_storage::StorageError {
    shoal_storage::StorageError::Corrupt {
        cf: "snapshot file",
        detail: detail.into(),
    }
}

/// Persist `current.meta` atomically: a temporary file of its own, fsync,
/// rename over the current one, fsync of the directory.
fn save_current_file(
    path: &Path,
    current: &CurrentSnapshot,
) -> Result<(), shoal_storage::StorageError> {
    static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
    let body = encode(current)?;
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(CURRENT_MAGIC)?;
        file.write_all(blake3::hash(&body).as_bytes())?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| file_error(path, e))
}

fn read_current_file(path: &Path) -> Result<Option<CurrentSnapshot>, shoal_storage::StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, e)),
    };
    let rest = bytes
        .strip_prefix(CURRENT_MAGIC.as_slice())
        .ok_or_else(|| corrupt("bad magic"))?;
    let (sum, body) = rest
        .split_at_checked(32)
        .ok_or_else(|| corrupt("truncated"))?;
    if blake3::hash(body).as_bytes() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(Some(decode(body)?))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, data) = self
            .blocking(
                |e| StorageIOError::write_snapshot(None, e),
                |sm| {
                    let mut position = sm.lock_snapshots();
                    let (export, data) = sm.write_data_file(|out| sm.store.sm_export(out))?;
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

    /// An unnamed file in the snapshot directory (gone when closed, so an
    /// abandoned transfer leaves nothing behind).
    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let file = self
            .blocking(
                |e| StorageIOError::write_snapshot(None, e),
                |sm| {
                    tempfile::tempfile_in(&sm.snapshot_dir)
                        .map_err(|e| file_error(&sm.snapshot_dir, e))
                },
            )
            .await?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    /// Imports the received data while copying it to a data file of its
    /// own, which becomes the current snapshot.
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
                    .map_err(|e| file_error(&sm.snapshot_dir, e))?;
                let mut position = sm.lock_snapshots();
                let ((), data) = sm.write_data_file(|copy| {
                    sm.store.sm_import(Tee {
                        reader: &mut received,
                        copy,
                    })
                })?;
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
            snapshot: Box::new(tokio::fs::File::from_std(data)),
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
        files.retain(|name| name != CURRENT_FILE);
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

    /// A snapshot received by a follower holds the leader's state, is
    /// served again after a restart, and its data never passes through
    /// memory whole (the same data as built).
    #[tokio::test]
    async fn an_installed_snapshot_holds_the_state_and_survives_a_restart() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let mut leader = machine(leader_dir.path());
        leader
            .apply((1..=20).map(|i| put_entry(i, &format!("k{i}"))))
            .await
            .expect("apply");
        let built = leader.build_snapshot().await.expect("build");
        let data = read_all(built.snapshot).await;

        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut follower = machine(dir.path());
            follower
                .install_snapshot(&built.meta, Box::new(received(&data).await))
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
        assert_eq!(current.meta, built.meta);
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
        for stray in ["data-1-99", "current.tmp-1-2", "current.snap"] {
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
        let mut leader = machine(leader_dir.path());
        leader
            .apply((1..=5).map(|i| put_entry(i, &format!("k{i}"))))
            .await
            .expect("apply");
        let built = leader.build_snapshot().await.expect("build");
        let data = read_all(built.snapshot).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let mut follower = machine(dir.path());
        let truncated = &data[..data.len() - 1];
        assert!(follower
            .install_snapshot(&built.meta, Box::new(received(truncated).await))
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

    /// A damaged snapshot (its meta file or its data file) is dropped, not
    /// loaded or shipped.
    #[tokio::test]
    async fn a_damaged_snapshot_file_is_dropped() {
        for damaged in ["meta", "data"] {
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
                .find(|name| (damaged == "meta") == (*name == CURRENT_FILE))
                .expect("file");
            let path = dir.path().join("snapshots").join(name);
            let mut bytes = std::fs::read(&path).expect("read");
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(&path, bytes).expect("write");
            assert!(sm.get_current_snapshot().await.expect("read").is_none());
            assert_eq!(snapshot_files(dir.path()), Vec::<String>::new());
        }
    }
}
