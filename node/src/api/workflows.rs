//! Workflow definition endpoints: publish (validate and store in Raft),
//! read, list and delete definitions written in the CNCF Serverless
//! Workflow DSL 1.0.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use shoal_outbound::OutboundError;
use shoal_workflows::{check_id, parse, DefinitionError};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use super::extract::{Body, Params};
use crate::services::shoal::Shoal;
use crate::services::workflows::{self, Stored, WorkflowError};

impl From<DefinitionError> for ApiError {
    fn from(e: DefinitionError) -> ApiError {
        let message = e.to_string();
        match e {
            DefinitionError::TooLarge { size, limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                message,
            )
            .with("size", json!(size))
            .with("limit", json!(limit)),
            DefinitionError::Syntax(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidDefinition,
                message,
            ),
            DefinitionError::Invalid { path, .. } => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidDefinition,
                message,
            )
            .with("path", json!(path)),
            DefinitionError::Unsupported { path, construct } => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::UnsupportedConstruct,
                message,
            )
            .with("path", json!(path))
            .with("construct", json!(construct)),
        }
    }
}

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> ApiError {
        let message = e.to_string();
        match e {
            WorkflowError::Kv(e) => ApiError::from(e),
            WorkflowError::VersionExists(_) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::VersionExists, message)
            }
            WorkflowError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
            }
            WorkflowError::Unreadable { .. } => ApiError::internal(message),
        }
    }
}

/// `{namespace}/{name}/{version}` of a definition route, checked as the DSL
/// requires (lowercase names, a semantic version).
pub struct DefinitionId(String);

impl<S: Send + Sync> FromRequestParts<S> for DefinitionId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((namespace, name, version)) =
            axum::extract::Path::<(String, String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(format!("bad path parameter: {e}")))?;
        check_id(&namespace, &name, &version)?;
        Ok(DefinitionId(format!("{namespace}/{name}/{version}")))
    }
}

/// The answer to publishing a definition.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"namespace": "commerce", "name": "order", "version": "1.0.0",
    "created": true, "revision": 42}))]
pub struct WorkflowDefinitionStored {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// False when this version was already stored with the same document
    /// (publishing is idempotent).
    pub created: bool,
    /// The revision the definition was written at.
    pub revision: u64,
}

/// A stored definition.
#[derive(Serialize, ToSchema)]
pub struct WorkflowDefinition {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// The revision it was written at.
    pub revision: u64,
    /// The definition as JSON (a YAML definition is converted).
    #[schema(value_type = Object)]
    pub document: Value,
}

/// One definition in a list.
#[derive(Serialize, ToSchema)]
pub struct WorkflowDefinitionSummary {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub revision: u64,
    /// `document.title`, when the definition has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub title: Option<String>,
}

/// `GET /v1/workflows/definitions`.
#[derive(Serialize, ToSchema)]
pub struct WorkflowDefinitionList {
    /// In namespace, name and version order (versions compare as text).
    pub definitions: Vec<WorkflowDefinitionSummary>,
}

/// The answer to deleting a definition.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"deleted": "commerce/order/1.0.0", "revision": 43}))]
pub struct WorkflowDefinitionDeleted {
    /// `namespace/name/version` of the deleted definition.
    pub deleted: String,
    /// The revision of the deletion.
    pub revision: u64,
}

#[utoipa::path(
    put,
    path = "/v1/workflows/definitions/{namespace}/{name}/{version}",
    tag = "workflows",
    operation_id = "putWorkflowDefinition",
    summary = "Publish a workflow definition version",
    description = "Validates the whole document (CNCF Serverless Workflow DSL 1.0, YAML or JSON) and stores it in Raft. The path must repeat the document's `document.namespace`, `document.name` and `document.version`. A version is immutable: publishing it again with the same document answers 200 with `created: false`; with another document 409 `version_exists`. Everything of the DSL that Shoal does not run is refused with 400 `unsupported_construct`, naming the construct and its JSON Pointer `path`; other mistakes are 400 `invalid_definition` with the `path` of the problem. At most 256 KiB.",
    params(
        ("namespace" = String, Path, description = "The definition's namespace: a lowercase RFC 1123 label."),
        ("name" = String, Path, description = "The definition's name: a lowercase RFC 1123 label."),
        ("version" = String, Path, description = "The definition's semantic version, e.g. 1.0.0."),
    ),
    request_body(
        description = "The definition, as YAML or JSON (either is accepted whatever the Content-Type).",
        content(
            (String = "application/yaml"),
            (Object = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "This version was already stored with the same document; nothing changed.", body = WorkflowDefinitionStored),
        (status = 201, description = "Stored.", body = WorkflowDefinitionStored),
        (status = 400, description = "The path, the document or a construct is not accepted. Error codes: `bad_request` (the path differs from the document or is malformed), `invalid_definition` (with `path`), `unsupported_construct` (with `path` and `construct`), `destination_refused` (an HTTP call's endpoint, written as a URI, points at a loopback, link-local, private or otherwise non-public address that `--outbound-allow` does not allow; with `path`).", body = ErrorBody),
        (status = 409, description = "This version exists with another document. Error codes: `version_exists`.", body = ErrorBody),
        (status = 413, description = "The definition is over 256 KiB, or the body over the request limit. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn put_definition(
    State(shoal): State<Arc<Shoal>>,
    DefinitionId(id): DefinitionId,
    Body(body): Body,
) -> ApiResult<Response> {
    let (definition, endpoints) = tokio::task::spawn_blocking(move || {
        parse(&body).map(|definition| {
            let endpoints = definition.http_endpoints();
            (definition, endpoints)
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("validation task failed: {e}")))??;
    if definition.key() != id {
        return Err(ApiError::bad_request(format!(
            "the path names {id} but the document is {}",
            definition.key()
        )));
    }
    for endpoint in endpoints {
        // A URI template's host may not parse yet; its calls are checked
        // when they are made.
        if let Err(OutboundError::Refused(refusal)) =
            shoal.outbound.check_destination(&endpoint.uri).await
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::DestinationRefused,
                format!("{refusal} (at {})", endpoint.path),
            )
            .with("path", json!(endpoint.path)));
        }
    }
    let stored = workflows::put_definition(&shoal, &definition).await?;
    let (status, created, revision) = match stored {
        Stored::Created(revision) => (StatusCode::CREATED, true, revision),
        Stored::Unchanged(revision) => (StatusCode::OK, false, revision),
    };
    let answer = WorkflowDefinitionStored {
        namespace: definition.namespace,
        name: definition.name,
        version: definition.version,
        created,
        revision,
    };
    Ok((status, Json(answer)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/workflows/definitions/{namespace}/{name}/{version}",
    tag = "workflows",
    operation_id = "getWorkflowDefinition",
    summary = "Read a workflow definition version",
    description = "Linearizable read of a stored definition, as JSON.",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Name"),
        ("version" = String, Path, description = "Version"),
    ),
    responses(
        (status = 200, description = "The definition.", body = WorkflowDefinition),
        (status = 400, description = "A path segment is not a valid namespace, name or version. Error codes: `bad_request`, `invalid_definition`.", body = ErrorBody),
        (status = 404, description = "No such definition version. Error codes: `not_found`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn get_definition(
    State(shoal): State<Arc<Shoal>>,
    DefinitionId(id): DefinitionId,
) -> ApiResult<Json<WorkflowDefinition>> {
    let (definition, revision) = workflows::get_definition(&shoal, &id).await?;
    Ok(Json(WorkflowDefinition {
        namespace: definition.namespace,
        name: definition.name,
        version: definition.version,
        revision,
        document: definition.document,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/workflows/definitions",
    tag = "workflows",
    operation_id = "listWorkflowDefinitions",
    summary = "List workflow definitions",
    description = "Every stored definition version (at most 10 000), optionally of one namespace and name. Linearizable.",
    params(
        ("namespace" = Option<String>, Query, description = "Only this namespace."),
        ("name" = Option<String>, Query, description = "Only this name (requires `namespace`)."),
    ),
    responses(
        (status = 200, description = "The definitions.", body = WorkflowDefinitionList),
        (status = 400, description = "A bad `namespace` or `name`, or `name` without `namespace`. Error codes: `bad_request`, `invalid_definition`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn list_definitions(
    State(shoal): State<Arc<Shoal>>,
    params: Params,
) -> ApiResult<Json<WorkflowDefinitionList>> {
    let namespace = params.string("namespace");
    let name = params.string("name");
    let prefix = match (namespace, name) {
        (None, None) => String::new(),
        (Some(namespace), None) => {
            check_id(namespace, "x", "0.0.0")?;
            format!("{namespace}/")
        }
        (Some(namespace), Some(name)) => {
            check_id(namespace, name, "0.0.0")?;
            format!("{namespace}/{name}/")
        }
        (None, Some(_)) => {
            return Err(ApiError::bad_request("`name` needs `namespace`"));
        }
    };
    let definitions = workflows::list_definitions(&shoal, &prefix, false)
        .await?
        .into_iter()
        .map(|(definition, revision)| WorkflowDefinitionSummary {
            title: definition
                .document
                .pointer("/document/title")
                .and_then(Value::as_str)
                .map(str::to_string),
            namespace: definition.namespace,
            name: definition.name,
            version: definition.version,
            revision,
        })
        .collect();
    Ok(Json(WorkflowDefinitionList { definitions }))
}

#[utoipa::path(
    delete,
    path = "/v1/workflows/definitions/{namespace}/{name}/{version}",
    tag = "workflows",
    operation_id = "deleteWorkflowDefinition",
    summary = "Delete a workflow definition version",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Name"),
        ("version" = String, Path, description = "Version"),
    ),
    responses(
        (status = 200, description = "Deleted.", body = WorkflowDefinitionDeleted),
        (status = 400, description = "A path segment is not a valid namespace, name or version. Error codes: `bad_request`, `invalid_definition`.", body = ErrorBody),
        (status = 404, description = "No such definition version. Error codes: `not_found`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn delete_definition(
    State(shoal): State<Arc<Shoal>>,
    DefinitionId(id): DefinitionId,
) -> ApiResult<Json<WorkflowDefinitionDeleted>> {
    let revision = workflows::delete_definition(&shoal, &id).await?;
    Ok(Json(WorkflowDefinitionDeleted {
        deleted: id,
        revision,
    }))
}
