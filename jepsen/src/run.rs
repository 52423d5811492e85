//! One run: network and cluster up, clients and nemesis for the time limit,
//! heal, settle, final reads, tear down, check, write the verdict. The
//! checks themselves and the failure report are in `verdict.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::checker::{digest, set, watch};
use crate::client::Api;
use crate::cluster::{self, Cluster, NodeSettings};
use crate::history::{Clock, Op, Outcome, Recorder};
use crate::nemesis::{self, Executed, Nemesis};
use crate::netns::{self, Net};
use crate::output::{self, write_json, Row};
use crate::verdict::{
    digest_line, evaluate, failure_report, failure_summary, resumed_leadership, scan_panics, Inputs,
};
use crate::workload::{self, Ctx};

/// `--snapshot-every` when the run has the snapshot nemesis (and the
/// option was not given): the leader snapshots and purges its log every few
/// dozen entries, so a follower that was down for a second needs a snapshot.
pub const SNAPSHOT_EVERY_FOR_SNAPSHOT_NEMESIS: u64 = 25;
/// `--snapshot-every` otherwise.
pub const SNAPSHOT_EVERY: u64 = 200;
/// How long the replicas get after the final reads to reach the same
/// applied index.
const DIGEST_PATIENCE: Duration = Duration::from_secs(30);

/// The run currently holding network namespaces (for ctrl-c cleanup).
pub static ACTIVE_RUN: Mutex<Option<String>> = Mutex::new(None);

#[derive(Clone, Debug, Serialize)]
pub struct Workloads {
    pub register: bool,
    pub set: bool,
    pub watch: bool,
    pub lease: bool,
    pub workflow: bool,
}

impl Workloads {
    pub fn parse(spec: &str) -> Result<Workloads> {
        let mut w = Workloads {
            register: false,
            set: false,
            watch: false,
            lease: false,
            workflow: false,
        };
        for part in spec.split([',', '+']).map(str::trim) {
            match part {
                "register" => w.register = true,
                "set" => w.set = true,
                "watch" => w.watch = true,
                "lease" => w.lease = true,
                "workflow" => w.workflow = true,
                "all" => {
                    w = Workloads {
                        register: true,
                        set: true,
                        watch: true,
                        lease: true,
                        workflow: true,
                    }
                }
                other => anyhow::bail!(
                    "unknown workload `{other}` (expected register, set, watch, lease, workflow or all)"
                ),
            }
        }
        Ok(w)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSpec {
    pub seed: u64,
    pub workload: String,
    pub nemesis: String,
    pub time_limit_s: u64,
    pub nodes: usize,
    pub shoal_bin: PathBuf,
    pub out: PathBuf,
    /// None: [`SNAPSHOT_EVERY`], or [`SNAPSHOT_EVERY_FOR_SNAPSHOT_NEMESIS`]
    /// with the snapshot nemesis.
    pub snapshot_every: Option<u64>,
    pub keep_data: bool,
    /// Nodes that run with `SHOAL_FAULT_LOG_SYNC_DELAY_MS` from the start.
    pub slow_fsync_nodes: Vec<usize>,
    pub fsync_delay_ms: u64,
    /// Every node runs with `SHOAL_FAULT_LOSE_UNSYNCED=1` (also implied by
    /// the power-cut nemesis).
    pub lose_unsynced: bool,
    /// Passed to the nodes as `--election-timeout-ms` when set.
    pub election_timeout_ms: Option<u64>,
}

impl RunSpec {
    pub fn reproduce(&self) -> String {
        let mut line = format!(
            "shoal-jepsen --seed {} --workload {} --nemesis {} --time-limit {} --nodes {}",
            self.seed, self.workload, self.nemesis, self.time_limit_s, self.nodes
        );
        if let Some(every) = self.snapshot_every {
            line += &format!(" --snapshot-every {every}");
        }
        if !self.slow_fsync_nodes.is_empty() {
            let nodes: Vec<String> = self
                .slow_fsync_nodes
                .iter()
                .map(|i| i.to_string())
                .collect();
            line += &format!(" --slow-fsync-nodes {}", nodes.join(","));
        }
        if self.fsync_delay_ms != nemesis::DEFAULT_FSYNC_DELAY_MS {
            line += &format!(" --fsync-delay-ms {}", self.fsync_delay_ms);
        }
        if self.lose_unsynced {
            line += " --lose-unsynced";
        }
        if let Some(ms) = self.election_timeout_ms {
            line += &format!(" --election-timeout-ms {ms}");
        }
        line
    }

    /// The `--snapshot-every` the nodes get.
    pub fn snapshot_every_for(&self, kinds: &[String]) -> u64 {
        self.snapshot_every
            .unwrap_or(if kinds.iter().any(|k| k == nemesis::NEEDS_SNAPSHOTS) {
                SNAPSHOT_EVERY_FOR_SNAPSHOT_NEMESIS
            } else {
                SNAPSHOT_EVERY
            })
    }
}

/// Nemesis events that are not faults.
fn is_fault(e: &Executed) -> bool {
    e.kind != "heal-all" && e.kind != nemesis::RESUMED_LEADERSHIP
}

pub struct RunResult {
    pub row: Row,
    pub valid: bool,
}

fn run_id(seed: u64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let x = (t ^ seed.rotate_left(17) ^ (std::process::id() as u64) << 32)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{:06x}", x >> 40)
}

/// Runs one test. Errors are harness/environment failures (not verdicts).
pub async fn run_one(spec: &RunSpec, number: usize) -> Result<RunResult> {
    let wall = Instant::now();
    let workloads = Workloads::parse(&spec.workload)?;
    let kinds = nemesis::parse_kinds(&spec.nemesis)?;
    let nemesis_name = match kinds.len() {
        0 => "none".to_string(),
        n if n == nemesis::KINDS.len() => "all".to_string(),
        _ => kinds.join("+"),
    };
    let dir = spec.out.join(format!(
        "{}-{}-{}-s{}",
        output::timestamp(),
        spec.workload.replace(',', "+"),
        nemesis_name,
        spec.seed
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rid = run_id(spec.seed);
    println!(
        "run {number}: workload {} nemesis {nemesis_name} seed {} -> {}",
        spec.workload,
        spec.seed,
        dir.display()
    );

    let time_limit_ms = spec.time_limit_s * 1000;
    let plan = nemesis::schedule(spec.seed, &kinds, time_limit_ms);
    write_json(&dir.join("schedule.json"), &plan)?;

    let settings = node_settings(spec, &kinds)?;
    *ACTIVE_RUN.lock().unwrap() = Some(rid.clone());
    // On error, whatever was created is removed as it is dropped.
    let cluster = match Net::create(&rid, spec.nodes)
        .and_then(|net| Cluster::start(net, settings, &dir.join("data"), &dir.join("nodes")))
    {
        Ok(c) => Arc::new(c),
        Err(e) => {
            *ACTIVE_RUN.lock().unwrap() = None;
            return Err(e);
        }
    };
    let outcome = drive(spec, &workloads, &plan, &cluster, &dir, &rid).await;
    // Tear down whatever happened.
    cluster.stop_all();
    cluster.copy_logs();
    let exits = cluster.unexpected_exits();
    match Arc::try_unwrap(cluster) {
        Ok(mut c) => c.net.teardown(),
        Err(c) => netns::cleanup_run(&c.net.run_id),
    }
    *ACTIVE_RUN.lock().unwrap() = None;
    if !spec.keep_data {
        let _ = std::fs::remove_dir_all(dir.join("data"));
    }
    let Driven {
        history,
        events,
        set_reads,
        references,
        watchers,
        lease_final,
        workflow_final,
        digests,
        settle,
    } = outcome?;

    let liveness: Vec<String> = settle.as_ref().err().cloned().into_iter().collect();
    let settle_text = settle.unwrap_or_else(|e| e);
    let node_panics = scan_panics(&dir.join("nodes"));
    let inputs = Inputs {
        workloads,
        history,
        set_reads,
        references,
        watchers,
        lease_final,
        workflow_final,
        digests: Some(digests),
        resumed_leadership: resumed_leadership(&events),
        unexpected_exits: exits,
        liveness,
        node_panics,
    };
    let checking = Instant::now();
    let checks = evaluate(&inputs);
    let summary = failure_summary(&checks);
    println!(
        "  checked {} ops in {:.1}s: {}",
        inputs.history.len(),
        checking.elapsed().as_secs_f64(),
        if checks.valid {
            "valid".to_string()
        } else {
            format!("INVALID: {summary}")
        }
    );
    let mut verdict = json!({
        "valid": checks.valid,
        "seed": spec.seed,
        "workload": spec.workload,
        "nemesis": nemesis_name,
        "time_limit_s": spec.time_limit_s,
        "nodes": spec.nodes,
        "reproduce": spec.reproduce(),
        "summary": summary,
        "settle": settle_text,
        "stats": stats(&inputs.history),
        "faults": events.iter().filter(|e| is_fault(e)).count(),
        "checks": checks,
    });
    if !checks.valid {
        let report = failure_report(
            &spec.reproduce(),
            spec.seed,
            &checks,
            &inputs.history,
            &events,
            &dir,
        )?;
        std::fs::write(dir.join("failure.txt"), &report)?;
        verdict["failure_report"] = json!("failure.txt");
        print!("{report}");
    }
    write_json(&dir.join("verdict.json"), &verdict)?;
    let info = inputs
        .history
        .iter()
        .filter(|o| o.outcome == Outcome::Info)
        .count();
    Ok(RunResult {
        valid: checks.valid,
        row: Row {
            run: number,
            workload: spec.workload.clone(),
            nemesis: nemesis_name,
            seed: spec.seed,
            ops: inputs.history.len(),
            info,
            faults: events.iter().filter(|e| is_fault(e)).count(),
            secs: wall.elapsed().as_secs_f64(),
            verdict: if checks.valid {
                "valid".into()
            } else {
                "INVALID".into()
            },
            detail: summary,
            dir: dir.display().to_string(),
        },
    })
}

fn stats(history: &[Op]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for w in ["register", "set", "watch", "lease", "workflow"] {
        let ops: Vec<&Op> = history.iter().filter(|o| o.workload == w).collect();
        if ops.is_empty() {
            continue;
        }
        let count = |o: Outcome| ops.iter().filter(|x| x.outcome == o).count();
        m.insert(w.into(), json!({"ops": ops.len(), "ok": count(Outcome::Ok), "fail": count(Outcome::Fail), "info": count(Outcome::Info)}));
    }
    serde_json::Value::Object(m)
}

/// The node settings of a run: snapshot frequency, fault hooks and clock
/// for its nemeses.
fn node_settings(spec: &RunSpec, kinds: &[String]) -> Result<NodeSettings> {
    let has = |k: &str| kinds.iter().any(|x| x == k);
    if let Some(i) = spec.slow_fsync_nodes.iter().find(|i| **i >= spec.nodes) {
        anyhow::bail!(
            "--slow-fsync-nodes: there is no node {i} (nodes are 0..{})",
            spec.nodes
        );
    }
    let mut extra_args = Vec::new();
    if let Some(ms) = spec.election_timeout_ms {
        extra_args.extend(["--election-timeout-ms".to_string(), ms.to_string()]);
    }
    Ok(NodeSettings {
        shoal_bin: spec.shoal_bin.clone(),
        voters: if spec.nodes >= 5 { 5 } else { 3 },
        snapshot_every: spec.snapshot_every_for(kinds),
        extra_args,
        fsync_delay_ms: spec.fsync_delay_ms,
        slow_fsync_nodes: spec.slow_fsync_nodes.iter().copied().collect(),
        lose_unsynced: spec.lose_unsynced || has(nemesis::NEEDS_LOSE_UNSYNCED),
        libfaketime: if has(nemesis::NEEDS_FAKE_CLOCK) {
            Some(cluster::find_libfaketime()?)
        } else {
            None
        },
    })
}

/// What the part of a run with the cluster up produced.
struct Driven {
    history: Vec<Op>,
    events: Vec<Executed>,
    set_reads: Vec<set::FinalRead>,
    references: Vec<watch::Reference>,
    watchers: Vec<watch::WatcherLog>,
    lease_final: Option<workload::lease::FinalState>,
    workflow_final: Option<workload::workflow::FinalState>,
    digests: digest::Collected,
    settle: std::result::Result<String, String>,
}

/// The part of a run that needs the cluster up.
async fn drive(
    spec: &RunSpec,
    w: &Workloads,
    plan: &[nemesis::Planned],
    cluster: &Arc<Cluster>,
    dir: &Path,
    rid: &str,
) -> Result<Driven> {
    let formed = cluster
        .wait_healthy(Duration::from_secs(90))
        .await
        .map_err(|e| anyhow::anyhow!("the cluster did not form within 90 s: {e}"))?;
    cluster.learn_ids().await?;
    println!(
        "  cluster formed in {:.1}s (run id {rid}, node ids {:?})",
        formed.as_secs_f64(),
        cluster
            .node_ids()
            .iter()
            .map(|i| i.unwrap_or(0))
            .collect::<Vec<_>>()
    );

    let clock = Clock::new();
    let clock_start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    write_json(
        &dir.join("run.json"),
        &json!({
            "spec": spec,
            "run_id": rid,
            "reproduce": spec.reproduce(),
            "clock_start_unix_ms": clock_start_unix_ms,
            "nodes": (0..cluster.n).map(|i| json!({"index": i, "id": cluster.node_ids()[i], "ip": netns::node_ip(i).to_string(), "namespace": Net::ns_name(rid, i)})).collect::<Vec<_>>(),
        }),
    )?;
    let rec = Recorder::create(&dir.join("history.jsonl"), clock)?;
    let ctx = Ctx {
        api: Api::new(cluster.n)?,
        rec: rec.clone(),
        n: cluster.n,
        stop: Arc::new(AtomicBool::new(false)),
    };

    // Clients.
    let mut tasks = Vec::new();
    let seed = spec.seed;
    if w.workflow {
        workload::workflow::setup(&ctx).await?;
        let alone = !(w.register || w.set || w.watch || w.lease);
        let workers = workload::workflow::workers(alone);
        for i in 0..workers {
            tasks.push(tokio::spawn(workload::workflow::worker(
                ctx.clone(),
                i,
                workers,
                seed ^ (0x600 + i as u64),
            )));
        }
    }
    if w.register {
        let keys = workload::register::Keys::new();
        for i in 0..5 {
            tasks.push(tokio::spawn(workload::register::worker(
                ctx.clone(),
                keys.clone(),
                i,
                5,
                seed ^ (0x100 + i as u64),
            )));
        }
    }
    if w.set {
        for i in 0..2 {
            tasks.push(tokio::spawn(workload::set::worker(
                ctx.clone(),
                i,
                2,
                seed ^ (0x200 + i as u64),
            )));
        }
    }
    if w.lease {
        for i in 0..2 {
            tasks.push(tokio::spawn(workload::lease::worker(
                ctx.clone(),
                i,
                2,
                seed ^ (0x500 + i as u64),
            )));
        }
    }
    let control = Arc::new(workload::watch::WatchControl::default());
    let mut watchers = Vec::new();
    if w.watch {
        for i in 0..2 {
            tasks.push(tokio::spawn(workload::watch::writer(
                ctx.clone(),
                i,
                2,
                seed ^ (0x300 + i as u64),
            )));
        }
        let spread = (spec.time_limit_s * 1000 / 4).max(1);
        for i in 0..3u64 {
            let delay = Duration::from_millis(i * spread / 2);
            watchers.push(workload::watch::spawn_watcher(
                ctx.clone(),
                control.clone(),
                i as usize,
                delay,
                seed ^ (0x400 + i),
            ));
        }
    }

    // Nemesis.
    let nemesis = Arc::new(Nemesis::new(
        cluster.clone(),
        clock,
        &dir.join("nemesis.jsonl"),
    )?);
    let nemesis_stop = Arc::new(AtomicBool::new(false));
    let nemesis_task = {
        let (nemesis, stop, plan) = (nemesis.clone(), nemesis_stop.clone(), plan.to_vec());
        tokio::spawn(async move { nemesis.run(&plan, &stop).await })
    };

    // The workload phase, with progress.
    let end = Instant::now() + Duration::from_secs(spec.time_limit_s);
    while Instant::now() < end {
        tokio::time::sleep((end - Instant::now()).min(Duration::from_secs(10))).await;
        let ops = rec.ops();
        let info = ops.iter().filter(|o| o.outcome == Outcome::Info).count();
        println!(
            "  {:>4.0}s: {} ops ({} indeterminate)",
            clock.now_ns() as f64 / 1e9,
            ops.len(),
            info
        );
    }
    nemesis_stop.store(true, Ordering::Relaxed);
    let _ = nemesis_task.await;
    nemesis.heal_all().await;
    println!(
        "  {:>4.0}s: faults over, everything healed",
        clock.now_ns() as f64 / 1e9
    );
    ctx.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    rec.flush();

    // Settle.
    let settle = match cluster.wait_healthy(Duration::from_secs(60)).await {
        Ok(d) => Ok(format!("healthy {:.1}s after healing", d.as_secs_f64())),
        Err(e) => Err(format!("not healthy 60 s after healing everything: {e}")),
    };
    println!("  {}", settle.as_ref().unwrap_or_else(|e| e));

    // Final reads.
    let set_reads = if w.set {
        workload::set::final_reads(&ctx, Duration::from_secs(30)).await
    } else {
        Vec::new()
    };
    let references = if w.watch {
        workload::watch::references(&ctx, Duration::from_secs(30)).await
    } else {
        Vec::new()
    };
    if w.watch {
        let target = references
            .iter()
            .filter_map(|r| r.batches.as_ref())
            .filter_map(|b| b.last())
            .map(|b| b.revision)
            .max();
        *control.target.lock().unwrap() = Some(target.unwrap_or(0));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !watchers.iter().all(|x| x.handle.is_finished()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        control.abort.store(true, Ordering::Relaxed);
    }
    let mut watcher_logs = Vec::new();
    for x in watchers {
        let _ = x.handle.await;
        watcher_logs.push(x.log.lock().unwrap().clone());
    }
    let lease_final = if w.lease {
        let last = workload::lease::final_state(&ctx, Duration::from_secs(30)).await;
        write_json(&dir.join("lease-final.json"), &last)?;
        Some(last)
    } else {
        None
    };
    let workflow_final = if w.workflow {
        let last = workload::workflow::final_state(&ctx, Duration::from_secs(60)).await;
        write_json(&dir.join("workflow-final.json"), &last)?;
        Some(last)
    } else {
        None
    };
    if w.set {
        write_json(&dir.join("set-final-reads.json"), &set_reads)?;
    }
    if w.watch {
        write_json(&dir.join("watch-reference.json"), &references)?;
        write_json(&dir.join("watchers.json"), &watcher_logs)?;
    }
    let digests = cluster.converged_digests(DIGEST_PATIENCE).await;
    write_json(&dir.join("digests.json"), &digests)?;
    println!("  {}", digest_line(&digests));
    nemesis.finish().await;
    let events = nemesis.events.lock().unwrap().clone();
    Ok(Driven {
        history: rec.ops(),
        events,
        set_reads,
        references,
        watchers: watcher_logs,
        lease_final,
        workflow_final,
        digests,
        settle,
    })
}
