//! The history: every client operation with its start and end time and its
//! outcome, appended to `history.jsonl` as it completes.
//!
//! Outcomes follow Jepsen's vocabulary:
//! - `ok`: the operation took effect (a read returned a value);
//! - `fail`: it definitely did not take effect (rejected with a 4xx, the
//!   connection was refused before anything was sent, a read that timed out);
//! - `info`: indeterminate — it may or may not have taken effect, now or at
//!   any later time (timeouts, 503/504, connection lost after sending). The
//!   checkers treat an `info` operation as concurrent with everything after
//!   its start.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    Info,
}

/// One completed operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, in completion order.
    pub index: u64,
    /// `register`, `set`, `watch`, `lease` or `workflow`.
    pub workload: String,
    /// Logical process (Jepsen-style): a worker takes a fresh process id after
    /// an indeterminate operation, since that one may still be in flight.
    pub process: u64,
    /// Index of the node the request went to.
    pub node: usize,
    /// `read`, `write`, `cas`, `add`; lease workload: `grant`, `put`,
    /// `keepalive`, `revoke`, `read`.
    pub f: String,
    pub key: String,
    /// read: the value read (null = key absent; only meaningful when ok);
    /// write/add/put: the value written; cas: the new value; grant: the TTL
    /// in seconds.
    pub value: Option<String>,
    /// cas: the expected old value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// Nanoseconds since the start of the run.
    pub start_ns: u64,
    pub end_ns: u64,
    #[serde(rename = "type")]
    pub outcome: Outcome,
    /// Revision of a successful write (or of the read), when the reply has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Why it failed or is indeterminate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Lease workload: the lease the operation is about (a grant's only
    /// when it succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

/// Monotonic time base of a run.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the start of the run.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

struct RecorderInner {
    ops: Vec<Op>,
    file: BufWriter<File>,
}

/// Collects completed operations and appends them to `history.jsonl`.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<RecorderInner>>,
    pub clock: Clock,
}

impl Recorder {
    pub fn create(path: &Path, clock: Clock) -> Result<Recorder> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Recorder {
            inner: Arc::new(Mutex::new(RecorderInner {
                ops: Vec::new(),
                file: BufWriter::new(file),
            })),
            clock,
        })
    }

    /// Records a completed operation (its `index` is assigned here).
    pub fn record(&self, mut op: Op) {
        let mut inner = self.inner.lock().unwrap();
        op.index = inner.ops.len() as u64;
        if let Ok(line) = serde_json::to_string(&op) {
            let _ = writeln!(inner.file, "{line}");
        }
        inner.ops.push(op);
    }

    pub fn flush(&self) {
        let _ = self.inner.lock().unwrap().file.flush();
    }

    /// A copy of everything recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().unwrap().ops.clone()
    }
}

/// Reads a `history.jsonl`.
pub fn load(path: &Path) -> Result<Vec<Op>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ops = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(
            serde_json::from_str(&line).with_context(|| format!("{}:{}", path.display(), n + 1))?,
        );
    }
    Ok(ops)
}

/// Writes operations as JSON lines.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    let mut file =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    for item in items {
        writeln!(file, "{}", serde_json::to_string(item)?)?;
    }
    file.flush()?;
    Ok(())
}

/// Seconds with millisecond precision, for humans.
pub fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}
