//! Node endpoints: health, readiness, status, metrics, OpenAPI.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::ServerState;
use serde::Serialize;
use shoal_raft::NodeId;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorCode};
use super::AppState;

/// `GET /health`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    /// Always `ok`.
    #[schema(value_type = String, pattern = "^ok$")]
    pub status: &'static str,
}

/// `GET /ready` when ready.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "leader": 1, "applied_index": 42}))]
pub struct Ready {
    /// Always `ready`.
    #[schema(value_type = String, pattern = "^ready$")]
    pub status: &'static str,
    /// Node id of the current Raft leader.
    #[schema(value_type = Option<u64>)]
    pub leader: Option<NodeId>,
    /// Index of the last Raft log entry applied on this node.
    pub applied_index: u64,
}

/// `GET /v1/status`: this node as it sees itself, from local state.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// This node's id.
    #[schema(value_type = u64)]
    pub node_id: NodeId,
    /// Shoal version.
    #[schema(value_type = String)]
    pub version: &'static str,
    /// Raft role: `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub state: String,
    /// Current Raft term.
    pub term: u64,
    /// Current leader's node id, or null if unknown.
    #[schema(value_type = Option<u64>)]
    pub leader: Option<NodeId>,
    /// Raft commit index.
    pub commit_index: u64,
    /// Last applied log index.
    pub applied_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Index of the last snapshot.
    pub snapshot_index: u64,
    /// First log index still stored.
    pub first_log_index: u64,
    /// Current store revision.
    pub revision: u64,
    /// Compaction point.
    pub compact_revision: u64,
    /// True while this node replaces its state with a snapshot from the
    /// leader: its reads wait until the install ends, and `revision` and
    /// `compact_revision` are those of the state being replaced.
    pub installing_snapshot: bool,
    /// Active watchers on this node.
    pub watchers: u64,
    /// Seconds since the process started.
    pub uptime_seconds: u64,
    /// HTTP API address other nodes and clients use.
    pub api: String,
    /// Node-to-node RPC address.
    pub rpc: String,
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "node",
    operation_id = "health",
    summary = "Liveness check",
    description = "Always answers 200 while the process is serving HTTP. Does not consult Raft.",
    responses(
        (status = 200, description = "The process is serving.", body = Health),
    )
)]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready once a leader is known and the node has caught up: applied
/// everything committed, once since it started. After that it stays ready
/// while it knows a leader: every write is committed a moment before it is
/// applied, so comparing the two on each probe would take a busy node out of
/// service again and again. An install of a snapshot takes it out: its
/// reads wait until the install ends.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "node",
    operation_id = "ready",
    summary = "Readiness check",
    description = "200 once the node knows a Raft leader (and is leader, follower or learner) and has caught up: applied every committed log entry, once since it started. After that it stays ready while it knows a leader (writes in flight do not make it unready) and is not installing a snapshot from the leader (its reads wait meanwhile). Otherwise 503 `unavailable` with a message saying why (`not ready: no Raft leader yet`, `not ready: applying the committed log` or `not ready: installing a snapshot from the leader`).",
    responses(
        (status = 200, description = "The node is ready to serve.", body = Ready),
        (status = 503, description = "Not ready: no Raft leader yet, still catching up with the committed log after starting, or installing a snapshot from the leader. Error codes: `unavailable`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn ready(State(app): State<AppState>) -> Response {
    let metrics = app.shoal.raft.metrics().borrow().clone();
    let applied = metrics.last_applied.map(|id| id.index).unwrap_or(0);
    let committed = app.shoal.committed();
    let has_leader = metrics.running_state.is_ok()
        && metrics.current_leader.is_some()
        && matches!(
            metrics.state,
            ServerState::Leader | ServerState::Follower | ServerState::Learner
        );
    if has_leader && applied >= committed {
        app.shoal.caught_up.store(true, Ordering::Relaxed);
    }
    let installing = app.shoal.store.importing_snapshot();
    if has_leader && !installing && app.shoal.caught_up.load(Ordering::Relaxed) {
        Json(Ready {
            status: "ready",
            leader: metrics.current_leader,
            applied_index: applied,
        })
        .into_response()
    } else {
        let reason = if installing {
            "installing a snapshot from the leader"
        } else if has_leader {
            "applying the committed log"
        } else {
            "no Raft leader yet"
        };
        ApiError::unavailable(format!("not ready: {reason}")).into_response()
    }
}

#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "node",
    operation_id = "getStatus",
    summary = "Node and cluster status",
    description = "This node's id and version, Raft role, term, leader, log indexes, the store's current revision and compaction point, and the number of active watchers. Served from local state (no read barrier), and at once while the node installs a snapshot from the leader (`installing_snapshot`), when its other reads wait.",
    responses(
        (status = 200, description = "Node status.", body = Status),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn status(State(app): State<AppState>) -> ApiResult<Json<Status>> {
    let shoal = &app.shoal;
    let metrics = shoal.raft.metrics().borrow().clone();
    let ((counters, installing_snapshot), first_log_index) = shoal
        .read_without_permit(|store| {
            Ok((
                store.counters_unless_importing()?,
                store.log_first_index()?.unwrap_or(0),
            ))
        })
        .await?;
    Ok(Json(Status {
        node_id: shoal.node_id,
        version: env!("CARGO_PKG_VERSION"),
        state: format!("{:?}", metrics.state),
        term: metrics.current_term,
        leader: metrics.current_leader,
        commit_index: shoal.committed(),
        applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
        last_log_index: metrics.last_log_index.unwrap_or(0),
        snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or(0),
        first_log_index,
        revision: counters.revision,
        compact_revision: counters.compact_revision,
        installing_snapshot,
        watchers: shoal.hub.watcher_count() as u64,
        uptime_seconds: shoal.started.elapsed().as_secs(),
        api: shoal.settings.advertise_api.clone(),
        rpc: shoal.settings.advertise_rpc.clone(),
    }))
}

/// Prometheus text: request metrics recorded as they happen, plus Raft and
/// storage gauges sampled now.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition format (`text/plain; version=0.0.4`). Includes HTTP request counters/latency histograms (`shoal_http_requests_total`, `shoal_http_request_duration_seconds`), Raft gauges sampled at scrape time (`shoal_raft_term`, `shoal_raft_commit_index`, `shoal_raft_applied_index`, `shoal_raft_last_log_index`, `shoal_raft_is_leader`), `shoal_raft_write_seconds`, `shoal_watchers`, `shoal_watch_streams`, `shoal_kv_revision`, `shoal_kv_compact_revision` and `shoal_storage_disk_bytes`.",
    responses(
        (status = 200, description = "Metrics in Prometheus text format.", body = String,
         content_type = "text/plain"),
    )
)]
pub async fn metrics(State(app): State<AppState>) -> Response {
    let shoal = &app.shoal;
    let raft = shoal.raft.metrics().borrow().clone();
    metrics::gauge!("shoal_raft_term").set(raft.current_term as f64);
    metrics::gauge!("shoal_raft_commit_index").set(shoal.committed() as f64);
    metrics::gauge!("shoal_raft_applied_index")
        .set(raft.last_applied.map(|id| id.index).unwrap_or(0) as f64);
    metrics::gauge!("shoal_raft_last_log_index").set(raft.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("shoal_raft_is_leader").set(if raft.state == ServerState::Leader {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("shoal_watchers").set(shoal.hub.watcher_count() as f64);
    for (destination, pending) in shoal.messaging.deliveries.outbox().pending_counts() {
        metrics::gauge!("shoal_outbox_pending", "destination" => destination).set(pending as f64);
    }
    metrics::gauge!("shoal_subscriber_buffer_bytes")
        .set(shoal.messaging.router.buffered_bytes() as f64);
    if let Ok(((counters, installing), disk)) = shoal
        .read_without_permit(|store| Ok((store.counters_unless_importing()?, store.disk_bytes())))
        .await
    {
        metrics::gauge!("shoal_kv_revision").set(counters.revision as f64);
        metrics::gauge!("shoal_kv_compact_revision").set(counters.compact_revision as f64);
        metrics::gauge!("shoal_storage_disk_bytes").set(disk as f64);
        metrics::gauge!("shoal_snapshot_installing").set(if installing { 1.0 } else { 0.0 });
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such endpoint; see /openapi.json",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint; see /openapi.json",
    )
}
