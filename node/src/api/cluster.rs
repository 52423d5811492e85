//! Cluster endpoints: membership status and leaving.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use shoal_raft::{local_replication, NodeId};
use utoipa::ToSchema;

use shoal_storage::now_ms;

use super::error::{ApiError, ApiResult};
use super::extract::JsonBody;
use crate::services::shoal::{KvError, Shoal};

/// How long to wait for the leader's replication figures.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /v1/cluster`.
#[derive(Serialize, ToSchema)]
pub struct ClusterStatus {
    /// The answering node.
    #[schema(value_type = u64)]
    pub node_id: NodeId,
    /// The Raft leader, if known.
    #[schema(value_type = Option<u64>)]
    pub leader: Option<NodeId>,
    /// The answering node's Raft term.
    pub term: u64,
    pub members: Vec<ClusterMember>,
}

/// A member known to Raft or to gossip.
#[derive(Serialize, ToSchema)]
pub struct ClusterMember {
    #[schema(value_type = u64)]
    pub node_id: NodeId,
    /// HTTP API address.
    pub api: Option<String>,
    /// Node-to-node RPC address.
    pub rpc: Option<String>,
    /// Gossip (UDP) address.
    pub gossip: Option<String>,
    /// `alive`, `dead`, `left` or `unknown` (not seen over gossip).
    #[schema(value_type = String, pattern = "^(alive|dead|left|unknown)$")]
    pub gossip_state: &'static str,
    /// `leader`, `voter`, `learner` or `none` (not in the Raft membership).
    #[schema(value_type = String, pattern = "^(leader|voter|learner|none)$")]
    pub raft_role: &'static str,
    /// The leader's matched log index for this member.
    pub match_index: Option<u64>,
    /// Applied index as published by the member over gossip.
    pub applied_index: Option<u64>,
    /// The member started with empty Raft state and refuses votes (except
    /// for cluster formation) until it has applied an entry the current
    /// leader committed in its own term; as published over gossip.
    pub catching_up: Option<bool>,
    /// Space alarms raised on the member, as published over gossip:
    /// `quota` (its replicated store is past `--quota-backend-mb`) and
    /// `disk` (less than `--min-free-disk-mb` free). While any live member
    /// has one, writes that would grow the store get 507.
    pub alarms: Option<Vec<String>>,
    pub version: Option<String>,
    pub uptime_seconds: Option<u64>,
}

/// `GET /v1/cluster/digest`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"node_id": 1, "applied_index": 5213, "applied_term": 4, "revision": 48211,
    "digest": "9c1e000000000000000000000000000000000000000000000000000000000000", "records": 150338}))]
pub struct Digest {
    #[schema(value_type = u64)]
    pub node_id: NodeId,
    /// Index of the last applied Raft entry (0 if none).
    pub applied_index: u64,
    /// Term of the last applied Raft entry (0 if none).
    pub applied_term: u64,
    /// The store revision.
    pub revision: u64,
    /// blake3 of the state, hex.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub digest: String,
    /// Records hashed.
    pub records: u64,
}

/// `GET /v1/cluster`: every member known to Raft or gossip, with its gossip
/// state, Raft role and the leader's match index for it.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    operation_id = "clusterStatus",
    summary = "Cluster members with gossip state, Raft role and match index",
    responses(
        (status = 200, description = "Members known to Raft or gossip.", body = ClusterStatus),
    )
)]
pub async fn status(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<ClusterStatus>> {
    let metrics = shoal.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let gossip = shoal.cluster.gossip.members().await;
    let replication = match (local_replication(&shoal.raft), metrics.current_leader) {
        (Some(replication), _) => Some(replication),
        (None, Some(leader)) => match membership.get_node(&leader) {
            Some(node) => shoal
                .forwarder
                .replication(&node.rpc, REPLICATION_TIMEOUT)
                .await
                .ok()
                .flatten(),
            None => None,
        },
        (None, None) => None,
    };
    let mut ids: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    ids.extend(gossip.keys().copied());
    let members: Vec<ClusterMember> = ids
        .into_iter()
        .map(|id| {
            let raft_node = membership.get_node(&id);
            let seen = gossip.get(&id);
            let raft_role = if Some(id) == metrics.current_leader {
                "leader"
            } else if voters.contains(&id) {
                "voter"
            } else if raft_node.is_some() {
                "learner"
            } else {
                "none"
            };
            let gossip_state = match seen {
                Some(m) if m.left => "left",
                Some(m) if m.alive => "alive",
                Some(_) => "dead",
                None => "unknown",
            };
            ClusterMember {
                node_id: id,
                api: seen
                    .map(|m| m.api.clone())
                    .or(raft_node.map(|n| n.api.clone())),
                rpc: seen
                    .map(|m| m.rpc.clone())
                    .or(raft_node.map(|n| n.rpc.clone())),
                gossip: seen.map(|m| m.gossip.clone()),
                gossip_state,
                raft_role,
                match_index: replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten()),
                applied_index: seen.map(|m| m.applied_index),
                catching_up: seen.map(|m| m.catching_up),
                alarms: seen.map(|m| m.alarms.clone()),
                version: seen.map(|m| m.version.clone()),
                uptime_seconds: seen.map(|m| now_ms().saturating_sub(m.started_ms) / 1000),
            }
        })
        .collect();
    Ok(Json(ClusterStatus {
        node_id: shoal.node_id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        members,
    }))
}

/// `GET /v1/cluster/digest`: a digest of this node's whole replicated state
/// at the position it has applied (local, no read barrier). Replicas at the
/// same `applied_index` must have the same digest; the fault tests compare
/// them.
#[utoipa::path(
    get,
    path = "/v1/cluster/digest",
    tag = "cluster",
    operation_id = "clusterDigest",
    summary = "A digest of this node's whole replicated state",
    description = "A hash (blake3) over every record of the replicated state (keys with revisions and values, history, leases, proposal ids, counters, the applied Raft position), read from one consistent view of this node's local state (no read barrier). Replicas at the same `applied_index` must have the same `digest`. A node computes one digest at a time; a request that arrives while one runs waits for it, and takes its result when nothing was applied meanwhile.",
    responses(
        (status = 200, description = "The digest.", body = Digest),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn digest(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<Digest>> {
    // It reads the whole state, and callers that give up cannot stop one
    // that started: one at a time, and the same state is not read twice
    // (the applied position names it; see the description). A caller that
    // gives up while it waits for the lock leaves the queue; once it holds
    // the lock, the rest runs in a task of its own, so that a caller cut
    // off by its timeout neither lets go of the lock while its read goes on
    // nor throws the result away.
    let mut last = shoal.digest.clone().lock_owned().await;
    let computing = shoal.clone();
    let digest = tokio::spawn(async move {
        let (applied, _) = computing.read(|store| store.sm_applied()).await?;
        match last.as_ref() {
            Some(last) if last.last_applied.is_some() && last.last_applied == applied => {
                Ok(last.clone())
            }
            _ => {
                let digest = computing.read(|store| store.sm_digest()).await?;
                metrics::counter!("shoal_state_digests_total").increment(1);
                *last = Some(digest.clone());
                Ok::<_, KvError>(digest)
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("the digest task failed: {e}")))??;
    let applied: Option<openraft::LogId<NodeId>> = match &digest.last_applied {
        Some(bytes) => Some(shoal_codec::decode(bytes)?),
        None => None,
    };
    Ok(Json(Digest {
        node_id: shoal.node_id,
        applied_index: applied.map_or(0, |id| id.index),
        applied_term: applied.map_or(0, |id| id.leader_id.term),
        revision: digest.revision,
        digest: digest.hex(),
        records: digest.records,
    }))
}

/// `POST /v1/cluster/leave`'s body; `{}` removes this node.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaveBody {
    /// The node to remove; omitted or null: this node.
    #[schema(value_type = Option<u64>)]
    node_id: Option<NodeId>,
}

/// `POST /v1/cluster/leave`'s answer.
#[derive(Serialize, ToSchema)]
pub struct Left {
    /// The node removed.
    #[schema(value_type = u64)]
    pub removed: NodeId,
}

/// `POST /v1/cluster/leave`: remove a node (default: this one) from Raft.
/// A node that removes itself then shuts down.
#[utoipa::path(
    post,
    path = "/v1/cluster/leave",
    tag = "cluster",
    operation_id = "clusterLeave",
    summary = "Remove a node from the cluster (default: this node, which then exits)",
    request_body(content = LeaveBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Removed.", body = Left),
        (status = 400, description = "Malformed body. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The node is not a member. Error codes: `node_not_found`.", body = crate::api::error::ErrorBody),
        (status = 409, description = "The node is the cluster's only voter: removing it would leave no quorum (stop the node instead). Error codes: `last_voter`.", body = crate::api::error::ErrorBody),
        (status = 503, description = "No leader, or the membership change failed. Error codes: `unavailable`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn leave(
    State(shoal): State<Arc<Shoal>>,
    JsonBody(body): JsonBody<LeaveBody>,
) -> ApiResult<Json<Left>> {
    let id = body.node_id.unwrap_or(shoal.node_id);
    if id == shoal.node_id {
        shoal.cluster.leave_this_node().await?;
        shoal.shutdown.notify_one();
    } else {
        shoal.cluster.leave(id).await?;
    }
    Ok(Json(Left { removed: id }))
}
