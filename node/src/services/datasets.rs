//! Datasets across the cluster: a SQL query asked on any node has every
//! live member scan its own files (each in a SQL worker process) and send
//! the rows that pass the query's filter; this node runs the query over
//! them and its own files. Also: compaction and retention of this node's
//! files, once a minute.

use std::sync::Arc;
use std::time::Duration;

use shoal_datasets::query::QueryPlan;
use shoal_datasets::{Datasets, Format, TableScan};
use shoal_transport::{DatasetScanHandler, RemoteError, RemoteErrorKind};

use super::logs::{live_peers, NodeFailure, NodeReport};
use super::shoal::Shoal;
use super::sql_worker::{self, DatasetTable, Output, SqlWorkerError};

/// How often this node compacts and applies retention to its datasets.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// Why a dataset query failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum DatasetQueryError {
    #[error(transparent)]
    Worker(#[from] SqlWorkerError),
    /// A node refused its part (the query is at fault, e.g. too many rows).
    #[error("node {node}: {message}")]
    Refused { node: u64, message: String },
    #[error("dataset files: {0}")]
    Files(#[from] shoal_datasets::DatasetError),
    #[error("{0}")]
    Internal(String),
}

/// Why a node's part of a query is missing.
enum Part {
    /// The query is at fault: the whole query fails.
    Refused(String),
    /// The node failed or did not answer: the result is partial.
    Failed(String),
}

/// Run a planned query over every live node's files.
pub async fn query(
    shoal: &Arc<Shoal>,
    plan: QueryPlan,
    format: Format,
    limit: Duration,
) -> Result<(Output, NodeReport), DatasetQueryError> {
    let (peers, mut report) = live_peers(shoal).await;
    let scans: Vec<Vec<u8>> = plan
        .scans
        .iter()
        .map(shoal_codec::encode)
        .collect::<Result<_, _>>()
        .map_err(|e| DatasetQueryError::Internal(e.to_string()))?;
    let asks = peers.into_iter().map(|(node, addr)| {
        let scans = scans.clone();
        async move {
            let mut parts = Vec::with_capacity(scans.len());
            for scan in scans {
                match shoal.forwarder.dataset_scan(&addr, scan, limit).await {
                    Ok(Ok(bytes)) => parts.push(serde_bytes::ByteBuf::from(bytes)),
                    Ok(Err(e)) if e.kind == RemoteErrorKind::Invalid => {
                        return (node, Err(Part::Refused(e.message)))
                    }
                    Ok(Err(e)) => return (node, Err(Part::Failed(e.message))),
                    Err(e) => return (node, Err(Part::Failed(e.to_string()))),
                }
            }
            (node, Ok(parts))
        }
    });
    report.asked += 1;
    report.answered.push(shoal.node_id);
    let answers = futures::future::join_all(asks).await;
    let mut tables: Vec<DatasetTable> = Vec::with_capacity(plan.scans.len());
    let datasets = shoal.messaging.deliveries.datasets().clone();
    for scan in &plan.scans {
        let store = datasets.clone();
        let name = scan.dataset.name.clone();
        let files = tokio::task::spawn_blocking(move || store.live_files(&name))
            .await
            .map_err(|e| DatasetQueryError::Internal(e.to_string()))??;
        tables.push(DatasetTable {
            scan: scan.clone(),
            files: files.into_iter().map(|f| f.path).collect(),
            parts: Vec::new(),
        });
    }
    for (node, answer) in answers {
        match answer {
            Ok(parts) => {
                report.answered.push(node);
                for (table, part) in tables.iter_mut().zip(parts) {
                    table.parts.push(part);
                }
            }
            Err(Part::Refused(message)) => {
                return Err(DatasetQueryError::Refused { node, message })
            }
            Err(Part::Failed(error)) => {
                metrics::counter!("shoal_sql_node_failures_total").increment(1);
                report.failed.push(NodeFailure { node, error });
            }
        }
    }
    report.answered.sort_unstable();
    report.failed.sort_by_key(|f| f.node);
    let output = sql_worker::query_datasets(plan.sql, tables, format, limit).await?;
    Ok((output, report))
}

/// Answers peers' scans of this node's dataset files.
pub fn peer_handler(datasets: Arc<Datasets>, request_timeout: Duration) -> DatasetScanHandler {
    Arc::new(move |bytes: Vec<u8>| {
        let store = datasets.clone();
        Box::pin(async move {
            let internal = |e: &dyn std::fmt::Display| {
                RemoteError::new(RemoteErrorKind::Internal, e.to_string())
            };
            let scan: TableScan = shoal_codec::decode(&bytes)
                .map_err(|e| RemoteError::new(RemoteErrorKind::Invalid, e.to_string()))?;
            let name = scan.dataset.name.clone();
            let files = tokio::task::spawn_blocking(move || store.live_files(&name))
                .await
                .map_err(|e| internal(&e))?
                .map_err(|e| internal(&e))?;
            let files = files.into_iter().map(|f| f.path).collect();
            // Less than the asking node waits, so a refusal reaches it.
            let limit = request_timeout.saturating_sub(Duration::from_millis(500));
            sql_worker::scan_dataset(scan, files, limit)
                .await
                .map_err(|e| match e {
                    SqlWorkerError::Refused(_)
                    | SqlWorkerError::TooManyRows(_)
                    | SqlWorkerError::TooBig(_) => {
                        RemoteError::new(RemoteErrorKind::Invalid, e.to_string())
                    }
                    SqlWorkerError::TooLong(_) => {
                        RemoteError::new(RemoteErrorKind::Busy, e.to_string())
                    }
                    SqlWorkerError::Unavailable(_) => internal(&e),
                })
        })
    })
}

/// Compact and apply retention to this node's datasets, once a minute.
pub async fn maintain(shoal: Arc<Shoal>) {
    let mut every = tokio::time::interval(MAINTENANCE_EVERY);
    loop {
        every.tick().await;
        let config = shoal.messaging.config();
        for dataset in config.datasets.values().cloned() {
            let store = shoal.messaging.deliveries.datasets().clone();
            let name = dataset.name.clone();
            let today = chrono::Utc::now().date_naive();
            let done = tokio::task::spawn_blocking(move || store.maintain(&dataset, today)).await;
            match done {
                Ok(Ok(done)) => {
                    metrics::counter!("shoal_dataset_files_compacted_total", "dataset" => name.clone())
                        .increment(done.compacted_files as u64);
                    metrics::counter!("shoal_dataset_files_deleted_total", "dataset" => name.clone())
                        .increment(done.deleted_files as u64);
                    if done.deleted_files > 0 || done.compacted_files > 0 {
                        tracing::info!(dataset = %name, compacted = done.compacted_files,
                            deleted = done.deleted_files, deleted_bytes = done.deleted_bytes,
                            "dataset maintenance");
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(dataset = %name, error = %e, "dataset maintenance failed")
                }
                Err(e) => tracing::warn!(dataset = %name, error = %e, "dataset maintenance failed"),
            }
        }
    }
}
