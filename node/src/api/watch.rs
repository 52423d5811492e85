//! Watches over Server-Sent Events and long-poll (the watcher itself is
//! `services::watch::Watcher`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use shoal_acl::{Access, Resource};
use shoal_storage::kv::MAX_KEY_BYTES;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{validate_key, Params};
use super::kv::with_revision;
use super::model::{ChangeBatchJson, SseEvent};
use crate::services::shoal::Shoal;
use crate::services::watch::Watcher;
use crate::services::watch_hub::{Filter, SharedBatch};
use crate::write_deadline::within;

/// Longest long-poll wait.
const MAX_POLL_MS: u64 = 300_000;

/// `GET /v1/watch/poll`: the change batches found, and where to continue.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "batches": [{"revision": 12, "events": [{"type": "put", "kv": {"key": "a", "value": "YmFy", "create_revision": 12, "mod_revision": 12, "version": 1, "lease": 0}}]}],
    "next_revision": 13
}))]
pub struct PollResponse {
    /// In revision order; empty after a timeout.
    #[schema(max_items = 10000)]
    pub batches: Vec<ChangeBatchJson>,
    /// Pass as `from_revision` to continue.
    pub next_revision: u64,
}

fn filter(params: &Params) -> ApiResult<Filter> {
    match (params.string("key"), params.string("prefix")) {
        (Some(key), None) => {
            validate_key(key)?;
            Ok(Filter::Key(key.to_string()))
        }
        (None, Some(prefix)) => {
            if prefix.len() > MAX_KEY_BYTES {
                return Err(ApiError::bad_request(format!(
                    "prefix is longer than {MAX_KEY_BYTES} bytes"
                )));
            }
            Ok(Filter::Prefix(prefix.to_string()))
        }
        _ => Err(ApiError::bad_request(
            "give exactly one of key=K or prefix=P (prefix= watches every key)",
        )),
    }
}

fn change_event(shared: &SharedBatch) -> Event {
    let data = shared
        .rendered(|batch| serde_json::to_string(&ChangeBatchJson::from(batch)).unwrap_or_default());
    // Built directly rather than through `SseEvent`: the rendered data is
    // shared by every watcher of the batch and is not copied once more.
    Event::default()
        .event("change")
        .id(shared.batch.revision.to_string())
        .data(data)
}

/// `GET /v1/watch`: an SSE stream of change batches.
#[utoipa::path(
    get,
    path = "/v1/watch",
    tag = "watch",
    operation_id = "watch",
    summary = "Watch changes (Server-Sent Events)",
    description = "A `text/event-stream` of change batches for one key or a prefix, in revision order, each change exactly once. Each batch (one revision) is an SSE event with `event: change`, `id: <revision>`, `data: <ChangeBatch JSON>`. A reconnecting client sends `Last-Event-ID: <revision>` and resumes at revision + 1 (overrides `from_revision`). A comment line `: keepalive` is sent every 15 s. If the stream fails after it started (e.g. the watcher fell behind the compaction point), a final `event: error` with `data: {\"error\": {\"code\", \"message\", ...}}` (the same body as the error answer; for `compacted` it has `compact_revision`) is sent and the stream ends. Without `from_revision` (and `Last-Event-ID`), the start revision is confirmed by read-index first (503 `unavailable` / 504 `timeout` without a quorum), unless `consistency=stale`; the changes themselves are read from this node's local state. A client that takes nothing for `--write-timeout-ms` (10 s) is disconnected (over HTTP/2, its stream ends) and the watch dropped.",
    params(
        ("key" = Option<String>, Query, description = "Watch exactly this key. Give exactly one of `key` and `prefix`. Invalid key → 400 `invalid_key`; longer than 1024 bytes → 413 `key_too_large`."),
        ("prefix" = Option<String>, Query, description = "Watch every key starting with this prefix; `prefix=` (empty) watches every key. Give exactly one of `key` and `prefix`. Longer than 1024 bytes → 400 `bad_request`."),
        ("from_revision" = Option<u64>, Query, description = "Deliver changes with revision ≥ this. Default: the cluster's current revision + 1 (only new changes), confirmed by read-index first (with `consistency=stale`: this node's revision + 1). Older than the compaction point → 410 `compacted`. Not a non-negative integer → 400 `invalid_revision`."),
        ("Last-Event-ID" = Option<u64>, Header, description = "Revision of the last event received; the stream resumes at this + 1 and overrides `from_revision`. Not an integer → 400 `invalid_revision`."),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default): confirm leadership with a quorum first (a non-leader answers 503 `unavailable`). `stale`: serve this node's local state. Anything else → 400 `bad_request`."),
    ),
    responses(
        (status = 200, description = "The event stream. Events: `change` (id = revision, data = ChangeBatch JSON), `error` (data = Error JSON, then the stream ends); `: keepalive` comments every 15 s. SSE stream; each `change` event's data is a ChangeBatch (see #/components/schemas/ChangeBatch).", body = SseEvent, content_type = "text/event-stream", example = json!("event: change\nid: 12\ndata: {\"revision\":12,\"events\":[{\"type\":\"put\",\"kv\":{\"key\":\"a\",\"value\":\"YmFy\",\"create_revision\":12,\"mod_revision\":12,\"version\":1,\"lease\":0}}]}\n\n: keepalive\n\n")),
        (status = 400, description = "`bad_request`: neither or both of `key`/`prefix`, `prefix` longer than 1024 bytes, malformed query string. `invalid_key`: bad `key`. `invalid_revision`: bad `from_revision` or `Last-Event-ID`. Error codes: `bad_request`, `invalid_key`, `invalid_revision`.", body = crate::api::error::ErrorBody),
        (status = 410, description = "The start revision is older than the compaction point; `error.compact_revision` is the oldest available. Re-list (`GET /v1/kv?prefix=...`) and watch from the first page's revision + 1 (each page is read at its own revision). Error codes: `compacted`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "`key` is longer than 1024 bytes. Error codes: `key_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn sse(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let filter = filter(&params)?;
    let mut from = params.revision("from_revision")?;
    if let Some(last) = headers.get("last-event-id") {
        let last: u64 = last
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| ApiError::invalid_revision("Last-Event-ID must be a revision number"))?;
        from = Some(last + 1);
    }
    let stale = params.stale()?;
    let watched = filter.clone();
    let revoked = caller.revoked(shoal.acl.clone(), move |identity| match &watched {
        Filter::Key(key) => identity.allows(Resource::Kv, key, Access::Read),
        Filter::Prefix(prefix) => identity.allows_under(Resource::Kv, prefix, Access::Read),
    });
    let limit = shoal.settings.write_timeout();
    let mut watcher = Watcher::start(shoal, filter, from, stale, 256).await?;
    let (sender, receiver) = mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::spawn(async move {
        metrics::gauge!("shoal_watch_streams").increment(1.0);
        loop {
            // Stop as soon as the client goes away, not only at the next change.
            let next = tokio::select! {
                next = watcher.next_batches(None) => next,
                _ = sender.closed() => break,
            };
            let (events, last) = match next {
                Ok(batches) => (
                    batches.iter().map(|b| change_event(b)).collect::<Vec<_>>(),
                    false,
                ),
                Err(e) => {
                    // Mid-stream failure (e.g. compacted while lagging): say why, then end.
                    let body = ApiError::from(e).body();
                    (
                        vec![SseEvent {
                            event: Some("error".into()),
                            data: Some(body.to_string()),
                            ..SseEvent::default()
                        }
                        .into()],
                        true,
                    )
                }
            };
            let mut client_gone = false;
            for event in events {
                if !within(limit, sender.send(Ok(event))).await {
                    client_gone = true;
                    break;
                }
            }
            if client_gone || last {
                break;
            }
        }
        metrics::gauge!("shoal_watch_streams").decrement(1.0);
    });
    let events = ReceiverStream::new(receiver).take_until(revoked);
    let stream = Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keepalive"),
    );
    Ok(stream.into_response())
}

/// `GET /v1/watch/poll`: wait for the next batches, or time out empty.
#[utoipa::path(
    get,
    path = "/v1/watch/poll",
    tag = "watch",
    operation_id = "watchPoll",
    summary = "Watch changes (long-poll)",
    description = "Returns as soon as at least one matching change batch exists at or after `from_revision`, or after `timeout_ms` with `batches: []`. Resume with `from_revision=next_revision`. Without `from_revision`, the start revision is confirmed by read-index first (503 `unavailable` / 504 `timeout` without a quorum), unless `consistency=stale`; the changes themselves are read from this node's local state.",
    params(
        ("key" = Option<String>, Query, description = "Watch exactly this key. Give exactly one of `key` and `prefix`. Invalid key → 400 `invalid_key`; longer than 1024 bytes → 413 `key_too_large`."),
        ("prefix" = Option<String>, Query, description = "Watch every key starting with this prefix; `prefix=` (empty) watches every key. Give exactly one of `key` and `prefix`. Longer than 1024 bytes → 400 `bad_request`."),
        ("from_revision" = Option<u64>, Query, description = "Deliver changes with revision ≥ this. Default: the cluster's current revision + 1 (only new changes), confirmed by read-index first (with `consistency=stale`: this node's revision + 1). Older than the compaction point → 410 `compacted`. Not a non-negative integer → 400 `invalid_revision`."),
        ("timeout_ms" = Option<u64>, Query, description = "How long to wait for a change, in milliseconds; at most 300000 (5 min), default 30000. Over the limit or not an integer → 400 `bad_request`."),
        ("limit" = Option<u64>, Query, description = "Maximum number of batches returned, 1..10000 (default 1000). Out of range → 400 `bad_request`."),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default): confirm leadership with a quorum first (a non-leader answers 503 `unavailable`). `stale`: serve this node's local state. Anything else → 400 `bad_request`."),
    ),
    responses(
        (status = 200, description = "Batches (possibly none, after the timeout).", body = PollResponse, headers(("X-Shoal-Revision" = u64, description = "The current cluster revision (on successful responses that read or write the store)."))),
        (status = 400, description = "`bad_request`: neither or both of `key`/`prefix`, `prefix` longer than 1024 bytes, `timeout_ms` over 300000, `limit` outside 1..10000, malformed query string. `invalid_key`: bad `key`. `invalid_revision`: bad `from_revision`. Error codes: `bad_request`, `invalid_key`, `invalid_revision`.", body = crate::api::error::ErrorBody),
        (status = 410, description = "The start revision is older than the compaction point; `error.compact_revision` is the oldest available. Re-list (`GET /v1/kv?prefix=...`) and watch from the first page's revision + 1 (each page is read at its own revision). Error codes: `compacted`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "`key` is longer than 1024 bytes. Error codes: `key_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn poll(State(shoal): State<Arc<Shoal>>, params: Params) -> ApiResult<Response> {
    let filter = filter(&params)?;
    let from = params.revision("from_revision")?;
    let timeout_ms = params.number("timeout_ms")?.unwrap_or(30_000);
    if timeout_ms > MAX_POLL_MS {
        return Err(ApiError::bad_request(format!(
            "timeout_ms must be at most {MAX_POLL_MS}"
        )));
    }
    let limit = params.limit(1000, 10_000)?;
    let stale = params.stale()?;
    let mut watcher = Watcher::start(shoal, filter, from, stale, limit).await?;
    let batches = watcher
        .next_batches(Some(Duration::from_millis(timeout_ms)))
        .await?;
    let batches = batches
        .iter()
        .map(|shared| ChangeBatchJson::from(&shared.batch))
        .collect();
    // The reply is complete up to next_revision - 1.
    let through = watcher.next_revision().saturating_sub(1);
    Ok(with_revision(
        through,
        PollResponse {
            batches,
            next_revision: watcher.next_revision(),
        },
    ))
}
