//! SQL over logs runs in a process of its own (`shoal sql-worker`), one per
//! query. Polars cannot be stopped once a query runs, and a query (a join,
//! a huge aggregation) can ask for more memory than the node has: in the
//! node's own process, a query past the request timeout would go on taking
//! a core, and one past the memory would take the node down. A worker's
//! address space is bounded ([`MEMORY_LIMIT_BYTES`]) and the node kills a
//! worker that runs past its time, so a runaway query costs the node
//! neither.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_datasets::instances::InstanceRow;
use shoal_datasets::{Format, QueryError, TableScan};
use shoal_search::Hit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::Semaphore;

/// Most memory (address space) a worker may map beyond what it maps when
/// it starts.
pub const MEMORY_LIMIT_BYTES: u64 = 2 << 30;
/// Most bytes of a worker's dying words kept for the error.
const STDERR_BYTES: u64 = 4096;

/// Workers running at once on a node; more queries wait for one to end.
static WORKERS: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Semaphore::new(cores.max(2))
});

/// What the node sends a worker.
#[derive(Serialize, Deserialize)]
enum Job {
    /// SQL over log records.
    Logs { sql: String, hits: Vec<Hit> },
    /// One node's part of a dataset query: its files' rows that pass the
    /// scan's filter.
    DatasetScan {
        scan: TableScan,
        files: Vec<PathBuf>,
    },
    /// A query over datasets (this node's files and the other nodes'
    /// parts, Arrow IPC) and built-in tables.
    DatasetQuery {
        sql: String,
        /// What runs over the nodes' partial groups instead of `sql`.
        merge: Option<String>,
        tables: Vec<DatasetTable>,
        builtins: Builtins,
        /// The result in each of these formats (a report keeps it as JSON
        /// and writes it to a file, from one run).
        formats: Vec<Format>,
    },
}

/// The rows of the built-in tables a query reads (none when it does not).
#[derive(Default, Serialize, Deserialize)]
pub struct Builtins {
    /// `logs`: the records the node fetched from every node.
    pub logs: Option<Vec<Hit>>,
    /// `workflow_instances`: from this node's replica.
    pub instances: Option<Vec<InstanceRow>>,
}

/// One dataset a query reads: the scan, this node's files, the other
/// nodes' parts.
#[derive(Serialize, Deserialize)]
pub struct DatasetTable {
    pub scan: TableScan,
    pub files: Vec<PathBuf>,
    pub parts: Vec<serde_bytes::ByteBuf>,
}

/// What a worker answers.
#[derive(Serialize, Deserialize)]
enum Answer {
    /// The result, in each format asked for.
    Done(Vec<Encoded>),
    /// Polars refused or failed the query: the reason.
    Refused(String),
    /// Past a limit on rows: the reason.
    TooManyRows(String),
}

/// A result in one format, as the worker sends it.
#[derive(Serialize, Deserialize)]
enum Encoded {
    /// The result table as JSON text (`{"columns": [...], "rows": [...]}`).
    Table(String),
    /// The result in a binary or CSV format.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A worker's result.
pub enum Output {
    Table(Value),
    Bytes(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum SqlWorkerError {
    /// The query itself is at fault (what Polars said).
    #[error("{0}")]
    Refused(String),
    #[error("the query ran for more than {} ms and was stopped", .0.as_millis())]
    TooLong(Duration),
    #[error(
        "the query needed more than {limit} MiB of memory and was stopped ({0})",
        limit = MEMORY_LIMIT_BYTES >> 20
    )]
    TooBig(String),
    #[error("{0}")]
    TooManyRows(String),
    #[error("cannot run the SQL worker: {0}")]
    Unavailable(String),
}

/// The time a query's worker gets: what is left of the request's time
/// (`request_timeout_ms` less `spent`), less a margin to answer in, and
/// never under 100 ms.
pub fn time_left(request_timeout_ms: u64, spent: Duration) -> Duration {
    Duration::from_millis(request_timeout_ms)
        .saturating_sub(spent)
        .saturating_sub(Duration::from_millis(250))
        .max(Duration::from_millis(100))
}

/// Run `sql` over `hits` in a worker, for at most `limit` (the wait for a
/// worker slot included).
pub async fn run(sql: &str, hits: Vec<Hit>, limit: Duration) -> Result<Value, SqlWorkerError> {
    let job = Job::Logs {
        sql: sql.to_string(),
        hits,
    };
    match run_job(job, limit).await?.into_iter().next() {
        Some(Output::Table(table)) => Ok(table),
        _ => Err(SqlWorkerError::Unavailable("a table was expected".into())),
    }
}

/// This node's part of a dataset query, as Arrow IPC.
pub async fn scan_dataset(
    scan: TableScan,
    files: Vec<PathBuf>,
    limit: Duration,
) -> Result<Vec<u8>, SqlWorkerError> {
    match run_job(Job::DatasetScan { scan, files }, limit)
        .await?
        .into_iter()
        .next()
    {
        Some(Output::Bytes(bytes)) => Ok(bytes),
        _ => Err(SqlWorkerError::Unavailable("bytes were expected".into())),
    }
}

/// A query over every node's part of the datasets it reads and the
/// built-in tables: its result in each of `formats`, in that order.
pub async fn query_datasets(
    sql: String,
    merge: Option<String>,
    tables: Vec<DatasetTable>,
    builtins: Builtins,
    formats: Vec<Format>,
    limit: Duration,
) -> Result<Vec<Output>, SqlWorkerError> {
    run_job(
        Job::DatasetQuery {
            sql,
            merge,
            tables,
            builtins,
            formats,
        },
        limit,
    )
    .await
}

async fn run_job(job: Job, limit: Duration) -> Result<Vec<Output>, SqlWorkerError> {
    let unavailable = |e: &dyn std::fmt::Display| SqlWorkerError::Unavailable(e.to_string());
    let deadline = tokio::time::Instant::now() + limit;
    let too_long = || {
        metrics::counter!("shoal_sql_stopped_total", "why" => "time").increment(1);
        SqlWorkerError::TooLong(limit)
    };
    let _slot = match tokio::time::timeout_at(deadline, WORKERS.acquire()).await {
        Err(_) => return Err(too_long()),
        Ok(slot) => slot.map_err(|e| unavailable(&e))?,
    };
    let job = tokio::task::spawn_blocking(move || shoal_codec::encode(&job))
        .await
        .map_err(|e| unavailable(&e))?
        .map_err(|e| unavailable(&e))?;
    let mut child = Command::new(super::evaluator::SELF_EXE)
        .arg("sql-worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| unavailable(&e))?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(unavailable(&"the worker's pipes are missing"));
    };
    // Read beside the answer, so a worker that writes much there never blocks.
    let dying_words = tokio::spawn(async move {
        let mut kept = Vec::new();
        let _ = (&mut stderr)
            .take(STDERR_BYTES)
            .read_to_end(&mut kept)
            .await;
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        String::from_utf8_lossy(&kept).into_owned()
    });
    // The worker reads the whole job before it writes a byte.
    let exchange = async {
        stdin.write_all(&job).await?;
        drop(stdin);
        let mut answer = Vec::new();
        stdout.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(too_long());
        }
        Ok(answer) => answer,
    };
    let status = child.wait().await.map_err(|e| unavailable(&e))?;
    let decoded = match answer.ok().filter(|_| status.success()) {
        Some(bytes) => tokio::task::spawn_blocking(move || {
            shoal_codec::decode::<Answer>(&bytes)
                .ok()
                .map(|answer| match answer {
                    Answer::Done(encoded) => encoded
                        .into_iter()
                        .map(|one| match one {
                            Encoded::Table(json) => serde_json::from_str::<Value>(&json)
                                .map(Output::Table)
                                .map_err(|e| SqlWorkerError::Unavailable(e.to_string())),
                            Encoded::Bytes(bytes) => Ok(Output::Bytes(bytes)),
                        })
                        .collect(),
                    Answer::Refused(reason) => Err(SqlWorkerError::Refused(reason)),
                    Answer::TooManyRows(reason) => Err(SqlWorkerError::TooManyRows(reason)),
                })
        })
        .await
        .map_err(|e| unavailable(&e))?,
        None => None,
    };
    if let Some(result) = decoded {
        return result;
    }
    let words = dying_words.await.unwrap_or_default();
    let first_line = words
        .lines()
        .find(|line| !line.trim().is_empty())
        .map_or_else(|| status.to_string(), |line| format!("{status}: {line}"));
    // Out of memory: Rust's allocation failure message (the address-space
    // limit), or SIGKILL (the kernel's OOM killer; a worker past its time
    // was handled above). Anything else is a fault of the worker.
    let out_of_memory = words.contains("memory allocation of")
        || std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL);
    if out_of_memory {
        metrics::counter!("shoal_sql_stopped_total", "why" => "memory").increment(1);
        Err(SqlWorkerError::TooBig(first_line))
    } else {
        Err(SqlWorkerError::Unavailable(format!(
            "the SQL worker failed: {first_line}"
        )))
    }
}

/// The worker process's main: bounds its memory, dies with the node, runs
/// one job from stdin and writes the answer to stdout.
pub fn serve() -> ExitCode {
    super::evaluator::die_with_parent();
    // If the machine runs out of memory, the kernel is to pick the worker,
    // not the node.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    if let Err(e) = super::evaluator::limit_memory(MEMORY_LIMIT_BYTES) {
        eprintln!("error: cannot limit the SQL worker's memory: {e}");
        return ExitCode::FAILURE;
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        eprintln!("error: reading the job: {e}");
        return ExitCode::FAILURE;
    }
    let job: Job = match shoal_codec::decode(&input) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    drop(input);
    let answer = work(job);
    let written = shoal_codec::encode(&answer)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&bytes)?;
            stdout.flush()
        });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing the answer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn work(job: Job) -> Answer {
    match job {
        Job::Logs { sql, hits } => match shoal_search::sql::execute(&sql, &hits) {
            Ok(table) => Answer::Done(vec![Encoded::Table(table.to_string())]),
            Err(e) => Answer::Refused(e.to_string()),
        },
        Job::DatasetScan { scan, files } => {
            let part = shoal_datasets::query::scan(&scan, &files)
                .and_then(|mut frame| Ok(shoal_datasets::query::to_ipc(&mut frame)?));
            match part {
                Ok(bytes) => Answer::Done(vec![Encoded::Bytes(bytes)]),
                Err(e) => refused(e),
            }
        }
        Job::DatasetQuery {
            sql,
            merge,
            tables,
            builtins,
            formats,
        } => match query(&sql, merge.as_deref(), tables, builtins, &formats) {
            Ok(answer) => answer,
            Err(e) => refused(e),
        },
    }
}

fn query(
    sql: &str,
    merge: Option<&str>,
    tables: Vec<DatasetTable>,
    builtins: Builtins,
    formats: &[Format],
) -> Result<Answer, QueryError> {
    let mut frames = Vec::new();
    if let Some(hits) = builtins.logs {
        frames.push((
            shoal_datasets::query::LOGS_TABLE,
            shoal_search::sql::frame(&hits)?,
        ));
    }
    if let Some(rows) = builtins.instances {
        frames.push((
            shoal_datasets::instances::TABLE,
            shoal_datasets::instances::frame(&rows)?,
        ));
    }
    let mut inputs = Vec::with_capacity(tables.len());
    for table in tables {
        let parts = table
            .parts
            .into_iter()
            .map(|part| shoal_datasets::query::from_ipc(part.into_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        inputs.push((table.scan, table.files, parts));
    }
    let mut frame = shoal_datasets::query::execute(sql, merge, inputs, frames)?;
    let mut encoded = Vec::with_capacity(formats.len());
    for format in formats {
        encoded.push(match format {
            Format::Json => match shoal_search::sql::to_json(&frame) {
                Ok(table) => Encoded::Table(table.to_string()),
                Err(e) => return Ok(Answer::Refused(e.to_string())),
            },
            _ => Encoded::Bytes(shoal_datasets::query::encode(&mut frame, *format)?),
        });
    }
    Ok(Answer::Done(encoded))
}

fn refused(error: QueryError) -> Answer {
    match error {
        QueryError::TooBig(reason) => Answer::TooManyRows(reason),
        other => Answer::Refused(other.to_string()),
    }
}
