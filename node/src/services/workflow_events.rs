//! The workflow event inbox: events for workflow instances that must not
//! be lost, stored in Raft under `_shoal/workflows/events/{id}` before the
//! sender gets its answer (a topic is at most once; this is not). The
//! leader's intake applies each to the instances listening for it (the
//! last write that applies it deletes it) and starts the instances of
//! schedules that start on it. An
//! event no instance took waits, and is offered again whenever an instance
//! begins to listen for its type, until `--workflow-event-retention` has
//! passed; then it is deleted.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_actors::deliver::{InboxDelivery, InboxRefusal};
use shoal_storage::kv::{Txn, TxnOp};
use shoal_storage::{now_ms, StorageError, Store};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::mpsc;

use super::shoal::{Created, KvError, Shoal};

/// Where waiting events are stored (inside the reserved `_shoal/` prefix).
pub const EVENTS_PREFIX: &str = "_shoal/workflows/events/";
/// Most events the inbox holds; past it, events are refused with 429.
pub const MAX_WAITING: u64 = 10_000;

#[derive(Debug, Error)]
pub enum EventError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("the event would be stored as {size} bytes; the limit is {limit} (--max-value-bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("the workflow event inbox holds {limit} events, its limit; send again when instances have taken some")]
    TooMany { limit: u64 },
    #[error("stored workflow event {key} is unreadable: {message}")]
    Unreadable { key: String, message: String },
}

/// An event in the inbox: its CloudEvent envelope and when it was accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Waiting {
    pub accepted_ms: u64,
    pub event: Value,
}

/// What accepting an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored at this revision.
    Stored(u64),
    /// An event with this id waits already (stored at this revision):
    /// nothing changed.
    Duplicate(u64),
}

pub fn key_of(id: &str) -> String {
    format!("{EVENTS_PREFIX}{id}")
}

pub fn decode(key: &str, bytes: &[u8]) -> Result<Waiting, EventError> {
    serde_json::from_slice(bytes).map_err(|e| EventError::Unreadable {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Stores an event (a CloudEvent envelope with an `id`) unless one with
/// its id waits already, and counts it.
pub async fn accept(shoal: &Shoal, event: Value) -> Result<Accepted, EventError> {
    let accepted = store(shoal, event).await?;
    let result = match accepted {
        Accepted::Stored(_) => "accepted",
        Accepted::Duplicate(_) => "duplicate",
    };
    metrics::counter!("shoal_workflow_inbox_events_total", "result" => result).increment(1);
    Ok(accepted)
}

/// Takes the messaging outbox's `workflows:inbox` deliveries (routing
/// rules, and Kafka bridges through them), one at a time, as events sent
/// to the API: an event too large for the inbox is refused for good (a
/// dead letter), anything else is tried again by the outbox.
pub async fn take_deliveries(shoal: Arc<Shoal>, mut deliveries: mpsc::Receiver<InboxDelivery>) {
    while let Some(delivery) = deliveries.recv().await {
        let outcome = match accept(&shoal, delivery.event).await {
            Ok(_) => Ok(()),
            Err(e @ EventError::TooLarge { .. }) => Err(InboxRefusal::Refused(e.to_string())),
            Err(e) => Err(InboxRefusal::Retry(e.to_string())),
        };
        // The deliverer may have stopped waiting (its webhook deleted, the node stopping).
        let _ = delivery.reply.send(outcome);
    }
}

async fn store(shoal: &Shoal, event: Value) -> Result<Accepted, EventError> {
    if shoal.waiting_events.load(Ordering::Relaxed) >= MAX_WAITING {
        return Err(EventError::TooMany { limit: MAX_WAITING });
    }
    let id = event
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let key = key_of(&id);
    let value = serde_json::to_vec(&Waiting {
        accepted_ms: now_ms(),
        event,
    })
    .map_err(|e| EventError::Unreadable {
        key: key.clone(),
        message: e.to_string(),
    })?;
    let limit = shoal.settings.max_value_bytes;
    if value.len() > limit {
        return Err(EventError::TooLarge {
            size: value.len(),
            limit,
        });
    }
    match shoal.create(key, value).await? {
        Created::Written(revision) => Ok(Accepted::Stored(revision)),
        Created::Exists { revision, .. } => Ok(Accepted::Duplicate(revision)),
    }
}

/// Deletes these events in one write (taken or past retention).
pub async fn delete(shoal: &Shoal, ids: &[String]) -> Result<(), EventError> {
    shoal
        .txn(Txn {
            compare: vec![],
            success: ids
                .iter()
                .map(|id| TxnOp::Delete {
                    key: key_of(id),
                    prefix: false,
                })
                .collect(),
            failure: vec![],
        })
        .await?;
    Ok(())
}

/// Every readable waiting event of this replica by id, and the revision
/// they were read at, all from one snapshot, so that a watch from the next
/// revision misses none (no barrier; a blocking read, for `Shoal::read`).
#[allow(clippy::type_complexity)]
pub fn scan(store: &Store) -> Result<(u64, Vec<(String, Waiting)>), StorageError> {
    let mut all = Vec::new();
    let counters =
        store.kv_scan_prefix(EVENTS_PREFIX, &mut |kv| match decode(&kv.key, &kv.value) {
            Ok(waiting) => all.push((kv.key[EVENTS_PREFIX.len()..].to_string(), waiting)),
            Err(e) => tracing::warn!(error = %e, "an unreadable workflow event is skipped"),
        })?;
    Ok((counters.revision, all))
}

/// The waiting events in id order after `after`, at most `limit`, and
/// whether more follow (linearizable read).
pub async fn list(
    shoal: &Shoal,
    after: Option<String>,
    limit: usize,
) -> Result<(Vec<Waiting>, bool), EventError> {
    shoal.read_barrier(false).await?;
    let after = after.map(|id| key_of(&id));
    let (_, kvs, more) = shoal
        .read(move |store| store.kv_range(EVENTS_PREFIX, after.as_deref(), limit))
        .await?;
    let waiting = kvs
        .iter()
        .map(|kv| decode(&kv.key, &kv.value))
        .collect::<Result<_, _>>()?;
    Ok((waiting, more))
}
