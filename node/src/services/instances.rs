//! Workflow instances, stored in Raft under `_shoal/workflows/instances/`
//! as JSON, one key per instance. Every change is a compare-and-swap on
//! the key's revision: the driver and operators never overwrite a state
//! they did not read.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_storage::kv::{Compare, CompareOp, CompareTarget, OpResult, Txn, TxnOp};
use shoal_storage::{now_ms, Store};
use shoal_workflows::run::{Instance, Outcome, Record, Status};
use shoal_workflows::Definition;
use thiserror::Error;

use super::shoal::{Created, KvError, Shoal};

/// Where instances are stored (inside the reserved `_shoal/` prefix).
pub const INSTANCES_PREFIX: &str = "_shoal/workflows/instances/";
/// Most bytes of JSON an instance's input may hold.
pub const MAX_INPUT_BYTES: usize = 256 * 1024;
/// Most characters of an instance id.
pub const MAX_ID_CHARS: usize = 128;

#[derive(Debug, Error)]
pub enum InstanceError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("workflow instance {0} does not exist")]
    NotFound(String),
    #[error("instance id {0} is taken by an instance of workflow {1}")]
    IdTaken(String, String),
    #[error("instance {id} is {status}: it cannot be {action}")]
    WrongStatus {
        id: String,
        status: &'static str,
        action: &'static str,
    },
    #[error("stored workflow instance {key} is unreadable: {message}")]
    Unreadable { key: String, message: String },
    #[error("the instance would hold {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Evaluation(#[from] super::evaluator::EvaluatorError),
    #[error("the cluster holds {limit} unfinished workflow instances, its limit (--workflow-max-unfinished); start again when some have finished")]
    TooMany { limit: u64 },
}

/// What an operator asks of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Suspend,
    Resume,
    Cancel,
    Retry,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "suspend" => Some(Action::Suspend),
            "resume" => Some(Action::Resume),
            "cancel" => Some(Action::Cancel),
            "retry" => Some(Action::Retry),
            _ => None,
        }
    }

    fn past(self) -> &'static str {
        match self {
            Action::Suspend => "suspended",
            Action::Resume => "resumed",
            Action::Cancel => "cancelled",
            Action::Retry => "retried",
        }
    }
}

pub fn key_of(id: &str) -> String {
    format!("{INSTANCES_PREFIX}{id}")
}

/// An id a user may give: 1 to 128 of `A-Z a-z 0-9 . _ -`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn decode(key: &str, bytes: &[u8]) -> Result<Instance, InstanceError> {
    serde_json::from_slice(bytes).map_err(|e| InstanceError::Unreadable {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode(shoal: &Shoal, instance: &Instance) -> Result<Vec<u8>, InstanceError> {
    let bytes = serde_json::to_vec(instance).map_err(|e| InstanceError::Unreadable {
        key: key_of(&instance.id),
        message: e.to_string(),
    })?;
    let limit = shoal.settings.max_value_bytes;
    if bytes.len() > limit {
        return Err(InstanceError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

/// Starts an instance unless one with this id exists; then that one is
/// returned (an idempotent start). True when it was created. While the
/// cluster holds its limit of unfinished instances only the existing one
/// is returned.
pub async fn start(
    shoal: &Shoal,
    definition: &Definition,
    id: String,
    input: Value,
) -> Result<(Instance, u64, bool), InstanceError> {
    let limit = shoal.settings.workflow_max_unfinished;
    if shoal.unfinished_instances.load(Ordering::Relaxed) >= limit {
        return match get(shoal, &id).await {
            Ok((existing, revision)) => {
                same_workflow(&existing, definition)?;
                Ok((existing, revision, false))
            }
            Err(InstanceError::NotFound(_)) => Err(InstanceError::TooMany { limit }),
            Err(e) => Err(e),
        };
    }
    let instance = Instance::new(id, definition, input, now_ms());
    let key = key_of(&instance.id);
    match shoal.create(key.clone(), encode(shoal, &instance)?).await? {
        Created::Written(revision) => Ok((instance, revision, true)),
        Created::Exists { value, revision } => {
            let existing = decode(&key, &value)?;
            same_workflow(&existing, definition)?;
            Ok((existing, revision, false))
        }
    }
}

/// An id given to a start is taken unless its instance is of the same
/// workflow.
fn same_workflow(existing: &Instance, definition: &Definition) -> Result<(), InstanceError> {
    if existing.namespace != definition.namespace || existing.name != definition.name {
        return Err(InstanceError::IdTaken(
            existing.id.clone(),
            format!("{}/{}", existing.namespace, existing.name),
        ));
    }
    Ok(())
}

/// An instance as this replica has it, with its revision (no barrier).
pub fn read_local(store: &Store, id: &str) -> Result<Option<(Instance, u64)>, InstanceError> {
    let key = key_of(id);
    let (_, kv) = store.kv_get(&key)?;
    kv.map(|kv| Ok((decode(&key, &kv.value)?, kv.mod_revision)))
        .transpose()
}

/// Every readable instance of this replica with its own revision, and the
/// revision they were read at, all from one snapshot, so that a watch from
/// the next revision misses none (no barrier; a blocking read, for
/// `Shoal::read`).
#[allow(clippy::type_complexity)]
pub fn scan(store: &Store) -> Result<(u64, Vec<(Instance, u64)>), shoal_storage::StorageError> {
    let mut all = Vec::new();
    let counters = store.kv_scan_prefix(INSTANCES_PREFIX, &mut |kv| {
        let decoded = decode(&kv.key, &kv.value);
        match decoded {
            Ok(instance) => all.push((instance, kv.mod_revision)),
            Err(e) => tracing::warn!(error = %e, "an unreadable workflow instance is skipped"),
        }
    })?;
    Ok((counters.revision, all))
}

/// An instance (linearizable read).
pub async fn get(shoal: &Shoal, id: &str) -> Result<(Instance, u64), InstanceError> {
    shoal.read_barrier(false).await?;
    let key = key_of(id);
    let read_key = key.clone();
    let (_, kv) = shoal.read(move |store| store.kv_get(&read_key)).await?;
    let kv = kv.ok_or_else(|| InstanceError::NotFound(id.to_string()))?;
    Ok((decode(&key, &kv.value)?, kv.mod_revision))
}

/// Deletes a finished instance if its key is still at `revision`. True
/// when it was deleted.
pub async fn delete_unchanged(
    shoal: &Shoal,
    id: &str,
    revision: u64,
) -> Result<bool, InstanceError> {
    let key = key_of(id);
    let (succeeded, _, _) = shoal
        .txn(Txn {
            compare: vec![Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(revision),
            }],
            success: vec![TxnOp::Delete { key, prefix: false }],
            failure: vec![],
        })
        .await?;
    Ok(succeeded)
}

/// Writes `instance` if its key is still at `revision`; the new revision,
/// or none when someone changed it first.
pub async fn write(
    shoal: &Shoal,
    instance: &Instance,
    revision: u64,
) -> Result<Option<u64>, InstanceError> {
    match write_requiring(shoal, instance, revision, None).await? {
        Written::At(revision) => Ok(Some(revision)),
        Written::Changed | Written::RequiredGone => Ok(None),
    }
}

/// Another key a write depends on: the write happens only while that key
/// exists, and deletes it when `delete`.
pub struct Requires {
    pub key: String,
    pub delete: bool,
}

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written at this revision.
    At(u64),
    /// Someone changed the instance first.
    Changed,
    /// The required key is gone.
    RequiredGone,
}

/// [`write`], also requiring (and perhaps deleting) another key, in one
/// transaction.
pub async fn write_requiring(
    shoal: &Shoal,
    instance: &Instance,
    revision: u64,
    requires: Option<&Requires>,
) -> Result<Written, InstanceError> {
    let key = key_of(&instance.id);
    let mut compare = vec![Compare {
        key: key.clone(),
        op: CompareOp::Equal,
        target: CompareTarget::ModRevision(revision),
    }];
    let mut success = vec![TxnOp::Put {
        key,
        value: encode(shoal, instance)?,
        lease: 0,
    }];
    let mut failure = Vec::new();
    if let Some(requires) = requires {
        compare.push(Compare {
            key: requires.key.clone(),
            op: CompareOp::Greater,
            target: CompareTarget::CreateRevision(0),
        });
        if requires.delete {
            success.push(TxnOp::Delete {
                key: requires.key.clone(),
                prefix: false,
            });
        }
        failure.push(TxnOp::Get {
            key: requires.key.clone(),
        });
    }
    let (succeeded, new_revision, results) = shoal
        .txn(Txn {
            compare,
            success,
            failure,
        })
        .await?;
    if succeeded {
        return Ok(Written::At(new_revision));
    }
    match results.first() {
        Some(OpResult::Get { kv: None }) => Ok(Written::RequiredGone),
        _ => Ok(Written::Changed),
    }
}

/// Which instances a list answers.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub status: Option<Status>,
    /// Only instances created at least this many milliseconds ago.
    pub min_age_ms: Option<u64>,
    /// Start after this instance id (the previous page's `next`).
    pub after: Option<String>,
    pub limit: usize,
}

impl ListFilter {
    pub fn matches(&self, instance: &Instance, now_ms: u64) -> bool {
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        same(&self.namespace, &instance.namespace)
            && same(&self.name, &instance.name)
            && same(&self.version, &instance.version)
            && self.status.is_none_or(|s| s == instance.status)
            && self
                .min_age_ms
                .is_none_or(|age| now_ms.saturating_sub(instance.created_ms) >= age)
    }
}

/// Longest a list scans before it answers what it found so far (with the
/// id to continue after).
pub const LIST_SCAN_LIMIT: Duration = Duration::from_secs(10);
/// Most bytes of instances one predicate evaluation is given.
const PREDICATE_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Instances in id order that pass the filter and the jq `predicate` (run
/// in the evaluator; true unless it gives `null`, `false` or an error), at
/// most `filter.limit`, and the id to continue after when there may be
/// more. A scan that takes longer than [`LIST_SCAN_LIMIT`] stops early and
/// answers the last id it looked at as the one to continue after.
pub async fn list(
    shoal: &Shoal,
    filter: ListFilter,
    predicate: Option<String>,
) -> Result<(Vec<Instance>, Option<String>), InstanceError> {
    shoal.read_barrier(false).await?;
    let now = now_ms();
    let started = Instant::now();
    let mut found: Vec<Instance> = Vec::new();
    let mut after = filter.after.as_ref().map(|id| key_of(id));
    loop {
        let read_after = after.clone();
        let chunk_filter = filter.clone();
        let (matching, last, more) = shoal
            .read(move |store| {
                let (_, kvs, more) =
                    store.kv_range(INSTANCES_PREFIX, read_after.as_deref(), 1000)?;
                let last = kvs.last().map(|kv| kv.key.clone());
                let matching: Vec<(Instance, usize)> = kvs
                    .into_iter()
                    .filter_map(|kv| {
                        let instance = decode(&kv.key, &kv.value).ok()?;
                        chunk_filter
                            .matches(&instance, now)
                            .then_some((instance, kv.value.len()))
                    })
                    .collect();
                Ok((matching, last, more))
            })
            .await?;
        after = last;
        let kept = match &predicate {
            None => matching.into_iter().map(|(instance, _)| instance).collect(),
            Some(code) => holding(shoal, code, matching).await?,
        };
        for instance in kept {
            if found.len() == filter.limit {
                let next = found.last().map(|i| i.id.clone());
                return Ok((found, next));
            }
            found.push(instance);
        }
        if !more {
            return Ok((found, None));
        }
        if started.elapsed() > LIST_SCAN_LIMIT {
            let next = after
                .as_deref()
                .and_then(|key| key.strip_prefix(INSTANCES_PREFIX));
            return Ok((found, next.map(str::to_string)));
        }
    }
}

/// The instances on which the jq predicate holds, evaluated in batches of
/// at most [`PREDICATE_BATCH_BYTES`].
async fn holding(
    shoal: &Shoal,
    code: &str,
    instances: Vec<(Instance, usize)>,
) -> Result<Vec<Instance>, InstanceError> {
    let mut kept = Vec::new();
    let mut batch: Vec<Instance> = Vec::new();
    let mut bytes = 0;
    let mut rest = instances.into_iter().peekable();
    while let Some((instance, size)) = rest.next() {
        bytes += size;
        batch.push(instance);
        if bytes < PREDICATE_BATCH_BYTES && rest.peek().is_some() {
            continue;
        }
        let inputs = batch
            .iter()
            .map(|instance| serde_json::to_value(instance).unwrap_or(Value::Null))
            .collect();
        let answers = shoal.evaluator.jq(vec![code.to_string()], inputs).await?;
        for (instance, answer) in batch.drain(..).zip(answers) {
            let holds = matches!(
                answer.first(),
                Some(Ok(value)) if !matches!(value, Value::Null | Value::Bool(false))
            );
            if holds {
                kept.push(instance);
            }
        }
        bytes = 0;
    }
    Ok(kept)
}

/// Applies an operator's action, retrying on a concurrent change.
pub async fn act(shoal: &Shoal, id: &str, action: Action) -> Result<Instance, InstanceError> {
    loop {
        let (mut instance, revision) = get(shoal, id).await?;
        let wrong = || InstanceError::WrongStatus {
            id: id.to_string(),
            status: instance.status.as_str(),
            action: action.past(),
        };
        let now = now_ms();
        match (action, instance.status) {
            (Action::Suspend, Status::Pending | Status::Running | Status::Waiting) => {
                instance.status = Status::Suspended;
            }
            (Action::Resume, Status::Suspended) => instance.status = Status::Running,
            (Action::Cancel, status) if !status.is_final() => {
                instance.status = Status::Cancelled;
                instance.waiting.clear();
            }
            (Action::Retry, Status::Faulted) => {
                retry(&mut instance);
            }
            _ => return Err(wrong()),
        }
        instance.note(now, action.past(), instance.current_task.clone().as_deref());
        if write(shoal, &instance, revision).await?.is_some() {
            return Ok(instance);
        }
    }
}

/// A faulted instance runs again from its failed task: the failed calls
/// and the timeout that fired on that task are forgotten (they are asked
/// again, with a new idempotency key), everything else is kept.
fn retry(instance: &mut Instance) {
    let failed_task = instance
        .error
        .as_ref()
        .and_then(|e| e.instance.clone())
        .unwrap_or_default();
    instance.outcomes.retain(|key, record| match record {
        Record {
            outcome: Outcome::Call { error: Some(_), .. },
            ..
        } => false,
        Record {
            outcome: Outcome::Timer { fired: true, .. },
            ..
        } => !(key.ends_with("/timeout") && key.starts_with(&failed_task)),
        _ => true,
    });
    instance.retries += 1;
    instance.status = Status::Running;
    instance.error = None;
}

impl From<shoal_storage::StorageError> for InstanceError {
    fn from(e: shoal_storage::StorageError) -> InstanceError {
        InstanceError::Kv(KvError::Storage(std::sync::Arc::new(e)))
    }
}
