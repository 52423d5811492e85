//! The fault schedule: the kinds and variants of faults, and the plan a
//! seed gives for a run (drawn before the run, so it is the same for the
//! same seed).

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

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
