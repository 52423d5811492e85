//! Lease endpoints. A lease expires `ttl_seconds` after the leader saw its
//! grant or last keepalive, measured on the leader's monotonic clock; the
//! leader then revokes it (see `leases.rs`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use shoal_storage::kv::{Command, Lease, Response as SmResponse};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, PathText};
use super::kv::with_revision;
use super::model::DeleteResponse;
use crate::services::shoal::Shoal;

/// Longest lease, one day.
pub const MAX_TTL_SECONDS: u64 = 86_400;

/// `POST /v1/leases`: the new lease's time to live.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LeaseGrantRequest, example = json!({"ttl_seconds": 10}))]
pub struct GrantBody {
    /// Time to live in seconds, 1..86400 (one day).
    #[schema(minimum = 1, maximum = 86400)]
    ttl_seconds: u64,
}

/// Answer to grant and keepalive.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": 7, "ttl_seconds": 10}))]
pub struct LeaseGrant {
    /// Lease id.
    pub id: u64,
    /// TTL in seconds.
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: u64,
}

/// A lease and its remaining time.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Lease, example = json!({"id": 7, "ttl_seconds": 10, "remaining_ms": 8123}))]
pub struct LeaseJson {
    /// Lease id.
    pub id: u64,
    /// TTL in seconds.
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: u64,
    /// Milliseconds until expiry as the answering node measures it on its
    /// monotonic clock from when it saw the grant or last keepalive (the
    /// leader's measure decides; a new leader restarts every lease's TTL).
    pub remaining_ms: u64,
}

/// A lease, its remaining time and the keys attached to it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": 7, "ttl_seconds": 10, "remaining_ms": 8123, "keys": ["svc/a"]}))]
pub struct LeaseDetail {
    #[serde(flatten)]
    pub lease: LeaseJson,
    /// Keys attached to the lease.
    pub keys: Vec<String>,
}

/// `GET /v1/leases`: every lease.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"leases": [{"id": 7, "ttl_seconds": 10, "remaining_ms": 8123}]}))]
pub struct LeaseList {
    pub leases: Vec<LeaseJson>,
}

fn lease_json(shoal: &Shoal, lease: &Lease) -> LeaseJson {
    LeaseJson {
        id: lease.id,
        ttl_seconds: lease.ttl_seconds,
        remaining_ms: shoal.lease_timers.remaining_ms(lease),
    }
}

fn lease_id(raw: &str) -> ApiResult<u64> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(format!("lease id must be a positive integer, got {raw:?}"))
    })
}

fn lease_reply(response: SmResponse) -> ApiResult<Response> {
    match response {
        SmResponse::Lease(lease) => Ok(Json(LeaseGrant {
            id: lease.id,
            ttl_seconds: lease.ttl_seconds,
        })
        .into_response()),
        other => Err(ApiError::internal(format!(
            "unexpected state machine response {other:?}"
        ))),
    }
}

#[utoipa::path(
    post,
    path = "/v1/leases",
    tag = "leases",
    operation_id = "grantLease",
    request_body(content = GrantBody, content_type = "application/json", description = "The lease's time to live. Parsed as JSON regardless of the Content-Type; unknown fields are rejected."),
    summary = "Grant a lease",
    description = "Creates a lease that expires `ttl_seconds` after its grant or last keepalive; its keys are then deleted (one revision, a delete event per key). The body is parsed as JSON regardless of its Content-Type; unknown fields are rejected (`bad_request`).",
    responses(
        (status = 200, description = "The new lease.", body = LeaseGrant),
        (status = 400, description = "`ttl_seconds` not in 1..86400, malformed JSON body, missing field or unknown field. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: the request body exceeds the body limit (2 × `--max-value-bytes` + 64 KiB; 2 MiB + 64 KiB by default). Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn grant(
    State(shoal): State<Arc<Shoal>>,
    JsonBody(body): JsonBody<GrantBody>,
) -> ApiResult<Response> {
    if body.ttl_seconds == 0 || body.ttl_seconds > MAX_TTL_SECONDS {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be between 1 and {MAX_TTL_SECONDS}"
        )));
    }
    lease_reply(
        shoal
            .write(Command::LeaseGrant {
                ttl_seconds: body.ttl_seconds,
            })
            .await?,
    )
}

#[utoipa::path(
    post,
    path = "/v1/leases/{id}/keepalive",
    tag = "leases",
    operation_id = "keepAliveLease",
    summary = "Renew a lease",
    description = "Resets the lease's expiry to now + `ttl_seconds`. A lease that has already expired (even if not yet revoked) cannot be kept alive: 404 `lease_not_found`. No request body.",
    params(
        ("id" = u64, Path, description = "Lease id (non-negative integer; otherwise 400 `bad_request`)."),
    ),
    responses(
        (status = 200, description = "Renewed.", body = LeaseGrant),
        (status = 400, description = "The lease id in the path is not a non-negative integer. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The lease does not exist or has expired. Error codes: `lease_not_found`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn keepalive(
    State(shoal): State<Arc<Shoal>>,
    PathText(id): PathText,
) -> ApiResult<Response> {
    let id = lease_id(&id)?;
    lease_reply(shoal.write(Command::LeaseKeepAlive { id }).await?)
}

#[utoipa::path(
    delete,
    path = "/v1/leases/{id}",
    tag = "leases",
    operation_id = "revokeLease",
    summary = "Revoke a lease",
    description = "Removes the lease and deletes every key attached to it (one revision if any key was deleted).",
    params(
        ("id" = u64, Path, description = "Lease id (non-negative integer; otherwise 400 `bad_request`)."),
    ),
    responses(
        (status = 200, description = "Revoked.", body = DeleteResponse, headers(("X-Shoal-Revision" = u64, description = "The current cluster revision (on successful responses that read or write the store).")), example = json!({"revision": 15, "deleted": 2})),
        (status = 400, description = "The lease id in the path is not a non-negative integer. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The lease does not exist or has expired. Error codes: `lease_not_found`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn revoke(
    State(shoal): State<Arc<Shoal>>,
    PathText(id): PathText,
) -> ApiResult<Response> {
    let id = lease_id(&id)?;
    match shoal.write(Command::LeaseRevoke { id }).await? {
        SmResponse::Revoked { revision, deleted } => Ok(with_revision(
            revision,
            DeleteResponse { revision, deleted },
        )),
        other => Err(ApiError::internal(format!(
            "unexpected state machine response {other:?}"
        ))),
    }
}

#[utoipa::path(
    get,
    path = "/v1/leases/{id}",
    tag = "leases",
    operation_id = "getLease",
    summary = "Read a lease",
    description = "The lease, its remaining time and the keys attached to it. Linearizable read.",
    params(
        ("id" = u64, Path, description = "Lease id (non-negative integer; otherwise 400 `bad_request`)."),
    ),
    responses(
        (status = 200, description = "The lease.", body = LeaseDetail),
        (status = 400, description = "The lease id in the path is not a non-negative integer. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The lease does not exist or has expired. Error codes: `lease_not_found`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn get(State(shoal): State<Arc<Shoal>>, PathText(id): PathText) -> ApiResult<Response> {
    let id = lease_id(&id)?;
    shoal.read_barrier(false).await?;
    match shoal.read(move |store| store.lease_get(id)).await? {
        Some(detail) => Ok(Json(LeaseDetail {
            lease: lease_json(&shoal, &detail.lease),
            keys: detail.keys,
        })
        .into_response()),
        None => Err(ApiError::lease_not_found(id)),
    }
}

#[utoipa::path(
    get,
    path = "/v1/leases",
    tag = "leases",
    operation_id = "listLeases",
    summary = "List leases",
    description = "Every lease with its TTL and remaining time. Linearizable read.",
    responses(
        (status = 200, description = "All leases.", body = LeaseList),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Response> {
    shoal.read_barrier(false).await?;
    let leases = shoal.read(|store| store.lease_list()).await?;
    Ok(Json(LeaseList {
        leases: leases
            .iter()
            .map(|lease| lease_json(&shoal, lease))
            .collect(),
    })
    .into_response())
}
