//! Faults. A schedule is drawn from the seed before the run (so it is the
//! same for the same seed); targets that depend on the cluster's state ("the
//! leader") are resolved when the fault starts, from a per-fault seed.
//!
//! Every restart of a node that was the leader when it died is watched for a
//! few seconds: if it reports itself Leader again in the term it had before
//! (no election, which would have raised the term), that is recorded as a
//! `resumed-leadership` finding and the run is invalid.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cluster::{Cluster, NodeState, ENV_FSYNC_DELAY, ENV_LOSE_UNSYNCED};
use crate::history::Clock;

pub const KINDS: [&str; 9] = [
    "kill",
    "pause",
    "partition",
    "membership",
    "crash",
    "slow-fsync",
    "power-cut",
    "clock",
    "snapshot",
];

/// Kinds that need the nodes to run with `SHOAL_FAULT_LOSE_UNSYNCED=1`.
pub const NEEDS_LOSE_UNSYNCED: &str = "power-cut";
/// Kinds that need the nodes to run under libfaketime.
pub const NEEDS_FAKE_CLOCK: &str = "clock";
/// Kinds that need frequent snapshots (`--snapshot-every` lowered).
pub const NEEDS_SNAPSHOTS: &str = "snapshot";

/// The `SHOAL_FAULT_LOG_SYNC_DELAY_MS` a slow node gets by default.
pub const DEFAULT_FSYNC_DELAY_MS: u64 = 20;
/// A node restarted "at once" is started again within this long of its
/// kill (well under the 300 ms election timeout; the debug binary then
/// needs its own start-up time).
const WATCH_RESTART_FOR: Duration = Duration::from_secs(5);

/// The variants of each kind of fault.
pub fn variants(kind: &str) -> &'static [&'static str] {
    match kind {
        "kill" | "pause" => &["random", "leader", "majority"],
        "crash" => &[
            "all-leader-first",
            "fast-restart-leader",
            "fast-restart-node",
        ],
        "slow-fsync" => &["crash-all", "crash-leader"],
        "power-cut" => &["node", "leader", "majority", "all"],
        "clock" => &[
            "leader-forward",
            "leader-backward",
            "node-forward",
            "node-backward",
        ],
        "snapshot" => &["restart-follower", "restart-leader", "crash-all"],
        "partition" => &[
            "halves",
            "leader-minority",
            "bridge",
            "isolate-leader",
            "isolate-node",
            "majorities-ring",
        ],
        "membership" => &["remove-random", "remove-leader"],
        _ => &[],
    }
}

/// Parses `kill,pause` / `all` / `none`.
pub fn parse_kinds(spec: &str) -> Result<Vec<String>> {
    let mut kinds = Vec::new();
    for part in spec
        .split([',', '+'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match part {
            "all" => kinds.extend(KINDS.iter().map(|k| k.to_string())),
            "none" => {}
            k if KINDS.contains(&k) => kinds.push(k.to_string()),
            other => bail!(
                "unknown nemesis `{other}` (expected {}, all or none)",
                KINDS.join(", ")
            ),
        }
    }
    kinds.dedup();
    Ok(kinds)
}

/// One planned fault.
#[derive(Clone, Debug, Serialize)]
pub struct Planned {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub kind: String,
    pub variant: String,
    /// Seeds the fault's own random choices (which nodes).
    pub seed: u64,
}

/// Runs shorter than this get the "fast" schedule.
pub const FAST_BELOW_MS: u64 = 60_000;

/// Draws the schedule for a run of `time_limit_ms`: quiet, a fault, quiet
/// again, ... with the last fault over before the end. Normal pace: quiet
/// 2–5 s, faults 1.5–13 s (a kill sometimes outlasts the 10 s dead-node
/// grace). Runs under a minute get a fast pace (quiet 1–2.5 s, faults
/// 1.5–6 s) so that they still see several faults.
pub fn schedule(seed: u64, kinds: &[String], time_limit_ms: u64) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let mut plan = Vec::new();
    if kinds.is_empty() {
        return plan;
    }
    let fast = time_limit_ms < FAST_BELOW_MS;
    let quiet = if fast { 1000..2500 } else { 2000..5000 };
    let mut t = rng.random_range(1500..3000);
    loop {
        let kind = kinds[rng.random_range(0..kinds.len())].clone();
        let vs = variants(&kind);
        let variant = vs[rng.random_range(0..vs.len())].to_string();
        let duration_ms = match (kind.as_str(), fast) {
            // Sometimes longer than --dead-node-grace-secs (10 s): the
            // leader then removes the dead node and re-adds it on restart.
            ("kill", false) => rng.random_range(2000..13000),
            ("pause", false) => rng.random_range(1500..8000),
            ("partition", false) => rng.random_range(3000..10000),
            // Load after the crash (the restarts happen at its start).
            ("crash", false) => rng.random_range(3000..8000),
            // How long the leader runs with the slow fsync before the crash.
            ("slow-fsync", false) => rng.random_range(4000..12000),
            // Down time (under the 10 s dead-node grace).
            ("power-cut", false) => rng.random_range(1500..8000),
            ("clock", false) => rng.random_range(3000..10000),
            // How long the follower is down, so that it needs a snapshot.
            ("snapshot", false) => rng.random_range(3000..9000),
            (_, false) => rng.random_range(3000..6000),
            ("kill", true) => rng.random_range(1500..6000),
            ("pause", true) => rng.random_range(1500..4000),
            ("partition", true) => rng.random_range(2000..6000),
            ("crash", true) => rng.random_range(2000..5000),
            ("slow-fsync", true) => rng.random_range(3000..6000),
            ("power-cut", true) => rng.random_range(1500..4000),
            ("clock", true) => rng.random_range(2000..6000),
            ("snapshot", true) => rng.random_range(2500..6000),
            (_, true) => rng.random_range(2000..4000),
        };
        if t + duration_ms > time_limit_ms {
            break;
        }
        plan.push(Planned {
            at_ms: t,
            duration_ms,
            kind,
            variant,
            seed: rng.random(),
        });
        t += duration_ms + rng.random_range(quiet.clone());
    }
    plan
}

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

    /// The term of each of `nodes` that reports itself Leader now.
    async fn leader_terms(&self, nodes: &[usize]) -> BTreeMap<usize, u64> {
        let statuses =
            futures::future::join_all(nodes.iter().map(|i| self.cluster.status(*i))).await;
        nodes
            .iter()
            .zip(statuses)
            .filter_map(|(i, s)| {
                let s = s?;
                if s["state"].as_str() != Some("Leader") {
                    return None;
                }
                Some((*i, s["term"].as_u64()?))
            })
            .collect()
    }

    /// Restarts `nodes` now; those in `leaders` (Leader in that term when
    /// they died) are watched. Returns a note for the detail when one failed.
    fn restart_now(&self, nodes: &[usize], leaders: &BTreeMap<usize, u64>) -> String {
        let mut errors = Vec::new();
        for &i in nodes {
            match self.cluster.restart(i) {
                Ok(()) => {
                    if let Some(term) = leaders.get(&i) {
                        self.watch_restarted_leader(i, *term);
                    }
                }
                Err(e) => errors.push(format!("{i}: {e:#}")),
            }
        }
        if errors.is_empty() {
            String::new()
        } else {
            format!(" (restart failed: {})", errors.join("; "))
        }
    }

    /// A node that was Leader in `term` when it died must not be Leader in
    /// `term` again after its restart: only an election (a higher term) can
    /// make it leader.
    fn watch_restarted_leader(&self, i: usize, term: u64) {
        let (cluster, findings, clock) = (self.cluster.clone(), self.findings.clone(), self.clock);
        let handle = tokio::spawn(async move {
            let start = clock.now_ns();
            let deadline = Instant::now() + WATCH_RESTART_FOR;
            while Instant::now() < deadline {
                if let Some(s) = cluster.status(i).await {
                    let now_term = s["term"].as_u64().unwrap_or(0);
                    if s["state"].as_str() == Some("Leader") && now_term == term {
                        findings.lock().unwrap().push(Executed {
                            start_ns: start,
                            end_ns: Some(clock.now_ns()),
                            kind: RESUMED_LEADERSHIP.into(),
                            variant: String::new(),
                            targets: vec![i],
                            detail: format!(
                                "node {i} was Leader in term {term} when it was killed; {:.3} s after \
                                 its restart it reports itself Leader in term {term} again, without an \
                                 election (a restarted node must not resume leadership)",
                                (clock.now_ns() - start) as f64 / 1e9
                            ),
                        });
                        return;
                    }
                    if now_term > term {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        self.watches.lock().unwrap().push(handle);
    }

    /// `kill -9` of every node at the same moment; `first` is restarted at
    /// once, the others `gap_ms` later.
    async fn crash_all(&self, first: usize, gap_ms: u64) -> String {
        let c = &self.cluster;
        let all: Vec<usize> = (0..c.n).collect();
        let leaders = self.leader_terms(&all).await;
        let killed = c.kill_all_of(&all);
        let t = Instant::now();
        let mut note = self.restart_now(&[first], &leaders);
        let first_after = t.elapsed().as_millis();
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        let rest: Vec<usize> = all.iter().copied().filter(|i| *i != first).collect();
        note += &self.restart_now(&rest, &leaders);
        format!(
            "kill -9 of nodes {killed:?} at once (leaders then, by term: {}); node {first} restarted \
             {first_after} ms after the kill, the others {gap_ms} ms later{note}",
            describe_leaders(&leaders)
        )
    }

    /// `kill -9` of node `i` and its restart at once.
    async fn fast_restart(&self, i: usize) -> String {
        let leaders = self.leader_terms(&[i]).await;
        self.cluster.kill(i);
        let t = Instant::now();
        let note = self.restart_now(&[i], &leaders);
        let restarted = t.elapsed().as_millis();
        let answering = self.wait_answering(i, Duration::from_secs(5)).await;
        format!(
            "kill -9 of node {i}{}, restarted {restarted} ms later, answering {answering}{note}",
            leaders
                .get(&i)
                .map(|term| format!(" (Leader in term {term})"))
                .unwrap_or_default(),
        )
    }

    /// Waits until node `i` answers `/v1/status`; says after how long (from
    /// the call) and in which Raft state and term.
    async fn wait_answering(&self, i: usize, patience: Duration) -> String {
        let t = Instant::now();
        while t.elapsed() < patience {
            if let Some(s) = self.cluster.status(i).await {
                return format!(
                    "{} ms later as {} in term {}",
                    t.elapsed().as_millis(),
                    s["state"].as_str().unwrap_or("?"),
                    show(s["term"].as_u64())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        format!("not within {} ms", patience.as_millis())
    }

    /// crash: the whole cluster with the old leader first, or one node (the
    /// leader or a random one) restarted at once.
    async fn crash(&self, variant: &str, rng: &mut StdRng) -> Result<(Vec<usize>, String, Heal)> {
        let n = self.cluster.n;
        let (l, how) = self.leader_or_random(rng).await;
        match variant {
            "all-leader-first" => {
                let gap = rng.random_range(300..1500);
                let d = self.crash_all(l, gap).await;
                Ok((
                    (0..n).collect(),
                    format!("old leader first ({how} {l}): {d}"),
                    Heal::Nothing,
                ))
            }
            "fast-restart-leader" => {
                let d = self.fast_restart(l).await;
                Ok((vec![l], format!("{how}: {d}"), Heal::Nothing))
            }
            _ => {
                let (targets, how) = self.targets("random", rng).await;
                let mut detail = format!("{how}: ");
                for t in &targets {
                    detail += &self.fast_restart(*t).await;
                }
                Ok((targets, detail, Heal::Nothing))
            }
        }
    }

    /// slow-fsync: the leader gets `SHOAL_FAULT_LOG_SYNC_DELAY_MS`, so that
    /// it replicates entries its followers persist before it does. It needs
    /// a restart for that: the whole cluster is killed and the leader comes
    /// back first, which makes it the likely winner of the next election.
    /// The fault ends with another crash (of everyone, or of the leader),
    /// the old leader again restarted at once.
    async fn slow_fsync(
        &self,
        variant: &str,
        rng: &mut StdRng,
    ) -> Result<(Vec<usize>, String, Heal)> {
        let c = &self.cluster;
        let (l, how) = self.leader_or_random(rng).await;
        let (gap, end_gap) = (rng.random_range(300..1500), rng.random_range(300..1500));
        c.set_slow_fsync(l, true);
        let d = self.crash_all(l, gap).await;
        Ok((
            vec![l],
            format!(
                "node {l} ({how}) restarted with {ENV_FSYNC_DELAY}={}: {d}",
                c.fsync_delay_ms()
            ),
            Heal::SlowFsyncEnd {
                slow: l,
                crash_all: variant == "crash-all",
                gap_ms: end_gap,
            },
        ))
    }

    async fn end_slow_fsync(&self, slow: usize, crash_all: bool, gap_ms: u64) -> String {
        let c = &self.cluster;
        let leader = c.leader().await;
        let who = match leader {
            Some(l) if l == slow => format!("the slow node {l} led"),
            Some(l) => format!("node {l} led, not the slow node {slow}"),
            None => "no leader known".to_string(),
        };
        c.reset_slow_fsync(slow);
        let first = leader.unwrap_or(slow);
        let d = if crash_all {
            self.crash_all(first, gap_ms).await
        } else {
            let targets: Vec<usize> = BTreeSet::from([first, slow]).into_iter().collect();
            let leaders = self.leader_terms(&targets).await;
            c.kill_all_of(&targets);
            let note = self.restart_now(&targets, &leaders);
            format!(
                "kill -9 of {targets:?} (leaders then: {}), restarted at once{note}",
                describe_leaders(&leaders)
            )
        };
        format!("; at the end {who}; {d}")
    }

    /// power-cut: `kill -9` while the nodes keep unsynced writes in memory
    /// (`SHOAL_FAULT_LOSE_UNSYNCED=1`), so each killed node loses what a
    /// power cut would. After the whole cluster, the old leader comes back
    /// first.
    async fn power_cut(
        &self,
        variant: &str,
        rng: &mut StdRng,
    ) -> Result<(Vec<usize>, String, Heal)> {
        let c = &self.cluster;
        let (targets, how, first) = match variant {
            "all" => {
                let (l, how) = self.leader_or_random(rng).await;
                (
                    (0..c.n).collect(),
                    format!("all nodes, {how} {l} back first"),
                    Some(l),
                )
            }
            "node" => {
                let (t, how) = self.targets("random", rng).await;
                (t, how, None)
            }
            other => {
                let (t, how) = self.targets(other, rng).await;
                (t, how, None)
            }
        };
        let gap_ms = rng.random_range(300..1500);
        let leaders = self.leader_terms(&targets).await;
        let killed = c.kill_all_of(&targets);
        let (first, rest) = match first {
            Some(l) => (
                vec![l],
                killed.iter().copied().filter(|i| *i != l).collect(),
            ),
            None => (killed.clone(), Vec::new()),
        };
        let unsynced = if c.loses_unsynced() {
            format!("{ENV_LOSE_UNSYNCED}=1")
        } else {
            format!("WITHOUT {ENV_LOSE_UNSYNCED} (a plain kill -9)")
        };
        Ok((
            targets,
            format!(
                "power cut of {killed:?} ({how}; {unsynced}; leaders then: {})",
                describe_leaders(&leaders)
            ),
            Heal::Ordered {
                first,
                rest,
                gap_ms,
                leaders,
            },
        ))
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

    /// snapshot: a follower is killed long enough for the leader to snapshot
    /// and purge the log past it (the nodes snapshot every few entries in
    /// these runs), so that on restart it must install a snapshot; while it
    /// does, the follower, the leader or everyone is killed and restarted.
    async fn lag_for_snapshot(
        &self,
        variant: &str,
        rng: &mut StdRng,
    ) -> Result<(Vec<usize>, String, Heal)> {
        let c = &self.cluster;
        let leader = c.leader().await;
        let followers: Vec<usize> = (0..c.n)
            .filter(|i| Some(*i) != leader && c.state(*i) == NodeState::Running)
            .collect();
        if followers.is_empty() {
            bail!("no running follower");
        }
        let f = followers[rng.random_range(0..followers.len())];
        let (pause_ms, gap_ms) = (rng.random_range(0..400), rng.random_range(300..1500));
        let last_log_index = c.status(f).await.and_then(|s| s["last_log_index"].as_u64());
        c.kill(f);
        Ok((
            vec![f],
            format!(
                "kill -9 of follower {f} (last log index {}) until the leader ({}) has purged its log past it",
                show(last_log_index),
                leader.map(|l| l.to_string()).unwrap_or("unknown".into())
            ),
            Heal::Snapshot {
                follower: f,
                variant: variant.to_string(),
                pause_ms,
                gap_ms,
                last_log_index,
            },
        ))
    }

    async fn end_snapshot(
        &self,
        f: usize,
        variant: &str,
        pause_ms: u64,
        gap_ms: u64,
        last_log_index: Option<u64>,
    ) -> String {
        let c = &self.cluster;
        let leader = c.leader().await;
        let ls = match leader {
            Some(l) => c.status(l).await,
            None => None,
        };
        let first_log = ls.as_ref().and_then(|s| s["first_log_index"].as_u64());
        let snapshot = ls.as_ref().and_then(|s| s["snapshot_index"].as_u64());
        let needs = match (last_log_index, first_log) {
            (Some(mine), Some(first)) => (mine < first).to_string(),
            _ => "unknown".into(),
        };
        let note = self.restart_now(&[f], &BTreeMap::new());
        let answering = self.wait_answering(f, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let action = match (variant, leader) {
            ("restart-follower", _) => self.fast_restart(f).await,
            ("restart-leader", Some(l)) => self.fast_restart(l).await,
            ("restart-leader", None) => "no leader known to restart".into(),
            (_, l) => self.crash_all(l.unwrap_or(f), gap_ms).await,
        };
        format!(
            "; restarted {f}{note} (answering {answering}; the leader had snapshot index {}, \
             first log index {}: {f} needs a snapshot: {needs}); {pause_ms} ms later: {action}",
            show(snapshot),
            show(first_log)
        )
    }

    /// The partition for `variant`: who drops whose packets.
    async fn grudge(
        &self,
        variant: &str,
        rng: &mut StdRng,
    ) -> (Vec<BTreeSet<usize>>, String, Vec<usize>) {
        let n = self.cluster.n;
        let mut nodes: Vec<usize> = (0..n).collect();
        nodes.shuffle(rng);
        let split = |a: &[usize], b: &[usize]| {
            let mut g = vec![BTreeSet::new(); n];
            for &x in a {
                for &y in b {
                    g[x].insert(y);
                    g[y].insert(x);
                }
            }
            g
        };
        match variant {
            "halves" => {
                let (a, b) = nodes.split_at(n / 2);
                (split(a, b), format!("halves {a:?} | {b:?}"), nodes.clone())
            }
            "leader-minority" | "isolate-leader" => {
                let (l, how) = self.leader_or_random(rng).await;
                let minority_size = if variant == "isolate-leader" {
                    1
                } else {
                    (n - 1) / 2
                };
                let mut others: Vec<usize> = nodes.iter().copied().filter(|x| *x != l).collect();
                let mut minority = vec![l];
                minority.extend(others.drain(..minority_size - 1));
                (
                    split(&minority, &others),
                    format!("{minority:?} ({how} in the minority) | {others:?}"),
                    minority,
                )
            }
            "isolate-node" => {
                let (a, b) = nodes.split_at(1);
                (split(a, b), format!("{a:?} | {b:?}"), a.to_vec())
            }
            "bridge" => {
                // Two sides that only the bridge node connects.
                let bridge = nodes[0];
                let rest = &nodes[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                (
                    split(a, b),
                    format!("{a:?} | {b:?}, bridged by {bridge}"),
                    vec![bridge],
                )
            }
            _ => {
                // majorities-ring: each node hears its ring neighbours within
                // distance d — a majority — but no two majorities coincide.
                let d = (n / 2).div_ceil(2);
                let mut g = vec![BTreeSet::new(); n];
                for (p, &x) in nodes.iter().enumerate() {
                    for (q, &y) in nodes.iter().enumerate() {
                        let dist = (p as isize - q as isize).unsigned_abs();
                        if dist.min(n - dist) > d {
                            g[x].insert(y);
                        }
                    }
                }
                (
                    g,
                    format!("ring {nodes:?}, each node hears {d} neighbour(s) each side"),
                    nodes.clone(),
                )
            }
        }
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

fn show(x: Option<u64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

fn describe_leaders(leaders: &BTreeMap<usize, u64>) -> String {
    if leaders.is_empty() {
        return "none".into();
    }
    leaders
        .iter()
        .map(|(i, t)| format!("node {i} in term {t}"))
        .collect::<Vec<_>>()
        .join(", ")
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
