//! `POST /v1/sql`: SQL (Polars) over datasets, logs and workflow
//! instances, cluster-wide.

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_acl::{Access, Resource};
use shoal_datasets::Format;
use shoal_transport::RemoteErrorKind;
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::api::extract::{Body, Params};
use crate::api::logs::{content_type, readable_streams, NodeReportBody};
use crate::api::AppState;
use crate::services::datasets::{self, DatasetQueryError, SqlPlan};
use crate::services::sql_worker::{self, Output};

/// The JSON body of a SQL request.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"query": "SELECT date, count(*) AS orders, sum(total) AS revenue FROM orders GROUP BY date ORDER BY date", "format": "json"}))]
pub struct SqlQuery {
    /// One SELECT (at most 8 KiB).
    pub query: String,
    /// `json` (default), `csv`, `parquet` or `arrow` (Arrow IPC file);
    /// without it, the `Accept` header's media type chooses.
    #[serde(default)]
    pub format: Option<String>,
}

/// The SQL text and the format a request asks for. The SQL comes as
/// `{"query": ...}`, as a `text/plain` body, or as `?q=`.
pub fn read_query(
    params: &Params,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<(String, Option<String>)> {
    if body.is_empty() {
        let query = params.string("q").map(str::to_string).ok_or_else(|| {
            ApiError::bad_request("send the SQL as {\"query\": ...}, a text body, or ?q=")
        })?;
        return Ok((query, params.string("format").map(str::to_string)));
    }
    if content_type(headers).starts_with("text/plain") {
        let query = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the SQL is not UTF-8"))?;
        return Ok((query, params.string("format").map(str::to_string)));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let needs_query = || {
        ApiError::bad_request("the JSON body needs a string field query (and optionally format)")
    };
    if !value.is_object() {
        return Err(needs_query());
    }
    let parsed: SqlQuery = serde_json::from_value(value).map_err(|_| needs_query())?;
    Ok((parsed.query, parsed.format))
}

fn format_of(asked: Option<&str>, headers: &HeaderMap) -> ApiResult<Format> {
    if let Some(name) = asked {
        return Format::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "format {name:?} is not one of json, csv, parquet, arrow"
            ))
        });
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(accept
        .split(',')
        .filter_map(|media| media.split(';').next())
        .find_map(Format::parse)
        .unwrap_or(Format::Json))
}

/// A JSON result.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"columns": ["date", "orders", "revenue"], "rows": [["2026-12-05", 42, 3120.5]],
    "took_ms": 38, "partial": false, "nodes": {"asked": 3, "answered": [1, 2, 3], "failed": []}}))]
pub struct SqlResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub took_ms: u64,
    /// True when a node that holds files did not answer: its rows are missing.
    pub partial: bool,
    pub nodes: NodeReportBody,
}

#[derive(Deserialize)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

const DESCRIPTION: &str = "One SELECT (Polars SQL) over datasets, each a table by its name with `_id`, `_time` (UTC), its columns and `date` (the day partition), and two built-in tables: `logs` (the columns of /v1/logs/sql, from every node) and `workflow_instances` (`id`, `namespace`, `name`, `version`, `status`, `current_task`, `created_at`, `updated_at`, `input`, `output`, `error` as JSON text, `retries`; from the replicated store). Tables may be joined. Every live node scans its own dataset files in a worker process: when the query reads one dataset without joins, only the rows that pass its WHERE and the columns it names leave a node (in an inner join, the rows that pass the WHERE's conditions on that dataset alone, each column qualified by its alias); this node runs the query over every node's rows. A query over one dataset without joins that groups with `count`, `count(DISTINCT x)`, `sum`, `min`, `max` or `avg` (each aggregate named with AS) is split: each node sends its groups (and, for `count(DISTINCT x)`, the group keys and x of its matching rows) and this node merges them. A query that reads `logs` alone has its conditions on `ts`, `level`, `service`, `stream`, `kind`, `status` and `trace_id` pushed down to every node's index. `now()`, `date_trunc(unit, column)` and timestamp strings compared with `ts` or `_time` work as in /v1/logs/sql. A node that does not answer is listed in `nodes.failed` and `partial` is true (also the `x-shoal-partial` header for non-JSON formats). Limits: 8 KiB of SQL; at most --sql-max-rows-per-node rows (default 10,000,000) of a dataset from one node and --sql-max-part-mb of Arrow IPC in its part (default and most 1 GiB), both the asked node's (`too_many_rows` naming the node: narrow the WHERE); at most 200,000 log records and 1,000,000 workflow instances (`too_many_rows`); a result of at most 1,000,000 rows; what is left of --request-timeout-ms for the query's worker (`query_too_slow`); 2 GiB of memory per worker (`query_too_expensive`). Time buckets: `strftime(_time, '%Y-%m-%d %H:00')`, `date`, `strftime(_time, '%G-W%V')`, `strftime(_time, '%Y-%m')`. With ACLs on, the token needs `read` on `delivery` `datasets/<name>` for each dataset the query reads, `read` on all of `workflows` for `workflow_instances`, and `read` on some log stream for `logs` (it sees the streams it may read)";

#[utoipa::path(
    post,
    path = "/v1/sql",
    tag = "data",
    operation_id = "sql",
    summary = "SQL over datasets, logs and workflow instances, cluster-wide",
    description = DESCRIPTION,
    params(
        ("q" = Option<String>, Query, description = "The SQL, when there is no body"),
        ("format" = Option<String>, Query, description = "json, csv, parquet or arrow, when the body is not JSON"),
    ),
    request_body(
        description = "The SQL: `{\"query\": \"SELECT ...\", \"format\": \"csv\"}`, or the SQL itself as `text/plain`.",
        content(
            (Option<SqlQuery> = "application/json"),
            (Option<String> = "text/plain"),
        )
    ),
    responses(
        (status = 200, description = "The result: JSON columns and rows, or CSV (`text/csv`), Parquet (`application/vnd.apache.parquet`) or Arrow IPC (`application/vnd.apache.arrow.file`).", body = SqlResult),
        (status = 400, description = "A query that does not parse, is not one SELECT, names no or an unknown table, or that Polars refuses (`invalid_query`); past a row limit (`too_many_rows`), the memory limit (`query_too_expensive`) or the time limit (`query_too_slow`); a bad format or body (`bad_request`). Error codes: `invalid_query`, `too_many_rows`, `query_too_expensive`, `query_too_slow`, `bad_request`.", body = ErrorBody),
        (status = 413, description = "The body is over the request body limit. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn sql(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let started = Instant::now();
    let shoal = &app.shoal;
    let (query, format) = read_query(&params, &headers, &body)?;
    let format = format_of(format.as_deref(), &headers)?;
    let mut plan = datasets::plan_on_node(shoal, &query)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery, e))?;
    require_tables(&caller, &plan)?;
    if let Some(filter) = &mut plan.logs {
        if !caller.identity.allows_some(Resource::Logs, Access::Read) {
            caller.require(Resource::Logs, "", Access::Read)?;
        }
        readable_streams(&app, &caller, &mut filter.streams).await?;
    }
    let limit = sql_worker::time_left(shoal.settings.request_timeout_ms, started.elapsed());
    let (outputs, report) = datasets::query(shoal, plan, vec![format], limit)
        .await
        .map_err(query_error)?;
    let output = outputs
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("the SQL worker gave no result"))?;
    let took_ms = started.elapsed().as_millis() as u64;
    match output {
        Output::Table(value) => {
            let table: Table = serde_json::from_value(value)
                .map_err(|e| ApiError::internal(format!("reading the SQL result: {e}")))?;
            Ok(Json(SqlResult {
                columns: table.columns,
                rows: table.rows,
                took_ms,
                partial: report.partial(),
                nodes: NodeReportBody::from(&report),
            })
            .into_response())
        }
        Output::Bytes(bytes) => {
            let mut response = bytes.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            headers.insert(
                "x-shoal-partial",
                HeaderValue::from_static(if report.partial() { "true" } else { "false" }),
            );
            Ok(response)
        }
    }
}

/// 403 unless the caller may read every dataset the query reads, and
/// every workflow's instances when it reads `workflow_instances` (the
/// logs it reads are narrowed to the streams it may read).
pub fn require_tables(caller: &Caller, plan: &SqlPlan) -> ApiResult<()> {
    for scan in &plan.datasets.scans {
        caller.require(
            Resource::Delivery,
            &format!("datasets/{}", scan.dataset.name),
            Access::Read,
        )?;
    }
    if plan.instances {
        caller.require_under(Resource::Workflows, "", Access::Read)?;
    }
    Ok(())
}

/// A failed query as the API answers it.
pub fn query_error(e: DatasetQueryError) -> ApiError {
    match e {
        DatasetQueryError::Worker(e) => ApiError::from(e),
        DatasetQueryError::Logs(e) => ApiError::from(e),
        DatasetQueryError::Instances(e) => ApiError::from(e),
        DatasetQueryError::TooManyRows(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::TooManyRows, message)
        }
        DatasetQueryError::Refused { kind, .. } => {
            let code = match kind {
                RemoteErrorKind::TooLarge => ErrorCode::TooManyRows,
                RemoteErrorKind::OverBudget => ErrorCode::QueryTooExpensive,
                _ => ErrorCode::InvalidQuery,
            };
            ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}
