//! Publish and subscribe over HTTP: one message or a batch, Server-Sent
//! Events and WebSocket subscribers, and a WebSocket publishing stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use shoal_acl::{Access, Identity, Resource};
use shoal_actors::message::{new_id, new_traceparent, rfc3339_now, Message, Shared};
use shoal_actors::queue::{BoundedQueue, Overflow};
use shoal_actors::router::Subscription;
use shoal_actors::subject::{validate_topic, Pattern};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use super::extract::{Body, JsonBody, Params, PathText, Upgrade};
use super::model::SseEvent;
use crate::services::shoal::Shoal;
use crate::write_deadline::within;

/// Most messages in one publish batch.
pub const MAX_BATCH_MESSAGES: usize = 1000;
/// Largest frame or message a WebSocket subscriber may send.
const SUBSCRIBER_FRAME_BYTES: usize = 16 << 10;
/// Subscriber buffer: default and largest allowed.
const DEFAULT_BUFFER: u64 = 1024;
const MAX_BUFFER: u64 = 65_536;
/// Messages written to a subscriber stream per wake-up.
const STREAM_BATCH: usize = 256;
/// Most header entries on a message, and the longest header value.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 4096;
/// WebSocket frames gathered into one publish.
const WS_PUBLISH_BATCH: usize = 256;

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

/// What a subscription needs of its token's policies, checked again while
/// it is open (the parameters were validated by `subscribe`).
fn subscription_allowed(params: &Params) -> impl Fn(&Identity) -> bool + Send + 'static {
    let pattern = params.string("pattern").unwrap_or_default().to_string();
    let group = params.string("queue").map(str::to_string);
    move |identity| {
        identity.allows(Resource::Topic, &pattern, Access::Read)
            && group
                .as_deref()
                .is_none_or(|group| identity.allows(Resource::QueueGroup, group, Access::Read))
    }
}

/// The subscription parameters shared by SSE and WebSocket. The topic rule
/// was checked before the handler; a queue group needs a `queue_group`
/// rule as well, so that a token that may read a topic cannot take a share
/// of another service's work.
fn subscribe(shoal: &Shoal, caller: &Caller, params: &Params) -> ApiResult<Subscription> {
    let pattern = params
        .string("pattern")
        .ok_or_else(|| ApiError::bad_request("pattern= is required (e.g. orders.*)"))?;
    let pattern = Pattern::parse(pattern).map_err(invalid_topic)?;
    let group = params.string("queue").map(str::to_string);
    if let Some(group) = &group {
        shoal_actors::config::validate_name("queue group", group)
            .map_err(|e| ApiError::bad_request(e.0))?;
        caller.require(Resource::QueueGroup, group, Access::Read)?;
    }
    let buffer = params.number("buffer")?.unwrap_or(DEFAULT_BUFFER);
    if buffer == 0 || buffer > MAX_BUFFER {
        return Err(ApiError::bad_request(format!(
            "buffer must be between 1 and {MAX_BUFFER}"
        )));
    }
    let overflow = match params.string("overflow") {
        None | Some("drop_oldest") => Overflow::DropOldest,
        Some("disconnect") => Overflow::Disconnect,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "overflow must be drop_oldest or disconnect, got {other:?}"
            )))
        }
    };
    Ok(shoal
        .messaging
        .router
        .subscribe(pattern, group, buffer as usize, overflow))
}

/// Why a subscriber's queue was closed under it.
fn slow_consumer_reason(queue: &BoundedQueue<Arc<Shared>>) -> &'static str {
    if queue.was_cut_off() {
        "slow consumer: the node's subscriber buffers are full (--subscriber-buffer-mb) and this \
         subscriber was behind"
    } else {
        "slow consumer: the subscriber's buffer overflowed and overflow=disconnect"
    }
}

fn slow_consumer_error(queue: &BoundedQueue<Arc<Shared>>) -> Value {
    json!({"error": {"code": "slow_consumer", "message": slow_consumer_reason(queue)}})
}

/// `GET /v1/subscribe`: an SSE stream of message envelopes (`event:
/// message`), with `event: dropped` when the buffer overflowed.
#[utoipa::path(
    get,
    path = "/v1/subscribe",
    tag = "messaging",
    operation_id = "subscribe",
    summary = "Subscribe (Server-Sent Events)",
    description = "Events: `subscribed` (once), `message` (id = message id, data = the envelope), `dropped` (`{\"dropped\": n}` after overflow), `error` (slow_consumer, then the stream ends).\n\nThe events' data: `subscribed`: `{\"subscription\": <id>, \"node_id\": <node id>}`. `message`: the envelope, a message as subscribers and webhooks receive it (CloudEvents 1.0 structured mode, plus `topic` and `headers`): `specversion` (\"1.0\"), `id`, `topic`, `source`, `type`, `time` (RFC 3339), `subject` (optional), `datacontenttype`, `traceparent` (optional), `headers` (an object of strings), and the payload: JSON payloads embedded as `data`, UTF-8 text as a string `data`, other bytes as `data_base64`. `dropped`: `{\"dropped\": n}`, messages lost to overflow (overflow=drop_oldest). `error`: `{\"error\": {\"code\": \"slow_consumer\", \"message\": \"...\"}}` when the buffer overflowed with overflow=disconnect, or (whatever `overflow`) when the node's subscriber buffers hold `--subscriber-buffer-mb` and this subscriber's backlog is past its fair share; the stream then ends. A buffer holds at most a quarter of `--subscriber-buffer-mb`. With ACLs on, the stream also ends within about a second once the token is revoked or its policies no longer allow the pattern. A subscriber that takes nothing for `--write-timeout-ms` (10 s) is disconnected without an event (none could reach it) and its subscription dropped. A comment line is sent every 15 s to keep the connection open.",
    params(
        ("pattern" = String, Query, description = "Topic pattern: `*` matches one token, `>` the remaining tokens"),
        ("queue" = Option<String>, Query, description = "Queue group: each message goes to one member of the group in the whole cluster"),
        ("buffer" = Option<u64>, Query, description = "Messages buffered for this subscriber (1-65536, default 1024)"),
        ("overflow" = Option<String>, Query, description = "When the buffer is full: drop_oldest (default; reported as a `dropped` event) or disconnect"),
    ),
    responses(
        (status = 200, description = "An event stream.", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "Malformed request. Error codes: `bad_request`, `invalid_topic`.", body = ErrorBody),
    )
)]
pub async fn sse(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    params: Params,
) -> ApiResult<Response> {
    let subscription = subscribe(&shoal, &caller, &params)?;
    let still_allowed = subscription_allowed(&params);
    let (sender, receiver) = mpsc::channel::<Result<Event, Infallible>>(16);
    let hello = json!({"subscription": subscription.id, "node_id": shoal.node_id});
    let limit = shoal.settings.write_timeout();
    tokio::spawn(async move {
        let queue = subscription.queue.clone();
        let hello = Event::default().event("subscribed").data(hello.to_string());
        if !within(limit, sender.send(Ok(hello))).await {
            return;
        }
        loop {
            let batch = tokio::select! {
                batch = queue.next_batch(STREAM_BATCH) => batch,
                _ = sender.closed() => return,
            };
            let Some(batch) = batch else {
                let error = Event::default()
                    .event("error")
                    .data(slow_consumer_error(&queue).to_string());
                within(limit, sender.send(Ok(error))).await;
                return;
            };
            if batch.dropped > 0 {
                let event = Event::default()
                    .event("dropped")
                    .data(json!({"dropped": batch.dropped}).to_string());
                if !within(limit, sender.send(Ok(event))).await {
                    return;
                }
            }
            for shared in batch.items {
                let event = Event::default()
                    .event("message")
                    .id(shared.message.id.clone())
                    .data(shared.envelope_json());
                if !within(limit, sender.send(Ok(event))).await {
                    return;
                }
            }
        }
        // `subscription` is dropped here, which unsubscribes.
    });
    let stream =
        ReceiverStream::new(receiver).take_until(caller.revoked(shoal.acl.clone(), still_allowed));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `GET /v1/subscribe/ws`: the same over WebSocket. `format=json` (default)
/// sends each envelope as a text frame; `format=raw` sends the payload alone
/// as a binary frame. A `{"dropped": n}` text frame reports overflow.
#[utoipa::path(
    get,
    path = "/v1/subscribe/ws",
    tag = "messaging",
    operation_id = "subscribeWebSocket",
    summary = "Subscribe (WebSocket)",
    description = "Over HTTP/2 the socket opens with `CONNECT` and `:protocol: websocket` (RFC 8441) on the same path, a method OpenAPI cannot name. `format=json` (default): a text frame per envelope, and `{\"dropped\": n}` text frames after overflow. `format=raw`: a binary frame per payload. Overflow with overflow=disconnect, or a backlog past its fair share while the node's subscriber buffers hold `--subscriber-buffer-mb`, closes with code 1008 (slow consumer); so does a revoked token or a policy that no longer allows the pattern (ACLs on). A subscriber that takes nothing for `--write-timeout-ms` (10 s) is disconnected without a close frame and its subscription dropped. A buffer holds at most a quarter of `--subscriber-buffer-mb`.",
    params(
        ("pattern" = String, Query, description = "Topic pattern: `*` matches one token, `>` the remaining tokens"),
        ("queue" = Option<String>, Query, description = "Queue group: each message goes to one member of the group in the whole cluster"),
        ("buffer" = Option<u64>, Query, description = "Messages buffered for this subscriber (1-65536, default 1024)"),
        ("overflow" = Option<String>, Query, description = "When the buffer is full: drop_oldest (default; reported as a `dropped` event) or disconnect"),
        ("format" = Option<String>, Query, description = "json or raw"),
    ),
    responses(
        (status = 101, description = "Switching to WebSocket."),
        (status = 400, description = "Malformed request. Error codes: `bad_request`, `invalid_topic`.", body = ErrorBody),
    )
)]
pub async fn websocket(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    params: Params,
    upgrade: Upgrade,
) -> ApiResult<Response> {
    let raw = match params.string("format") {
        None | Some("json") => false,
        Some("raw") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be json or raw, got {other:?}"
            )))
        }
    };
    let subscription = subscribe(&shoal, &caller, &params)?;
    let still_allowed = subscription_allowed(&params);
    // A subscriber only ever sends control frames and a close: anything
    // bigger ends the socket before the node buffers it.
    Ok(upgrade.serve(SUBSCRIBER_FRAME_BYTES, move |socket| {
        let revoked = caller.revoked(shoal.acl.clone(), still_allowed);
        stream_to_socket(
            socket,
            subscription,
            raw,
            revoked,
            shoal.settings.write_timeout(),
        )
    }))
}

async fn stream_to_socket(
    socket: WebSocket,
    subscription: Subscription,
    raw: bool,
    revoked: impl std::future::Future<Output = ()>,
    limit: Duration,
) {
    let (mut sink, mut incoming) = socket.split();
    let queue: Arc<BoundedQueue<Arc<Shared>>> = subscription.queue.clone();
    tokio::pin!(revoked);
    loop {
        let batch = tokio::select! {
            batch = queue.next_batch(STREAM_BATCH) => batch,
            () = &mut revoked => {
                send_close(&mut sink, limit, 1008, "the token was revoked").await;
                return;
            }
            // The client closed (or sent something): only a close matters.
            frame = incoming.next() => match frame {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        let Some(batch) = batch else {
            send_close(&mut sink, limit, 1008, slow_consumer_reason(&queue)).await;
            return;
        };
        if batch.dropped > 0 {
            let report = WsMessage::Text(json!({"dropped": batch.dropped}).to_string().into());
            if !within(limit, sink.feed(report)).await {
                return;
            }
        }
        for shared in batch.items {
            let frame = if raw {
                WsMessage::Binary(Bytes::copy_from_slice(&shared.message.data))
            } else {
                WsMessage::Text(shared.envelope_json().to_string().into())
            };
            if !within(limit, sink.feed(frame)).await {
                return;
            }
        }
        if !within(limit, sink.flush()).await {
            return;
        }
    }
}

/// `GET /v1/publish/ws`: a WebSocket publishing stream. With `?topic=T`
/// each frame's payload is a message to T (`content_type=` sets its type);
/// without, each text frame is a JSON object like a `/v1/publish` entry.
/// Fire-and-forget like NATS core: a bad frame closes the socket with 1008
/// and the reason.
#[utoipa::path(
    get,
    path = "/v1/publish/ws",
    tag = "messaging",
    operation_id = "publishWebSocket",
    summary = "Publish over a WebSocket stream",
    description = "Over HTTP/2 the socket opens with `CONNECT` and `:protocol: websocket` (RFC 8441) on the same path, a method OpenAPI cannot name. With `topic`, every frame (text or binary) is a message to that topic. Without, every text frame is a JSON object like a /v1/publish entry. Fire-and-forget; a bad frame closes the socket with code 1008 and the reason. With ACLs on, each frame's topic is checked against the token's policies as of the last check (every second), and the socket closes with 1008 once the token is revoked or may no longer publish to `topic` (without one, to any topic).",
    params(
        ("topic" = Option<String>, Query, description = "Topic for every frame"),
        ("content_type" = Option<String>, Query, description = "Content type of the frames' payloads (default application/octet-stream)"),
    ),
    responses(
        (status = 101, description = "Switching to WebSocket."),
        (status = 400, description = "Not a WebSocket upgrade, or a malformed request. Error codes: `bad_request`, `invalid_topic`.", body = ErrorBody),
    )
)]
pub async fn publish_socket(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    params: Params,
    upgrade: Upgrade,
) -> ApiResult<Response> {
    let topic = params.string("topic").map(str::to_string);
    if let Some(topic) = &topic {
        validate_topic(topic).map_err(invalid_topic)?;
        caller.require(Resource::Topic, topic, Access::Write)?;
    }
    let content_type = params
        .string("content_type")
        .unwrap_or("application/octet-stream")
        .to_string();
    let limit = shoal.settings.max_message_bytes + (64 << 10);
    Ok(upgrade.serve(limit, move |socket| {
        publish_from_socket(shoal, caller, socket, topic, content_type)
    }))
}

async fn publish_from_socket(
    shoal: Arc<Shoal>,
    mut caller: Caller,
    mut socket: WebSocket,
    topic: Option<String>,
    content_type: String,
) {
    let source = node_source(&shoal);
    let limit = shoal.settings.write_timeout();
    let to_message =
        |caller: &Caller, frame: WsMessage, time: &str| -> ApiResult<Option<Message>> {
            let data = match (frame, &topic) {
                (WsMessage::Text(text), None) => {
                    let item: BatchMessage = serde_json::from_str(text.as_str())
                        .map_err(|e| ApiError::bad_request(format!("invalid JSON frame: {e}")))?;
                    let message = batch_message(&shoal, item, None)?;
                    caller.require(Resource::Topic, &message.topic, Access::Write)?;
                    return Ok(Some(message));
                }
                (WsMessage::Text(text), Some(_)) => Bytes::from(text),
                (WsMessage::Binary(bytes), Some(_)) => bytes,
                (WsMessage::Binary(_), None) => {
                    return Err(ApiError::bad_request("binary frames need ?topic="))
                }
                _ => return Ok(None),
            };
            if data.len() > shoal.settings.max_message_bytes {
                return Err(too_large(data.len(), shoal.settings.max_message_bytes));
            }
            let mut message = Message {
                id: new_id(),
                topic: topic.clone().unwrap_or_default(),
                source: source.clone(),
                kind: "shoal.message".into(),
                time: time.to_string(),
                subject: None,
                content_type: content_type.clone(),
                traceparent: None,
                headers: Vec::new(),
                data: data.to_vec(),
            };
            finish(&mut message)?;
            Ok(Some(message))
        };
    // Each frame's topic is checked as it comes, against the caller's
    // policies as they were at the last check: every second the token is
    // authenticated again, and the socket is closed once it may no longer
    // publish to `topic` (or, without one, anywhere).
    let mut recheck = tokio::time::interval(crate::api::auth::REVOCATION_CHECK);
    recheck.tick().await;
    loop {
        let first = tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(frame)) => frame,
                _ => return,
            },
            _ = recheck.tick(), if shoal.acl.enabled() => {
                let may_publish = |identity: &Identity| match &topic {
                    Some(topic) => identity.allows(Resource::Topic, topic, Access::Write),
                    None => identity.allows_some(Resource::Topic, Access::Write),
                };
                match caller.identity_now(&shoal.acl) {
                    Some(identity) if may_publish(&identity) => {
                        caller.identity = identity;
                        continue;
                    }
                    _ => {
                        let reason = "the token was revoked or may no longer publish here";
                        send_close(&mut socket, limit, 1008, reason).await;
                        return;
                    }
                }
            }
        };
        if matches!(first, WsMessage::Close(_)) {
            return;
        }
        // Take whatever else has already arrived, so a busy stream publishes in batches.
        let mut frames = vec![first];
        while frames.len() < WS_PUBLISH_BATCH {
            match socket.recv().now_or_never() {
                Some(Some(Ok(frame))) => frames.push(frame),
                _ => break,
            }
        }
        let mut messages = Vec::with_capacity(frames.len());
        let mut refused = None;
        let now = rfc3339_now();
        for frame in frames {
            match to_message(&caller, frame, &now) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => {}
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        // Frames before a bad one are published: the client sent them first.
        if !messages.is_empty() {
            if let Err(e) = shoal.messaging.publish(messages).await {
                // 1013 "try again later": the disk is nearly full.
                let code = match e {
                    shoal_actors::MessagingError::NoSpace => 1013,
                    _ => 1011,
                };
                send_close(&mut socket, limit, code, &e.to_string()).await;
                return;
            }
        }
        if let Some(e) = refused {
            send_close(&mut socket, limit, 1008, &e.message).await;
            return;
        }
    }
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
