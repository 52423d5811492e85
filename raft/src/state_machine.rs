//! The replicated state machine: applies committed commands to the key/value
//! state in RocksDB and tells the node about each change (for watches).
//!
//! The state machine is persistent (every apply is written to RocksDB), so a
//! snapshot is only needed to ship state to a lagging follower and to allow
//! log purging; the latest snapshot is also kept as a file so it can be
//! served after a restart.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use shoal_storage::kv::{ChangeBatch, Position, Response};
use shoal_storage::{decode, encode, Store};

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
}

type Meta = SnapshotMeta<NodeId, NodeAddr>;
type Membership = StoredMembership<NodeId, NodeAddr>;

impl StateMachine {
    pub fn new(store: Store, snapshot_dir: PathBuf, sink: Arc<dyn ChangeSink>) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(&snapshot_dir)?;
        Ok(StateMachine { store, snapshot_dir, sink })
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
}

/// Persist a snapshot file atomically: temp file, fsync, rename, fsync dir.
fn save_snapshot_file(path: &Path, meta: &Meta, data: &[u8]) -> Result<(), shoal_storage::StorageError> {
    let io = |e: std::io::Error| shoal_storage::StorageError::Codec(format!("snapshot file: {e}"));
    let bytes = encode(&(meta, data))?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

fn load_snapshot_file(path: &Path) -> Result<Option<(Meta, Vec<u8>)>, shoal_storage::StorageError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(decode(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(shoal_storage::StorageError::Codec(format!("snapshot file: {e}"))),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, data) = self
            .blocking(|e| StorageIOError::write_snapshot(None, e), |sm| {
                let export = sm.store.sm_export()?;
                let last_log_id: Option<LogId<NodeId>> = match &export.last_applied {
                    Some(bytes) => Some(decode(bytes)?),
                    None => None,
                };
                let last_membership: Membership = match &export.membership {
                    Some(bytes) => decode(bytes)?,
                    None => Membership::default(),
                };
                let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
                let snapshot_id = match last_log_id {
                    Some(id) => format!("{}-{}-{millis}", id.leader_id.term, id.index),
                    None => format!("0-0-{millis}"),
                };
                let meta = Meta { last_log_id, last_membership, snapshot_id };
                save_snapshot_file(&sm.snapshot_path(), &meta, &export.data)?;
                Ok((meta, export.data))
            })
            .await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
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
                        EntryPayload::Normal(proposals) => {
                            proposals.iter().map(|proposal| batch.apply(proposal)).collect::<Result<Vec<_>, _>>()?
                        }
                        EntryPayload::Blank => Vec::new(),
                        EntryPayload::Membership(changed) => {
                            membership = Some(encode(&Membership::new(Some(entry.log_id), changed.clone()))?);
                            Vec::new()
                        }
                    };
                    responses.push(answers);
                }
                if let Some(last) = entries.last() {
                    let log_id = encode(&last.log_id)?;
                    batch.set_position(Position { log_id: &log_id, membership: membership.as_deref() })?;
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError<NodeId>> {
        let meta = meta.clone();
        let data = snapshot.into_inner();
        self.blocking(|e| StorageIOError::write_snapshot(None, e), move |sm| {
            sm.store.sm_import(&data)?;
            save_snapshot_file(&sm.snapshot_path(), &meta, &data)
        })
        .await?;
        self.sink.replaced();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let loaded = self
            .blocking(|e| StorageIOError::read_snapshot(None, e), |sm| load_snapshot_file(&sm.snapshot_path()))
            .await?;
        Ok(loaded.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
