//! Watches over Server-Sent Events and long-poll.
//!
//! A watcher first registers with the hub, then reads the stored history
//! from its start revision, then takes live batches, skipping any it has
//! already read. Registering before reading closes the gap between the two;
//! the revision check removes the overlap; so every change is delivered once,
//! in order. If the hub drops a slow watcher, it reads history again from
//! where it stopped.

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
use crate::service::Shoal;
use crate::watch::{Filter, Registration, SharedBatch};

/// Revisions scanned per history read, to bound the work of one read.
const HISTORY_SCAN: usize = 10_000;
/// Longest long-poll wait.
const MAX_POLL_MS: u64 = 300_000;

pub struct Watcher {
    shoal: Arc<Shoal>,
    filter: Filter,
    /// The next revision to deliver.
    next: u64,
    max_batches: usize,
    registration: Option<Registration>,
    /// Stored history may hold matching changes not yet delivered.
    behind: bool,
}

impl Watcher {
    /// A watcher from `from` (default: only changes after now); fails with
    /// `compacted` if `from` is older than the retained history. "Now" is
    /// the cluster's revision (read-index, as for a linearizable read), not
    /// this node's possibly lagging one, unless `stale` is asked for.
    pub async fn start(
        shoal: Arc<Shoal>,
        filter: Filter,
        from: Option<u64>,
        stale: bool,
        max_batches: usize,
    ) -> ApiResult<Watcher> {
        if from.is_none() {
            shoal.read_barrier(stale).await?;
        }
        let counters = shoal.read(|store| store.counters()).await?;
        let next = from.unwrap_or(counters.revision + 1);
        if next < counters.compact_revision {
            return Err(ApiError::compacted(next, counters.compact_revision));
        }
        Ok(Watcher {
            shoal,
            filter,
            next,
            max_batches,
            registration: None,
            behind: true,
        })
    }

    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The next batches in order: at least one, or none if `wait` elapsed.
    pub async fn next_batches(
        &mut self,
        wait: Option<Duration>,
    ) -> ApiResult<Vec<Arc<SharedBatch>>> {
        let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
        loop {
            if self.registration.is_none() {
                self.registration = Some(self.shoal.hub.register(self.filter.clone()));
                self.behind = true;
            }
            if self.behind {
                let (from, filter, max) = (self.next, self.filter.clone(), self.max_batches);
                let changes = self
                    .shoal
                    .read(move |store| {
                        store.kv_changes(from, &|key| filter.matches(key), max, HISTORY_SCAN)
                    })
                    .await?;
                if from < changes.counters.compact_revision {
                    return Err(ApiError::compacted(from, changes.counters.compact_revision));
                }
                self.next = changes.next_revision;
                self.behind = changes.next_revision <= changes.counters.revision;
                if !changes.batches.is_empty() {
                    return Ok(changes.batches.into_iter().map(SharedBatch::new).collect());
                }
                continue;
            }
            let Some(registration) = self.registration.as_mut() else {
                continue;
            };
            let received = match deadline {
                None => registration.receiver.recv().await,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, registration.receiver.recv()).await {
                        Ok(received) => received,
                        Err(_) => return Ok(Vec::new()),
                    }
                }
            };
            match received {
                // The hub dropped us (we were slow, or the state was replaced).
                None => self.registration = None,
                Some(shared) if shared.batch.revision < self.next => {}
                Some(batch) => {
                    self.next = batch.batch.revision + 1;
                    if let Some(selected) = self.filter.select(&batch) {
                        return Ok(vec![selected]);
                    }
                }
            }
        }
    }
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
                    let body = json!({"error": {"code": e.code, "message": e.message}});
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
