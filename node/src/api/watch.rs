//! Watches over Server-Sent Events and long-poll (the watcher itself is
//! `services::watch::Watcher`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shoal_storage::kv::MAX_KEY_BYTES;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::{ApiError, ApiResult};
use super::extract::{validate_key, Params};
use super::kv::with_revision;
use super::model::batch_json;
use crate::services::shoal::Shoal;
use crate::services::watch::Watcher;
use crate::services::watch_hub::{Filter, SharedBatch};

/// Longest long-poll wait.
const MAX_POLL_MS: u64 = 300_000;

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
    let data = shared.rendered(|batch| batch_json(batch).to_string());
    Event::default()
        .event("change")
        .id(shared.batch.revision.to_string())
        .data(data)
}

/// `GET /v1/watch`: an SSE stream of change batches.
pub async fn sse(
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
                        vec![Event::default().event("error").data(body.to_string())],
                        true,
                    )
                }
            };
            let mut client_gone = false;
            for event in events {
                if sender.send(Ok(event)).await.is_err() {
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
    let stream = Sse::new(ReceiverStream::new(receiver)).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keepalive"),
    );
    Ok(stream.into_response())
}

/// `GET /v1/watch/poll`: wait for the next batches, or time out empty.
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
    let batches: Vec<_> = batches
        .iter()
        .map(|shared| batch_json(&shared.batch))
        .collect();
    // The reply is complete up to next_revision - 1.
    let through = watcher.next_revision().saturating_sub(1);
    Ok(with_revision(
        through,
        json!({"batches": batches, "next_revision": watcher.next_revision()}),
    ))
}
