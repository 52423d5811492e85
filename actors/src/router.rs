//! The topic router: local subscribers, the interest other nodes announce
//! through gossip, queue groups across the cluster, and links to peers.
//!
//! Publishing never waits for a consumer. Each local subscriber and each peer
//! link has its own bounded queue (`BoundedQueue`), so a slow subscriber or a
//! slow node only ever loses its own messages, counted, and never slows the
//! publisher or anyone else. Core topics are at-most-once, like NATS core.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::future::BoxFuture;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::labels::topic_label;
use crate::message::{Message, Shared};
use crate::queue::{BoundedQueue, BufferBudget, Overflow, Pushed, QueueLimits};
use crate::subject::{pattern_matches, Pattern};

/// Messages buffered per peer link before the oldest are dropped.
const PEER_LINK_CAPACITY: usize = 65_536;
/// Bytes of messages buffered per peer link before the oldest are dropped.
const PEER_LINK_BYTES: u64 = 256 << 20;
/// Most messages in one frame to a peer.
const PEER_FRAME_MESSAGES: usize = 1024;
/// Shortest time between two warnings about one overflowing peer link.
const OVERFLOW_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub use shoal_storage::NodeId;

/// Sends an encoded frame of messages to a peer's router (implemented by the
/// node over its RPC listener).
pub trait PeerTransport: Send + Sync + 'static {
    fn send(&self, node: NodeId, frame: Vec<u8>) -> BoxFuture<'static, Result<(), PeerSendError>>;
}

/// Why a frame of messages did not reach a peer's router. The reasons come
/// from the node's transport, which this crate does not know.
#[derive(Debug, thiserror::Error)]
pub enum PeerSendError {
    #[error("no address is known for node {0}")]
    NoAddress(NodeId),
    #[error("cannot reach node {node}: {reason}")]
    Unreachable { node: NodeId, reason: String },
    #[error("node {node} refused the frame: {reason}")]
    Refused { node: NodeId, reason: String },
}

/// One line of a node's announced interest: a pattern, its queue group, and
/// how many subscribers hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interest {
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub subscribers: u32,
}

/// A message on its way to a peer, with the queue groups that peer was
/// chosen to serve for it.
#[derive(Serialize, Deserialize)]
struct Forward {
    message: Message,
    groups: Vec<String>,
}

/// Which of this node's own messages a [`Router::subscribe_published_here`]
/// subscription takes.
pub type Accepts = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

struct LocalSub {
    id: u64,
    pattern: Pattern,
    group: Option<String>,
    queue: Arc<BoundedQueue<Arc<Shared>>>,
    /// Set for a subscription to the messages published on this node
    /// alone: peers never learn of it, and those it does not accept never
    /// enter its queue.
    published_here: Option<Accepts>,
}

#[derive(Default)]
struct LocalTable {
    by_id: HashMap<u64, Arc<LocalSub>>,
    /// Subscriptions without wildcards, by topic.
    exact: HashMap<String, Vec<Arc<LocalSub>>>,
    wildcard: Vec<Arc<LocalSub>>,
}

impl LocalTable {
    /// Open subscriptions matching a topic. A closed one (its consumer was
    /// disconnected) is skipped, so a queue group never picks it, until it
    /// is removed.
    fn matching<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a Arc<LocalSub>)) {
        let open = |sub: &&'a Arc<LocalSub>| !sub.queue.is_closed();
        if let Some(subs) = self.exact.get(topic) {
            subs.iter().filter(open).for_each(&mut visit);
        }
        for sub in self.wildcard.iter().filter(open) {
            if sub.pattern.matches(topic) {
                visit(sub);
            }
        }
    }
}

/// What a publish reached.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Reach {
    /// Local subscriber queues the messages went into.
    pub local: usize,
    /// Messages handed to peer links (one per message per peer).
    pub forwarded: usize,
}

pub struct Router {
    node_id: NodeId,
    local: RwLock<LocalTable>,
    remote: RwLock<HashMap<NodeId, Vec<Interest>>>,
    links: Mutex<HashMap<NodeId, Arc<BoundedQueue<Forward>>>>,
    transport: Arc<dyn PeerTransport>,
    next_id: AtomicU64,
    /// Bumped on every local subscribe/unsubscribe, so the node knows when
    /// to re-announce its interest.
    interest_version: AtomicU64,
    /// What all local subscribers' queues may hold together.
    budget: Arc<BufferBudget>,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    pub id: u64,
    pub queue: Arc<BoundedQueue<Arc<Shared>>>,
    router: Arc<Router>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.router.unsubscribe(self.id);
    }
}

impl Router {
    /// `buffer_budget`: the bytes all local subscribers' queues may hold
    /// together (see [`BufferBudget`]); one queue holds at most a quarter
    /// of it.
    pub fn new(
        node_id: NodeId,
        transport: Arc<dyn PeerTransport>,
        buffer_budget: u64,
    ) -> Arc<Router> {
        Arc::new(Router {
            budget: BufferBudget::new(buffer_budget),
            node_id,
            local: RwLock::default(),
            remote: RwLock::default(),
            links: Mutex::default(),
            transport,
            next_id: AtomicU64::new(1),
            interest_version: AtomicU64::new(0),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Bytes held in local subscribers' queues now.
    pub fn buffered_bytes(&self) -> u64 {
        self.budget.used()
    }

    pub fn subscribe(
        self: &Arc<Self>,
        pattern: Pattern,
        group: Option<String>,
        capacity: usize,
        overflow: Overflow,
    ) -> Subscription {
        self.add_subscription(pattern, group, capacity, overflow, None)
    }

    /// A subscription to the messages published on this node (never those
    /// peers forward) that `accepts` lets through. Peers do not learn of
    /// it, so it costs the cluster nothing: for a service every node runs,
    /// where each message must be seen by one node, the node it was
    /// published on.
    pub fn subscribe_published_here(
        self: &Arc<Self>,
        pattern: Pattern,
        capacity: usize,
        overflow: Overflow,
        accepts: Accepts,
    ) -> Subscription {
        self.add_subscription(pattern, None, capacity, overflow, Some(accepts))
    }

    fn add_subscription(
        self: &Arc<Self>,
        pattern: Pattern,
        group: Option<String>,
        capacity: usize,
        overflow: Overflow,
        published_here: Option<Accepts>,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let limits = QueueLimits {
            capacity,
            max_bytes: self.budget_share(),
            budget: Some(self.budget.clone()),
        };
        let queue = BoundedQueue::new(limits, overflow);
        let announced = published_here.is_none();
        let sub = Arc::new(LocalSub {
            id,
            pattern,
            group,
            queue: queue.clone(),
            published_here,
        });
        {
            let mut table = self.local.write().unwrap_or_else(|p| p.into_inner());
            if sub.pattern.is_literal() {
                table
                    .exact
                    .entry(sub.pattern.as_str().to_string())
                    .or_default()
                    .push(sub.clone());
            } else {
                table.wildcard.push(sub.clone());
            }
            table.by_id.insert(id, sub);
        }
        if announced {
            self.interest_version.fetch_add(1, Ordering::Relaxed);
        }
        metrics::gauge!("shoal_subscribers").increment(1.0);
        Subscription {
            id,
            queue,
            router: self.clone(),
        }
    }

    /// Most bytes one subscriber's queue holds: a quarter of the budget.
    fn budget_share(&self) -> u64 {
        (self.budget.limit() / 4).max(1)
    }

    fn unsubscribe(&self, id: u64) {
        let mut table = self.local.write().unwrap_or_else(|p| p.into_inner());
        let Some(sub) = table.by_id.remove(&id) else {
            return;
        };
        sub.queue.close();
        if sub.pattern.is_literal() {
            if let Some(subs) = table.exact.get_mut(sub.pattern.as_str()) {
                subs.retain(|s| s.id != id);
                if subs.is_empty() {
                    table.exact.remove(sub.pattern.as_str());
                }
            }
        } else {
            table.wildcard.retain(|s| s.id != id);
        }
        drop(table);
        if sub.published_here.is_none() {
            self.interest_version.fetch_add(1, Ordering::Relaxed);
        }
        metrics::gauge!("shoal_subscribers").decrement(1.0);
    }

    pub fn interest_version(&self) -> u64 {
        self.interest_version.load(Ordering::Relaxed)
    }

    /// This node's subscriptions, aggregated for gossip.
    pub fn local_interest(&self) -> Vec<Interest> {
        let table = self.local.read().unwrap_or_else(|p| p.into_inner());
        let mut counts: HashMap<(String, Option<String>), u32> = HashMap::new();
        for sub in table
            .by_id
            .values()
            .filter(|sub| sub.published_here.is_none())
        {
            *counts
                .entry((sub.pattern.as_str().to_string(), sub.group.clone()))
                .or_default() += 1;
        }
        let mut interest: Vec<Interest> = counts
            .into_iter()
            .map(|((pattern, group), subscribers)| Interest {
                pattern,
                group,
                subscribers,
            })
            .collect();
        interest.sort_by(|a, b| (&a.pattern, &a.group).cmp(&(&b.pattern, &b.group)));
        interest
    }

    /// Replace what is known of other nodes' interest (from gossip). Links to
    /// nodes that are gone are closed.
    pub fn set_remote_interest(&self, interest: HashMap<NodeId, Vec<Interest>>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.retain(|node, link| {
            let keep = interest.contains_key(node);
            if !keep {
                link.close();
            }
            keep
        });
        drop(links);
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = interest;
    }

    /// Every node's interest, this one included (for `/v1/topics`).
    pub fn cluster_interest(&self) -> HashMap<NodeId, Vec<Interest>> {
        let mut all = self
            .remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        all.insert(self.node_id, self.local_interest());
        all
    }

    /// Route messages published on this node: to local subscribers, to peers
    /// with matching interest, and to one member of each matching queue
    /// group anywhere in the cluster.
    pub fn publish(self: &Arc<Self>, messages: Vec<Message>) -> Reach {
        let mut reach = Reach::default();
        let mut outgoing: HashMap<NodeId, Vec<Forward>> = HashMap::new();
        let mut closed = Vec::new();
        let mut tally = Tally::default();
        {
            let table = self.local.read().unwrap_or_else(|p| p.into_inner());
            let remote = self.remote.read().unwrap_or_else(|p| p.into_inner());
            for message in messages {
                tally.add(&message.topic, Count::Published);
                let shared = Arc::new(Shared::new(message));
                let topic = shared.message.topic.as_str();
                // Queue groups: candidates per group, local members one by one
                // and remote nodes weighted by their member count.
                let mut groups: HashMap<&str, Vec<Candidate>> = HashMap::new();
                table.matching(topic, |sub| match &sub.group {
                    None => {
                        let accepted = sub
                            .published_here
                            .as_ref()
                            .is_none_or(|accepts| accepts(&shared.message));
                        if accepted {
                            reach.local +=
                                deliver(sub, &shared, &self.budget, &mut tally, &mut closed)
                        }
                    }
                    Some(group) => groups
                        .entry(group.as_str())
                        .or_default()
                        .push(Candidate::Local(sub)),
                });
                let mut nodes: HashMap<NodeId, Vec<String>> = HashMap::new();
                for (node, interest) in remote.iter() {
                    for line in interest {
                        if !pattern_matches(&line.pattern, topic) {
                            continue;
                        }
                        match &line.group {
                            None => {
                                nodes.entry(*node).or_default();
                            }
                            Some(group) => groups
                                .entry(group.as_str())
                                .or_default()
                                .push(Candidate::Remote(*node, line.subscribers)),
                        }
                    }
                }
                for (group, candidates) in groups {
                    match choose(&candidates) {
                        Some(Candidate::Local(sub)) => {
                            reach.local +=
                                deliver(sub, &shared, &self.budget, &mut tally, &mut closed)
                        }
                        Some(Candidate::Remote(node, _)) => {
                            nodes.entry(*node).or_default().push(group.to_string())
                        }
                        None => {}
                    }
                }
                for (node, groups) in nodes {
                    outgoing.entry(node).or_default().push(Forward {
                        message: shared.message.clone(),
                        groups,
                    });
                }
            }
        }
        tally.emit();
        self.remove_closed(closed);
        for (node, forwards) in outgoing {
            let link = self.link(node);
            for forward in forwards {
                let bytes = forward.message.approx_bytes();
                match link.push(forward, bytes) {
                    Pushed::Queued => reach.forwarded += 1,
                    Pushed::DroppedOldest => {
                        reach.forwarded += 1;
                        metrics::counter!("shoal_peer_link_dropped_total").increment(1);
                    }
                    Pushed::Closed => {}
                }
            }
        }
        reach
    }

    /// Deliver a frame of messages a peer forwarded: to local subscribers,
    /// and to one local member of each queue group the peer chose us for.
    pub fn receive_frame(&self, frame: &[u8]) -> Result<usize, shoal_codec::CodecError> {
        let forwards: Vec<Forward> = shoal_codec::decode(frame)?;
        let table = self.local.read().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        let mut closed = Vec::new();
        let mut tally = Tally::default();
        for forward in forwards {
            let shared = Arc::new(Shared::new(forward.message));
            let mut members: HashMap<&str, Vec<&Arc<LocalSub>>> = HashMap::new();
            table.matching(&shared.message.topic, |sub| match &sub.group {
                None if sub.published_here.is_some() => {}
                None => delivered += deliver(sub, &shared, &self.budget, &mut tally, &mut closed),
                Some(group) => members.entry(group.as_str()).or_default().push(sub),
            });
            for group in &forward.groups {
                match members.get(group.as_str()).filter(|m| !m.is_empty()) {
                    Some(members) => {
                        let pick = rand::rng().random_range(0..members.len());
                        delivered += deliver(
                            members[pick],
                            &shared,
                            &self.budget,
                            &mut tally,
                            &mut closed,
                        );
                    }
                    // The member left between gossip rounds: at-most-once, counted.
                    None => tally.add(&shared.message.topic, Count::Dropped),
                }
            }
        }
        drop(table);
        tally.emit();
        self.remove_closed(closed);
        Ok(delivered)
    }

    /// Unsubscribe consumers found closed while delivering (disconnected for
    /// being slow), so they leave the table and the announced interest now
    /// rather than when their connection finally ends.
    fn remove_closed(&self, mut closed: Vec<u64>) {
        closed.sort_unstable();
        closed.dedup();
        for id in closed {
            self.unsubscribe(id);
        }
    }

    /// The link to a peer, started on first use.
    fn link(self: &Arc<Self>, node: NodeId) -> Arc<BoundedQueue<Forward>> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.get(&node).filter(|link| !link.is_closed()) {
            return link.clone();
        }
        let limits = QueueLimits {
            capacity: PEER_LINK_CAPACITY,
            max_bytes: PEER_LINK_BYTES,
            budget: None,
        };
        let link = BoundedQueue::new(limits, Overflow::DropOldest);
        links.insert(node, link.clone());
        tokio::spawn(run_link(node, link.clone(), self.transport.clone()));
        link
    }
}

/// Put a message into a subscriber's queue; 1 if it was taken, 0 if the
/// queue is closed (its id is added to `closed`).
fn deliver(
    sub: &LocalSub,
    shared: &Arc<Shared>,
    budget: &Arc<BufferBudget>,
    tally: &mut Tally,
    closed: &mut Vec<u64>,
) -> usize {
    let topic = shared.message.topic.as_str();
    shared.charge_to(budget);
    match sub.queue.push(shared.clone(), shared.approx_bytes()) {
        Pushed::Queued => {
            tally.add(topic, Count::Delivered);
            1
        }
        Pushed::DroppedOldest => {
            tally.add(topic, Count::Delivered);
            tally.add(topic, Count::Dropped);
            1
        }
        Pushed::Closed => {
            tally.add(topic, Count::Dropped);
            closed.push(sub.id);
            0
        }
    }
}

#[derive(Clone, Copy)]
enum Count {
    Published = 0,
    Delivered = 1,
    Dropped = 2,
}

/// Per-topic message counts of one publish (or one frame from a peer),
/// added to the metrics once at the end: a labelled counter lookup per
/// message would cost as much as routing it.
#[derive(Default)]
struct Tally {
    topics: HashMap<String, [u64; 3]>,
}

impl Tally {
    fn add(&mut self, topic: &str, count: Count) {
        match self.topics.get_mut(topic) {
            Some(counts) => counts[count as usize] += 1,
            None => {
                let mut counts = [0; 3];
                counts[count as usize] = 1;
                self.topics.insert(topic.to_string(), counts);
            }
        }
    }

    fn emit(self) {
        for (topic, [published, delivered, dropped]) in self.topics {
            for (name, value) in [
                ("shoal_messages_published_total", published),
                ("shoal_messages_delivered_total", delivered),
                ("shoal_messages_dropped_total", dropped),
            ] {
                if value > 0 {
                    metrics::counter!(name, "topic" => topic_label(&topic)).increment(value);
                }
            }
        }
    }
}

/// A possible receiver of a queue group's message: a local member, or a
/// node with this many members.
enum Candidate<'a> {
    Local(&'a Arc<LocalSub>),
    Remote(NodeId, u32),
}

impl Candidate<'_> {
    fn weight(&self) -> u64 {
        match self {
            Candidate::Local(_) => 1,
            Candidate::Remote(_, members) => u64::from(*members),
        }
    }
}

/// Pick one candidate, weighted by its member count, so every member in the
/// cluster is equally likely.
fn choose<'c, 'a>(candidates: &'c [Candidate<'a>]) -> Option<&'c Candidate<'a>> {
    let total: u64 = candidates.iter().map(Candidate::weight).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rand::rng().random_range(0..total);
    for candidate in candidates {
        if ticket < candidate.weight() {
            return Some(candidate);
        }
        ticket -= candidate.weight();
    }
    None
}

/// Drain one peer link: send what has gathered as one frame, wait for the
/// peer to take it, repeat. While a frame is in flight new messages gather
/// into the next one, so a busy link sends big frames. A frame that cannot
/// be sent is dropped (at-most-once) and counted.
async fn run_link(
    node: NodeId,
    link: Arc<BoundedQueue<Forward>>,
    transport: Arc<dyn PeerTransport>,
) {
    let mut dropped = 0;
    let mut last_warning: Option<std::time::Instant> = None;
    while let Some(batch) = link.next_batch(PEER_FRAME_MESSAGES).await {
        dropped += batch.dropped;
        // At most one warning per interval, with the total since the last one.
        if dropped > 0 && last_warning.is_none_or(|at| at.elapsed() >= OVERFLOW_WARNING_INTERVAL) {
            tracing::warn!(
                node,
                dropped,
                "peer link overflowed; oldest messages dropped"
            );
            last_warning = Some(std::time::Instant::now());
            dropped = 0;
        }
        if batch.items.is_empty() {
            continue;
        }
        let count = batch.items.len();
        let frame = match shoal_codec::encode(&batch.items) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(node, error = %e, "encoding a frame for a peer failed");
                continue;
            }
        };
        if let Err(e) = transport.send(node, frame).await {
            tracing::warn!(
                node,
                count,
                error = %e,
                "forwarding messages to a peer failed; dropped",
            );
            metrics::counter!("shoal_peer_link_dropped_total").increment(count as u64);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A transport to a cluster of one: every peer is unknown.
    pub(crate) struct NoPeers;
    impl PeerTransport for NoPeers {
        fn send(&self, node: NodeId, _: Vec<u8>) -> BoxFuture<'static, Result<(), PeerSendError>> {
            Box::pin(async move { Err(PeerSendError::NoAddress(node)) })
        }
    }

    fn message(topic: &str) -> Message {
        Message {
            topic: topic.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn queue_group_gets_each_message_once() {
        let router = Router::new(1, Arc::new(NoPeers), 1 << 30);
        let pattern = Pattern::parse("jobs.*").unwrap();
        let a = router.subscribe(
            pattern.clone(),
            Some("workers".into()),
            100,
            Overflow::DropOldest,
        );
        let b = router.subscribe(
            pattern.clone(),
            Some("workers".into()),
            100,
            Overflow::DropOldest,
        );
        let watcher = router.subscribe(pattern, None, 100, Overflow::DropOldest);
        router.publish((0..50).map(|_| message("jobs.x")).collect());
        assert_eq!(a.queue.len() + b.queue.len(), 50);
        assert_eq!(watcher.queue.len(), 50);
        assert_eq!(router.local_interest().len(), 2);
        drop(a);
        drop(b);
        assert_eq!(router.local_interest().len(), 1);
    }

    #[tokio::test]
    async fn a_subscription_to_messages_published_here_takes_only_those_it_accepts() {
        let router = Router::new(1, Arc::new(NoPeers), 1 << 30);
        let before = router.interest_version();
        let here = router.subscribe_published_here(
            Pattern::parse(">").unwrap(),
            100,
            Overflow::DropOldest,
            Arc::new(|message: &Message| message.kind == "wanted"),
        );
        assert!(
            router.local_interest().is_empty(),
            "peers never learn of it"
        );
        assert_eq!(router.interest_version(), before);
        let kinds = ["wanted", "other", "wanted"];
        let reach = router.publish(
            kinds
                .iter()
                .map(|kind| Message {
                    kind: kind.to_string(),
                    ..message("a.b")
                })
                .collect(),
        );
        assert_eq!(reach.local, 2);
        assert_eq!(here.queue.len(), 2);

        // A message a peer forwards was published there, and is not taken.
        let forwarded = vec![Forward {
            message: Message {
                kind: "wanted".into(),
                ..message("a.b")
            },
            groups: Vec::new(),
        }];
        let frame = shoal_codec::encode(&forwarded).unwrap();
        assert_eq!(router.receive_frame(&frame).unwrap(), 0);
        assert_eq!(here.queue.len(), 2);
    }
}
