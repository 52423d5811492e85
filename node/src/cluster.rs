//! Cluster membership: gossip (chitchat) for discovery and failure
//! detection, formation of a new Raft cluster (`--bootstrap-expect`), and the
//! leader's reconciliation of Raft membership with gossip.
//!
//! Gossip carries small facts only: addresses, version, whether the node's
//! Raft is initialised, its role, applied index, and whether it left.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use serde::Serialize;
use sha2::{Digest, Sha256};
use shoal_raft::{remove_node, NodeAddr, NodeId, Raft};

use crate::service::{now_ms, Shoal};
use crate::settings::Settings;

const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);
const FORMATION_POLL: Duration = Duration::from_millis(200);
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// A learner within this many entries of the leader's log counts as caught up.
const CAUGHT_UP_LAG: u64 = 50;
/// How long the leader holds off re-adding a node it removed (see `Removals`).
const REMOVED_HOLD_OFF: Duration = Duration::from_secs(30);

/// The keys a node publishes about itself in gossip: every one is here, so
/// what a node tells its peers can be read in one place.
pub mod keys {
    /// Advertised HTTP API address (host:port).
    pub const API: &str = "api";
    /// Advertised node-to-node RPC address (host:port).
    pub const RPC: &str = "rpc";
    /// The binary's version.
    pub const VERSION: &str = "version";
    /// When this process started, in ms since the epoch.
    pub const STARTED_MS: &str = "started_ms";
    /// "1" once the node's Raft state is initialised.
    pub const INITIALIZED: &str = "initialized";
    /// Raft role: leader, follower, candidate, learner, shutdown.
    pub const ROLE: &str = "role";
    /// Last applied Raft log index.
    pub const APPLIED: &str = "applied";
    /// "1" while the node started empty and has not caught up (refuses votes).
    pub const CATCHING_UP: &str = "catching_up";
    /// "1" once the node asked to leave the cluster.
    pub const LEFT: &str = "left";
    /// The node's topic interest (JSON), see `messaging::sync_interest`.
    pub const TOPICS: &str = "topics";
}

/// "1" or "0", as boolean gossip values are written.
pub fn flag(value: bool) -> String {
    if value { "1" } else { "0" }.to_string()
}

/// What gossip says about one node (its newest generation).
#[derive(Clone, Debug, Serialize)]
pub struct GossipMember {
    pub node_id: NodeId,
    pub gossip: String,
    pub api: String,
    pub rpc: String,
    pub version: String,
    pub alive: bool,
    pub initialized: bool,
    pub left: bool,
    /// Started with empty Raft state and not yet caught up (votes refused).
    pub catching_up: bool,
    pub role: String,
    pub applied_index: u64,
    pub started_ms: u64,
    /// The node's topic interest (JSON), see `messaging::sync_interest`.
    #[serde(skip)]
    pub topics: Option<String>,
    #[serde(skip)]
    generation: u64,
}

pub struct Gossip {
    handle: ChitchatHandle,
}

/// Nodes with different cluster names or secrets ignore each other's gossip.
fn cluster_id(name: &str, secret: Option<&str>) -> String {
    match secret {
        None => name.to_string(),
        Some(secret) => {
            let digest = Sha256::digest(format!("shoal-gossip:{secret}").as_bytes());
            let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("{name}-{hex}")
        }
    }
}

impl Gossip {
    pub async fn start(settings: &Settings, node_id: NodeId) -> anyhow::Result<Gossip> {
        // chitchat tells peers a socket address, so a host name is resolved once here.
        let advertise_gossip = tokio::net::lookup_host(settings.advertise_gossip.as_str())
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .with_context(|| {
                format!(
                    "cannot resolve --advertise-gossip {}",
                    settings.advertise_gossip
                )
            })?;
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node_id.to_string(), now_ms(), advertise_gossip),
            cluster_id: cluster_id(&settings.cluster_name, settings.cluster_secret.as_deref()),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: settings.gossip,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                initial_interval: GOSSIP_INTERVAL,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let initial = vec![
            (keys::API.to_string(), settings.advertise_api.clone()),
            (keys::RPC.to_string(), settings.advertise_rpc.clone()),
            (
                keys::VERSION.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (keys::STARTED_MS.to_string(), now_ms().to_string()),
            (keys::INITIALIZED.to_string(), flag(false)),
        ];
        let handle = spawn_chitchat(config, initial, &UdpTransport)
            .await
            .with_context(|| format!("starting gossip on {}", settings.gossip))?;
        Ok(Gossip { handle })
    }

    pub async fn publish(&self, values: &[(&str, String)]) {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        let state = chitchat.self_node_state();
        for (key, value) in values {
            if state.get(key) != Some(value.as_str()) {
                state.set(*key, value);
            }
        }
    }

    /// Every node gossip knows of, newest generation per node id.
    pub async fn members(&self) -> BTreeMap<NodeId, GossipMember> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let live: BTreeSet<ChitchatId> = chitchat.live_nodes().cloned().collect();
        let mut members: BTreeMap<NodeId, GossipMember> = BTreeMap::new();
        for (id, state) in chitchat.node_states() {
            let Ok(node_id) = id.node_id.parse::<NodeId>() else {
                continue;
            };
            let (Some(api), Some(rpc)) = (state.get(keys::API), state.get(keys::RPC)) else {
                continue;
            };
            if members
                .get(&node_id)
                .is_some_and(|known| known.generation > id.generation_id)
            {
                continue;
            }
            let number = |key: &str| state.get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
            members.insert(
                node_id,
                GossipMember {
                    node_id,
                    gossip: id.gossip_advertise_addr.to_string(),
                    api: api.to_string(),
                    rpc: rpc.to_string(),
                    version: state.get(keys::VERSION).unwrap_or_default().to_string(),
                    alive: live.contains(id),
                    initialized: state.get(keys::INITIALIZED) == Some("1"),
                    left: state.get(keys::LEFT) == Some("1"),
                    catching_up: state.get(keys::CATCHING_UP) == Some("1"),
                    role: state.get(keys::ROLE).unwrap_or("unknown").to_string(),
                    applied_index: number(keys::APPLIED),
                    started_ms: number(keys::STARTED_MS),
                    topics: state.get(keys::TOPICS).map(str::to_string),
                    generation: id.generation_id,
                },
            );
        }
        members
    }
}

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
pub async fn form_cluster(shoal: Arc<Shoal>, expect: usize) {
    let mut announced = false;
    loop {
        if raft_initialized(&shoal.raft.metrics().borrow()) {
            return;
        }
        let members = shoal.gossip.members().await;
        let alive: Vec<&GossipMember> = members.values().filter(|m| m.alive && !m.left).collect();
        let someone_initialized = alive.iter().any(|m| m.initialized);
        if !someone_initialized && alive.len() >= expect {
            let lowest = alive.iter().map(|m| m.node_id).min();
            if lowest == Some(shoal.node_id) {
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
                tracing::info!(members = ?voters.keys().collect::<Vec<_>>(), "forming a new cluster");
                if let Err(e) = shoal.raft.initialize(voters).await {
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
pub async fn publish_state(shoal: Arc<Shoal>) {
    let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
    loop {
        tick.tick().await;
        let metrics = shoal.raft.metrics().borrow().clone();
        let initialized = raft_initialized(&metrics);
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Follower => "follower",
            ServerState::Shutdown => "shutdown",
        };
        let applied = metrics.last_applied.map(|id| id.index).unwrap_or(0);
        shoal
            .gossip
            .publish(&[
                (keys::INITIALIZED, flag(initialized)),
                (keys::ROLE, role.to_string()),
                (keys::APPLIED, applied.to_string()),
                (keys::CATCHING_UP, flag(shoal.catch_up.active())),
            ])
            .await;
    }
}

/// On the leader: bring Raft membership in line with gossip. New live nodes
/// join as learners and are promoted to voters (up to `--voters`) once caught
/// up; members dead longer than the grace period are removed, a dead voter
/// being replaced by a caught-up learner when one exists.
pub async fn reconcile_membership(shoal: Arc<Shoal>) {
    let grace = Duration::from_secs(shoal.settings.dead_node_grace_secs);
    let mut dead_since: HashMap<NodeId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tick.tick().await;
        if !shoal.is_leader() {
            dead_since.clear();
            continue;
        }
        if let Err(e) = reconcile_once(&shoal, grace, &mut dead_since).await {
            tracing::warn!(error = %e, "membership change failed; will retry");
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

/// On the leader: remove `id` from the membership, remembering it in
/// `removals` first (the reconciliation may run before the change returns).
pub async fn remove_member(raft: &Raft, removals: &Removals, id: NodeId) -> Result<(), String> {
    removals.record(id);
    remove_node(raft, id).await
}

async fn reconcile_once(
    shoal: &Shoal,
    grace: Duration,
    dead_since: &mut HashMap<NodeId, Instant>,
) -> anyhow::Result<()> {
    let metrics = shoal.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    if membership.get_joint_config().len() > 1 {
        return Ok(()); // a change is in progress
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    // A leader that has just committed its own removal still calls itself
    // leader until it steps down; it must not change membership any more
    // (openraft 0.9 panics if it does).
    if !voters.contains(&shoal.node_id) {
        return Ok(());
    }
    let gossip = shoal.gossip.members().await;
    let now = Instant::now();

    // Track how long members have been dead (or unknown to gossip).
    for id in voters.iter().chain(learners.iter()) {
        let alive = *id == shoal.node_id || gossip.get(id).is_some_and(|m| m.alive && !m.left);
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
            && !shoal.removals.held_off(member)
            && member.node_id != shoal.node_id
        {
            tracing::info!(node = member.node_id, "adding a learner");
            let addr = NodeAddr {
                rpc: member.rpc.clone(),
                api: member.api.clone(),
            };
            shoal.raft.add_learner(member.node_id, addr, false).await?;
            return Ok(());
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
        .find(|id| *id != shoal.node_id && expired(id))
    {
        let mut next: BTreeSet<NodeId> = voters.iter().copied().filter(|id| *id != dead).collect();
        if let Some(learner) = live_learner {
            next.insert(learner);
        }
        tracing::info!(dead, ?next, "replacing a dead voter");
        shoal
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(next), false)
            .await?;
        return Ok(());
    }
    if let Some(dead) = learners.iter().copied().find(|id| expired(id)) {
        tracing::info!(dead, "removing a dead learner");
        shoal
            .raft
            .change_membership(ChangeMembers::RemoveNodes([dead].into()), false)
            .await?;
        return Ok(());
    }
    // Promote caught-up learners up to the voter target.
    if voters.len() < shoal.settings.voters {
        if let Some(learner) = live_learner {
            tracing::info!(node = learner, "promoting a learner to voter");
            shoal
                .raft
                .change_membership(ChangeMembers::AddVoterIds([learner].into()), false)
                .await?;
        }
    }
    Ok(())
}
