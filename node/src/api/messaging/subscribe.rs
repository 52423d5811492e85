//! Subscribers: Server-Sent Events and WebSocket streams of a topic
//! pattern, cut off when they fall behind or their token stops allowing
//! them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shoal_acl::{Access, Identity, Resource};
use shoal_actors::message::Shared;
use shoal_actors::queue::{BoundedQueue, Overflow};
use shoal_actors::router::Subscription;
use shoal_actors::subject::Pattern;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::super::auth::Caller;
use super::super::error::{ApiError, ApiResult, ErrorBody};
use super::super::extract::{Params, Upgrade};
use super::super::model::SseEvent;
use super::{invalid_topic, send_close};
use crate::services::shoal::Shoal;
use crate::write_deadline::within;

/// Largest frame or message a WebSocket subscriber may send.
const SUBSCRIBER_FRAME_BYTES: usize = 16 << 10;
/// Subscriber buffer: default and largest allowed.
const DEFAULT_BUFFER: u64 = 1024;
const MAX_BUFFER: u64 = 65_536;
/// Messages written to a subscriber stream per wake-up.
const STREAM_BATCH: usize = 256;

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
                WsMessage::Binary(shared.payload_bytes())
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
