//! The faults that kill and restart nodes (crash, slow-fsync, power-cut,
//! snapshot) and the restarts they share with kill: who was leader in which
//! term, and the watch for a restarted leader that resumes leadership.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::Rng;

use super::{Executed, Heal, Nemesis, RESUMED_LEADERSHIP};
use crate::cluster::{NodeState, ENV_FSYNC_DELAY, ENV_LOSE_UNSYNCED};

/// A node restarted "at once" is started again within this long of its
/// kill (well under the 300 ms election timeout; the debug binary then
/// needs its own start-up time).
const WATCH_RESTART_FOR: Duration = Duration::from_secs(5);

impl Nemesis {
    /// The term of each of `nodes` that reports itself Leader now.
    pub(super) async fn leader_terms(&self, nodes: &[usize]) -> BTreeMap<usize, u64> {
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
    pub(super) fn restart_now(&self, nodes: &[usize], leaders: &BTreeMap<usize, u64>) -> String {
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
    pub(super) async fn crash(
        &self,
        variant: &str,
        rng: &mut StdRng,
    ) -> Result<(Vec<usize>, String, Heal)> {
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
    pub(super) async fn slow_fsync(
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

    pub(super) async fn end_slow_fsync(&self, slow: usize, crash_all: bool, gap_ms: u64) -> String {
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
    pub(super) async fn power_cut(
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

    /// snapshot: a follower is killed long enough for the leader to snapshot
    /// and purge the log past it (the nodes snapshot every few entries in
    /// these runs), so that on restart it must install a snapshot; while it
    /// does, the follower, the leader or everyone is killed and restarted.
    pub(super) async fn lag_for_snapshot(
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

    pub(super) async fn end_snapshot(
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
