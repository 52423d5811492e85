//! The workflow workload: after healing (and the events of unfinished
//! instances sent again, except those the workflow event inbox
//! acknowledged: an unfinished one of these is an event the inbox lost),
//!
//! - lost: acknowledged starts with no instance;
//! - unexpected: instances nobody tried to start;
//! - unfinished: instances that did not complete;
//! - timers: instances whose timer fired other than once;
//! - events: instances that applied their event other than once (it was
//!   published at least twice with the same id);
//! - completions: instances completed other than once, or with an output
//!   other than their id.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::json;

use crate::history::Op;
use crate::workload::workflow::{acknowledged, attempted, inbox_events, FinalState};

#[derive(Clone, Debug, Serialize)]
pub struct WorkflowResult {
    pub valid: bool,
    pub attempted: usize,
    pub acknowledged: usize,
    /// Instances whose event the inbox acknowledged (never sent again).
    pub inbox_acknowledged: usize,
    pub instances: usize,
    pub waited_ms: u64,
    pub error: Option<String>,
    pub lost: Vec<String>,
    pub unexpected: Vec<String>,
    pub unfinished: Vec<String>,
    pub timers: Vec<String>,
    pub events: Vec<String>,
    pub completions: Vec<String>,
}

pub fn check(history: &[Op], last: Option<&FinalState>) -> WorkflowResult {
    let attempted = attempted(history);
    let acknowledged = acknowledged(history);
    let mut result = WorkflowResult {
        valid: false,
        attempted: attempted.len(),
        acknowledged: acknowledged.len(),
        inbox_acknowledged: inbox_events(history).1.len(),
        instances: 0,
        waited_ms: last.map_or(0, |l| l.waited_ms),
        error: None,
        lost: Vec::new(),
        unexpected: Vec::new(),
        unfinished: Vec::new(),
        timers: Vec::new(),
        events: Vec::new(),
        completions: Vec::new(),
    };
    let Some(instances) = last.and_then(|l| l.instances.as_ref()) else {
        result.error = Some(
            last.and_then(|l| l.error.clone())
                .unwrap_or_else(|| "no final read".into()),
        );
        return result;
    };
    result.instances = instances.len();
    let found: BTreeSet<String> = instances.iter().map(|i| i.id.clone()).collect();
    result.lost = acknowledged.difference(&found).cloned().collect();
    result.unexpected = found.difference(&attempted).cloned().collect();
    for instance in instances {
        let id = instance.id.clone();
        if instance.status != "completed" {
            let why = instance
                .error
                .as_ref()
                .map(|error| format!(" ({error})"))
                .unwrap_or_default();
            result
                .unfinished
                .push(format!("{id}: {}{why}", instance.status));
        }
        if instance.timer_fired != 1 {
            result
                .timers
                .push(format!("{id}: fired {} times", instance.timer_fired));
        }
        if instance.event_applied != 1 {
            result
                .events
                .push(format!("{id}: applied {} times", instance.event_applied));
        }
        if instance.status == "completed"
            && (instance.completed != 1 || instance.output != json!({ "id": id }))
        {
            result.completions.push(format!(
                "{id}: completed {} times, output {}",
                instance.completed, instance.output
            ));
        }
    }
    result.valid = result.lost.is_empty()
        && result.unexpected.is_empty()
        && result.unfinished.is_empty()
        && result.timers.is_empty()
        && result.events.is_empty()
        && result.completions.is_empty();
    result
}
