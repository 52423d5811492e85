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
use shoal_datasets::ipc::{decode_parts, part_to_ipc};
use shoal_datasets::run::{self as dataset_run, Local};
use shoal_datasets::{Format, QueryError, TableScan};
use shoal_search::Hit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, Semaphore};

/// Most memory (address space) a worker may map beyond what it maps when
/// it starts.
pub const MEMORY_LIMIT_BYTES: u64 = 2 << 30;
/// Most bytes of a worker's dying words kept for the error.
const STDERR_BYTES: u64 = 4096;

/// Workers running queries at once on a node; more queries wait for one
/// to end.
static QUERY_WORKERS: LazyLock<Semaphore> = LazyLock::new(worker_slots);
/// Workers scanning this node's files for other nodes' queries at once.
/// Apart from [`QUERY_WORKERS`]: a query's worker holds its slot while it
/// waits for the other nodes' scans, so scans taking the same slots could
/// wait on each other across nodes until the queries time out.
static SCAN_WORKERS: LazyLock<Semaphore> = LazyLock::new(worker_slots);

fn worker_slots() -> Semaphore {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Semaphore::new(cores.max(2))
}

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
    /// parts, Arrow IPC) and built-in tables. With `parts_follow`, a
    /// second frame brings the other nodes' parts ([`Parts`]): the worker
    /// scans this node's files while they are on their way.
    DatasetQuery {
        sql: String,
        /// What runs over the nodes' partial groups instead of `sql`.
        merge: Option<String>,
        tables: Vec<DatasetTable>,
        builtins: Builtins,
        /// The result in each of these formats (a report keeps it as JSON
        /// and writes it to a file, from one run).
        formats: Vec<Format>,
        parts_follow: bool,
    },
}

/// The other nodes' parts of each table of a [`Job::DatasetQuery`], in
/// the order of its tables: Arrow IPC, one per node that answered.
pub type Parts = Vec<Vec<serde_bytes::ByteBuf>>;

/// The rows of the built-in tables a query reads (none when it does not).
#[derive(Default, Serialize, Deserialize)]
pub struct Builtins {
    /// `logs`: the records the node fetched from every node.
    pub logs: Option<Vec<Hit>>,
    /// `workflow_instances`: from this node's replica.
    pub instances: Option<Vec<InstanceRow>>,
}

/// One dataset a query reads: the scan and this node's files.
#[derive(Serialize, Deserialize)]
pub struct DatasetTable {
    pub scan: TableScan,
    pub files: Vec<PathBuf>,
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
    #[error(
        "the query ran for more than {} ms (what was left of --request-timeout-ms) and was stopped; narrow it",
        .0.as_millis()
    )]
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
    match run_job(job, None, limit).await?.into_iter().next() {
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
    match run_job(Job::DatasetScan { scan, files }, None, limit)
        .await?
        .into_iter()
        .next()
    {
        Some(Output::Bytes(bytes)) => Ok(bytes),
        _ => Err(SqlWorkerError::Unavailable("bytes were expected".into())),
    }
}

/// A query over every node's part of the datasets it reads and the
/// built-in tables: its result in each of `formats`, in that order. The
/// other nodes' parts come from `parts` once they are all there (none
/// when the query runs on this node alone); the worker reads this node's
/// files meanwhile. If `parts` is dropped, the query fails.
pub async fn query_datasets(
    sql: String,
    merge: Option<String>,
    tables: Vec<DatasetTable>,
    builtins: Builtins,
    formats: Vec<Format>,
    parts: Option<oneshot::Receiver<Parts>>,
    limit: Duration,
) -> Result<Vec<Output>, SqlWorkerError> {
    let job = Job::DatasetQuery {
        sql,
        merge,
        tables,
        builtins,
        formats,
        parts_follow: parts.is_some(),
    };
    run_job(job, parts, limit).await
}

/// Kill a worker and reap it (its answer is no longer wanted).
async fn stop(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Run `job` in a new worker; `parts`, when given, is the second frame
/// the job says follows it.
async fn run_job(
    job: Job,
    parts: Option<oneshot::Receiver<Parts>>,
    limit: Duration,
) -> Result<Vec<Output>, SqlWorkerError> {
    let unavailable = |e: &dyn std::fmt::Display| SqlWorkerError::Unavailable(e.to_string());
    let deadline = tokio::time::Instant::now() + limit;
    let too_long = || {
        metrics::counter!("shoal_sql_stopped_total", "why" => "time").increment(1);
        SqlWorkerError::TooLong(limit)
    };
    let slots = match job {
        Job::DatasetScan { .. } => &SCAN_WORKERS,
        _ => &QUERY_WORKERS,
    };
    let _slot = match tokio::time::timeout_at(deadline, slots.acquire()).await {
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
    // The worker reads the whole job before it writes a byte, unless it
    // fails before the parts come (then writing them fails and its answer
    // says why). `None`: the parts will not come.
    let exchange = async {
        write_frame(&mut stdin, &job).await?;
        if let Some(parts) = parts {
            let Ok(parts) = parts.await else {
                return Ok(None);
            };
            let parts = tokio::task::spawn_blocking(move || shoal_codec::encode(&parts))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            let _ = write_frame(&mut stdin, &parts).await;
        }
        drop(stdin);
        let mut answer = Vec::new();
        stdout.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(Some(answer))
    };
    let answer = match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => {
            stop(&mut child).await;
            return Err(too_long());
        }
        Ok(Ok(None)) => {
            stop(&mut child).await;
            return Err(unavailable(
                &"the query stopped before the other nodes' parts came",
            ));
        }
        Ok(answer) => answer.map(Option::unwrap_or_default),
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
    let job: Job = match read_frame(&mut std::io::stdin().lock()) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: reading the job: {e}");
            return ExitCode::FAILURE;
        }
    };
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
            let part = dataset_run::scan(&scan, &files)
                .and_then(|mut frames| part_to_ipc(&mut frames, &scan));
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
            parts_follow,
        } => match query(
            &sql,
            merge.as_deref(),
            tables,
            builtins,
            &formats,
            parts_follow,
        ) {
            Ok(answer) => answer,
            Err(e) => refused(e),
        },
    }
}

/// A frame between the node and a worker: its length (8 bytes, little
/// endian), then its encoding.
async fn write_frame(
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
) -> std::io::Result<()> {
    to.write_all(&(bytes.len() as u64).to_le_bytes()).await?;
    to.write_all(bytes).await?;
    to.flush().await
}

fn read_frame<T: serde::de::DeserializeOwned>(from: &mut impl Read) -> std::io::Result<T> {
    let mut length = [0u8; 8];
    from.read_exact(&mut length)?;
    let length = usize::try_from(u64::from_le_bytes(length)).map_err(std::io::Error::other)?;
    let mut bytes = vec![0u8; length];
    from.read_exact(&mut bytes)?;
    shoal_codec::decode(&bytes).map_err(std::io::Error::other)
}

fn query(
    sql: &str,
    merge: Option<&str>,
    tables: Vec<DatasetTable>,
    builtins: Builtins,
    formats: &[Format],
    parts_follow: bool,
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
    let inputs = if parts_follow {
        // This node's files are read while the other nodes' parts come.
        let (scanned, parts) = std::thread::scope(|scope| {
            let scanning = scope.spawn(|| {
                tables
                    .iter()
                    .map(|table| dataset_run::scan(&table.scan, &table.files))
                    .collect::<Result<Vec<_>, _>>()
            });
            let parts = read_frame::<Parts>(&mut std::io::stdin().lock())
                .map_err(|e| QueryError::Invalid(format!("reading the other nodes' parts: {e}")))
                .and_then(|parts| {
                    decode_parts(
                        parts
                            .into_iter()
                            .map(|table| table.into_iter().map(|p| p.into_vec()).collect())
                            .collect(),
                    )
                });
            let scanned = scanning.join().unwrap_or_else(|_| {
                Err(QueryError::Invalid(
                    "scanning this node's files failed".into(),
                ))
            });
            (scanned, parts)
        });
        let (scanned, mut parts) = (scanned?, parts?);
        parts.resize_with(tables.len(), Vec::new);
        tables
            .into_iter()
            .zip(scanned)
            .zip(parts)
            .map(|((table, frame), parts)| (table.scan, Local::Scanned(frame), parts))
            .collect()
    } else {
        tables
            .into_iter()
            .map(|table| (table.scan, Local::Files(table.files), Vec::new()))
            .collect()
    };
    let mut frame = dataset_run::execute(sql, merge, inputs, frames)?;
    let mut encoded = Vec::with_capacity(formats.len());
    for format in formats {
        encoded.push(match format {
            Format::Json => match shoal_search::sql::to_json(&frame) {
                Ok(table) => Encoded::Table(table.to_string()),
                Err(e) => return Ok(Answer::Refused(e.to_string())),
            },
            _ => Encoded::Bytes(shoal_datasets::ipc::encode(&mut frame, *format)?),
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
