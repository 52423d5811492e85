//! The JSON answers of the log endpoints, as typed structs: the OpenAPI
//! document's schemas are generated from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_search::record::format_nanos;
use shoal_search::{Hit, Kind, StreamInfo};
use utoipa::ToSchema;

use crate::api::error::ErrorDetail;
use crate::services::logs::NodeReport;

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
#[allow(dead_code)] // The body's schema; `api::sql::read_query` reads it.
pub struct LogSqlQuery {
    /// One SELECT over the table `logs` (at most 8 KiB).
    pub query: String,
}

/// The columns and rows an SQL query produced, as `sql::execute` gives them.
#[derive(Deserialize)]
pub struct SqlTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
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
