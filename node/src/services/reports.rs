//! Saved reports: running one (the query over datasets, cluster-wide; the
//! result recorded, written to a file, published on a topic) and the
//! schedule. A report's schedule state (when it runs next) is a key in
//! Raft; the leader claims a tick with a compare-and-swap on it before it
//! runs the report, so each tick runs once however often the leader
//! changes. A tick missed while there was no leader runs once, not once
//! per missed tick.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_actors::message::{rfc3339_now, Message};
use shoal_datasets::report::{Report, REPORTS_PREFIX};
use shoal_datasets::Format;
use shoal_storage::kv::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use shoal_storage::now_ms;
use shoal_workflows::cron::Cron;
use utoipa::ToSchema;

use super::datasets::{self, DatasetQueryError};
use super::shoal::{KvError, Shoal};
use super::sql_worker::Output;

/// Runs of each report: `<prefix><report>/<run id>`.
pub const RUNS_PREFIX: &str = "_shoal/report-runs/";
/// When each scheduled report runs next.
pub const STATE_PREFIX: &str = "_shoal/report-state/";
/// A result up to this size (JSON) is kept in its run's record.
const RESULT_IN_RUN_BYTES: usize = 64 << 10;
/// How often the leader looks for due reports.
const CHECK_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Query(#[from] DatasetQueryError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] KvError),
    #[error("{0}")]
    Internal(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    /// The node running it stopped before it finished.
    Interrupted,
}

/// One run of a report.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "0001796428800000-1", "report": "daily-sales", "trigger": "schedule",
    "node_id": 1, "started_ms": 1796428800000u64, "finished_ms": 1796428800120u64, "status": "succeeded",
    "rows": 2, "partial": false, "file": "/var/lib/shoal/reports/daily-sales/0001796428800000-1.csv",
    "message_id": "report/daily-sales/0001796428800000-1",
    "result": {"columns": ["date", "orders", "revenue"], "rows": [["2026-12-04", 1, 42.5]]}}))]
pub struct ReportRun {
    /// Start time (Unix ms, zero-padded) and node: runs sort by start.
    pub id: String,
    pub report: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    pub node_id: u64,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// A node did not answer: rows it holds are missing from the result.
    #[serde(default)]
    pub partial: bool,
    /// The result file, on `node_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The id of the message published on the report's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result (`columns`, `rows`) when it is at most 64 KiB of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

#[derive(Serialize, Deserialize)]
struct ScheduleState {
    next_ms: u64,
}

fn run_key(report: &str, id: &str) -> String {
    format!("{RUNS_PREFIX}{report}/{id}")
}

/// Check a report against what is defined: its query reads defined
/// datasets, its schedule parses, its topic is a topic.
pub fn check(shoal: &Shoal, report: &Report) -> Result<(), ReportError> {
    datasets::plan_on_node(shoal, &report.query)
        .map_err(|e| ReportError::Invalid(format!("query: {e}")))?;
    if let Some(schedule) = &report.schedule {
        Cron::parse(schedule).map_err(|e| ReportError::Invalid(format!("schedule: {e}")))?;
    }
    if let Some(topic) = &report.topic {
        shoal_actors::subject::validate_topic(topic)
            .map_err(|e| ReportError::Invalid(format!("topic: {e}")))?;
    }
    Ok(())
}

/// Run a report now, on this node; the finished run (also when it failed).
pub async fn run(
    shoal: &Arc<Shoal>,
    report: &Report,
    trigger: &str,
) -> Result<ReportRun, ReportError> {
    let started_ms = now_ms();
    let mut run = ReportRun {
        id: format!("{started_ms:016}-{}", shoal.node_id),
        report: report.name.clone(),
        trigger: trigger.to_string(),
        node_id: shoal.node_id,
        started_ms,
        finished_ms: None,
        status: RunStatus::Running,
        rows: None,
        partial: false,
        file: None,
        message_id: None,
        error: None,
        result: None,
    };
    put_run(shoal, &run).await?;
    let done = execute(shoal, report, &mut run).await;
    run.finished_ms = Some(now_ms());
    match done {
        Ok(()) => run.status = RunStatus::Succeeded,
        Err(e) => {
            tracing::warn!(report = %report.name, run = %run.id, error = %e, "a report run failed");
            run.status = RunStatus::Failed;
            run.error = Some(e.to_string());
        }
    }
    metrics::counter!("shoal_report_runs_total", "status" => match run.status {
        RunStatus::Succeeded => "succeeded",
        _ => "failed",
    })
    .increment(1);
    put_run(shoal, &run).await?;
    prune(shoal, report).await?;
    Ok(run)
}

async fn execute(
    shoal: &Arc<Shoal>,
    report: &Report,
    run: &mut ReportRun,
) -> Result<(), ReportError> {
    let plan = datasets::plan_on_node(shoal, &report.query).map_err(ReportError::Invalid)?;
    let limit = super::sql_worker::time_left(shoal.settings.request_timeout_ms, Duration::ZERO);
    // One run gives the result and the file, so both hold the same rows.
    let file_format = report.file.map(|format| match format {
        shoal_datasets::report::FileFormat::Csv => Format::Csv,
        shoal_datasets::report::FileFormat::Parquet => Format::Parquet,
    });
    let formats = std::iter::once(Format::Json).chain(file_format).collect();
    let (outputs, nodes) = datasets::query(shoal, plan, formats, limit).await?;
    let mut outputs = outputs.into_iter();
    let Some(Output::Table(table)) = outputs.next() else {
        return Err(ReportError::Internal("a table was expected".into()));
    };
    let rows = table["rows"].as_array().map_or(0, Vec::len);
    run.rows = Some(rows as u64);
    run.partial = nodes.partial();
    if table.to_string().len() <= RESULT_IN_RUN_BYTES {
        run.result = Some(table.clone());
    }
    if let Some(format) = report.file {
        let Some(Output::Bytes(bytes)) = outputs.next() else {
            return Err(ReportError::Internal(
                "the file's bytes were expected".into(),
            ));
        };
        let dir = shoal.settings.data_dir.join("reports").join(&report.name);
        let path = dir.join(format!("{}.{}", run.id, format.extension()));
        let target = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            shoal_durable::create_dir_all(&dir)?;
            shoal_durable::replace_file(&target, &bytes)
        })
        .await
        .map_err(|e| ReportError::Internal(e.to_string()))?
        .map_err(|e| ReportError::Internal(format!("writing {}: {e}", path.display())))?;
        run.file = Some(path.display().to_string());
    }
    if let Some(topic) = &report.topic {
        let mut data = json!({"report": report.name, "run": run.id, "rows": rows,
            "partial": run.partial, "columns": table["columns"], "result": table["rows"]});
        if data.to_string().len() + 4096 > shoal.settings.max_message_bytes {
            // Too big for a message: the numbers stay in the file.
            data["result"] = Value::Null;
            data["file"] = json!(run.file);
        }
        let id = format!("report/{}/{}", report.name, run.id);
        let message = Message {
            id: id.clone(),
            topic: topic.clone(),
            source: format!("shoal/{}/reports", shoal.node_id),
            kind: "shoal.report.run.v1".into(),
            time: rfc3339_now(),
            subject: Some(report.name.clone()),
            content_type: "application/json".into(),
            traceparent: None,
            headers: Vec::new(),
            data: data.to_string().into_bytes(),
        };
        shoal
            .messaging
            .publish(vec![message])
            .await
            .map_err(|e| ReportError::Internal(format!("publishing on {topic}: {e}")))?;
        run.message_id = Some(id);
    }
    Ok(())
}

async fn put_run(shoal: &Shoal, run: &ReportRun) -> Result<(), ReportError> {
    let value = serde_json::to_vec(run).map_err(|e| ReportError::Internal(e.to_string()))?;
    shoal
        .txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Put {
                key: run_key(&run.report, &run.id),
                value,
                lease: 0,
            }],
            failure: vec![],
        })
        .await?;
    Ok(())
}

/// A report's runs, oldest first (this node's replica).
pub async fn runs(shoal: &Shoal, report: &str) -> Result<Vec<ReportRun>, ReportError> {
    let prefix = format!("{RUNS_PREFIX}{report}/");
    let (_, kvs, _) = shoal
        .read(move |store| store.kv_range(&prefix, None, 10_000))
        .await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// Delete the oldest runs past `keep_runs`.
async fn prune(shoal: &Shoal, report: &Report) -> Result<(), ReportError> {
    let runs = runs(shoal, &report.name).await?;
    let excess = runs.len().saturating_sub(report.keep_runs as usize);
    if excess == 0 {
        return Ok(());
    }
    let success = runs[..excess]
        .iter()
        .map(|run| TxnOp::Delete {
            key: run_key(&run.report, &run.id),
            prefix: false,
        })
        .collect();
    shoal
        .txn(Txn {
            compare: vec![],
            success,
            failure: vec![],
        })
        .await?;
    Ok(())
}

/// On the leader, every few seconds: run the reports whose tick is due.
pub async fn schedule(shoal: Arc<Shoal>) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    loop {
        every.tick().await;
        if !shoal.is_leader() {
            continue;
        }
        if let Err(e) = tick(&shoal).await {
            tracing::warn!(error = %e, "scheduled reports could not be checked; retrying");
        }
    }
}

async fn tick(shoal: &Arc<Shoal>) -> Result<(), ReportError> {
    let (_, kvs, _) = shoal
        .read(|store| store.kv_range(REPORTS_PREFIX, None, 10_000))
        .await?;
    let reports: Vec<Report> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    let now = now_ms();
    for report in reports {
        let Some(cron) = report.schedule.as_deref().and_then(|s| Cron::parse(s).ok()) else {
            continue;
        };
        let Some(latest) = cron.next_after(now) else {
            continue;
        };
        let key = format!("{STATE_PREFIX}{}", report.name);
        let read_key = key.clone();
        let (_, kv) = shoal.read(move |store| store.kv_get(&read_key)).await?;
        let state = kv.as_ref().and_then(|kv| {
            serde_json::from_slice::<ScheduleState>(&kv.value)
                .ok()
                .map(|state| (state, kv.mod_revision))
        });
        match state {
            // First seen, or a tick later than the schedule allows (the
            // schedule changed, or a leader's clock ran ahead): set it.
            None => {
                claim(shoal, &key, 0, latest).await?;
            }
            Some((state, revision)) if state.next_ms > latest => {
                claim(shoal, &key, revision, latest).await?;
            }
            Some((state, revision)) if now >= state.next_ms => {
                if claim(shoal, &key, revision, latest).await? {
                    let shoal = shoal.clone();
                    tokio::spawn(async move {
                        if let Err(e) = run(&shoal, &report, "schedule").await {
                            tracing::warn!(report = %report.name, error = %e, "a scheduled report could not be recorded");
                        }
                    });
                }
            }
            Some(_) => {}
        }
    }
    interrupt_stale_runs(shoal, now).await
}

/// Move a report's schedule on to `next_ms` if its state is still at
/// `revision` (0: absent); whether it moved.
async fn claim(shoal: &Shoal, key: &str, revision: u64, next_ms: u64) -> Result<bool, ReportError> {
    let target = if revision == 0 {
        CompareTarget::CreateRevision(0)
    } else {
        CompareTarget::ModRevision(revision)
    };
    let value = serde_json::to_vec(&ScheduleState { next_ms })
        .map_err(|e| ReportError::Internal(e.to_string()))?;
    let (succeeded, _, _) = shoal
        .txn(Txn {
            compare: vec![Compare {
                key: key.to_string(),
                op: CompareOp::Equal,
                target,
            }],
            success: vec![TxnOp::Put {
                key: key.to_string(),
                value,
                lease: 0,
            }],
            failure: vec![],
        })
        .await?;
    Ok(succeeded)
}

/// A run still `running` long after any query could have ended: its node
/// stopped. Say so, instead of leaving it running for ever.
async fn interrupt_stale_runs(shoal: &Shoal, now: u64) -> Result<(), ReportError> {
    let stale_after = shoal.settings.request_timeout_ms * 3;
    let (_, kvs, _) = shoal
        .read(|store| store.kv_range(RUNS_PREFIX, None, 100_000))
        .await?;
    for kv in kvs {
        let Ok(mut run) = serde_json::from_slice::<ReportRun>(&kv.value) else {
            continue;
        };
        if run.status == RunStatus::Running && run.started_ms + stale_after < now {
            run.status = RunStatus::Interrupted;
            run.error = Some(format!(
                "node {} stopped before the run finished",
                run.node_id
            ));
            put_run(shoal, &run).await?;
        }
    }
    Ok(())
}
