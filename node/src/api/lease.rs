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

pub async fn keepalive(
    State(shoal): State<Arc<Shoal>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = lease_id(&id)?;
    lease_reply(shoal.write(Command::LeaseKeepAlive { id }).await?)
}

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

pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Response> {
    shoal.read_barrier(false).await?;
    let leases = shoal.read(|store| store.lease_list()).await?;
    Ok(Json(
        json!({"leases": leases.iter().map(|lease| lease_json(&shoal, lease)).collect::<Vec<_>>()}),
    )
    .into_response())
}
