//! Faults. A schedule is drawn from the seed before the run (so it is the
//! same for the same seed); targets that depend on the cluster's state ("the
//! leader") are resolved when the fault starts, from a per-fault seed.
//!
//! Every restart of a node that was the leader when it died is watched for a
//! few seconds: if it reports itself Leader again in the term it had before
//! (no election, which would have raised the term), that is recorded as a
//! `resumed-leadership` finding and the run is invalid.
//!
//! The schedule is drawn in `schedule.rs`; the faults that kill and restart
//! nodes (and the restart watch) are in `crash.rs`, the partitions in
//! `partition.rs`; kill, pause, membership and clock are injected here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cluster::{Cluster, NodeState};
use crate::history::Clock;

mod crash;
mod partition;
mod schedule;

pub use schedule::{parse_kinds, schedule, Planned, KINDS};

/// Kinds that need the nodes to run with `SHOAL_FAULT_LOSE_UNSYNCED=1`.
pub const NEEDS_LOSE_UNSYNCED: &str = "power-cut";
/// Kinds that need the nodes to run under libfaketime.
pub const NEEDS_FAKE_CLOCK: &str = "clock";
/// Kinds that need frequent snapshots (`--snapshot-every` lowered).
pub const NEEDS_SNAPSHOTS: &str = "snapshot";

/// The `SHOAL_FAULT_LOG_SYNC_DELAY_MS` a slow node gets by default.
pub const DEFAULT_FSYNC_DELAY_MS: u64 = 20;

/// One executed fault (or heal), as written to `nemesis.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Executed {
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub kind: String,
    pub variant: String,
    /// Node indexes affected (for partitions: the grudge as "i: j k").
    pub targets: Vec<usize>,
    pub detail: String,
}

/// The `kind` of a finding that makes the run invalid: a restarted leader
/// that came back as Leader in its old term.
pub const RESUMED_LEADERSHIP: &str = "resumed-leadership";

pub struct Nemesis {
    pub cluster: Arc<Cluster>,
    pub clock: Clock,
    log: Mutex<BufWriter<File>>,
    pub events: Mutex<Vec<Executed>>,
    /// What the background restart watches found, recorded at the next tick.
    findings: Arc<Mutex<Vec<Executed>>>,
    watches: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Nemesis {
    pub fn new(cluster: Arc<Cluster>, clock: Clock, path: &Path) -> Result<Nemesis> {
        Ok(Nemesis {
            cluster,
            clock,
            log: Mutex::new(BufWriter::new(File::create(path)?)),
            events: Mutex::new(Vec::new()),
            findings: Arc::new(Mutex::new(Vec::new())),
            watches: Mutex::new(Vec::new()),
        })
    }

    fn drain_findings(&self) {
        let found = std::mem::take(&mut *self.findings.lock().unwrap());
        for e in found {
            self.record(e);
        }
    }

    /// Waits for the restart watches still running and records what they
    /// found (end of the run).
    pub async fn finish(&self) {
        let handles = std::mem::take(&mut *self.watches.lock().unwrap());
        for h in handles {
            let _ = h.await;
        }
        self.drain_findings();
    }

    fn record(&self, e: Executed) {
        let mut log = self.log.lock().unwrap();
        if let Ok(line) = serde_json::to_string(&e) {
            let _ = writeln!(log, "{line}");
            let _ = log.flush();
        }
        let end = e
            .end_ns
            .map(|t| format!("–{}", crate::history::secs(t)))
            .unwrap_or_default();
        println!(
            "    [{}{end}] {} {} {:?} {}",
            crate::history::secs(e.start_ns),
            e.kind,
            e.variant,
            e.targets,
            e.detail
        );
        self.events.lock().unwrap().push(e);
    }

    /// Runs `plan` until it is done or `stop` is set; heals each fault at its
    /// end. Also watches for nodes that exit on their own and restarts them.
    pub async fn run(&self, plan: &[Planned], stop: &AtomicBool) {
        for p in plan {
            if !self.sleep_until(p.at_ms * 1_000_000, stop).await {
                return;
            }
            let start = self.clock.now_ns();
            let mut rng = StdRng::seed_from_u64(p.seed);
            let outcome = self.inject(p, &mut rng).await;
            let (targets, detail, heal) = match outcome {
                Ok(x) => x,
                Err(e) => (
                    Vec::new(),
                    format!("could not inject: {e:#}"),
                    Heal::Nothing,
                ),
            };
            let healed_early = !self
                .sleep_until(start + p.duration_ms * 1_000_000, stop)
                .await;
            let heal_detail = self.heal(&heal).await;
            self.record(Executed {
                start_ns: start,
                end_ns: Some(self.clock.now_ns()),
                kind: p.kind.clone(),
                variant: p.variant.clone(),
                targets,
                detail: format!(
                    "{detail}{}{heal_detail}",
                    if healed_early {
                        " (healed early: end of run)"
                    } else {
                        ""
                    }
                ),
            });
            if healed_early {
                return;
            }
        }
        self.sleep_until(u64::MAX, stop).await;
    }

    /// Sleeps until `t_ns` on the run clock, checking for crashed nodes.
    /// Returns false if `stop` was set first.
    async fn sleep_until(&self, t_ns: u64, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            self.drain_findings();
            for (i, status) in self.cluster.reap_unexpected_exits() {
                let restarted = self.cluster.restart(i);
                self.record(Executed {
                    start_ns: self.clock.now_ns(),
                    end_ns: None,
                    kind: "unexpected-exit".into(),
                    variant: String::new(),
                    targets: vec![i],
                    detail: format!(
                        "node {i} exited on its own ({status}); restarted: {restarted:?}"
                    ),
                });
            }
            let now = self.clock.now_ns();
            if now >= t_ns {
                return true;
            }
            tokio::time::sleep(Duration::from_nanos((t_ns - now).min(200_000_000))).await;
        }
    }

    async fn leader_or_random(&self, rng: &mut StdRng) -> (usize, &'static str) {
        match self.cluster.leader().await {
            Some(l) => (l, "leader"),
            None => (
                rng.random_range(0..self.cluster.n),
                "leader unknown, random node",
            ),
        }
    }

    /// Picks the nodes a kill/pause hits.
    async fn targets(&self, variant: &str, rng: &mut StdRng) -> (Vec<usize>, String) {
        let n = self.cluster.n;
        let running: Vec<usize> = (0..n)
            .filter(|i| self.cluster.state(*i) == NodeState::Running)
            .collect();
        match variant {
            "leader" => {
                let (l, how) = self.leader_or_random(rng).await;
                (vec![l], how.to_string())
            }
            "majority" => {
                let (l, how) = self.leader_or_random(rng).await;
                let mut others: Vec<usize> = (0..n).filter(|i| *i != l).collect();
                others.shuffle(rng);
                let mut t = vec![l];
                t.extend(others.into_iter().take(n / 2));
                t.sort();
                (t, format!("majority incl. {how}"))
            }
            _ => {
                let pool = if running.is_empty() {
                    (0..n).collect()
                } else {
                    running
                };
                (
                    vec![pool[rng.random_range(0..pool.len())]],
                    "random node".into(),
                )
            }
        }
    }

    async fn inject(&self, p: &Planned, rng: &mut StdRng) -> Result<(Vec<usize>, String, Heal)> {
        let c = &self.cluster;
        match p.kind.as_str() {
            "kill" => {
                let (targets, how) = self.targets(&p.variant, rng).await;
                let leaders = self.leader_terms(&targets).await;
                let killed = c.kill_all_of(&targets);
                Ok((
                    targets,
                    format!("kill -9 ({how})"),
                    Heal::Ordered {
                        first: killed,
                        rest: Vec::new(),
                        gap_ms: 0,
                        leaders,
                    },
                ))
            }
            "pause" => {
                let (targets, how) = self.targets(&p.variant, rng).await;
                let paused: Vec<usize> = targets.iter().copied().filter(|i| c.pause(*i)).collect();
                Ok((targets, format!("SIGSTOP ({how})"), Heal::Resume(paused)))
            }
            "partition" => {
                let (grudge, desc, involved) = self.grudge(&p.variant, rng).await;
                c.net.partition(&grudge)?;
                Ok((involved, desc, Heal::Network))
            }
            "membership" => {
                let (target, how) = if p.variant == "remove-leader" {
                    self.leader_or_random(rng).await
                } else {
                    (rng.random_range(0..c.n), "random node")
                };
                let Some(id) = c.node_ids()[target] else {
                    bail!("node {target}'s id is unknown")
                };
                // Ask another node (asking the target itself would make it shut down).
                let others: Vec<usize> = (0..c.n)
                    .filter(|i| *i != target && c.state(*i) == NodeState::Running)
                    .collect();
                if others.is_empty() {
                    bail!("no other running node to ask");
                }
                let via = others[rng.random_range(0..others.len())];
                let detail = match c
                    .post_json(via, "/v1/cluster/leave", &json!({"node_id": id}))
                    .await
                {
                    Ok((status, body)) => format!(
                        "leave node {target} (id {id}, {how}) via node {via}: {status} {body}"
                    ),
                    Err(e) => format!("leave node {target} (id {id}, {how}) via node {via}: {e}"),
                };
                Ok((vec![target], detail, Heal::ReportMembership))
            }
            "crash" => self.crash(&p.variant, rng).await,
            "slow-fsync" => self.slow_fsync(&p.variant, rng).await,
            "power-cut" => self.power_cut(&p.variant, rng).await,
            "clock" => self.clock_jump(&p.variant, rng).await,
            "snapshot" => self.lag_for_snapshot(&p.variant, rng).await,
            other => bail!("unknown fault kind {other}"),
        }
    }

    /// clock: one node's wall clock jumps minutes ahead or back (libfaketime,
    /// without a restart) until the fault ends.
    async fn clock_jump(
        &self,
        variant: &str,
        rng: &mut StdRng,
    ) -> Result<(Vec<usize>, String, Heal)> {
        let c = &self.cluster;
        if !c.has_fake_clock() {
            bail!("the nodes do not run under libfaketime");
        }
        let (target, how) = if variant.starts_with("leader") {
            let (l, how) = self.leader_or_random(rng).await;
            (l, how.to_string())
        } else {
            let (t, how) = self.targets("random", rng).await;
            (t[0], how)
        };
        let secs: i64 = rng.random_range(120..600);
        let offset = if variant.ends_with("backward") {
            -secs
        } else {
            secs
        };
        c.set_clock_offset(target, offset)?;
        Ok((
            vec![target],
            format!("node {target}'s wall clock jumps {offset:+} s ({how})"),
            Heal::Clock(target),
        ))
    }

    async fn heal(&self, heal: &Heal) -> String {
        let c = &self.cluster;
        match heal {
            Heal::Nothing => String::new(),
            Heal::Ordered {
                first,
                rest,
                gap_ms,
                leaders,
            } => {
                let mut note = self.restart_now(first, leaders);
                if rest.is_empty() {
                    return format!("; restarted{note}");
                }
                tokio::time::sleep(Duration::from_millis(*gap_ms)).await;
                note += &self.restart_now(rest, leaders);
                format!("; restarted {first:?}, then {rest:?} {gap_ms} ms later{note}")
            }
            Heal::SlowFsyncEnd {
                slow,
                crash_all,
                gap_ms,
            } => self.end_slow_fsync(*slow, *crash_all, *gap_ms).await,
            Heal::Clock(i) => match c.set_clock_offset(*i, 0) {
                Ok(()) => "; clock set right".into(),
                Err(e) => format!("; setting the clock right failed: {e:#}"),
            },
            Heal::Snapshot {
                follower,
                variant,
                pause_ms,
                gap_ms,
                last_log_index,
            } => {
                self.end_snapshot(*follower, variant, *pause_ms, *gap_ms, *last_log_index)
                    .await
            }
            Heal::Resume(nodes) => {
                for i in nodes {
                    c.resume(*i);
                }
                "; resumed".into()
            }
            Heal::Network => match c.net.heal() {
                Ok(()) => "; healed".into(),
                Err(e) => format!("; heal failed: {e}"),
            },
            Heal::ReportMembership => match c.membership().await {
                Some(roles) => format!("; membership now {roles:?}"),
                None => "; membership unknown".into(),
            },
        }
    }

    /// Ends every fault: network healed, paused nodes resumed, dead nodes restarted.
    pub async fn heal_all(&self) {
        let c = &self.cluster;
        let start = self.clock.now_ns();
        let mut detail = Vec::new();
        if let Err(e) = c.net.heal() {
            detail.push(format!("network heal failed: {e}"));
        }
        if c.has_fake_clock() {
            for (i, offset) in c.clock_offsets().into_iter().enumerate() {
                if offset != 0 {
                    match c.set_clock_offset(i, 0) {
                        Ok(()) => detail.push(format!("clock of {i} set right")),
                        Err(e) => detail.push(format!("setting the clock of {i} failed: {e:#}")),
                    }
                }
            }
        }
        for i in 0..c.n {
            match c.state(i) {
                NodeState::Paused => {
                    c.resume(i);
                    detail.push(format!("resumed {i}"));
                }
                NodeState::Killed => match c.restart(i) {
                    Ok(()) => detail.push(format!("restarted {i}")),
                    Err(e) => detail.push(format!("restart of {i} failed: {e}")),
                },
                NodeState::Running => {}
            }
        }
        self.record(Executed {
            start_ns: start,
            end_ns: Some(self.clock.now_ns()),
            kind: "heal-all".into(),
            variant: String::new(),
            targets: Vec::new(),
            detail: if detail.is_empty() {
                "network healed".into()
            } else {
                detail.join(", ")
            },
        });
    }
}

enum Heal {
    Nothing,
    Resume(Vec<usize>),
    Network,
    ReportMembership,
    /// Restart `first` at once and `rest` `gap_ms` later; watch the nodes
    /// in `leaders` (Leader in that term when they died).
    Ordered {
        first: Vec<usize>,
        rest: Vec<usize>,
        gap_ms: u64,
        leaders: BTreeMap<usize, u64>,
    },
    /// The end of a slow-fsync period: a crash of everyone or of the leader.
    SlowFsyncEnd {
        slow: usize,
        crash_all: bool,
        gap_ms: u64,
    },
    /// Set the node's clock right again.
    Clock(usize),
    /// Restart the lagging follower, then crash something while it
    /// installs the snapshot.
    Snapshot {
        follower: usize,
        variant: String,
        pause_ms: u64,
        gap_ms: u64,
        last_log_index: Option<u64>,
    },
}
