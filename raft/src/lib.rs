//! Raft for Shoal: the openraft type configuration, the log store and state
//! machine over `shoal-storage`, read-index batching ([`Linearizer`]), the
//! vote guard of a node that lost its disk ([`CatchUp`]) and the membership
//! operations the node needs. It owns what Raft decides, not how peers reach
//! each other: the network openraft uses is given to [`Raft::new`] by the
//! caller (`shoal-transport` provides it). It must not depend on the
//! transport, the node or anything HTTP.

mod catch_up;
mod linearizer;
mod log_store;
mod membership;
mod metric_help;
mod snapshot_dir;
mod state_machine;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use catch_up::{vote_unless_catching_up, CatchUp};
pub use linearizer::{Linearizer, ReadIndexResult};
pub use log_store::LogStore;
pub use membership::{local_replication, remove_node, MembershipError, Replication};
pub use metric_help::describe_metrics;
pub use state_machine::{ChangeSink, StateMachine};

pub use shoal_storage::NodeId;

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
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

fn io_error(e: impl std::error::Error + 'static) -> openraft::AnyError {
    openraft::AnyError::new(&e)
}

/// About how many bytes a log entry takes encoded (see
/// `Proposal::approx_bytes`).
pub fn approx_entry_bytes(entry: &openraft::Entry<TypeConfig>) -> usize {
    const FIXED: usize = 64;
    match &entry.payload {
        openraft::EntryPayload::Normal(proposals) => {
            FIXED + proposals.iter().map(|p| p.approx_bytes()).sum::<usize>()
        }
        openraft::EntryPayload::Membership(membership) => FIXED + 256 * membership.nodes().count(),
        openraft::EntryPayload::Blank => FIXED,
    }
}
