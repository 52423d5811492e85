//! Formation of a new Raft cluster from identical nodes
//! (`--bootstrap-expect`), and this node's Raft state published to gossip.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{RaftMetrics, ServerState};
use shoal_raft::{NodeAddr, NodeId};

use super::gossip::{flag, keys, GossipMember};
use super::membership::Cluster;

const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);
const FORMATION_POLL: Duration = Duration::from_millis(200);

/// A node's Raft is initialised once its membership names any node.
fn raft_initialized(metrics: &RaftMetrics<NodeId, NodeAddr>) -> bool {
    metrics
        .membership_config
        .membership()
        .nodes()
        .next()
        .is_some()
}

/// Form a new cluster: once `expect` uninitialised nodes see each other and
/// none has joined a cluster yet, the one with the lowest id initialises Raft
/// with all of them; the others are brought in by its replication. Returns
/// when this node's Raft is initialised (by itself or by a leader).
pub async fn form_cluster(cluster: Arc<Cluster>, expect: usize) {
    let mut announced = false;
    loop {
        if raft_initialized(&cluster.raft.metrics().borrow()) {
            return;
        }
        let members = cluster.gossip.members().await;
        let alive: Vec<&GossipMember> = members.values().filter(|m| m.alive && !m.left).collect();
        let someone_initialized = alive.iter().any(|m| m.initialized);
        if !someone_initialized && alive.len() >= expect {
            let lowest = alive.iter().map(|m| m.node_id).min();
            if lowest == Some(cluster.node_id) {
                let voters: BTreeMap<NodeId, NodeAddr> = alive
                    .iter()
                    .map(|m| {
                        (
                            m.node_id,
                            NodeAddr {
                                rpc: m.rpc.clone(),
                                api: m.api.clone(),
                            },
                        )
                    })
                    .collect();
                tracing::info!(
                    members = ?voters.keys().collect::<Vec<_>>(),
                    "forming a new cluster",
                );
                if let Err(e) = cluster.raft.initialize(voters).await {
                    tracing::warn!(error = %e, "cluster initialisation failed; will retry");
                }
            }
        } else if !announced {
            tracing::info!(
                expect,
                seen = alive.len(),
                someone_initialized,
                "waiting for peers to form or join a cluster"
            );
            announced = true;
        }
        tokio::time::sleep(FORMATION_POLL).await;
    }
}

/// Publish this node's Raft state to gossip.
pub async fn publish_state(cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
    loop {
        tick.tick().await;
        let metrics = cluster.raft.metrics().borrow().clone();
        let initialized = raft_initialized(&metrics);
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Follower => "follower",
            ServerState::Shutdown => "shutdown",
        };
        let applied = metrics.last_applied.map(|id| id.index).unwrap_or(0);
        cluster
            .gossip
            .publish(&[
                (keys::INITIALIZED, flag(initialized)),
                (keys::ROLE, role.to_string()),
                (keys::APPLIED, applied.to_string()),
                (keys::CATCHING_UP, flag(cluster.catch_up.active())),
            ])
            .await;
    }
}
