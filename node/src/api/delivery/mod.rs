//! Webhook subscriptions, routing rules, Kafka bridges, SQL sinks and
//! their databases (stored in Raft),
//! dead letters and the outbox (per node, gathered across the cluster), and
//! producing to Kafka.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_actors::config::{validate_kafka_topic, WORKFLOW_INBOX};
use shoal_actors::deliver::Entry;
use shoal_actors::kafka::Record;
use shoal_storage::outbox::List;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use super::extract::{Body, Params, PathText};
use super::messaging::RawPayload;
use crate::services::shoal::Shoal;

/// Time allowed to each other node when gathering dead letters.
const FAN_OUT_TIMEOUT: Duration = Duration::from_secs(5);

pub mod datasets;
pub mod definitions;
pub mod sql_sinks;
pub use definitions::{bridges, routes, webhooks};
use definitions::{check_name, Kind};
pub use sql_sinks::{databases, sinks};

/// A message whose retry schedule ran out.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    /// The node that keeps it (the node that accepted the message)
    pub node_id: u64,
    /// Its sequence number on that node (with `node_id`, what replay's `only` names)
    pub seq: u64,
    /// The message's id
    pub id: String,
    /// The message's topic
    pub topic: String,
    /// Delivery attempts made
    pub attempts: u32,
    /// Why the last attempt failed
    pub last_error: Option<String>,
    /// The message as the webhook receives it: its envelope (CloudEvents 1.0
    /// structured mode, plus `topic` and `headers`: `specversion`, `id`, `topic`,
    /// `source`, `type`, `time`, `subject`, `datacontenttype`, `traceparent`,
    /// `headers`, and `data` or `data_base64`)
    #[schema(value_type = Object)]
    pub message: Value,
}

impl DeadLetter {
    fn new(node_id: u64, seq: u64, entry: &Entry) -> DeadLetter {
        DeadLetter {
            node_id,
            seq,
            id: entry.message.id.clone(),
            topic: entry.message.topic.clone(),
            attempts: entry.attempts,
            last_error: entry.last_error.clone(),
            message: entry.message.envelope(),
        }
    }
}

/// A webhook's dead letters, from every node that answered.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "webhook": "billing",
    "dead_letters": [{"node_id": 1, "seq": 12, "id": "5f1c...", "topic": "orders.created",
                      "attempts": 8, "last_error": "POST http://...: answered 500", "message": {}}],
    "unreachable": []
}))]
pub struct DeadLetters {
    /// The webhook's name
    pub webhook: String,
    /// The dead letters, node by node (at most `limit` per node)
    pub dead_letters: Vec<DeadLetter>,
    /// Nodes that did not answer (their dead letters are missing)
    pub unreachable: Vec<u64>,
}

/// Whether a request is about this node only (`scope=local`) or the cluster.
fn local_scope(params: &Params) -> ApiResult<bool> {
    match params.string("scope") {
        None | Some("cluster") => Ok(false),
        Some("local") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "scope must be cluster or local, got {other:?}"
        ))),
    }
}

/// Ask every other live node the same question over its HTTP API
/// (`scope=local`); answers by node, and the nodes that did not answer (or
/// whose answer did not parse).
async fn fan_out<T: DeserializeOwned>(
    shoal: &Shoal,
    caller: &Caller,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> (Vec<T>, Vec<u64>) {
    let members = shoal.cluster.gossip.members().await;
    let client = &shoal.peer_http;
    let calls = members
        .values()
        .filter(|m| m.node_id != shoal.node_id && !m.left)
        .map(|member| {
            let url = format!(
                "{}://{}{path_and_query}",
                shoal.settings.api_scheme(),
                member.api
            );
            let mut request = client.request(method.clone(), url).timeout(FAN_OUT_TIMEOUT);
            // The peer checks the caller's token as this node did.
            if let Some(authorization) = &caller.authorization {
                request = request.header(axum::http::header::AUTHORIZATION, authorization.clone());
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let (node_id, alive) = (member.node_id, member.alive);
            async move {
                if !alive {
                    return Err(node_id);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        response.json::<T>().await.map_err(|_| node_id)
                    }
                    _ => Err(node_id),
                }
            }
        });
    let mut answers = Vec::new();
    let mut unreachable = Vec::new();
    for result in futures::future::join_all(calls).await {
        match result {
            Ok(answer) => answers.push(answer),
            Err(node_id) => unreachable.push(node_id),
        }
    }
    (answers, unreachable)
}

/// `GET /v1/webhooks/{name}/dead-letters`: messages whose retries ran out,
/// from every node (each keeps those it accepted); `unreachable` lists
/// nodes that did not answer, so a partial answer is never silent.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{name}/dead-letters",
    tag = "delivery",
    operation_id = "deadLetters",
    summary = "A webhook's dead letters",
    description = "Messages whose retry schedule ran out, from every node (each node keeps those it accepted). `unreachable` lists nodes that did not answer.",
    params(
        ("name" = String, Path, description = "Webhook name"),
        ("scope" = Option<String>, Query, description = "cluster (default: ask every live node) or local"),
        ("limit" = Option<u64>, Query, description = "Per node, 1-10000 (default 100)"),
    ),
    responses(
        (status = 200, description = "Dead letters.", body = DeadLetters),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn dead_letters(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    params: Params,
) -> ApiResult<Json<DeadLetters>> {
    let (dead_letters, unreachable) =
        gather_dead_letters(&shoal, &caller, Kind::Webhook, &name, &params).await?;
    Ok(Json(DeadLetters {
        webhook: name,
        dead_letters,
        unreachable,
    }))
}

/// A destination's outbox name and the path of its definitions.
fn outbox_names(kind: Kind, name: &str) -> (String, &'static str) {
    match kind {
        Kind::Sink => (format!("sql:{name}"), "sinks"),
        Kind::Dataset => (format!("dataset:{name}"), "datasets"),
        _ => (format!("webhook:{name}"), "webhooks"),
    }
}

/// The part of a dead-letter answer the fan-out reads.
#[derive(Deserialize)]
struct GatheredLetters {
    dead_letters: Vec<DeadLetter>,
}

/// A webhook's or sink's dead letters on this node, and (unless
/// `scope=local`) on every other node; the nodes that did not answer.
async fn gather_dead_letters(
    shoal: &Arc<Shoal>,
    caller: &Caller,
    kind: Kind,
    name: &str,
    params: &Params,
) -> ApiResult<(Vec<DeadLetter>, Vec<u64>)> {
    check_name(kind, name)?;
    let limit = params.limit(100, 10_000)?;
    let (destination, base) = outbox_names(kind, name);
    let outbox = shoal.messaging.deliveries.outbox().clone();
    let node_id = shoal.node_id;
    let stored =
        tokio::task::spawn_blocking(move || outbox.scan(List::Dead, &destination, None, limit))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
    let mut letters = Vec::with_capacity(stored.len());
    for item in stored {
        let entry: Entry = shoal_codec::decode(&item.value)?;
        letters.push(DeadLetter::new(node_id, item.seq, &entry));
    }
    let mut unreachable = Vec::new();
    if !local_scope(params)? {
        let path = format!("/v1/{base}/{name}/dead-letters?scope=local&limit={limit}");
        let (answers, missing) =
            fan_out::<GatheredLetters>(shoal, caller, reqwest::Method::GET, &path, None).await;
        for answer in answers {
            letters.extend(answer.dead_letters);
        }
        unreachable = missing;
    }
    Ok((letters, unreachable))
}

/// Which dead letters to replay (the body is optional: all of them).
#[derive(Deserialize, Serialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"only": [{"node_id": 1, "seq": 12}]}))]
pub struct ReplayRequest {
    /// Only these dead letters (by `node_id` and `seq`); all when absent.
    #[serde(default)]
    only: Option<Vec<ReplayItem>>,
}

/// One dead letter, as `GET /v1/webhooks/{name}/dead-letters` names it.
#[derive(Deserialize, Serialize, Clone, Copy, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayItem {
    /// The node that keeps it
    node_id: u64,
    /// Its sequence number on that node
    seq: u64,
}

/// How many dead letters went back to the outbox.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"webhook": "billing", "replayed": 3, "unreachable": []}))]
pub struct Replayed {
    /// The webhook's name
    pub webhook: String,
    /// Dead letters put back in the outbox, on every node that answered
    pub replayed: u64,
    /// Nodes that did not answer (their dead letters were not replayed)
    pub unreachable: Vec<u64>,
}

/// `POST /v1/webhooks/{name}/dead-letters/replay`: put dead letters back in
/// the outbox with a fresh retry schedule, on every node.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{name}/dead-letters/replay",
    tag = "delivery",
    operation_id = "replayDeadLetters",
    summary = "Replay dead letters",
    description = "Put dead letters back in the outbox with a fresh retry schedule, on every node. Body (optional): `{\"only\": [{\"node_id\": 1, \"seq\": 12}]}`.",
    params(
        ("name" = String, Path, description = "Webhook name"),
        ("scope" = Option<String>, Query, description = "cluster (default: ask every live node) or local"),
    ),
    request_body(
        content = Option<ReplayRequest>,
        content_type = "application/json",
        description = "Optional: without a body (or with `null`), every dead letter of the webhook is replayed.",
    ),
    responses(
        (status = 200, description = "Replayed.", body = Replayed),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = ErrorBody),
        (status = 413, description = "The body is too large. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn replay(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<Replayed>> {
    let (replayed, unreachable) =
        replay_dead_letters(&shoal, &caller, Kind::Webhook, &name, &params, &body).await?;
    Ok(Json(Replayed {
        webhook: name,
        replayed,
        unreachable,
    }))
}

/// The part of a replay answer the fan-out reads.
#[derive(Deserialize)]
struct GatheredReplays {
    replayed: u64,
}

/// Put a webhook's or sink's dead letters back in the outbox, here and
/// (unless `scope=local`) on every other node: how many, and the nodes
/// that did not answer.
async fn replay_dead_letters(
    shoal: &Arc<Shoal>,
    caller: &Caller,
    kind: Kind,
    name: &str,
    params: &Params,
    body: &[u8],
) -> ApiResult<(u64, Vec<u64>)> {
    check_name(kind, name)?;
    // No body (or `null`) replays every dead letter.
    let replay: ReplayRequest = if body.is_empty() {
        ReplayRequest::default()
    } else {
        serde_json::from_slice::<Option<ReplayRequest>>(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
            .unwrap_or_default()
    };
    let node_id = shoal.node_id;
    let only: Option<Vec<u64>> = replay.only.as_ref().map(|items| {
        items
            .iter()
            .filter(|i| i.node_id == node_id)
            .map(|i| i.seq)
            .collect()
    });
    let (destination, base) = outbox_names(kind, name);
    let moved = shoal
        .messaging
        .replay_dead_letters(&destination, only)
        .await?;
    let mut replayed = moved as u64;
    let mut unreachable = Vec::new();
    if !local_scope(params)? {
        let path = format!("/v1/{base}/{name}/dead-letters/replay?scope=local");
        let body = serde_json::to_value(&replay).map_err(|e| ApiError::internal(e.to_string()))?;
        let (answers, missing) =
            fan_out::<GatheredReplays>(shoal, caller, reqwest::Method::POST, &path, Some(body))
                .await;
        replayed += answers.iter().map(|a| a.replayed).sum::<u64>();
        unreachable = missing;
    }
    Ok((replayed, unreachable))
}

/// `GET /v1/outbox`: this node's pending and dead entries per destination.
#[utoipa::path(
    get,
    path = "/v1/outbox",
    tag = "delivery",
    operation_id = "outbox",
    summary = "This node's outbox",
    description = "Pending and dead entries per destination on this node: every configured webhook and SQL sink (`sql:<name>`), `workflows:inbox`, and every other destination with pending entries.",
    responses(
        (status = 200, description = "Counts.", body = Outbox),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn outbox(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<Outbox>> {
    let outbox = shoal.messaging.deliveries.outbox().clone();
    let config = shoal.messaging.config();
    let mut names: Vec<String> = config
        .webhooks
        .keys()
        .map(|name| format!("webhook:{name}"))
        .chain(config.sinks.keys().map(|name| format!("sql:{name}")))
        .chain([WORKFLOW_INBOX.to_string()])
        .collect();
    let counts = tokio::task::spawn_blocking(
        move || -> Result<Vec<OutboxDestination>, shoal_storage::StorageError> {
            for destination in outbox.destinations()? {
                if !names.contains(&destination) {
                    names.push(destination);
                }
            }
            names
                .into_iter()
                .map(|destination| {
                    let pending = outbox.count(List::Pending, &destination)?;
                    let dead = outbox.count(List::Dead, &destination)?;
                    Ok(OutboxDestination {
                        destination,
                        pending,
                        dead,
                    })
                })
                .collect()
        },
    )
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(Outbox {
        node_id: shoal.node_id,
        destinations: counts,
    }))
}

/// This node's outbox: entries per destination.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"node_id": 1, "destinations": [
    {"destination": "webhook:billing", "pending": 0, "dead": 1}
]}))]
pub struct Outbox {
    /// This node
    pub node_id: u64,
    /// Every configured webhook, the workflow event inbox, and every
    /// destination with pending entries
    pub destinations: Vec<OutboxDestination>,
}

/// The outbox entries of one destination on this node.
#[derive(Serialize, ToSchema)]
pub struct OutboxDestination {
    /// `webhook:<name>`, `kafka:<topic>` or `workflows:inbox`
    pub destination: String,
    /// Entries waiting for delivery (or a retry)
    pub pending: u64,
    /// Dead letters: entries whose retry schedule ran out
    pub dead: u64,
}

/// `POST /v1/kafka/{topic}`: produce the body to Kafka with acks=all and
/// answer with the partition and offset Kafka gave it. `key=` and
/// `partition=` are optional; `content-type`, `traceparent` and `ce-*`
/// headers become Kafka headers.
#[utoipa::path(
    post,
    path = "/v1/kafka/{topic}",
    tag = "delivery",
    operation_id = "produceKafka",
    summary = "Produce to Kafka",
    description = "Produces the body with acks=all and answers once Kafka acknowledged it. `content-type` and `traceparent` headers become Kafka headers of the same name, and `ce-<attribute>` headers become `ce_<attribute>` (the CloudEvents Kafka binding, which bridges read back into the envelope).",
    params(
        ("topic" = String, Path, description = "Kafka topic"),
        ("key" = Option<String>, Query, description = "Record key"),
        ("partition" = Option<u64>, Query, description = "Partition"),
    ),
    request_body(
        content = inline(RawPayload),
        content_type = "*/*",
        description = "The record's value, any bytes (up to --max-message-bytes).",
    ),
    responses(
        (status = 200, description = "Stored by Kafka.", body = KafkaReceipt),
        (status = 400, description = "Malformed request. Error codes: `kafka_not_configured`, `invalid_topic`, `bad_request`.", body = ErrorBody),
        (status = 413, description = "Payload too large. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 502, description = "Kafka did not take the record. Error codes: `kafka_unavailable`.", body = ErrorBody),
    )
)]
pub async fn produce(
    State(shoal): State<Arc<Shoal>>,
    PathText(topic): PathText,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<KafkaReceipt>> {
    let kafka = shoal.messaging.kafka.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::KafkaNotConfigured,
            "this node has no --kafka-brokers",
        )
    })?;
    validate_kafka_topic(&topic)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidTopic, e.0))?;
    let limit = shoal.settings.max_message_bytes;
    if body.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!(
                "message payload is {} bytes; the limit is {limit}",
                body.len()
            ),
        ));
    }
    let partition = match params.string("partition") {
        None => None,
        Some(raw) => Some(raw.parse::<i32>().ok().filter(|p| *p >= 0).ok_or_else(|| {
            ApiError::bad_request(format!(
                "partition must be a non-negative integer, got {raw:?}"
            ))
        })?),
    };
    let mut kafka_headers = Vec::new();
    for (name, value) in &headers {
        let name = name.as_str();
        if name == "content-type" || name == "traceparent" || name.starts_with("ce-") {
            let value = value.to_str().map_err(|_| {
                ApiError::bad_request(format!("header {name} is not visible ASCII"))
            })?;
            // CloudEvents' Kafka binding names the attributes `ce_<name>`.
            let name = match name.strip_prefix("ce-") {
                Some(attribute) => format!("ce_{attribute}"),
                None => name.to_string(),
            };
            kafka_headers.push((name, value.to_string()));
        }
    }
    let record = Record {
        topic: &topic,
        key: params.string("key").map(str::as_bytes),
        partition,
        headers: &kafka_headers,
        payload: &body,
    };
    let produced = kafka.produce(record).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::KafkaUnavailable,
            e.to_string(),
        )
    })?;
    Ok(Json(KafkaReceipt {
        topic,
        partition: produced.partition,
        offset: produced.offset,
    }))
}

/// Where Kafka stored a record.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"topic": "orders", "partition": 2, "offset": 41}))]
pub struct KafkaReceipt {
    /// The Kafka topic
    pub topic: String,
    /// The partition Kafka wrote the record to
    pub partition: i32,
    /// The record's offset in that partition
    pub offset: i64,
}
