//! Workflow instance endpoints: start (idempotent by id), read, list with
//! filters, and the operators' actions (suspend, resume, cancel, retry),
//! one by one or by filter.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_actors::message::new_id;
use shoal_workflows::run::{Instance, Status};
use shoal_workflows::{check_id, version_order};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use super::extract::{JsonBody, Params, PathText};
use crate::services::evaluator::EvaluatorError;
use crate::services::instances::{self, Action, InstanceError, ListFilter, MAX_INPUT_BYTES};
use crate::services::shoal::Shoal;
use crate::services::workflows;

/// Most instances one list answers (`limit`).
const MAX_PAGE: u64 = 1000;
/// Most instances one action by filter changes.
const MAX_BULK: usize = 1000;

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> ApiError {
        let message = e.to_string();
        match e {
            InstanceError::Kv(e) => ApiError::from(e),
            InstanceError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
            }
            InstanceError::IdTaken(..) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::IdTaken, message)
            }
            InstanceError::WrongStatus { status, .. } => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::WrongStatus, message)
                    .with("status", json!(status))
            }
            InstanceError::TooLarge { size, limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                message,
            )
            .with("size", json!(size))
            .with("limit", json!(limit)),
            InstanceError::Unreadable { .. } => ApiError::internal(message),
            InstanceError::Evaluation(EvaluatorError::Unavailable(_)) => {
                ApiError::unavailable(message)
            }
            InstanceError::Evaluation(_) => ApiError::bad_request(message),
            InstanceError::TooMany { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyInstances,
                message,
            )
            .with("limit", json!(limit)),
        }
    }
}

/// `POST /v1/workflows/{namespace}/{name}/instances`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartInstance {
    /// The workflow's input (JSON, at most 256 KiB); `{}` when absent.
    #[serde(default)]
    #[schema(value_type = Object)]
    input: Option<Value>,
    /// The instance id: 1-128 of `A-Z a-z 0-9 . _ -`. Starting again with
    /// an id that exists returns that instance (201 only the first time).
    #[serde(default)]
    id: Option<String>,
    /// The definition version; the newest (by semantic version) when absent.
    #[serde(default)]
    version: Option<String>,
}

/// One instance in a list.
#[derive(Serialize, ToSchema)]
pub struct InstanceSummary {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub status: Status,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub current_task: Option<String>,
}

impl From<&Instance> for InstanceSummary {
    fn from(instance: &Instance) -> InstanceSummary {
        InstanceSummary {
            id: instance.id.clone(),
            namespace: instance.namespace.clone(),
            name: instance.name.clone(),
            version: instance.version.clone(),
            status: instance.status,
            created_ms: instance.created_ms,
            updated_ms: instance.updated_ms,
            current_task: instance.current_task.clone(),
        }
    }
}

/// `GET /v1/workflows/instances`.
#[derive(Serialize, ToSchema)]
pub struct InstanceList {
    pub instances: Vec<InstanceSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next: Option<String>,
}

/// What an action by filter did.
#[derive(Serialize, ToSchema)]
pub struct InstancesActed {
    /// The instances changed.
    pub changed: Vec<String>,
    /// The instances the action could not change, with why.
    pub failed: Vec<InstanceActionFailure>,
}

#[derive(Serialize, ToSchema)]
pub struct InstanceActionFailure {
    pub id: String,
    pub error: String,
}

fn action_of(text: &str) -> ApiResult<Action> {
    Action::parse(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no instance action '{text}'; actions: suspend, resume, cancel, retry"),
        )
    })
}

#[utoipa::path(
    post,
    path = "/v1/workflows/{namespace}/{name}/instances",
    tag = "workflows",
    operation_id = "startWorkflowInstance",
    summary = "Start a workflow instance",
    description = "Starts an instance of the definition (its newest version unless `version` is given) with the given input. The instance is stored in Raft before the answer; the leader's driver runs it from there. With an `id` that exists, the existing instance is returned with 200 (an idempotent start); an id taken by another workflow's instance is 409 `id_taken`.",
    params(
        ("namespace" = String, Path, description = "The definition's namespace."),
        ("name" = String, Path, description = "The definition's name."),
    ),
    request_body = StartInstance,
    responses(
        (status = 200, description = "An instance with this id existed: it is returned unchanged.", body = Instance),
        (status = 201, description = "Started.", body = Instance),
        (status = 400, description = "A bad path, id, version or body. Error codes: `bad_request`, `invalid_definition`.", body = ErrorBody),
        (status = 404, description = "No such definition (version). Error codes: `not_found`.", body = ErrorBody),
        (status = 409, description = "The id is taken by another workflow's instance. Error codes: `id_taken`.", body = ErrorBody),
        (status = 413, description = "The input is over 256 KiB. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 429, description = "The cluster holds --workflow-max-unfinished unfinished instances (`limit` says how many). Error codes: `too_many_instances`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn start_instance(
    State(shoal): State<Arc<Shoal>>,
    PathText((namespace, name)): PathText<(String, String)>,
    JsonBody(request): JsonBody<StartInstance>,
) -> ApiResult<Response> {
    check_id(&namespace, &name, "0.0.0")?;
    let input = request.input.unwrap_or_else(|| json!({}));
    let size = input.to_string().len();
    if size > MAX_INPUT_BYTES {
        return Err(InstanceError::TooLarge {
            size,
            limit: MAX_INPUT_BYTES,
        }
        .into());
    }
    let id = match request.id {
        Some(id) if instances::valid_id(&id) => id,
        Some(id) => {
            return Err(ApiError::bad_request(format!(
                "instance id {id:?} must be 1-{} characters among A-Z a-z 0-9 . _ -",
                instances::MAX_ID_CHARS
            )))
        }
        None => new_id(),
    };
    let definition = match request.version {
        Some(version) => {
            check_id(&namespace, &name, &version)?;
            workflows::get_definition(&shoal, &format!("{namespace}/{name}/{version}"))
                .await?
                .0
        }
        None => workflows::list_definitions(&shoal, &format!("{namespace}/{name}/"), false)
            .await?
            .into_iter()
            .map(|(definition, _)| definition)
            .max_by_key(|definition| version_order(&definition.version))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::NotFound,
                    format!("workflow {namespace}/{name} has no definition"),
                )
            })?,
    };
    let (instance, _, created) = instances::start(&shoal, &definition, id, input).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(instance)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/workflows/instances/{id}",
    tag = "workflows",
    operation_id = "getWorkflowInstance",
    summary = "Read a workflow instance",
    description = "Linearizable read of an instance: its status, current task, what it waits for, its input and (once finished) output or error, its recorded outcomes and its recent history.",
    params(("id" = String, Path, description = "The instance id.")),
    responses(
        (status = 200, description = "The instance.", body = Instance),
        (status = 404, description = "No such instance. Error codes: `not_found`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn get_instance(
    State(shoal): State<Arc<Shoal>>,
    PathText(id): PathText,
) -> ApiResult<Json<Instance>> {
    Ok(Json(instances::get(&shoal, &id).await?.0))
}

/// The list filter of the query string.
fn filter_of(params: &Params, limit: usize) -> ApiResult<(ListFilter, Option<String>)> {
    let namespace = params.string("namespace").map(str::to_string);
    let name = params.string("name").map(str::to_string);
    if let Some(namespace) = &namespace {
        check_id(namespace, name.as_deref().unwrap_or("x"), "0.0.0")?;
    }
    let status = match params.string("status") {
        None => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status must be one of pending, running, waiting, suspended, cancelled, faulted, completed; got {text:?}"
            ))
        })?),
    };
    let predicate = params.string("where").map(str::to_string);
    if let Some(code) = &predicate {
        shoal_workflows::expr::compile(code, &[])
            .map_err(|e| ApiError::bad_request(format!("where: {e}")))?;
    }
    Ok((
        ListFilter {
            namespace,
            name,
            version: params.string("version").map(str::to_string),
            status,
            min_age_ms: params.number("min_age_ms")?,
            after: params.string("after").map(str::to_string),
            limit,
        },
        predicate,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/workflows/instances",
    tag = "workflows",
    operation_id = "listWorkflowInstances",
    summary = "List workflow instances",
    description = "Instances in id order, filtered; linearizable. `where` is a jq predicate over the instance's JSON (as `GET /v1/workflows/instances/{id}` shows it), e.g. `.input.total > 100`; it runs in an evaluator process, at most 2 s of CPU and 1 GiB per batch of instances (past either: 400). A scan longer than 10 s ends the page early, with `next` where it stopped.",
    params(
        ("namespace" = Option<String>, Query, description = "Only this namespace."),
        ("name" = Option<String>, Query, description = "Only this workflow name."),
        ("version" = Option<String>, Query, description = "Only this definition version."),
        ("status" = Option<String>, Query, description = "Only this status: pending, running, waiting, suspended, cancelled, faulted, completed."),
        ("min_age_ms" = Option<u64>, Query, description = "Only instances started at least this many milliseconds ago."),
        ("where" = Option<String>, Query, description = "A jq predicate over the instance."),
        ("after" = Option<String>, Query, description = "Continue after this id (the previous page's `next`)."),
        ("limit" = Option<u64>, Query, description = "Page size, 1-1000 (default 100)."),
    ),
    responses(
        (status = 200, description = "The instances.", body = InstanceList),
        (status = 400, description = "A bad filter. Error codes: `bad_request`, `invalid_definition`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn list_instances(
    State(shoal): State<Arc<Shoal>>,
    params: Params,
) -> ApiResult<Json<InstanceList>> {
    let (filter, predicate) = filter_of(&params, params.limit(100, MAX_PAGE)?)?;
    let (found, next) = instances::list(&shoal, filter, predicate).await?;
    Ok(Json(InstanceList {
        instances: found.iter().map(InstanceSummary::from).collect(),
        next,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/workflows/instances/{id}/{action}",
    tag = "workflows",
    operation_id = "actOnWorkflowInstance",
    summary = "Suspend, resume, cancel or retry an instance",
    description = "`suspend` (a pending, running or waiting instance stops being driven; its timers and events wait), `resume` (a suspended one), `cancel` (any unfinished one; final), `retry` (a faulted one runs again from its failed task: failed calls are made again with a new idempotency key).",
    params(
        ("id" = String, Path, description = "The instance id."),
        ("action" = String, Path, description = "suspend, resume, cancel or retry."),
    ),
    responses(
        (status = 200, description = "Done; the instance as changed.", body = Instance),
        (status = 404, description = "No such instance or action. Error codes: `not_found`.", body = ErrorBody),
        (status = 409, description = "The instance's status does not allow the action (`status` says which it is). Error codes: `wrong_status`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn act_on_instance(
    State(shoal): State<Arc<Shoal>>,
    PathText((id, action)): PathText<(String, String)>,
) -> ApiResult<Json<Instance>> {
    let action = action_of(&action)?;
    Ok(Json(instances::act(&shoal, &id, action).await?))
}

#[utoipa::path(
    post,
    path = "/v1/workflows/{namespace}/{name}/instances/{action}",
    tag = "workflows",
    operation_id = "actOnWorkflowInstances",
    summary = "Suspend, resume, cancel or retry instances by filter",
    description = "Applies the action to every instance of the workflow that passes the filter (the filters of the list, at most 1000 instances), one by one; instances whose status does not allow it are reported in `failed`.",
    params(
        ("namespace" = String, Path, description = "The definition's namespace."),
        ("name" = String, Path, description = "The definition's name."),
        ("action" = String, Path, description = "suspend, resume, cancel or retry."),
        ("version" = Option<String>, Query, description = "Only this definition version."),
        ("status" = Option<String>, Query, description = "Only this status."),
        ("min_age_ms" = Option<u64>, Query, description = "Only instances started at least this many milliseconds ago."),
        ("where" = Option<String>, Query, description = "A jq predicate over the instance."),
    ),
    responses(
        (status = 200, description = "What changed.", body = InstancesActed),
        (status = 400, description = "A bad filter. Error codes: `bad_request`, `invalid_definition`.", body = ErrorBody),
        (status = 404, description = "No such action. Error codes: `not_found`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn act_on_instances(
    State(shoal): State<Arc<Shoal>>,
    PathText((namespace, name, action)): PathText<(String, String, String)>,
    params: Params,
) -> ApiResult<Json<InstancesActed>> {
    let action = action_of(&action)?;
    check_id(&namespace, &name, "0.0.0")?;
    let mut extra = std::collections::HashMap::new();
    extra.insert("namespace".to_string(), namespace);
    extra.insert("name".to_string(), name);
    let params = params.merged(extra);
    let (filter, predicate) = filter_of(&params, MAX_BULK)?;
    let (found, _) = instances::list(&shoal, filter, predicate).await?;
    let mut acted = InstancesActed {
        changed: Vec::new(),
        failed: Vec::new(),
    };
    for instance in found {
        match instances::act(&shoal, &instance.id, action).await {
            Ok(_) => acted.changed.push(instance.id),
            Err(InstanceError::Kv(e)) => return Err(e.into()),
            Err(e) => acted.failed.push(InstanceActionFailure {
                id: instance.id,
                error: e.to_string(),
            }),
        }
    }
    Ok(Json(acted))
}
