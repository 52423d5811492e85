//! Lease endpoints. A lease expires `ttl_seconds` after the leader saw its
//! grant or last keepalive, measured on the leader's monotonic clock; the
//! leader then revokes it (see `leases.rs`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_storage::kv::{Command, Lease, Response as SmResponse};

use super::error::{ApiError, ApiResult};
use super::extract::JsonBody;
use super::kv::with_revision;
use crate::services::shoal::Shoal;

/// Longest lease, one day.
pub const MAX_TTL_SECONDS: u64 = 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    ttl_seconds: u64,
}

fn lease_json(shoal: &Shoal, lease: &Lease) -> Value {
    json!({
        "id": lease.id,
        "ttl_seconds": lease.ttl_seconds,
        "remaining_ms": shoal.lease_timers.remaining_ms(lease),
    })
}

fn lease_id(raw: &str) -> ApiResult<u64> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(format!("lease id must be a positive integer, got {raw:?}"))
    })
}

fn lease_reply(response: SmResponse) -> ApiResult<Response> {
    match response {
        SmResponse::Lease(lease) => {
            Ok(Json(json!({"id": lease.id, "ttl_seconds": lease.ttl_seconds})).into_response())
        }
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
    summary = "Grant a lease",
    description = "Creates a lease that expires `ttl_seconds` after its grant or last keepalive; its keys are then deleted (one revision, a delete event per key). The body is parsed as JSON regardless of its Content-Type; unknown fields are rejected (`bad_request`).",
    responses(
        (status = 200, description = "The new lease."),
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
        (status = 200, description = "Renewed."),
        (status = 400, description = "The lease id in the path is not a non-negative integer. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The lease does not exist or has expired. Error codes: `lease_not_found`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn keepalive(
    State(shoal): State<Arc<Shoal>>,
    Path(id): Path<String>,
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
        (status = 200, description = "Revoked."),
        (status = 400, description = "The lease id in the path is not a non-negative integer. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The lease does not exist or has expired. Error codes: `lease_not_found`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn revoke(
    State(shoal): State<Arc<Shoal>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = lease_id(&id)?;
    match shoal.write(Command::LeaseRevoke { id }).await? {
        SmResponse::Revoked { revision, deleted } => Ok(with_revision(
            revision,
            json!({"revision": revision, "deleted": deleted}),
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
        (status = 200, description = "The lease."),
        (status = 400, description = "The lease id in the path is not a non-negative integer. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The lease does not exist or has expired. Error codes: `lease_not_found`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn get(State(shoal): State<Arc<Shoal>>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = lease_id(&id)?;
    shoal.read_barrier(false).await?;
    match shoal.read(move |store| store.lease_get(id)).await? {
        Some(detail) => {
            let mut body = lease_json(&shoal, &detail.lease);
            body["keys"] = json!(detail.keys);
            Ok(Json(body).into_response())
        }
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
        (status = 200, description = "All leases."),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Response> {
    shoal.read_barrier(false).await?;
    let leases = shoal.read(|store| store.lease_list()).await?;
    Ok(Json(
        json!({"leases": leases.iter().map(|lease| lease_json(&shoal, lease)).collect::<Vec<_>>()}),
    )
    .into_response())
}
