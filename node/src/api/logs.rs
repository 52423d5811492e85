//! Logs and traces over HTTP: ingest into a stream, cluster-wide search,
//! aggregations, live tail (SSE), streams, and whole traces.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use shoal_search::record::{self, format_nanos, now_nanos};
use shoal_search::{
    AggregateRequest, Cursor, Hit, Kind, KindFilter, Record, SearchOrder, SearchRequest, StreamInfo,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorCode, ErrorDetail};
use super::extract::{Body, Params, PathText};
use super::model::SseEvent;
use super::AppState;
use crate::services::logs::{self, NodeReport};

/// Most records one SQL query may read, over all nodes (query cost limit).
pub const MAX_SQL_ROWS: usize = 200_000;

/// Records in one ingest request.
pub const MAX_RECORDS_PER_REQUEST: usize = 100_000;
/// Per-record errors listed in an ingest answer (all are counted).
const MAX_ERRORS_LISTED: usize = 100;
/// Default page size of a search.
const DEFAULT_LIMIT: u64 = 100;
/// How often a live tail polls the cluster.
const TAIL_POLL: Duration = Duration::from_millis(500);
/// Most records one tail poll sends.
const TAIL_BATCH: usize = 1000;

/// Which members answered a cluster-wide request; a member that did not is
/// listed in failed and `partial` is true.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = NodeReport, example = json!({"asked": 3, "answered": [1, 2], "failed": [{"node": 3, "error": "down (by gossip)"}]}))]
pub struct NodeReportBody {
    /// Members asked (this node included).
    pub asked: usize,
    /// Members that answered, by node id.
    pub answered: Vec<u64>,
    /// Members that did not answer, and why.
    pub failed: Vec<NodeFailureBody>,
}

/// A member that did not answer a cluster-wide request.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = NodeFailure)]
pub struct NodeFailureBody {
    /// Its node id.
    pub node: u64,
    /// Why it did not answer.
    pub error: String,
}

impl From<&NodeReport> for NodeReportBody {
    fn from(report: &NodeReport) -> NodeReportBody {
        NodeReportBody {
            asked: report.asked,
            answered: report.answered.clone(),
            failed: report
                .failed
                .iter()
                .map(|failure| NodeFailureBody {
                    node: failure.node,
                    error: failure.error.clone(),
                })
                .collect(),
        }
    }
}

/// One record an ingest refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogIngestError {
    /// Position of the record in the body (line or array index, from 0).
    pub index: usize,
    /// Why it was refused.
    pub error: String,
}

/// What an ingest stored.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"stream": "orders-service", "accepted": 2, "rejected": 1, "errors": [{"index": 1, "error": "not JSON: expected value at line 1 column 1"}]}))]
pub struct LogIngestResult {
    /// The stream written.
    pub stream: String,
    /// Records stored.
    pub accepted: usize,
    /// Records refused (all are counted).
    pub rejected: usize,
    /// The refused records in body order (at most 100 are listed).
    pub errors: Vec<LogIngestError>,
}

/// Whether a record is a log record or a span.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Log,
    Span,
}

/// A log record or span as stored.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"ts": "2026-11-29T11:04:05.123Z", "ts_nanos": 1795950245123000000_i64, "node": 1, "stream": "orders-service", "seq": 42, "kind": "log", "level": "error", "service": "orders", "message": "payment declined", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "attributes": {"order_id": "A-17"}}))]
pub struct LogHit {
    /// When it happened (a span's start), RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub ts: String,
    /// The same time in Unix nanoseconds.
    pub ts_nanos: i64,
    /// Node that received it
    pub node: u64,
    /// Stream it was ingested into.
    pub stream: String,
    /// Per-node ingest sequence
    pub seq: u64,
    pub kind: RecordKind,
    /// trace, debug, info, warn, error or fatal (other text is kept as given).
    pub level: String,
    pub service: String,
    /// Log body, or span name
    pub message: String,
    /// Lowercase hex; absent when the record has none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// Lowercase hex; absent when the record has none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub span_id: String,
    /// Every other field of the record.
    #[schema(value_type = Object)]
    pub attributes: Value,
    /// Only for spans.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub span: Option<LogHitSpan>,
}

/// The span part of a span record.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogHitSpan {
    /// Parent span id (hex), empty for a root span.
    pub parent_span_id: String,
    /// server, client, producer, consumer, internal or unspecified.
    pub kind: String,
    pub duration_nanos: u64,
    pub duration_ms: f64,
    /// unset, ok or error.
    pub status: String,
    pub status_message: String,
    /// Span events (objects with name, time_nanos and attributes).
    #[schema(value_type = Vec<Object>)]
    pub events: Value,
}

impl From<&Hit> for LogHit {
    fn from(hit: &Hit) -> LogHit {
        let record = &hit.record;
        let attributes: Value =
            serde_json::from_str(&record.attributes).unwrap_or_else(|_| json!({}));
        LogHit {
            ts: format_nanos(record.ts_nanos),
            ts_nanos: record.ts_nanos,
            node: hit.node,
            stream: hit.stream.clone(),
            seq: hit.seq,
            kind: match record.kind {
                Kind::Log => RecordKind::Log,
                Kind::Span => RecordKind::Span,
            },
            level: record.level.clone(),
            service: record.service.clone(),
            message: record.message.clone(),
            trace_id: record.trace_id.clone(),
            span_id: record.span_id.clone(),
            attributes,
            span: record.span.as_ref().map(|span| LogHitSpan {
                parent_span_id: span.parent_span_id.clone(),
                kind: span.span_kind.clone(),
                duration_nanos: span.duration_nanos,
                duration_ms: span.duration_nanos as f64 / 1e6,
                status: span.status.clone(),
                status_message: span.status_message.clone(),
                events: serde_json::from_str(&span.events).unwrap_or_else(|_| json!([])),
            }),
        }
    }
}

/// A page of hits, merged from every node.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogSearchResult {
    pub hits: Vec<LogHit>,
    /// Hits on this page.
    pub count: usize,
    /// Pass as `cursor` for the next page; null when this page is the last.
    pub next_cursor: Option<String>,
    /// Time taken, in milliseconds.
    pub took_ms: u64,
    /// True when a member did not answer (see `nodes.failed`).
    pub partial: bool,
    pub nodes: NodeReportBody,
}

/// One histogram bucket.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogHistogramBucket {
    /// Bucket start, RFC 3339 UTC.
    pub ts: String,
    /// Bucket start in Unix nanoseconds (a multiple of the interval).
    pub ts_nanos: i64,
    /// Matching records in the bucket.
    pub count: u64,
}

/// One value of a field and how often it occurs.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogTopValue {
    pub value: String,
    pub count: u64,
}

/// Counts over time and top values.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"total": 7, "since": "2026-11-29T10:30:00Z", "until": "2026-11-29T11:30:00Z", "interval_nanos": 60000000000_i64, "histogram": [{"ts": "2026-11-29T11:00:00Z", "ts_nanos": 1795950000000000000_i64, "count": 7}], "top": {"level": [{"value": "info", "count": 5}]}, "took_ms": 2, "partial": false, "nodes": {"asked": 1, "answered": [1], "failed": []}}))]
pub struct LogAggregation {
    /// Matching records in the window.
    pub total: u64,
    /// Window start, RFC 3339 UTC.
    pub since: String,
    /// Window end (exclusive), RFC 3339 UTC.
    pub until: String,
    /// Bucket width in nanoseconds; null without a histogram.
    pub interval_nanos: Option<i64>,
    /// Every bucket of the window, oldest first (empty ones included).
    pub histogram: Vec<LogHistogramBucket>,
    /// For each field asked in `top`: its most frequent values, most frequent first.
    pub top: BTreeMap<String, Vec<LogTopValue>>,
    /// Time taken, in milliseconds.
    pub took_ms: u64,
    /// True when a member did not answer (see `nodes.failed`).
    pub partial: bool,
    pub nodes: NodeReportBody,
}

/// A stream, totalled over the nodes that hold it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogStream {
    pub name: String,
    /// Records.
    pub docs: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Day partitions.
    pub partitions: usize,
    /// Nodes that hold records of it.
    pub nodes: Vec<u64>,
}

/// A stream on one node.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogStreamInfo {
    pub name: String,
    /// Day partitions.
    pub partitions: usize,
    /// Records.
    pub docs: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// First day held (`YYYY-MM-DD`).
    pub first_day: String,
    /// Last day held (`YYYY-MM-DD`).
    pub last_day: String,
}

impl From<&StreamInfo> for LogStreamInfo {
    fn from(info: &StreamInfo) -> LogStreamInfo {
        LogStreamInfo {
            name: info.name.clone(),
            partitions: info.partitions,
            docs: info.docs,
            bytes: info.bytes,
            first_day: info.first_day.clone(),
            last_day: info.last_day.clone(),
        }
    }
}

/// The streams of the cluster.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"streams": [{"name": "orders-service", "docs": 120, "bytes": 48213, "partitions": 1, "nodes": [1]}], "per_node": {"1": [{"name": "orders-service", "partitions": 1, "docs": 120, "bytes": 48213, "first_day": "2026-11-29", "last_day": "2026-11-29"}]}, "partial": false, "nodes": {"asked": 1, "answered": [1], "failed": []}}))]
pub struct LogStreams {
    /// Every stream, totalled over the nodes, by name.
    pub streams: Vec<LogStream>,
    /// Each answering node's streams, by node id.
    #[schema(value_type = BTreeMap<String, Vec<LogStreamInfo>>)]
    pub per_node: BTreeMap<u64, Vec<LogStreamInfo>>,
    /// True when a member did not answer (see `nodes.failed`).
    pub partial: bool,
    pub nodes: NodeReportBody,
}

/// An SQL query (`POST /v1/logs/sql` with a JSON body).
#[derive(Debug, Deserialize, ToSchema)]
pub struct LogSqlQuery {
    /// One SELECT over the table `logs` (at most 8 KiB).
    pub query: String,
}

/// The columns and rows an SQL query produced, as `sql::execute` gives them.
#[derive(Deserialize)]
struct SqlTable {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

/// The result of an SQL query.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"columns": ["service", "level", "n"], "rows": [["orders", "error", 1]], "scanned": 2, "took_ms": 3, "partial": false, "nodes": {"asked": 1, "answered": [1], "failed": []}}))]
pub struct LogSqlResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// The rows, each a list of values in column order (timestamps as RFC 3339 text).
    pub rows: Vec<Vec<Value>>,
    /// Records read from the nodes.
    pub scanned: usize,
    /// Time taken, in milliseconds.
    pub took_ms: u64,
    /// True when a member did not answer (see `nodes.failed`).
    pub partial: bool,
    pub nodes: NodeReportBody,
}

/// A whole trace.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogTrace {
    pub trace_id: String,
    /// Its spans, oldest first.
    pub spans: Vec<LogHit>,
    /// Log records with its trace id, oldest first.
    pub logs: Vec<LogHit>,
    /// True when a member did not answer (see `nodes.failed`).
    pub partial: bool,
    pub nodes: NodeReportBody,
}

/// No node holds a record of the trace (an error answer that also says
/// which members answered).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogTraceNotFound {
    pub error: ErrorDetail,
    /// True when a member did not answer (see `nodes.failed`): the trace may be there.
    pub partial: bool,
    pub nodes: NodeReportBody,
}

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
        (status = 400, description = "Error codes: `invalid_stream`, `bad_request`.", body = crate::api::error::ErrorBody),
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

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The body, gunzipped when it says so (bounded).
pub fn decompressed(headers: &HeaderMap, body: &[u8], max_bytes: usize) -> ApiResult<Vec<u8>> {
    match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        None | Some("") | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => super::extract::inflate(flate2::read::GzDecoder::new(body), max_bytes),
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedEncoding,
            format!("content encoding {other:?}: send gzip or none"),
        )),
    }
}

type Parsed = (Vec<(usize, Record)>, Vec<(usize, String)>);

/// Records with their position in the body, and per-record errors.
fn parse_records(body: &[u8], plain: bool, service: &str) -> ApiResult<Parsed> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
    let mut records = Vec::new();
    let mut errors = Vec::new();
    if text.trim_start().starts_with('[') && !plain {
        let values: Vec<Value> = serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request(format!(
                "the body starts with '[' but is not a JSON array: {e}"
            ))
        })?;
        check_count(values.len())?;
        for (position, value) in values.into_iter().enumerate() {
            match record::log_from_json(value, service) {
                Ok(record) => records.push((position, record)),
                Err(e) => errors.push((position, e.to_string())),
            }
        }
    } else {
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        check_count(lines.len())?;
        for (position, line) in lines.into_iter().enumerate() {
            if plain {
                records.push((position, record::log_from_line(line, service)));
                continue;
            }
            let parsed = serde_json::from_str::<Value>(line)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|value| record::log_from_json(value, service).map_err(|e| e.to_string()));
            match parsed {
                Ok(record) => records.push((position, record)),
                Err(e) => errors.push((position, e)),
            }
        }
    }
    if records.is_empty() && errors.is_empty() {
        return Err(ApiError::bad_request("the body holds no records"));
    }
    Ok((records, errors))
}

fn check_count(count: usize) -> ApiResult<()> {
    if count > MAX_RECORDS_PER_REQUEST {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooManyRecords,
            format!("{count} records in one request; the limit is {MAX_RECORDS_PER_REQUEST}"),
        ));
    }
    Ok(())
}

/// A time: RFC 3339, Unix seconds/ms/ns, `now`, or a duration ago (`15m`, `2h`, `7d`).
pub fn parse_time(text: &str, now: i64) -> ApiResult<i64> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Ok(ago) = parse_duration(text) {
        if text.ends_with(|c: char| c.is_ascii_alphabetic()) {
            return Ok(now.saturating_sub(ago));
        }
    }
    record::parse_timestamp(&Value::String(text.to_string())).map_err(|e| {
        ApiError::bad_request(format!(
            "bad time {text:?}: {e}; use RFC 3339, epoch, or a duration ago like 15m"
        ))
    })
}

/// A duration in nanoseconds: a number with a unit (ns, us, ms, s, m, h, d);
/// a bare number is nanoseconds.
pub fn parse_duration(text: &str) -> ApiResult<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        ApiError::bad_request(format!(
            "bad duration {text:?}: use e.g. 250ms, 15m, 2h, 7d"
        ))
    };
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        _ => return Err(bad()),
    };
    let nanos = number * scale;
    if !nanos.is_finite() || !(0.0..=9.0e18).contains(&nanos) {
        return Err(bad());
    }
    Ok(nanos as i64)
}

/// The search filters shared by search, aggregate, tail and the CLI.
pub fn search_request(params: &Params, now: i64) -> ApiResult<SearchRequest> {
    let kind = match params.string("kind") {
        None | Some("log") | Some("logs") => KindFilter::Log,
        Some("span") | Some("spans") => KindFilter::Span,
        Some("any") => KindFilter::Any,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind must be log, span or any, got {other:?}"
            )))
        }
    };
    let order = match params.string("order") {
        None | Some("newest") | Some("desc") => SearchOrder::Newest,
        Some("oldest") | Some("asc") => SearchOrder::Oldest,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order must be newest or oldest, got {other:?}"
            )))
        }
    };
    let duration = |name: &str| -> ApiResult<Option<u64>> {
        params
            .string(name)
            .map(|text| parse_duration(text).map(|d| d as u64))
            .transpose()
    };
    let trace_ids = params
        .list("trace_id")
        .iter()
        .map(|id| {
            record::normalize_hex_id(id, "trace_id")
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let levels = params
        .list("level")
        .iter()
        .map(|l| record::normalize_level(l))
        .collect();
    let mut names = params.list("operation");
    names.extend(params.list("name"));
    Ok(SearchRequest {
        query: params.string("q").unwrap_or_default().to_string(),
        streams: params.list("stream"),
        kind,
        since: params
            .string("since")
            .map(|t| parse_time(t, now))
            .transpose()?,
        until: params
            .string("until")
            .map(|t| parse_time(t, now))
            .transpose()?,
        levels,
        services: params.list("service"),
        trace_ids,
        names,
        statuses: params.list("status"),
        min_duration: duration("min_duration")?,
        max_duration: duration("max_duration")?,
        order,
        limit: params.limit(DEFAULT_LIMIT, shoal_search::MAX_LIMIT as u64)?,
        after: params
            .string("cursor")
            .map(Cursor::decode)
            .transpose()
            .map_err(ApiError::from)?,
        seq_after: BTreeMap::new(),
    })
}

/// Query parameters, or the same names in a JSON object (POST).
fn params_of(params: Params, body: &[u8]) -> ApiResult<Params> {
    if body.is_empty() {
        return Ok(params);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request("the JSON body must be an object"));
    };
    let mut merged: HashMap<String, String> = HashMap::new();
    for (name, value) in map {
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(ApiError::bad_request(format!(
                        "{name}: list items must be strings, got {other}"
                    ))),
                })
                .collect::<ApiResult<Vec<_>>>()?
                .join(","),
            Value::Object(_) => {
                return Err(ApiError::bad_request(format!(
                    "{name} must not be an object"
                )))
            }
        };
        merged.insert(name, text);
    }
    Ok(params.merged(merged))
}

#[utoipa::path(
    get,
    path = "/v1/logs/search",
    tag = "logs",
    operation_id = "searchLogs",
    summary = "Search logs and spans on every node",
    description = "Runs on every live member and merges the pages; members that do not answer are listed in `nodes.failed` and `partial` is true (the answer is still 200). POST takes the same parameters as a JSON object. Query cost limits: query at most 4096 bytes, limit at most 10 000.",
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
    State(app): State<AppState>,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<LogSearchResult>> {
    run_search(app, params, body).await
}

#[utoipa::path(
    post,
    path = "/v1/logs/search",
    tag = "logs",
    operation_id = "searchLogsPost",
    summary = "Search logs and spans on every node",
    description = "Runs on every live member and merges the pages; members that do not answer are listed in `nodes.failed` and `partial` is true (the answer is still 200). POST takes the same parameters as a JSON object. Query cost limits: query at most 4096 bytes, limit at most 10 000.",
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
    State(app): State<AppState>,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<LogSearchResult>> {
    run_search(app, params, body).await
}

async fn run_search(
    app: AppState,
    params: Params,
    body: axum::body::Bytes,
) -> ApiResult<Json<LogSearchResult>> {
    let started = std::time::Instant::now();
    let params = params_of(params, &body)?;
    let request = search_request(&params, now_nanos())?;
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
    description = "Histogram buckets are aligned to multiples of the interval since the epoch; the window defaults to the last hour and about 60 buckets. At most 10 000 buckets.",
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
    State(app): State<AppState>,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<LogAggregation>> {
    run_aggregate(app, params, body).await
}

#[utoipa::path(
    post,
    path = "/v1/logs/aggregate",
    tag = "logs",
    operation_id = "aggregateLogsPost",
    summary = "Counts over time and top values, cluster-wide",
    description = "Histogram buckets are aligned to multiples of the interval since the epoch; the window defaults to the last hour and about 60 buckets. At most 10 000 buckets.",
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
    State(app): State<AppState>,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<LogAggregation>> {
    run_aggregate(app, params, body).await
}

async fn run_aggregate(
    app: AppState,
    params: Params,
    body: axum::body::Bytes,
) -> ApiResult<Json<LogAggregation>> {
    let started = std::time::Instant::now();
    let params = params_of(params, &body)?;
    let now = now_nanos();
    let mut filter = search_request(&params, now)?;
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
        let mut bucket = since.div_euclid(interval) * interval;
        while bucket < until {
            let count = aggregation.histogram.get(&bucket).copied().unwrap_or(0);
            histogram.push(LogHistogramBucket {
                ts: format_nanos(bucket),
                ts_nanos: bucket,
                count,
            });
            bucket += interval;
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
pub async fn streams(State(app): State<AppState>) -> ApiResult<Json<LogStreams>> {
    let (per_node, report) = logs::streams(&app.shoal).await?;
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
    State(app): State<AppState>,
    PathText(trace_id): PathText,
) -> ApiResult<Response> {
    let trace_id = trace_id_param(&trace_id)?;
    let (hits, report) = fetch_traces(&app, vec![trace_id.clone()]).await?;
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

/// All records (spans and logs) of these traces, oldest first.
pub async fn fetch_traces(
    app: &AppState,
    trace_ids: Vec<String>,
) -> ApiResult<(Vec<Hit>, NodeReport)> {
    let request = SearchRequest {
        kind: KindFilter::Any,
        trace_ids,
        order: SearchOrder::Oldest,
        limit: shoal_search::MAX_LIMIT,
        ..Default::default()
    };
    Ok(logs::search(&app.shoal, request).await?)
}

/// Live tail (SSE): records that become searchable after the request,
/// as `record` events, oldest first; `backlog=N` first sends the newest N.
#[utoipa::path(
    get,
    path = "/v1/logs/tail",
    tag = "logs",
    operation_id = "tailLogs",
    summary = "Live tail (Server-Sent Events)",
    description = "Sends `record` events (data: a LogHit) for matching records that become searchable after the request, from every node, polled every 500 ms. backlog=N first sends the N newest matching records.",
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
pub async fn tail(State(app): State<AppState>, params: Params) -> ApiResult<Response> {
    let mut request = search_request(&params, now_nanos())?;
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
    tokio::spawn(async move {
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
                    let _ = sender
                        .send(
                            Event::default()
                                .event("error")
                                .data(ApiError::from(e).message),
                        )
                        .await;
                    continue;
                }
            };
            for hit in &hits {
                let known = positions.entry(hit.node).or_default();
                *known = (*known).max(hit.seq);
                if sender.send(record_event(hit)).await.is_err() {
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
    });
    let stream = ReceiverStream::new(receiver).map(Ok::<Event, Infallible>);
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

/// SQL over logs (Polars): `{"query": "SELECT ..."}`, or the query as a
/// text/plain body, or `?q=`. Conditions on ts, level, service, stream,
/// kind, status and trace_id are pushed down to every node's indexes.
#[utoipa::path(
    get,
    path = "/v1/logs/sql",
    tag = "logs",
    operation_id = "sqlLogsGet",
    summary = "SQL over logs (Polars) on the table `logs`",
    description = "Body `{\"query\": \"SELECT ...\"}`, a text/plain body, or `?q=`. Columns: ts (UTC timestamp), stream, node, kind, level, service, message, trace_id, span_id, duration_ns, status, attributes (JSON text). Top-level AND conditions on ts, level, service, stream, kind, status and trace_id are pushed down to every node's indexes; now(), current_timestamp, date_trunc and timestamp strings compared with ts are supported. One SELECT only. Limits: 200 000 records read per query (400 too_many_rows), 8 KiB of SQL.",
    params(
        ("q" = Option<String>, Query, description = "The SQL, when there is no body"),
    ),
    request_body(
        description = "The SQL: `{\"query\": \"SELECT ...\"}`, or the SQL itself as `text/plain`.",
        content(
            (Option<LogSqlQuery> = "application/json", example = json!({"query": "SELECT service, level, count(*) AS n FROM logs WHERE ts > now() - interval '1 hour' GROUP BY service, level"})),
            (Option<String> = "text/plain"),
        )
    ),
    responses(
        (status = 200, description = "Columns and rows.", body = LogSqlResult),
        (status = 400, description = "Error codes: `invalid_query`, `too_many_rows`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "The body is over the request body limit. Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn sql_get(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<LogSqlResult>> {
    run_sql(app, params, headers, body).await
}

#[utoipa::path(
    post,
    path = "/v1/logs/sql",
    tag = "logs",
    operation_id = "sqlLogs",
    summary = "SQL over logs (Polars) on the table `logs`",
    description = "Body `{\"query\": \"SELECT ...\"}`, a text/plain body, or `?q=`. Columns: ts (UTC timestamp), stream, node, kind, level, service, message, trace_id, span_id, duration_ns, status, attributes (JSON text). Top-level AND conditions on ts, level, service, stream, kind, status and trace_id are pushed down to every node's indexes; now(), current_timestamp, date_trunc and timestamp strings compared with ts are supported. One SELECT only. Limits: 200 000 records read per query (400 too_many_rows), 8 KiB of SQL.",
    params(
        ("q" = Option<String>, Query, description = "The SQL, when there is no body"),
    ),
    request_body(
        description = "The SQL: `{\"query\": \"SELECT ...\"}`, or the SQL itself as `text/plain`.",
        content(
            (Option<LogSqlQuery> = "application/json", example = json!({"query": "SELECT service, level, count(*) AS n FROM logs WHERE ts > now() - interval '1 hour' GROUP BY service, level"})),
            (Option<String> = "text/plain"),
        )
    ),
    responses(
        (status = 200, description = "Columns and rows.", body = LogSqlResult),
        (status = 400, description = "Error codes: `invalid_query`, `too_many_rows`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "The body is over the request body limit. Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn sql(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<LogSqlResult>> {
    run_sql(app, params, headers, body).await
}

async fn run_sql(
    app: AppState,
    params: Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<LogSqlResult>> {
    let started = std::time::Instant::now();
    let query = if body.is_empty() {
        params.string("q").map(str::to_string).ok_or_else(|| {
            ApiError::bad_request("send the SQL as {\"query\": ...}, a text body, or ?q=")
        })?
    } else if content_type(&headers).starts_with("text/plain") {
        String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the SQL is not UTF-8"))?
    } else {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        let needs_query = || ApiError::bad_request("the JSON body needs a string field query");
        if !value.is_object() {
            return Err(needs_query());
        }
        serde_json::from_value::<LogSqlQuery>(value)
            .map_err(|_| needs_query())?
            .query
    };
    let plan = shoal_search::sql::plan(&query, now_nanos()).map_err(ApiError::from)?;
    let (hits, report) = logs::scan(&app.shoal, plan.filter.clone(), MAX_SQL_ROWS + 1).await?;
    if hits.len() > MAX_SQL_ROWS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::TooManyRows,
            format!(
                "the query reads more than {MAX_SQL_ROWS} records; narrow it with conditions on ts \
                 (e.g. ts > now() - interval '1 hour'), level, service, stream or kind"
            ),
        ));
    }
    let scanned = hits.len();
    let answer = tokio::task::spawn_blocking(move || shoal_search::sql::execute(&plan, &hits))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)?;
    let table: SqlTable = serde_json::from_value(answer)
        .map_err(|e| ApiError::internal(format!("reading the SQL result: {e}")))?;
    Ok(Json(LogSqlResult {
        columns: table.columns,
        rows: table.rows,
        scanned,
        took_ms: started.elapsed().as_millis() as u64,
        partial: report.partial(),
        nodes: NodeReportBody::from(&report),
    }))
}
