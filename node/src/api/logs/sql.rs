//! SQL over logs: `GET`/`POST /v1/logs/sql`, run by a worker process over
//! the records every node reads for it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use shoal_search::record::now_nanos;

use super::super::auth::Caller;
use super::super::error::{ApiError, ApiResult, ErrorCode};
use super::super::extract::{Body, Params};
use super::super::AppState;
use super::{readable_streams, LogSqlQuery, LogSqlResult, NodeReportBody, SqlTable};
use crate::services::logs::{self, MAX_SQL_ROWS};
use crate::services::sql_worker;

/// The description shared by the GET and POST operations.
const SQL_DESCRIPTION: &str = "Body `{\"query\": \"SELECT ...\"}`, a text/plain body, or `?q=`. Columns: ts (UTC timestamp), stream, node, kind, level, service, message, trace_id, span_id, duration_ns, status, attributes (JSON text). Top-level AND conditions on ts, level, service, stream, kind, status and trace_id are pushed down to every node's indexes; now(), current_timestamp, date_trunc and timestamp strings compared with ts are supported. One SELECT only. Limits: 200 000 records read per query (400 too_many_rows), 8 KiB of SQL; a query that names a table more than once (a join, a subquery, a CTE) is refused (400 too_many_rows) when the records read to the power of that count pass 1 000 000, so a self cross join cannot take the node's memory. Each query runs in a worker process with 2 GiB of memory (400 query_too_expensive past it) and what is left of the request timeout (400 query_too_slow past it).";

/// SQL over logs (Polars): `{"query": "SELECT ..."}`, or the query as a
/// text/plain body, or `?q=`. Conditions on ts, level, service, stream,
/// kind, status and trace_id are pushed down to every node's indexes.
#[utoipa::path(
    get,
    path = "/v1/logs/sql",
    tag = "logs",
    operation_id = "sqlLogsGet",
    summary = "SQL over logs (Polars) on the table `logs`",
    description = SQL_DESCRIPTION,
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
        (status = 400, description = "Error codes: `invalid_query`, `too_many_rows`, `query_too_expensive` (the query needed more than 2 GiB), `query_too_slow` (it ran past what was left of the request timeout), `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "The body is over the request body limit. Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn sql_get(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<LogSqlResult>> {
    run_sql(app, caller, params, headers, body).await
}

#[utoipa::path(
    post,
    path = "/v1/logs/sql",
    tag = "logs",
    operation_id = "sqlLogs",
    summary = "SQL over logs (Polars) on the table `logs`",
    description = SQL_DESCRIPTION,
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
        (status = 400, description = "Error codes: `invalid_query`, `too_many_rows`, `query_too_expensive` (the query needed more than 2 GiB), `query_too_slow` (it ran past what was left of the request timeout), `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "The body is over the request body limit. Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn sql(
    caller: Caller,
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<LogSqlResult>> {
    run_sql(app, caller, params, headers, body).await
}

async fn run_sql(
    app: AppState,
    caller: Caller,
    params: Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<LogSqlResult>> {
    let started = std::time::Instant::now();
    let (query, _) = crate::api::sql::read_query(&params, &headers, &body)?;
    let mut plan = shoal_search::sql::plan(&query, now_nanos()).map_err(ApiError::from)?;
    readable_streams(&app, &caller, &mut plan.filter.streams).await?;
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
    if plan.table_reads > 1 && plan.most_joined_rows(scanned) > shoal_search::sql::MAX_JOINED_ROWS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::TooManyRows,
            format!(
                "the query reads the table {} times (a join or a subquery) over {scanned} records: \
                 up to {scanned}^{} rows, past the limit of {}; narrow it with conditions on ts, \
                 level, service, stream or kind",
                plan.table_reads,
                plan.table_reads,
                shoal_search::sql::MAX_JOINED_ROWS
            ),
        ));
    }
    // The worker gets what is left of the request's time, less a margin
    // to answer in.
    let limit = sql_worker::time_left(app.shoal.settings.request_timeout_ms, started.elapsed());
    let answer = sql_worker::run(&plan.sql, hits, limit)
        .await
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
