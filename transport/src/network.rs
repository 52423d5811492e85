//! openraft's network: an authenticated connection per peer client, one
//! request and one reply at a time. openraft makes a new client for every
//! heartbeat round of a linearizable read and every election; the
//! connections of clients it drops go back to a pool shared by all, so a
//! read does not open (and, with TLS, handshake) a connection per voter.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Entry;
use shoal_raft::{approx_entry_bytes, NodeAddr, NodeId, TypeConfig};

use std::sync::Arc;

use crate::pool::{ExchangeError, IdleConnections};
use crate::protocol::{Reply, Request};
use crate::wire::{self, PeerAuth, PeerStream};

/// Creates openraft's connections to peers (give it to `Raft::new`).
#[derive(Clone)]
pub struct RpcNetwork {
    auth: PeerAuth,
    idle: Arc<IdleConnections>,
}

impl RpcNetwork {
    pub fn new(auth: PeerAuth) -> RpcNetwork {
        RpcNetwork {
            auth,
            idle: Arc::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for RpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.rpc.clone(),
            auth: self.auth.clone(),
            idle: self.idle.clone(),
            stream: None,
            busy: false,
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    auth: PeerAuth,
    idle: Arc<IdleConnections>,
    stream: Option<PeerStream>,
    /// A call is under way on `stream`, or was dropped before it finished;
    /// the stream may then hold half a frame or an unread reply, and is
    /// closed instead of used again or given back.
    busy: bool,
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        if let (false, Some(stream)) = (self.busy, self.stream.take()) {
            self.idle.give_back(&self.addr, stream);
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeAddr, E>>;

fn network_error<E: std::error::Error>(
    e: impl std::error::Error + 'static,
) -> RPCError<NodeId, NodeAddr, E> {
    RPCError::Network(NetworkError::new(&e))
}

impl PeerConnection {
    async fn call<E: std::error::Error>(
        &mut self,
        request: Request,
        option: &RPCOption,
    ) -> RpcResult<Reply, E> {
        if self.busy {
            // The last call was dropped before it finished (openraft times
            // out its own calls and keeps the client): its request may be
            // half written, or its reply still to come, which the next call
            // would read as its own.
            self.stream = None;
        }
        self.busy = true;
        let result = match tokio::time::timeout(option.hard_ttl(), self.exchange(&request)).await {
            Ok(result) => result,
            Err(e) => Err(network_error(e)),
        };
        self.busy = false;
        if result.is_err() {
            // A broken or timed-out connection may hold a half-read frame.
            self.stream = None;
        }
        result
    }

    async fn exchange<E: std::error::Error>(&mut self, request: &Request) -> RpcResult<Reply, E> {
        if let Some(stream) = self.stream.as_mut() {
            wire::send(stream, request).await.map_err(network_error)?;
            return wire::receive::<Reply>(stream).await.map_err(network_error);
        }
        let (reply, stream) = self
            .idle
            .exchange(&self.addr, &self.auth, request)
            .await
            .map_err(|e| match e {
                ExchangeError::Connect(e) => RPCError::Unreachable(Unreachable::new(&e)),
                ExchangeError::Exchange(e) => network_error(e),
            })?;
        self.stream = Some(stream);
        Ok(reply)
    }

    fn remote<T, E: std::error::Error>(&self, result: Result<T, E>) -> RpcResult<T, E> {
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn wrong_reply<E: std::error::Error>() -> RPCError<NodeId, NodeAddr, E> {
    network_error(std::io::Error::other("reply of the wrong kind"))
}

/// Most bytes of entries (about: [`approx_entry_bytes`]) one AppendEntries
/// carries; openraft bounds it by how many entries only, and entries can
/// hold megabytes each. The rest follows in the next message (openraft's
/// `PartialSuccess`). Far below the frame limit, and small enough to be
/// written on the follower within the call's timeout, which openraft sets
/// to the heartbeat interval (a fifth of `--election-timeout-ms`).
const MAX_APPEND_BYTES: usize = 4 << 20;

/// How many of `entries`, from the first, fit in `budget` bytes: at least
/// one, so that any entry can be sent.
fn entries_within(entries: &[Entry<TypeConfig>], budget: usize) -> usize {
    let mut bytes = 0;
    for (i, entry) in entries.iter().enumerate() {
        bytes += approx_entry_bytes(entry);
        if bytes > budget && i > 0 {
            return i;
        }
    }
    entries.len()
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let fit = entries_within(&rpc.entries, MAX_APPEND_BYTES);
        // The follower commits no further than the last entry it got from
        // this leader, whatever `leader_commit` says.
        let sent_part = (fit < rpc.entries.len()).then(|| {
            rpc.entries.truncate(fit);
            rpc.entries.last().map(|entry| entry.log_id)
        });
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(result) => match (self.remote(result)?, sent_part) {
                (AppendEntriesResponse::Success, Some(last_sent)) => {
                    Ok(AppendEntriesResponse::PartialSuccess(last_sent))
                }
                (response, _) => Ok(response),
            },
            _ => Err(wrong_reply()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(result) => self.remote(result),
            _ => Err(wrong_reply()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Reply::Vote(result) => self.remote(result),
            _ => Err(wrong_reply()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{VoteRequest, VoteResponse};
    use openraft::Vote;
    use shoal_raft::NodeAddr;
    use tokio::net::TcpListener;

    use super::RpcNetwork;
    use crate::protocol::{Reply, Request};
    use crate::wire::{self, PeerAuth};

    /// A peer that answers each vote request with the request's own vote,
    /// the one of term 1 only after `delay`.
    async fn slow_peer(delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let auth = PeerAuth::new(Some("secret"), None);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(Some(mut stream)) = wire::accept(tcp, &auth).await else {
                    continue;
                };
                tokio::spawn(async move {
                    while let Ok(Request::Vote(request)) = wire::receive(&mut stream).await {
                        if request.vote.leader_id().term == 1 {
                            tokio::time::sleep(delay).await;
                        }
                        let reply = Reply::Vote(Ok(VoteResponse::new(request.vote, None, true)));
                        if wire::send(&mut stream, &reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_reply_leaves_no_reply_for_the_next_call() {
        let addr = slow_peer(Duration::from_millis(300)).await;
        let node = NodeAddr {
            rpc: addr,
            api: String::new(),
        };
        let mut network = RpcNetwork::new(PeerAuth::new(Some("secret"), None));
        let mut client = network.new_client(2, &node).await;
        let option = || RPCOption::new(Duration::from_secs(10));
        // Open the connection with a call that finishes.
        let warm = client
            .vote(VoteRequest::new(Vote::new(3, 1), None), option())
            .await
            .expect("vote of term 3");
        assert_eq!(warm.vote.leader_id().term, 3);
        // As openraft does: its own timeout around the call drops it while
        // the peer has not answered yet, and the client is used again.
        let dropped = tokio::time::timeout(
            Duration::from_millis(50),
            client.vote(VoteRequest::new(Vote::new(1, 1), None), option()),
        )
        .await;
        assert!(dropped.is_err(), "the call of term 1 should have timed out");
        let answer = client
            .vote(VoteRequest::new(Vote::new(2, 1), None), option())
            .await
            .expect("vote of term 2");
        assert_eq!(
            answer.vote.leader_id().term,
            2,
            "the call of term 2 got the reply to the dropped call of term 1"
        );
    }
}
