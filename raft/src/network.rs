//! Node-to-node RPC: one TCP listener per node; frames are a u32 big-endian
//! length, a version byte, then a bincode body. One request, one response,
//! in order, per connection.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use shoal_storage::{decode, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{NodeAddr, NodeId, Raft, TypeConfig};

const WIRE_VERSION: u8 = 1;
/// Largest frame accepted; snapshot chunks and append batches stay far below.
const MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Serialize, Deserialize)]
enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

#[derive(Serialize, Deserialize)]
enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len() + 1).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(WIRE_VERSION);
    frame.extend_from_slice(body);
    stream.write_all(&frame).await
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u32().await? as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(std::io::Error::other(format!("bad frame length {len}")));
    }
    let mut frame = vec![0; len];
    stream.read_exact(&mut frame).await?;
    if frame[0] != WIRE_VERSION {
        return Err(std::io::Error::other(format!("unknown wire version {}", frame[0])));
    }
    frame.remove(0);
    Ok(frame)
}

/// Serve Raft RPCs from peers until the listener fails.
pub async fn serve_rpc(listener: TcpListener, raft: Raft) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "rpc accept failed");
                continue;
            }
        };
        let raft = raft.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, raft).await {
                tracing::debug!(%peer, error = %e, "rpc connection closed");
            }
        });
    }
}

async fn serve_connection(mut stream: TcpStream, raft: Raft) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let frame = read_frame(&mut stream).await?;
        let request: Request = decode(&frame).map_err(std::io::Error::other)?;
        let reply = match request {
            Request::AppendEntries(rpc) => Reply::AppendEntries(raft.append_entries(rpc).await),
            Request::Vote(rpc) => Reply::Vote(raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => Reply::InstallSnapshot(raft.install_snapshot(rpc).await),
        };
        write_frame(&mut stream, &encode(&reply).map_err(std::io::Error::other)?).await?;
    }
}

/// Creates one connection per peer.
#[derive(Clone, Default)]
pub struct RpcNetwork;

impl RaftNetworkFactory<TypeConfig> for RpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerConnection {
        PeerConnection { target, addr: node.rpc.clone(), stream: None }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    stream: Option<TcpStream>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeAddr, E>>;

impl PeerConnection {
    async fn call<E: std::error::Error>(&mut self, request: Request, option: &RPCOption) -> RpcResult<Reply, E> {
        let body = encode(&request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let exchange = async {
            if self.stream.is_none() {
                let stream = TcpStream::connect(&self.addr).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
                stream.set_nodelay(true).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
                self.stream = Some(stream);
            }
            let Some(stream) = self.stream.as_mut() else {
                return Err(RPCError::Network(NetworkError::new(&std::io::Error::other("no connection"))));
            };
            write_frame(stream, &body).await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            let frame = read_frame(stream).await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            decode::<Reply>(&frame).map_err(|e| RPCError::Network(NetworkError::new(&e)))
        };
        let result = match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(result) => result,
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        };
        if result.is_err() {
            // A broken or timed-out connection may hold a half-read frame.
            self.stream = None;
        }
        result
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, NodeAddr, E> {
        RPCError::Network(NetworkError::new(&std::io::Error::other("reply of the wrong kind")))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(result) => result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Reply::Vote(result) => result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }
}
