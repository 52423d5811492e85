//! Logs and traces across the cluster: a search or aggregation asked on any
//! node runs on every live member (over the RPC listener) and the answers
//! are merged; members that did not answer are reported, never hidden.
//! Also: the node's own log events fed into the stream `shoal`. Failures
//! are the log engine's own `SearchError`; the HTTP layer maps them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use shoal_search::{
    AggregateRequest, Aggregation, Hit, Logs, Record, SearchError, SearchRequest, StreamInfo,
};
use shoal_transport::{RemoteError, RemoteErrorKind, SearchAnswer, SearchCall, SearchHandler};
use tokio::sync::mpsc;

use super::shoal::Shoal;

/// Most records one SQL query may read, over all nodes (query cost limit).
pub const MAX_SQL_ROWS: usize = 200_000;

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

async fn run_local(logs: &Logs, call: SearchCall) -> Result<SearchAnswer, SearchError> {
    Ok(match call {
        SearchCall::Search(request) => SearchAnswer::Hits(logs.search(request).await?),
        SearchCall::Aggregate(request) => SearchAnswer::Aggregation(logs.aggregate(request).await?),
        SearchCall::Streams => SearchAnswer::Streams(logs.streams()),
        SearchCall::Scan(request, max) => SearchAnswer::Hits(logs.scan(request, max).await?),
        SearchCall::Position => SearchAnswer::Position(logs.tail_position().await),
    })
}

/// How a search failure is told to the peer that asked.
fn remote_error(e: SearchError) -> RemoteError {
    let kind = match e {
        SearchError::InvalidStream(_) | SearchError::InvalidQuery(_) => RemoteErrorKind::Invalid,
        SearchError::Busy(_) => RemoteErrorKind::Busy,
        _ => RemoteErrorKind::Internal,
    };
    RemoteError::new(kind, e.to_string())
}

/// Answers peers' requests with this node's engine.
pub fn peer_handler(logs: Logs) -> SearchHandler {
    Arc::new(move |call: SearchCall| {
        let logs = logs.clone();
        Box::pin(async move { run_local(&logs, call).await.map_err(remote_error) })
    })
}

/// The members a cluster-wide request asks besides this node (id and RPC
/// address), and a report that counts them and lists the members gossip
/// says are down (still in the cluster, so their part is missing).
pub async fn live_peers(shoal: &Shoal) -> (Vec<(u64, String)>, NodeReport) {
    let members = shoal.cluster.gossip.members().await;
    let membership = shoal.raft.metrics().borrow().membership_config.clone();
    let mut report = NodeReport::default();
    let mut peers = Vec::new();
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
        peers.push((member.node_id, member.rpc.clone()));
    }
    (peers, report)
}

/// Run a request on every member gossip knows (that has not left): this
/// node locally, the others over RPC, all at once.
async fn fan_out(
    shoal: &Shoal,
    call: SearchCall,
) -> Result<(Vec<(u64, SearchAnswer)>, NodeReport), SearchError> {
    let timeout = Duration::from_millis(shoal.settings.request_timeout_ms);
    let (peers, mut report) = live_peers(shoal).await;
    let calls: Vec<_> = peers
        .into_iter()
        .map(|(node, addr)| (node, addr, call.clone()))
        .map(|(node, addr, call)| async move {
            let answer = match shoal.forwarder.search(&addr, call, timeout).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (node, answer)
        })
        .collect();
    report.asked += 1;
    let (local, remote) = tokio::join!(
        run_local(&shoal.logs, call),
        futures::future::join_all(calls)
    );
    let mut replies = vec![(shoal.node_id, local?)];
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
) -> Result<(Vec<Hit>, NodeReport), SearchError> {
    let (order, limit) = (request.order, request.limit);
    let (replies, report) = fan_out(shoal, SearchCall::Search(request)).await?;
    let lists = replies
        .into_iter()
        .filter_map(|(_, reply)| match reply {
            SearchAnswer::Hits(hits) => Some(hits),
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
) -> Result<(Vec<Hit>, NodeReport), SearchError> {
    let (replies, report) = fan_out(shoal, SearchCall::Scan(request, max)).await?;
    let hits = replies
        .into_iter()
        .flat_map(|(_, reply)| match reply {
            SearchAnswer::Hits(hits) => hits,
            _ => Vec::new(),
        })
        .collect();
    Ok((hits, report))
}

pub async fn aggregate(
    shoal: &Shoal,
    request: AggregateRequest,
) -> Result<(Aggregation, NodeReport), SearchError> {
    let (replies, report) = fan_out(shoal, SearchCall::Aggregate(request)).await?;
    let parts = replies.into_iter().filter_map(|(_, reply)| match reply {
        SearchAnswer::Aggregation(aggregation) => Some(aggregation),
        _ => None,
    });
    Ok((Aggregation::merge(parts), report))
}

/// Streams per node.
pub async fn streams(
    shoal: &Shoal,
) -> Result<(BTreeMap<u64, Vec<StreamInfo>>, NodeReport), SearchError> {
    let (replies, report) = fan_out(shoal, SearchCall::Streams).await?;
    let streams = replies
        .into_iter()
        .filter_map(|(node, reply)| match reply {
            SearchAnswer::Streams(streams) => Some((node, streams)),
            _ => None,
        })
        .collect();
    Ok((streams, report))
}

/// Where a live tail starts: every node's searchable position.
pub async fn positions(shoal: &Shoal) -> Result<BTreeMap<u64, u64>, SearchError> {
    let (replies, _) = fan_out(shoal, SearchCall::Position).await?;
    Ok(replies
        .into_iter()
        .filter_map(|(node, reply)| match reply {
            SearchAnswer::Position(seq) => Some((node, seq)),
            _ => None,
        })
        .collect())
}

const RECORD_BATCH: usize = 1000;
const RECORD_FLUSH: Duration = Duration::from_millis(500);

/// Index records the node makes itself (its own log events, the audit
/// trail) into `stream`, in batches of up to 1000 or every 500 ms; a batch
/// the engine refuses is counted in `dropped_metric`.
pub async fn index_records(
    logs: Logs,
    stream: &'static str,
    mut events: mpsc::Receiver<Record>,
    dropped_metric: &'static str,
) {
    // The node's own records are not refused for the stream cap.
    logs.reserve_stream(stream);
    let mut batch = Vec::new();
    loop {
        let deadline = tokio::time::sleep(RECORD_FLUSH);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(record) => {
                        batch.push(record);
                        if batch.len() >= RECORD_BATCH {
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
            .ingest(stream, std::mem::take(&mut batch))
            .await
            .is_err()
        {
            metrics::counter!(dropped_metric).increment(1);
        }
    }
}
