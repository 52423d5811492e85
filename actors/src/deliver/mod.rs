//! At-least-once delivery to durable destinations (webhooks, Kafka topics,
//! SQL sinks, the workflow event inbox) from the node's outbox. One ractor actor per destination drains its list
//! in order: the oldest entry is attempted, and on failure the destination
//! waits for that entry's next retry (head-of-line), so a receiver that is
//! down costs one attempt per retry step, not one per waiting message.
//! An entry whose schedule is used up becomes a dead letter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use shoal_storage::now_ms;
use shoal_storage::outbox::{List, Outbox};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{secret_key, Config, Webhook, WORKFLOW_INBOX};
use crate::kafka::KafkaClient;
use crate::labels::topic_label;
use crate::message::Message;

mod batched;

/// Entries attempted per pass before the actor yields to its mailbox.
const PASS_ENTRIES: usize = 64;
/// Kafka and the workflow event inbox never give up (except on an entry
/// they refuse for good): delays between attempts, the last repeated.
const FOREVER_RETRY_MS: [u64; 6] = [0, 1_000, 2_000, 5_000, 10_000, 30_000];

/// What the outbox holds for one message and one destination.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub message: Message,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
}

impl Entry {
    pub fn new(message: Message) -> Entry {
        Entry {
            message,
            attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
        }
    }
}

/// Standard Webhooks signature of a payload: `v1,` + base64(HMAC-SHA256(key, id.timestamp.body)).
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Everything a deliverer needs, shared by all of them.
pub struct Shared {
    pub outbox: Arc<Outbox>,
    pub config: watch::Receiver<Arc<Config>>,
    pub outbound: shoal_outbound::Outbound,
    pub kafka: Option<KafkaClient>,
    /// Where `workflows:inbox` entries go: the node stores each in Raft and
    /// answers (the workflows service lives above this crate).
    pub workflow_inbox: mpsc::Sender<InboxDelivery>,
    /// The SQL sinks' database connections.
    pub databases: Arc<shoal_sinks::Databases>,
    /// The node's dataset files.
    pub datasets: Arc<shoal_datasets::Datasets>,
    /// The node's replica of the configuration store, where database
    /// passwords are read (by the key a database definition names).
    pub store: shoal_storage::Store,
}

/// A message for the workflow event inbox (its CloudEvent envelope), and
/// where the outcome goes.
pub struct InboxDelivery {
    pub event: serde_json::Value,
    pub reply: oneshot::Sender<Result<(), InboxRefusal>>,
}

/// Why the workflow event inbox did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum InboxRefusal {
    /// Tried again later (no quorum, the inbox full).
    #[error("{0}")]
    Retry(String),
    /// Never taken (too large): the entry becomes a dead letter at once.
    #[error("{0}")]
    Refused(String),
}

/// A running deliverer, and whether a wake-up is already in its mailbox.
type Running = (ActorRef<Wake>, Arc<AtomicBool>);

/// Starts and wakes the deliverer actors.
pub struct Deliveries {
    shared: Arc<Shared>,
    actors: Mutex<HashMap<String, Running>>,
}

/// The only message a deliverer takes: look at the outbox again.
pub struct Wake;

impl Deliveries {
    pub fn new(shared: Shared) -> Arc<Deliveries> {
        Arc::new(Deliveries {
            shared: Arc::new(shared),
            actors: Mutex::new(HashMap::new()),
        })
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.shared.outbox
    }

    /// The SQL sinks' database connections.
    pub fn databases(&self) -> &Arc<shoal_sinks::Databases> {
        &self.shared.databases
    }

    pub fn datasets(&self) -> &Arc<shoal_datasets::Datasets> {
        &self.shared.datasets
    }

    /// Make sure a destination's deliverer runs and looks at its outbox.
    /// At most one wake-up is ever waiting in a deliverer's mailbox.
    pub async fn wake(&self, destination: &str) {
        let existing = self
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(destination)
            .cloned();
        let (actor, pending) = match existing {
            Some(found) => found,
            None => {
                let pending = Arc::new(AtomicBool::new(false));
                let args = (
                    destination.to_string(),
                    self.shared.clone(),
                    pending.clone(),
                );
                match Actor::spawn(None, Deliverer, args).await {
                    Ok((actor, _)) => {
                        let mut actors = self.actors.lock().unwrap_or_else(|p| p.into_inner());
                        // Another caller may have started one meanwhile; keep the first.
                        let entry = actors
                            .entry(destination.to_string())
                            .or_insert((actor.clone(), pending));
                        if entry.0.get_id() != actor.get_id() {
                            actor.stop(None);
                        }
                        entry.clone()
                    }
                    Err(e) => {
                        tracing::error!(destination, error = %e, "starting a deliverer failed");
                        return;
                    }
                }
            }
        };
        if !pending.swap(true, Ordering::AcqRel) {
            let _ = actor.cast(Wake);
        }
    }

    /// Stop a destination's deliverer (its webhook was deleted).
    pub fn stop(&self, destination: &str) {
        if let Some((actor, _)) = self
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(destination)
        {
            actor.stop(None);
        }
    }
}

struct Deliverer;

struct State {
    destination: String,
    shared: Arc<Shared>,
    pending: Arc<AtomicBool>,
    timer: Option<tokio::task::JoinHandle<()>>,
    /// The last entry this deliverer took off the pending list (delivered
    /// or dead). Every pending entry has a greater sequence number (the
    /// outbox hands them out in order, replays included), so scans start
    /// after it instead of walking over the deleted entries before it.
    cursor: Option<u64>,
    /// Until when a dataset's rows wait for more before a file is written.
    linger_until: Option<u64>,
}

impl Actor for Deliverer {
    type Msg = Wake;
    type State = State;
    type Arguments = (String, Arc<Shared>, Arc<AtomicBool>);

    async fn pre_start(
        &self,
        _: ActorRef<Wake>,
        (destination, shared, pending): Self::Arguments,
    ) -> Result<State, ActorProcessingErr> {
        Ok(State {
            destination,
            shared,
            pending,
            timer: None,
            cursor: None,
            linger_until: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Wake>,
        _: Wake,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        state.pending.store(false, Ordering::Release);
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        match pass(state).await {
            Ok(Next::More) => {
                if !state.pending.swap(true, Ordering::AcqRel) {
                    myself.cast(Wake)?;
                }
            }
            Ok(Next::At(at_ms)) => {
                let delay = Duration::from_millis(at_ms.saturating_sub(now_ms()));
                let pending = state.pending.clone();
                let me = myself.clone();
                state.timer = Some(tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if !pending.swap(true, Ordering::AcqRel) {
                        let _ = me.cast(Wake);
                    }
                }));
            }
            Ok(Next::Idle) => {}
            Err(e) => {
                tracing::error!(
                    destination = %state.destination,
                    error = %e,
                    "outbox pass failed; retrying in 1 s",
                );
                let me = myself.clone();
                state.timer = Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = me.cast(Wake);
                }));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Wake>,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }
}

enum Next {
    /// More entries are due now.
    More,
    /// The head entry is due at this time.
    At(u64),
    /// Nothing is waiting.
    Idle,
}

/// Why a pass over a destination's list stopped early: the outbox itself
/// failed (the entries stay and the pass is tried again).
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("outbox: {0}")]
    Outbox(#[from] shoal_storage::StorageError),
    #[error(transparent)]
    Codec(#[from] shoal_codec::CodecError),
    #[error("outbox task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why one delivery attempt failed; its text is kept as the entry's
/// `last_error`, which the dead-letter API shows.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("no Kafka brokers are configured (--kafka-brokers)")]
    KafkaNotConfigured,
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaError),
    #[error("{0} is not defined on this node")]
    UnknownDestination(String),
    #[error("the workflow event inbox: {0}")]
    Inbox(#[from] InboxRefusal),
    #[error("{0}")]
    Sql(#[from] shoal_sinks::WriteError),
    /// The message cannot be a row of the dataset (the reason).
    #[error("{0}")]
    NotARow(String),
    #[error(transparent)]
    Dataset(#[from] shoal_datasets::DatasetError),
    #[error("webhook secret: {0}")]
    Secret(#[from] crate::config::ConfigError),
    #[error("POST {url}: {failure}")]
    Request { url: String, failure: String },
    #[error("POST {url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
}

/// Attempt the due entries at the head of the destination's list, in order.
async fn pass(state: &mut State) -> Result<Next, PassError> {
    if let Some(sink) = state.destination.strip_prefix("sql:").map(str::to_string) {
        return batched::pass_sql(state, &sink).await;
    }
    if let Some(name) = state
        .destination
        .strip_prefix("dataset:")
        .map(str::to_string)
    {
        return batched::pass_dataset(state, &name).await;
    }
    let outbox = state.shared.outbox.clone();
    let destination = state.destination.clone();
    let after = state.cursor;
    let entries = tokio::task::spawn_blocking(move || {
        outbox.scan(List::Pending, &destination, after, PASS_ENTRIES)
    })
    .await??;
    let full = entries.len() == PASS_ENTRIES;
    for stored in entries {
        let mut entry: Entry = shoal_codec::decode(&stored.value)?;
        if entry.next_attempt_ms > now_ms() {
            return Ok(Next::At(entry.next_attempt_ms));
        }
        match attempt(state, &entry.message).await {
            Ok(()) => delivered(state, &[(stored.seq, entry)]).await?,
            Err(error) => {
                entry.attempts += 1;
                entry.last_error = Some(error.to_string());
                let schedule = schedule_for(state);
                let forever = is_kafka(&state.destination) || webhook_for(state).is_none();
                let delay = match &error {
                    AttemptError::Inbox(InboxRefusal::Refused(_)) => None,
                    _ => next_delay(&schedule, entry.attempts, forever),
                };
                if let Some(at) = failed(state, stored.seq, entry, &error, delay).await? {
                    return Ok(Next::At(at));
                }
            }
        }
        state.cursor = Some(stored.seq);
    }
    Ok(if full { Next::More } else { Next::Idle })
}

/// Record a failed attempt of the entry `seq`: with a delay it waits for
/// its next attempt (the time returned), without one it becomes a dead
/// letter.
async fn failed(
    state: &State,
    seq: u64,
    mut entry: Entry,
    error: &AttemptError,
    delay: Option<u64>,
) -> Result<Option<u64>, PassError> {
    let outbox = state.shared.outbox.clone();
    let destination = state.destination.clone();
    let topic = topic_label(&entry.message.topic);
    match delay {
        Some(delay) => {
            tracing::info!(destination = %state.destination, id = %entry.message.id,
                attempts = entry.attempts, retry_in_ms = delay, %error, "delivery failed; will retry");
            metrics::counter!(
                "shoal_deliveries_retried_total",
                "destination" => destination.clone(),
                "topic" => topic,
            )
            .increment(1);
            entry.next_attempt_ms = now_ms() + delay;
            let at = entry.next_attempt_ms;
            let value = shoal_codec::encode(&entry)?;
            run_blocking(move || outbox.update(&destination, seq, &value)).await?;
            Ok(Some(at))
        }
        None => {
            tracing::warn!(destination = %state.destination, id = %entry.message.id,
                attempts = entry.attempts, %error, "delivery gave up; moved to the dead letters");
            metrics::counter!(
                "shoal_deliveries_dead_lettered_total",
                "destination" => destination.clone(),
                "topic" => topic,
            )
            .increment(1);
            let value = shoal_codec::encode(&entry)?;
            run_blocking(move || outbox.kill(&destination, seq, &value)).await?;
            Ok(None)
        }
    }
}

/// Forget entries that were written, and count them.
async fn delivered(state: &State, entries: &[(u64, Entry)]) -> Result<(), PassError> {
    for (_, entry) in entries {
        metrics::counter!(
            "shoal_deliveries_total",
            "destination" => state.destination.clone(),
            "topic" => topic_label(&entry.message.topic),
        )
        .increment(1);
    }
    let outbox = state.shared.outbox.clone();
    let destination = state.destination.clone();
    let seqs: Vec<u64> = entries.iter().map(|(seq, _)| *seq).collect();
    run_blocking(move || outbox.remove(&destination, &seqs)).await
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, shoal_storage::StorageError> + Send + 'static,
) -> Result<T, PassError> {
    Ok(tokio::task::spawn_blocking(work).await??)
}

fn is_kafka(destination: &str) -> bool {
    destination.starts_with("kafka:")
}

fn webhook_for(state: &State) -> Option<Webhook> {
    let name = state.destination.strip_prefix("webhook:")?;
    state.shared.config.borrow().webhooks.get(name).cloned()
}

/// A webhook's schedule; one that never ends otherwise.
fn schedule_for(state: &State) -> Vec<u64> {
    webhook_for(state)
        .map(|w| w.retry_schedule_ms)
        .unwrap_or_else(|| FOREVER_RETRY_MS.to_vec())
}

/// Delay before attempt number `attempts + 1`; None when the schedule is used
/// up (Kafka repeats its last delay forever).
fn next_delay(schedule: &[u64], attempts: u32, forever: bool) -> Option<u64> {
    match schedule.get(attempts as usize) {
        Some(delay) => Some(*delay),
        None if forever => schedule.last().copied(),
        None => None,
    }
}

/// One delivery attempt. A webhook this node does not know (a route names
/// one not created yet, or its definition is not replicated here yet) is
/// retried like a Kafka destination, forever: a deleted webhook's entries
/// are purged when the deletion is applied, so nothing waits for it.
async fn attempt(state: &State, message: &Message) -> Result<(), AttemptError> {
    if let Some(topic) = state.destination.strip_prefix("kafka:") {
        let Some(kafka) = &state.shared.kafka else {
            return Err(AttemptError::KafkaNotConfigured);
        };
        kafka.produce_message(topic, message).await?;
        return Ok(());
    }
    if state.destination == WORKFLOW_INBOX {
        return send_to_inbox(&state.shared.workflow_inbox, message).await;
    }
    let Some(webhook) = webhook_for(state) else {
        return Err(AttemptError::UnknownDestination(state.destination.clone()));
    };
    post_webhook(&state.shared.outbound, &webhook, message).await
}

/// Hand a message to the node's workflow event inbox and wait for its
/// answer: stored (or waiting already under its id) is success.
async fn send_to_inbox(
    inbox: &mpsc::Sender<InboxDelivery>,
    message: &Message,
) -> Result<(), AttemptError> {
    let stopped = || InboxRefusal::Retry("the node is shutting down".into());
    let (reply, answer) = oneshot::channel();
    let delivery = InboxDelivery {
        event: message.envelope(),
        reply,
    };
    inbox.send(delivery).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())??;
    Ok(())
}

/// POST a message to a webhook, signed the Standard Webhooks way. Any 2xx is
/// success; anything else (or no answer in time) is retried.
async fn post_webhook(
    outbound: &shoal_outbound::Outbound,
    webhook: &Webhook,
    message: &Message,
) -> Result<(), AttemptError> {
    let key = secret_key(&webhook.secret)?;
    let body = message.envelope().to_string().into_bytes();
    let timestamp = now_ms() / 1000;
    let failed = |failure: String| AttemptError::Request {
        url: webhook.url.clone(),
        failure,
    };
    let mut request = outbound
        .request(reqwest::Method::POST, &webhook.url)
        .map_err(|e| failed(e.to_string()))?
        .timeout(Duration::from_millis(webhook.timeout_ms))
        .header("content-type", "application/json")
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign(&key, &message.id, timestamp, &body),
        );
    if let Some(traceparent) = &message.traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| failed(shoal_outbound::failure(&e)))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(AttemptError::Status {
            url: webhook.url.clone(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn schedules_end_except_for_kafka() {
        assert_eq!(next_delay(&[0, 100], 1, false), Some(100));
        assert_eq!(next_delay(&[0, 100], 2, false), None);
        assert_eq!(next_delay(&[0, 100], 5, true), Some(100));
    }
}
