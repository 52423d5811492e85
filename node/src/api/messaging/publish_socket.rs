//! `GET /v1/publish/ws`: a WebSocket publishing stream.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket};
use axum::extract::State;
use axum::response::Response;
use futures::FutureExt;
use shoal_acl::{Access, Identity, Resource};
use shoal_actors::message::{new_id, rfc3339_now, Message};
use shoal_actors::subject::validate_topic;

use super::super::auth::Caller;
use super::super::error::{ApiError, ApiResult, ErrorBody};
use super::super::extract::{Params, Upgrade};
use super::{
    batch_message, finish, invalid_topic, node_source, send_close, too_large, BatchMessage,
};
use crate::services::shoal::Shoal;

/// WebSocket frames gathered into one publish.
const WS_PUBLISH_BATCH: usize = 256;

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
                // 1001 "going away": the node is shutting down; 1013 "try
                // again later": the disk is nearly full.
                let code = match e {
                    shoal_actors::MessagingError::ShuttingDown => 1001,
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
