//! Scheduled starts (`schedule` of the newest version of each workflow).
//! A schedule's state (when it fires next) is a key in Raft; a start is one
//! transaction that moves that state on (compare-and-swap on its revision)
//! and writes the new instance, so each tick starts one instance however
//! often the leader changes. Missed ticks (no leader, a stopped cluster)
//! fire once, not once each.
//!
//! - `every`: a start every period, from when the schedule was first seen.
//! - `cron`: at each matching minute (UTC).
//! - `after`: the period after the previous scheduled instance finished
//!   (the first, the period after the schedule was first seen).
//! - `on`: an instance per event that meets the filter (`one` or `any`),
//!   its id made from the event's, so a redelivered event starts nothing.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_storage::kv::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use shoal_storage::now_ms;
use shoal_workflows::cron::Cron;
use shoal_workflows::definition::parse_duration;
use shoal_workflows::run::{EventFilter, Instance};
use shoal_workflows::{literal_type, version_order, Definition, EventTypes};

use super::intake::Offered;
use crate::services::instances::{self, InstanceError};
use crate::services::shoal::Shoal;
use crate::services::workflows::list_definitions;

pub const SCHEDULES_PREFIX: &str = "_shoal/workflows/schedules/";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ScheduleState {
    /// When it fires next (Unix ms); 0 while an `after` schedule waits for
    /// its instance to finish.
    next_ms: u64,
    /// The instance the last tick started.
    last_instance: Option<String>,
    fired: u64,
}

/// The schedules of the newest version of every workflow.
#[derive(Default)]
pub struct Schedules {
    /// The types of the events any version of any workflow takes (its
    /// `listen` tasks and `schedule.on`): messages of other types are
    /// of no use to workflows.
    pub event_types: EventTypes,
    timed: Vec<Arc<Definition>>,
    on_event: Vec<OnEvent>,
}

/// A workflow started by events: its filters, and the types they take.
struct OnEvent {
    definition: Arc<Definition>,
    filters: Vec<EventFilter>,
    types: EventTypes,
}

fn key_of(definition: &Definition) -> String {
    format!(
        "{SCHEDULES_PREFIX}{}/{}",
        definition.namespace, definition.name
    )
}

/// The filters of `schedule.on` (`one` or `any`).
fn event_filters(on: &Value) -> Vec<EventFilter> {
    let filters = match (on.get("one"), on.get("any")) {
        (Some(one), _) => vec![one.clone()],
        (_, Some(Value::Array(any))) => any.clone(),
        _ => Vec::new(),
    };
    filters
        .iter()
        .map(|filter| EventFilter {
            with: filter
                .get("with")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            correlate: Vec::new(),
        })
        .collect()
}

impl Schedules {
    /// Reads every definition (this replica's view when `stale`) and keeps
    /// the newest version's schedules.
    pub async fn load(
        shoal: &Shoal,
        stale: bool,
    ) -> Result<Schedules, crate::services::workflows::WorkflowError> {
        let mut newest: HashMap<(String, String), Definition> = HashMap::new();
        let mut event_types = EventTypes::default();
        for (definition, _) in list_definitions(shoal, "", stale).await? {
            event_types.extend(&definition.event_types());
            let id = (definition.namespace.clone(), definition.name.clone());
            let newer = newest.get(&id).is_none_or(|known| {
                version_order(&definition.version) > version_order(&known.version)
            });
            if newer {
                newest.insert(id, definition);
            }
        }
        let mut schedules = Schedules {
            event_types,
            ..Schedules::default()
        };
        for (_, definition) in newest {
            let Some(schedule) = definition.document.get("schedule").cloned() else {
                continue;
            };
            let definition = Arc::new(definition);
            match schedule.get("on") {
                Some(on) => {
                    let filters = event_filters(on);
                    let mut types = EventTypes::default();
                    for filter in &filters {
                        types.add(literal_type(&filter.with));
                    }
                    schedules.on_event.push(OnEvent {
                        definition,
                        filters,
                        types,
                    });
                }
                None => schedules.timed.push(definition),
            }
        }
        Ok(schedules)
    }

    /// Starts what is due.
    pub async fn tick(&self, shoal: &Shoal) {
        for definition in &self.timed {
            if let Err(e) = tick_one(shoal, definition).await {
                tracing::warn!(workflow = %definition.key(), error = %e, "a scheduled start failed; retrying");
            }
        }
    }

    /// Starts an instance of each workflow whose `schedule.on` the event
    /// meets.
    pub async fn offer(&self, shoal: &Shoal, event: &Value) -> Offered {
        let mut offered = Offered::default();
        let event_id = event.get("id").and_then(Value::as_str).unwrap_or_default();
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for OnEvent {
            definition,
            filters,
            types,
        } in &self.on_event
        {
            if !types.contains(kind) {
                continue;
            }
            match shoal.evaluator.matches(filters, event).await {
                Ok(found) if found.contains(&true) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(workflow = %definition.key(), error = %e, "an event could not be matched against a schedule");
                    offered.failed = true;
                    continue;
                }
            }
            let suffix: String = event_id
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let mut id = format!("{}-{suffix}", definition.name);
            id.truncate(instances::MAX_ID_CHARS);
            match instances::start(shoal, definition, id, json!([event])).await {
                Ok(_) => offered.taken = true,
                // Never going to start: trying again would not help.
                Err(e @ InstanceError::IdTaken(..)) => {
                    tracing::warn!(workflow = %definition.key(), error = %e, "an event-started instance cannot start");
                }
                Err(e) => {
                    tracing::warn!(workflow = %definition.key(), error = %e, "an event-started instance failed to start");
                    offered.failed = true;
                }
            }
        }
        offered
    }
}

async fn tick_one(shoal: &Shoal, definition: &Definition) -> anyhow::Result<()> {
    let schedule = &definition.document["schedule"];
    let key = key_of(definition);
    let read_key = key.clone();
    let (_, kv) = shoal.read(move |store| store.kv_get(&read_key)).await?;
    let (state, revision) = match kv {
        Some(kv) => (
            serde_json::from_slice::<ScheduleState>(&kv.value)?,
            kv.mod_revision,
        ),
        None => {
            // First seen: the first tick is one period (or cron time) away.
            let now = now_ms();
            let next_ms = next_time(schedule, now).unwrap_or(u64::MAX);
            let state = ScheduleState {
                next_ms,
                last_instance: None,
                fired: 0,
            };
            write(shoal, &key, &state, 0, None).await?;
            return Ok(());
        }
    };
    let now = now_ms();
    if let (0, Some(after)) = (state.next_ms, schedule.get("after")) {
        // `after`: wait for the previous instance to finish.
        let finished = match &state.last_instance {
            Some(id) => {
                let id = id.clone();
                let store = shoal.store.clone();
                tokio::task::spawn_blocking(move || instances::read_local(&store, &id))
                    .await??
                    .filter(|(instance, _)| instance.status.is_final())
                    .map(|(instance, _)| instance.updated_ms)
            }
            None => Some(now),
        };
        if let Some(at) = finished {
            let period = parse_duration(after).map_or(0, |d| d.as_millis() as u64);
            let state = ScheduleState {
                next_ms: at + period,
                ..state
            };
            write(shoal, &key, &state, revision, None).await?;
        }
        return Ok(());
    }
    // The next tick is never later than this node would set it now: a tick
    // set by a leader whose clock ran ahead would otherwise wait for as long
    // as that clock was off.
    if let Some(latest) = next_time(schedule, now) {
        if state.next_ms > latest {
            let state = ScheduleState {
                next_ms: latest,
                ..state
            };
            write(shoal, &key, &state, revision, None).await?;
            return Ok(());
        }
    }
    if state.next_ms == 0 || now < state.next_ms {
        return Ok(());
    }
    let limit = shoal.settings.workflow_max_unfinished;
    if shoal.unfinished_instances.load(Ordering::Relaxed) >= limit {
        // The tick stays due and fires once there is room.
        anyhow::bail!(InstanceError::TooMany { limit });
    }
    let id = format!("{}-{}", definition.name, state.next_ms);
    let instance = Instance::new(id.clone(), definition, json!({}), now);
    let next_ms = if schedule.get("after").is_some() {
        0
    } else {
        next_time(schedule, now).unwrap_or(u64::MAX)
    };
    let next = ScheduleState {
        next_ms,
        last_instance: Some(id),
        fired: state.fired + 1,
    };
    write(shoal, &key, &next, revision, Some(&instance)).await?;
    Ok(())
}

/// The first tick after `now`.
fn next_time(schedule: &Value, now: u64) -> Option<u64> {
    if let Some(text) = schedule.get("cron").and_then(Value::as_str) {
        return Cron::parse(text).ok()?.next_after(now);
    }
    let period = schedule
        .get("every")
        .or_else(|| schedule.get("after"))
        .and_then(|d| parse_duration(d).ok())?;
    Some(now + (period.as_millis() as u64).max(1))
}

/// Moves the schedule's state on if it is still at `revision` (0: absent),
/// and writes the instance it starts in the same transaction.
async fn write(
    shoal: &Shoal,
    key: &str,
    state: &ScheduleState,
    revision: u64,
    instance: Option<&Instance>,
) -> anyhow::Result<bool> {
    let target = if revision == 0 {
        CompareTarget::CreateRevision(0)
    } else {
        CompareTarget::ModRevision(revision)
    };
    let mut success = vec![TxnOp::Put {
        key: key.to_string(),
        value: serde_json::to_vec(state)?,
        lease: 0,
    }];
    if let Some(instance) = instance {
        success.push(TxnOp::Put {
            key: instances::key_of(&instance.id),
            value: serde_json::to_vec(instance)?,
            lease: 0,
        });
    }
    let (succeeded, _, _) = shoal
        .txn(Txn {
            compare: vec![Compare {
                key: key.to_string(),
                op: CompareOp::Equal,
                target,
            }],
            success,
            failure: vec![],
        })
        .await?;
    Ok(succeeded)
}
