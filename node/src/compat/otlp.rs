//! OpenTelemetry ingest: OTLP logs and traces over HTTP (protobuf or JSON,
//! optionally gzip) and over gRPC, on their own listeners, so an unmodified
//! SDK or Collector exports to Shoal.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Map, Value};
use shoal_acl::{Access, Acl, AuthError, Identity, Resource};
use shoal_search::record::{
    self, normalize_level, now_nanos, truncate, MAX_ATTRIBUTES_BYTES, MAX_MESSAGE_BYTES,
};
use shoal_search::{Kind, Logs, Record, SearchError, SpanInfo};

use crate::api::error::{ApiError, ErrorCode};
use crate::api::extract::{inflate, Body};

/// The stream spans go to.
pub const TRACES_STREAM: &str = "traces";
/// Log records go to the stream named by this resource attribute, else to
/// the stream named after `service.name`, else to `otel`.
const STREAM_ATTRIBUTE: &str = "shoal.stream";

/// What an export did: rejected records and why (the first reasons).
#[derive(Default)]
struct Outcome {
    rejected: i64,
    reasons: Vec<String>,
}

impl Outcome {
    fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.reasons.len() < 5 {
            self.reasons.push(reason);
        }
    }

    fn message(&self) -> String {
        self.reasons.join("; ")
    }
}

/// An OTLP value as JSON.
fn any_to_json(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
        }
        Some(any_value::Value::ArrayValue(array)) => {
            Value::Array(array.values.iter().map(any_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => {
            Value::Object(attributes_to_json(&list.values))
        }
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex(bytes)),
    }
}

fn attributes_to_json(attributes: &[KeyValue]) -> Map<String, Value> {
    attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map_or(Value::Null, any_to_json),
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// A trace or span id: `bytes` long and not all zero, else empty (absent).
fn id(bytes: &[u8], len: usize, what: &str) -> Result<String, String> {
    if bytes.is_empty() || bytes.iter().all(|b| *b == 0) {
        return Ok(String::new());
    }
    if bytes.len() != len {
        return Err(format!("{what} must be {len} bytes, got {}", bytes.len()));
    }
    Ok(hex(bytes))
}

fn severity_level(number: i32) -> &'static str {
    match number {
        1..=4 => "trace",
        5..=8 => "debug",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => "info",
    }
}

fn attributes_text(
    mut attributes: Map<String, Value>,
    resource: &Map<String, Value>,
) -> Result<String, String> {
    if !resource.is_empty() {
        attributes.insert("resource".into(), Value::Object(resource.clone()));
    }
    let text = Value::Object(attributes).to_string();
    if text.len() > MAX_ATTRIBUTES_BYTES {
        return Err(format!(
            "attributes are {} bytes; the limit is {MAX_ATTRIBUTES_BYTES}",
            text.len()
        ));
    }
    Ok(text)
}

fn service_name(resource: &Map<String, Value>) -> String {
    match resource.get("service.name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => "unknown_service".into(),
    }
}

/// A stream name made from free text: lowercase, other characters as `-`.
fn stream_from(text: &str) -> Option<String> {
    let name: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(record::MAX_STREAM_BYTES)
        .collect();
    let name = name.trim_start_matches(['.', '_', '-']).to_string();
    record::validate_stream(&name).ok().map(|_| name)
}

fn log_record(
    log: &LogRecord,
    service: &str,
    resource: &Map<String, Value>,
) -> Result<Record, String> {
    let ts_nanos = [log.time_unix_nano, log.observed_time_unix_nano]
        .into_iter()
        .find(|t| *t > 0)
        .map_or_else(now_nanos, |t| i64::try_from(t).unwrap_or(i64::MAX));
    let level = if log.severity_text.is_empty() {
        severity_level(log.severity_number).to_string()
    } else {
        normalize_level(&log.severity_text)
    };
    let message = match log.body.as_ref().map(any_to_json) {
        Some(Value::String(text)) => text,
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    let mut attributes = attributes_to_json(&log.attributes);
    if !log.event_name.is_empty() {
        attributes.insert("event.name".into(), Value::String(log.event_name.clone()));
    }
    Ok(Record {
        kind: Kind::Log,
        ts_nanos,
        level,
        service: service.to_string(),
        message: truncate(message, MAX_MESSAGE_BYTES),
        trace_id: id(&log.trace_id, 16, "trace_id")?,
        span_id: id(&log.span_id, 8, "span_id")?,
        attributes: attributes_text(attributes, resource)?,
        span: None,
    })
}

fn span_kind(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn span_record(
    span: &Span,
    service: &str,
    resource: &Map<String, Value>,
) -> Result<Record, String> {
    let trace_id = id(&span.trace_id, 16, "trace_id")?;
    let span_id = id(&span.span_id, 8, "span_id")?;
    if trace_id.is_empty() || span_id.is_empty() {
        return Err("a span needs a trace_id and a span_id".into());
    }
    let (status, status_message) = match &span.status {
        Some(status) if status.code == 2 => ("error", status.message.clone()),
        Some(status) if status.code == 1 => ("ok", status.message.clone()),
        _ => ("unset", String::new()),
    };
    let events: Vec<Value> = span
        .events
        .iter()
        .map(|event| {
            serde_json::json!({
                "time_nanos": event.time_unix_nano,
                "name": event.name,
                "attributes": attributes_to_json(&event.attributes),
            })
        })
        .collect();
    Ok(Record {
        kind: Kind::Span,
        ts_nanos: i64::try_from(span.start_time_unix_nano)
            .unwrap_or(i64::MAX)
            .max(1),
        level: if status == "error" {
            "error".into()
        } else {
            "info".into()
        },
        service: service.to_string(),
        message: truncate(span.name.clone(), MAX_MESSAGE_BYTES),
        trace_id,
        span_id,
        attributes: attributes_text(attributes_to_json(&span.attributes), resource)?,
        span: Some(SpanInfo {
            parent_span_id: id(&span.parent_span_id, 8, "parent_span_id")?,
            span_kind: span_kind(span.kind).into(),
            duration_nanos: span
                .end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano),
            status: status.into(),
            status_message,
            events: Value::Array(events).to_string(),
        }),
    })
}

/// Why an export was refused as a whole.
enum ExportError {
    Search(SearchError),
    /// No token, or an unknown or expired one (ACLs are on).
    Unauthenticated(AuthError),
    /// The token may not write one of the export's streams.
    Denied(String),
}

impl From<SearchError> for ExportError {
    fn from(e: SearchError) -> ExportError {
        ExportError::Search(e)
    }
}

impl From<ExportError> for ApiError {
    fn from(e: ExportError) -> ApiError {
        match e {
            // OTLP exporters retry 503 (not 507): the batch is kept until space is freed.
            ExportError::Search(SearchError::NoSpace(message)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::InsufficientStorage,
                message,
            ),
            ExportError::Search(e) => ApiError::from(e),
            ExportError::Unauthenticated(e) => crate::api::auth::unauthorized(e),
            ExportError::Denied(message) => {
                ApiError::new(StatusCode::FORBIDDEN, ErrorCode::PermissionDenied, message)
            }
        }
    }
}

/// Who sent an export: the exporter's `authorization` header (set with
/// `OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer ...`).
fn authenticate(acl: &Acl, headers: &HeaderMap) -> Result<Identity, ExportError> {
    let secret = crate::api::auth::credentials(headers, None, false);
    acl.authenticate(secret.as_deref(), shoal_storage::now_ms())
        .map_err(ExportError::Unauthenticated)
}

/// Ingest records grouped by stream, all or none of the streams: the
/// identity must be allowed to write each. Records the engine refuses are
/// counted.
async fn ingest(
    logs: &Logs,
    identity: &Identity,
    by_stream: BTreeMap<String, Vec<Record>>,
    outcome: &mut Outcome,
) -> Result<(), ExportError> {
    if let Some(stream) = by_stream
        .keys()
        .find(|stream| !identity.allows(Resource::Logs, stream, Access::Write))
    {
        metrics::counter!("shoal_acl_denied_total", "resource" => "logs").increment(1);
        return Err(ExportError::Denied(format!(
            "the token may not write logs {stream:?}"
        )));
    }
    for (stream, records) in by_stream {
        let result = logs.ingest(&stream, records).await?;
        for (_, reason) in result.rejected {
            outcome.reject(reason);
        }
    }
    Ok(())
}

async fn export_logs(
    logs: &Logs,
    identity: &Identity,
    request: ExportLogsServiceRequest,
) -> Result<Outcome, ExportError> {
    let mut outcome = Outcome::default();
    let mut by_stream: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for resource_logs in &request.resource_logs {
        let resource = resource_logs
            .resource
            .as_ref()
            .map(|r| attributes_to_json(&r.attributes))
            .unwrap_or_default();
        let service = service_name(&resource);
        let stream = match resource.get(STREAM_ATTRIBUTE) {
            Some(Value::String(stream)) => stream_from(stream),
            _ => stream_from(&service),
        }
        .unwrap_or_else(|| "otel".into());
        for scope_logs in &resource_logs.scope_logs {
            for log in &scope_logs.log_records {
                match log_record(log, &service, &resource) {
                    Ok(record) => by_stream.entry(stream.clone()).or_default().push(record),
                    Err(reason) => outcome.reject(reason),
                }
            }
        }
    }
    ingest(logs, identity, by_stream, &mut outcome).await?;
    metrics::counter!("shoal_otlp_log_records_rejected_total").increment(outcome.rejected as u64);
    Ok(outcome)
}

async fn export_traces(
    logs: &Logs,
    identity: &Identity,
    request: ExportTraceServiceRequest,
) -> Result<Outcome, ExportError> {
    let mut outcome = Outcome::default();
    let mut spans = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes_to_json(&r.attributes))
            .unwrap_or_default();
        let service = service_name(&resource);
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                match span_record(span, &service, &resource) {
                    Ok(record) => spans.push(record),
                    Err(reason) => outcome.reject(reason),
                }
            }
        }
    }
    ingest(
        logs,
        identity,
        BTreeMap::from([(TRACES_STREAM.to_string(), spans)]),
        &mut outcome,
    )
    .await?;
    metrics::counter!("shoal_otlp_spans_rejected_total").increment(outcome.rejected as u64);
    Ok(outcome)
}

fn logs_response(outcome: &Outcome) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (outcome.rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: outcome.rejected,
            error_message: outcome.message(),
        }),
    }
}

fn traces_response(outcome: &Outcome) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (outcome.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: outcome.rejected,
            error_message: outcome.message(),
        }),
    }
}

// ---- gRPC ----

struct Grpc {
    logs: Logs,
    acl: Arc<Acl>,
}

impl Grpc {
    fn identity<T>(&self, request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        authenticate(&self.acl, &headers).map_err(grpc_status)
    }
}

fn grpc_status(e: ExportError) -> tonic::Status {
    let e = match e {
        ExportError::Search(e) => e,
        ExportError::Unauthenticated(e) => return tonic::Status::unauthenticated(e.to_string()),
        ExportError::Denied(message) => return tonic::Status::permission_denied(message),
    };
    match e {
        // UNAVAILABLE is what OTLP exporters retry with backoff.
        SearchError::Busy(message) | SearchError::NoSpace(message) => {
            tonic::Status::unavailable(message)
        }
        SearchError::InvalidStream(message)
        | SearchError::InvalidQuery(message)
        | SearchError::TooManyStreams(message) => tonic::Status::invalid_argument(message),
        other => tonic::Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let identity = self.identity(&request)?;
        let outcome = export_logs(&self.logs, &identity, request.into_inner())
            .await
            .map_err(grpc_status)?;
        Ok(tonic::Response::new(logs_response(&outcome)))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let identity = self.identity(&request)?;
        let outcome = export_traces(&self.logs, &identity, request.into_inner())
            .await
            .map_err(grpc_status)?;
        Ok(tonic::Response::new(traces_response(&outcome)))
    }
}

/// The OTLP/gRPC services (logs and traces) as a router, served like the
/// API (`api_server::serve`): a gRPC client is an HTTP/2 client, so the
/// listener gets the same connection limits, deadline and shutdown.
pub fn grpc_router(logs: Logs, acl: Arc<Acl>, max_bytes: usize) -> Router {
    use tonic::codec::CompressionEncoding;
    let grpc = Arc::new(Grpc { logs, acl });
    tonic::service::Routes::new(
        LogsServiceServer::from_arc(grpc.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_bytes),
    )
    .add_service(
        TraceServiceServer::from_arc(grpc)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_bytes),
    )
    .into_axum_router()
}

// ---- HTTP ----

#[derive(Clone)]
struct HttpState {
    logs: Logs,
    acl: Arc<Acl>,
    max_bytes: usize,
}

/// The OTLP/HTTP routes (`POST /v1/logs`, `POST /v1/traces`).
pub fn http_router(logs: Logs, acl: Arc<Acl>, max_bytes: usize) -> Router {
    Router::new()
        .route("/v1/logs", post(http_logs))
        .route("/v1/traces", post(http_traces))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "OTLP/HTTP serves POST /v1/logs and POST /v1/traces",
            )
        })
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(HttpState {
            logs,
            acl,
            max_bytes,
        })
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

/// The body, decompressed (bounded) and with its encoding.
fn read_body(
    headers: &HeaderMap,
    body: &[u8],
    max_bytes: usize,
) -> Result<(Vec<u8>, Encoding), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = match content_type.split(';').next().unwrap_or("").trim() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                format!("content type {other:?}: send application/x-protobuf or application/json"),
            ))
        }
    };
    let compression = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let data = match compression.trim() {
        "" | "identity" => body.to_vec(),
        "gzip" => inflate(flate2::read::GzDecoder::new(body), max_bytes)?,
        "deflate" => inflate(flate2::read::ZlibDecoder::new(body), max_bytes)?,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedEncoding,
                format!("content encoding {other:?}: send gzip, deflate or none"),
            ))
        }
    };
    Ok((data, encoding))
}

/// Accept what lenient OTLP/JSON senders write but the generated serde
/// code refuses: times as numbers, and arrays or maps without `values`.
fn normalize_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if key.ends_with("UnixNano") && item.is_number() {
                    *item = Value::String(item.to_string());
                } else if (key == "arrayValue" || key == "kvlistValue") && item.is_object() {
                    if let Value::Object(inner) = item {
                        inner
                            .entry("values")
                            .or_insert_with(|| Value::Array(Vec::new()));
                    }
                }
                normalize_json(item);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_json),
        _ => {}
    }
}

fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    data: &[u8],
    encoding: Encoding,
) -> Result<T, ApiError> {
    match encoding {
        Encoding::Protobuf => T::decode(data)
            .map_err(|e| ApiError::bad_request(format!("invalid OTLP protobuf: {e}"))),
        Encoding::Json => {
            let mut value: Value = serde_json::from_slice(data)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
            normalize_json(&mut value);
            serde_json::from_value(value)
                .map_err(|e| ApiError::bad_request(format!("invalid OTLP JSON: {e}")))
        }
    }
}

fn encode<T: Message + serde::Serialize>(
    response: &T,
    encoding: Encoding,
    partial: bool,
) -> Response {
    match encoding {
        Encoding::Protobuf => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            )],
            response.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json if !partial => axum::Json(serde_json::json!({})).into_response(),
        Encoding::Json => axum::Json(response).into_response(),
    }
}

/// The checks and decoding both OTLP/HTTP handlers start with: the caps
/// first (a refused request should cost nothing more than that check), then
/// the body, decompressed and decoded as its content type says.
fn accept<T: Message + Default + serde::de::DeserializeOwned>(
    state: &HttpState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(T, Encoding), Response> {
    state
        .logs
        .check_capacity()
        .map_err(|e| ApiError::from(e).into_response())?;
    let (data, encoding) =
        read_body(headers, body, state.max_bytes).map_err(IntoResponse::into_response)?;
    let request = decode(&data, encoding).map_err(IntoResponse::into_response)?;
    Ok((request, encoding))
}

async fn http_logs(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Response {
    // Before decoding: a caller without a token costs no more than this.
    let identity = match authenticate(&state.acl, &headers) {
        Ok(identity) => identity,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (request, encoding) = match accept(&state, &headers, &body) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    match export_logs(&state.logs, &identity, request).await {
        Ok(outcome) => encode(&logs_response(&outcome), encoding, outcome.rejected > 0),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn http_traces(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Response {
    // Before decoding: a caller without a token costs no more than this.
    let identity = match authenticate(&state.acl, &headers) {
        Ok(identity) => identity,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (request, encoding) = match accept(&state, &headers, &body) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    match export_traces(&state.logs, &identity, request).await {
        Ok(outcome) => encode(&traces_response(&outcome), encoding, outcome.rejected > 0),
        Err(e) => ApiError::from(e).into_response(),
    }
}
