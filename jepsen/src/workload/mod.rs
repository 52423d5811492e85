//! Client workloads. Each worker is a loop of operations against random
//! nodes until told to stop; every operation goes into the history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use crate::client::{Api, Reply};
use crate::history::{Op, Outcome, Recorder};

pub mod lease;
pub mod register;
pub mod set;
pub mod watch;
pub mod workflow;

/// What every worker needs.
#[derive(Clone)]
pub struct Ctx {
    pub api: Api,
    pub rec: Recorder,
    /// Number of nodes.
    pub n: usize,
    /// Set when the workload phase ends.
    pub stop: Arc<AtomicBool>,
}

impl Ctx {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A short random pause between operations, so that a few workers do not
/// saturate a debug build on two cores.
pub async fn pace(rng: &mut StdRng) {
    let ms = rng.random_range(0..8);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Jepsen-style process ids: worker `w` of `workers` starts as process `w`;
/// after an indeterminate operation (which may still be in flight) it
/// continues as a new process.
pub struct Process {
    pub id: u64,
    step: u64,
}

impl Process {
    pub fn new(worker: usize, workers: usize, base: u64) -> Process {
        Process {
            id: base + worker as u64,
            step: workers as u64,
        }
    }

    pub fn after(&mut self, outcome: Outcome) {
        if outcome == Outcome::Info {
            self.id += self.step;
        }
    }
}

/// Builds the history entry of a finished operation.
#[allow(clippy::too_many_arguments)]
pub fn op_of<T>(
    workload: &str,
    process: u64,
    node: usize,
    f: &str,
    key: &str,
    value: Option<String>,
    expect: Option<String>,
    start_ns: u64,
    end_ns: u64,
    reply: &Reply<T>,
) -> Op {
    Op {
        index: 0,
        workload: workload.into(),
        process,
        node,
        f: f.into(),
        key: key.into(),
        value,
        expect,
        start_ns,
        end_ns,
        outcome: reply.outcome,
        revision: reply.revision,
        error: reply.error.clone(),
        lease: None,
    }
}
