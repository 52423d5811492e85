//! SQL across the cluster (`/v1/sql` and reports): a query asked on any
//! node has every live member scan its own dataset files (each in a SQL
//! worker process) and send the rows that pass the query's filter; this
//! node runs the query over them, its own files and the built-in tables
//! it reads (`logs`, fetched from every node as log SQL does;
//! `workflow_instances`, from this node's replica). Also: compaction and
//! retention of this node's dataset files, once a minute.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_datasets::instances::InstanceRow;
use shoal_datasets::query::{QueryPlan, LOGS_TABLE};
use shoal_datasets::{Dataset, Datasets, Format, TableScan};
use shoal_search::{SearchError, SearchRequest};
use shoal_transport::{DatasetScanHandler, RemoteError, RemoteErrorKind};
use shoal_workflows::run::Instance;

use super::instances::{self, InstanceError, INSTANCES_PREFIX};
use super::logs::{self, live_peers, NodeFailure, NodeReport};
use super::shoal::Shoal;
use super::sql_worker::{self, Builtins, DatasetTable, Output, SqlWorkerError};

/// How often this node compacts and applies retention to its datasets.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// Why a dataset query failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum DatasetQueryError {
    #[error(transparent)]
    Worker(#[from] SqlWorkerError),
    /// A node refused its part (the query is at fault, e.g. too many
    /// rows: `kind` says which).
    #[error("node {node}: {message}")]
    Refused {
        node: u64,
        kind: RemoteErrorKind,
        message: String,
    },
    #[error("dataset files: {0}")]
    Files(#[from] shoal_datasets::DatasetError),
    /// Fetching the logs failed.
    #[error(transparent)]
    Logs(#[from] SearchError),
    /// Reading the workflow instances failed.
    #[error(transparent)]
    Instances(#[from] InstanceError),
    /// A built-in table has more rows than a query may read.
    #[error("{0}")]
    TooManyRows(String),
    #[error("{0}")]
    Internal(String),
}

/// A query checked against what is defined: the datasets it scans, and
/// which built-in tables it reads.
#[derive(Clone, Debug)]
pub struct SqlPlan {
    /// The datasets' scans, and the SQL as it runs (`now()`, `date_trunc`
    /// and timestamp strings compared with `ts` or `_time` rewritten).
    pub datasets: QueryPlan,
    /// The records to fetch when it reads `logs`: its conditions on `ts`,
    /// `level`, `service`, ... when it reads `logs` alone, else every
    /// record (up to [`logs::MAX_SQL_ROWS`]).
    pub logs: Option<SearchRequest>,
    /// Whether it reads `workflow_instances`.
    pub instances: bool,
}

/// How much of a dataset one node's part of a query may hold.
#[derive(Clone, Copy, Debug)]
pub struct PartLimits {
    pub rows: u64,
    /// Bytes of Arrow IPC.
    pub bytes: u64,
}

/// Parse and check a query (the reason when it is refused); each node's
/// part of a dataset is held to `limits`.
pub fn plan(
    sql: &str,
    defined: &BTreeMap<String, Dataset>,
    now_nanos: i64,
    limits: PartLimits,
) -> Result<SqlPlan, String> {
    let rewritten = shoal_search::sql::plan(sql, now_nanos).map_err(|e| e.to_string())?;
    let mut datasets =
        shoal_datasets::query::plan(&rewritten.sql, defined).map_err(|e| e.to_string())?;
    for scan in &mut datasets.scans {
        scan.max_rows = limits.rows;
        scan.max_part_bytes = limits.bytes;
    }
    Ok(SqlPlan {
        logs: datasets
            .builtins
            .contains(LOGS_TABLE)
            .then_some(rewritten.filter),
        instances: datasets.builtins.contains(shoal_datasets::instances::TABLE),
        datasets,
    })
}

/// [`plan`] as this node runs a query now: over its defined datasets,
/// with its `--sql-max-rows-per-node` and `--sql-max-part-mb`.
pub fn plan_on_node(shoal: &Shoal, sql: &str) -> Result<SqlPlan, String> {
    let config = shoal.messaging.config();
    plan(
        sql,
        &config.datasets,
        shoal_search::record::now_nanos(),
        PartLimits {
            rows: shoal.settings.sql_max_rows_per_node,
            bytes: shoal.settings.sql_max_part_bytes,
        },
    )
}

/// Why a node's part of a query is missing.
enum Part {
    /// The query is at fault: the whole query fails.
    Refused(RemoteError),
    /// The node failed or did not answer: the result is partial.
    Failed(String),
}

/// Run a planned query over every live node's files and the built-in
/// tables it reads, within `limit`: its result in each of `formats`.
pub async fn query(
    shoal: &Arc<Shoal>,
    plan: SqlPlan,
    formats: Vec<Format>,
    limit: Duration,
) -> Result<(Vec<Output>, NodeReport), DatasetQueryError> {
    let started = Instant::now();
    let mut builtins = Builtins::default();
    let mut logs_report = None;
    if let Some(filter) = plan.logs {
        let (hits, report) = logs::scan(shoal, filter, logs::MAX_SQL_ROWS + 1).await?;
        if hits.len() > logs::MAX_SQL_ROWS {
            return Err(DatasetQueryError::TooManyRows(format!(
                "the query reads more than {} log records; narrow it with conditions \
                 on ts (e.g. ts > now() - interval '1 hour'), level, service, stream or kind in \
                 the WHERE of a query that reads logs alone",
                logs::MAX_SQL_ROWS
            )));
        }
        builtins.logs = Some(hits);
        logs_report = Some(report);
    }
    if plan.instances {
        builtins.instances = Some(instance_rows(shoal).await?);
    }
    let limit = limit.saturating_sub(started.elapsed());
    let plan = plan.datasets;
    if plan.scans.is_empty() {
        let report = logs_report.unwrap_or_else(|| NodeReport {
            asked: 1,
            answered: vec![shoal.node_id],
            failed: Vec::new(),
        });
        let output =
            sql_worker::query_datasets(plan.sql, None, Vec::new(), builtins, formats, None, limit)
                .await?;
        return Ok((output, report));
    }
    let (peers, mut report) = live_peers(shoal).await;
    let scans: Vec<Vec<u8>> = plan
        .scans
        .iter()
        .map(shoal_codec::encode)
        .collect::<Result<_, _>>()
        .map_err(|e| DatasetQueryError::Internal(e.to_string()))?;
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
            files: scan.files_to_read(files),
        });
    }
    // This node's worker reads its files while the other nodes read theirs
    // (alone, it reads them as the query runs).
    let (parts_sender, parts) = tokio::sync::oneshot::channel();
    let worker = sql_worker::query_datasets(
        plan.sql,
        plan.merge,
        tables,
        builtins,
        formats,
        (!peers.is_empty()).then_some(parts),
        limit,
    );
    let gather = async {
        let asks = peers.into_iter().map(|(node, addr)| {
            let scans = scans.clone();
            async move {
                let mut parts = Vec::with_capacity(scans.len());
                for scan in scans {
                    match shoal.forwarder.dataset_scan(&addr, scan, limit).await {
                        Ok(Ok(bytes)) => parts.push(serde_bytes::ByteBuf::from(bytes)),
                        Ok(Err(e)) if fails_the_query(e.kind) => {
                            return (node, Err(Part::Refused(e)))
                        }
                        Ok(Err(e)) => return (node, Err(Part::Failed(e.message))),
                        Err(e) => return (node, Err(Part::Failed(e.to_string()))),
                    }
                }
                (node, Ok(parts))
            }
        });
        let mut by_table: sql_worker::Parts = vec![Vec::new(); scans.len()];
        for (node, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(parts) => {
                    report.answered.push(node);
                    for (table, part) in by_table.iter_mut().zip(parts) {
                        table.push(part);
                    }
                }
                // Dropping the sender stops the worker.
                Err(Part::Refused(e)) => {
                    return Err(DatasetQueryError::Refused {
                        node,
                        kind: e.kind,
                        message: e.message,
                    })
                }
                Err(Part::Failed(error)) => {
                    metrics::counter!("shoal_sql_node_failures_total").increment(1);
                    report.failed.push(NodeFailure { node, error });
                }
            }
        }
        // The worker may have failed already; its answer says why.
        let _ = parts_sender.send(by_table);
        Ok(())
    };
    let (output, gathered) = tokio::join!(worker, gather);
    gathered?;
    Ok((output?, finish_report(shoal.node_id, report, logs_report)))
}

/// The report of a query's nodes: a node is missing from the result when
/// either its dataset part or its log records are.
fn finish_report(
    node_id: u64,
    mut report: NodeReport,
    logs_report: Option<NodeReport>,
) -> NodeReport {
    report.asked += 1;
    report.answered.push(node_id);
    if let Some(logs_report) = logs_report {
        for failure in logs_report.failed {
            if !report.failed.iter().any(|f| f.node == failure.node) {
                report.failed.push(failure);
            }
        }
        report
            .answered
            .retain(|node| !report.failed.iter().any(|f| f.node == *node));
    }
    report.answered.sort_unstable();
    report.failed.sort_by_key(|f| f.node);
    report
}

/// Most workflow instances one query may read.
pub const MAX_INSTANCE_ROWS: usize = 1_000_000;

/// Every workflow instance of this node's replica (after a read barrier,
/// so it holds every change acknowledged before the query), as rows. Read
/// a thousand at a time, each reduced to its row at once: an instance's
/// history and recorded outcomes never pile up in memory.
async fn instance_rows(shoal: &Shoal) -> Result<Vec<InstanceRow>, DatasetQueryError> {
    shoal
        .read_barrier(false)
        .await
        .map_err(InstanceError::from)?;
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let from = after.take();
        let (chunk, last, more) = shoal
            .read(move |store| {
                let (_, kvs, more) = store.kv_range(INSTANCES_PREFIX, from.as_deref(), 1000)?;
                let last = kvs.last().map(|kv| kv.key.clone());
                let chunk: Vec<InstanceRow> = kvs
                    .iter()
                    .filter_map(|kv| instances::decode(&kv.key, &kv.value).ok())
                    .map(row_of)
                    .collect();
                Ok((chunk, last, more))
            })
            .await
            .map_err(InstanceError::from)?;
        rows.extend(chunk);
        if rows.len() > MAX_INSTANCE_ROWS {
            return Err(DatasetQueryError::TooManyRows(format!(
                "the cluster holds more than {MAX_INSTANCE_ROWS} workflow instances, more than \
                 a query may read"
            )));
        }
        if !more {
            return Ok(rows);
        }
        after = last;
    }
}

/// An instance as the table `workflow_instances` shows it.
fn row_of(instance: Instance) -> InstanceRow {
    let json = |value: &serde_json::Value| value.to_string();
    InstanceRow {
        status: instance.status.as_str().to_string(),
        created_ms: i64::try_from(instance.created_ms).unwrap_or(i64::MAX),
        updated_ms: i64::try_from(instance.updated_ms).unwrap_or(i64::MAX),
        input: json(&instance.input),
        output: instance.output.as_ref().map(json),
        error: instance
            .error
            .as_ref()
            .map(|e| serde_json::to_string(e).unwrap_or_default()),
        current_task: instance.current_task,
        retries: instance.retries,
        id: instance.id,
        namespace: instance.namespace,
        name: instance.name,
        version: instance.version,
    }
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
            let files = scan.files_to_read(files);
            // Less than the asking node waits, so a refusal reaches it.
            let limit = request_timeout.saturating_sub(Duration::from_millis(500));
            sql_worker::scan_dataset(scan, files, limit)
                .await
                .map_err(scan_refusal)
        })
    })
}

/// Whether a node's refusal of its part fails the whole query (the query
/// is at fault), rather than leaving the answer without that node.
fn fails_the_query(kind: RemoteErrorKind) -> bool {
    matches!(
        kind,
        RemoteErrorKind::Invalid | RemoteErrorKind::TooLarge | RemoteErrorKind::OverBudget
    )
}

/// Why this node did not scan for a peer, as the peer is told: the kind
/// decides whether the peer's query fails (and with which code) or
/// answers without this node.
fn scan_refusal(e: SqlWorkerError) -> RemoteError {
    let kind = match e {
        SqlWorkerError::Refused(_) => RemoteErrorKind::Invalid,
        SqlWorkerError::TooManyRows(_) => RemoteErrorKind::TooLarge,
        SqlWorkerError::TooBig(_) => RemoteErrorKind::OverBudget,
        SqlWorkerError::TooLong(_) => RemoteErrorKind::Busy,
        SqlWorkerError::Unavailable(_) => RemoteErrorKind::Internal,
    };
    RemoteError::new(kind, e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_datasets::ipc::MAX_PART_BYTES;
    use shoal_datasets::query::DEFAULT_MAX_SCAN_ROWS;

    const LIMITS: PartLimits = PartLimits {
        rows: DEFAULT_MAX_SCAN_ROWS,
        bytes: MAX_PART_BYTES as u64,
    };

    /// The datasets crate names the logs table as the log engine does.
    #[test]
    fn the_logs_table_has_one_name() {
        assert_eq!(LOGS_TABLE, shoal_search::sql::TABLE);
    }

    /// A peer's refusal keeps its reason across the wire: too many rows,
    /// too much memory and a bad query each fail the whole query with
    /// their own code; a peer past its time or failing leaves it partial.
    #[test]
    fn a_peers_refusal_answers_with_the_code_of_its_reason() {
        use crate::api::error::ErrorCode;
        let cases = [
            (
                SqlWorkerError::TooManyRows("more than 10000000 rows".into()),
                Some(ErrorCode::TooManyRows),
            ),
            (
                SqlWorkerError::TooBig("memory allocation of 8 bytes failed".into()),
                Some(ErrorCode::QueryTooExpensive),
            ),
            (
                SqlWorkerError::Refused("no column x".into()),
                Some(ErrorCode::InvalidQuery),
            ),
            (SqlWorkerError::TooLong(Duration::from_secs(1)), None),
            (SqlWorkerError::Unavailable("gone".into()), None),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let sent = shoal_codec::encode(&scan_refusal(e)).expect("encode");
            let refusal: RemoteError = shoal_codec::decode(&sent).expect("decode");
            assert_eq!(fails_the_query(refusal.kind), code.is_some(), "{text}");
            if let Some(code) = code {
                let answer = crate::api::sql::query_error(DatasetQueryError::Refused {
                    node: 7,
                    kind: refusal.kind,
                    message: refusal.message,
                });
                assert_eq!(answer.code, code, "{text}");
                assert_eq!(answer.message, format!("node 7: {text}"));
            }
        }
    }

    #[test]
    fn a_plan_says_which_builtins_a_query_reads() {
        let defined = BTreeMap::new();
        let logs = plan(
            "SELECT level, count(*) FROM logs WHERE ts > now() - interval '1 hour' AND service = 'api' GROUP BY level",
            &defined,
            2_000_000_000_000_000_000,
            LIMITS,
        )
        .expect("plan");
        let filter = logs.logs.expect("reads logs");
        assert_eq!(filter.services, vec!["api".to_string()]);
        assert!(filter.since.is_some());
        assert!(!logs.instances);
        assert!(
            !logs.datasets.sql.contains("now()"),
            "{}",
            logs.datasets.sql
        );
        let instances = plan(
            "SELECT status, count(*) FROM workflow_instances GROUP BY status",
            &defined,
            0,
            LIMITS,
        )
        .expect("plan");
        assert!(instances.instances);
        assert!(instances.logs.is_none());
        assert!(plan("SELECT * FROM nothing", &defined, 0, LIMITS).is_err());
    }
}
