//! The Jaeger query API shape (`/api/services`, `/api/traces`, ...), so
//! Grafana's Jaeger data source reads Shoal's spans unchanged.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use shoal_search::record::now_nanos;
use shoal_search::{AggregateRequest, Hit, Kind, KindFilter, SearchOrder, SearchRequest};

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::Params;
use crate::api::logs::{fetch_traces, parse_duration};
use crate::api::AppState;
use crate::services::logs;

/// Traces one `/api/traces` search returns by default, and at most.
const DEFAULT_TRACES: u64 = 20;
const MAX_TRACES: u64 = 1500;

fn data(value: Value) -> Response {
    Json(json!({"data": value, "total": value.as_array().map_or(0, Vec::len), "limit": 0, "offset": 0, "errors": null}))
        .into_response()
}

async fn span_values(app: &AppState, field: &str, services: Vec<String>) -> ApiResult<Vec<String>> {
    let filter = SearchRequest {
        kind: KindFilter::Span,
        services,
        limit: 1,
        ..Default::default()
    };
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
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope."),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn services(State(app): State<AppState>) -> ApiResult<Response> {
    Ok(data(json!(span_values(&app, "service", Vec::new()).await?)))
}

#[utoipa::path(
    get,
    path = "/api/services/{service}/operations",
    tag = "traces",
    operation_id = "jaegerServiceOperations",
    summary = "Jaeger: span names of a service",
    params(
        ("service" = String, Path, description = ""),
    ),
    responses(
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope."),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn service_operations(
    State(app): State<AppState>,
    Path(service): Path<String>,
) -> ApiResult<Response> {
    Ok(data(json!(span_values(&app, "name", vec![service]).await?)))
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
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope."),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn operations(State(app): State<AppState>, params: Params) -> ApiResult<Response> {
    let service = params
        .string("service")
        .ok_or_else(|| ApiError::bad_request("service is required"))?;
    let names = span_values(&app, "name", vec![service.to_string()]).await?;
    Ok(data(json!(names
        .into_iter()
        .map(|name| json!({"name": name, "spanKind": ""}))
        .collect::<Vec<_>>())))
}

#[utoipa::path(
    get,
    path = "/api/traces/{trace_id}",
    tag = "traces",
    operation_id = "jaegerTrace",
    summary = "Jaeger: one trace",
    params(
        ("trace_id" = String, Path, description = ""),
    ),
    responses(
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope."),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "No span of this trace is held. Jaeger clients read `errors`; Shoal clients read `error` (code `trace_not_found`)."),
    )
)]
pub async fn trace(
    State(app): State<AppState>,
    Path(trace_id): Path<String>,
) -> ApiResult<Response> {
    let trace_id = crate::api::logs::trace_id_param(&trace_id)?;
    let (hits, _) = fetch_traces(&app, vec![trace_id.clone()]).await?;
    let traces = jaeger_traces(&hits);
    if traces.is_empty() {
        return Ok((
            StatusCode::NOT_FOUND,
            Json(json!({"data": null, "errors": [{"code": 404, "msg": format!("trace {trace_id} not found")}],
                        "error": {"code": "trace_not_found", "message": format!("trace {trace_id} not found")}})),
        )
            .into_response());
    }
    Ok(data(json!(traces)))
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
        (status = 200, description = "Jaeger's `{\"data\": ...}` envelope."),
        (status = 400, description = "Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn find_traces(State(app): State<AppState>, params: Params) -> ApiResult<Response> {
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
    let since = micros(&params, "start")?.unwrap_or(until - lookback);
    let duration = |name: &str| -> ApiResult<Option<u64>> {
        params
            .string(name)
            .filter(|t| !t.is_empty())
            .map(|t| parse_duration(t).map(|d| d as u64))
            .transpose()
    };
    let request = SearchRequest {
        query: tags_query(&params)?,
        kind: KindFilter::Span,
        since: Some(since),
        until: Some(until.max(since + 1)),
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
        return Ok(data(json!([])));
    }
    let (hits, _) = fetch_traces(&app, trace_ids.clone()).await?;
    let mut traces = jaeger_traces(&hits);
    // Newest match first, as the search found them.
    traces.sort_by_key(|t| {
        trace_ids
            .iter()
            .position(|id| Some(id.as_str()) == t["traceID"].as_str())
    });
    Ok(data(json!(traces)))
}

/// Flatten a JSON object into Jaeger key/value tags (`a.b` for nesting).
fn tags(prefix: &str, object: &Map<String, Value>, out: &mut Vec<Value>) {
    for (key, value) in object {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) => tags(&key, inner, out),
            Value::Bool(b) => out.push(json!({"key": key, "type": "bool", "value": b})),
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                out.push(json!({"key": key, "type": "int64", "value": n}))
            }
            Value::Number(n) => out.push(json!({"key": key, "type": "float64", "value": n})),
            Value::String(s) => out.push(json!({"key": key, "type": "string", "value": s})),
            other => out.push(json!({"key": key, "type": "string", "value": other.to_string()})),
        }
    }
}

/// Group span hits into Jaeger traces (log records are skipped).
fn jaeger_traces(hits: &[Hit]) -> Vec<Value> {
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
            let mut processes: BTreeMap<String, (String, Value)> = BTreeMap::new();
            let spans: Vec<Value> = spans
                .into_iter()
                .map(|hit| {
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
                            (next, json!({"serviceName": record.service, "tags": process_tags}))
                        })
                        .0
                        .clone();
                    let mut span_tags = Vec::new();
                    tags("", &attributes, &mut span_tags);
                    let span = record.span.clone().unwrap_or_default();
                    span_tags.push(json!({"key": "span.kind", "type": "string", "value": span.span_kind}));
                    span_tags.push(json!({"key": "otel.status_code", "type": "string", "value": span.status.to_uppercase()}));
                    if span.status == "error" {
                        span_tags.push(json!({"key": "error", "type": "bool", "value": true}));
                        if !span.status_message.is_empty() {
                            span_tags.push(json!({"key": "otel.status_description", "type": "string", "value": span.status_message}));
                        }
                    }
                    let events: Vec<Value> = serde_json::from_str::<Vec<Value>>(&span.events).unwrap_or_default();
                    let logs: Vec<Value> = events
                        .iter()
                        .map(|event| {
                            let mut fields = vec![json!({"key": "event", "type": "string", "value": event["name"]})];
                            if let Some(Value::Object(attributes)) = event.get("attributes") {
                                tags("", attributes, &mut fields);
                            }
                            json!({"timestamp": event["time_nanos"].as_u64().unwrap_or(0) / 1000, "fields": fields})
                        })
                        .collect();
                    let references: Vec<Value> = if span.parent_span_id.is_empty() {
                        Vec::new()
                    } else {
                        vec![json!({"refType": "CHILD_OF", "traceID": trace_id, "spanID": span.parent_span_id})]
                    };
                    json!({
                        "traceID": trace_id,
                        "spanID": record.span_id,
                        "operationName": record.message,
                        "references": references,
                        "startTime": record.ts_nanos / 1000,
                        "duration": span.duration_nanos / 1000,
                        "tags": span_tags,
                        "logs": logs,
                        "processID": process_id,
                        "warnings": null,
                        "flags": 1,
                    })
                })
                .collect();
            let processes: Map<String, Value> = processes.into_values().collect();
            json!({"traceID": trace_id, "spans": spans, "processes": processes, "warnings": null})
        })
        .collect()
}
