//! `GET /v1/logs/tail`: a live tail of log records over Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use shoal_acl::{Access, Resource};
use shoal_search::record::now_nanos;
use shoal_search::{Hit, SearchOrder};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::super::auth::Caller;
use super::super::error::{ApiError, ApiResult};
use super::super::extract::Params;
use super::super::model::SseEvent;
use super::super::AppState;
use super::{readable_streams, search_request, LogHit};
use crate::services::logs;
use crate::write_deadline::within;

/// How often a live tail polls the cluster.
const TAIL_POLL: Duration = Duration::from_millis(500);
/// Most records one tail poll sends.
const TAIL_BATCH: usize = 1000;

/// Live tail (SSE): records that become searchable after the request,
/// as `record` events, oldest first; `backlog=N` first sends the newest N.
#[utoipa::path(
    get,
    path = "/v1/logs/tail",
    tag = "logs",
    operation_id = "tailLogs",
    summary = "Live tail (Server-Sent Events)",
    description = "Sends `record` events (data: a LogHit) for matching records that become searchable after the request, from every node, polled every 500 ms. backlog=N first sends the N newest matching records. A client that takes nothing for `--write-timeout-ms` (10 s) is disconnected (over HTTP/2, its stream ends) and the tail stops.",
    params(
        ("q" = Option<String>, Query, description = "Query: words (all must match), \"phrases\", AND/OR/NOT, parentheses, field:value on level, service, kind, trace_id, span_id, name, status, attributes.KEY (dotted keys are paths), ranges such as duration:[1000000 TO *] or ts:>N. Default field: message. At most 4096 bytes."),
        ("stream" = Option<String>, Query, description = "Streams to search, comma-separated (default all)"),
        ("kind" = Option<String>, Query, description = "log (default), span or any"),
        ("since" = Option<String>, Query, description = "Inclusive start: a duration ago (15m, 2h, 7d), RFC 3339, or Unix s/ms/us/ns"),
        ("until" = Option<String>, Query, description = "Exclusive end, same forms as since"),
        ("level" = Option<String>, Query, description = "Levels, comma-separated (trace, debug, info, warn, error, fatal)"),
        ("service" = Option<String>, Query, description = "Services, comma-separated"),
        ("trace_id" = Option<String>, Query, description = "Trace ids (hex), comma-separated"),
        ("operation" = Option<String>, Query, description = "Span names, comma-separated"),
        ("status" = Option<String>, Query, description = "Span statuses (unset, ok, error), comma-separated"),
        ("min_duration" = Option<String>, Query, description = "Spans at least this long (250ms, 2s, or nanoseconds)"),
        ("max_duration" = Option<String>, Query, description = "Spans at most this long"),
        ("backlog" = Option<u64>, Query, description = "Newest records to send first (0..1000)"),
    ),
    responses(
        (status = 200, description = "An event stream: `record` events whose data is a LogHit (JSON), `error` events whose data is a message (text) when a poll fails (the stream goes on); keep-alive comments.", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "Error codes: `invalid_query`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn tail(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
) -> ApiResult<Response> {
    let mut request = search_request(&params, now_nanos())?;
    readable_streams(&app, &caller, &mut request.streams).await?;
    let streams = request.streams.clone();
    let backlog = params.number("backlog")?.unwrap_or(0).min(1000) as usize;
    if backlog == 0 {
        // A query that does not parse must be refused now, with a 400, not
        // streamed as an error event every poll.
        let mut probe = request.clone();
        probe.limit = 1;
        app.shoal.logs.search(probe).await.map_err(ApiError::from)?;
    }
    let mut positions = logs::positions(&app.shoal).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(64);
    if backlog > 0 {
        let mut first = request.clone();
        first.limit = backlog;
        first.order = SearchOrder::Newest;
        let (mut hits, _) = logs::search(&app.shoal, first).await?;
        hits.reverse();
        for hit in &hits {
            let known = positions.entry(hit.node).or_default();
            *known = (*known).max(hit.seq);
            let _ = sender.try_send(record_event(hit));
        }
    }
    request.order = SearchOrder::Ingest;
    request.limit = TAIL_BATCH;
    request.after = None;
    let shoal = app.shoal.clone();
    let limit = shoal.settings.write_timeout();
    tokio::spawn(async move {
        metrics::gauge!("shoal_log_tail_streams").increment(1.0);
        async move {
            let mut ticker = tokio::time::interval(TAIL_POLL);
            loop {
                ticker.tick().await;
                if sender.is_closed() {
                    return;
                }
                request.seq_after = positions.clone();
                let (hits, report) = match logs::search(&shoal, request.clone()).await {
                    Ok(found) => found,
                    Err(e) => {
                        let error = Event::default()
                            .event("error")
                            .data(ApiError::from(e).message);
                        if !within(limit, sender.send(error)).await {
                            return;
                        }
                        continue;
                    }
                };
                for hit in &hits {
                    let known = positions.entry(hit.node).or_default();
                    *known = (*known).max(hit.seq);
                    if !within(limit, sender.send(record_event(hit))).await {
                        return;
                    }
                }
                // A member the tail had no position for (it joined or came back):
                // start it from where it is now.
                if report
                    .answered
                    .iter()
                    .any(|node| !positions.contains_key(node))
                {
                    if let Ok(now) = logs::positions(&shoal).await {
                        for (node, seq) in now {
                            positions.entry(node).or_insert(seq);
                        }
                    }
                }
            }
        }
        .await;
        metrics::gauge!("shoal_log_tail_streams").decrement(1.0);
    });
    let stream = futures::StreamExt::take_until(
        ReceiverStream::new(receiver).map(Ok::<Event, Infallible>),
        caller.revoked(app.shoal.acl.clone(), move |identity| {
            if streams.is_empty() {
                identity.allows_under(Resource::Logs, "", Access::Read)
            } else if streams == [shoal_search::NO_STREAM] {
                // Narrowed to nothing readable yet: open while it may read some.
                identity.allows_some(Resource::Logs, Access::Read)
            } else {
                streams
                    .iter()
                    .all(|stream| identity.allows(Resource::Logs, stream, Access::Read))
            }
        }),
    );
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn record_event(hit: &Hit) -> Event {
    SseEvent {
        event: Some("record".to_string()),
        data: Some(serde_json::to_string(&LogHit::from(hit)).unwrap_or_default()),
        ..SseEvent::default()
    }
    .into()
}
