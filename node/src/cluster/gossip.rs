//! Gossip (chitchat): discovery and failure detection. Each node publishes
//! small facts about itself (addresses, version, whether its Raft is
//! initialised, its role, applied index, whether it left, its topic
//! interest) and reads everyone else's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use serde::Serialize;
use sha2::{Digest, Sha256};
use shoal_raft::NodeId;
use shoal_storage::now_ms;
use thiserror::Error;

use super::sealed::SealedUdpTransport;
use crate::settings::Settings;

const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);

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
    /// The node's topic interest (JSON), see `services::messaging::sync_interest`.
    pub const TOPICS: &str = "topics";
    /// The space alarms raised on the node, comma-separated (`quota`,
    /// `disk`), empty when none; see `services::space`.
    pub const ALARMS: &str = "alarms";
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
    /// The node's topic interest (JSON), see `services::messaging::sync_interest`.
    #[serde(skip)]
    pub topics: Option<String>,
    /// The space alarms raised on the node (`quota`, `disk`).
    pub alarms: Vec<String>,
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

/// Gossip could not start.
#[derive(Debug, Error)]
pub enum GossipError {
    #[error("cannot resolve --advertise-gossip {0}")]
    Resolve(String),
    #[error("starting gossip on {addr}")]
    Start {
        addr: std::net::SocketAddr,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Gossip {
    pub async fn start(settings: &Settings, node_id: NodeId) -> Result<Gossip, GossipError> {
        // chitchat tells peers a socket address, so a host name is resolved once here.
        let advertise_gossip = tokio::net::lookup_host(settings.advertise_gossip.as_str())
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| GossipError::Resolve(settings.advertise_gossip.clone()))?;
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
        let spawned = match settings.cluster_secret.as_deref() {
            Some(secret) => spawn_chitchat(config, initial, &SealedUdpTransport::new(secret)).await,
            None => spawn_chitchat(config, initial, &UdpTransport).await,
        };
        let handle = spawned.map_err(|e| GossipError::Start {
            addr: settings.gossip,
            source: e.into(),
        })?;
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
                    alarms: state
                        .get(keys::ALARMS)
                        .unwrap_or_default()
                        .split(',')
                        .filter(|alarm| !alarm.is_empty())
                        .map(str::to_string)
                        .collect(),
                    generation: id.generation_id,
                },
            );
        }
        members
    }
}
