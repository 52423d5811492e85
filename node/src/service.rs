//! The node's shared state and the three ways the API touches the store:
//! replicated writes, read barriers, and blocking reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use shoal_raft::{NodeId, Raft};
use shoal_storage::kv::{Command, Rejection, Response};
use shoal_storage::{Store, StorageError};

use crate::api::error::{ApiError, ApiResult};
use crate::settings::Settings;
use crate::watch::WatchHub;

pub struct Shoal {
    pub node_id: NodeId,
    pub settings: Settings,
    pub raft: Raft,
    pub store: Store,
    pub hub: Arc<WatchHub>,
    pub committed_index: Arc<AtomicU64>,
    pub started: Instant,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Shoal {
    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms)
    }

    /// Replicate a command and wait until it is committed (durable on a
    /// quorum) and applied; deterministic rejections become API errors.
    pub async fn write(&self, command: Command) -> ApiResult<Response> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.request_timeout(), self.raft.client_write(command)).await;
        metrics::histogram!("shoal_raft_write_seconds").record(started.elapsed().as_secs_f64());
        let response = match result {
            Err(_) => return Err(ApiError::timeout()),
            Ok(Ok(written)) => written.data,
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                return Err(no_leader(forward.leader_id));
            }
            Ok(Err(e)) => return Err(ApiError::unavailable(format!("write failed: {e}"))),
        };
        match response {
            Response::Rejected(rejection) => Err(rejection_error(rejection)),
            other => Ok(other),
        }
    }

    /// Wait until this node may serve a linearizable read (read-index:
    /// confirm leadership with a quorum, then wait until applied).
    pub async fn read_barrier(&self, stale: bool) -> ApiResult<()> {
        if stale {
            return Ok(());
        }
        match tokio::time::timeout(self.request_timeout(), self.raft.ensure_linearizable()).await {
            Err(_) => Err(ApiError::timeout()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(forward)))) => {
                Err(no_leader(forward.leader_id))
            }
            Ok(Err(e)) => Err(ApiError::unavailable(format!("cannot confirm leadership: {e}"))),
        }
    }

    /// Run blocking RocksDB work on the blocking pool.
    pub async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
    ) -> ApiResult<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(ApiError::internal(format!("read task failed: {e}"))),
        }
    }

    /// Whether this node currently leads (background duties run on the leader).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    pub fn committed(&self) -> u64 {
        self.committed_index.load(Ordering::Relaxed)
    }
}

fn no_leader(leader: Option<NodeId>) -> ApiError {
    match leader {
        Some(leader) => ApiError::unavailable(format!("this node is not the leader (node {leader} is); retry there"))
            .with("leader", serde_json::json!(leader)),
        None => ApiError::unavailable("there is no Raft leader (no quorum); retry later"),
    }
}

fn rejection_error(rejection: Rejection) -> ApiError {
    match rejection {
        Rejection::LeaseNotFound(id) => ApiError::lease_not_found(id),
        Rejection::KeyNotFound => {
            ApiError::new(axum::http::StatusCode::NOT_FOUND, "key_not_found", "the key does not exist and has no history")
        }
        Rejection::Compacted { compact_revision } => ApiError::new(
            axum::http::StatusCode::GONE,
            "compacted",
            format!("the requested revision is older than the compaction point {compact_revision}"),
        )
        .with("compact_revision", serde_json::json!(compact_revision)),
        Rejection::FutureRevision { revision, current } => {
            ApiError::invalid_revision(format!("revision {revision} is in the future (current revision is {current})"))
        }
    }
}
