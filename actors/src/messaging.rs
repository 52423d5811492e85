//! The node's messaging service: publishing (routing rules, outbox, router),
//! configuration changes, and the Kafka bridge actors.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use shoal_storage::outbox::Outbox;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::config::{Bridge, Config, Destination, MAX_ROUTE_HOPS};
use crate::deliver::{Deliveries, Entry, InboxDelivery, Shared};
use crate::kafka::KafkaClient;
use crate::labels::topic_label;
use crate::message::{new_id, Message};
use crate::router::{PeerTransport, Reach, Router};

/// Header counting how often routing rules re-published a message.
pub const HOPS_HEADER: &str = "shoal-hops";
/// Header naming the message a routing rule's copy was made from.
pub const ORIGIN_HEADER: &str = "shoal-origin-id";

#[derive(Debug, Error)]
pub enum MessagingError {
    #[error("storing the message in the outbox failed: {0}")]
    Outbox(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The task that stores and routes the messages failed (it panicked).
    #[error("publishing failed: {0}")]
    Task(String),
    /// The message has webhook or Kafka destinations and the node's disk is
    /// nearly full: its outbox takes nothing until space is freed.
    #[error(
        "the node's disk is nearly full (see --min-free-disk-mb): messages for webhooks and \
         Kafka are not accepted until space is freed"
    )]
    NoSpace,
}

/// What a publish did.
#[derive(Debug, Serialize)]
pub struct Receipt {
    /// Ids of the published messages, in order.
    pub ids: Vec<String>,
    /// Messages created by routing rules' topic destinations.
    pub routed: usize,
    /// Outbox entries written (webhook and Kafka deliveries to come).
    pub durable: usize,
    #[serde(flatten)]
    pub reach: Reach,
}

pub struct Messaging {
    pub router: Arc<Router>,
    pub deliveries: Arc<Deliveries>,
    pub kafka: Option<KafkaClient>,
    node_name: String,
    config: watch::Sender<Arc<Config>>,
    bridges: Mutex<HashMap<String, (Bridge, ActorRef<()>)>>,
    myself: Weak<Messaging>,
    /// Set while the node's disk is nearly full (see [`Messaging::set_disk_low`]).
    disk_low: AtomicBool,
}

impl Messaging {
    /// `outbound` makes the webhooks' requests (the node's client for
    /// users' URLs); `workflow_inbox` takes the `workflows:inbox` deliveries;
    /// `subscriber_buffer_bytes` is what all subscribers' queues may hold;
    /// `databases` are the SQL sinks' connections, and `store` the node's
    /// replica, where their passwords are read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: u64,
        outbox: Outbox,
        transport: Arc<dyn PeerTransport>,
        kafka: Option<KafkaClient>,
        outbound: shoal_outbound::Outbound,
        workflow_inbox: mpsc::Sender<InboxDelivery>,
        subscriber_buffer_bytes: u64,
        databases: Arc<shoal_sinks::Databases>,
        datasets: Arc<shoal_datasets::Datasets>,
        store: shoal_storage::Store,
    ) -> Arc<Messaging> {
        let (config, config_rx) = watch::channel(Arc::new(Config::default()));
        let deliveries = Deliveries::new(Shared {
            outbox: Arc::new(outbox),
            config: config_rx,
            outbound,
            kafka: kafka.clone(),
            workflow_inbox,
            databases,
            datasets,
            store,
        });
        Arc::new_cyclic(|myself| Messaging {
            router: Router::new(node_id, transport, subscriber_buffer_bytes),
            deliveries,
            kafka,
            node_name: node_id.to_string(),
            config,
            bridges: Mutex::new(HashMap::new()),
            myself: myself.clone(),
            disk_low: AtomicBool::new(false),
        })
    }

    /// Refuse (or take again) messages that need the outbox, because the
    /// file system holding it is nearly full. Messages for topics only are
    /// not written to disk and still go.
    pub fn set_disk_low(&self, low: bool) {
        self.disk_low.store(low, Ordering::Relaxed);
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Apply changed configuration keys (from the replicated store; None
    /// when deleted) and act on the differences.
    pub async fn apply_config(&self, changes: Vec<(String, Option<Vec<u8>>)>) {
        self.update_config(changes, false).await;
    }

    /// Replace the whole configuration with these keys.
    pub async fn replace_config(&self, all: Vec<(String, Option<Vec<u8>>)>) {
        self.update_config(all, true).await;
    }

    /// Deleted webhooks and sinks lose their outbox; bridges start and stop.
    async fn update_config(&self, changes: Vec<(String, Option<Vec<u8>>)>, replace: bool) {
        let old = self.config();
        let mut config = if replace {
            Config::default()
        } else {
            (*old).clone()
        };
        for (key, value) in &changes {
            config.apply(key, value.as_deref());
        }
        let removed: Vec<String> = old
            .defined_outboxes()
            .filter(|outbox_name| !config.keeps_outbox(outbox_name))
            .collect();
        let bridges = config.bridges.clone();
        self.config.send_replace(Arc::new(config));
        for destination in removed {
            self.deliveries.stop(&destination);
            let outbox = self.deliveries.outbox().clone();
            let purging = destination.clone();
            if on_outbox(move || outbox.purge(&purging)).await.is_err() {
                tracing::warn!(%destination, "could not purge the outbox of a deleted destination");
            }
        }
        self.sync_bridges(bridges).await;
    }

    /// Route messages published on this node. Routing rules run here, once:
    /// webhook and Kafka destinations are written to the outbox (synced)
    /// before this returns, topic destinations are published in turn.
    pub async fn publish(&self, messages: Vec<Message>) -> Result<Receipt, MessagingError> {
        let config = self.config();
        let ids = messages.iter().map(|m| m.id.clone()).collect();
        let mut routed = 0;
        let mut all = Vec::with_capacity(messages.len());
        let mut durable: Vec<(String, Vec<u8>)> = Vec::new();
        let mut work: VecDeque<Message> = messages.into();
        while let Some(message) = work.pop_front() {
            let hops: u32 = message
                .header(HOPS_HEADER)
                .and_then(|h| h.parse().ok())
                .unwrap_or(0);
            for destination in config.destinations_for(&message) {
                match (&destination, destination.outbox_name()) {
                    (Destination::Topic(topic), _)
                        if hops < MAX_ROUTE_HOPS && *topic != message.topic =>
                    {
                        work.push_back(rerouted(&message, topic, hops + 1));
                        routed += 1;
                    }
                    (Destination::Topic(topic), _) => {
                        tracing::warn!(
                            id = %message.id,
                            %topic,
                            hops,
                            "routing loop: message not re-published",
                        );
                        metrics::counter!("shoal_messages_dropped_total", "topic" => topic_label(topic))
                            .increment(1);
                    }
                    (_, Some(outbox_name)) => {
                        let entry = shoal_codec::encode(&Entry::new(message.clone()))
                            .map_err(|e| MessagingError::Outbox(e.to_string()))?;
                        durable.push((outbox_name, entry));
                    }
                    (_, None) => {}
                }
            }
            all.push(message);
        }
        let durable_count = durable.len();
        if !durable.is_empty() && self.disk_low.load(Ordering::Relaxed) {
            return Err(MessagingError::NoSpace);
        }
        let reach = if durable.is_empty() {
            self.router.publish(all)
        } else {
            let messaging = self.myself.upgrade().ok_or(MessagingError::ShuttingDown)?;
            // In a task of its own, which a caller that gives up (a request
            // cut off by its timeout) does not cancel: cancelled between the
            // outbox write and the wake-ups, it left entries that no
            // deliverer looked at until the next message to the same
            // destination or a restart.
            tokio::spawn(async move { messaging.store_and_route(durable, all).await })
                .await
                .map_err(|e| MessagingError::Task(e.to_string()))??
        };
        Ok(Receipt {
            ids,
            routed,
            durable: durable_count,
            reach,
        })
    }

    /// Write the durable destinations' entries to the outbox (synced), hand
    /// the messages to the router, and wake the destinations' deliverers.
    async fn store_and_route(
        &self,
        durable: Vec<(String, Vec<u8>)>,
        all: Vec<Message>,
    ) -> Result<Reach, MessagingError> {
        let outbox = self.deliveries.outbox().clone();
        // Asked again as the entries are written: a destination deleted
        // since the publish read the configuration gets none (its outbox
        // may have been purged already).
        let config = self.config.subscribe();
        let mut destinations = on_outbox(move || {
            let mut kept = Vec::with_capacity(durable.len());
            outbox.add(&durable, |destination| {
                let keep = config.borrow().keeps_outbox(destination);
                if keep {
                    kept.push(destination.to_string());
                }
                keep
            })?;
            Ok(kept)
        })
        .await?;
        destinations.sort_unstable();
        destinations.dedup();
        let reach = self.router.publish(all);
        for destination in destinations {
            self.deliveries.wake(&destination).await;
        }
        Ok(reach)
    }

    /// Move a destination's dead letters (all, or those of `only`) back to
    /// its pending list, each with its attempts reset, and wake its
    /// deliverer; how many moved. In a task of its own, as a publish.
    pub async fn replay_dead_letters(
        &self,
        destination: &str,
        only: Option<Vec<u64>>,
    ) -> Result<usize, MessagingError> {
        let deliveries = self.deliveries.clone();
        let destination = destination.to_string();
        tokio::spawn(async move {
            let outbox = deliveries.outbox().clone();
            let target = destination.clone();
            let moved = on_outbox(move || {
                outbox.replay(
                    &target,
                    only.as_deref(),
                    |value| match shoal_codec::decode::<Entry>(value) {
                        Ok(entry) => shoal_codec::encode(&Entry::new(entry.message))
                            .unwrap_or_else(|_| value.to_vec()),
                        Err(_) => value.to_vec(),
                    },
                )
            })
            .await?;
            if moved > 0 {
                deliveries.wake(&destination).await;
            }
            Ok(moved)
        })
        .await
        .map_err(|e| MessagingError::Task(e.to_string()))?
    }

    /// After a restart: deliver what the outbox still holds (counted when
    /// it was opened).
    pub async fn resume_deliveries(&self) {
        let pending = self.deliveries.outbox().pending_counts();
        for (destination, _) in pending.into_iter().filter(|(_, count)| *count > 0) {
            tracing::info!(%destination, "resuming deliveries from the outbox");
            self.deliveries.wake(&destination).await;
        }
    }

    /// Start bridges that are new or changed, stop those that are gone.
    async fn sync_bridges(&self, wanted: std::collections::BTreeMap<String, Bridge>) {
        let Some(kafka) = self.kafka.clone() else {
            if !wanted.is_empty() {
                tracing::warn!("Kafka bridges are configured but this node has no --kafka-brokers");
            }
            return;
        };
        let stale: Vec<ActorRef<()>> = {
            let mut running = self.bridges.lock().unwrap_or_else(|p| p.into_inner());
            let stale_names: Vec<String> = running
                .iter()
                .filter(|(name, (bridge, _))| wanted.get(*name) != Some(bridge))
                .map(|(name, _)| name.clone())
                .collect();
            stale_names
                .iter()
                .filter_map(|name| running.remove(name))
                .map(|(_, actor)| actor)
                .collect()
        };
        for actor in stale {
            actor.stop(None);
        }
        for (name, bridge) in wanted {
            if self
                .bridges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&name)
            {
                continue;
            }
            let args = BridgeArgs {
                bridge: bridge.clone(),
                kafka: kafka.clone(),
                messaging: self.myself.clone(),
                node_name: self.node_name.clone(),
            };
            match Actor::spawn(None, BridgeActor, args).await {
                Ok((actor, _)) => {
                    self.bridges
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name, (bridge, actor));
                }
                Err(e) => {
                    tracing::error!(bridge = %name, error = %e, "starting a Kafka bridge failed")
                }
            }
        }
    }
}

/// A copy of a message for a routing rule's topic destination. It keeps
/// the id of the message first published as `shoal-origin-id`.
fn rerouted(message: &Message, topic: &str, hops: u32) -> Message {
    let origin = message
        .header(ORIGIN_HEADER)
        .unwrap_or(&message.id)
        .to_string();
    let mut copy = message.clone();
    copy.id = new_id();
    copy.topic = topic.to_string();
    copy.headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case(HOPS_HEADER) && !k.eq_ignore_ascii_case(ORIGIN_HEADER)
    });
    copy.headers.push((ORIGIN_HEADER.to_string(), origin));
    copy.headers
        .push((HOPS_HEADER.to_string(), hops.to_string()));
    copy
}

/// One Kafka bridge: consumes its Kafka topic in its consumer group and
/// publishes each record on this node.
struct BridgeActor;

struct BridgeArgs {
    bridge: Bridge,
    kafka: KafkaClient,
    messaging: Weak<Messaging>,
    node_name: String,
}

impl Actor for BridgeActor {
    type Msg = ();
    type State = tokio::task::JoinHandle<()>;
    type Arguments = BridgeArgs;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        args: BridgeArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tokio::spawn(async move {
            let name = args.bridge.name.clone();
            let messaging = args.messaging;
            let hand_on = move |message: Message| {
                let messaging = messaging.clone();
                async move {
                    let messaging = messaging.upgrade().ok_or(MessagingError::ShuttingDown)?;
                    messaging.publish(vec![message]).await.map(|_| ())
                }
            };
            if let Err(e) = args
                .kafka
                .run_bridge(args.bridge, args.node_name, hand_on)
                .await
            {
                tracing::error!(bridge = %name, error = %e, "Kafka bridge stopped");
            }
        }))
    }

    async fn handle(
        &self,
        _: ActorRef<()>,
        _: (),
        _: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<()>,
        consumer: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        consumer.abort();
        Ok(())
    }
}

/// Outbox work on the blocking pool; its failures are the outbox's.
async fn on_outbox<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, shoal_storage::StorageError> + Send + 'static,
) -> Result<T, MessagingError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(MessagingError::Outbox(e.to_string())),
        Err(e) => Err(MessagingError::Outbox(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;
    use crate::config::{Route, ROUTES_PREFIX, WEBHOOKS_PREFIX, WORKFLOW_INBOX};
    use crate::router::tests::NoPeers;

    /// A node's messaging on its own store, with a route from `orders` to
    /// the workflow event inbox, whose deliveries come out of the receiver.
    async fn messaging_routing_orders_to_the_inbox(
        dir: &std::path::Path,
    ) -> (Arc<Messaging>, mpsc::Receiver<InboxDelivery>) {
        let store = shoal_storage::Store::open(&dir.join("store")).expect("store");
        let outbox = Outbox::open(store.clone()).expect("outbox");
        let outbound = shoal_outbound::Outbound::new(
            shoal_outbound::Policy::new::<&str>(&[]).expect("policy"),
            None,
        )
        .expect("outbound");
        let (inbox, deliveries) = mpsc::channel(8);
        let messaging = Messaging::new(
            1,
            outbox,
            Arc::new(NoPeers),
            None,
            outbound,
            inbox,
            1 << 20,
            Arc::new(shoal_sinks::Databases::new(
                dir.join("local.sqlite"),
                Duration::from_secs(5),
            )),
            Arc::new(shoal_datasets::Datasets::new(dir.join("datasets"), 1)),
            store,
        );
        let route = Route {
            name: String::new(),
            source: "orders".into(),
            filter: None,
            destinations: vec![WORKFLOW_INBOX.into()],
        }
        .validate("to-inbox")
        .expect("route");
        let key = format!("{ROUTES_PREFIX}to-inbox");
        let value = serde_json::to_vec(&route).expect("route JSON");
        messaging.apply_config(vec![(key, Some(value))]).await;
        (messaging, deliveries)
    }

    /// A message on `orders`.
    fn order() -> Message {
        Message {
            id: new_id(),
            topic: "orders".into(),
            content_type: "application/json".into(),
            data: b"{}".to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_publish_its_caller_gave_up_on_still_wakes_the_deliverer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (messaging, mut deliveries) = messaging_routing_orders_to_the_inbox(dir.path()).await;
        let message = order();
        // Polled once, then dropped: the caller gives up while the outbox
        // write runs on a blocking thread (the write itself goes on).
        let given_up = messaging.publish(vec![message]).now_or_never();
        assert!(given_up.is_none(), "the publish finished in its first poll");
        let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.recv())
            .await
            .expect("the outbox held the message, but no deliverer was woken for it")
            .expect("the inbox channel is open");
        assert_eq!(delivery.event["topic"], "orders");
        let _ = delivery.reply.send(Ok(()));
    }

    #[tokio::test]
    async fn a_publish_that_read_a_deleted_webhook_leaves_it_no_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (messaging, mut deliveries) = messaging_routing_orders_to_the_inbox(dir.path()).await;
        let key = format!("{WEBHOOKS_PREFIX}hook");
        let webhook: crate::config::Webhook = serde_json::from_value(
            serde_json::json!({"url": "http://127.0.0.1:9/hook", "pattern": "orders"}),
        )
        .expect("webhook");
        let webhook = webhook.validate("hook").expect("valid webhook");
        let value = serde_json::to_vec(&webhook).expect("webhook JSON");
        messaging
            .apply_config(vec![(key.clone(), Some(value))])
            .await;
        let message = order();
        // The publish reads the configuration (the webhook is there) and
        // hands its outbox write to a task; the webhook is deleted, and its
        // outbox purged, before that task writes.
        let reading = messaging.publish(vec![message]).now_or_never();
        assert!(reading.is_none(), "the publish finished in its first poll");
        messaging.apply_config(vec![(key, None)]).await;
        // The same write's inbox entry: once it is delivered, the write is done.
        let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.recv())
            .await
            .expect("the inbox entry was never delivered")
            .expect("the inbox channel is open");
        let _ = delivery.reply.send(Ok(()));
        let outbox = messaging.deliveries.outbox();
        for list in [
            shoal_storage::outbox::List::Pending,
            shoal_storage::outbox::List::Dead,
        ] {
            assert_eq!(
                outbox.count(list, "webhook:hook").expect("count"),
                0,
                "the deleted webhook has an entry in its {list:?} list"
            );
        }
    }
}
