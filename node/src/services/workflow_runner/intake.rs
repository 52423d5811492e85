//! Events into instances, on every node. Each node follows the instances
//! in its replica (which listen for what) and the definitions (which event
//! types any of them takes), and takes the messages published on it (on
//! every topic, never those peers forward) whose type some definition
//! takes: so each message is looked at by one node, and messages of other
//! types cost nothing but a lookup and never cross the network. That node
//! applies the event to the instances listening for it (a
//! compare-and-swap through Raft) and starts the instances of schedules
//! that start on events; the leader's driver sees the change and goes on.
//!
//! An event that finds no listener is kept a few seconds: this replica may
//! not yet have applied the write that made an instance listen (its
//! emit's answer can be quicker than replication), and the event is
//! offered again when one does.
//!
//! Every node also follows the workflow event inbox (`workflow_events`);
//! the leader's intake offers each inbox event when it arrives, when an
//! instance begins to listen for its type, and all of them when it begins
//! to lead. The writes that apply an inbox event hold only while it is in
//! the inbox, and the last of them deletes it; one taken otherwise (a
//! schedule's start) is deleted at the next tick, as are those past
//! retention.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_actors::queue::Overflow;
use shoal_actors::router::Subscription;
use shoal_actors::subject::Pattern;
use shoal_storage::kv::EventType;
use shoal_storage::now_ms;
use shoal_workflows::run::{Applied, Instance, Status};
use shoal_workflows::EventTypes;

use super::listeners::Listeners;
use super::schedules::Schedules;
use crate::services::instances::{self, INSTANCES_PREFIX};
use crate::services::shoal::Shoal;
use crate::services::watch::Watcher;
use crate::services::watch_hub::Filter;
use crate::services::workflow_events::{self, EVENTS_PREFIX};
use crate::services::workflows::DEFINITIONS_PREFIX;

mod inbox;
use inbox::Inboxed;

/// Messages waiting for the intake; past it the oldest are dropped (topics
/// are at most once).
const QUEUE: usize = 65_536;
/// How long an event nobody took is kept, and how many.
const KEEP: Duration = Duration::from_secs(10);
const MAX_KEPT: usize = 10_000;
/// How often the subscription and the kept events are looked at (and the
/// schedules read again if the last read failed).
const TICK: Duration = Duration::from_secs(1);
/// Tries of a compare-and-swap that lost to another write.
const TRIES: usize = 8;

/// Adds a type instances listen for ("" as the listeners index it: any).
fn add_listened(accepted: &mut EventTypes, kind: &str) {
    accepted.add((!kind.is_empty()).then_some(kind));
}

/// What offering an event did: an instance took it (or a schedule started
/// one), whether any offer failed (and may succeed when tried again), and
/// whether an instance's write deleted it from the inbox.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offered {
    pub taken: bool,
    pub failed: bool,
    pub deleted: bool,
}

impl Offered {
    fn and(self, other: Offered) -> Offered {
        Offered {
            taken: self.taken || other.taken,
            failed: self.failed || other.failed,
            deleted: self.deleted || other.deleted,
        }
    }
}

/// Runs for ever on every node.
pub async fn run(shoal: Arc<Shoal>) {
    loop {
        let mut intake = Intake {
            shoal: shoal.clone(),
            listeners: Listeners::default(),
            kept: VecDeque::new(),
            schedules: Schedules::default(),
            unfinished: HashSet::new(),
            inbox: BTreeMap::new(),
            retry: BTreeSet::new(),
            taken: Vec::new(),
            leading: false,
            accepted: Arc::default(),
        };
        if let Err(e) = intake.follow().await {
            tracing::warn!(error = %e, "workflow event intake stopped; starting again");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Intake {
    shoal: Arc<Shoal>,
    listeners: Listeners,
    /// Events nobody took yet, with when they came.
    kept: VecDeque<(Instant, Arc<Value>)>,
    schedules: Schedules,
    /// The unfinished instances of this replica, by a hash of their id
    /// (8 bytes each, not the id): their number is what
    /// `--workflow-max-unfinished` bounds.
    unfinished: HashSet<u64>,
    /// The workflow event inbox of this replica, by event id.
    inbox: BTreeMap<String, Inboxed>,
    /// Inbox events whose offer failed: offered again each tick.
    retry: BTreeSet<String>,
    /// Inbox events taken in this term, to delete.
    taken: Vec<String>,
    /// Whether this node led at the last tick (the leader offers the inbox).
    leading: bool,
    /// The event types the subscription takes: those of the definitions
    /// and of the listening instances (whose definition may be gone).
    accepted: Arc<RwLock<EventTypes>>,
}

impl Intake {
    async fn follow(&mut self) -> anyhow::Result<()> {
        let revision = self.load().await?;
        let mut watcher = Watcher::start(
            self.shoal.clone(),
            Filter::Prefix(INSTANCES_PREFIX.to_string()),
            Some(revision + 1),
            true,
            256,
        )
        .await?;
        // A new definition is taken up at once: instances of it may start
        // right after, and their events must find this subscription.
        let mut definitions = Watcher::start(
            self.shoal.clone(),
            Filter::Prefix(DEFINITIONS_PREFIX.to_string()),
            Some(revision + 1),
            true,
            16,
        )
        .await?;
        let inbox_revision = self.load_inbox().await?;
        let mut inbox = Watcher::start(
            self.shoal.clone(),
            Filter::Prefix(EVENTS_PREFIX.to_string()),
            Some(inbox_revision + 1),
            true,
            256,
        )
        .await?;
        let mut events: Option<Subscription> = None;
        let mut schedules_read = self.read_schedules().await;
        let mut tick = tokio::time::interval(TICK);
        loop {
            let next_events = async {
                match &events {
                    Some(subscription) => subscription.queue.next_batch(256).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                batches = watcher.next_batches(None) => {
                    let mut new_types = BTreeSet::new();
                    for shared in batches? {
                        for event in &shared.batch.events {
                            let id = event.kv.key.trim_start_matches(INSTANCES_PREFIX);
                            let instance = match event.kind {
                                EventType::Put => {
                                    instances::decode(&event.kv.key, &event.kv.value).ok()
                                }
                                _ => None,
                            };
                            self.count(id, instance.as_ref());
                            new_types.extend(self.listeners.update(id, instance.as_ref()));
                        }
                    }
                    if !new_types.is_empty() {
                        self.accept(&new_types);
                        self.offer_kept(&new_types).await;
                        self.offer_inbox_of(&new_types).await;
                    }
                }
                batches = inbox.next_batches(None) => {
                    let mut arrived = Vec::new();
                    for shared in batches? {
                        for event in &shared.batch.events {
                            let id = event.kv.key[EVENTS_PREFIX.len()..].to_string();
                            let waiting = match event.kind {
                                EventType::Put => {
                                    workflow_events::decode(&event.kv.key, &event.kv.value).ok()
                                }
                                _ => None,
                            };
                            match waiting {
                                Some(waiting) => {
                                    self.inbox.insert(id.clone(), Inboxed::new(waiting));
                                    arrived.push(id);
                                }
                                None => {
                                    self.inbox.remove(&id);
                                    self.retry.remove(&id);
                                }
                            }
                        }
                    }
                    self.gauge_inbox();
                    if self.shoal.is_leader() {
                        if let Some(delay) = self.shoal.faults.inbox_delay {
                            tokio::time::sleep(delay).await;
                        }
                        self.offer_inbox(arrived).await;
                    }
                }
                batch = next_events => {
                    let Some(batch) = batch else { return Ok(()) };
                    if batch.dropped > 0 {
                        metrics::counter!("shoal_workflow_events_total", "result" => "dropped")
                            .increment(batch.dropped);
                    }
                    for message in batch.items {
                        let event = Arc::new(message.message.envelope());
                        if !self.offer(&event, None).await.taken {
                            self.keep(event);
                        }
                    }
                }
                changed = definitions.next_batches(None) => {
                    changed?;
                    schedules_read = self.read_schedules().await;
                    self.refresh(&mut events)?;
                }
                _ = tick.tick() => {
                    if !schedules_read {
                        schedules_read = self.read_schedules().await;
                    }
                    self.refresh(&mut events)?;
                    self.tend_inbox().await;
                }
            }
        }
    }

    /// Reads the schedules (when a definition changed); false if that failed.
    async fn read_schedules(&mut self) -> bool {
        match Schedules::load(&self.shoal, true).await {
            Ok(schedules) => {
                let mut accepted = schedules.event_types.clone();
                for kind in self.listeners.types() {
                    add_listened(&mut accepted, kind);
                }
                *self.accepted.write().unwrap_or_else(|p| p.into_inner()) = accepted;
                self.schedules = schedules;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading workflow schedules failed");
                false
            }
        }
    }

    /// Adds the types instances began to listen for ("" for any type) to
    /// those the subscription takes, if they are new.
    fn accept(&self, types: &BTreeSet<String>) {
        let missing = |accepted: &EventTypes| {
            types
                .iter()
                .any(|kind| kind.is_empty() || !accepted.contains(kind))
        };
        if !missing(&self.accepted.read().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        let mut accepted = self.accepted.write().unwrap_or_else(|p| p.into_inner());
        for kind in types {
            add_listened(&mut accepted, kind);
        }
    }

    /// Subscribes or unsubscribes, and forgets events kept too long.
    fn refresh(&mut self, events: &mut Option<Subscription>) -> anyhow::Result<()> {
        let wanted = !self.schedules.event_types.is_empty() || !self.listeners.is_empty();
        match (wanted, events.is_some()) {
            (true, false) => {
                let pattern = Pattern::parse(">").map_err(|e| anyhow::anyhow!("{e}"))?;
                let accepted = self.accepted.clone();
                *events = Some(self.shoal.messaging.router.subscribe_published_here(
                    pattern,
                    QUEUE,
                    Overflow::DropOldest,
                    Arc::new(move |message| {
                        accepted
                            .read()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains(&message.kind)
                    }),
                ));
            }
            (false, true) => *events = None,
            _ => {}
        }
        let now = Instant::now();
        while self.kept.front().is_some_and(|(at, _)| now - *at > KEEP) {
            self.kept.pop_front();
        }
        Ok(())
    }

    /// Every instance of this replica; the revision it was read at.
    async fn load(&mut self) -> anyhow::Result<u64> {
        let (revision, all) = self.shoal.read(instances::scan).await?;
        for (instance, _) in all {
            self.count(&instance.id, Some(&instance));
            self.listeners.update(&instance.id, Some(&instance));
        }
        Ok(revision)
    }

    /// Counts an instance as unfinished or not (none: deleted).
    fn count(&mut self, id: &str, instance: Option<&Instance>) {
        let mut hasher = std::hash::DefaultHasher::new();
        id.hash(&mut hasher);
        let key = hasher.finish();
        if instance.is_some_and(|i| !i.status.is_final()) {
            self.unfinished.insert(key);
        } else {
            self.unfinished.remove(&key);
        }
        self.shoal
            .unfinished_instances
            .store(self.unfinished.len() as u64, Ordering::Relaxed);
    }

    /// Applies an event to the instances listening for it and starts the
    /// instances of schedules that start on it. An inbox event (its id
    /// given) is deleted by the write that applies it.
    async fn offer(&self, event: &Value, inbox_id: Option<&str>) -> Offered {
        let candidates = self.candidates(event).await;
        self.offer_to(event, &candidates, inbox_id).await
    }

    /// The instances of this replica that may be listening for the event
    /// (the correlation keys computed).
    async fn candidates(&self, event: &Value) -> Vec<String> {
        let programs = self.listeners.programs(event);
        let answers = self.correlation_values(&programs, event).await;
        self.listeners
            .candidates(event, &programs, answers)
            .into_iter()
            .collect()
    }

    /// Starts the instances of schedules that start on the event and
    /// applies it to these candidates.
    async fn offer_to(
        &self,
        event: &Value,
        candidates: &[String],
        inbox_id: Option<&str>,
    ) -> Offered {
        let started = self.schedules.offer(&self.shoal, event).await;
        started.and(self.offer_to_instances(event, candidates, inbox_id).await)
    }

    /// Applies an event to the instances listening for it. An inbox event
    /// is applied only while it is in the inbox (a replica that has not yet
    /// seen it deleted must not hand it out again), and the write to the
    /// last instance deletes it.
    async fn offer_to_instances(
        &self,
        event: &Value,
        candidates: &[String],
        inbox_id: Option<&str>,
    ) -> Offered {
        let mut offered = Offered::default();
        let last = candidates.len().saturating_sub(1);
        for (n, id) in candidates.iter().enumerate() {
            let requires = inbox_id.map(|inbox_id| instances::Requires {
                key: workflow_events::key_of(inbox_id),
                delete: n == last,
            });
            let result = match self.apply(id, event, requires.as_ref()).await {
                Ok(Applied::Applied) => {
                    offered.taken = true;
                    offered.deleted |= requires.is_some_and(|r| r.delete);
                    "applied"
                }
                Ok(Applied::Duplicate) => {
                    offered.taken = true;
                    "duplicate"
                }
                Ok(Applied::NotWaiting) => "not_waiting",
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "applying an event failed");
                    offered.failed = true;
                    "failed"
                }
            };
            metrics::counter!("shoal_workflow_events_total", "result" => result).increment(1);
        }
        offered
    }

    /// Each correlation program's value on the event (none where it
    /// failed), all in one piece of work; if that fails, each program on
    /// its own, so that one definition's runaway correlation costs only its
    /// own instances their events.
    async fn correlation_values(&self, programs: &[String], event: &Value) -> Vec<Option<Value>> {
        if programs.is_empty() {
            return Vec::new();
        }
        let evaluator = &self.shoal.evaluator;
        match evaluator.jq(programs.to_vec(), vec![event.clone()]).await {
            Ok(mut by_input) => by_input
                .pop()
                .unwrap_or_default()
                .into_iter()
                .map(Result::ok)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "an event's correlation values could not be computed together; computing each alone");
                metrics::counter!("shoal_workflow_events_total", "result" => "failed").increment(1);
                let mut values = Vec::with_capacity(programs.len());
                for program in programs {
                    let value = evaluator
                        .jq(vec![program.clone()], vec![event.clone()])
                        .await
                        .ok()
                        .and_then(|mut by_input| by_input.pop()?.pop()?.ok());
                    values.push(value);
                }
                values
            }
        }
    }

    /// Applies the event to one instance (a compare-and-swap, tried again
    /// when another write came first), requiring the inbox key of an inbox
    /// event: once it is gone the event counts as taken (`Duplicate`).
    async fn apply(
        &self,
        id: &str,
        event: &Value,
        requires: Option<&instances::Requires>,
    ) -> Result<Applied, instances::InstanceError> {
        for attempt in 0..TRIES {
            let read_id = id.to_string();
            let store = self.shoal.store.clone();
            let read = tokio::task::spawn_blocking(move || instances::read_local(&store, &read_id))
                .await
                .map_err(|e| instances::InstanceError::Unreadable {
                    key: instances::key_of(id),
                    message: e.to_string(),
                })??;
            let Some((instance, revision)) = read else {
                return Ok(Applied::NotWaiting);
            };
            if !matches!(instance.status, Status::Running | Status::Waiting) {
                return Ok(Applied::NotWaiting);
            }
            let (instance, applied) = self
                .shoal
                .evaluator
                .apply_event(instance, event, now_ms())
                .await?;
            if applied != Applied::Applied {
                return Ok(applied);
            }
            match instances::write_requiring(&self.shoal, &instance, revision, requires).await? {
                instances::Written::At(_) => return Ok(Applied::Applied),
                instances::Written::RequiredGone => return Ok(Applied::Duplicate),
                instances::Written::Changed => {}
            }
            // Someone wrote first; this replica catches up, then again.
            tokio::time::sleep(Duration::from_millis(10 << attempt.min(5))).await;
        }
        Ok(Applied::NotWaiting)
    }

    fn keep(&mut self, event: Arc<Value>) {
        self.kept.push_back((Instant::now(), event));
        while self.kept.len() > MAX_KEPT {
            self.kept.pop_front();
        }
    }

    /// Offers the kept events of these types again.
    async fn offer_kept(&mut self, types: &BTreeSet<String>) {
        let any = types.contains("");
        let (again, stay): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.kept)
                .into_iter()
                .partition(|(_, event)| {
                    any || event
                        .get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| types.contains(t))
                });
        self.kept = stay.into();
        for (at, event) in again {
            let candidates = self.candidates(&event).await;
            if !self
                .offer_to_instances(&event, &candidates, None)
                .await
                .taken
            {
                self.kept.push_back((at, event));
            }
        }
    }
}
