//! The pooled client: requests a node sends to a peer (writes and
//! read-index to the leader on a client's behalf, membership removal,
//! search fan-out, message frames), over authenticated connections kept
//! open between calls.

use std::time::Duration;

use shoal_raft::{MembershipError, NodeId, ReadIndexResult, Replication};
use shoal_storage::kv::Proposal;
use thiserror::Error;

use crate::pool::{ExchangeError, IdleConnections};
use crate::protocol::{RemoteError, Reply, Request, SearchAnswer, SearchCall, WriteResult};
use crate::wire::{self, PeerAuth};

/// The exchange itself failed (the peer's own refusals are in the inner result).
#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} did not answer in time")]
    Timeout { addr: String },
    #[error("{addr} answered with the wrong kind of reply")]
    WrongReply { addr: String },
}

/// A pool of connections to peers' RPC listeners.
pub struct Forwarder {
    auth: PeerAuth,
    idle: IdleConnections,
}

impl Forwarder {
    pub fn new(auth: PeerAuth) -> Forwarder {
        Forwarder {
            auth,
            idle: IdleConnections::default(),
        }
    }

    async fn call(
        &self,
        addr: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply, ForwardError> {
        let exchange = self.idle.exchange(addr, &self.auth, request);
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(ForwardError::Timeout {
                addr: addr.to_string(),
            }),
            Ok(Err(ExchangeError::Connect(source) | ExchangeError::Exchange(source))) => {
                Err(ForwardError::Unreachable {
                    addr: addr.to_string(),
                    source,
                })
            }
            Ok(Ok((reply, stream))) => {
                self.idle.give_back(addr, stream);
                Ok(reply)
            }
        }
    }

    /// Connects to `addr` and completes the handshake, which proves (with
    /// TLS) that the peer holds a certificate from the cluster CA and that
    /// it knows the cluster secret; the connection is kept for later calls.
    pub async fn probe(&self, addr: &str, timeout: Duration) -> Result<(), ForwardError> {
        match tokio::time::timeout(timeout, wire::connect(addr, &self.auth)).await {
            Err(_) => Err(ForwardError::Timeout {
                addr: addr.to_string(),
            }),
            Ok(Err(source)) => Err(ForwardError::Unreachable {
                addr: addr.to_string(),
                source,
            }),
            Ok(Ok(stream)) => {
                self.idle.give_back(addr, stream);
                Ok(())
            }
        }
    }

    pub async fn client_write(
        &self,
        addr: &str,
        proposals: Vec<Proposal>,
        timeout: Duration,
    ) -> Result<WriteResult, ForwardError> {
        match self
            .call(addr, &Request::ClientWrite(proposals), timeout)
            .await?
        {
            Reply::ClientWrite(result) => Ok(result),
            _ => Err(ForwardError::WrongReply {
                addr: addr.to_string(),
            }),
        }
    }

    pub async fn read_index(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<ReadIndexResult, ForwardError> {
        match self.call(addr, &Request::ReadIndex, timeout).await? {
            Reply::ReadIndex(result) => Ok(result),
            _ => Err(ForwardError::WrongReply {
                addr: addr.to_string(),
            }),
        }
    }

    pub async fn replication(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Option<Replication>, ForwardError> {
        match self.call(addr, &Request::Replication, timeout).await? {
            Reply::Replication(result) => Ok(result),
            _ => Err(ForwardError::WrongReply {
                addr: addr.to_string(),
            }),
        }
    }

    pub async fn remove_node(
        &self,
        addr: &str,
        id: NodeId,
        timeout: Duration,
    ) -> Result<Result<(), MembershipError>, ForwardError> {
        match self.call(addr, &Request::RemoveNode(id), timeout).await? {
            Reply::RemoveNode(result) => Ok(result),
            _ => Err(ForwardError::WrongReply {
                addr: addr.to_string(),
            }),
        }
    }

    /// Hand a frame of pub/sub messages to a peer's router.
    pub async fn deliver_messages(
        &self,
        addr: &str,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> Result<Result<usize, RemoteError>, ForwardError> {
        match self.call(addr, &Request::Messages(frame), timeout).await? {
            Reply::Messages(result) => Ok(result),
            _ => Err(ForwardError::WrongReply {
                addr: addr.to_string(),
            }),
        }
    }

    /// Run a log search or aggregation on a peer.
    pub async fn search(
        &self,
        addr: &str,
        call: SearchCall,
        timeout: Duration,
    ) -> Result<Result<SearchAnswer, RemoteError>, ForwardError> {
        match self.call(addr, &Request::Search(call), timeout).await? {
            Reply::Search(result) => Ok(result),
            _ => Err(ForwardError::WrongReply {
                addr: addr.to_string(),
            }),
        }
    }

    /// Scan a peer's dataset files (the scan's bytes are the node's own).
    pub async fn dataset_scan(
        &self,
        addr: &str,
        scan: Vec<u8>,
        timeout: Duration,
    ) -> Result<Result<Vec<u8>, RemoteError>, ForwardError> {
        match self
            .call(addr, &Request::DatasetScan(scan), timeout)
            .await?
        {
            Reply::DatasetScan(result) => Ok(result.map(serde_bytes::ByteBuf::into_vec)),
            _ => Err(ForwardError::WrongReply {
                addr: addr.to_string(),
            }),
        }
    }
}
