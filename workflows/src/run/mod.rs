//! Running instances: the replicated state ([`Instance`]), the interpreter
//! ([`evaluate`]) and [`settle`], which turns an evaluation into the
//! instance's next state. The driver (on the Raft leader) calls these and
//! writes what they produce; nothing here does I/O or reads a clock.

mod engine;
mod state;
#[cfg(test)]
mod tests;

pub use engine::{
    evaluate, event_matches, Env, Evaluated, Evaluation, TaskEvent, TaskStep, MAX_STEPS,
};
pub use state::{
    errors, Applied, Correlation, EventFilter, HistoryEntry, HttpRequest, Instance, ListenMode,
    Need, Outcome, Record, Status, WorkflowError, MAX_APPLIED_EVENTS, MAX_HISTORY, MAX_OUTCOMES,
};

/// Applies an evaluation to a pending, running or waiting instance: its
/// status, output or error, and what it waits for. Emits still to publish
/// keep it running, even when it has otherwise finished, so that every
/// emit goes out before the instance is final.
pub fn settle(instance: &mut Instance, evaluation: &Evaluation, now_ms: u64) {
    let before = instance.status;
    if instance.outcomes.len() > MAX_OUTCOMES {
        let error = WorkflowError::new(
            errors::RUNTIME,
            500,
            "too many outcomes",
            format!("the instance recorded more than {MAX_OUTCOMES} outcomes"),
        );
        instance.fault(error, now_ms);
        return;
    }
    instance.waiting = evaluation.needs.clone();
    instance.task_events_through = Some(instance.settled);
    instance.current_task = evaluation.needs.first().map(|n| n.task().to_string());
    let emitting = evaluation
        .needs
        .iter()
        .any(|need| matches!(need, Need::Emit { .. }));
    let (status, what) = match (&evaluation.result, emitting) {
        (_, true) => (Status::Running, None),
        (Evaluated::Completed(output), false) => {
            instance.output = Some(output.clone());
            (Status::Completed, Some("completed"))
        }
        (Evaluated::Faulted(error), false) => {
            instance.current_task = error.instance.clone();
            instance.error = Some(error.clone());
            (Status::Faulted, Some("faulted"))
        }
        (Evaluated::Blocked, false) => {
            if evaluation.needs.iter().all(Need::is_passive) {
                (Status::Waiting, None)
            } else {
                (Status::Running, None)
            }
        }
    };
    instance.status = status;
    if let Some(what) = what {
        instance.note(now_ms, what, instance.current_task.clone().as_deref());
    } else if status == Status::Waiting && before != Status::Waiting {
        instance.note(now_ms, "waiting", instance.current_task.clone().as_deref());
    }
}

/// The task lifecycle steps of `evaluation` (of `instance`) not published
/// yet, each with its occurrence number: a task run again by a `then`
/// jump meets the same step again, and the number tells the two apart.
pub fn unpublished_task_events<'a>(
    instance: &Instance,
    evaluation: &'a Evaluation,
) -> Vec<(&'a TaskEvent, usize)> {
    let mut seen: std::collections::HashMap<(&str, &str), usize> = Default::default();
    evaluation
        .tasks
        .iter()
        .map(|event| {
            let count = seen
                .entry((event.task.as_str(), event.what.as_str()))
                .or_default();
            *count += 1;
            (event, *count)
        })
        .filter(|(event, _)| {
            instance
                .task_events_through
                .is_none_or(|through| event.seq > through)
        })
        .collect()
}
