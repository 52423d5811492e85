//! An instance's replicated state, and the only ways it changes: recording
//! an outcome (a timer armed or fired, an event applied, a call answered,
//! an event emitted) and settling what an evaluation found. The driver on
//! the leader makes these changes once and writes the result through Raft;
//! replicas store it as it is.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Most entries of an instance's history kept; older ones are dropped and
/// counted in `history_dropped`.
pub const MAX_HISTORY: usize = 100;
/// Most event ids remembered per instance to refuse a redelivered event.
pub const MAX_APPLIED_EVENTS: usize = 1000;
/// Most outcomes one instance may record (its calls, timers, events and
/// emits); past it the instance is faulted.
pub const MAX_OUTCOMES: usize = 10_000;

/// The statuses of the DSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = WorkflowStatus)]
pub enum Status {
    /// Started; the driver has not run it yet.
    Pending,
    /// Running tasks, calling out or emitting.
    Running,
    /// Waiting for an event or a timer only.
    Waiting,
    Suspended,
    Cancelled,
    Faulted,
    Completed,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Running,
        Status::Waiting,
        Status::Suspended,
        Status::Cancelled,
        Status::Faulted,
        Status::Completed,
    ];

    /// Cancelled and completed instances never change again; a faulted one
    /// only by an operator's retry.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Cancelled | Status::Faulted | Status::Completed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Waiting => "waiting",
            Status::Suspended => "suspended",
            Status::Cancelled => "cancelled",
            Status::Faulted => "faulted",
            Status::Completed => "completed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// An error as the DSL describes one (RFC 7807 problem details).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowError {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The JSON Pointer of the task that raised it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The DSL's standard error types.
pub mod errors {
    pub const CONFIGURATION: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/configuration";
    pub const VALIDATION: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/validation";
    pub const EXPRESSION: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/expression";
    pub const TIMEOUT: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/timeout";
    pub const COMMUNICATION: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/communication";
    pub const RUNTIME: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/runtime";
}

impl WorkflowError {
    pub fn new(kind: &str, status: u16, title: &str, detail: impl Into<String>) -> WorkflowError {
        WorkflowError {
            kind: kind.to_string(),
            status,
            title: Some(title.to_string()),
            detail: Some(detail.into()),
            instance: None,
        }
    }

    pub fn at(mut self, task: &str) -> WorkflowError {
        if self.instance.is_none() {
            self.instance = Some(task.to_string());
        }
        self
    }
}

/// An outcome the driver recorded, under the key of what it answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowRecord)]
pub struct Record {
    /// Order in which outcomes were settled (1, 2, ...); none while the
    /// outcome is still partial (a timer armed, an `all` listen half met).
    /// It decides races: a task whose timeout fired before it finished
    /// timed out; the first branch of a competing fork to finish wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When it was settled (Unix ms, the driver's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[schema(as = WorkflowOutcome)]
pub enum Outcome {
    /// A timer (a `wait`, a retry's delay, a timeout): when it is due
    /// (Unix milliseconds, chosen once by the driver) and whether it fired.
    Timer { due_ms: u64, fired: bool },
    /// A `listen`: the event met for each of its filters so far.
    Events { events: Vec<Option<Value>> },
    /// A `call` answered: its output, or the error it raised.
    Call {
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<WorkflowError>,
    },
    /// An `emit` published.
    Emitted,
}

/// One thing that happened to an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowHistoryEntry)]
pub struct HistoryEntry {
    pub at_ms: u64,
    /// `started`, `timer.armed`, `timer.fired`, `event.applied`,
    /// `call.completed`, `call.failed`, `emitted`, `waiting`, `completed`,
    /// `faulted`, `suspended`, `resumed`, `cancelled`, `retried`.
    pub what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// How a `listen` is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = WorkflowListenMode)]
pub enum ListenMode {
    One,
    Any,
    All,
}

/// An event filter with its correlation values computed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowEventFilter)]
pub struct EventFilter {
    /// Attributes the event must have: a value is compared as is, a
    /// `${ }` expression is run on the event and must give `true`.
    pub with: Map<String, Value>,
    /// Each correlation: jq run on the event, and the value it must give.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub correlate: Vec<Correlation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowCorrelation)]
pub struct Correlation {
    pub name: String,
    pub from: String,
    pub expect: Value,
}

/// An HTTP request a `call` makes, its expressions evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowHttpRequest)]
pub struct HttpRequest {
    pub method: String,
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub query: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// `content` (the body), `response` (status, headers, body) or `raw`
    /// (the body as base64).
    pub output: String,
}

/// What an instance waits for, under the key its outcome is recorded at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[schema(as = WorkflowNeed)]
pub enum Need {
    Timer {
        key: String,
        task: String,
        duration_ms: u64,
        /// A random extra delay between these bounds (a retry's jitter).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jitter_ms: Option<(u64, u64)>,
    },
    Listen {
        key: String,
        task: String,
        mode: ListenMode,
        filters: Vec<EventFilter>,
    },
    Call {
        key: String,
        task: String,
        request: HttpRequest,
    },
    Emit {
        key: String,
        task: String,
        event: Map<String, Value>,
    },
}

impl Need {
    pub fn key(&self) -> &str {
        match self {
            Need::Timer { key, .. }
            | Need::Listen { key, .. }
            | Need::Call { key, .. }
            | Need::Emit { key, .. } => key,
        }
    }

    pub fn task(&self) -> &str {
        match self {
            Need::Timer { task, .. }
            | Need::Listen { task, .. }
            | Need::Call { task, .. }
            | Need::Emit { task, .. } => task,
        }
    }

    /// Waiting for the world (a timer, an event), not for the driver.
    pub fn is_passive(&self) -> bool {
        matches!(self, Need::Timer { .. } | Need::Listen { .. })
    }
}

/// An instance: its identity, status, data and recorded outcomes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowInstance)]
pub struct Instance {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub status: Status,
    pub input: Value,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WorkflowError>,
    /// The task the instance is at (the first it waits on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<String>,
    /// What it waits for now.
    #[serde(default)]
    pub waiting: Vec<Need>,
    #[serde(default)]
    pub outcomes: BTreeMap<String, Record>,
    #[serde(default)]
    pub settled: u64,
    /// Ids of the events applied, newest last (at most
    /// [`MAX_APPLIED_EVENTS`]).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub applied_events: VecDeque<String>,
    #[serde(default)]
    #[schema(value_type = Vec<HistoryEntry>)]
    pub history: VecDeque<HistoryEntry>,
    #[serde(default)]
    pub history_dropped: u64,
    /// Bumped by each operator retry: part of every call's idempotency
    /// key, so a call made again after a retry gets a new one.
    #[serde(default)]
    pub retries: u32,
    /// Task lifecycle events are published up to this outcome number
    /// (none: not even those of the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_events_through: Option<u64>,
}

/// What applying an event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The event met a filter of a listen the instance waits on.
    Applied,
    /// The event was applied before: nothing changed.
    Duplicate,
    /// The instance waits for no such event.
    NotWaiting,
}

impl Instance {
    pub fn new(id: String, definition: &crate::Definition, input: Value, now_ms: u64) -> Instance {
        let mut instance = Instance {
            id,
            namespace: definition.namespace.clone(),
            name: definition.name.clone(),
            version: definition.version.clone(),
            status: Status::Pending,
            input,
            created_ms: now_ms,
            updated_ms: now_ms,
            output: None,
            error: None,
            current_task: None,
            waiting: Vec::new(),
            outcomes: BTreeMap::new(),
            settled: 0,
            applied_events: VecDeque::new(),
            history: VecDeque::new(),
            history_dropped: 0,
            retries: 0,
            task_events_through: None,
        };
        instance.note(now_ms, "started", None);
        instance
    }

    /// Faults the instance with this error: nothing is waited for any more.
    pub fn fault(&mut self, error: WorkflowError, now_ms: u64) {
        self.status = Status::Faulted;
        self.waiting.clear();
        self.note(now_ms, "faulted", error.instance.clone().as_deref());
        self.error = Some(error);
    }

    /// `namespace/name/version` of the definition it runs.
    pub fn definition_key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.version)
    }

    /// The number of history entries ever noted: the next entry's number.
    pub fn history_end(&self) -> u64 {
        self.history_dropped + self.history.len() as u64
    }

    /// The history entries still kept from number `from` on, each with its
    /// number.
    pub fn history_from(&self, from: u64) -> impl Iterator<Item = (u64, &HistoryEntry)> {
        let first = self.history_dropped;
        self.history
            .iter()
            .enumerate()
            .map(move |(i, entry)| (first + i as u64, entry))
            .filter(move |(number, _)| *number >= from)
    }

    pub fn note(&mut self, at_ms: u64, what: &str, task: Option<&str>) {
        self.updated_ms = self.updated_ms.max(at_ms);
        self.history.push_back(HistoryEntry {
            at_ms,
            what: what.to_string(),
            task: task.map(str::to_string),
        });
        while self.history.len() > MAX_HISTORY {
            self.history.pop_front();
            self.history_dropped += 1;
        }
    }

    fn settle_record(&mut self, key: &str, outcome: Outcome, now_ms: u64) {
        self.settled += 1;
        self.outcomes.insert(
            key.to_string(),
            Record {
                seq: Some(self.settled),
                at_ms: Some(now_ms),
                outcome,
            },
        );
    }

    /// When the outcome numbered `seq` was settled (0: when the instance
    /// was created); none if that outcome is no longer recorded.
    pub fn settled_at(&self, seq: u64) -> Option<u64> {
        if seq == 0 {
            return Some(self.created_ms);
        }
        self.outcomes
            .values()
            .find(|record| record.seq == Some(seq))
            .and_then(|record| record.at_ms)
    }

    /// A timer is armed to fire at `due_ms`.
    pub fn arm_timer(&mut self, key: &str, task: &str, due_ms: u64, now_ms: u64) {
        self.outcomes.insert(
            key.to_string(),
            Record {
                seq: None,
                at_ms: None,
                outcome: Outcome::Timer {
                    due_ms,
                    fired: false,
                },
            },
        );
        self.note(now_ms, "timer.armed", Some(task));
    }

    /// An armed timer fired; false when it is not armed or already fired
    /// (nothing changes then).
    pub fn fire_timer(&mut self, key: &str, now_ms: u64) -> bool {
        let due_ms = match self.outcomes.get(key) {
            Some(Record {
                outcome:
                    Outcome::Timer {
                        due_ms,
                        fired: false,
                    },
                ..
            }) => *due_ms,
            _ => return false,
        };
        self.settle_record(
            key,
            Outcome::Timer {
                due_ms,
                fired: true,
            },
            now_ms,
        );
        let task = self.task_of(key);
        self.note(now_ms, "timer.fired", task.as_deref());
        true
    }

    /// A call answered.
    pub fn record_call(
        &mut self,
        key: &str,
        result: Result<Value, WorkflowError>,
        now_ms: u64,
    ) -> bool {
        if self.outcomes.contains_key(key) {
            return false;
        }
        let task = self.task_of(key);
        let (outcome, what) = match result {
            Ok(output) => (
                Outcome::Call {
                    output: Some(output),
                    error: None,
                },
                "call.completed",
            ),
            Err(error) => (
                Outcome::Call {
                    output: None,
                    error: Some(error),
                },
                "call.failed",
            ),
        };
        self.settle_record(key, outcome, now_ms);
        self.note(now_ms, what, task.as_deref());
        true
    }

    /// An event was published for an `emit`.
    pub fn record_emitted(&mut self, key: &str, now_ms: u64) -> bool {
        if self.outcomes.contains_key(key) {
            return false;
        }
        let task = self.task_of(key);
        self.settle_record(key, Outcome::Emitted, now_ms);
        self.note(now_ms, "emitted", task.as_deref());
        true
    }

    fn task_of(&self, key: &str) -> Option<String> {
        self.waiting
            .iter()
            .find(|need| need.key() == key)
            .map(|need| need.task().to_string())
    }

    /// Applies an event (a CloudEvent envelope with an `id`) to the
    /// listens the instance waits on; `matches` tells whether it meets a
    /// filter. An event is applied at most once.
    pub fn apply_event(
        &mut self,
        event: &Value,
        now_ms: u64,
        matches: impl Fn(&EventFilter, &Value) -> bool,
    ) -> Applied {
        let Some(id) = event.get("id").and_then(Value::as_str) else {
            return Applied::NotWaiting;
        };
        if self.applied_events.iter().any(|seen| seen == id) {
            return Applied::Duplicate;
        }
        let mut applied_to = None;
        for need in &self.waiting {
            let Need::Listen {
                key,
                task,
                mode,
                filters,
            } = need
            else {
                continue;
            };
            let mut events = match self.outcomes.get(key) {
                Some(Record {
                    seq: None,
                    outcome: Outcome::Events { events },
                    ..
                }) => events.clone(),
                Some(_) => continue,
                None => vec![None; filters.len()],
            };
            let Some(slot) = filters
                .iter()
                .enumerate()
                .find(|(i, filter)| events[*i].is_none() && matches(filter, event))
                .map(|(i, _)| i)
            else {
                continue;
            };
            events[slot] = Some(event.clone());
            let met = match mode {
                ListenMode::One | ListenMode::Any => true,
                ListenMode::All => events.iter().all(Option::is_some),
            };
            applied_to = Some((key.clone(), task.clone(), events, met));
            break;
        }
        let Some((key, task, events, met)) = applied_to else {
            return Applied::NotWaiting;
        };
        if met {
            self.settle_record(&key, Outcome::Events { events }, now_ms);
        } else {
            self.outcomes.insert(
                key,
                Record {
                    seq: None,
                    at_ms: None,
                    outcome: Outcome::Events { events },
                },
            );
        }
        self.applied_events.push_back(id.to_string());
        while self.applied_events.len() > MAX_APPLIED_EVENTS {
            self.applied_events.pop_front();
        }
        self.note(now_ms, "event.applied", Some(&task));
        Applied::Applied
    }
}
