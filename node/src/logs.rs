//! Logs and traces across the cluster: a search or aggregation asked on any
//! node runs on every live member (over the RPC listener) and the answers
//! are merged; members that did not answer are reported, never hidden.
//! Also: the node's own log events fed into the stream `shoal`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_raft::SearchHandler;
use shoal_search::{
    AggregateRequest, Aggregation, Hit, Logs, Record, SearchError, SearchRequest, StreamInfo,
};
use tokio::sync::mpsc;

use crate::api::error::ApiError;
use crate::service::Shoal;

/// What one node asks another.
#[derive(Serialize, Deserialize)]
enum PeerRequest {
    Search(SearchRequest),
    Aggregate(AggregateRequest),
    Streams,
    /// Every matching record, at most this many (for SQL).
    Scan(SearchRequest, usize),
    /// The highest record seq that is searchable on the node (tail start).
    Position,
}

#[derive(Serialize, Deserialize)]
enum PeerReply {
    Hits(Vec<Hit>),
    Aggregation(Aggregation),
    Streams(Vec<StreamInfo>),
    Position(u64),
}

/// Which members answered a cluster-wide request.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeReport {
    /// Members asked (this node included).
    pub asked: usize,
    pub answered: Vec<u64>,
    /// Members that did not answer, and why.
    pub failed: Vec<NodeFailure>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeFailure {
    pub node: u64,
    pub error: String,
}

impl NodeReport {
    pub fn partial(&self) -> bool {
        !self.failed.is_empty()
    }
}

pub fn search_error(e: SearchError) -> ApiError {
    use axum::http::StatusCode;
    match e {
        SearchError::InvalidStream(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_stream", message)
        }
        SearchError::InvalidQuery(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
        }
        SearchError::Busy(message) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
            .with("retry_after_s", serde_json::json!(1)),
        other => {
            tracing::error!(error = %other, "log engine error");
            ApiError::internal(other.to_string())
        }
    }
}

async fn run_local(logs: &Logs, request: PeerRequest) -> Result<PeerReply, SearchError> {
    Ok(match request {
        PeerRequest::Search(request) => PeerReply::Hits(logs.search(request).await?),
        PeerRequest::Aggregate(request) => PeerReply::Aggregation(logs.aggregate(request).await?),
        PeerRequest::Streams => PeerReply::Streams(logs.streams()),
        PeerRequest::Scan(request, max) => PeerReply::Hits(logs.scan(request, max).await?),
        PeerRequest::Position => PeerReply::Position(logs.tail_position().await),
    })
}

/// Answers peers' requests with this node's engine.
pub fn peer_handler(logs: Logs) -> SearchHandler {
    Arc::new(move |body: Vec<u8>| {
        let logs = logs.clone();
        Box::pin(async move {
            let request: PeerRequest =
                serde_json::from_slice(&body).map_err(|e| format!("bad search request: {e}"))?;
            let reply = run_local(&logs, request).await.map_err(|e| e.to_string())?;
            serde_json::to_vec(&reply).map_err(|e| e.to_string())
        })
    })
}

/// Run a request on every member gossip knows (that has not left): this
/// node locally, the others over RPC, all at once.
async fn fan_out(
    shoal: &Shoal,
    request: PeerRequest,
) -> Result<(Vec<(u64, PeerReply)>, NodeReport), ApiError> {
    let body = serde_json::to_vec(&request).map_err(|e| ApiError::internal(e.to_string()))?;
    let timeout = Duration::from_millis(shoal.settings.request_timeout_ms);
    let members = shoal.gossip.members().await;
    let membership = shoal.raft.metrics().borrow().membership_config.clone();
    let mut report = NodeReport::default();
    let mut calls = Vec::new();
    for member in members
        .values()
        .filter(|m| !m.left && m.node_id != shoal.node_id)
    {
        if !member.alive {
            // A dead node still in the cluster holds records we cannot reach:
            // say so. One already removed from the cluster is gone for good.
            if membership.membership().get_node(&member.node_id).is_some() {
                report.asked += 1;
                report.failed.push(NodeFailure {
                    node: member.node_id,
                    error: "down (by gossip)".into(),
                });
            }
            continue;
        }
        report.asked += 1;
        let (node, addr, body) = (member.node_id, member.rpc.clone(), body.clone());
        calls.push(async move {
            let answer = match shoal.forwarder.search(&addr, body, timeout).await {
                Ok(Ok(bytes)) => serde_json::from_slice::<PeerReply>(&bytes)
                    .map_err(|e| format!("bad answer: {e}")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.to_string()),
            };
            (node, answer)
        });
    }
    report.asked += 1;
    let (local, remote) = tokio::join!(
        run_local(&shoal.logs, request),
        futures::future::join_all(calls)
    );
    let mut replies = vec![(shoal.node_id, local.map_err(search_error)?)];
    report.answered.push(shoal.node_id);
    for (node, answer) in remote {
        match answer {
            Ok(reply) => {
                report.answered.push(node);
                replies.push((node, reply));
            }
            Err(error) => {
                metrics::counter!("shoal_logs_search_node_failures_total").increment(1);
                report.failed.push(NodeFailure { node, error });
            }
        }
    }
    report.answered.sort_unstable();
    report.failed.sort_by_key(|f| f.node);
    Ok((replies, report))
}

/// A cluster-wide search: each node's page, merged into one.
pub async fn search(
    shoal: &Shoal,
    request: SearchRequest,
) -> Result<(Vec<Hit>, NodeReport), ApiError> {
    let (order, limit) = (request.order, request.limit);
    let (replies, report) = fan_out(shoal, PeerRequest::Search(request)).await?;
    let lists = replies
        .into_iter()
        .filter_map(|(_, reply)| match reply {
            PeerReply::Hits(hits) => Some(hits),
            _ => None,
        })
        .collect();
    Ok((shoal_search::merge_hits(lists, order, limit), report))
}

/// Every matching record from every node (at most `max` per node).
pub async fn scan(
    shoal: &Shoal,
    request: SearchRequest,
    max: usize,
) -> Result<(Vec<Hit>, NodeReport), ApiError> {
    let (replies, report) = fan_out(shoal, PeerRequest::Scan(request, max)).await?;
    let hits = replies
        .into_iter()
        .flat_map(|(_, reply)| match reply {
            PeerReply::Hits(hits) => hits,
            _ => Vec::new(),
        })
        .collect();
    Ok((hits, report))
}

pub async fn aggregate(
    shoal: &Shoal,
    request: AggregateRequest,
) -> Result<(Aggregation, NodeReport), ApiError> {
    let (replies, report) = fan_out(shoal, PeerRequest::Aggregate(request)).await?;
    let parts = replies.into_iter().filter_map(|(_, reply)| match reply {
        PeerReply::Aggregation(aggregation) => Some(aggregation),
        _ => None,
    });
    Ok((Aggregation::merge(parts), report))
}

/// Streams per node.
pub async fn streams(
    shoal: &Shoal,
) -> Result<(BTreeMap<u64, Vec<StreamInfo>>, NodeReport), ApiError> {
    let (replies, report) = fan_out(shoal, PeerRequest::Streams).await?;
    let streams = replies
        .into_iter()
        .filter_map(|(node, reply)| match reply {
            PeerReply::Streams(streams) => Some((node, streams)),
            _ => None,
        })
        .collect();
    Ok((streams, report))
}

/// Where a live tail starts: every node's searchable position.
pub async fn positions(shoal: &Shoal) -> Result<BTreeMap<u64, u64>, ApiError> {
    let (replies, _) = fan_out(shoal, PeerRequest::Position).await?;
    Ok(replies
        .into_iter()
        .filter_map(|(node, reply)| match reply {
            PeerReply::Position(seq) => Some((node, seq)),
            _ => None,
        })
        .collect())
}

/// Own log events waiting to be indexed; beyond this they are dropped (and counted).
pub const SELF_LOG_QUEUE: usize = 8192;
const SELF_LOG_BATCH: usize = 1000;
const SELF_LOG_FLUSH: Duration = Duration::from_millis(500);

/// Index the node's own log events (from the telemetry layer) into the stream `shoal`.
pub async fn index_own_logs(logs: Logs, mut events: mpsc::Receiver<Record>) {
    let mut batch = Vec::new();
    loop {
        let deadline = tokio::time::sleep(SELF_LOG_FLUSH);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(record) => {
                        batch.push(record);
                        if batch.len() >= SELF_LOG_BATCH {
                            break;
                        }
                    }
                    None => return,
                },
                _ = &mut deadline => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        // No tracing here on failure: it would feed this very queue.
        if logs
            .ingest("shoal", std::mem::take(&mut batch))
            .await
            .is_err()
        {
            metrics::counter!("shoal_logs_self_dropped_total").increment(1);
        }
    }
}
