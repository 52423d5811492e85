//! The Jaeger query API shape (`/api/services`, `/api/traces`, ...), so
//! Grafana's Jaeger data source reads Shoal's spans unchanged.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use shoal_search::record::now_nanos;
use shoal_search::{AggregateRequest, Hit, Kind, KindFilter, SearchOrder, SearchRequest};
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult, ErrorCode, ErrorDetail};
use crate::api::extract::{Params, PathText};
use crate::api::logs::{fetch_traces, parse_duration, readable_streams};
use crate::api::AppState;
use crate::services::logs;

/// Traces one `/api/traces` search returns by default, and at most.
const DEFAULT_TRACES: u64 = 20;
const MAX_TRACES: u64 = 1500;

/// Jaeger's answer envelope: `data`, paging fields Shoal leaves at 0, and
/// `errors` (null on success).
#[derive(Debug, Serialize, ToSchema)]
pub struct JaegerAnswer<T> {
    pub data: Vec<T>,
    /// Items in `data`.
    pub total: usize,
    /// Always 0.
    pub limit: usize,
    /// Always 0.
    pub offset: usize,
    /// Always null on success.
    pub errors: Option<Vec<JaegerError>>,
}

/// An error as Jaeger reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JaegerError {
    /// The HTTP status.
    pub code: u16,
    pub msg: String,
}

/// A trace no node holds, in both Jaeger's shape (`data`, `errors`) and
/// Shoal's (`error`).
#[derive(Debug, Serialize, ToSchema)]
pub struct JaegerNotFound {
    /// Always null.
    pub data: Option<Vec<JaegerTrace>>,
    pub errors: Vec<JaegerError>,
    pub error: ErrorDetail,
}

/// A span name of a service.
#[derive(Debug, Serialize, ToSchema)]
pub struct JaegerOperation {
    pub name: String,
    /// Always empty (the span kind is not tracked per name).
    #[serde(rename = "spanKind")]
    pub span_kind: String,
}

/// A trace in Jaeger's JSON shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct JaegerTrace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<JaegerSpan>,
    /// The processes the spans name by `processID` (`p1`, `p2`, ...).
    pub processes: BTreeMap<String, JaegerProcess>,
    /// Always null.
    pub warnings: Option<Vec<String>>,
}

/// A span in Jaeger's JSON shape.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JaegerSpan {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    pub operation_name: String,
    /// The parent span (`CHILD_OF`), if any.
    pub references: Vec<JaegerReference>,
    /// Unix microseconds.
    pub start_time: i64,
    /// Microseconds.
    pub duration: u64,
    /// The span's attributes (nested keys dotted), span.kind,
    /// otel.status_code and, for errors, error and otel.status_description.
    pub tags: Vec<JaegerTag>,
    /// The span's events.
    pub logs: Vec<JaegerLog>,
    #[serde(rename = "processID")]
    pub process_id: String,
    /// Always null.
    pub warnings: Option<Vec<String>>,
    /// Always 1 (sampled).
    pub flags: u32,
}

/// A reference from a span to another.
#[derive(Debug, Serialize, ToSchema)]
pub struct JaegerReference {
    /// Always `CHILD_OF`.
    #[serde(rename = "refType")]
    pub ref_type: &'static str,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A key/value tag.
#[derive(Debug, Serialize, ToSchema)]
pub struct JaegerTag {
    pub key: String,
    /// `string`, `bool`, `int64` or `float64`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A string, boolean or number, as `type` says.
    #[schema(value_type = Value)]
    pub value: Value,
}

/// A span event.
#[derive(Debug, Serialize, ToSchema)]
pub struct JaegerLog {
    /// Unix microseconds.
    pub timestamp: u64,
    /// `event` (the event's name), then the event's attributes.
    pub fields: Vec<JaegerTag>,
}

/// The service (and resource attributes) that sent spans.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JaegerProcess {
    pub service_name: String,
    pub tags: Vec<JaegerTag>,
}

fn data<T>(data: Vec<T>) -> Json<JaegerAnswer<T>> {
    Json(JaegerAnswer {
        total: data.len(),
        data,
        limit: 0,
        offset: 0,
        errors: None,
    })
}

fn tag(key: impl Into<String>, kind: &'static str, value: impl Into<Value>) -> JaegerTag {
    JaegerTag {
        key: key.into(),
        kind,
        value: value.into(),
    }
}

async fn span_values(
    app: &AppState,
    caller: &Caller,
    field: &str,
    services: Vec<String>,
) -> ApiResult<Vec<String>> {
    let mut filter = SearchRequest {
        kind: KindFilter::Span,
        services,
        limit: 1,
        ..Default::default()
    };
    readable_streams(app, caller, &mut filter.streams).await?;
    let request = AggregateRequest {
        filter,
        interval: None,
        top: vec![field.to_string()],
        top_n: 10_000,
    };
    let (aggregation, _) = logs::aggregate(&app.shoal, request).await?;
    let mut values: Vec<String> = aggregation
        .top_values(field, 10_000)
        .into_iter()
        .map(|b| b.key)
        .collect();
    values.sort();
    Ok(values)
}

#[utoipa::path(
    get,
    path = "/api/services",
    tag = "traces",
    operation_id = "jaegerServices",
    summary = "Jaeger: services that sent spans",
    responses(
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope: the service names, sorted.", body = JaegerAnswer<String>),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn services(
    caller: Caller,
    State(app): State<AppState>,
) -> ApiResult<Json<JaegerAnswer<String>>> {
    Ok(data(
        span_values(&app, &caller, "service", Vec::new()).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/services/{service}/operations",
    tag = "traces",
    operation_id = "jaegerServiceOperations",
    summary = "Jaeger: span names of a service",
    params(
        ("service" = String, Path, description = "Service name"),
    ),
    responses(
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope: the span names, sorted.", body = JaegerAnswer<String>),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn service_operations(
    caller: Caller,
    State(app): State<AppState>,
    PathText(service): PathText,
) -> ApiResult<Json<JaegerAnswer<String>>> {
    Ok(data(
        span_values(&app, &caller, "name", vec![service]).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/operations",
    tag = "traces",
    operation_id = "jaegerOperations",
    summary = "Jaeger: span names of a service as {name, spanKind}",
    params(
        ("service" = Option<String>, Query, description = "Service (required)"),
    ),
    responses(
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope: the span names, sorted.", body = JaegerAnswer<JaegerOperation>),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn operations(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
) -> ApiResult<Json<JaegerAnswer<JaegerOperation>>> {
    let service = params
        .string("service")
        .ok_or_else(|| ApiError::bad_request("service is required"))?;
    let names = span_values(&app, &caller, "name", vec![service.to_string()]).await?;
    Ok(data(
        names
            .into_iter()
            .map(|name| JaegerOperation {
                name,
                span_kind: String::new(),
            })
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/traces/{trace_id}",
    tag = "traces",
    operation_id = "jaegerTrace",
    summary = "Jaeger: one trace",
    params(
        ("trace_id" = String, Path, description = "Trace id: 1-32 hex digits"),
    ),
    responses(
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope: the trace (its spans; log records are left out).", body = JaegerAnswer<JaegerTrace>),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "No span of this trace is held. Jaeger clients read `errors`; Shoal clients read `error` (code `trace_not_found`).", body = JaegerNotFound),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn trace(
    caller: Caller,
    State(app): State<AppState>,
    PathText(trace_id): PathText,
) -> ApiResult<Response> {
    let trace_id = crate::api::logs::trace_id_param(&trace_id)?;
    let (hits, _) = fetch_traces(&app, &caller, vec![trace_id.clone()]).await?;
    let traces = jaeger_traces(&hits);
    if traces.is_empty() {
        let message = format!("trace {trace_id} not found");
        return Ok((
            StatusCode::NOT_FOUND,
            Json(JaegerNotFound {
                data: None,
                errors: vec![JaegerError {
                    code: StatusCode::NOT_FOUND.as_u16(),
                    msg: message.clone(),
                }],
                error: ErrorDetail {
                    code: ErrorCode::TraceNotFound,
                    message,
                    extra: Map::new(),
                },
            }),
        )
            .into_response());
    }
    Ok(data(traces).into_response())
}

/// Jaeger's time parameters are Unix microseconds.
fn micros(params: &Params, name: &str) -> ApiResult<Option<i64>> {
    params
        .string(name)
        .map(|text| {
            text.parse::<i64>()
                .map(|us| us.saturating_mul(1000))
                .map_err(|_| {
                    ApiError::bad_request(format!("{name} must be Unix microseconds, got {text:?}"))
                })
        })
        .transpose()
}

/// `tags={"http.status_code":"500"}` as a query on span attributes.
fn tags_query(params: &Params) -> ApiResult<String> {
    let Some(text) = params.string("tags") else {
        return Ok(String::new());
    };
    let tags: Map<String, Value> = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("tags must be a JSON object: {e}")))?;
    let mut clauses = Vec::new();
    for (key, value) in tags {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ApiError::bad_request(format!(
                "tag key {key:?} may hold only letters, digits, '.', '_' and '-'"
            )));
        }
        let value = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        clauses.push(format!("attributes.{key}:\"{escaped}\""));
    }
    Ok(clauses.join(" AND "))
}

#[utoipa::path(
    get,
    path = "/api/traces",
    tag = "traces",
    operation_id = "jaegerFindTraces",
    summary = "Jaeger: find traces",
    params(
        ("service" = Option<String>, Query, description = "Service"),
        ("operation" = Option<String>, Query, description = "Span name"),
        ("tags" = Option<String>, Query, description = "JSON object of attribute values"),
        ("minDuration" = Option<String>, Query, description = "e.g. 100ms"),
        ("maxDuration" = Option<String>, Query, description = "e.g. 2s"),
        ("limit" = Option<u64>, Query, description = "Traces, default 20, at most 1500"),
        ("start" = Option<u64>, Query, description = "Unix microseconds"),
        ("end" = Option<u64>, Query, description = "Unix microseconds"),
        ("lookback" = Option<String>, Query, description = "e.g. 1h (default), or custom"),
    ),
    responses(
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope: the traces, the one with the newest matching span first.", body = JaegerAnswer<JaegerTrace>),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn find_traces(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
) -> ApiResult<Json<JaegerAnswer<JaegerTrace>>> {
    let now = now_nanos();
    let limit = params
        .number("limit")?
        .unwrap_or(DEFAULT_TRACES)
        .clamp(1, MAX_TRACES) as usize;
    let until = micros(&params, "end")?.unwrap_or(now);
    let lookback = match params.string("lookback") {
        // Grafana sends lookback=custom together with start and end.
        None | Some("") | Some("custom") => 3_600_000_000_000,
        Some(text) => parse_duration(text)?,
    };
    let since = micros(&params, "start")?.unwrap_or(until.saturating_sub(lookback));
    let until = until.max(since.saturating_add(1));
    if since >= until {
        // start at the end of time: nothing can be later.
        return Ok(data(Vec::new()));
    }
    let duration = |name: &str| -> ApiResult<Option<u64>> {
        params
            .string(name)
            .filter(|t| !t.is_empty())
            .map(|t| parse_duration(t).map(|d| d as u64))
            .transpose()
    };
    let mut request = SearchRequest {
        query: tags_query(&params)?,
        kind: KindFilter::Span,
        since: Some(since),
        until: Some(until),
        services: params
            .string("service")
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
        names: params
            .string("operation")
            .filter(|o| !o.is_empty())
            .map(|o| vec![o.to_string()])
            .unwrap_or_default(),
        min_duration: duration("minDuration")?,
        max_duration: duration("maxDuration")?,
        order: SearchOrder::Newest,
        limit: shoal_search::MAX_LIMIT,
        ..Default::default()
    };
    readable_streams(&app, &caller, &mut request.streams).await?;
    let (spans, _) = logs::search(&app.shoal, request).await?;
    let mut seen = BTreeSet::new();
    let mut trace_ids = Vec::new();
    for span in &spans {
        if seen.insert(span.record.trace_id.clone()) {
            trace_ids.push(span.record.trace_id.clone());
            if trace_ids.len() >= limit {
                break;
            }
        }
    }
    if trace_ids.is_empty() {
        return Ok(data(Vec::new()));
    }
    let (hits, _) = fetch_traces(&app, &caller, trace_ids.clone()).await?;
    let mut traces = jaeger_traces(&hits);
    // Newest match first, as the search found them.
    traces.sort_by_key(|t| trace_ids.iter().position(|id| *id == t.trace_id));
    Ok(data(traces))
}

/// Flatten a JSON object into Jaeger key/value tags (`a.b` for nesting).
fn tags(prefix: &str, object: &Map<String, Value>, out: &mut Vec<JaegerTag>) {
    for (key, value) in object {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) => tags(&key, inner, out),
            Value::Bool(b) => out.push(tag(key, "bool", *b)),
            Value::Number(n) if n.is_i64() || n.is_u64() => out.push(tag(key, "int64", n.clone())),
            Value::Number(n) => out.push(tag(key, "float64", n.clone())),
            Value::String(s) => out.push(tag(key, "string", s.clone())),
            other => out.push(tag(key, "string", other.to_string())),
        }
    }
}

/// Group span hits into Jaeger traces (log records are skipped).
fn jaeger_traces(hits: &[Hit]) -> Vec<JaegerTrace> {
    let mut by_trace: BTreeMap<&str, Vec<&Hit>> = BTreeMap::new();
    for hit in hits.iter().filter(|h| h.record.kind == Kind::Span) {
        by_trace
            .entry(hit.record.trace_id.as_str())
            .or_default()
            .push(hit);
    }
    by_trace
        .into_iter()
        .map(|(trace_id, spans)| {
            let mut processes: BTreeMap<String, (String, JaegerProcess)> = BTreeMap::new();
            let spans = spans
                .into_iter()
                .map(|hit| jaeger_span(trace_id, hit, &mut processes))
                .collect();
            JaegerTrace {
                trace_id: trace_id.to_string(),
                spans,
                processes: processes.into_values().collect(),
                warnings: None,
            }
        })
        .collect()
}

/// One span hit in Jaeger's shape; its process is added to `processes`
/// (keyed by service and resource) if it is not there yet.
fn jaeger_span(
    trace_id: &str,
    hit: &Hit,
    processes: &mut BTreeMap<String, (String, JaegerProcess)>,
) -> JaegerSpan {
    let record = &hit.record;
    let mut attributes: Map<String, Value> = match serde_json::from_str(&record.attributes) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let resource = match attributes.remove("resource") {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let process_key = format!("{}|{}", record.service, Value::Object(resource.clone()));
    let next = format!("p{}", processes.len() + 1);
    let process_id = processes
        .entry(process_key)
        .or_insert_with(|| {
            let mut process_tags = Vec::new();
            tags("", &resource, &mut process_tags);
            (
                next,
                JaegerProcess {
                    service_name: record.service.clone(),
                    tags: process_tags,
                },
            )
        })
        .0
        .clone();
    let mut span_tags = Vec::new();
    tags("", &attributes, &mut span_tags);
    let span = record.span.clone().unwrap_or_default();
    span_tags.push(tag("span.kind", "string", span.span_kind.clone()));
    span_tags.push(tag(
        "otel.status_code",
        "string",
        span.status.to_uppercase(),
    ));
    if span.status == "error" {
        span_tags.push(tag("error", "bool", true));
        if !span.status_message.is_empty() {
            span_tags.push(tag(
                "otel.status_description",
                "string",
                span.status_message.clone(),
            ));
        }
    }
    let events: Vec<Value> = serde_json::from_str::<Vec<Value>>(&span.events).unwrap_or_default();
    let logs = events
        .iter()
        .map(|event| {
            let mut fields = vec![tag("event", "string", event["name"].clone())];
            if let Some(Value::Object(attributes)) = event.get("attributes") {
                tags("", attributes, &mut fields);
            }
            JaegerLog {
                timestamp: event["time_nanos"].as_u64().unwrap_or(0) / 1000,
                fields,
            }
        })
        .collect();
    let references = if span.parent_span_id.is_empty() {
        Vec::new()
    } else {
        vec![JaegerReference {
            ref_type: "CHILD_OF",
            trace_id: trace_id.to_string(),
            span_id: span.parent_span_id.clone(),
        }]
    };
    JaegerSpan {
        trace_id: trace_id.to_string(),
        span_id: record.span_id.clone(),
        operation_name: record.message.clone(),
        references,
        start_time: record.ts_nanos / 1000,
        duration: span.duration_nanos / 1000,
        tags: span_tags,
        logs,
        process_id,
        warnings: None,
        flags: 1,
    }
}
