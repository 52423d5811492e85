//! Elasticsearch compatibility for shippers: `GET /` and `_bulk` (index and
//! create actions), answered as Elasticsearch answers, so Filebeat, Fluent
//! Bit, Vector, rsyslog's omelasticsearch and the official clients work
//! unchanged. The `_index` of an action names the stream.

use crate::api::auth::Caller;
use crate::api::extract::PathText;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use shoal_acl::{Access, Resource};
use shoal_search::record::{self, validate_stream};
use shoal_search::{Record, SearchError};
use utoipa::ToSchema;

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

/// An error in Elasticsearch's shape, which also carries Shoal's `code` and
/// `message`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "illegal_argument_exception", "message": "malformed action/metadata line: expected value at line 1 column 1", "type": "illegal_argument_exception", "reason": "malformed action/metadata line: expected value at line 1 column 1", "root_cause": [{"type": "illegal_argument_exception", "reason": "malformed action/metadata line: expected value at line 1 column 1"}]}, "status": 400}))]
pub struct EsError {
    pub error: EsErrorDetail,
    /// The HTTP status.
    pub status: u16,
}

/// The error of an [`EsError`].
#[derive(Debug, Serialize, ToSchema)]
pub struct EsErrorDetail {
    /// The same as `type` (Shoal's error field).
    pub code: String,
    /// The same as `reason` (Shoal's error field).
    pub message: String,
    /// Elasticsearch's error type (`illegal_argument_exception`,
    /// `parse_exception`, `action_request_validation_exception`,
    /// `es_rejected_execution_exception`) or a Shoal error code
    /// (`payload_too_large`, `too_many_records`, `unsupported_encoding`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// What went wrong, for people.
    pub reason: String,
    pub root_cause: Vec<EsCause>,
}

/// An error's type and reason (a root cause, or a bulk item's error).
#[derive(Debug, Serialize, ToSchema)]
pub struct EsCause {
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
}

/// An Elasticsearch-shaped error that also carries Shoal's `code` and `message`.
fn es_error(status: StatusCode, kind: &str, reason: impl Into<String>) -> Response {
    let reason = reason.into();
    let body = EsError {
        error: EsErrorDetail {
            code: kind.to_string(),
            message: reason.clone(),
            kind: kind.to_string(),
            reason: reason.clone(),
            root_cause: vec![EsCause {
                kind: kind.to_string(),
                reason,
            }],
        },
        status: status.as_u16(),
    };
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
        // What Elasticsearch answers past its flood-stage disk watermark.
        SearchError::NoSpace(_) => es_error(
            StatusCode::TOO_MANY_REQUESTS,
            "cluster_block_exception",
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
        (status = 200, description = "Info with version.number 8.15.0.", body = EsInfo,
         headers(("X-Elastic-Product" = String, description = "`Elasticsearch` (clients refuse servers without it)"))),
    )
)]
pub async fn info(State(app): State<AppState>) -> Json<EsInfo> {
    let shoal = &app.shoal;
    Json(EsInfo {
        name: shoal.node_id.to_string(),
        cluster_name: shoal.settings.cluster_name.clone(),
        cluster_uuid: format!("shoal-{}", shoal.settings.cluster_name),
        version: EsVersion {
            number: ES_VERSION,
            build_flavor: "default",
            build_type: "shoal",
            lucene_version: "9.11.1",
            minimum_wire_compatibility_version: "7.17.0",
            minimum_index_compatibility_version: "7.0.0",
        },
        tagline: "You Know, for Search",
    })
}

/// Elasticsearch's node info, as shippers and clients check it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "1", "cluster_name": "shoal", "cluster_uuid": "shoal-shoal", "version": {"number": "8.15.0", "build_flavor": "default", "build_type": "shoal", "lucene_version": "9.11.1", "minimum_wire_compatibility_version": "7.17.0", "minimum_index_compatibility_version": "7.0.0"}, "tagline": "You Know, for Search"}))]
pub struct EsInfo {
    /// This node's id.
    pub name: String,
    /// The cluster's name (`--cluster-name`).
    pub cluster_name: String,
    /// `shoal-` and the cluster's name.
    pub cluster_uuid: String,
    pub version: EsVersion,
    pub tagline: &'static str,
}

/// The Elasticsearch version Shoal answers as.
#[derive(Debug, Serialize, ToSchema)]
pub struct EsVersion {
    /// 8.15.0 (clients check the major version).
    pub number: &'static str,
    pub build_flavor: &'static str,
    pub build_type: &'static str,
    pub lucene_version: &'static str,
    pub minimum_wire_compatibility_version: &'static str,
    pub minimum_index_compatibility_version: &'static str,
}

const BULK_DESCRIPTION: &str = "Elasticsearch-compatible bulk ingest for shippers (Filebeat, Fluent Bit, Vector, rsyslog omelasticsearch, official clients). NDJSON action/source pairs; `index` and `create` store the document as a log record in the stream named by `_index` (or the path); `delete` and `update` fail per item (logs are append-only). Answers like Elasticsearch: per-item status and error, the top-level `errors` flag, and the `X-Elastic-Product: Elasticsearch` header. When a cap is reached the whole request gets 429 (es_rejected_execution_exception) with Retry-After.";

#[utoipa::path(
    post,
    path = "/_bulk",
    tag = "logs",
    operation_id = "esBulk",
    summary = "Elasticsearch _bulk",
    description = BULK_DESCRIPTION,
    request_body(
        content = String,
        content_type = "application/x-ndjson",
        description = "NDJSON action/source pairs (`delete` has no source line), optionally gzip-compressed (`Content-Encoding: gzip`); at most 100 000 actions and --logs-max-body-mb.",
        example = json!("{\"index\": {\"_index\": \"app\", \"_id\": \"1\"}}\n{\"@timestamp\": \"2026-11-29T11:04:05Z\", \"message\": \"order placed\", \"log.level\": \"info\"}\n")
    ),
    responses(
        (status = 200, description = "Per-item results.", body = EsBulkResponse,
         headers(("X-Elastic-Product" = String, description = "`Elasticsearch` (clients refuse servers without it)"))),
        (status = 400, description = "Malformed action line (Elasticsearch error shape plus code/message).", body = EsError),
        (status = 413, description = "The body is over --logs-max-body-mb, or holds more than 100 000 actions. Error types: `payload_too_large`, `too_many_records`.", body = EsError),
        (status = 415, description = "A `Content-Encoding` other than gzip. Error types: `unsupported_encoding`.", body = EsError),
        (status = 429, description = "A cap is reached (WAL size, indexing memory or disk: `es_rejected_execution_exception`), or the disk has less than `--min-free-disk-mb` free (`cluster_block_exception`, as Elasticsearch past its flood-stage watermark): retry later; nothing of the request was stored.", body = EsError,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Internal error. Error types: `internal`.", body = EsError),
    )
)]
pub async fn bulk_default(
    caller: Caller,
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    bulk_request(app, caller, None, headers, body).await
}

#[utoipa::path(
    put,
    path = "/_bulk",
    tag = "logs",
    operation_id = "esBulkPut",
    summary = "Elasticsearch _bulk (PUT, as the Python client sends it)",
    description = BULK_DESCRIPTION,
    request_body(
        content = String,
        content_type = "application/x-ndjson",
        description = "NDJSON action/source pairs (`delete` has no source line), optionally gzip-compressed (`Content-Encoding: gzip`); at most 100 000 actions and --logs-max-body-mb.",
        example = json!("{\"index\": {\"_index\": \"app\", \"_id\": \"1\"}}\n{\"@timestamp\": \"2026-11-29T11:04:05Z\", \"message\": \"order placed\", \"log.level\": \"info\"}\n")
    ),
    responses(
        (status = 200, description = "Per-item results.", body = EsBulkResponse,
         headers(("X-Elastic-Product" = String, description = "`Elasticsearch` (clients refuse servers without it)"))),
        (status = 400, description = "Malformed action line (Elasticsearch error shape plus code/message).", body = EsError),
        (status = 413, description = "The body is over --logs-max-body-mb, or holds more than 100 000 actions. Error types: `payload_too_large`, `too_many_records`.", body = EsError),
        (status = 415, description = "A `Content-Encoding` other than gzip. Error types: `unsupported_encoding`.", body = EsError),
        (status = 429, description = "A cap is reached (WAL size, indexing memory or disk: `es_rejected_execution_exception`), or the disk has less than `--min-free-disk-mb` free (`cluster_block_exception`, as Elasticsearch past its flood-stage watermark): retry later; nothing of the request was stored.", body = EsError,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Internal error. Error types: `internal`.", body = EsError),
    )
)]
pub async fn bulk_default_put(
    caller: Caller,
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    bulk_request(app, caller, None, headers, body).await
}

#[utoipa::path(
    post,
    path = "/{index}/_bulk",
    tag = "logs",
    operation_id = "esBulkIndex",
    summary = "Elasticsearch _bulk with a default index",
    description = BULK_DESCRIPTION,
    params(
        ("index" = String, Path, description = "The default stream (`_index`) of actions that name none"),
    ),
    request_body(
        content = String,
        content_type = "application/x-ndjson",
        description = "NDJSON action/source pairs (`delete` has no source line), optionally gzip-compressed (`Content-Encoding: gzip`); at most 100 000 actions and --logs-max-body-mb.",
        example = json!("{\"index\": {\"_index\": \"app\", \"_id\": \"1\"}}\n{\"@timestamp\": \"2026-11-29T11:04:05Z\", \"message\": \"order placed\", \"log.level\": \"info\"}\n")
    ),
    responses(
        (status = 200, description = "Per-item results.", body = EsBulkResponse,
         headers(("X-Elastic-Product" = String, description = "`Elasticsearch` (clients refuse servers without it)"))),
        (status = 400, description = "Malformed action line (Elasticsearch error shape plus code/message).", body = EsError),
        (status = 413, description = "The body is over --logs-max-body-mb, or holds more than 100 000 actions. Error types: `payload_too_large`, `too_many_records`.", body = EsError),
        (status = 415, description = "A `Content-Encoding` other than gzip. Error types: `unsupported_encoding`.", body = EsError),
        (status = 429, description = "A cap is reached (WAL size, indexing memory or disk: `es_rejected_execution_exception`), or the disk has less than `--min-free-disk-mb` free (`cluster_block_exception`, as Elasticsearch past its flood-stage watermark): retry later; nothing of the request was stored.", body = EsError,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Internal error. Error types: `internal`.", body = EsError),
    )
)]
pub async fn bulk_index(
    caller: Caller,
    State(app): State<AppState>,
    PathText(index): PathText,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    bulk_request(app, caller, Some(index), headers, body).await
}

#[utoipa::path(
    put,
    path = "/{index}/_bulk",
    tag = "logs",
    operation_id = "esBulkIndexPut",
    summary = "Elasticsearch _bulk with a default index (PUT)",
    description = BULK_DESCRIPTION,
    params(
        ("index" = String, Path, description = "The default stream (`_index`) of actions that name none"),
    ),
    request_body(
        content = String,
        content_type = "application/x-ndjson",
        description = "NDJSON action/source pairs (`delete` has no source line), optionally gzip-compressed (`Content-Encoding: gzip`); at most 100 000 actions and --logs-max-body-mb.",
        example = json!("{\"index\": {\"_index\": \"app\", \"_id\": \"1\"}}\n{\"@timestamp\": \"2026-11-29T11:04:05Z\", \"message\": \"order placed\", \"log.level\": \"info\"}\n")
    ),
    responses(
        (status = 200, description = "Per-item results.", body = EsBulkResponse,
         headers(("X-Elastic-Product" = String, description = "`Elasticsearch` (clients refuse servers without it)"))),
        (status = 400, description = "Malformed action line (Elasticsearch error shape plus code/message).", body = EsError),
        (status = 413, description = "The body is over --logs-max-body-mb, or holds more than 100 000 actions. Error types: `payload_too_large`, `too_many_records`.", body = EsError),
        (status = 415, description = "A `Content-Encoding` other than gzip. Error types: `unsupported_encoding`.", body = EsError),
        (status = 429, description = "A cap is reached (WAL size, indexing memory or disk: `es_rejected_execution_exception`), or the disk has less than `--min-free-disk-mb` free (`cluster_block_exception`, as Elasticsearch past its flood-stage watermark): retry later; nothing of the request was stored.", body = EsError,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Internal error. Error types: `internal`.", body = EsError),
    )
)]
pub async fn bulk_index_put(
    caller: Caller,
    State(app): State<AppState>,
    PathText(index): PathText,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    bulk_request(app, caller, Some(index), headers, body).await
}

async fn bulk_request(
    app: AppState,
    caller: Caller,
    path_index: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body_or_error(body) {
        Ok(body) => bulk(app, caller, path_index, headers, body).await,
        Err(response) => response,
    }
}

/// A bulk action.
#[derive(Debug, Clone, Copy)]
enum BulkOp {
    Index,
    Create,
    Delete,
    Update,
}

/// One action of a bulk body and what became of it.
struct Item {
    op: BulkOp,
    index: String,
    id: String,
    status: u16,
    error: Option<(String, String)>,
}

impl Item {
    fn answer(&self) -> EsBulkItem {
        let stored = self.error.is_none();
        let result = EsBulkItemResult {
            index: self.index.clone(),
            id: self.id.clone(),
            status: self.status,
            error: self.error.as_ref().map(|(kind, reason)| EsCause {
                kind: kind.clone(),
                reason: reason.clone(),
            }),
            result: stored.then_some("created"),
            version: stored.then_some(1),
            shards: stored.then_some(EsShards {
                total: 1,
                successful: 1,
                failed: 0,
            }),
            seq_no: stored.then_some(0),
            primary_term: stored.then_some(1),
        };
        match self.op {
            BulkOp::Index => EsBulkItem::Index(result),
            BulkOp::Create => EsBulkItem::Create(result),
            BulkOp::Delete => EsBulkItem::Delete(result),
            BulkOp::Update => EsBulkItem::Update(result),
        }
    }
}

/// Elasticsearch's bulk answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"took": 3, "errors": true, "items": [{"index": {"_index": "app", "_id": "1", "status": 201, "result": "created", "_version": 1, "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1}}, {"create": {"_index": "app", "_id": "2", "status": 400, "error": {"type": "document_parsing_exception", "reason": "timestamp \"yesterday\" is not RFC 3339"}}}]}))]
pub struct EsBulkResponse {
    /// Milliseconds taken.
    pub took: u64,
    /// True when any item failed.
    pub errors: bool,
    /// One result per action, in body order.
    pub items: Vec<EsBulkItem>,
}

/// An action's result, under the action's name.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EsBulkItem {
    Index(EsBulkItemResult),
    Create(EsBulkItemResult),
    Delete(EsBulkItemResult),
    Update(EsBulkItemResult),
}

/// What became of one action.
#[derive(Debug, Serialize, ToSchema)]
pub struct EsBulkItemResult {
    /// The stream (`_index` of the action, or the path's).
    #[serde(rename = "_index")]
    pub index: String,
    /// The action's `_id`, or a generated one.
    #[serde(rename = "_id")]
    pub id: String,
    /// 201 when stored, 400 when refused.
    pub status: u16,
    /// Why it was refused (only when refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<EsCause>,
    /// `created` (only when stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub result: Option<&'static str>,
    /// Always 1 (only when stored).
    #[serde(rename = "_version", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub version: Option<u64>,
    /// Only when stored.
    #[serde(rename = "_shards", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub shards: Option<EsShards>,
    /// Always 0 (only when stored).
    #[serde(rename = "_seq_no", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub seq_no: Option<u64>,
    /// Always 1 (only when stored).
    #[serde(rename = "_primary_term", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub primary_term: Option<u64>,
}

/// Shard counts of a stored item (always one shard).
#[derive(Debug, Serialize, ToSchema)]
pub struct EsShards {
    pub total: u32,
    pub successful: u32,
    pub failed: u32,
}

async fn bulk(
    app: AppState,
    caller: Caller,
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
        // Like Elasticsearch, a document the credentials may not write
        // fails as an item; the others are stored.
        if let Err(e) = caller.require(Resource::Logs, &stream, Access::Write) {
            for position in &positions {
                if let Some(item) = items.get_mut(*position) {
                    item.status = 403;
                    item.error = Some(("security_exception".into(), e.message.clone()));
                }
            }
            continue;
        }
        match app.shoal.logs.ingest(&stream, records).await {
            Ok(outcome) => {
                for (index, reason) in outcome.rejected {
                    if let Some(item) = positions.get(index).and_then(|p| items.get_mut(*p)) {
                        item.status = 400;
                        item.error = Some(("document_parsing_exception".into(), reason));
                    }
                }
            }
            // Like a document Elasticsearch cannot index: the others are stored.
            Err(SearchError::TooManyStreams(reason)) => {
                for position in &positions {
                    if let Some(item) = items.get_mut(*position) {
                        item.status = 400;
                        item.error = Some(("validation_exception".into(), reason.clone()));
                    }
                }
            }
            Err(e) => return es_ingest_error(e),
        }
    }
    let errors = items.iter().any(|item| item.error.is_some());
    Json(EsBulkResponse {
        took: started.elapsed().as_millis() as u64,
        errors,
        items: items.iter().map(Item::answer).collect(),
    })
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
        let op = match op.as_str() {
            "index" => BulkOp::Index,
            "create" => BulkOp::Create,
            "delete" => BulkOp::Delete,
            "update" => BulkOp::Update,
            other => {
                return Err(es_error(
                    StatusCode::BAD_REQUEST,
                    "illegal_argument_exception",
                    format!("unknown bulk action {other:?}; expected index or create"),
                ))
            }
        };
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
            op,
            index: index.clone(),
            id,
            status: 201,
            error: None,
        };
        // delete has no source line; update and delete are not supported (logs are append-only).
        match op {
            BulkOp::Index | BulkOp::Create => {}
            BulkOp::Delete => {
                item.status = 400;
                item.error = Some((
                    "action_request_validation_exception".into(),
                    "logs are append-only: delete is not supported".into(),
                ));
                items.push(item);
                continue;
            }
            BulkOp::Update => {
                lines.next();
                item.status = 400;
                item.error = Some((
                    "action_request_validation_exception".into(),
                    "logs are append-only: update is not supported".into(),
                ));
                items.push(item);
                continue;
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
