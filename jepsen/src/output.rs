//! Run directories, the failure report, and the final verdict table.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::history::{secs, Op};
use crate::nemesis::Executed;

/// `20251124T123456Z` (UTC), for directory names.
pub fn timestamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(())
}

/// One operation as a line for humans.
pub fn render_op(op: &Op) -> String {
    let what = match op.f.as_str() {
        "read" => format!(
            "read {} -> {}",
            op.key,
            op.value.as_deref().unwrap_or("nil")
        ),
        "cas" => format!(
            "cas {} {}->{}",
            op.key,
            op.expect.as_deref().unwrap_or("nil"),
            op.value.as_deref().unwrap_or("nil")
        ),
        f => format!("{f} {} {}", op.key, op.value.as_deref().unwrap_or("nil")),
    };
    let rev = op.revision.map(|r| format!(" rev {r}")).unwrap_or_default();
    let err = op
        .error
        .as_deref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    format!(
        "#{:<6} p{:<4} n{} [{} .. {}] {:<4} {what}{rev}{err}",
        op.index,
        op.process,
        op.node,
        secs(op.start_ns),
        secs(op.end_ns),
        format!("{:?}", op.outcome).to_lowercase()
    )
}

/// Nemesis events that overlap [t0, t1] (with a margin), as lines.
pub fn nemesis_during(events: &[Executed], t0: u64, t1: u64) -> Vec<String> {
    let margin = 3_000_000_000;
    events
        .iter()
        .filter(|e| e.start_ns <= t1 + margin && e.end_ns.unwrap_or(e.start_ns) + margin >= t0)
        .map(|e| {
            format!(
                "[{} .. {}] {} {} {:?} {}",
                secs(e.start_ns),
                e.end_ns.map(secs).unwrap_or_else(|| "-".into()),
                e.kind,
                e.variant,
                e.targets,
                e.detail
            )
        })
        .collect()
}

/// A row of the final table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub run: usize,
    pub workload: String,
    pub nemesis: String,
    pub seed: u64,
    pub ops: usize,
    pub info: usize,
    pub faults: usize,
    pub secs: f64,
    /// `valid`, `INVALID` or `ERROR`.
    pub verdict: String,
    pub detail: String,
    pub dir: String,
}

pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>3}  {:<9} {:<31} {:>6} {:>6} {:>5} {:>6} {:>6}  {:<8} detail",
        "run", "workload", "nemesis", "seed", "ops", "info", "faults", "secs", "verdict"
    );
    for r in rows {
        let detail: String = if r.detail.chars().count() > 110 {
            r.detail.chars().take(107).collect::<String>() + "..."
        } else {
            r.detail.clone()
        };
        let _ = writeln!(
            s,
            "{:>3}  {:<9} {:<31} {:>6} {:>6} {:>5} {:>6} {:>6.0}  {:<8} {}",
            r.run,
            r.workload,
            r.nemesis,
            r.seed,
            r.ops,
            r.info,
            r.faults,
            r.secs,
            r.verdict,
            detail
        );
    }
    s
}
