//! The workflow runner. On every node it waits; on the Raft leader it
//! drives instances: it loads every instance that is not finished, starts
//! an actor for each (under its definition's supervisor), follows changes
//! to instances through a watch, hands events published on any topic to
//! the instances listening for them, and publishes lifecycle events. When
//! the node stops leading, every actor stops; the next leader starts them
//! again from the replicated state.

mod actor;
mod effects;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use shoal_actors::queue::Overflow;
use shoal_actors::router::Subscription;
use shoal_actors::subject::Pattern;
use shoal_storage::kv::EventType;
use shoal_workflows::run::{EventFilter, Instance, Status};
use tokio::sync::Semaphore;

use self::actor::{DefinitionShared, DefinitionSupervisor, InstanceMsg, SupervisorMsg};
use super::instances::{self, INSTANCES_PREFIX};
use super::shoal::Shoal;
use super::watch::Watcher;
use super::watch_hub::Filter;
use super::workflows::get_definition;

/// Outgoing calls in flight per definition version and per node.
const CALLS_PER_DEFINITION: usize = 64;
const CALLS_PER_NODE: usize = 256;
/// Events waiting for the runner; past it the oldest are dropped (topics
/// are at most once).
const EVENT_QUEUE: usize = 65_536;
/// How often leadership is checked.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(200);

/// Which instances listen for which event types: a coarse index so an
/// event is offered only to instances that may take it (the instance
/// checks every filter itself).
#[derive(Default)]
pub struct ListenIndex {
    state: Mutex<IndexState>,
}

#[derive(Default)]
struct IndexState {
    /// Event type (empty: a filter without a literal type) to instances.
    by_type: HashMap<String, HashSet<String>>,
    /// Instance to the types it is indexed under.
    types: HashMap<String, Vec<String>>,
}

impl ListenIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, IndexState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance now listens with these filters (none: it does not).
    pub fn listen(&self, id: &str, filters: &[EventFilter]) {
        let mut types: Vec<String> = filters
            .iter()
            .map(|f| match f.with.get("type") {
                Some(serde_json::Value::String(t)) if !t.trim_start().starts_with("${") => {
                    t.clone()
                }
                _ => String::new(),
            })
            .collect();
        types.sort();
        types.dedup();
        let mut state = self.lock();
        if state.types.get(id) == Some(&types) {
            return;
        }
        state.remove(id);
        for t in &types {
            state
                .by_type
                .entry(t.clone())
                .or_default()
                .insert(id.to_string());
        }
        if !types.is_empty() {
            state.types.insert(id.to_string(), types);
        }
    }

    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Instances that may take an event of this type.
    fn candidates(&self, kind: &str) -> Vec<String> {
        let state = self.lock();
        let mut found: Vec<String> = Vec::new();
        for t in [kind, ""] {
            if let Some(ids) = state.by_type.get(t) {
                found.extend(ids.iter().cloned());
            }
        }
        found
    }
}

impl IndexState {
    fn remove(&mut self, id: &str) {
        if let Some(types) = self.types.remove(id) {
            for t in types {
                if let Some(ids) = self.by_type.get_mut(&t) {
                    ids.remove(id);
                    if ids.is_empty() {
                        self.by_type.remove(&t);
                    }
                }
            }
        }
    }
}

/// Runs forever: drives instances while this node leads.
pub async fn run(shoal: Arc<Shoal>) {
    let node_calls = Arc::new(Semaphore::new(CALLS_PER_NODE));
    let http = reqwest::Client::new();
    loop {
        tokio::time::sleep(LEADERSHIP_CHECK).await;
        if !shoal.is_leader() {
            continue;
        }
        let term = shoal.raft.metrics().borrow().current_term;
        let mut runner = Runner {
            shoal: shoal.clone(),
            index: Arc::new(ListenIndex::default()),
            supervisors: HashMap::new(),
            statuses: HashMap::new(),
            node_calls: node_calls.clone(),
            http: http.clone(),
        };
        tracing::info!(term, "leading: driving workflow instances");
        if let Err(e) = runner.lead(term).await {
            tracing::warn!(error = %e, "driving workflow instances stopped");
        }
        runner.stop();
    }
}

struct Runner {
    shoal: Arc<Shoal>,
    index: Arc<ListenIndex>,
    /// By definition key (`namespace/name/version`).
    supervisors: HashMap<String, ActorRef<SupervisorMsg>>,
    /// The last status seen of every instance, for lifecycle events.
    statuses: HashMap<String, (String, Status)>,
    node_calls: Arc<Semaphore>,
    http: reqwest::Client,
}

impl Runner {
    fn still_leading(&self, term: u64) -> bool {
        self.shoal.is_leader() && self.shoal.raft.metrics().borrow().current_term == term
    }

    async fn lead(&mut self, term: u64) -> anyhow::Result<()> {
        // Everything committed before this term is applied here once the
        // barrier passes: the load below sees every instance.
        self.shoal.read_barrier(false).await?;
        let mut events: Option<Subscription> = None;
        let revision = self.load().await?;
        let mut watcher = Watcher::start(
            self.shoal.clone(),
            Filter::Prefix(INSTANCES_PREFIX.to_string()),
            Some(revision + 1),
            false,
            256,
        )
        .await?;
        let mut check = tokio::time::interval(LEADERSHIP_CHECK);
        loop {
            self.follow_events(&mut events)?;
            let next_events = async {
                match &events {
                    Some(subscription) => subscription.queue.next_batch(256).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                batches = watcher.next_batches(None) => {
                    for shared in batches? {
                        for event in &shared.batch.events {
                            if event.kind != EventType::Put {
                                let id = event.kv.key.trim_start_matches(INSTANCES_PREFIX);
                                self.statuses.remove(id);
                                continue;
                            }
                            if let Ok(instance) = instances::decode(&event.kv.key, &event.kv.value) {
                                self.changed(instance).await;
                            }
                        }
                    }
                }
                batch = next_events => {
                    let Some(batch) = batch else { return Ok(()) };
                    if batch.dropped > 0 {
                        metrics::counter!("shoal_workflow_events_total", "result" => "dropped")
                            .increment(batch.dropped);
                    }
                    for message in batch.items {
                        self.offer(&message.message).await;
                    }
                }
                _ = check.tick() => {
                    if !self.still_leading(term) {
                        tracing::info!(term, "no longer leading: workflow actors stop");
                        return Ok(());
                    }
                    self.publish_gauges();
                }
            }
        }
    }

    /// Events are taken from every topic while some instance is unfinished
    /// (one may listen), and not at all otherwise: a subscription to every
    /// topic makes every node forward every message to the leader.
    fn follow_events(&self, events: &mut Option<Subscription>) -> anyhow::Result<()> {
        let unfinished = self.statuses.values().any(|(_, s)| !s.is_final());
        match (unfinished, events.is_some()) {
            (true, false) => {
                let pattern = Pattern::parse(">").map_err(|e| anyhow::anyhow!("{e}"))?;
                *events = Some(self.shoal.messaging.router.subscribe(
                    pattern,
                    None,
                    EVENT_QUEUE,
                    Overflow::DropOldest,
                ));
            }
            (false, true) => *events = None,
            _ => {}
        }
        Ok(())
    }

    /// Every instance from the local replica; starts the unfinished ones.
    async fn load(&mut self) -> anyhow::Result<u64> {
        let (revision, all) = self
            .shoal
            .read(|store| {
                let mut all = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let (counters, kvs, more) =
                        store.kv_range(INSTANCES_PREFIX, after.as_deref(), 1000)?;
                    after = kvs.last().map(|kv| kv.key.clone());
                    all.extend(
                        kvs.into_iter()
                            .filter_map(|kv| instances::decode(&kv.key, &kv.value).ok()),
                    );
                    if !more {
                        return Ok((counters.revision, all));
                    }
                }
            })
            .await?;
        for instance in all {
            self.statuses.insert(
                instance.id.clone(),
                (instance.definition_key(), instance.status),
            );
            if needs_driving(&instance) {
                self.deliver(&instance, InstanceMsg::Wake).await;
            }
        }
        Ok(revision)
    }

    async fn changed(&mut self, instance: Instance) {
        let before = self
            .statuses
            .insert(
                instance.id.clone(),
                (instance.definition_key(), instance.status),
            )
            .map(|(_, status)| status);
        if let Some(what) = lifecycle(before, &instance) {
            let message = effects::lifecycle_message(&instance, what);
            if let Err(e) = self.shoal.messaging.publish(vec![message]).await {
                tracing::warn!(instance = %instance.id, error = %e, "publishing a lifecycle event failed");
            }
        }
        if needs_driving(&instance) {
            self.deliver(&instance, InstanceMsg::Wake).await;
        }
    }

    /// Offers an event to the instances listening for its type.
    async fn offer(&mut self, message: &shoal_actors::message::Message) {
        let candidates = self.index.candidates(&message.kind);
        if candidates.is_empty() {
            return;
        }
        let envelope = Arc::new(message.envelope());
        for id in candidates {
            let Some((definition, _)) = self.statuses.get(&id).cloned() else {
                continue;
            };
            if let Some(supervisor) = self.supervisor(&definition).await {
                let _ = supervisor.send_message(SupervisorMsg::Deliver(
                    id,
                    InstanceMsg::Event(envelope.clone()),
                ));
            }
        }
    }

    async fn deliver(&mut self, instance: &Instance, message: InstanceMsg) {
        if let Some(supervisor) = self.supervisor(&instance.definition_key()).await {
            let _ = supervisor.send_message(SupervisorMsg::Deliver(instance.id.clone(), message));
        }
    }

    /// The supervisor of a definition version, started on first use.
    async fn supervisor(&mut self, key: &str) -> Option<ActorRef<SupervisorMsg>> {
        if let Some(supervisor) = self.supervisors.get(key) {
            return Some(supervisor.clone());
        }
        let definition = match get_definition(&self.shoal, key).await {
            Ok((definition, _)) => definition,
            Err(e) => {
                tracing::warn!(workflow = %key, error = %e, "cannot drive instances of a definition that cannot be read");
                return None;
            }
        };
        let shared = Arc::new(DefinitionShared {
            shoal: self.shoal.clone(),
            definition: Arc::new(definition),
            index: self.index.clone(),
            calls: Arc::new(Semaphore::new(CALLS_PER_DEFINITION)),
            node_calls: self.node_calls.clone(),
            http: self.http.clone(),
        });
        match Actor::spawn(None, DefinitionSupervisor, shared).await {
            Ok((supervisor, _)) => {
                self.supervisors.insert(key.to_string(), supervisor.clone());
                Some(supervisor)
            }
            Err(e) => {
                tracing::error!(workflow = %key, error = %e, "starting a workflow supervisor failed");
                None
            }
        }
    }

    fn publish_gauges(&self) {
        let mut counts: HashMap<(&str, Status), u64> = HashMap::new();
        for (definition, status) in self.statuses.values() {
            *counts.entry((definition.as_str(), *status)).or_default() += 1;
        }
        for ((definition, status), count) in counts {
            metrics::gauge!(
                "shoal_workflow_instances",
                "workflow" => definition.to_string(),
                "status" => status.as_str(),
            )
            .set(count as f64);
        }
    }

    fn stop(&mut self) {
        for (_, supervisor) in self.supervisors.drain() {
            supervisor.stop_children(None);
            supervisor.stop(None);
        }
    }
}

/// Whether an instance needs an actor: started, running or waiting.
fn needs_driving(instance: &Instance) -> bool {
    matches!(
        instance.status,
        Status::Pending | Status::Running | Status::Waiting
    )
}

/// The lifecycle event a status change makes, if any.
fn lifecycle(before: Option<Status>, instance: &Instance) -> Option<&'static str> {
    let now = instance.status;
    if before == Some(now) {
        return None;
    }
    match (before, now) {
        (None, Status::Pending) => Some("started"),
        (_, Status::Completed) => Some("completed"),
        (_, Status::Faulted) => Some("faulted"),
        (_, Status::Cancelled) => Some("cancelled"),
        (_, Status::Suspended) => Some("suspended"),
        (Some(Status::Suspended), _) => Some("resumed"),
        (Some(Status::Faulted), _) => Some("retried"),
        _ => None,
    }
}
