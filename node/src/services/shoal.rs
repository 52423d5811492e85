//! The node's shared state and the three ways the services touch the
//! store: replicated writes, read barriers, and blocking reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use shoal_raft::{Linearizer, NodeId, Raft};
use shoal_storage::kv::{
    Command, Compare, CompareOp, CompareTarget, OpResult, Proposal, Rejection, Response, Txn, TxnOp,
};
use shoal_storage::now_ms;
use shoal_storage::{StorageError, Store};
use shoal_transport::{ForwardError, Forwarder};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Notify};

use super::lease_timers::LeaseTimers;
use super::watch_hub::WatchHub;
use crate::cluster::Cluster;
use crate::settings::Settings;

/// Why a replicated write, a read barrier or a store read failed. The texts
/// are what clients see.
#[derive(Clone, Debug, Error)]
pub enum KvError {
    #[error("{0}")]
    Unavailable(String),
    #[error("no quorum: the cluster cannot commit or confirm right now; retry later")]
    NoQuorum,
    #[error("the request did not complete in time")]
    Timeout,
    #[error("{0}")]
    Internal(String),
    #[error("storage: {0}")]
    Storage(Arc<StorageError>),
    #[error("lease {0} does not exist or has expired")]
    LeaseNotFound(u64),
    #[error("the key does not exist and has no history")]
    KeyNotFound,
    /// A write named a revision older than the compaction point.
    #[error("the requested revision is older than the compaction point {compact_revision}")]
    Compacted { compact_revision: u64 },
    #[error("revision {revision} is in the future (current revision is {current})")]
    FutureRevision { revision: u64, current: u64 },
    #[error(
        "the write was retried too late to tell whether its first attempt was applied; \
         read the key and retry"
    )]
    ProposalExpired,
    /// A watch asked for history that compaction removed.
    #[error(
        "revision {from} has been compacted (oldest available is {compact_revision}); \
         re-list the keys and watch from the first page's revision + 1"
    )]
    HistoryCompacted { from: u64, compact_revision: u64 },
    /// A space alarm is raised (see `services::space`): only writes that
    /// free space are taken.
    #[error("{0}")]
    NoSpace(super::space::Alarm),
}

pub type KvResult<T> = Result<T, KvError>;

impl From<Rejection> for KvError {
    fn from(rejection: Rejection) -> KvError {
        match rejection {
            Rejection::LeaseNotFound(id) => KvError::LeaseNotFound(id),
            Rejection::KeyNotFound => KvError::KeyNotFound,
            Rejection::Compacted { compact_revision } => KvError::Compacted { compact_revision },
            Rejection::FutureRevision { revision, current } => {
                KvError::FutureRevision { revision, current }
            }
            Rejection::ProposalExpired => KvError::ProposalExpired,
        }
    }
}

pub struct Shoal {
    pub node_id: NodeId,
    pub settings: Settings,
    pub raft: Raft,
    pub store: Store,
    pub hub: Arc<WatchHub>,
    pub committed_index: Arc<AtomicU64>,
    pub started: Instant,
    /// Membership, gossip and the cluster duties' state.
    pub cluster: Arc<Cluster>,
    /// Pooled connections to peers (forwarding to the leader, search fan-out).
    pub forwarder: Arc<Forwarder>,
    pub linearizer: Arc<Linearizer>,
    /// Writes on their way into a batch (see `propose_batches`).
    pub proposals: mpsc::Sender<Pending>,
    /// Signalled to stop the node (after it left the cluster).
    pub shutdown: Notify,
    pub messaging: Arc<shoal_actors::Messaging>,
    /// Logs and traces received by this node.
    pub logs: shoal_search::Logs,
    /// Lease TTLs as this node measures them (see `lease_timers`).
    pub lease_timers: Arc<LeaseTimers>,
    /// Set once this node has applied everything committed since it
    /// started (see `api::node::ready`).
    pub caught_up: std::sync::atomic::AtomicBool,
    /// Unfinished workflow instances in this replica, as the intake counts
    /// them (see `--workflow-max-unfinished`).
    pub unfinished_instances: AtomicU64,
    /// Events in the workflow event inbox of this replica, as the intake
    /// counts them (see `workflow_events::MAX_WAITING`).
    pub waiting_events: AtomicU64,
    /// The client for requests to users' URLs (webhooks, workflow calls),
    /// which applies the outbound policy (`--outbound-allow`).
    pub outbound: shoal_outbound::Outbound,
    /// Where the API's audit records go (see `api::audit`), to be indexed
    /// into the stream `audit`.
    pub audit: mpsc::Sender<shoal_search::Record>,
    /// Tokens, roles and policies as this replica has them (see `load_config`).
    pub acl: Arc<shoal_acl::Acl>,
    /// The client for requests to peers' APIs (fan-outs).
    pub peer_http: reqwest::Client,
    /// Fault injection for the fault tests (debug builds only).
    pub faults: crate::faults::Faults,
    /// Where workflow expressions run (processes of their own).
    pub evaluator: Arc<super::evaluator::Evaluator>,
    /// The space alarms raised on this node and in the cluster.
    pub space: super::space::SpaceAlarms,
    /// Blocking reads that may run at once (see [`Shoal::read`]).
    pub reads: Arc<tokio::sync::Semaphore>,
    /// The last whole-state digest, held while one is computed: one at a
    /// time, and callers that queued behind it take it if nothing has been
    /// applied since (see `api::cluster::digest`).
    pub digest: Arc<tokio::sync::Mutex<Option<shoal_storage::kv::Digest>>>,
}

/// Blocking reads a node runs at once, per core. Reads are CPU work on data
/// in the page cache; past a few per core more threads only take CPU from
/// the async workers (Raft heartbeats among them) and make each read slower.
const READS_PER_CORE: usize = 4;

/// The permits of [`Shoal::reads`].
pub fn read_permits() -> Arc<tokio::sync::Semaphore> {
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    Arc::new(tokio::sync::Semaphore::new(cores * READS_PER_CORE))
}

/// What a create-only write ([`Shoal::create`]) found.
#[derive(Debug)]
pub enum Created {
    /// The key was written at this revision.
    Written(u64),
    /// The key existed (nothing was written): its value and revision.
    Exists { value: Vec<u8>, revision: u64 },
}

/// A proposal waiting to be sent, and where its outcome goes.
pub struct Pending {
    proposal: Proposal,
    reply: oneshot::Sender<KvResult<Response>>,
}

/// Proposals waiting for a batch; a full queue makes writers wait.
pub const PROPOSAL_QUEUE: usize = 4096;
/// Most proposals in one Raft entry.
const MAX_BATCH: usize = 256;
/// Most bytes of proposals in one Raft entry (about: see
/// `Proposal::approx_bytes`); a proposal larger than this goes alone.
/// Concurrent writes of large values would otherwise make entries of
/// hundreds of megabytes, past what one node-to-node message may carry.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Group concurrent writes into Raft entries, one batch in flight per node:
/// while a batch is being written, new proposals gather into the next one.
/// openraft 0.9 handles every client write as an entry of its own (its own
/// append and replication bookkeeping), so one entry per batch of concurrent
/// writes is what lets write throughput grow with the number of clients.
/// One batch in flight rather than several: fewer, larger entries go at
/// least as far, with lower tail latency (figures in bench/README.md).
pub async fn propose_batches(shoal: Arc<Shoal>, mut queue: mpsc::Receiver<Pending>) {
    // A proposal that would have made the last batch too large starts the next.
    let mut held_over = None;
    loop {
        let first = match held_over.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = first.proposal.approx_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(more) = queue.try_recv() else { break };
            bytes += more.proposal.approx_bytes();
            if bytes > MAX_BATCH_BYTES {
                held_over = Some(more);
                break;
            }
            batch.push(more);
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

impl Shoal {
    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms)
    }

    /// Replicate a command and wait until it is committed (durable on a
    /// quorum) and applied. Concurrent commands travel together as one Raft
    /// entry (see `propose_batches`). On a follower the entry is forwarded to
    /// the leader; while there is no leader it retries until the request
    /// timeout. Deterministic rejections become errors.
    pub async fn write(&self, command: Command) -> KvResult<Response> {
        if let Some(alarm) = self.space.refuses(&command) {
            metrics::counter!("shoal_kv_writes_refused_total", "alarm" => alarm.name())
                .increment(1);
            return Err(KvError::NoSpace(alarm));
        }
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal {
            id: proposal_id(now_ms()),
            issued_at: self.store.applied_proposals(),
            command,
        };
        let pending = Pending { proposal, reply };
        if self.proposals.send(pending).await.is_err() {
            return Err(KvError::Unavailable("the node is shutting down".into()));
        }
        let result = match tokio::time::timeout(self.request_timeout(), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(KvError::Internal("the proposal was dropped".into())),
            Err(_) => Err(self.timed_out()),
        };
        metrics::histogram!("shoal_raft_write_seconds").record(started.elapsed().as_secs_f64());
        match result? {
            Response::Rejected(rejection) => Err(rejection.into()),
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
            Ok(responses) if responses.len() != count => Err(KvError::Internal(format!(
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
    ) -> KvResult<Vec<Response>> {
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
                    Ok(Err(e)) => return Err(KvError::Unavailable(format!("write failed: {e}"))),
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
                    return Err(KvError::Unavailable(format!(
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

    /// Replicate a transaction ([`Shoal::write`]); whether its compares
    /// held, its revision, and the results of the branch that ran.
    pub async fn txn(&self, txn: Txn) -> KvResult<(bool, u64, Vec<OpResult>)> {
        match self.write(Command::Txn(txn)).await? {
            Response::Txn {
                succeeded,
                revision,
                results,
            } => Ok((succeeded, revision, results)),
            other => Err(KvError::Internal(format!(
                "unexpected answer to a transaction: {other:?}"
            ))),
        }
    }

    /// Write a key only if it was never created: one transaction that
    /// otherwise reads it.
    pub async fn create(&self, key: String, value: Vec<u8>) -> KvResult<Created> {
        let (succeeded, revision, results) = self
            .txn(Txn {
                compare: vec![Compare {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::CreateRevision(0),
                }],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value,
                    lease: 0,
                }],
                failure: vec![TxnOp::Get { key }],
            })
            .await?;
        if succeeded {
            return Ok(Created::Written(revision));
        }
        match results.into_iter().next() {
            Some(OpResult::Get { kv: Some(kv) }) => Ok(Created::Exists {
                value: kv.value,
                revision: kv.mod_revision,
            }),
            other => Err(KvError::Internal(format!(
                "a failed create-only transaction read {other:?}"
            ))),
        }
    }

    /// Delete one key; the deletion's revision, or `None` if the key did
    /// not exist (then nothing was written).
    pub async fn delete_key(&self, key: String) -> KvResult<Option<u64>> {
        let (_, revision, results) = self
            .txn(Txn {
                compare: vec![],
                success: vec![TxnOp::Delete { key, prefix: false }],
                failure: vec![],
            })
            .await?;
        let deleted = results
            .iter()
            .any(|r| matches!(r, OpResult::Delete { deleted } if *deleted > 0));
        Ok(deleted.then_some(revision))
    }

    /// Wait until this node may serve a linearizable read (read-index:
    /// the leader confirms its leadership with a quorum and names the log
    /// index to wait for; this node waits until it has applied it).
    pub async fn read_barrier(&self, stale: bool) -> KvResult<()> {
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
                    return Err(KvError::Unavailable(format!(
                        "cannot confirm leadership: {e}"
                    )))
                }
            };
            if let Some(leader) = leader {
                match self.forwarder.read_index(&leader.rpc, left).await {
                    Ok(Ok(read_index)) => break read_index,
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {}
                    Ok(Err(e)) => {
                        return Err(KvError::Unavailable(format!(
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
    fn timed_out(&self) -> KvError {
        let metrics = self.raft.metrics().borrow().clone();
        let quorum_lost = match metrics.state {
            ServerState::Leader => metrics
                .millis_since_quorum_ack
                .is_none_or(|ms| ms > QUORUM_ACK_STALE_MS),
            _ => metrics.current_leader.is_none(),
        };
        if quorum_lost {
            KvError::NoQuorum
        } else {
            KvError::Timeout
        }
    }

    /// Run blocking RocksDB work on the blocking pool, at most
    /// [`READS_PER_CORE`] per core at once. The rest wait without a thread,
    /// and one whose request is dropped while it waits never starts (work
    /// on the blocking pool, once started, cannot be stopped).
    pub async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
    ) -> KvResult<T> {
        let permit = self
            .reads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| KvError::Internal("the node is stopping".into()))?;
        read_on_blocking_pool(self.store.clone(), Some(permit), work).await
    }

    /// [`Shoal::read`] without waiting for a permit: for reads of a few
    /// keys that never wait for a snapshot import (status, metrics), which
    /// must answer while every permit is held by reads waiting for one.
    pub async fn read_without_permit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
    ) -> KvResult<T> {
        read_on_blocking_pool(self.store.clone(), None, work).await
    }

    /// Whether this node currently leads (background duties run on the leader).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    pub fn committed(&self) -> u64 {
        self.committed_index.load(Ordering::Relaxed)
    }
}

/// Run `work` on the blocking pool. The permit goes with the work, not with
/// the caller: a caller that gives up does not stop work already on the
/// blocking pool, and a permit given back with the caller let more reads
/// run than the limit allows (all of them stuck behind a snapshot import,
/// until the blocking pool itself was full).
async fn read_on_blocking_pool<T: Send + 'static>(
    store: Store,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    work: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
) -> KvResult<T> {
    let blocking = move || {
        let _permit = permit;
        work(&store)
    };
    match tokio::task::spawn_blocking(blocking).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "storage error");
            Err(KvError::Storage(Arc::new(e)))
        }
        Err(e) => Err(KvError::Internal(format!("read task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_its_caller_gave_up_on_holds_its_permit_until_it_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = permits.clone().acquire_owned().await.expect("permit");
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let read = read_on_blocking_pool(store, Some(permit), move |_| {
            let _ = finished.recv();
            Ok(())
        });
        // Polled once, then dropped: the read goes on on its thread.
        let given_up = futures::FutureExt::now_or_never(read);
        assert!(given_up.is_none(), "the read finished in its first poll");
        assert_eq!(
            permits.available_permits(),
            0,
            "the read still runs, but its permit was given back"
        );
        finish.send(()).expect("the read waits");
        let back = tokio::time::timeout(Duration::from_secs(10), permits.acquire()).await;
        assert!(
            back.is_ok(),
            "the permit did not come back when the read ended"
        );
    }
}
