//! Raft membership as the leader keeps it in line with gossip: new live
//! nodes join as learners and are promoted to voters, dead ones are removed
//! after a grace period, and a node may ask to leave.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, ServerState};
use shoal_raft::{remove_node, CatchUp, MembershipError, NodeAddr, NodeId, Raft};
use shoal_storage::now_ms;
use shoal_transport::{ForwardError, Forwarder};
use thiserror::Error;

use super::gossip::{flag, keys, Gossip, GossipMember};

const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// A learner within this many entries of the leader's log counts as caught up.
const CAUGHT_UP_LAG: u64 = 50;
/// How long the leader holds off re-adding a node it removed (see `Removals`).
const REMOVED_HOLD_OFF: Duration = Duration::from_secs(30);
/// How long a new node has to complete the RPC handshake before it is added.
const JOIN_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the cluster duties need from the node: its Raft, its gossip, and
/// the membership settings.
pub struct Cluster {
    pub node_id: NodeId,
    pub raft: Raft,
    pub gossip: Gossip,
    /// Reaches the leader to ask for a removal.
    pub forwarder: Arc<Forwarder>,
    /// Nodes this node removed while leader, not to be re-added at once.
    pub removals: Removals,
    /// Whether this node still refuses votes after starting empty.
    pub catch_up: Arc<CatchUp>,
    /// Voters the leader promotes learners up to (`--voters`).
    pub voters: usize,
    /// How long a member may be dead before it is removed.
    pub dead_node_grace: Duration,
    /// How long a removal forwarded to the leader may take.
    pub request_timeout: Duration,
}

impl Cluster {
    /// Whether this node currently leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }
}

/// On the leader: bring Raft membership in line with gossip. New live nodes
/// join as learners and are promoted to voters (up to `--voters`) once caught
/// up; members dead longer than the grace period are removed, a dead voter
/// being replaced by a caught-up learner when one exists.
/// `audit` is told each change made, in words.
pub async fn reconcile_membership(cluster: Arc<Cluster>, audit: impl Fn(&str)) {
    let grace = cluster.dead_node_grace;
    let mut dead_since: HashMap<NodeId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tick.tick().await;
        if !cluster.is_leader() {
            dead_since.clear();
            continue;
        }
        match reconcile_once(&cluster, grace, &mut dead_since).await {
            Ok(Some(change)) => audit(&change),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "membership change failed; will retry"),
        }
    }
}

/// Nodes removed from the membership on this node's watch (by `cluster
/// leave`), with the wall-clock time of the removal. While gossip has not yet
/// heard that such a node left, it looks like a new live node; the leader
/// must not add it back as a learner. A process started after the removal
/// (a restart) may join again.
#[derive(Default)]
pub struct Removals(std::sync::Mutex<HashMap<NodeId, u64>>);

impl Removals {
    fn record(&self, id: NodeId) {
        let now = now_ms();
        let mut removed = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        removed.retain(|_, at| within_hold_off(*at, now));
        removed.insert(id, now);
    }

    fn held_off(&self, member: &GossipMember) -> bool {
        let removed = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        removed
            .get(&member.node_id)
            .is_some_and(|at| within_hold_off(*at, now_ms()) && member.started_ms <= *at)
    }
}

fn within_hold_off(removed_at_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(removed_at_ms) < REMOVED_HOLD_OFF.as_millis() as u64
}

/// Why a node could not be removed from the membership.
#[derive(Debug, Error)]
pub enum LeaveError {
    #[error("node {0} is not a member of the cluster")]
    NotMember(NodeId),
    /// Removing the only voter would leave no one to commit anything.
    #[error(
        "node {0} is the cluster's only voter: removing it would leave no quorum; \
         stop the node instead"
    )]
    LastVoter(NodeId),
    #[error("there is no leader to remove the node; retry later")]
    NoLeader,
    #[error("cannot reach the leader: {0}")]
    LeaderUnreachable(#[from] ForwardError),
    #[error("membership change failed: {0}")]
    Refused(#[from] MembershipError),
}

impl Cluster {
    /// On the leader: remove `id` from the membership, remembering it in
    /// `removals` first (the reconciliation may run before the change returns).
    pub async fn remove_member(&self, id: NodeId) -> Result<(), MembershipError> {
        self.removals.record(id);
        remove_node(&self.raft, id).await
    }

    /// Remove this node from the membership. Gossip hears "left" first, so
    /// that the leader does not take the node for a new one and add it back
    /// as a learner.
    pub async fn leave_this_node(&self) -> Result<(), LeaveError> {
        self.check_removable(self.node_id)?;
        self.gossip.publish(&[(keys::LEFT, flag(true))]).await;
        let result = self.leave(self.node_id).await;
        if result.is_err() {
            self.gossip.publish(&[(keys::LEFT, flag(false))]).await;
        }
        result
    }

    /// Refuse what no membership change can do: remove a node that is not a
    /// member, or the only voter.
    fn check_removable(&self, id: NodeId) -> Result<(), LeaveError> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(LeaveError::NotMember(id));
        }
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        if voters == [id] {
            return Err(LeaveError::LastVoter(id));
        }
        Ok(())
    }

    /// Ask the leader to remove `id` from the membership.
    pub async fn leave(&self, id: NodeId) -> Result<(), LeaveError> {
        self.check_removable(id)?;
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(self.node_id) {
            return Ok(self.remove_member(id).await?);
        }
        let leader = metrics
            .current_leader
            .and_then(|l| metrics.membership_config.membership().get_node(&l).cloned());
        let Some(leader) = leader else {
            return Err(LeaveError::NoLeader);
        };
        Ok(self
            .forwarder
            .remove_node(&leader.rpc, id, self.request_timeout)
            .await??)
    }
}

async fn reconcile_once(
    cluster: &Cluster,
    grace: Duration,
    dead_since: &mut HashMap<NodeId, Instant>,
) -> Result<Option<String>, MembershipError> {
    let metrics = cluster.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    if membership.get_joint_config().len() > 1 {
        return Ok(None); // a change is in progress
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    // A leader that has just committed its own removal still calls itself
    // leader until it steps down; it must not change membership any more
    // (openraft 0.9 panics if it does).
    if !voters.contains(&cluster.node_id) {
        return Ok(None);
    }
    let gossip = cluster.gossip.members().await;
    let now = Instant::now();

    // Track how long members have been dead (or unknown to gossip).
    for id in voters.iter().chain(learners.iter()) {
        let alive = *id == cluster.node_id || gossip.get(id).is_some_and(|m| m.alive && !m.left);
        if alive {
            dead_since.remove(id);
        } else {
            dead_since.entry(*id).or_insert(now);
        }
    }
    dead_since.retain(|id, _| voters.contains(id) || learners.contains(id));

    // New nodes join as learners.
    for member in gossip.values() {
        let known = voters.contains(&member.node_id) || learners.contains(&member.node_id);
        if member.alive
            && !member.left
            && !known
            && !cluster.removals.held_off(member)
            && member.node_id != cluster.node_id
        {
            // Gossip is not authenticated: a node proves itself on the
            // RPC handshake (cluster secret both ways, and with --tls-ca a
            // certificate from the cluster CA) before it becomes a member.
            if let Err(e) = cluster
                .forwarder
                .probe(&member.rpc, JOIN_PROBE_TIMEOUT)
                .await
            {
                metrics::counter!("shoal_membership_join_refused_total").increment(1);
                tracing::warn!(node = member.node_id, rpc = %member.rpc, error = %e,
                    "not adding a node that failed the RPC handshake (another cluster secret or CA?)");
                continue;
            }
            tracing::info!(node = member.node_id, "adding a learner");
            let addr = NodeAddr {
                rpc: member.rpc.clone(),
                api: member.api.clone(),
            };
            cluster
                .raft
                .add_learner(member.node_id, addr, false)
                .await?;
            return Ok(Some(format!("added node {} as a learner", member.node_id)));
        }
    }

    let last_log = metrics.last_log_index.unwrap_or(0);
    let progress = metrics.replication.clone().unwrap_or_default();
    let caught_up = |id: &NodeId| {
        progress
            .get(id)
            .copied()
            .flatten()
            .is_some_and(|matched| matched.index + CAUGHT_UP_LAG >= last_log)
    };
    let live_learner = learners
        .iter()
        .copied()
        .find(|id| !dead_since.contains_key(id) && caught_up(id));
    let expired = |id: &NodeId| {
        dead_since
            .get(id)
            .is_some_and(|since| now.duration_since(*since) >= grace)
    };

    // Dead voters: replace with a live learner, or drop if a quorum remains.
    if let Some(dead) = voters
        .iter()
        .copied()
        .find(|id| *id != cluster.node_id && expired(id))
    {
        let mut next: BTreeSet<NodeId> = voters.iter().copied().filter(|id| *id != dead).collect();
        if let Some(learner) = live_learner {
            next.insert(learner);
        }
        tracing::info!(dead, ?next, "replacing a dead voter");
        cluster
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(next.clone()), false)
            .await?;
        return Ok(Some(format!(
            "removed dead voter {dead}; voters now {next:?}"
        )));
    }
    if let Some(dead) = learners.iter().copied().find(|id| expired(id)) {
        tracing::info!(dead, "removing a dead learner");
        cluster
            .raft
            .change_membership(ChangeMembers::RemoveNodes([dead].into()), false)
            .await?;
        return Ok(Some(format!("removed dead learner {dead}")));
    }
    // Promote caught-up learners up to the voter target.
    if voters.len() < cluster.voters {
        if let Some(learner) = live_learner {
            tracing::info!(node = learner, "promoting a learner to voter");
            cluster
                .raft
                .change_membership(ChangeMembers::AddVoterIds([learner].into()), false)
                .await?;
            return Ok(Some(format!("promoted learner {learner} to voter")));
        }
    }
    Ok(None)
}
