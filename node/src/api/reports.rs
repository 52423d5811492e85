//! Saved reports: definitions (stored in Raft), runs on demand, and the
//! record of past runs.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use shoal_acl::{Access, Resource};
use shoal_datasets::report::Report;
use shoal_storage::kv::{Txn, TxnOp};
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::delivery::definitions::{self as shared, DefinitionDeleted, Kind};
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{JsonBody, PathText};
use crate::services::datasets;
use crate::services::reports::{self, ReportError, ReportRun, RUNS_PREFIX, STATE_PREFIX};
use crate::services::shoal::Shoal;

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> ApiError {
        match e {
            ReportError::Invalid(reason) => ApiError::bad_request(reason),
            ReportError::Store(e) => ApiError::from(e),
            ReportError::Query(e) => crate::api::sql::query_error(e),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// A report's query must read defined datasets, its schedule parse and
/// its topic be a topic (checked before it is stored).
pub fn check_report(shoal: &Shoal, stored: &Value) -> ApiResult<()> {
    let report: Report =
        serde_json::from_value(stored.clone()).map_err(|e| ApiError::internal(e.to_string()))?;
    reports::check(shoal, &report).map_err(ApiError::from)
}

/// The answer of `GET /v1/reports`.
#[derive(Serialize, ToSchema)]
pub struct ReportList {
    /// Every report, by name (each as `PUT /v1/reports/{name}` stored it)
    #[schema(value_type = Vec<shoal_datasets::report::Report>)]
    pub reports: Vec<Value>,
}

/// The answer of `GET /v1/reports/{name}/runs`.
#[derive(Serialize, ToSchema)]
pub struct ReportRuns {
    pub report: String,
    /// The kept runs (`keep_runs`), newest first.
    pub runs: Vec<ReportRun>,
}

async fn find(shoal: &Arc<Shoal>, name: &str) -> ApiResult<Report> {
    let Json(value) = shared::get(shoal.clone(), Kind::Report, name.to_string()).await?;
    serde_json::from_value(value).map_err(|e| ApiError::internal(e.to_string()))
}

#[utoipa::path(
    put,
    path = "/v1/reports/{name}",
    tag = "data",
    operation_id = "putReport",
    summary = "Create or replace a report",
    description = "A saved query over datasets (as `POST /v1/sql` runs it), run on its `schedule` (five-field cron, UTC; once per tick cluster-wide: the leader claims each tick in Raft before it runs the report, so a tick runs once however often the leader changes, and ticks missed while there was no leader run once) or by `POST /v1/reports/{name}/run`. Each run is recorded (`GET /v1/reports/{name}/runs`, the last `keep_runs`), with its result when that is at most 64 KiB of JSON; `file` also writes the result (CSV or Parquet) under the running node's `<data dir>/reports/<name>/`, and `topic` publishes it (columns and rows; without rows when over the message size limit) as a `shoal.report.run.v1` CloudEvent. With ACLs on, the token also needs read on `delivery` `datasets/<name>` of each dataset the query reads. Stored in Raft.",
    params(
        ("name" = String, Path, description = "1-128 letters, digits, '-', '_' or '.'"),
    ),
    request_body(
        content = shoal_datasets::report::Report,
        content_type = "application/json",
        example = json!({"query": "SELECT date, count(*) AS orders, sum(total) AS revenue FROM orders GROUP BY date ORDER BY date", "schedule": "5 0 * * *", "file": "csv"}),
    ),
    responses(
        (status = 200, description = "The stored definition, defaults filled in. ", body = shoal_datasets::report::Report),
        (status = 400, description = "The name, or a definition that does not parse or is invalid: a query that is not one SELECT over defined datasets, a schedule that is not a cron expression, a topic that is not a topic, keep_runs out of 1-1000. Error codes: `bad_request`.", body = ErrorBody),
        (status = 413, description = "The body is over the request size limit (`payload_too_large`), or the stored definition would be over the value limit, --max-value-bytes (`value_too_large`). Error codes: `payload_too_large`, `value_too_large`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn put(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    // The report runs with the node's rights: only a token that may read
    // every table it reads may save a query over them.
    if let Some(query) = body.get("query").and_then(Value::as_str) {
        if let Ok(plan) = datasets::plan_on_node(&shoal, query) {
            crate::api::sql::require_tables(&caller, &plan)?;
            if plan.logs.is_some() {
                caller.require_under(Resource::Logs, "", Access::Read)?;
            }
        }
    }
    shared::put(shoal, Kind::Report, name, body).await
}

#[utoipa::path(
    get,
    path = "/v1/reports/{name}",
    tag = "data",
    operation_id = "getReport",
    summary = "Read a report",
    description = "Linearizable read.",
    params(("name" = String, Path, description = "Name")),
    responses(
        (status = 200, description = "The definition. ", body = shoal_datasets::report::Report),
        (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No report has this name. Error codes: `not_found`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn get(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
) -> ApiResult<Json<Value>> {
    shared::get(shoal, Kind::Report, name).await
}

#[utoipa::path(
    get,
    path = "/v1/reports",
    tag = "data",
    operation_id = "listReports",
    summary = "List reports",
    description = "Linearizable read.",
    responses(
        (status = 200, description = "All reports, by name. ", body = ReportList),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<ReportList>> {
    Ok(Json(ReportList {
        reports: shared::list(shoal, Kind::Report).await?,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/reports/{name}",
    tag = "data",
    operation_id = "deleteReport",
    summary = "Delete a report",
    description = "The definition, its schedule and the record of its runs (result files stay).",
    params(("name" = String, Path, description = "Name")),
    responses(
        (status = 200, description = "Deleted.", body = DefinitionDeleted),
        (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No report has this name. Error codes: `not_found`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn delete(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
) -> ApiResult<Json<DefinitionDeleted>> {
    let deleted = shared::delete(shoal.clone(), Kind::Report, name.clone()).await?;
    shoal
        .txn(Txn {
            compare: vec![],
            success: vec![
                TxnOp::Delete {
                    key: format!("{RUNS_PREFIX}{name}/"),
                    prefix: true,
                },
                TxnOp::Delete {
                    key: format!("{STATE_PREFIX}{name}"),
                    prefix: false,
                },
            ],
            failure: vec![],
        })
        .await?;
    Ok(deleted)
}

#[utoipa::path(
    post,
    path = "/v1/reports/{name}/run",
    tag = "data",
    operation_id = "runReport",
    summary = "Run a report now",
    description = "Runs the report on this node and answers when it finished: the run as `GET /v1/reports/{name}/runs` records it (`status` `failed` with the `error` when the query failed, e.g. a dataset it reads was deleted).",
    params(("name" = String, Path, description = "Name")),
    responses(
        (status = 200, description = "The finished run.", body = ReportRun),
        (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No report has this name. Error codes: `not_found`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn run(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
) -> ApiResult<Json<ReportRun>> {
    let report = find(&shoal, &name).await?;
    Ok(Json(reports::run(&shoal, &report, "manual").await?))
}

#[utoipa::path(
    get,
    path = "/v1/reports/{name}/runs",
    tag = "data",
    operation_id = "reportRuns",
    summary = "A report's runs",
    description = "The kept runs, newest first: status, times, node, rows, whether the result is partial, the file and message, and the result itself when small. Linearizable read.",
    params(("name" = String, Path, description = "Name")),
    responses(
        (status = 200, description = "The runs.", body = ReportRuns),
        (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No report has this name. Error codes: `not_found`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn runs(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
) -> ApiResult<Json<ReportRuns>> {
    find(&shoal, &name).await?;
    let mut runs = reports::runs(&shoal, &name).await?;
    runs.reverse();
    Ok(Json(ReportRuns { report: name, runs }))
}
