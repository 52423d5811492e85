//! Logs and traces over HTTP: ingest into a stream, cluster-wide search,
//! aggregations, live tail (SSE), streams, and whole traces.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Map;
use shoal_acl::{Access, Resource};
use shoal_search::record::{self, format_nanos, now_nanos};
use shoal_search::{AggregateRequest, Hit, Kind, KindFilter, Record, SearchOrder, SearchRequest};

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorCode, ErrorDetail};
use super::extract::{Body, Params, PathText};
use super::AppState;
use crate::services::logs::{self, NodeReport};

/// Per-record errors listed in an ingest answer (all are counted).
const MAX_ERRORS_LISTED: usize = 100;

/// Descriptions shared by the GET and POST operations of one path.
const SEARCH_DESCRIPTION: &str = "Runs on every live member and merges the pages; members that do not answer are listed in `nodes.failed` and `partial` is true (the answer is still 200). POST takes the same parameters as a JSON object. Query cost limits: query at most 4096 bytes, limit at most 10 000.";

const AGGREGATE_DESCRIPTION: &str = "Histogram buckets are aligned to multiples of the interval since the epoch; the window defaults to the last hour and about 60 buckets. At most 10 000 buckets.";

mod answers;
mod parse;
pub mod sql;
pub mod tail;

pub use answers::*;
pub use parse::*;

/// Ingest `body` (NDJSON, a JSON array, or plain text lines) into `stream`.
#[utoipa::path(
    post,
    path = "/v1/logs/{stream}",
    tag = "logs",
    operation_id = "ingestLogs",
    summary = "Ingest log records into a stream",
    description = "Body: NDJSON (one JSON object per line), a JSON array of objects, or `text/plain` lines (one record each). Optional `Content-Encoding: gzip`. Recognised fields: timestamp/@timestamp/ts/time (RFC 3339 or epoch s/ms/us/ns; default now), level/severity/log.level, service/service.name/app, message/msg/body/log, trace_id, span_id, attributes (object); every other field becomes an attribute. Records are fsynced into the write-ahead log before the answer and searchable within --logs-commit-ms (1 s). Bad records are reported one by one and do not affect the others. Limits: body --logs-max-body-mb (32 MiB), 100 000 records, message 64 KiB (longer is cut), attributes 64 KiB, timestamps within retention and at most a day ahead.",
    params(
        ("stream" = String, Path, description = "1-64 of a-z, 0-9, '.', '_', '-', not starting with '.', '_' or '-'"),
    ),
    request_body(
        description = "The records: NDJSON, a JSON array of objects, or text lines (`text/plain`), optionally gzip-compressed (`Content-Encoding: gzip`).",
        content(
            (String = "application/x-ndjson"),
            (
                Vec<Object> = "application/json",
                example = json!([{"level": "info", "message": "order placed", "order_id": "A-17"}, {"level": "error", "message": "payment declined"}])
            ),
            (String = "text/plain"),
        )
    ),
    responses(
        (status = 200, description = "Stored (except the records listed in errors).", body = LogIngestResult),
        (status = 400, description = "Error codes: `invalid_stream`, `bad_request`, `too_many_streams` (the stream is new and the node holds `--logs-max-streams` streams).", body = crate::api::error::ErrorBody),
        (status = 413, description = "Error codes: `payload_too_large`, `too_many_records`.", body = crate::api::error::ErrorBody),
        (status = 415, description = "Error codes: `unsupported_encoding`.", body = crate::api::error::ErrorBody),
        (status = 429, description = "A cap is reached (WAL size, indexing memory or disk): retry later. Error code `busy`.", body = crate::api::error::ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn ingest(
    State(app): State<AppState>,
    PathText(stream): PathText,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    record::validate_stream(&stream).map_err(ApiError::from)?;
    // Refuse before parsing: under backpressure a refused batch must be cheap.
    app.shoal.logs.check_capacity().map_err(ApiError::from)?;
    let body = decompressed(&headers, &body, app.shoal.settings.logs_max_body_bytes)?;
    let plain = content_type(&headers).starts_with("text/plain");
    let default_service = stream.clone();
    let (records, mut errors) =
        tokio::task::spawn_blocking(move || parse_records(&body, plain, &default_service))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
    let positions: Vec<usize> = records.iter().map(|(position, _)| *position).collect();
    let records: Vec<Record> = records.into_iter().map(|(_, record)| record).collect();
    let outcome = app
        .shoal
        .logs
        .ingest(&stream, records)
        .await
        .map_err(ApiError::from)?;
    for (index, reason) in outcome.rejected {
        errors.push((positions.get(index).copied().unwrap_or(index), reason));
    }
    errors.sort_by_key(|(position, _)| *position);
    let rejected = errors.len();
    let errors = errors
        .into_iter()
        .take(MAX_ERRORS_LISTED)
        .map(|(index, error)| LogIngestError { index, error })
        .collect();
    Ok(Json(LogIngestResult {
        stream,
        accepted: outcome.accepted,
        rejected,
        errors,
    })
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/logs/search",
    tag = "logs",
    operation_id = "searchLogs",
    summary = "Search logs and spans on every node",
    description = SEARCH_DESCRIPTION,
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
        ("order" = Option<String>, Query, description = "newest (default) or oldest"),
        ("limit" = Option<u64>, Query, description = "1..10000, default 100"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of hits.", body = LogSearchResult),
        (status = 400, description = "Error codes: `invalid_query`, `invalid_stream`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "The body is over the request body limit. Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn search(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<LogSearchResult>> {
    run_search(app, caller, params, body).await
}

#[utoipa::path(
    post,
    path = "/v1/logs/search",
    tag = "logs",
    operation_id = "searchLogsPost",
    summary = "Search logs and spans on every node",
    description = SEARCH_DESCRIPTION,
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
        ("order" = Option<String>, Query, description = "newest (default) or oldest"),
        ("limit" = Option<u64>, Query, description = "1..10000, default 100"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    request_body(
        content = Option<Object>,
        description = "The query parameters as a JSON object (they win over the query string); lists as arrays or comma-separated strings.",
        example = json!({"q": "level:error AND payment", "stream": ["orders-service"], "since": "1h", "limit": 50})
    ),
    responses(
        (status = 200, description = "A page of hits.", body = LogSearchResult),
        (status = 400, description = "Error codes: `invalid_query`, `invalid_stream`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "The body is over the request body limit. Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn search_post(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<LogSearchResult>> {
    run_search(app, caller, params, body).await
}

async fn run_search(
    app: AppState,
    caller: Caller,
    params: Params,
    body: axum::body::Bytes,
) -> ApiResult<Json<LogSearchResult>> {
    let started = std::time::Instant::now();
    let params = params_of(params, &body)?;
    let mut request = search_request(&params, now_nanos())?;
    readable_streams(&app, &caller, &mut request.streams).await?;
    let limit = request.limit;
    let (hits, report) = logs::search(&app.shoal, request).await?;
    let next_cursor = (hits.len() == limit)
        .then(|| hits.last().map(|h| h.cursor().encode()))
        .flatten();
    Ok(Json(LogSearchResult {
        hits: hits.iter().map(LogHit::from).collect(),
        count: hits.len(),
        next_cursor,
        took_ms: started.elapsed().as_millis() as u64,
        partial: report.partial(),
        nodes: NodeReportBody::from(&report),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/logs/aggregate",
    tag = "logs",
    operation_id = "aggregateLogs",
    summary = "Counts over time and top values, cluster-wide",
    description = AGGREGATE_DESCRIPTION,
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
        ("interval" = Option<String>, Query, description = "Bucket width (1m, 1h); histogram=false for none"),
        ("top" = Option<String>, Query, description = "Fields to count: level, service, status, kind, name (comma-separated)"),
        ("top_n" = Option<u64>, Query, description = "Values per field, default 10"),
    ),
    responses(
        (status = 200, description = "Counts.", body = LogAggregation),
        (status = 400, description = "Error codes: `invalid_query`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "The body is over the request body limit. Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn aggregate(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<LogAggregation>> {
    run_aggregate(app, caller, params, body).await
}

#[utoipa::path(
    post,
    path = "/v1/logs/aggregate",
    tag = "logs",
    operation_id = "aggregateLogsPost",
    summary = "Counts over time and top values, cluster-wide",
    description = AGGREGATE_DESCRIPTION,
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
        ("interval" = Option<String>, Query, description = "Bucket width (1m, 1h); histogram=false for none"),
        ("top" = Option<String>, Query, description = "Fields to count: level, service, status, kind, name (comma-separated)"),
        ("top_n" = Option<u64>, Query, description = "Values per field, default 10"),
    ),
    request_body(
        content = Option<Object>,
        description = "The query parameters as a JSON object (they win over the query string); lists as arrays or comma-separated strings.",
        example = json!({"q": "level:error", "since": "6h", "interval": "10m", "top": ["service", "level"]})
    ),
    responses(
        (status = 200, description = "Counts.", body = LogAggregation),
        (status = 400, description = "Error codes: `invalid_query`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "The body is over the request body limit. Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn aggregate_post(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<LogAggregation>> {
    run_aggregate(app, caller, params, body).await
}

async fn run_aggregate(
    app: AppState,
    caller: Caller,
    params: Params,
    body: axum::body::Bytes,
) -> ApiResult<Json<LogAggregation>> {
    let started = std::time::Instant::now();
    let params = params_of(params, &body)?;
    let now = now_nanos();
    let mut filter = search_request(&params, now)?;
    readable_streams(&app, &caller, &mut filter.streams).await?;
    // Dashboards ask for a window; default to the last hour.
    let since = *filter.since.get_or_insert(now - 3_600_000_000_000);
    let until = *filter.until.get_or_insert(now);
    let interval = match params.string("interval") {
        Some(text) => Some(parse_duration(text)?),
        None if params.string("histogram") == Some("false") => None,
        // About 60 buckets over the window, at least one second each.
        None => Some(((until - since) / 60).max(1_000_000_000)),
    };
    let top = params.list("top");
    let top_n = params.number("top_n")?.unwrap_or(10).clamp(1, 1000) as usize;
    let (aggregation, report) = logs::aggregate(
        &app.shoal,
        AggregateRequest {
            filter,
            interval,
            top: top.clone(),
            top_n,
        },
    )
    .await?;
    let mut histogram = Vec::new();
    if let Some(interval) = interval {
        // A window ending near i64::MAX must not step past it.
        let mut next = Some(since.div_euclid(interval) * interval);
        while let Some(bucket) = next.filter(|b| *b < until) {
            let count = aggregation.histogram.get(&bucket).copied().unwrap_or(0);
            histogram.push(LogHistogramBucket {
                ts: format_nanos(bucket),
                ts_nanos: bucket,
                count,
            });
            next = bucket.checked_add(interval);
        }
    }
    let top = top
        .iter()
        .map(|field| {
            let values = aggregation
                .top_values(field, top_n)
                .into_iter()
                .map(|b| LogTopValue {
                    value: b.key,
                    count: b.count,
                })
                .collect();
            (field.clone(), values)
        })
        .collect();
    Ok(Json(LogAggregation {
        total: aggregation.total,
        since: format_nanos(since),
        until: format_nanos(until),
        interval_nanos: interval,
        histogram,
        top,
        took_ms: started.elapsed().as_millis() as u64,
        partial: report.partial(),
        nodes: NodeReportBody::from(&report),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/logs/streams",
    tag = "logs",
    operation_id = "listStreams",
    summary = "Streams on every node: records, bytes, day partitions",
    responses(
        (status = 200, description = "Streams.", body = LogStreams),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn streams(caller: Caller, State(app): State<AppState>) -> ApiResult<Json<LogStreams>> {
    let (mut per_node, report) = logs::streams(&app.shoal).await?;
    for streams in per_node.values_mut() {
        streams.retain(|stream| caller.may(Resource::Logs, &stream.name, Access::Read));
    }
    let mut totals: BTreeMap<String, (u64, u64, usize, Vec<u64>)> = BTreeMap::new();
    for (node, streams) in &per_node {
        for stream in streams {
            let total = totals.entry(stream.name.clone()).or_default();
            total.0 += stream.docs;
            total.1 += stream.bytes;
            total.2 += stream.partitions;
            total.3.push(*node);
        }
    }
    let streams = totals
        .into_iter()
        .map(|(name, (docs, bytes, partitions, nodes))| LogStream {
            name,
            docs,
            bytes,
            partitions,
            nodes,
        })
        .collect();
    let per_node = per_node
        .iter()
        .map(|(node, streams)| (*node, streams.iter().map(LogStreamInfo::from).collect()))
        .collect();
    Ok(Json(LogStreams {
        streams,
        per_node,
        partial: report.partial(),
        nodes: NodeReportBody::from(&report),
    }))
}

/// A trace id from a path: 1 to 32 hex digits, lowercased; else 400.
pub fn trace_id_param(raw: &str) -> ApiResult<String> {
    record::normalize_hex_id(raw, "trace id").map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Every span and log record of one trace, from every node.
#[utoipa::path(
    get,
    path = "/v1/traces/{trace_id}",
    tag = "traces",
    operation_id = "getTrace",
    summary = "A whole trace: its spans and the log records with its trace id, from every node",
    params(
        ("trace_id" = String, Path, description = "32 hex digits (1-32 accepted)"),
    ),
    responses(
        (status = 200, description = "The trace.", body = LogTrace),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "No node holds a span or log record of this trace; the answer also carries `partial` and `nodes` (a member that did not answer may hold it). Error codes: `trace_not_found`.", body = LogTraceNotFound),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn trace(
    caller: Caller,
    State(app): State<AppState>,
    PathText(trace_id): PathText,
) -> ApiResult<Response> {
    let trace_id = trace_id_param(&trace_id)?;
    let (hits, report) = fetch_traces(&app, &caller, vec![trace_id.clone()]).await?;
    if hits.is_empty() {
        let error = ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::TraceNotFound,
            format!("no spans or logs of trace {trace_id}"),
        );
        return Ok((
            error.status,
            Json(LogTraceNotFound {
                error: ErrorDetail {
                    code: error.code,
                    message: error.message,
                    extra: Map::new(),
                },
                partial: report.partial(),
                nodes: NodeReportBody::from(&report),
            }),
        )
            .into_response());
    }
    let (spans, logs): (Vec<&Hit>, Vec<&Hit>) =
        hits.iter().partition(|h| h.record.kind == Kind::Span);
    Ok(Json(LogTrace {
        trace_id,
        spans: spans.into_iter().map(LogHit::from).collect(),
        logs: logs.into_iter().map(LogHit::from).collect(),
        partial: report.partial(),
        nodes: NodeReportBody::from(&report),
    })
    .into_response())
}

/// All records (spans and logs) of these traces the caller may read,
/// oldest first.
pub async fn fetch_traces(
    app: &AppState,
    caller: &Caller,
    trace_ids: Vec<String>,
) -> ApiResult<(Vec<Hit>, NodeReport)> {
    let mut request = SearchRequest {
        kind: KindFilter::Any,
        trace_ids,
        order: SearchOrder::Oldest,
        limit: shoal_search::MAX_LIMIT,
        ..Default::default()
    };
    readable_streams(app, caller, &mut request.streams).await?;
    Ok(logs::search(&app.shoal, request).await?)
}

/// Narrows a request's streams (empty: all) to those the caller may read.
/// A caller that may read every stream is not narrowed; one that names
/// streams must be allowed to read each (403); one that names none reads
/// the streams it may read among those the cluster holds now (a live tail
/// keeps that list: streams created later are not in it).
pub async fn readable_streams(
    app: &AppState,
    caller: &Caller,
    streams: &mut Vec<String>,
) -> ApiResult<()> {
    if caller
        .identity
        .allows_under(Resource::Logs, "", Access::Read)
    {
        return Ok(());
    }
    if !streams.is_empty() {
        for stream in streams.iter() {
            caller.require(Resource::Logs, stream, Access::Read)?;
        }
        return Ok(());
    }
    let (per_node, _) = logs::streams(&app.shoal).await?;
    let mut readable: BTreeSet<String> = per_node
        .into_values()
        .flatten()
        .map(|stream| stream.name)
        .filter(|name| caller.may(Resource::Logs, name, Access::Read))
        .collect();
    if readable.is_empty() {
        readable.insert(shoal_search::NO_STREAM.to_string());
    }
    *streams = readable.into_iter().collect();
    Ok(())
}
