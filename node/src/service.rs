//! The node's shared state and the three ways the API touches the store:
//! replicated writes, read barriers, and blocking reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use shoal_raft::{ForwardError, Forwarder, Linearizer, NodeId, Raft};
use shoal_storage::kv::{Command, Proposal, Rejection, Response};
use shoal_storage::{StorageError, Store};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::api::error::{ApiError, ApiResult};
use crate::cluster::Gossip;
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
    pub gossip: Gossip,
    pub forwarder: Forwarder,
    pub linearizer: Arc<Linearizer>,
    /// Writes on their way into a batch (see `propose_batches`).
    pub proposals: mpsc::Sender<Pending>,
    /// Signalled to stop the node (after it left the cluster).
    pub shutdown: Notify,
    pub messaging: Arc<shoal_actors::Messaging>,
    /// Logs and traces received by this node.
    pub logs: shoal_search::Logs,
    /// Nodes this node removed while leader, not to be re-added at once.
    pub removals: Arc<crate::cluster::Removals>,
    /// Lease TTLs as this node measures them (see `leases`).
    pub lease_timers: Arc<crate::leases::LeaseTimers>,
    /// Whether this node still refuses votes after starting empty.
    pub catch_up: Arc<shoal_raft::CatchUp>,
}

/// A proposal waiting to be sent, and where its outcome goes.
pub struct Pending {
    proposal: Proposal,
    reply: oneshot::Sender<ApiResult<Response>>,
}

/// Proposals waiting for a batch; a full queue makes writers wait.
pub const PROPOSAL_QUEUE: usize = 4096;
/// Most proposals in one Raft entry.
const MAX_BATCH: usize = 256;
/// Group concurrent writes into Raft entries, one batch in flight per node:
/// while a batch is being written, new proposals gather into the next one.
/// openraft 0.9 handles every client write as an entry of its own (its own
/// append and replication bookkeeping), so one entry per batch of concurrent
/// writes is what lets write throughput grow with the number of clients.
/// Fewer, larger entries went at least as far as more of them in flight
/// (kv-bench, three nodes, before the leader wrote its log in parallel with
/// replication: 16 clients 2 854 puts/s with two batches in flight, 3 154
/// and 3 490 with one; 128 clients about 9 000 to 9 500 either way; after
/// it, two in flight were within the noise at 16 clients and raised put p99
/// at 128 from 17.4-19.6 ms to 21.8-24.5 ms).
pub async fn propose_batches(shoal: Arc<Shoal>, mut queue: mpsc::Receiver<Pending>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        shoal.write_batch(batch).await;
    }
}

/// Pause before asking again while there is no leader.
const NO_LEADER_RETRY: Duration = Duration::from_millis(50);
/// A leader that has not heard from a quorum for this long has lost it.
const QUORUM_ACK_STALE_MS: u64 = 1500;

/// A proposal id: the proposal time (big-endian milliseconds), then 64
/// random bits. Ids only need to be unique (the time decides nothing: see
/// `Proposal::issued_at` for how long ids are remembered); leading with it makes
/// every node's insert of a new id land at the end of RocksDB's sorted
/// memtable instead of at a random place in it (a skip-list walk per write
/// on every node).
fn proposal_id(at_ms: u64) -> [u8; 16] {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&at_ms.to_be_bytes());
    id[8..].copy_from_slice(&rand::random::<[u8; 8]>());
    id
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shoal {
    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms)
    }

    /// Replicate a command and wait until it is committed (durable on a
    /// quorum) and applied. Concurrent commands travel together as one Raft
    /// entry (see `propose_batches`). On a follower the entry is forwarded to
    /// the leader; while there is no leader it retries until the request
    /// timeout. Deterministic rejections become API errors.
    pub async fn write(&self, command: Command) -> ApiResult<Response> {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal {
            id: proposal_id(now_ms()),
            issued_at: self.store.applied_proposals(),
            command,
        };
        let pending = Pending { proposal, reply };
        if self.proposals.send(pending).await.is_err() {
            return Err(ApiError::unavailable("the node is shutting down"));
        }
        let result = match tokio::time::timeout(self.request_timeout(), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ApiError::internal("the proposal was dropped")),
            Err(_) => Err(self.timed_out()),
        };
        metrics::histogram!("shoal_raft_write_seconds").record(started.elapsed().as_secs_f64());
        match result? {
            Response::Rejected(rejection) => Err(rejection_error(rejection)),
            other => Ok(other),
        }
    }

    /// Send one batch of proposals as a single Raft entry and answer each.
    async fn write_batch(&self, batch: Vec<Pending>) {
        let deadline = Instant::now() + self.request_timeout();
        let (proposals, replies): (Vec<Proposal>, Vec<_>) =
            batch.into_iter().map(|p| (p.proposal, p.reply)).unzip();
        metrics::histogram!("shoal_proposal_batch_proposals").record(proposals.len() as f64);
        let count = proposals.len();
        let outcome = match self.write_until(proposals, deadline).await {
            Ok(responses) if responses.len() != count => Err(ApiError::internal(format!(
                "{} responses to {count} proposals",
                responses.len()
            ))),
            other => other,
        };
        match outcome {
            Ok(responses) => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok(response));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Retries (another leader, a lost connection) resend the same proposal
    /// ids, so proposals that were committed after all are not applied twice.
    async fn write_until(
        &self,
        proposals: Vec<Proposal>,
        deadline: Instant,
    ) -> ApiResult<Vec<Response>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            let leader =
                match tokio::time::timeout(left, self.raft.client_write(proposals.clone())).await {
                    Err(_) => return Err(self.timed_out()),
                    Ok(Ok(written)) => return Ok(written.data),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                        forward.leader_node
                    }
                    Ok(Err(e)) => return Err(ApiError::unavailable(format!("write failed: {e}"))),
                };
            let Some(leader) = leader else {
                tokio::time::sleep(NO_LEADER_RETRY.min(left)).await;
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .forwarder
                .client_write(&leader.rpc, proposals.clone(), left)
                .await
            {
                Ok(Ok(response)) => return Ok(response),
                // Leadership moved, or the leader is gone: ask again.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {}
                Ok(Err(e)) => {
                    return Err(ApiError::unavailable(format!(
                        "write failed on the leader: {e}"
                    )))
                }
                Err(ForwardError::Timeout { .. }) => return Err(self.timed_out()),
                Err(e) => tracing::debug!(error = %e, "forwarding to the leader failed; retrying"),
            }
            tokio::time::sleep(
                NO_LEADER_RETRY.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    /// Wait until this node may serve a linearizable read (read-index:
    /// the leader confirms its leadership with a quorum and names the log
    /// index to wait for; this node waits until it has applied it).
    pub async fn read_barrier(&self, stale: bool) -> ApiResult<()> {
        if stale {
            return Ok(());
        }
        let deadline = Instant::now() + self.request_timeout();
        let read_index = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            let leader = match tokio::time::timeout(left, self.linearizer.read_index()).await {
                Err(_) => return Err(self.timed_out()),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                    forward.leader_node
                }
                Ok(Err(e)) => {
                    return Err(ApiError::unavailable(format!(
                        "cannot confirm leadership: {e}"
                    )))
                }
            };
            if let Some(leader) = leader {
                match self.forwarder.read_index(&leader.rpc, left).await {
                    Ok(Ok(read_index)) => break read_index,
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {}
                    Ok(Err(e)) => {
                        return Err(ApiError::unavailable(format!(
                            "the leader cannot confirm leadership: {e}"
                        )))
                    }
                    Err(ForwardError::Timeout { .. }) => return Err(self.timed_out()),
                    Err(e) => {
                        tracing::debug!(error = %e, "read-index from the leader failed; retrying")
                    }
                }
            }
            tokio::time::sleep(
                NO_LEADER_RETRY.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        };
        let Some(read_index) = read_index else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(read_index.index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| self.timed_out())
    }

    /// A request ran out of time: say whether it is for want of a quorum.
    fn timed_out(&self) -> ApiError {
        let metrics = self.raft.metrics().borrow().clone();
        let quorum_lost = match metrics.state {
            ServerState::Leader => metrics
                .millis_since_quorum_ack
                .is_none_or(|ms| ms > QUORUM_ACK_STALE_MS),
            _ => metrics.current_leader.is_none(),
        };
        if quorum_lost {
            ApiError::unavailable(
                "no quorum: the cluster cannot commit or confirm right now; retry later",
            )
        } else {
            ApiError::timeout()
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
        Rejection::ProposalExpired => ApiError::unavailable(
            "the write was retried too late to tell whether its first attempt was applied; read the key and retry",
        ),
    }
}
