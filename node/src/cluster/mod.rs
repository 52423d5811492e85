//! Cluster membership: gossip (chitchat) for discovery and failure
//! detection, formation of a new Raft cluster (`--bootstrap-expect`), the
//! leader's reconciliation of Raft membership with gossip, and leaving.
//! It owns the gossip keys and the membership rules; it works on Raft,
//! gossip and the transport's client directly and must not depend on the
//! node's services (`services/`), the HTTP layer (`api/`, `compat/`) or the
//! CLI.

mod formation;
mod gossip;
mod membership;
mod sealed;

pub use formation::{form_cluster, publish_state};
pub use gossip::{keys, Gossip};
pub use membership::{reconcile_membership, Cluster, LeaveError, Removals};
