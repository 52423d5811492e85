//! The actors that drive instances on the leader: one per instance with
//! work to do, under one supervisor per definition version. An instance
//! actor holds no state of its own that matters: it reads the replicated
//! instance, evaluates it, writes what it found, and performs the effects
//! (calls, emits). If it fails, its supervisor starts it again from the
//! replicated state; other instances are not touched. An instance that
//! only waits (for an event or a timer) or is suspended has no actor: its
//! actor asks to be stopped and the runner starts a new one when the
//! instance changes or one of its timers is due.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::Value;
use shoal_storage::now_ms;
use shoal_workflows::run::{
    settle, unpublished_task_events, Evaluated, Instance, Need, Outcome, Record, Status, TaskEvent,
    TaskStep, WorkflowError,
};
use shoal_workflows::sandbox::Document;
use shoal_workflows::Definition;
use tokio::sync::Semaphore;

use super::effects;
use crate::services::evaluator::EvaluatorError;
use crate::services::instances::{self, InstanceError};
use crate::services::shoal::Shoal;

/// Most times an actor re-reads and re-writes in one go.
const MAX_ROUNDS: usize = 32;

pub enum InstanceMsg {
    /// The instance changed (or may have): evaluate it again; from the
    /// state the runner saw, when it has it.
    Wake(Option<Box<Seen>>),
    /// A timer is due; with the state the runner saw, when it kept it.
    TimerDue(String, Option<Box<Seen>>),
    CallDone(String, Result<Value, WorkflowError>),
    /// Sent by the actor to itself: evaluate again.
    Again,
}

/// An instance as its runner saw it in a change: the actor starts from it
/// instead of reading the instance again, unless it has read or written a
/// later revision itself. Should a write have come after it, the actor's
/// compare-and-swap fails and it reads, as it does after any lost race.
pub struct Seen {
    pub instance: Instance,
    pub revision: u64,
}

/// What every actor of one definition version shares.
pub struct DefinitionShared {
    pub shoal: Arc<Shoal>,
    pub definition: Arc<Definition>,
    /// The definition's document as evaluators are sent it.
    pub document: Document,
    /// Outgoing calls in flight for this definition.
    pub calls: Arc<Semaphore>,
    /// Outgoing calls in flight on this node.
    pub node_calls: Arc<Semaphore>,
}

pub struct InstanceActor;

pub struct InstanceState {
    id: String,
    shared: Arc<DefinitionShared>,
    supervisor: ActorRef<SupervisorMsg>,
    /// Messages handled that the supervisor delivered: it stops an idle
    /// actor only when it has delivered no more than this.
    handled: u64,
    /// Calls on their way.
    calling: HashSet<String>,
    /// The newest revision of the instance this actor read or wrote.
    revision: u64,
}

impl Actor for InstanceActor {
    type Msg = InstanceMsg;
    type State = InstanceState;
    type Arguments = (String, Arc<DefinitionShared>, ActorRef<SupervisorMsg>);

    /// The supervisor hands every actor it starts a message at once, so it
    /// needs no wake-up of its own.
    async fn pre_start(
        &self,
        _: ActorRef<InstanceMsg>,
        (id, shared, supervisor): Self::Arguments,
    ) -> Result<InstanceState, ActorProcessingErr> {
        Ok(InstanceState {
            id,
            shared,
            supervisor,
            handled: 0,
            calling: HashSet::new(),
            revision: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<InstanceMsg>,
        message: InstanceMsg,
        state: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        if matches!(message, InstanceMsg::Wake(_) | InstanceMsg::TimerDue(..)) {
            state.handled += 1;
        }
        let (arrival, seen) = match message {
            InstanceMsg::Wake(seen) => (Arrival::Nothing, seen),
            InstanceMsg::Again => (Arrival::Nothing, None),
            InstanceMsg::TimerDue(key, seen) => (Arrival::TimerDue(key), seen),
            InstanceMsg::CallDone(key, result) => {
                state.calling.remove(&key);
                (Arrival::CallDone(key, result), None)
            }
        };
        if state.advance(&myself, &arrival, seen).await? {
            state.rest(&myself)?;
        }
        Ok(())
    }
}

/// What a message brings to record before the instance is evaluated: the
/// record and the evaluation it allows go in one write.
enum Arrival {
    Nothing,
    TimerDue(String),
    CallDone(String, Result<Value, WorkflowError>),
}

impl Arrival {
    /// Records it in the instance; false when there was nothing to record
    /// (the timer fired already, the call was recorded before).
    fn record(&self, instance: &mut Instance, now: u64) -> bool {
        match self {
            Arrival::Nothing => false,
            Arrival::TimerDue(key) => instance.fire_timer(key, now),
            Arrival::CallDone(key, result) => instance.record_call(key, result.clone(), now),
        }
    }

    /// How late a due timer fires at `now`, in seconds.
    fn lateness(&self, instance: &Instance, now: u64) -> Option<f64> {
        let Arrival::TimerDue(key) = self else {
            return None;
        };
        match instance.outcomes.get(key) {
            Some(Record {
                outcome: Outcome::Timer { due_ms, .. },
                ..
            }) => Some(now.saturating_sub(*due_ms) as f64 / 1000.0),
            _ => None,
        }
    }
}

impl InstanceState {
    /// Reads the instance, lets `change` modify it, and writes it back if
    /// it says it changed; retried when someone else wrote in between.
    async fn change(
        &mut self,
        mut change: impl FnMut(&mut Instance) -> bool,
    ) -> Result<bool, InstanceError> {
        for _ in 0..MAX_ROUNDS {
            let Some((mut instance, revision)) = self.read().await? else {
                return Ok(false);
            };
            if instance.status.is_final() || instance.status == Status::Suspended {
                return Ok(false);
            }
            if !change(&mut instance) {
                return Ok(false);
            }
            if let Some(written) = instances::write(&self.shared.shoal, &instance, revision).await?
            {
                self.revision = written;
                metrics::counter!("shoal_workflow_transitions_total").increment(1);
                return Ok(true);
            }
            metrics::counter!("shoal_workflow_write_conflicts_total").increment(1);
        }
        Ok(false)
    }

    async fn read(&self) -> Result<Option<(Instance, u64)>, InstanceError> {
        let id = self.id.clone();
        let store = self.shared.shoal.store.clone();
        tokio::task::spawn_blocking(move || instances::read_local(&store, &id))
            .await
            .map_err(|e| InstanceError::Unreadable {
                key: instances::key_of(&self.id),
                message: e.to_string(),
            })?
    }

    /// Asks the supervisor to stop this actor, whose instance was left
    /// waiting, suspended or finished, unless a call is on its way. The
    /// instance is not read again: a change since then was delivered to
    /// this actor after what it handled, and the supervisor keeps an actor
    /// that was delivered more than it handled.
    fn rest(&self, myself: &ActorRef<InstanceMsg>) -> Result<(), ActorProcessingErr> {
        if !self.calling.is_empty() {
            return Ok(());
        }
        self.supervisor.send_message(SupervisorMsg::Idle {
            id: self.id.clone(),
            actor: myself.get_id(),
            handled: self.handled,
        })?;
        Ok(())
    }

    /// Evaluates the instance, writes what changed, and starts its effects.
    /// True when it is left waiting, suspended or finished.
    async fn advance(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        arrival: &Arrival,
        seen: Option<Box<Seen>>,
    ) -> Result<bool, ActorProcessingErr> {
        // What arrived, until it is written.
        let mut arrival = Some(arrival);
        // Older than what this actor knows: read instead.
        let mut seen = seen.filter(|seen| seen.revision >= self.revision);
        for _ in 0..MAX_ROUNDS {
            let current = match seen.take() {
                Some(seen) => {
                    if let Some(delay) = self.shared.shoal.faults.wake_delay {
                        tokio::time::sleep(delay).await;
                    }
                    Some((seen.instance, seen.revision))
                }
                None => self.read().await?,
            };
            let Some((instance, revision)) = current else {
                return Ok(true);
            };
            self.revision = self.revision.max(revision);
            if instance.status.is_final() || instance.status == Status::Suspended {
                return Ok(true);
            }
            let now = now_ms();
            // The instance with what arrived recorded: evaluated as it will
            // be written, so the record and the step it allows are one write.
            let mut base = instance.clone();
            let mut lateness = None;
            if let Some(arrived) = arrival {
                lateness = arrived.lateness(&instance, now);
                if !arrived.record(&mut base, now) {
                    if matches!(arrived, Arrival::TimerDue(_)) {
                        // Fired already (a re-offer that crossed the write).
                        return Ok(instance.status == Status::Waiting);
                    }
                    arrival = None;
                }
            }
            let mut next = base.clone();
            match self.evaluate(&base, now).await? {
                Ok(evaluation) => {
                    self.publish_task_events(&base, &evaluation).await?;
                    settle(&mut next, &evaluation, now);
                }
                Err(error) => next.fault(error, now),
            }
            for need in next.waiting.clone() {
                if let Need::Timer {
                    key,
                    task,
                    duration_ms,
                    jitter_ms,
                } = need
                {
                    if !next.outcomes.contains_key(&key) {
                        let jitter = jitter_ms.map_or(0, |(from, to)| {
                            from + rand::random::<u64>() % (to.saturating_sub(from) + 1)
                        });
                        next.arm_timer(&key, &task, now + duration_ms + jitter, now);
                    }
                }
            }
            let current = if next != instance {
                let next = match instances::write(&self.shared.shoal, &next, revision).await {
                    Ok(Some(written)) => {
                        arrival = None;
                        self.revision = written;
                        next
                    }
                    Ok(None) => {
                        metrics::counter!("shoal_workflow_write_conflicts_total").increment(1);
                        continue;
                    }
                    Err(InstanceError::TooLarge { size, limit }) => {
                        // Stop where it was, faulted, rather than fail forever.
                        let mut faulted = base.clone();
                        let error = WorkflowError::new(
                            shoal_workflows::run::errors::RUNTIME,
                            500,
                            "instance too large",
                            format!(
                                "the instance's next state is {size} bytes; the limit is {limit}"
                            ),
                        );
                        faulted.fault(error, now);
                        match instances::write(&self.shared.shoal, &faulted, revision).await? {
                            Some(written) => {
                                arrival = None;
                                self.revision = written;
                                faulted
                            }
                            None => {
                                metrics::counter!("shoal_workflow_write_conflicts_total")
                                    .increment(1);
                                continue;
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                if let Some(seconds) = lateness {
                    metrics::histogram!("shoal_workflow_timer_lateness_seconds").record(seconds);
                }
                metrics::counter!("shoal_workflow_transitions_total").increment(1);
                next
            } else {
                instance
            };
            if current.status.is_final() {
                return Ok(true);
            }
            if self.effects(myself, &current).await? {
                continue;
            }
            return Ok(current.status == Status::Waiting);
        }
        // Still changing after many rounds: come back to it.
        myself.send_message(InstanceMsg::Again)?;
        Ok(false)
    }

    /// The evaluation, or the fault an evaluation that went wrong leaves
    /// the instance in; an error when no evaluator could be run (the actor
    /// is restarted and tries again).
    async fn evaluate(
        &self,
        instance: &Instance,
        now: u64,
    ) -> Result<Result<shoal_workflows::run::Evaluation, WorkflowError>, ActorProcessingErr> {
        let definition = &self.shared.definition;
        let secrets = effects::secrets(&self.shared.shoal, definition).await;
        let evaluated = self
            .shared
            .shoal
            .evaluator
            .evaluate(&self.shared.document, instance, now, &secrets)
            .await;
        let title = match &evaluated {
            Ok(evaluation) => {
                if let Evaluated::Faulted(error) = &evaluation.result {
                    tracing::info!(instance = %self.id, error = ?error, "workflow instance faulted");
                }
                None
            }
            Err(EvaluatorError::TooLong) => Some("evaluation too long"),
            Err(EvaluatorError::Died(_) | EvaluatorError::Panicked(_)) => Some("evaluation failed"),
            Err(EvaluatorError::Unavailable(_)) => None,
        };
        match (evaluated, title) {
            (Ok(evaluation), _) => Ok(Ok(evaluation)),
            (Err(e), Some(title)) => {
                tracing::info!(instance = %self.id, error = %e, "workflow instance faulted");
                Ok(Err(WorkflowError::new(
                    shoal_workflows::run::errors::RUNTIME,
                    500,
                    title,
                    e.to_string(),
                )))
            }
            (Err(e), None) => Err(e.into()),
        }
    }

    /// Publishes the lifecycle events this evaluation found that are not
    /// published yet: the workflow's `started` on the first evaluation,
    /// and every task's `started`, `completed` and `faulted`. They go out
    /// before the instance records them as published, so a failed write or
    /// a new leader publishes them again, with the same ids.
    async fn publish_task_events(
        &self,
        instance: &Instance,
        evaluation: &shoal_workflows::run::Evaluation,
    ) -> Result<(), ActorProcessingErr> {
        // The workflow's `started` goes out with its first tasks' events,
        // under the same rule, so no leader change can lose it.
        let started = instance
            .task_events_through
            .is_none()
            .then(|| effects::started_message(instance));
        let tasks = unpublished_task_events(instance, evaluation);
        Self::time_tasks(instance, &tasks);
        let messages: Vec<_> = started
            .into_iter()
            .chain(
                tasks
                    .into_iter()
                    .map(|(event, occurrence)| effects::task_message(instance, event, occurrence)),
            )
            .collect();
        if !messages.is_empty() {
            self.shared.shoal.messaging.publish(messages).await?;
        }
        Ok(())
    }

    /// Times the task runs that ended, from the times their outcomes were
    /// settled (replicated, so any leader times them alike).
    fn time_tasks(instance: &Instance, tasks: &[(&TaskEvent, usize)]) {
        for (event, _) in tasks
            .iter()
            .filter(|(event, _)| event.what != TaskStep::Started)
        {
            let (Some(started), Some(ended)) = (
                instance.settled_at(event.since),
                instance.settled_at(event.seq),
            ) else {
                continue;
            };
            metrics::histogram!(
                "shoal_workflow_task_duration_seconds",
                "workflow" => instance.definition_key(),
                "task" => event.path.clone(),
            )
            .record(ended.saturating_sub(started) as f64 / 1000.0);
        }
    }

    /// Starts what the instance waits for. True when something was
    /// recorded (an emit published) and the instance must be evaluated
    /// again.
    async fn effects(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        instance: &Instance,
    ) -> Result<bool, ActorProcessingErr> {
        let mut recorded = false;
        for need in &instance.waiting {
            match need {
                // The runner wakes the instance when a timer is due or an
                // event was applied.
                Need::Timer { .. } | Need::Listen { .. } => {}
                Need::Emit { key, event, .. } => {
                    let message = effects::emitted_message(instance, key, event);
                    self.shared.shoal.messaging.publish(vec![message]).await?;
                    let now = now_ms();
                    recorded |= self
                        .change(|instance| instance.record_emitted(key, now))
                        .await?;
                }
                Need::Call { key, request, .. } => {
                    if !self.calling.insert(key.clone()) {
                        continue;
                    }
                    let shared = self.shared.clone();
                    let actor = myself.clone();
                    let key = key.clone();
                    let request = request.clone();
                    let idempotency_key = format!("{}{}/{}", instance.id, key, instance.retries);
                    tokio::spawn(async move {
                        let result = effects::call(&shared, &request, &idempotency_key).await;
                        let _ = actor.send_message(InstanceMsg::CallDone(key, result));
                    });
                }
            }
        }
        Ok(recorded)
    }
}

/// The timers an instance has armed and that have not fired: (key, how
/// long to wait for it from now).
pub fn pending_timers(instance: &Instance, now_ms: u64) -> Vec<(String, Duration)> {
    instance
        .waiting
        .iter()
        .filter_map(|need| {
            let Need::Timer {
                key,
                duration_ms,
                jitter_ms,
                ..
            } = need
            else {
                return None;
            };
            let Some(Record {
                outcome:
                    Outcome::Timer {
                        due_ms,
                        fired: false,
                    },
                ..
            }) = instance.outcomes.get(key)
            else {
                return None;
            };
            let longest = duration_ms + jitter_ms.map_or(0, |(_, to)| to);
            Some((key.clone(), timer_wait(*due_ms, now_ms, longest)))
        })
        .collect()
}

/// How long to wait for a timer due at `due_ms` (Unix ms, by the clock of
/// the leader that armed it) that lasts at most `longest_ms`. The wait is
/// never longer than the timer itself: a timer armed by a leader whose
/// clock ran ahead would otherwise keep a later leader waiting for as long
/// as that clock was off (the jepsen clock nemesis found an instance
/// stuck for minutes). A leader whose clock runs behind fires early, by at
/// most the timer's length.
fn timer_wait(due_ms: u64, now_ms: u64, longest_ms: u64) -> Duration {
    Duration::from_millis(due_ms.saturating_sub(now_ms).min(longest_ms))
}

/// Supervises the instance actors of one definition version: starts them
/// on request and again when one fails.
pub struct DefinitionSupervisor;

pub enum SupervisorMsg {
    /// Make sure the instance has an actor and pass it this message.
    Deliver(String, InstanceMsg),
    /// An actor whose instance only waits asks to be stopped; it has
    /// handled `handled` delivered messages.
    Idle {
        id: String,
        actor: ractor::ActorId,
        handled: u64,
    },
}

pub struct SupervisorState {
    shared: Arc<DefinitionShared>,
    /// Each instance's actor and how many messages were delivered to it.
    actors: HashMap<String, (ActorRef<InstanceMsg>, u64)>,
    /// The instance of each actor, to find it when it ends.
    instance_of: HashMap<ractor::ActorId, String>,
}

/// Whichever of these takes an actor out of the maps counts it out of
/// `shoal_workflow_actors`, so each is counted once.
impl SupervisorState {
    fn insert(&mut self, id: &str, actor: ActorRef<InstanceMsg>) {
        self.remove(id);
        self.instance_of.insert(actor.get_id(), id.to_string());
        self.actors.insert(id.to_string(), (actor, 0));
        metrics::gauge!("shoal_workflow_actors").increment(1.0);
    }

    fn remove(&mut self, id: &str) -> Option<ActorRef<InstanceMsg>> {
        let (actor, _) = self.actors.remove(id)?;
        self.instance_of.remove(&actor.get_id());
        metrics::gauge!("shoal_workflow_actors").decrement(1.0);
        Some(actor)
    }

    /// Forgets the actor that ended; the instance it drove.
    fn ended(&mut self, cell: &ractor::ActorCell) -> Option<String> {
        let id = self.instance_of.remove(&cell.get_id())?;
        self.actors.remove(&id);
        metrics::gauge!("shoal_workflow_actors").decrement(1.0);
        Some(id)
    }
}

impl DefinitionSupervisor {
    async fn spawn(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        id: &str,
    ) -> Result<ActorRef<InstanceMsg>, ActorProcessingErr> {
        let (actor, _) = Actor::spawn_linked(
            None,
            InstanceActor,
            (id.to_string(), state.shared.clone(), myself.clone()),
            myself.get_cell(),
        )
        .await?;
        state.insert(id, actor.clone());
        Ok(actor)
    }

    /// Hands `message` to the instance's actor, started if it has none.
    async fn deliver(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        id: String,
        message: InstanceMsg,
    ) -> Result<(), ActorProcessingErr> {
        let actor = match state.actors.get(&id) {
            Some((actor, _)) => actor.clone(),
            None => Self::spawn(myself, state, &id).await?,
        };
        let message = match actor.send_message(message) {
            Ok(()) => None,
            // It stopped meanwhile (its instance finished): a new one
            // reads the state again.
            Err(ractor::MessagingErr::SendErr(message)) => Some(message),
            Err(_) => None,
        };
        if let Some(message) = message {
            state.remove(&id);
            let actor = Self::spawn(myself, state, &id).await?;
            let _ = actor.send_message(message);
        }
        if let Some((_, delivered)) = state.actors.get_mut(&id) {
            *delivered += 1;
        }
        Ok(())
    }
}

impl Actor for DefinitionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<DefinitionShared>;

    async fn pre_start(
        &self,
        _: ActorRef<SupervisorMsg>,
        shared: Arc<DefinitionShared>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            shared,
            actors: HashMap::new(),
            instance_of: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Deliver(id, message) => {
                Self::deliver(&myself, state, id, message).await?;
            }
            SupervisorMsg::Idle { id, actor, handled } => {
                // Stopped only if nothing was delivered since it looked:
                // a later message would otherwise be lost with it.
                let idle = state.actors.get(&id).is_some_and(|(current, delivered)| {
                    current.get_id() == actor && *delivered == handled
                });
                if idle {
                    if let Some(actor) = state.remove(&id) {
                        actor.stop(None);
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.ended(&cell);
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(id) = state.ended(&cell) {
                    metrics::counter!("shoal_workflow_actor_restarts_total").increment(1);
                    tracing::warn!(instance = %id, %error, "workflow instance actor failed; restarting it from the replicated state");
                    // A moment later, without holding up the other
                    // instances' messages meanwhile.
                    myself.send_after(Duration::from_millis(100), move || {
                        SupervisorMsg::Deliver(id, InstanceMsg::Wake(None))
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_never_waits_longer_than_it_lasts() {
        let now = 1_000_000;
        assert_eq!(timer_wait(now + 300, now, 300), Duration::from_millis(300));
        assert_eq!(timer_wait(now + 100, now, 300), Duration::from_millis(100));
        assert_eq!(timer_wait(now - 5, now, 300), Duration::ZERO, "overdue");
        // Armed by a leader ten minutes ahead.
        assert_eq!(
            timer_wait(now + 600_000 + 300, now, 300),
            Duration::from_millis(300)
        );
    }
}
