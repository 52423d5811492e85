//! The RPC server: accepts peers that know the cluster secret and answers
//! their requests one at a time per connection, Raft's with Raft and the
//! rest with the handlers the node supplies in [`PeerServices`].

use futures::future::BoxFuture;
use shoal_raft::{
    local_replication, vote_unless_catching_up, CatchUp, Linearizer, MembershipError, NodeId, Raft,
};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::protocol::{
    send_reply, RemoteError, Reply, Request, SearchAnswer, SearchCall, REPLY_CHUNK_BYTES,
};
use crate::wire::{self, PeerAuth};

/// openraft 0.9 resets a follower's election timer only when a snapshot's
/// last chunk is installed, and a leader sends no heartbeat to a follower
/// while a snapshot is in flight to it: a transfer, or a last chunk's
/// install, longer than the election timeout made the follower campaign,
/// which restarted the transfer, over and over (seen on a loaded machine
/// with a 24 MiB snapshot). A chunk is the leader's proof of life, so it
/// counts as a heartbeat when it arrives and at every heartbeat interval
/// while it is being installed: an empty AppendEntries under the chunk's
/// vote (no previous log id, no entries, no commit index) updates the
/// follower's vote and its timer and nothing else.
async fn install_snapshot_chunk(
    raft: &Raft,
    rpc: openraft::raft::InstallSnapshotRequest<shoal_raft::TypeConfig>,
) -> Result<
    openraft::raft::InstallSnapshotResponse<shoal_raft::NodeId>,
    openraft::error::RaftError<shoal_raft::NodeId, openraft::error::InstallSnapshotError>,
> {
    let heartbeat = openraft::raft::AppendEntriesRequest {
        vote: rpc.vote,
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    let every = Duration::from_millis(raft.config().heartbeat_interval.max(1));
    let install = raft.install_snapshot(rpc);
    tokio::pin!(install);
    loop {
        // A refusal (a stale leader's chunk) is answered by the install itself.
        let _ = raft.append_entries(heartbeat.clone()).await;
        if let Ok(installed) = tokio::time::timeout(every, &mut install).await {
            return installed;
        }
    }
}

/// Handshakes under way at once; a connection past them is closed at once.
const MAX_HANDSHAKES: usize = 64;
/// Back-off after a failed accept (out of file descriptors, most likely).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Takes the message frames peers send (the node's topic router).
pub type MessageInbox = Arc<dyn Fn(&[u8]) -> Result<usize, RemoteError> + Send + Sync>;

/// Answers peers' search requests (the node's log engine).
pub type SearchHandler =
    Arc<dyn Fn(SearchCall) -> BoxFuture<'static, Result<SearchAnswer, RemoteError>> + Send + Sync>;

/// Answers peers' dataset scans (opaque bytes in, Arrow IPC out).
pub type DatasetScanHandler =
    Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RemoteError>> + Send + Sync>;

/// Removes a node from the membership on the leader's behalf (the node's
/// cluster logic, which also remembers the removal).
pub type RemoveHandler =
    Arc<dyn Fn(NodeId) -> BoxFuture<'static, Result<(), MembershipError>> + Send + Sync>;

/// What a node serves to its peers besides Raft.
#[derive(Clone)]
pub struct PeerServices {
    /// Whether this node is still catching up after starting empty.
    pub catch_up: Arc<CatchUp>,
    pub messages: MessageInbox,
    pub search: SearchHandler,
    pub dataset_scan: DatasetScanHandler,
    pub remove_node: RemoveHandler,
}

/// Serve peers until the listener fails. Connections that do not know the
/// cluster secret, or (with TLS) have no certificate from the cluster CA,
/// are closed after the handshake.
pub async fn serve_rpc(
    listener: TcpListener,
    raft: Raft,
    linearizer: Arc<Linearizer>,
    auth: PeerAuth,
    services: PeerServices,
) {
    let auth = Arc::new(auth);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "rpc accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            // Peers that know the secret connect again; strangers holding
            // handshakes open cannot queue more behind them.
            metrics::counter!("shoal_rpc_handshakes_refused_total").increment(1);
            tracing::debug!(%peer, "rpc connection closed: {MAX_HANDSHAKES} handshakes under way");
            continue;
        };
        let (raft, linearizer, auth, services) = (
            raft.clone(),
            linearizer.clone(),
            auth.clone(),
            services.clone(),
        );
        tokio::spawn(async move {
            let served = serve_connection(stream, raft, linearizer, &auth, services, handshake);
            if let Err(e) = served.await {
                tracing::debug!(%peer, error = %e, "rpc connection closed");
            }
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    raft: Raft,
    linearizer: Arc<Linearizer>,
    auth: &PeerAuth,
    services: PeerServices,
    handshake: OwnedSemaphorePermit,
) -> std::io::Result<()> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let accepted = wire::accept(stream, auth).await;
    drop(handshake);
    let mut stream = match accepted {
        Ok(Some(stream)) => stream,
        Ok(None) => {
            tracing::warn!(%peer, "rejected a peer with the wrong cluster secret");
            metrics::counter!("shoal_rpc_rejected_peers_total", "reason" => "secret").increment(1);
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(%peer, error = %e, "rejected a peer without a certificate from the cluster CA");
            metrics::counter!("shoal_rpc_rejected_peers_total", "reason" => "tls").increment(1);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    loop {
        let request: Request = wire::receive(&mut stream).await?;
        let reply = match request {
            Request::AppendEntries(rpc) => Reply::AppendEntries(raft.append_entries(rpc).await),
            Request::Vote(rpc) => {
                Reply::Vote(vote_unless_catching_up(&raft, &services.catch_up, rpc).await)
            }
            Request::InstallSnapshot(rpc) => {
                Reply::InstallSnapshot(install_snapshot_chunk(&raft, rpc).await)
            }
            Request::ClientWrite(proposals) => {
                Reply::ClientWrite(raft.client_write(proposals).await.map(|r| r.data))
            }
            Request::ReadIndex => Reply::ReadIndex(linearizer.read_index().await),
            Request::Replication => Reply::Replication(local_replication(&raft)),
            Request::RemoveNode(id) => Reply::RemoveNode((services.remove_node)(id).await),
            Request::Messages(frame) => Reply::Messages((services.messages)(&frame)),
            Request::Search(call) => Reply::Search((services.search)(call).await),
            Request::DatasetScan(scan) => Reply::DatasetScan(
                (services.dataset_scan)(scan)
                    .await
                    .map(serde_bytes::ByteBuf::from),
            ),
        };
        send_reply(&mut stream, reply, REPLY_CHUNK_BYTES).await?;
    }
}
