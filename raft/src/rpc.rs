//! The node-to-node RPC protocol and its server: Raft messages, plus requests
//! a follower forwards to the leader (writes, read-index, membership).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, LogId};
use serde::{Deserialize, Serialize};
use shoal_storage::kv::{Proposal, Response};
use tokio::net::{TcpListener, TcpStream};

use crate::catch_up::CatchUp;
use crate::linearizer::Linearizer;
use crate::wire::{self, ClusterKey};
use crate::{NodeAddr, NodeId, Raft, TypeConfig};

#[derive(Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Replicate proposals as one log entry (sent to the leader).
    ClientWrite(Vec<Proposal>),
    /// Confirm leadership and return the log id a linearizable read must wait for.
    ReadIndex,
    /// The leader's replication progress per member.
    Replication,
    /// Remove a node from the membership (sent to the leader).
    RemoveNode(NodeId),
    /// A frame of pub/sub messages for this node's router (opaque here).
    Messages(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A log search or aggregation for this node (opaque here).
    Search(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// One response per proposal, in order.
pub type WriteResult = Result<Vec<Response>, RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>>;
pub type ReadIndexResult =
    Result<Option<LogId<NodeId>>, RaftError<NodeId, CheckIsLeaderError<NodeId, NodeAddr>>>;
/// Matched log index per member, as the leader sees it.
pub type Replication = BTreeMap<NodeId, Option<u64>>;

#[derive(Serialize, Deserialize)]
pub(crate) enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    ClientWrite(WriteResult),
    ReadIndex(ReadIndexResult),
    Replication(Option<Replication>),
    RemoveNode(Result<(), String>),
    /// How many local deliveries the frame made, or why it was refused.
    Messages(Result<usize, String>),
    Search(Result<serde_bytes::ByteBuf, String>),
}

/// Takes the message frames peers send (the node's topic router).
pub type MessageInbox = Arc<dyn Fn(&[u8]) -> Result<usize, String> + Send + Sync>;

/// Answers peers' search requests (the node's log engine).
pub type SearchHandler = Arc<
    dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>> + Send + Sync,
>;

/// Removes a node from the membership on the leader's behalf (the node's
/// cluster logic, which also remembers the removal).
pub type RemoveHandler =
    Arc<dyn Fn(NodeId) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What a node serves to its peers besides Raft.
#[derive(Clone)]
pub struct PeerServices {
    /// Whether this node is still catching up after starting empty.
    pub catch_up: Arc<CatchUp>,
    pub messages: MessageInbox,
    pub search: SearchHandler,
    pub remove_node: RemoveHandler,
}

/// Serve peers until the listener fails. Connections that do not know the
/// cluster secret are closed after the handshake.
pub async fn serve_rpc(
    listener: TcpListener,
    raft: Raft,
    linearizer: Arc<Linearizer>,
    key: ClusterKey,
    services: PeerServices,
) {
    let key = Arc::new(key);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "rpc accept failed");
                continue;
            }
        };
        let (raft, linearizer, key, services) = (
            raft.clone(),
            linearizer.clone(),
            key.clone(),
            services.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, raft, linearizer, &key, services).await {
                tracing::debug!(%peer, error = %e, "rpc connection closed");
            }
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    raft: Raft,
    linearizer: Arc<Linearizer>,
    key: &ClusterKey,
    services: PeerServices,
) -> std::io::Result<()> {
    if !wire::accept(&mut stream, key).await? {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::warn!(%peer, "rejected a peer with the wrong cluster secret");
        metrics::counter!("shoal_rpc_rejected_peers_total").increment(1);
        return Ok(());
    }
    loop {
        let request: Request = wire::receive(&mut stream).await?;
        let reply = match request {
            Request::AppendEntries(rpc) => Reply::AppendEntries(raft.append_entries(rpc).await),
            Request::Vote(rpc) => Reply::Vote(vote(&raft, &services.catch_up, rpc).await),
            Request::InstallSnapshot(rpc) => {
                Reply::InstallSnapshot(raft.install_snapshot(rpc).await)
            }
            Request::ClientWrite(proposals) => {
                Reply::ClientWrite(raft.client_write(proposals).await.map(|r| r.data))
            }
            Request::ReadIndex => Reply::ReadIndex(linearizer.read_index().await),
            Request::Replication => Reply::Replication(local_replication(&raft)),
            Request::RemoveNode(id) => Reply::RemoveNode((services.remove_node)(id).await),
            Request::Messages(frame) => Reply::Messages((services.messages)(&frame)),
            Request::Search(body) => Reply::Search(
                (services.search)(body)
                    .await
                    .map(serde_bytes::ByteBuf::from),
            ),
        };
        wire::send(&mut stream, &reply).await?;
    }
}

/// Answer a vote request, refusing it without asking Raft while this node
/// is catching up (see [`CatchUp`]).
async fn vote(
    raft: &Raft,
    catch_up: &CatchUp,
    request: VoteRequest<NodeId>,
) -> Result<VoteResponse<NodeId>, RaftError<NodeId>> {
    if catch_up.may_vote_for(&request) {
        return raft.vote(request).await;
    }
    tracing::info!(candidate = %request.vote, "refusing a vote while catching up after starting empty");
    metrics::counter!("shoal_raft_votes_refused_catching_up_total").increment(1);
    let vote = raft.metrics().borrow().vote;
    Ok(VoteResponse::new(vote, None, false))
}

/// This node's view of replication progress, if it is the leader.
pub fn local_replication(raft: &Raft) -> Option<Replication> {
    let metrics = raft.metrics().borrow().clone();
    metrics.replication.map(|progress| {
        progress
            .into_iter()
            .map(|(id, matched)| (id, matched.map(|log_id| log_id.index)))
            .collect()
    })
}

/// Remove a voter or learner from the membership (on the leader): voters are
/// demoted and dropped in one joint-consensus change.
pub async fn remove_node(raft: &Raft, id: NodeId) -> Result<(), String> {
    let membership = raft.metrics().borrow().membership_config.clone();
    let is_voter = membership.membership().voter_ids().any(|voter| voter == id);
    let is_node = membership.membership().get_node(&id).is_some();
    let change = if is_voter {
        ChangeMembers::RemoveVoters([id].into())
    } else if is_node {
        ChangeMembers::RemoveNodes([id].into())
    } else {
        return Ok(());
    };
    raft.change_membership(change, false)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
