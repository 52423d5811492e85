//! The workflow runner. On the Raft leader it drives instances: it loads
//! every instance that is not finished, starts an actor for each (under its
//! definition's supervisor), follows changes to instances through a watch,
//! starts scheduled instances and publishes lifecycle events. When the node
//! stops leading, every actor stops; the next leader starts them again from
//! the replicated state. Events reach instances through the intake, which
//! runs on every node (`intake`).

mod actor;
mod effects;
mod intake;
mod listeners;
mod schedules;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use shoal_storage::kv::EventType;
use shoal_workflows::run::{Instance, Status};
use tokio::sync::Semaphore;

use self::actor::{DefinitionShared, DefinitionSupervisor, InstanceMsg, SupervisorMsg};
use self::schedules::Schedules;
use super::instances::{self, INSTANCES_PREFIX};
use super::shoal::Shoal;
use super::watch::Watcher;
use super::watch_hub::Filter;
use super::workflows::get_definition;

/// Outgoing calls in flight per definition version and per node.
const CALLS_PER_DEFINITION: usize = 64;
const CALLS_PER_NODE: usize = 256;
/// How often leadership is checked.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(200);
/// How often schedules are read again from the definitions and checked.
const SCHEDULE_CHECK: Duration = Duration::from_secs(1);

/// Runs forever: drives instances while this node leads.
pub async fn run(shoal: Arc<Shoal>) {
    tokio::spawn(intake::run(shoal.clone()));
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
            supervisors: HashMap::new(),
            statuses: HashMap::new(),
            schedules: Schedules::default(),
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
    /// By definition key (`namespace/name/version`).
    supervisors: HashMap<String, ActorRef<SupervisorMsg>>,
    /// The last status seen of every instance, for lifecycle events.
    statuses: HashMap<String, (String, Status)>,
    schedules: Schedules,
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
        let mut schedule_check = tokio::time::interval(SCHEDULE_CHECK);
        loop {
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
                _ = check.tick() => {
                    if !self.still_leading(term) {
                        tracing::info!(term, "no longer leading: workflow actors stop");
                        return Ok(());
                    }
                    self.publish_gauges();
                }
                _ = schedule_check.tick() => {
                    match Schedules::load(&self.shoal, false).await {
                        Ok(schedules) => self.schedules = schedules,
                        Err(e) => tracing::warn!(error = %e, "reading workflow schedules failed"),
                    }
                    self.schedules.tick(&self.shoal).await;
                }
            }
        }
    }

    /// Every instance from the local replica; starts the unfinished ones.
    async fn load(&mut self) -> anyhow::Result<u64> {
        let (revision, all) = self.shoal.read(instances::scan).await?;
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
