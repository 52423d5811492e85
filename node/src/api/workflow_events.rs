//! The workflow event inbox: events sent here are stored in Raft before
//! the answer and applied to the instances listening for them (see
//! `services::workflow_events`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use super::extract::{Body, Params, PathText};
use super::messaging::{message_of_request, RawPayload};
use crate::services::shoal::Shoal;
use crate::services::workflow_events::{self, Accepted, EventError, Waiting};

/// Most events one list answers (`limit`).
const MAX_PAGE: u64 = 1000;

impl From<EventError> for ApiError {
    fn from(e: EventError) -> ApiError {
        let message = e.to_string();
        match e {
            EventError::Kv(e) => ApiError::from(e),
            EventError::TooLarge { size, limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                message,
            )
            .with("size", json!(size))
            .with("limit", json!(limit)),
            EventError::TooMany { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyEvents,
                message,
            )
            .with("limit", json!(limit)),
            EventError::Unreadable { .. } => ApiError::internal(message),
        }
    }
}

/// The answer to an event sent to the inbox.
#[derive(Serialize, ToSchema)]
pub struct EventReceipt {
    /// The event's id (its `ce-id`, or one generated).
    pub id: String,
    /// The topic it names.
    pub topic: String,
    /// True when an event with this id was waiting already: nothing changed.
    pub duplicate: bool,
    /// The KV revision it was stored at.
    pub revision: u64,
}

/// `POST /v1/workflows/events/{topic}`.
#[utoipa::path(
    post,
    path = "/v1/workflows/events/{topic}",
    tag = "workflows",
    operation_id = "sendWorkflowEvent",
    summary = "Send an event to workflow instances, durably",
    description = "The request is that of `POST /v1/topics/{topic}` (the body is the data; Content-Type, `ce-id`, `ce-source`, `ce-type`, `ce-subject`, `ce-time`, other `ce-*` headers and `traceparent` make the CloudEvent), but the event is not published to subscribers: it is stored in Raft before the answer, then the leader applies it to every instance listening for it and starts the instances of schedules that start on it, and deletes it. An event no instance took waits, and is taken by the first instances that begin to listen for it, until --workflow-event-retention (default 1h) has passed. Sending again an id that waits changes nothing (200, `duplicate`); an instance applies an event id at most once. At most 10 000 events wait; past that, 429 `too_many_events`. The event, stored, must fit in --max-value-bytes.",
    params(
        ("topic" = String, Path, description = "Dot-separated topic, no wildcards, at most 256 bytes: the event's `topic`"),
    ),
    request_body(
        content = inline(RawPayload),
        content_type = "*/*",
        description = "The event's data, any bytes; JSON when Content-Type says so.",
    ),
    responses(
        (status = 200, description = "An event with this id waits already; nothing changed.", body = EventReceipt),
        (status = 202, description = "Stored; instances listening for it take it.", body = EventReceipt),
        (status = 400, description = "Malformed request. Error codes: `invalid_topic`, `bad_request`.", body = ErrorBody),
        (status = 413, description = "The event is too large. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 429, description = "The inbox holds 10 000 events. Error codes: `too_many_events`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn send_event(
    State(shoal): State<Arc<Shoal>>,
    PathText(topic): PathText,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<EventReceipt>)> {
    let message = message_of_request(&shoal, topic, &headers, &body)?;
    let (status, duplicate, revision) =
        match workflow_events::accept(&shoal, message.envelope()).await? {
            Accepted::Stored(revision) => (StatusCode::ACCEPTED, false, revision),
            Accepted::Duplicate(revision) => (StatusCode::OK, true, revision),
        };
    Ok((
        status,
        Json(EventReceipt {
            id: message.id,
            topic: message.topic,
            duplicate,
            revision,
        }),
    ))
}

/// An event waiting in the inbox.
#[derive(Serialize, ToSchema)]
pub struct WaitingEvent {
    /// When it was accepted (Unix milliseconds).
    pub accepted_ms: u64,
    /// The CloudEvent, as listening instances see it.
    #[schema(value_type = Object)]
    pub event: Value,
}

/// A page of waiting events.
#[derive(Serialize, ToSchema)]
pub struct WaitingEvents {
    pub events: Vec<WaitingEvent>,
    /// The id to pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/workflows/events",
    tag = "workflows",
    operation_id = "listWorkflowEvents",
    summary = "List the events waiting in the workflow event inbox",
    description = "Events sent to `POST /v1/workflows/events/{topic}` that no instance has taken yet, in id order; linearizable.",
    params(
        ("after" = Option<String>, Query, description = "Continue after this event id (the previous page's `next`)."),
        ("limit" = Option<u64>, Query, description = "Page size, 1-1000 (default 100)."),
    ),
    responses(
        (status = 200, description = "The waiting events.", body = WaitingEvents),
        (status = 400, description = "A bad limit. Error codes: `bad_request`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn list_events(
    State(shoal): State<Arc<Shoal>>,
    params: Params,
) -> ApiResult<Json<WaitingEvents>> {
    let limit = params.limit(100, MAX_PAGE)?;
    let after = params.string("after").map(str::to_string);
    let (waiting, more) = workflow_events::list(&shoal, after, limit).await?;
    let next = more
        .then(|| waiting.last().and_then(|w| w.event["id"].as_str()))
        .flatten()
        .map(str::to_string);
    Ok(Json(WaitingEvents {
        events: waiting
            .into_iter()
            .map(|Waiting { accepted_ms, event }| WaitingEvent { accepted_ms, event })
            .collect(),
        next,
    }))
}
