//! Workflow expressions run in evaluator processes (`shoal evaluator`, see
//! `shoal_workflows::sandbox` for why): a pool of them, one piece of work
//! at a time each, at most two per core. A piece of work that uses more
//! than [`TIME_LIMIT`] of CPU (or waits past [`WALL_LIMIT`]) gets its
//! evaluator killed; one that allocates past
//! [`MEMORY_LIMIT_BYTES`] or overflows the stack kills its evaluator
//! itself. Either way the caller gets an [`EvaluatorError`] and the next
//! piece of work gets a fresh evaluator.

use std::collections::HashSet;
use std::process::{ExitCode, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use shoal_workflows::run::{Applied, Evaluation, EventFilter, Instance};
use shoal_workflows::sandbox::{self, Document, Request, Response, MAX_FRAME_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

/// Most CPU time one piece of work may use. CPU time, not time passed: a
/// node or evaluator that was stopped (SIGSTOP, a paused VM) or starved of
/// CPU must not fault an instance whose expressions are cheap.
pub const TIME_LIMIT: Duration = Duration::from_secs(2);
/// Longest one piece of work may take however little CPU it got (an
/// evaluator that makes no progress at all is replaced).
pub const WALL_LIMIT: Duration = Duration::from_secs(30);
/// Most memory (address space) an evaluator may map beyond what it maps
/// when it starts.
pub const MEMORY_LIMIT_BYTES: u64 = 1024 * 1024 * 1024;
/// Most bytes of an evaluator's dying words kept for the error.
const STDERR_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EvaluatorError {
    #[error("the evaluation used more than {} ms of CPU time (a runaway expression?)", TIME_LIMIT.as_millis())]
    TooLong,
    #[error("the evaluation ended its evaluator ({0}): an expression past the {limit} MiB memory limit or recursing without end?", limit = MEMORY_LIMIT_BYTES >> 20)]
    Died(String),
    #[error("the evaluation panicked: {0}")]
    Panicked(String),
    #[error("cannot run the evaluator: {0}")]
    Unavailable(String),
}

/// The node's own executable, for the processes it runs of itself
/// (evaluators, SQL workers, its restart after a full disk): the file the
/// node runs, even after an upgrade replaced or removed its path.
pub const SELF_EXE: &str = "/proc/self/exe";

/// The pool of evaluator processes.
pub struct Evaluator {
    slots: Semaphore,
    idle: Mutex<Vec<Worker>>,
}

struct Worker {
    /// The ids of the documents this evaluator was sent.
    documents: HashSet<u64>,
    child: Child,
    /// The clock of the evaluator's CPU time (none if it has none).
    cpu_clock: Option<libc::clockid_t>,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

impl Evaluator {
    /// A pool running this executable, two evaluators per core (at least
    /// four), started when first needed.
    pub fn new() -> Evaluator {
        // Twice the cores: a piece of work's round trip through the pipes
        // overlaps another's evaluation.
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
            * 2;
        Evaluator {
            slots: Semaphore::new(workers),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Evaluates an instance against its definition's document.
    pub async fn evaluate(
        &self,
        document: &Document,
        instance: &Instance,
        now_ms: u64,
        secrets: &Value,
    ) -> Result<Evaluation, EvaluatorError> {
        let request = Request::Evaluate {
            document_id: document.id,
            document: None,
            instance: instance.clone(),
            now_ms,
            secrets: secrets.clone(),
        };
        match self.run(request, Some(document)).await? {
            Response::Evaluated(evaluation) => Ok(evaluation),
            other => Err(unexpected(&other)),
        }
    }

    /// Applies an event to an instance: the instance as it is afterwards.
    pub async fn apply_event(
        &self,
        instance: Instance,
        event: &Value,
        now_ms: u64,
    ) -> Result<(Instance, Applied), EvaluatorError> {
        let request = Request::ApplyEvent {
            instance,
            event: event.clone(),
            now_ms,
        };
        match self.run(request, None).await? {
            Response::Applied { instance, applied } => Ok((*instance, applied)),
            other => Err(unexpected(&other)),
        }
    }

    /// Whether the event meets each filter.
    pub async fn matches(
        &self,
        filters: &[EventFilter],
        event: &Value,
    ) -> Result<Vec<bool>, EvaluatorError> {
        let request = Request::Matches {
            filters: filters.to_vec(),
            event: event.clone(),
        };
        match self.run(request, None).await? {
            Response::Matches(found) if found.len() == filters.len() => Ok(found),
            other => Err(unexpected(&other)),
        }
    }

    /// Every program on every input: the answers by input, then by program.
    pub async fn jq(
        &self,
        programs: Vec<String>,
        inputs: Vec<Value>,
    ) -> Result<Vec<Vec<Result<Value, String>>>, EvaluatorError> {
        let expected = inputs.len();
        match self.run(Request::Jq { programs, inputs }, None).await? {
            Response::Jq(answers) if answers.len() == expected => Ok(answers),
            other => Err(unexpected(&other)),
        }
    }

    /// Does one piece of work in an evaluator; an evaluation's document
    /// goes along when that evaluator has not had it (or has forgotten it).
    async fn run(
        &self,
        mut request: Request,
        document: Option<&Document>,
    ) -> Result<Response, EvaluatorError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| EvaluatorError::Unavailable("the pool is closed".to_string()))?;
        let mut worker = self.take_worker()?;
        for _ in 0..2 {
            if let (Some(document), Request::Evaluate { document: sent, .. }) =
                (document, &mut request)
            {
                if !worker.documents.contains(&document.id) {
                    *sent = Some(document.json.clone());
                }
            }
            let response = worker.run(&request).await?;
            match (response, document) {
                (Response::UnknownDocument, Some(document)) => {
                    worker.documents.remove(&document.id);
                }
                (Response::Panicked(message), _) => {
                    self.give_back(worker);
                    return Err(EvaluatorError::Panicked(message));
                }
                (response, _) => {
                    if let Some(document) = document {
                        worker.documents.insert(document.id);
                    }
                    self.give_back(worker);
                    return Ok(response);
                }
            }
        }
        Err(EvaluatorError::Unavailable(
            "the evaluator forgot the document it was just sent".to_string(),
        ))
    }

    /// An idle evaluator that is still alive, or a new one.
    fn take_worker(&self) -> Result<Worker, EvaluatorError> {
        loop {
            let idle = self.idle.lock().map(|mut idle| idle.pop()).ok().flatten();
            match idle {
                Some(mut worker) => {
                    if matches!(worker.child.try_wait(), Ok(None)) {
                        return Ok(worker);
                    }
                }
                None => return self.spawn(),
            }
        }
    }

    fn give_back(&self, worker: Worker) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(worker);
        }
    }

    fn spawn(&self) -> Result<Worker, EvaluatorError> {
        let mut child = Command::new(SELF_EXE)
            .arg("evaluator")
            .env("RUST_BACKTRACE", "0")
            // The allocator reserves address space 1 GiB at a time by
            // default, which would use up the limit at once.
            .env("MIMALLOC_ARENA_RESERVE", "64MiB")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| EvaluatorError::Unavailable(format!("cannot start {SELF_EXE}: {e}")))?;
        metrics::counter!("shoal_workflow_evaluators_started_total").increment(1);
        match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (Some(stdin), Some(stdout), Some(stderr)) => Ok(Worker {
                documents: HashSet::new(),
                cpu_clock: child.id().and_then(cpu_clock),
                child,
                stdin,
                stdout,
                stderr,
            }),
            _ => Err(EvaluatorError::Unavailable(
                "the evaluator's pipes are missing".to_string(),
            )),
        }
    }
}

impl Worker {
    /// One request and its answer, within the time limit. A worker that
    /// fails here is gone (killed or dead); the error says how.
    async fn run(&mut self, request: &Request) -> Result<Response, EvaluatorError> {
        let bytes = sandbox::frame(request)
            .map_err(|e| EvaluatorError::Unavailable(format!("cannot encode the work: {e}")))?;
        let clock = self.cpu_clock;
        let cpu_before = clock.and_then(cpu_time);
        let started = tokio::time::Instant::now();
        let answered = {
            let exchange = self.exchange(&bytes);
            tokio::pin!(exchange);
            loop {
                if let Ok(answered) = tokio::time::timeout(TIME_LIMIT, &mut exchange).await {
                    break Some(answered);
                }
                // Unknown CPU time counts as all of the time passed.
                let used = match (cpu_before, clock.and_then(cpu_time)) {
                    (Some(before), Some(now)) => now.saturating_sub(before),
                    _ => started.elapsed(),
                };
                if used >= TIME_LIMIT || started.elapsed() >= WALL_LIMIT {
                    break None;
                }
            }
        };
        match answered {
            Some(Ok(body)) => serde_json::from_slice(&body).map_err(|e| {
                EvaluatorError::Unavailable(format!("an answer that does not decode: {e}"))
            }),
            Some(Err(_)) => Err(EvaluatorError::Died(self.last_words().await)),
            None => {
                let _ = self.child.kill().await;
                metrics::counter!("shoal_workflow_evaluators_killed_total").increment(1);
                Err(EvaluatorError::TooLong)
            }
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        self.stdin.write_all(request).await?;
        self.stdin.flush().await?;
        let mut length = [0u8; 4];
        self.stdout.read_exact(&mut length).await?;
        let length = u32::from_le_bytes(length) as usize;
        if length > MAX_FRAME_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an answer of {length} bytes"),
            ));
        }
        let mut body = vec![0u8; length];
        self.stdout.read_exact(&mut body).await?;
        Ok(body)
    }

    /// How the evaluator ended: its exit status and the first line it
    /// wrote to stderr (Rust's "has overflowed its stack", "memory allocation
    /// of N bytes failed").
    async fn last_words(&mut self) -> String {
        let _ = self.child.start_kill();
        let status = match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => format!("status unknown: {e}"),
        };
        let mut words = String::new();
        let _ = (&mut self.stderr)
            .take(STDERR_BYTES)
            .read_to_string(&mut words)
            .await;
        match words.lines().find(|line| !line.trim().is_empty()) {
            Some(line) => format!("{status}: {}", line.trim()),
            None => status,
        }
    }
}

/// The clock of process `pid`'s CPU time (user and system, all threads).
/// Read through `clock_gettime`, one system call, where `/proc/<pid>/stat`
/// cost an open, a read and a parse before every piece of work.
fn cpu_clock(pid: u32) -> Option<libc::clockid_t> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t through the pointer.
    let status = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
    (status == 0).then_some(clock)
}

/// The CPU time on a process's CPU clock; none where it cannot be read
/// (the process is gone).
fn cpu_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer.
    let status = unsafe { libc::clock_gettime(clock, &mut now) };
    if status != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

fn unexpected(response: &Response) -> EvaluatorError {
    let kind = match response {
        Response::Evaluated(_) => "an evaluation",
        Response::Applied { .. } => "an applied event",
        Response::Matches(_) => "matches",
        Response::Jq(_) => "jq results",
        Response::UnknownDocument => "an unknown document",
        Response::Panicked(_) => "a panic",
    };
    EvaluatorError::Unavailable(format!(
        "the evaluator answered with {kind}, not what was asked"
    ))
}

/// The evaluator process's main: bounds its own memory, dies with the
/// node, then answers frames on stdin until it closes.
pub fn serve() -> ExitCode {
    die_with_parent();
    if let Err(e) = limit_memory(MEMORY_LIMIT_BYTES) {
        eprintln!("error: cannot limit the evaluator's memory: {e}");
        return ExitCode::FAILURE;
    }
    match sandbox::serve(std::io::stdin().lock(), std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes the kernel kill this process when the node that started it goes.
pub(crate) fn die_with_parent() {
    // SAFETY: prctl only sets the signal this process gets when its parent
    // goes.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
}

/// Lets this process's address space grow by at most `extra` bytes beyond
/// what it maps now (the executable, its libraries, the allocator's first
/// arena).
pub(crate) fn limit_memory(extra: u64) -> std::io::Result<()> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unreadable /proc/self/statm: {statm:?}")))?;
    // SAFETY: sysconf only reads a system setting.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let bytes = pages * page_size + extra;
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit only changes this process's own limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{cpu_clock, cpu_time};
    use std::time::Duration;

    /// This process's user and system time as the kernel accounts it in
    /// `/proc/self/stat` (in clock ticks), apart from the CPU clock.
    fn stat_cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .expect("the command's end")
            .1
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().expect("a number"))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks)
    }

    /// The CPU clock counts work done, and a process that is gone has none.
    /// Spinning lasts until the kernel's own account says 200 ms of CPU
    /// were used, however long that takes on a loaded machine.
    #[test]
    fn a_process_cpu_clock_counts_its_work() {
        let clock = cpu_clock(std::process::id()).expect("this process has a CPU clock");
        let before = cpu_time(clock).expect("readable");
        let accounted = stat_cpu_time();
        let mut spin = 0u64;
        while stat_cpu_time() < accounted + Duration::from_millis(200) {
            for _ in 0..100_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
        }
        let used = cpu_time(clock).expect("readable").saturating_sub(before);
        // The account moves in ticks: at most one short of the clock.
        assert!(
            used >= Duration::from_millis(150),
            "{used:?} on the CPU clock while the kernel accounted 200 ms"
        );

        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait for true");
        assert!(
            cpu_clock(pid).and_then(cpu_time).is_none(),
            "a reaped process has no clock"
        );
    }
}
