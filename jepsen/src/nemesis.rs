//! Faults. A schedule is drawn from the seed before the run (so it is the
//! same for the same seed); targets that depend on the cluster's state ("the
//! leader") are resolved when the fault starts, from a per-fault seed.

use std::collections::BTreeSet;
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

pub const KINDS: [&str; 4] = ["kill", "pause", "partition", "membership"];

/// The variants of each kind of fault.
pub fn variants(kind: &str) -> &'static [&'static str] {
    match kind {
        "kill" | "pause" => &["random", "leader", "majority"],
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
            other => bail!("unknown nemesis `{other}` (expected kill, pause, partition, membership, all or none)"),
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
            (_, false) => rng.random_range(3000..6000),
            ("kill", true) => rng.random_range(1500..6000),
            ("pause", true) => rng.random_range(1500..4000),
            ("partition", true) => rng.random_range(2000..6000),
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

pub struct Nemesis {
    pub cluster: Arc<Cluster>,
    pub clock: Clock,
    log: Mutex<BufWriter<File>>,
    pub events: Mutex<Vec<Executed>>,
}

impl Nemesis {
    pub fn new(cluster: Arc<Cluster>, clock: Clock, path: &Path) -> Result<Nemesis> {
        Ok(Nemesis {
            cluster,
            clock,
            log: Mutex::new(BufWriter::new(File::create(path)?)),
            events: Mutex::new(Vec::new()),
        })
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
                let killed: Vec<usize> = targets.iter().copied().filter(|i| c.kill(*i)).collect();
                Ok((targets, format!("kill -9 ({how})"), Heal::Restart(killed)))
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
            other => bail!("unknown fault kind {other}"),
        }
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
            Heal::Restart(nodes) => {
                let errors: Vec<String> = nodes
                    .iter()
                    .filter_map(|i| c.restart(*i).err().map(|e| format!("{i}: {e}")))
                    .collect();
                if errors.is_empty() {
                    "; restarted".into()
                } else {
                    format!("; restart failed: {errors:?}")
                }
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
    Restart(Vec<usize>),
    Resume(Vec<usize>),
    Network,
    ReportMembership,
}
