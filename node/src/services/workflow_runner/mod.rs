//! The workflow runner. On the Raft leader it drives instances: it loads
//! every instance, follows changes to instances through a watch, hands
//! each instance with work to do to an actor (under its definition's
//! supervisor), keeps every armed timer and wakes its instance when it is
//! due, starts scheduled instances, deletes finished instances past
//! retention and publishes lifecycle events (at least once: see
//! [`ANNOUNCED_KEY`]). When the node
//! stops leading, every actor stops; the next leader starts them again from
//! the replicated state. Events reach instances through the intake, which
//! runs on every node (`intake`).

mod actor;
mod effects;
mod intake;
mod listeners;
mod schedules;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ractor::{Actor, ActorRef};
use shoal_actors::message::Message;
use shoal_storage::kv::{EventType, Txn, TxnOp};
use shoal_storage::now_ms;
use shoal_workflows::run::{Instance, Status};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::actor::{
    pending_timers, DefinitionShared, DefinitionSupervisor, InstanceMsg, Seen, SupervisorMsg,
};
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
/// How often schedules are read again from the definitions and checked,
/// and finished instances past retention deleted.
const SCHEDULE_CHECK: Duration = Duration::from_secs(1);
/// Most finished instances deleted in one sweep.
const DELETES_PER_SWEEP: usize = 1000;
/// A due timer is offered to its instance again this often until the
/// instance records it fired (an offer to an actor that failed is lost
/// with its mailbox). Not much more often: a runner that lags behind the
/// writes under load would offer timers that fired already, and each
/// offer costs a read of the instance, which made it lag further (at
/// 250 ms, six offers per timer).
const TIMER_REOFFER: Duration = Duration::from_secs(2);
/// An instance whose timer is due within this long when the runner sees
/// it change is kept decoded until the timer is offered, so its actor need
/// not read it again (short waits and retry backoffs); one due later is
/// not, so that waiting instances stay small.
const SOON_DUE: Duration = Duration::from_secs(1);

/// The KV revision through which the leader has published the lifecycle
/// events of every instance change, written each [`SCHEDULE_CHECK`] when
/// an instance changed (a cluster without instances never writes it). A
/// new leader publishes again the lifecycle events of every instance
/// changed after it: a leader that dies between a commit and its
/// publication loses no event (a few may come twice, with the same ids).
const ANNOUNCED_KEY: &str = "_shoal/workflows/announced";
/// Lifecycle events published together when a new leader catches up.
const ANNOUNCE_BATCH: usize = 1000;

/// Runs forever: drives instances while this node leads.
pub async fn run(shoal: Arc<Shoal>) {
    tokio::spawn(intake::run(shoal.clone()));
    let node_calls = Arc::new(Semaphore::new(CALLS_PER_NODE));
    loop {
        tokio::time::sleep(LEADERSHIP_CHECK).await;
        if !shoal.is_leader() {
            continue;
        }
        let term = shoal.raft.metrics().borrow().current_term;
        let mut runner = Runner {
            shoal: shoal.clone(),
            supervisors: HashMap::new(),
            tracked: HashMap::new(),
            counts: HashMap::new(),
            definitions: SharedKeys::default(),
            timer_keys: SharedKeys::default(),
            expiring: BTreeMap::new(),
            sweep: None,
            timers: BTreeSet::new(),
            due_soon: HashMap::new(),
            schedules: Schedules::default(),
            node_calls: node_calls.clone(),
            announced: 0,
            announced_written: 0,
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
    /// What was last seen of every instance, by id. Held for every
    /// unfinished instance, so kept small: ids and timer keys are shared
    /// with [`Runner::timers`], not copied.
    tracked: HashMap<Arc<str>, Tracked>,
    /// Tracked instances by definition and status, kept as they change (for
    /// the gauges; counting all of them each time cost the leader CPU).
    counts: HashMap<(Arc<str>, Status), u64>,
    /// Definition keys, shared by the instances that run them.
    definitions: SharedKeys,
    /// Timer keys (task paths), shared by the instances waiting at the
    /// same task.
    timer_keys: SharedKeys,
    /// Finished instances, by when they finished, with the revision of
    /// that state: deleted once retention has passed.
    expiring: BTreeMap<(u64, String), u64>,
    /// The deletes under way; it gives back those that failed.
    sweep: Option<JoinHandle<Vec<Expiring>>>,
    /// When instances have armed timers that have not fired: (when to
    /// offer them, instance id), once per instance and time. The timers'
    /// keys are in the instance's [`Tracked`] (kept once, not here too).
    timers: BTreeSet<(Instant, Arc<str>)>,
    /// The last state seen of instances with a timer due within
    /// [`SOON_DUE`], handed to the actor with the timer's first offer.
    due_soon: HashMap<Arc<str>, Box<Seen>>,
    schedules: Schedules,
    node_calls: Arc<Semaphore>,
    /// The revision of the last instance change whose lifecycle events are
    /// published, and the one last written to [`ANNOUNCED_KEY`].
    announced: u64,
    announced_written: u64,
}

/// Strings many holders share (one allocation each, not one per holder);
/// those no one else holds any more are dropped once the set has doubled
/// since the last look.
#[derive(Default)]
struct SharedKeys {
    keys: HashSet<Arc<str>>,
    pruned_at: usize,
}

impl SharedKeys {
    const FIRST_PRUNE: usize = 1024;

    fn get(&mut self, key: &str) -> Arc<str> {
        if let Some(shared) = self.keys.get(key) {
            return shared.clone();
        }
        if self.keys.len() >= (self.pruned_at * 2).max(Self::FIRST_PRUNE) {
            self.keys.retain(|k| Arc::strong_count(k) > 1);
            self.pruned_at = self.keys.len();
        }
        let shared: Arc<str> = Arc::from(key);
        self.keys.insert(shared.clone());
        shared
    }
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
        // Not fatal: the schedule check writes it again, and failing here
        // (a space alarm refuses the write) would make every retry of this
        // term publish the same lifecycle events again.
        if let Err(e) = self.write_announced().await {
            tracing::warn!(error = %e, "recording published lifecycle events failed");
        }
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
            let next_timer = self.timers.first().map(|(at, _)| *at);
            tokio::select! {
                _ = sleep_until(next_timer) => self.offer_due_timers().await,
                batches = watcher.next_batches(None) => {
                    for shared in batches? {
                        for event in &shared.batch.events {
                            if event.kind != EventType::Put {
                                let id = event.kv.key.trim_start_matches(INSTANCES_PREFIX);
                                self.forget(id);
                                continue;
                            }
                            if let Ok(instance) = instances::decode(&event.kv.key, &event.kv.value) {
                                self.changed(instance, event.kv.mod_revision).await?;
                            }
                            self.announced = event.kv.mod_revision;
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
                    self.sweep().await;
                    if let Err(e) = self.write_announced().await {
                        tracing::warn!(error = %e, "recording published lifecycle events failed");
                    }
                }
            }
        }
    }

    /// Every instance from the local replica; wakes those with work to do
    /// and keeps the timers of all. The lifecycle events of instances
    /// changed since the last leader recorded its publishing are published
    /// (again).
    async fn load(&mut self) -> anyhow::Result<u64> {
        let (revision, (all, announced)) = self
            .shoal
            .read(|store| {
                let (revision, all) = instances::scan(store)?;
                let (_, announced) = store.kv_get(ANNOUNCED_KEY)?;
                Ok((revision, (all, announced)))
            })
            .await?;
        // Unreadable or missing (a new cluster): everything is published again.
        let announced: u64 = announced
            .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
            .unwrap_or(0);
        self.announced = announced;
        self.announced_written = announced;
        let mut unannounced = Vec::new();
        for (instance, revision) in all {
            self.track(&instance, revision);
            self.announced = self.announced.max(revision);
            if revision > announced {
                unannounced.extend(effects::lifecycle_messages(&instance, 0));
                if unannounced.len() >= ANNOUNCE_BATCH {
                    self.publish_lifecycle(std::mem::take(&mut unannounced))
                        .await?;
                }
            }
            if needs_evaluation(None, &instance) {
                self.wake(instance, revision).await;
            }
        }
        self.publish_lifecycle(unannounced).await?;
        Ok(revision)
    }

    /// Publishes lifecycle events; an error stops this term's driving (the
    /// next one, here or elsewhere, publishes them again).
    async fn publish_lifecycle(&self, messages: Vec<Message>) -> anyhow::Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        if let Some(delay) = self.shoal.faults.lifecycle_delay {
            tokio::time::sleep(delay).await;
        }
        metrics::counter!("shoal_workflow_lifecycle_events_total").increment(messages.len() as u64);
        self.shoal
            .messaging
            .publish(messages)
            .await
            .context("publishing workflow lifecycle events")?;
        Ok(())
    }

    /// Records how far lifecycle events are published, if it moved.
    async fn write_announced(&mut self) -> anyhow::Result<()> {
        if self.announced <= self.announced_written {
            return Ok(());
        }
        let txn = Txn {
            compare: vec![],
            success: vec![TxnOp::Put {
                key: ANNOUNCED_KEY.to_string(),
                value: self.announced.to_string().into_bytes(),
                lease: 0,
            }],
            failure: vec![],
        };
        self.shoal.txn(txn).await?;
        self.announced_written = self.announced;
        Ok(())
    }

    /// Offers each due timer to its instance, and again later until the
    /// instance records that it fired.
    async fn offer_due_timers(&mut self) {
        let now = Instant::now();
        while let Some((at, id)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(tracked) = self.tracked.get(&*id) else {
                continue;
            };
            let definition = tracked.definition.clone();
            let keys: Vec<Arc<str>> = tracked
                .timers
                .iter()
                .filter(|(when, _)| *when == at)
                .map(|(_, key)| key.clone())
                .collect();
            if keys.is_empty() {
                continue;
            }
            let mut seen = self.due_soon.remove(&*id);
            for key in &keys {
                let message = InstanceMsg::TimerDue(key.to_string(), seen.take());
                self.deliver(&definition, &id, message).await;
            }
            // Delivering changes no tracking: the same timers are due at
            // `at`, and are offered again later unless they fire meanwhile.
            let again = now + TIMER_REOFFER;
            if let Some(tracked) = self.tracked.get_mut(&*id) {
                for timer in tracked.timers.iter_mut().filter(|(when, _)| *when == at) {
                    timer.0 = again;
                }
                self.timers.insert((again, id));
            }
        }
    }

    /// Remembers an instance's state; its status and history end before,
    /// if it was known.
    fn track(&mut self, instance: &Instance, revision: u64) -> Option<(Status, u64)> {
        let definition = self.definitions.get(&instance.definition_key());
        let finished_ms = instance.status.is_final().then_some(instance.updated_ms);
        if let Some(at) = finished_ms {
            self.expiring.insert((at, instance.id.clone()), revision);
        }
        let (id, before) = match self.tracked.remove_entry(instance.id.as_str()) {
            Some((id, before)) => {
                self.count(&before.definition, before.status, false);
                (id, Some(before))
            }
            None => (Arc::from(instance.id.as_str()), None),
        };
        // The instance's timers now: one known already keeps its time.
        let now = Instant::now();
        let known = before.as_ref().map(|t| &t.timers[..]).unwrap_or(&[]);
        // A suspended instance's timers wait for its resume.
        let driven = matches!(
            instance.status,
            Status::Pending | Status::Running | Status::Waiting
        );
        let timers: Box<[(Instant, Arc<str>)]> = pending_timers(instance, now_ms())
            .into_iter()
            .filter(|_| driven)
            .map(
                |(key, wait)| match known.iter().find(|(_, k)| **k == *key) {
                    Some((at, key)) => (*at, key.clone()),
                    None => (now + wait, self.timer_keys.get(&key)),
                },
            )
            .collect();
        for (at, _) in known {
            self.timers.remove(&(*at, id.clone()));
        }
        for (at, _) in &timers[..] {
            self.timers.insert((*at, id.clone()));
        }
        self.count(&definition, instance.status, true);
        self.tracked.insert(
            id,
            Tracked {
                definition,
                status: instance.status,
                history_end: instance.history_end(),
                finished_ms,
                timers,
            },
        );
        let before = before?;
        if let Some(at) = before.finished_ms.filter(|at| Some(*at) != finished_ms) {
            self.expiring.remove(&(at, instance.id.clone()));
        }
        Some((before.status, before.history_end))
    }

    fn forget(&mut self, id: &str) {
        self.due_soon.remove(id);
        let Some((id, tracked)) = self.tracked.remove_entry(id) else {
            return;
        };
        self.count(&tracked.definition, tracked.status, false);
        if let Some(at) = tracked.finished_ms {
            self.expiring.remove(&(at, id.to_string()));
        }
        for (at, _) in &tracked.timers[..] {
            self.timers.remove(&(*at, id.clone()));
        }
    }

    /// One tracked instance more (`added`) or fewer in a definition and
    /// status.
    fn count(&mut self, definition: &Arc<str>, status: Status, added: bool) {
        let count = self.counts.entry((definition.clone(), status)).or_default();
        if added {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
    }

    /// Deletes finished instances whose retention has passed, at most
    /// [`DELETES_PER_SWEEP`] at a time, one sweep at a time, each only if
    /// it has not changed since it was seen (an operator may retry it).
    async fn sweep(&mut self) {
        if let Some(sweep) = self.sweep.take() {
            if !sweep.is_finished() {
                self.sweep = Some(sweep);
                return;
            }
            for ((at, id), revision) in sweep.await.unwrap_or_default() {
                if self
                    .tracked
                    .get(id.as_str())
                    .is_some_and(|t| t.finished_ms == Some(at))
                {
                    self.expiring.insert((at, id), revision);
                }
            }
        }
        let retention = self.shoal.settings.workflow_retention.as_millis() as u64;
        let cutoff = now_ms().saturating_sub(retention);
        let mut due = Vec::new();
        while due.len() < DELETES_PER_SWEEP {
            match self.expiring.first_key_value() {
                Some(((at, _), _)) if *at <= cutoff => {}
                _ => break,
            }
            if let Some(entry) = self.expiring.pop_first() {
                due.push(entry);
            }
        }
        if due.is_empty() {
            return;
        }
        let shoal = self.shoal.clone();
        self.sweep = Some(tokio::spawn(async move {
            let mut failed = Vec::new();
            for ((at, id), revision) in due {
                match instances::delete_unchanged(&shoal, &id, revision).await {
                    Ok(true) => {
                        metrics::counter!("shoal_workflow_instances_deleted_total").increment(1);
                    }
                    // Changed meanwhile: the watch brings its new state.
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(instance = %id, error = %e, "deleting a finished workflow instance failed");
                        failed.push(((at, id), revision));
                    }
                }
            }
            failed
        }));
    }

    async fn changed(&mut self, instance: Instance, revision: u64) -> anyhow::Result<()> {
        let before = self.track(&instance, revision);
        let from = before.map_or(0, |(_, history_end)| history_end);
        self.publish_lifecycle(effects::lifecycle_messages(&instance, from))
            .await?;
        self.due_soon.remove(instance.id.as_str());
        if needs_evaluation(before.map(|(status, _)| status), &instance) {
            self.wake(instance, revision).await;
        } else if let Some(id) = self.with_timer_due_soon(&instance.id) {
            self.due_soon
                .insert(id, Box::new(Seen { instance, revision }));
        }
        Ok(())
    }

    /// The tracked id of the instance, if one of its timers is due within
    /// [`SOON_DUE`].
    fn with_timer_due_soon(&self, id: &str) -> Option<Arc<str>> {
        let soon = Instant::now() + SOON_DUE;
        let (id, tracked) = self.tracked.get_key_value(id)?;
        tracked
            .timers
            .iter()
            .any(|(at, _)| *at <= soon)
            .then(|| id.clone())
    }

    /// Has the instance's actor evaluate it, handing it the state just seen
    /// (its actor need not read it again).
    async fn wake(&mut self, instance: Instance, revision: u64) {
        let definition = instance.definition_key();
        let id = instance.id.clone();
        let seen = Seen { instance, revision };
        self.deliver(&definition, &id, InstanceMsg::Wake(Some(Box::new(seen))))
            .await;
    }

    async fn deliver(&mut self, definition: &str, id: &str, message: InstanceMsg) {
        if let Some(supervisor) = self.supervisor(definition).await {
            let _ = supervisor.send_message(SupervisorMsg::Deliver(id.to_string(), message));
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
            document: shoal_workflows::sandbox::Document::new(&definition.document),
            definition: Arc::new(definition),
            calls: Arc::new(Semaphore::new(CALLS_PER_DEFINITION)),
            node_calls: self.node_calls.clone(),
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

    /// Sets the gauge of each definition and status; those that went to
    /// zero are set once more and then dropped.
    fn publish_gauges(&mut self) {
        for ((definition, status), count) in &self.counts {
            metrics::gauge!(
                "shoal_workflow_instances",
                "workflow" => definition.to_string(),
                "status" => status.as_str(),
            )
            .set(*count as f64);
        }
        self.counts.retain(|_, count| *count > 0);
    }

    fn stop(&mut self) {
        if let Some(sweep) = self.sweep.take() {
            sweep.abort();
        }
        // The next leader counts instances and keeps timers; this node no
        // longer does.
        for count in self.counts.values_mut() {
            *count = 0;
        }
        self.tracked.clear();
        self.timers.clear();
        self.due_soon.clear();
        self.publish_gauges();
        for (_, supervisor) in self.supervisors.drain() {
            supervisor.stop_children(None);
            supervisor.stop(None);
        }
    }
}

/// What the runner remembers of an instance.
struct Tracked {
    definition: Arc<str>,
    status: Status,
    /// Its history entries seen (their lifecycle events are published).
    history_end: u64,
    /// When it finished (`updated_ms` of its final state).
    finished_ms: Option<u64>,
    /// Its armed timers that have not fired: when to offer each, and key.
    timers: Box<[(Instant, Arc<str>)]>,
}

/// A finished instance: (when it finished, id) and the revision seen.
type Expiring = ((u64, String), u64);

/// Whether an instance must be evaluated (by its actor, started if it
/// has none) now that it is in this state, having been in `before` (none:
/// not seen yet). An actor's own write that leaves the instance running or
/// waiting needs nothing more; a new instance, an outcome recorded since
/// the last evaluation (an event, a call's answer, a timer), an operator's
/// resume or retry, and a new leader finding an instance running do.
fn needs_evaluation(before: Option<Status>, instance: &Instance) -> bool {
    let unevaluated = instance.task_events_through != Some(instance.settled);
    match instance.status {
        Status::Pending => true,
        Status::Running => {
            unevaluated || matches!(before, None | Some(Status::Suspended | Status::Faulted))
        }
        Status::Waiting => unevaluated,
        Status::Suspended | Status::Cancelled | Status::Faulted | Status::Completed => false,
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_keys_are_one_allocation_and_unheld_ones_are_dropped() {
        let mut keys = SharedKeys::default();
        let a = keys.get("/do/0/sleep");
        let b = keys.get("/do/0/sleep");
        assert!(Arc::ptr_eq(&a, &b));
        // Filled past the first look with keys nobody holds: the look
        // drops those and keeps the held one.
        for n in 0..SharedKeys::FIRST_PRUNE {
            keys.get(&format!("/do/{n}/x"));
        }
        assert!(keys.keys.len() <= SharedKeys::FIRST_PRUNE);
        assert!(keys.keys.contains("/do/0/sleep"));
        assert!(Arc::ptr_eq(&a, &keys.get("/do/0/sleep")));
    }
}
