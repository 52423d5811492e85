//! Elasticsearch compatibility for shippers: `GET /` and `_bulk` (index and
//! create actions), answered as Elasticsearch answers, so Filebeat, Fluent
//! Bit, Vector, rsyslog's omelasticsearch and the official clients work
//! unchanged. The `_index` of an action names the stream.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use shoal_search::record::{self, validate_stream};
use shoal_search::{Record, SearchError};

use crate::api::error::{ApiError, ApiResult};
use crate::api::logs::{decompressed, MAX_RECORDS_PER_REQUEST};
use crate::api::AppState;

/// The Elasticsearch version Shoal answers as (clients check the major).
const ES_VERSION: &str = "8.15.0";

/// Clients refuse servers whose answers lack this header.
pub async fn product_header(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    response
}

/// An Elasticsearch-shaped error that also carries Shoal's `code` and `message`.
fn es_error(status: StatusCode, kind: &str, reason: impl Into<String>) -> Response {
    let reason = reason.into();
    let body = json!({
        "error": {"code": kind, "message": reason, "type": kind, "reason": reason,
                  "root_cause": [{"type": kind, "reason": reason}]},
        "status": status.as_u16(),
    });
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
    }
    response
}

/// A Shoal error in Elasticsearch's shape (its code as the type).
fn es_api_error(error: ApiError) -> Response {
    es_error(error.status, error.code.as_str(), error.message)
}

/// An ingest the engine refused. At a cap the whole request is refused
/// with 429, as Elasticsearch's rejected execution, so that the shipper
/// retries it (nothing of it has been stored).
fn es_ingest_error(error: SearchError) -> Response {
    match error {
        SearchError::Busy(_) => es_error(
            StatusCode::TOO_MANY_REQUESTS,
            "es_rejected_execution_exception",
            error.to_string(),
        ),
        other => es_api_error(ApiError::from(other)),
    }
}

/// The body, or the Elasticsearch-shaped error for one that cannot be read
/// (over `--logs-max-body-mb`: 413).
fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Vec<u8>, Response> {
    body.map(|bytes| bytes.to_vec()).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            es_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is too large",
            )
        } else {
            es_error(
                StatusCode::BAD_REQUEST,
                "parse_exception",
                format!("cannot read the request body: {e}"),
            )
        }
    })
}

#[utoipa::path(
    get,
    path = "/",
    tag = "logs",
    operation_id = "esInfo",
    summary = "Elasticsearch-style node info (for shippers and clients that check the version)",
    responses(
        (status = 200, description = "Info with version.number 8.15.0."),
    )
)]
pub async fn info(State(app): State<AppState>) -> Response {
    let shoal = &app.shoal;
    Json(json!({
        "name": shoal.node_id.to_string(),
        "cluster_name": shoal.settings.cluster_name,
        "cluster_uuid": format!("shoal-{}", shoal.settings.cluster_name),
        "version": {
            "number": ES_VERSION,
            "build_flavor": "default",
            "build_type": "shoal",
            "lucene_version": "9.11.1",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    }))
    .into_response()
}

#[utoipa::path(
    method(post, put),
    path = "/_bulk",
    tag = "logs",
    summary = "Elasticsearch _bulk",
    description = "Elasticsearch-compatible bulk ingest for shippers (Filebeat, Fluent Bit, Vector, rsyslog omelasticsearch, official clients). NDJSON action/source pairs; `index` and `create` store the document as a log record in the stream named by `_index` (or the path); `delete` and `update` fail per item (logs are append-only). Answers like Elasticsearch: per-item status and error, the top-level `errors` flag, and the `X-Elastic-Product: Elasticsearch` header. When a cap is reached the whole request gets 429 (es_rejected_execution_exception) with Retry-After.",
    responses(
        (status = 200, description = "Per-item results."),
        (status = 400, description = "Malformed action line (Elasticsearch error shape plus code/message)."),
        (status = 413, description = "Error codes: `payload_too_large`, `too_many_records`.", body = crate::api::error::ErrorBody),
        (status = 429, description = "A cap is reached (WAL size, indexing memory or disk): retry later. Error code `busy`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn bulk_default(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body_or_error(body) {
        Ok(body) => bulk(app, None, headers, body).await,
        Err(response) => response,
    }
}

#[utoipa::path(
    method(post, put),
    path = "/{index}/_bulk",
    tag = "logs",
    summary = "Elasticsearch _bulk with a default index",
    description = "Elasticsearch-compatible bulk ingest for shippers (Filebeat, Fluent Bit, Vector, rsyslog omelasticsearch, official clients). NDJSON action/source pairs; `index` and `create` store the document as a log record in the stream named by `_index` (or the path); `delete` and `update` fail per item (logs are append-only). Answers like Elasticsearch: per-item status and error, the top-level `errors` flag, and the `X-Elastic-Product: Elasticsearch` header. When a cap is reached the whole request gets 429 (es_rejected_execution_exception) with Retry-After.",
    params(
        ("index" = String, Path, description = ""),
    ),
    responses(
        (status = 200, description = "Per-item results."),
        (status = 400, description = "Malformed action line (Elasticsearch error shape plus code/message)."),
        (status = 413, description = "Error codes: `payload_too_large`, `too_many_records`.", body = crate::api::error::ErrorBody),
        (status = 429, description = "A cap is reached (WAL size, indexing memory or disk): retry later. Error code `busy`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn bulk_index(
    State(app): State<AppState>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body_or_error(body) {
        Ok(body) => bulk(app, Some(index), headers, body).await,
        Err(response) => response,
    }
}

/// One action of a bulk body and what became of it.
struct Item {
    op: String,
    index: String,
    id: String,
    status: u16,
    error: Option<(String, String)>,
}

impl Item {
    fn json(&self) -> Value {
        let mut inner = json!({"_index": self.index, "_id": self.id, "status": self.status});
        match &self.error {
            Some((kind, reason)) => inner["error"] = json!({"type": kind, "reason": reason}),
            None => {
                inner["result"] = json!("created");
                inner["_version"] = json!(1);
                inner["_shards"] = json!({"total": 1, "successful": 1, "failed": 0});
                inner["_seq_no"] = json!(0);
                inner["_primary_term"] = json!(1);
            }
        }
        json!({ self.op.clone(): inner })
    }
}

async fn bulk(
    app: AppState,
    path_index: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Response {
    let started = std::time::Instant::now();
    // Refuse before parsing: under backpressure a refused batch must be cheap.
    if let Err(e) = app.shoal.logs.check_capacity() {
        return es_ingest_error(e);
    }
    let body = match decompressed(&headers, &body, app.shoal.settings.logs_max_body_bytes) {
        Ok(body) => body,
        Err(e) => return es_api_error(e),
    };
    let parsed =
        tokio::task::spawn_blocking(move || parse_bulk(&body, path_index.as_deref())).await;
    let (mut items, by_stream) = match parsed {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(response)) => return response,
        Err(e) => return es_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    for (stream, records) in by_stream {
        let (positions, records): (Vec<usize>, Vec<Record>) = records.into_iter().unzip();
        match app.shoal.logs.ingest(&stream, records).await {
            Ok(outcome) => {
                for (index, reason) in outcome.rejected {
                    if let Some(item) = positions.get(index).and_then(|p| items.get_mut(*p)) {
                        item.status = 400;
                        item.error = Some(("document_parsing_exception".into(), reason));
                    }
                }
            }
            Err(e) => return es_ingest_error(e),
        }
    }
    let errors = items.iter().any(|item| item.error.is_some());
    Json(json!({
        "took": started.elapsed().as_millis() as u64,
        "errors": errors,
        "items": items.iter().map(Item::json).collect::<Vec<_>>(),
    }))
    .into_response()
}

type Bulk = (Vec<Item>, Vec<(String, Vec<(usize, Record)>)>);

/// Parse NDJSON action/source pairs. A malformed action line ends the
/// request (as in Elasticsearch); a bad document fails only its item.
fn parse_bulk(body: &[u8], path_index: Option<&str>) -> Result<Bulk, Response> {
    let text = std::str::from_utf8(body).map_err(|e| {
        es_error(
            StatusCode::BAD_REQUEST,
            "parse_exception",
            format!("the body is not UTF-8: {e}"),
        )
    })?;
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let mut items = Vec::new();
    let mut by_stream: std::collections::BTreeMap<String, Vec<(usize, Record)>> =
        Default::default();
    while let Some(action_line) = lines.next() {
        if items.len() >= MAX_RECORDS_PER_REQUEST {
            return Err(es_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_records",
                format!("more than {MAX_RECORDS_PER_REQUEST} actions in one request"),
            ));
        }
        let action: Value = serde_json::from_str(action_line).map_err(|e| {
            es_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                format!("malformed action/metadata line: {e}"),
            )
        })?;
        let Some((op, meta)) = action
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
        else {
            return Err(es_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                format!("malformed action/metadata line {}: expected one action such as {{\"index\":{{}}}}", items.len() + 1),
            ));
        };
        let op = op.clone();
        let meta = meta.as_object().cloned().unwrap_or_default();
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .or(path_index)
            .unwrap_or("")
            .to_string();
        let id = meta
            .get("_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{:016x}{:04x}",
                    rand::random::<u64>(),
                    rand::random::<u16>()
                )
            });
        let mut item = Item {
            op: op.clone(),
            index: index.clone(),
            id,
            status: 201,
            error: None,
        };
        // delete has no source line; update and delete are not supported (logs are append-only).
        match op.as_str() {
            "index" | "create" => {}
            "delete" => {
                item.status = 400;
                item.error = Some((
                    "action_request_validation_exception".into(),
                    "logs are append-only: delete is not supported".into(),
                ));
                items.push(item);
                continue;
            }
            "update" => {
                lines.next();
                item.status = 400;
                item.error = Some((
                    "action_request_validation_exception".into(),
                    "logs are append-only: update is not supported".into(),
                ));
                items.push(item);
                continue;
            }
            other => {
                return Err(es_error(
                    StatusCode::BAD_REQUEST,
                    "illegal_argument_exception",
                    format!("unknown bulk action {other:?}; expected index or create"),
                ))
            }
        }
        let Some(source) = lines.next() else {
            return Err(es_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                "the last action has no source line",
            ));
        };
        if index.is_empty() {
            item.status = 400;
            item.error = Some((
                "action_request_validation_exception".into(),
                "index is missing".into(),
            ));
        } else if let Err(e) = validate_stream(&index) {
            item.status = 400;
            item.error = Some(("invalid_index_name_exception".into(), e.to_string()));
        } else {
            let parsed = serde_json::from_str::<Value>(source)
                .map_err(|e| format!("failed to parse the document: {e}"))
                .and_then(|doc| record::log_from_json(doc, &index).map_err(|e| e.to_string()));
            match parsed {
                Ok(record) => by_stream
                    .entry(index.clone())
                    .or_default()
                    .push((items.len(), record)),
                Err(reason) => {
                    item.status = 400;
                    item.error = Some(("document_parsing_exception".into(), reason));
                }
            }
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(es_error(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "no requests added",
        ));
    }
    Ok((items, by_stream.into_iter().collect()))
}

/// `HEAD /` (the clients' ping).
#[utoipa::path(
    head,
    path = "/",
    tag = "logs",
    operation_id = "esPing",
    summary = "Elasticsearch ping",
    responses(
        (status = 200, description = "Up."),
    )
)]
pub async fn ping() -> ApiResult<StatusCode> {
    Ok(StatusCode::OK)
}
