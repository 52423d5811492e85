//! openraft's network: one authenticated TCP connection per peer, one
//! request and one reply at a time.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use shoal_raft::{NodeAddr, NodeId, TypeConfig};

use crate::protocol::{Reply, Request};
use crate::wire::{self, PeerAuth, PeerStream};

/// Creates openraft's connections to peers (give it to `Raft::new`).
#[derive(Clone)]
pub struct RpcNetwork {
    auth: PeerAuth,
}

impl RpcNetwork {
    pub fn new(auth: PeerAuth) -> RpcNetwork {
        RpcNetwork { auth }
    }
}

impl RaftNetworkFactory<TypeConfig> for RpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.rpc.clone(),
            auth: self.auth.clone(),
            stream: None,
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    auth: PeerAuth,
    stream: Option<PeerStream>,
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
        let exchange = async {
            if self.stream.is_none() {
                let stream = wire::connect(&self.addr, &self.auth)
                    .await
                    .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
                self.stream = Some(stream);
            }
            let Some(stream) = self.stream.as_mut() else {
                return Err(network_error(std::io::Error::other("no connection")));
            };
            wire::send(stream, &request).await.map_err(network_error)?;
            wire::receive::<Reply>(stream).await.map_err(network_error)
        };
        let result = match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(result) => result,
            Err(e) => Err(network_error(e)),
        };
        if result.is_err() {
            // A broken or timed-out connection may hold a half-read frame.
            self.stream = None;
        }
        result
    }

    fn remote<T, E: std::error::Error>(&self, result: Result<T, E>) -> RpcResult<T, E> {
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn wrong_reply<E: std::error::Error>() -> RPCError<NodeId, NodeAddr, E> {
    network_error(std::io::Error::other("reply of the wrong kind"))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(result) => self.remote(result),
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
