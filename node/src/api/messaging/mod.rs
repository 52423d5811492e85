//! Publish and subscribe over HTTP: one message or a batch, Server-Sent
//! Events and WebSocket subscribers, and a WebSocket publishing stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use base64::Engine;
use futures::SinkExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use shoal_acl::{Access, Resource};
use shoal_actors::message::{new_id, new_traceparent, rfc3339_now, Message};
use shoal_actors::subject::validate_topic;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use super::extract::{Body, JsonBody, PathText};
use crate::services::shoal::Shoal;
use crate::write_deadline::within;

pub mod publish_socket;
pub mod subscribe;

/// Most messages in one publish batch.
pub const MAX_BATCH_MESSAGES: usize = 1000;
/// Most header entries on a message, and the longest header value.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 4096;

fn invalid_topic(e: impl ToString) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidTopic,
        e.to_string(),
    )
}

fn too_large(size: usize, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("message payload is {size} bytes; the limit is {limit} (--max-message-bytes)"),
    )
}

fn check_header(name: &str, value: &str) -> ApiResult<()> {
    if name.is_empty() || name.len() > 256 || value.len() > MAX_HEADER_BYTES {
        return Err(ApiError::bad_request(format!(
            "header {name:?} must have a 1-256 byte name and a value of at most {MAX_HEADER_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A W3C traceparent, checked: `00-<32 hex>-<16 hex>-<2 hex>`.
fn check_traceparent(value: &str) -> ApiResult<()> {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    let ok = parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "traceparent {value:?} is not a W3C trace context (00-<trace id>-<span id>-<flags>)"
        )))
    }
}

fn node_source(shoal: &Shoal) -> String {
    format!("shoal://node/{}", shoal.node_id)
}

/// Where a publish went. One message (`POST /v1/topics/{topic}`) answers
/// with `id` and `topic`; a batch (`POST /v1/publish`) with `ids`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "5f1c...", "topic": "orders.created", "local": 1, "forwarded": 2, "routed": 0, "durable": 1}))]
pub struct PublishReceipt {
    /// The message's id (one message).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub id: Option<String>,
    /// The messages' ids, in the batch's order (a batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub ids: Option<Vec<String>>,
    /// The message's topic (one message).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub topic: Option<String>,
    /// Local subscriber queues reached (the node's workflow intake among
    /// them when a workflow definition takes the message's type)
    pub local: usize,
    /// Messages handed to links to other nodes
    pub forwarded: usize,
    /// Copies made by routing rules' topic destinations
    pub routed: usize,
    /// Outbox entries (webhook/Kafka deliveries) written to disk before this answer
    pub durable: usize,
}

/// `POST /v1/topics/{topic}`: publish the body as one message. The content
/// type travels with it; CloudEvents binary-mode headers (`ce-id`,
/// `ce-source`, `ce-type`, `ce-subject`, `ce-time`) set the envelope and
/// other `ce-*` headers become message headers; `traceparent` is kept (or
/// started).
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}",
    tag = "messaging",
    operation_id = "publish",
    summary = "Publish one message",
    description = "The body is the payload (up to --max-message-bytes, default 1 MiB); Content-Type travels with it. CloudEvents binary-mode headers `ce-id`, `ce-source`, `ce-type`, `ce-subject`, `ce-time` set the envelope; other `ce-<name>` headers become message headers. `traceparent` is kept (a new trace is started when absent). Subscribers on every node with a matching pattern receive it (at-most-once); webhook and Kafka destinations are written to the durable outbox before the answer (at-least-once). Routing rules run on this node.",
    params(
        ("topic" = String, Path, description = "Dot-separated topic, no wildcards, at most 256 bytes"),
    ),
    request_body(
        content = inline(RawPayload),
        content_type = "*/*",
        description = "The message payload, any bytes; the request's Content-Type becomes the message's content type (default application/octet-stream).",
    ),
    responses(
        (status = 202, description = "Published.", body = PublishReceipt),
        (status = 400, description = "Malformed request. Error codes: `invalid_topic`, `bad_request`.", body = ErrorBody),
        (status = 413, description = "Payload too large. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn publish_one(
    State(shoal): State<Arc<Shoal>>,
    PathText(topic): PathText,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<PublishReceipt>)> {
    let message = message_of_request(&shoal, topic, &headers, &body)?;
    let topic = message.topic.clone();
    let receipt = shoal.messaging.publish(vec![message]).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishReceipt {
            id: receipt.ids.into_iter().next(),
            ids: None,
            topic: Some(topic),
            local: receipt.reach.local,
            forwarded: receipt.reach.forwarded,
            routed: receipt.routed,
            durable: receipt.durable,
        }),
    ))
}

/// One message from a request to a topic: the body is its payload and the
/// headers its envelope (Content-Type, `ce-*`, `traceparent`), checked.
pub fn message_of_request(
    shoal: &Shoal,
    topic: String,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Message> {
    validate_topic(&topic).map_err(invalid_topic)?;
    let limit = shoal.settings.max_message_bytes;
    if body.len() > limit {
        return Err(too_large(body.len(), limit));
    }
    let text = |name: &str| -> ApiResult<Option<String>> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(|v| Some(v.to_string()))
                .map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII"))),
        }
    };
    let mut message = Message {
        id: text("ce-id")?.unwrap_or_else(new_id),
        topic,
        source: text("ce-source")?.unwrap_or_else(|| node_source(shoal)),
        kind: text("ce-type")?.unwrap_or_else(|| "shoal.message".into()),
        time: text("ce-time")?.unwrap_or_else(rfc3339_now),
        subject: text("ce-subject")?,
        content_type: text("content-type")?.unwrap_or_else(|| "application/octet-stream".into()),
        traceparent: text("traceparent")?,
        headers: Vec::new(),
        data: body.to_vec(),
    };
    for (name, value) in headers {
        let Some(extension) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if matches!(
            extension,
            "id" | "source" | "type" | "subject" | "time" | "specversion"
        ) {
            continue;
        }
        let value = value
            .to_str()
            .map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII")))?;
        check_header(extension, value)?;
        message
            .headers
            .push((extension.to_string(), value.to_string()));
    }
    if message.headers.len() > MAX_HEADERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_HEADERS} ce- headers per message"
        )));
    }
    finish(&mut message)?;
    Ok(message)
}

// A raw request body, for the document (handlers read `Body`).
/// Any bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct RawPayload(());

/// Check the envelope attributes and start a trace when there is none.
fn finish(message: &mut Message) -> ApiResult<()> {
    for (name, value) in [
        ("id", &message.id),
        ("source", &message.source),
        ("type", &message.kind),
        ("time", &message.time),
    ] {
        if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "{name} must be 1 to 256 bytes without control characters"
            )));
        }
    }
    match &message.traceparent {
        Some(traceparent) => check_traceparent(traceparent)?,
        None => message.traceparent = Some(new_traceparent()),
    }
    Ok(())
}

/// One message of a JSON batch (and a text frame of `GET /v1/publish/ws`
/// without `topic`). Give `data` or `data_base64`, not both; neither is an
/// empty payload.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchMessage {
    /// Dot-separated topic, no wildcards, at most 256 bytes
    topic: String,
    /// The payload as JSON. A string is sent as text/plain, other JSON as application/json
    #[serde(default)]
    #[schema(value_type = Value)]
    data: Option<Value>,
    /// The payload as base64 bytes (standard alphabet); sent as application/octet-stream
    #[serde(default)]
    data_base64: Option<String>,
    /// The payload's content type, instead of the one `data` or `data_base64` implies
    #[serde(default)]
    content_type: Option<String>,
    /// Message headers: at most 64, names of 1-256 bytes, string values of at most 4096 bytes
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    headers: Map<String, Value>,
    /// Message id (CloudEvents `id`); generated when absent
    #[serde(default)]
    id: Option<String>,
    /// CloudEvents `source`; default `shoal://node/<node id>`
    #[serde(default)]
    source: Option<String>,
    /// CloudEvents `type`; default `shoal.message`
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// CloudEvents `subject`
    #[serde(default)]
    subject: Option<String>,
    /// W3C trace context; default the request's `traceparent` header, else a new trace
    #[serde(default)]
    traceparent: Option<String>,
}

/// The body of `POST /v1/publish`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"messages": [
    {"topic": "orders.created", "data": {"id": 42}},
    {"topic": "audit.log", "data": "plain text", "headers": {"region": "eu"}}
]}))]
pub struct PublishBatch {
    /// 1 to 1000 messages
    messages: Vec<BatchMessage>,
}

/// A batch entry as a message: `data` as JSON (or text for a string),
/// `data_base64` as bytes.
fn batch_message(
    shoal: &Shoal,
    item: BatchMessage,
    traceparent: Option<&str>,
) -> ApiResult<Message> {
    validate_topic(&item.topic).map_err(invalid_topic)?;
    let (data, default_type) = match (item.data, item.data_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give data or data_base64, not both"))
        }
        (Some(Value::String(text)), None) => (text.into_bytes(), "text/plain"),
        (Some(value), None) => (value.to_string().into_bytes(), "application/json"),
        (None, Some(encoded)) => (
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| ApiError::bad_request("data_base64 is not valid base64"))?,
            "application/octet-stream",
        ),
        (None, None) => (Vec::new(), "application/octet-stream"),
    };
    let limit = shoal.settings.max_message_bytes;
    if data.len() > limit {
        return Err(too_large(data.len(), limit));
    }
    if item.headers.len() > MAX_HEADERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_HEADERS} headers per message"
        )));
    }
    let mut headers = Vec::with_capacity(item.headers.len());
    for (name, value) in item.headers {
        let Value::String(value) = value else {
            return Err(ApiError::bad_request(format!(
                "header {name:?} must be a string"
            )));
        };
        check_header(&name, &value)?;
        headers.push((name, value));
    }
    let mut message = Message {
        id: item.id.unwrap_or_else(new_id),
        topic: item.topic,
        source: item.source.unwrap_or_else(|| node_source(shoal)),
        kind: item.kind.unwrap_or_else(|| "shoal.message".into()),
        time: rfc3339_now(),
        subject: item.subject,
        content_type: item.content_type.unwrap_or_else(|| default_type.into()),
        traceparent: item.traceparent.or_else(|| traceparent.map(str::to_string)),
        headers,
        data,
    };
    finish(&mut message)?;
    Ok(message)
}

/// `POST /v1/publish`: a batch of messages, all or none (a bad entry is a
/// 400 naming its index; nothing is published).
#[utoipa::path(
    post,
    path = "/v1/publish",
    tag = "messaging",
    operation_id = "publishBatch",
    summary = "Publish a batch of messages",
    description = "1 to 1000 messages, all or none: a bad entry is a 400 whose message names `messages[i]` and whose `index` field gives i.",
    request_body(
        content = PublishBatch,
        content_type = "application/json",
        description = "The messages, published in order.",
    ),
    responses(
        (status = 202, description = "Published.", body = PublishReceipt,
         example = json!({"ids": ["5f1c...", "9a0b..."], "local": 2, "forwarded": 0, "routed": 0, "durable": 1})),
        (status = 400, description = "Malformed request. Error codes: `bad_request`, `invalid_topic`.", body = ErrorBody),
        (status = 413, description = "Payload too large. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn publish_batch(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    headers: HeaderMap,
    JsonBody(batch): JsonBody<PublishBatch>,
) -> ApiResult<(StatusCode, Json<PublishReceipt>)> {
    if batch.messages.is_empty() || batch.messages.len() > MAX_BATCH_MESSAGES {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH_MESSAGES} messages"
        )));
    }
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let mut messages = Vec::with_capacity(batch.messages.len());
    for (index, item) in batch.messages.into_iter().enumerate() {
        let message = batch_message(&shoal, item, traceparent).map_err(|mut e| {
            e.message = format!("messages[{index}]: {}", e.message);
            e.with("index", json!(index))
        })?;
        caller.require(Resource::Topic, &message.topic, Access::Write)?;
        messages.push(message);
    }
    let receipt = shoal.messaging.publish(messages).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishReceipt {
            id: None,
            ids: Some(receipt.ids),
            topic: None,
            local: receipt.reach.local,
            forwarded: receipt.reach.forwarded,
            routed: receipt.routed,
            durable: receipt.durable,
        }),
    ))
}

/// Sends a close frame, waiting at most `limit` for the client to take it.
async fn send_close<S>(socket: &mut S, limit: Duration, code: u16, reason: &str)
where
    S: futures::Sink<WsMessage> + Unpin,
{
    within(limit, socket.send(close(code, reason))).await;
}

/// A close frame; the reason is cut to the 123 bytes a close frame can hold.
fn close(code: u16, reason: &str) -> WsMessage {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// `GET /v1/topics`: every node's subscriptions (pattern, queue group,
/// subscriber count), as gossip tells this node.
#[utoipa::path(
    get,
    path = "/v1/topics",
    tag = "messaging",
    operation_id = "topicInterest",
    summary = "Subscriptions in the cluster",
    description = "Every node's subscription patterns, queue groups and subscriber counts, as gossip shows them to this node.",
    responses(
        (status = 200, description = "Interest by node id.", body = TopicInterest),
    )
)]
pub async fn interest(State(shoal): State<Arc<Shoal>>) -> Json<TopicInterest> {
    let nodes = shoal
        .messaging
        .router
        .cluster_interest()
        .into_iter()
        .map(|(node, lines)| {
            let lines = lines
                .into_iter()
                .map(|line| InterestLine {
                    pattern: line.pattern,
                    group: line.group,
                    subscribers: line.subscribers,
                })
                .collect();
            (node.to_string(), lines)
        })
        .collect();
    Json(TopicInterest {
        node_id: shoal.node_id,
        nodes,
    })
}

/// The subscriptions of every node in the cluster, as gossip shows them to
/// this node.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"node_id": 1, "nodes": {
    "1": [{"pattern": "orders.*", "subscribers": 2}],
    "2": [{"pattern": "jobs.>", "group": "workers", "subscribers": 1}]
}}))]
pub struct TopicInterest {
    /// The node that answered
    pub node_id: u64,
    /// Each node's subscriptions, by node id
    pub nodes: BTreeMap<String, Vec<InterestLine>>,
}

/// Subscribers of one node with one pattern (and queue group).
#[derive(Serialize, ToSchema)]
pub struct InterestLine {
    /// Topic pattern: `*` matches one token, `>` the remaining tokens
    pub pattern: String,
    /// Queue group, when the subscribers are in one
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub group: Option<String>,
    /// Subscribers with this pattern (and group) on the node
    pub subscribers: u32,
}
