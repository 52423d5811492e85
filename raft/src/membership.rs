//! Membership operations and views the node needs from Raft, independent of
//! how peers reach each other.

use std::collections::BTreeMap;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;

use crate::{NodeAddr, NodeId, Raft};

/// Matched log index per member, as the leader sees it.
pub type Replication = BTreeMap<NodeId, Option<u64>>;

/// Why a membership change was not made.
pub type MembershipError = RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>;

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
pub async fn remove_node(raft: &Raft, id: NodeId) -> Result<(), MembershipError> {
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
    raft.change_membership(change, false).await.map(|_| ())
}
