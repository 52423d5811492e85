//! Raft for Shoal: the openraft type configuration, the log store and state
//! machine over `shoal-storage`, and the node-to-node RPC transport.

mod catch_up;
mod forward;
mod linearizer;
mod log_store;
mod metric_help;
mod network;
mod rpc;
mod state_machine;
#[cfg(test)]
mod tests;
mod wire;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use catch_up::CatchUp;
pub use forward::{ForwardError, Forwarder};
pub use linearizer::Linearizer;
pub use log_store::LogStore;
pub use metric_help::describe_metrics;
pub use network::RpcNetwork;
pub use rpc::{
    local_replication, remove_node, serve_rpc, MessageInbox, PeerServices, ReadIndexResult,
    RemoveHandler, Replication, SearchHandler, WriteResult,
};
pub use state_machine::{ChangeSink, StateMachine};
pub use wire::ClusterKey;

pub type NodeId = u64;

/// What the cluster knows about a member's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Node-to-node RPC listener.
    pub rpc: String,
    /// Public HTTP API listener.
    pub api: String,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Vec<shoal_storage::kv::Proposal>,
        R = Vec<shoal_storage::kv::Response>,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

fn io_error(e: impl std::error::Error + 'static) -> openraft::AnyError {
    openraft::AnyError::new(&e)
}
