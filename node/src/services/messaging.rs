//! Messaging wired into the node: the peer transport over the RPC listener,
//! topic interest announced and learned through gossip, and the messaging
//! configuration followed from the replicated store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_actors::config::CONFIG_PREFIX;
use shoal_actors::router::{Interest, PeerSendError, PeerTransport};
use shoal_raft::NodeId;
use shoal_transport::Forwarder;

use super::shoal::Shoal;
use super::watch::Watcher;
use super::watch_hub::Filter;
use crate::cluster::keys;

/// How often interest is compared with gossip.
const INTEREST_INTERVAL: Duration = Duration::from_millis(200);
/// A peer must take a frame of messages within this time.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Interest larger than this is announced in a compact form (see below):
/// gossip carries small facts only.
const MAX_INTEREST_BYTES: usize = 4096;

/// Sends message frames to peers' RPC listeners, on its own connections.
pub struct RpcTransport {
    forwarder: Arc<Forwarder>,
    addrs: RwLock<HashMap<NodeId, String>>,
}

impl RpcTransport {
    pub fn new(forwarder: Forwarder) -> Arc<RpcTransport> {
        Arc::new(RpcTransport {
            forwarder: Arc::new(forwarder),
            addrs: RwLock::default(),
        })
    }

    fn set_addrs(&self, addrs: HashMap<NodeId, String>) {
        *self.addrs.write().unwrap_or_else(|p| p.into_inner()) = addrs;
    }
}

impl PeerTransport for RpcTransport {
    fn send(&self, node: NodeId, frame: Vec<u8>) -> BoxFuture<'static, Result<(), PeerSendError>> {
        let addr = self
            .addrs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned();
        let forwarder = self.forwarder.clone();
        Box::pin(async move {
            let addr = addr.ok_or(PeerSendError::NoAddress(node))?;
            match forwarder
                .deliver_messages(&addr, frame, FRAME_TIMEOUT)
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(refused)) => Err(PeerSendError::Refused {
                    node,
                    reason: refused.to_string(),
                }),
                Err(e) => Err(PeerSendError::Unreachable {
                    node,
                    reason: e.to_string(),
                }),
            }
        })
    }
}

/// The interest announced in gossip. Beyond the size limit, plain
/// subscriptions collapse into `>` (peers then forward every message here
/// and the router filters); queue group lines are kept as they are.
fn announced(interest: Vec<Interest>) -> String {
    let full = serde_json::to_string(&interest).unwrap_or_else(|_| "[]".into());
    if full.len() <= MAX_INTEREST_BYTES {
        return full;
    }
    let plain: u32 = interest
        .iter()
        .filter(|i| i.group.is_none())
        .map(|i| i.subscribers)
        .sum();
    let mut compact: Vec<Interest> = interest.into_iter().filter(|i| i.group.is_some()).collect();
    if plain > 0 {
        compact.push(Interest {
            pattern: ">".into(),
            group: None,
            subscribers: plain,
        });
    }
    serde_json::to_string(&compact).unwrap_or_else(|_| "[]".into())
}

/// Keep gossip and the router in step: announce this node's interest when
/// it changes, and learn the interest and RPC address of every live peer.
pub async fn sync_interest(shoal: Arc<Shoal>, transport: Arc<RpcTransport>) {
    let router = shoal.messaging.router.clone();
    let mut announced_version = None;
    let mut tick = tokio::time::interval(INTEREST_INTERVAL);
    loop {
        tick.tick().await;
        let version = router.interest_version();
        if announced_version != Some(version) {
            shoal
                .cluster
                .gossip
                .publish(&[(keys::TOPICS, announced(router.local_interest()))])
                .await;
            announced_version = Some(version);
        }
        let members = shoal.cluster.gossip.members().await;
        let mut interest = HashMap::new();
        let mut addrs = HashMap::new();
        for member in members.values() {
            if member.node_id == shoal.node_id || !member.alive || member.left {
                continue;
            }
            addrs.insert(member.node_id, member.rpc.clone());
            let lines: Vec<Interest> = member
                .topics
                .as_deref()
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_default();
            if !lines.is_empty() {
                interest.insert(member.node_id, lines);
            }
        }
        transport.set_addrs(addrs);
        router.set_remote_interest(interest);
    }
}

/// Load the whole messaging configuration (`_shoal/...` keys) from the local
/// replica into the messaging service (and the ACL's entries into the ACL), retrying until it can be read;
/// returns the store revision it was read at. The node awaits this before
/// it resumes deliveries and serves its API: a deliverer that looked up a
/// webhook in a configuration not loaded yet would take it for deleted and
/// drop its messages, and a publish would skip webhooks and routing rules.
pub async fn load_config(shoal: &Arc<Shoal>) -> u64 {
    loop {
        let loaded = shoal
            .read(|store| {
                // One snapshot: the watch that follows starts right after it.
                let mut all = Vec::new();
                let counters = store
                    .kv_scan_prefix(CONFIG_PREFIX, &mut |kv| all.push((kv.key, Some(kv.value))))?;
                Ok((counters.revision, all))
            })
            .await;
        match loaded {
            Ok((revision, all)) => {
                shoal.acl.replace(&all, revision);
                shoal.messaging.replace_config(all).await;
                return revision;
            }
            Err(e) => {
                tracing::warn!(error = %e, "loading the messaging configuration failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Follow the messaging configuration in the local replica after
/// [`load_config`] loaded it at `revision`: apply each change as it is
/// applied here. If the watch falls behind compaction, load it whole again.
pub async fn follow_config(shoal: Arc<Shoal>, mut revision: u64) {
    loop {
        let filter = Filter::Prefix(CONFIG_PREFIX.to_string());
        let mut watcher =
            match Watcher::start(shoal.clone(), filter, Some(revision + 1), false, 256).await {
                Ok(watcher) => watcher,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "watching the messaging configuration failed; reloading",
                    );
                    revision = load_config(&shoal).await;
                    continue;
                }
            };
        loop {
            match watcher.next_batches(None).await {
                Ok(batches) => {
                    let changes = batches
                        .iter()
                        .flat_map(|shared| shared.batch.events.iter())
                        .map(|event| {
                            let value = matches!(event.kind, shoal_storage::kv::EventType::Put)
                                .then(|| event.kv.value.clone());
                            (event.kv.key.clone(), value)
                        })
                        .collect::<Vec<_>>();
                    let through = batches.last().map(|shared| shared.batch.revision);
                    shoal.acl.apply(&changes, through.unwrap_or(revision));
                    shoal.messaging.apply_config(changes).await;
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "the messaging configuration watch stopped; reloading",
                    );
                    break;
                }
            }
        }
        revision = load_config(&shoal).await;
    }
}
