//! The verdict side of a run: what the checkers read ([`Inputs`]), what
//! they found ([`Checks`]), the one-line summaries and the failure report,
//! and `shoal-jepsen check DIR`, which reloads a finished run and checks it
//! again.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::checker::{digest, lease, register, set, watch, workflow};
use crate::history::{self, Op};
use crate::nemesis::{self, Executed};
use crate::output::{self, render_op};
use crate::run::Workloads;
use crate::workload;

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

/// The `resumed-leadership` findings among the nemesis events.
pub(crate) fn resumed_leadership(events: &[Executed]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == nemesis::RESUMED_LEADERSHIP)
        .map(|e| format!("[{}] {}", history::secs(e.start_ns), e.detail))
        .collect()
}

/// One line about the replicas' digests, for the console.
pub(crate) fn digest_line(c: &digest::Collected) -> String {
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
