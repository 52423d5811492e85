//! One run: network and cluster up, clients and nemesis for the time limit,
//! heal, settle, final reads, tear down, check, write the verdict.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::checker::{digest, lease, register, set, watch, workflow};
use crate::client::Api;
use crate::cluster::{self, Cluster, NodeSettings};
use crate::history::{self, Clock, Op, Outcome, Recorder};
use crate::nemesis::{self, Executed, Nemesis};
use crate::netns::{self, Net};
use crate::output::{self, render_op, write_json, Row};
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

/// Everything the checkers read (also what `shoal-jepsen check DIR` reloads).
pub struct Inputs {
    pub workloads: Workloads,
    pub history: Vec<Op>,
    pub set_reads: Vec<set::FinalRead>,
    pub references: Vec<watch::Reference>,
    pub watchers: Vec<watch::WatcherLog>,
    /// The lease workload's final check (after healing).
    pub lease_final: Option<workload::lease::FinalState>,
    /// The workflow workload's final read (after healing).
    pub workflow_final: Option<workload::workflow::FinalState>,
    /// Every node's state digest once they reached the same applied index
    /// (None for an old run directory without `digests.json`).
    pub digests: Option<digest::Collected>,
    /// Restarted leaders that resumed leadership in their old term.
    pub resumed_leadership: Vec<String>,
    pub unexpected_exits: Vec<(usize, String)>,
    /// The cluster did not recover after healing (not ready in time).
    pub liveness: Vec<String>,
    /// `panicked at` lines found in the node logs.
    pub node_panics: Vec<String>,
}

#[derive(Serialize)]
pub struct Checks {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register: Option<register::RegisterResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<set::SetResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<watch::WatchResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<lease::LeaseResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<workflow::WorkflowResult>,
    /// Every replica holds the same state (`digests.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<digest::DigestResult>,
    /// A restarted leader came back as Leader in its old term.
    pub resumed_leadership: Vec<String>,
    /// Nodes that exited without being killed.
    pub unexpected_exits: Vec<String>,
    /// Panics in the nodes' logs (a node may panic in a task and live on).
    pub node_panics: Vec<String>,
    /// The cluster did not recover within 60 s of healing everything.
    pub liveness: Vec<String>,
}

/// Runs the checkers.
pub fn evaluate(inputs: &Inputs) -> Checks {
    let register = inputs
        .workloads
        .register
        .then(|| register::check(&inputs.history, Duration::from_secs(60)));
    let set = inputs
        .workloads
        .set
        .then(|| set::check(&inputs.history, &inputs.set_reads));
    let watch = inputs
        .workloads
        .watch
        .then(|| watch::check(&inputs.history, &inputs.references, &inputs.watchers));
    let lease = inputs
        .workloads
        .lease
        .then(|| lease::check(&inputs.history, inputs.lease_final.as_ref()));
    let workflow = inputs
        .workloads
        .workflow
        .then(|| workflow::check(&inputs.history, inputs.workflow_final.as_ref()));
    let digest = inputs.digests.as_ref().map(digest::check);
    let unexpected_exits: Vec<String> = inputs
        .unexpected_exits
        .iter()
        .map(|(i, s)| format!("node {i} exited on its own: {s}"))
        .collect();
    let valid = register.as_ref().is_none_or(|r| r.valid)
        && set.as_ref().is_none_or(|r| r.valid)
        && watch.as_ref().is_none_or(|r| r.valid)
        && lease.as_ref().is_none_or(|r| r.valid)
        && workflow.as_ref().is_none_or(|r| r.valid)
        && digest.as_ref().is_none_or(|r| r.valid)
        && inputs.resumed_leadership.is_empty()
        && unexpected_exits.is_empty()
        && inputs.node_panics.is_empty()
        && inputs.liveness.is_empty();
    Checks {
        valid,
        register,
        set,
        watch,
        lease,
        workflow,
        digest,
        resumed_leadership: inputs.resumed_leadership.clone(),
        unexpected_exits,
        node_panics: inputs.node_panics.clone(),
        liveness: inputs.liveness.clone(),
    }
}

/// One-line summary of what failed.
pub fn failure_summary(c: &Checks) -> String {
    let mut parts = Vec::new();
    // The replicas' own state first: a fork explains every other finding.
    if let Some(d) = &c.digest {
        parts.extend(d.problems.iter().map(|p| format!("digest: {p}")));
    }
    if !c.resumed_leadership.is_empty() {
        parts.push(format!(
            "{} restarted leader(s) resumed leadership without an election",
            c.resumed_leadership.len()
        ));
    }
    if let Some(r) = &c.register {
        if !r.failures.is_empty() {
            parts.push(format!(
                "register: {} key(s) not linearizable",
                r.failures.len()
            ));
        }
        if !r.unknown.is_empty() {
            parts.push(format!(
                "register: {} key(s) unknown (search budget)",
                r.unknown.len()
            ));
        }
    }
    if let Some(s) = &c.set {
        let count = |m: &std::collections::BTreeMap<usize, Vec<String>>| {
            m.values().map(Vec::len).max().unwrap_or(0)
        };
        for (name, m) in [
            ("lost", &s.lost),
            ("unexpected", &s.unexpected),
            ("failed-but-present", &s.failed_but_present),
            ("vanished", &s.vanished),
        ] {
            if !m.is_empty() {
                parts.push(format!("set: {} {name}", count(m)));
            }
        }
        parts.extend(s.problems.iter().map(|p| format!("set: {p}")));
    }
    if let Some(w) = &c.watch {
        if let Some(first) = w.problems.first() {
            let more = if w.problems.len() > 1 {
                format!(" (+{} more)", w.problems.len() - 1)
            } else {
                String::new()
            };
            parts.push(format!("watch: {first}{more}"));
        }
        let bad = w.watchers.iter().filter(|x| !x.valid).count();
        if bad > 0 {
            parts.push(format!("watch: {bad} watcher(s) with anomalies"));
        }
    }
    if let Some(l) = &c.lease {
        let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
        for v in &l.violations {
            *kinds.entry(v.kind.as_str()).or_default() += 1;
        }
        for (kind, count) in kinds {
            parts.push(format!("lease: {count} {kind}"));
        }
        parts.extend(l.problems.iter().map(|p| format!("lease: {p}")));
    }
    if let Some(w) = c.workflow.as_ref().filter(|w| !w.valid) {
        let named = [
            ("lost", &w.lost),
            ("unexpected", &w.unexpected),
            ("unfinished", &w.unfinished),
            ("timer not fired once", &w.timers),
            ("event not applied once", &w.events),
            ("bad completion", &w.completions),
        ];
        for (what, list) in named {
            if let Some(first) = list.first() {
                parts.push(format!("workflow: {} {what} (first {first})", list.len()));
            }
        }
        if let Some(error) = &w.error {
            parts.push(format!("workflow: {error}"));
        }
    }
    if !c.unexpected_exits.is_empty() {
        parts.push(format!(
            "{} unexpected node exit(s)",
            c.unexpected_exits.len()
        ));
    }
    if !c.node_panics.is_empty() {
        parts.push(format!("node panic(s): {}", c.node_panics.len()));
    }
    if !c.liveness.is_empty() {
        parts.push("liveness: the cluster did not recover after healing".into());
    }
    parts.join("; ")
}

/// The human-readable failure report: per failing check, the minimal window
/// of the history and the faults around it.
pub fn failure_report(
    spec_line: &str,
    seed: u64,
    checks: &Checks,
    history: &[Op],
    events: &[Executed],
    dir: &Path,
) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "INVALID run. Seed {seed}. Reproduce with:\n  {spec_line}\n"
    )?;
    let by_index: std::collections::HashMap<u64, &Op> =
        history.iter().map(|o| (o.index, o)).collect();
    if let Some(d) = &checks.digest {
        if !d.valid {
            writeln!(s, "== replica digests (digests.json)")?;
            for p in &d.problems {
                writeln!(s, "  {p}")?;
            }
            writeln!(s)?;
        }
    }
    for e in &checks.resumed_leadership {
        writeln!(s, "== resumed leadership: {e}")?;
    }
    if !checks.resumed_leadership.is_empty() {
        writeln!(s)?;
    }
    if let Some(r) = &checks.register {
        for k in r.failures.iter().chain(r.unknown.iter()) {
            writeln!(
                s,
                "== register {}: {} ({} ops, {} indeterminate)",
                k.key, k.verdict, k.ops, k.indeterminate
            )?;
            if let Some(w) = &k.window {
                writeln!(
                    s,
                    "Minimal failing window [{} .. {}] ({} ops; '~' = crosses the window edge, treated as indeterminate; start state: {}):",
                    history::secs(w.start_ns),
                    history::secs(w.end_ns),
                    w.op_indexes.len(),
                    if w.from_initial_state { "nil (start of history)" } else { "any" }
                )?;
                let mut ops: Vec<&Op> = w
                    .op_indexes
                    .iter()
                    .filter_map(|i| by_index.get(i).copied())
                    .collect();
                ops.sort_by_key(|o| o.start_ns);
                for op in &ops {
                    let mark = if w.relaxed.contains(&op.index) {
                        "~"
                    } else {
                        " "
                    };
                    writeln!(s, "  {mark} {}", render_op(op))?;
                }
                let file = dir.join(format!(
                    "failure-register-{}.jsonl",
                    k.key.replace('/', "_")
                ));
                history::write_jsonl(&file, &ops)?;
                writeln!(s, "  (as JSON: {})", file.display())?;
                writeln!(s, "Faults around it:")?;
                for line in output::nemesis_during(events, w.start_ns, w.end_ns) {
                    writeln!(s, "    {line}")?;
                }
            }
            writeln!(s)?;
        }
    }
    if let Some(set) = &checks.set {
        if !set.valid {
            writeln!(s, "== set: lost {:?}\n   unexpected {:?}\n   failed-but-present {:?}\n   vanished {:?}\n   problems {:?}", set.lost, set.unexpected, set.failed_but_present, set.vanished, set.problems)?;
            let ops: Vec<&Op> = set
                .anomaly_ops
                .iter()
                .filter_map(|i| by_index.get(i).copied())
                .collect();
            if !ops.is_empty() {
                writeln!(s, "The add operations involved:")?;
            }
            for op in ops.iter().take(50) {
                writeln!(s, "    {}", render_op(op))?;
            }
            if let (Some(first), Some(last)) = (
                ops.iter().map(|o| o.start_ns).min(),
                ops.iter().map(|o| o.end_ns).max(),
            ) {
                writeln!(s, "Faults around them:")?;
                for line in output::nemesis_during(events, first, last) {
                    writeln!(s, "    {line}")?;
                }
            }
            history::write_jsonl(&dir.join("failure-set.jsonl"), &ops)?;
            writeln!(s)?;
        }
    }
    if let Some(w) = &checks.watch {
        if !w.valid {
            writeln!(s, "== watch")?;
            for p in &w.problems {
                writeln!(s, "  {p}")?;
            }
            for x in w.watchers.iter().filter(|x| !x.valid) {
                writeln!(
                    s,
                    "  watcher {} (from revision {}, {} received, {} expected):",
                    x.id, x.start_revision, x.received, x.expected
                )?;
                for a in &x.anomalies {
                    writeln!(s, "    {a}")?;
                }
                writeln!(s, "   around the first anomaly:")?;
                for line in &x.window {
                    writeln!(s, "    {line}")?;
                }
            }
            writeln!(s)?;
        }
    }
    if let Some(l) = &checks.lease {
        if !l.valid {
            lease_report(&mut s, l, &by_index, events)?;
        }
    }
    for e in &checks.unexpected_exits {
        writeln!(s, "== {e} (see nodes/*/console.log)")?;
    }
    for p in &checks.node_panics {
        writeln!(s, "== node panic: {p}")?;
    }
    for l in &checks.liveness {
        writeln!(s, "== liveness: {l}")?;
    }
    Ok(s)
}

/// The lease section of the failure report: each violation, the lease's
/// operations and the faults around them.
fn lease_report(
    s: &mut String,
    l: &lease::LeaseResult,
    by_index: &std::collections::HashMap<u64, &Op>,
    events: &[Executed],
) -> Result<()> {
    writeln!(
        s,
        "== lease: {} violation(s) ({} leases granted, {} kept alive, {} reads checked)",
        l.violations.len(),
        l.granted,
        l.kept_alive,
        l.reads_checked
    )?;
    for v in l.violations.iter().take(20) {
        writeln!(
            s,
            "  {} (lease {}, {}): {}",
            v.kind, v.lease, v.key, v.detail
        )?;
    }
    for p in &l.problems {
        writeln!(s, "  {p}")?;
    }
    let first = l.violations.iter().find_map(|v| v.op);
    if let Some(lease_id) = first.and_then(|i| by_index.get(&i)).and_then(|o| o.lease) {
        let mut ops: Vec<&Op> = l
            .anomaly_ops
            .iter()
            .filter_map(|i| by_index.get(i).copied())
            .filter(|o| o.lease == Some(lease_id))
            .collect();
        ops.sort_by_key(|o| o.start_ns);
        writeln!(s, "  The operations of lease {lease_id}:")?;
        for op in &ops {
            writeln!(s, "    {}", render_op(op))?;
        }
        if let (Some(t0), Some(t1)) = (ops.first(), ops.last()) {
            writeln!(s, "  Faults around them:")?;
            for line in output::nemesis_during(events, t0.start_ns, t1.end_ns) {
                writeln!(s, "    {line}")?;
            }
        }
    }
    writeln!(s)?;
    Ok(())
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

/// The `resumed-leadership` findings among the nemesis events.
fn resumed_leadership(events: &[Executed]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == nemesis::RESUMED_LEADERSHIP)
        .map(|e| format!("[{}] {}", history::secs(e.start_ns), e.detail))
        .collect()
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

/// One line about the replicas' digests, for the console.
fn digest_line(c: &digest::Collected) -> String {
    let first = c.readings.iter().find_map(|r| r.digest.as_ref());
    match (c.converged, first) {
        (true, Some(d)) => {
            let same = c
                .readings
                .iter()
                .all(|r| r.digest.as_ref().is_some_and(|x| x.digest == d.digest));
            format!(
                "replicas at applied index {} after {:.1}s: {}",
                d.applied_index,
                c.waited_ms as f64 / 1000.0,
                if same {
                    format!("same digest {}", &d.digest[..16.min(d.digest.len())])
                } else {
                    "DIGESTS DIFFER".to_string()
                }
            )
        }
        _ => {
            let errors: Vec<String> = c
                .readings
                .iter()
                .filter_map(|r| r.error.as_ref().map(|e| format!("node {}: {e}", r.node)))
                .take(2)
                .collect();
            format!(
                "replicas did not converge within {:.0}s{}",
                c.patience_ms as f64 / 1000.0,
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            )
        }
    }
}

/// `shoal-jepsen check DIR`: re-runs the checkers on a finished run.
pub fn recheck(dir: &Path) -> Result<bool> {
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json"))?)?;
    let mut workloads = Workloads::parse(run["spec"]["workload"].as_str().unwrap_or("all"))?;
    // Runs from before the lease workload existed have no lease-final.json.
    workloads.lease &= dir.join("lease-final.json").exists();
    workloads.workflow &= dir.join("workflow-final.json").exists();
    let load = |name: &str| -> Result<Option<String>> {
        let p = dir.join(name);
        Ok(if p.exists() {
            Some(std::fs::read_to_string(p)?)
        } else {
            None
        })
    };
    let events: Vec<Executed> = match load("nemesis.jsonl")? {
        Some(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let inputs = Inputs {
        history: history::load(&dir.join("history.jsonl"))?,
        set_reads: load("set-final-reads.json")?
            .map(|s| serde_json::from_str(&s))
            .transpose()?
            .unwrap_or_default(),
        references: load("watch-reference.json")?
            .map(|s| serde_json::from_str(&s))
            .transpose()?
            .unwrap_or_default(),
        watchers: load("watchers.json")?
            .map(|s| serde_json::from_str(&s))
            .transpose()?
            .unwrap_or_default(),
        lease_final: load("lease-final.json")?
            .map(|s| serde_json::from_str(&s))
            .transpose()?,
        workflow_final: load("workflow-final.json")?
            .map(|s| serde_json::from_str(&s))
            .transpose()?,
        digests: load("digests.json")?
            .map(|s| serde_json::from_str(&s))
            .transpose()?,
        resumed_leadership: resumed_leadership(&events),
        unexpected_exits: Vec::new(),
        liveness: previous_liveness(dir),
        node_panics: scan_panics(&dir.join("nodes")),
        workloads,
    };
    let checks = evaluate(&inputs);
    if checks.valid {
        println!("valid");
    } else {
        let seed = run["spec"]["seed"].as_u64().unwrap_or(0);
        let reproduce = run["reproduce"].as_str().unwrap_or("");
        print!(
            "{}",
            failure_report(reproduce, seed, &checks, &inputs.history, &events, dir)?
        );
        println!("INVALID: {}", failure_summary(&checks));
    }
    Ok(checks.valid)
}

/// `panicked at` lines in `nodes/n*/console.log`, with the message line after.
pub fn scan_panics(nodes_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(nodes_dir) else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for d in dirs {
        let Ok(text) = std::fs::read_to_string(d.join("console.log")) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("panicked at") {
                let node = d
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push(format!(
                    "{node}: {} {}",
                    line.trim(),
                    lines.get(i + 1).map(|l| l.trim()).unwrap_or("")
                ));
            }
        }
    }
    out
}

/// The liveness findings recorded in an earlier verdict.json (they cannot be
/// recomputed from the files).
fn previous_liveness(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("verdict.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["checks"]["liveness"].as_array().cloned())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
