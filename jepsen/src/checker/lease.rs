//! The lease workload's promises.
//!
//! A lease that was granted at [g.start, g.end] and acknowledged keepalives
//! k1, k2, ... is alive (it cannot come back once gone, and each keepalive
//! found it alive and pushed its expiry to at least k.start + TTL) over
//!
//! ```text
//!   [g.end, max(g.start, k.start for every ok keepalive) + TTL - margin)
//! ```
//!
//! cut short where a revoke of it starts. Inside that window:
//! - **deleted-while-kept-alive**: a linearizable read of its key, started
//!   after the attaching put was acknowledged, must find the key;
//! - **rejected-while-alive**: a keepalive or the attaching put must not be
//!   rejected with `lease_not_found`.
//!
//! And **never-expired**: once nobody keeps anything alive (after healing),
//! every lease and every key under the prefix must go within the final
//! check's patience.
//!
//! With correct clocks nothing here depends on timing beyond the TTL. Leases
//! whose expiry follows a node's wall clock fail these checks under the
//! clock nemesis: that is what the checks are for.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{secs, Op, Outcome};
use crate::workload::lease::{is_lease_gone, FinalState};

/// Slack for the difference between the harness's clock and the nodes'
/// clocks when they are not skewed (same machine: none in practice).
pub const MARGIN_NS: u64 = 100_000_000;

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub kind: String,
    pub lease: u64,
    pub key: String,
    /// The operation that saw it (history index).
    pub op: Option<u64>,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LeaseResult {
    pub valid: bool,
    pub granted: usize,
    pub kept_alive: usize,
    pub keepalives_ok: usize,
    /// Reads that fell inside a lease's guaranteed window.
    pub reads_checked: usize,
    pub violations: Vec<Violation>,
    /// The operations of the leases with a violation (history indexes).
    pub anomaly_ops: Vec<u64>,
    pub problems: Vec<String>,
}

/// What the history says about one lease.
struct LeaseOps<'a> {
    grant: &'a Op,
    ttl_ns: u64,
    ops: Vec<&'a Op>,
}

impl LeaseOps<'_> {
    /// Until when the lease is certainly alive, and from when (None: it was
    /// never certainly alive, e.g. a TTL shorter than the margin).
    fn window(&self) -> Option<(u64, u64)> {
        let last = self
            .ops
            .iter()
            .filter(|o| o.f == "keepalive" && o.outcome == Outcome::Ok)
            .map(|o| o.start_ns)
            .chain([self.grant.start_ns])
            .max()?;
        let revoked = self
            .ops
            .iter()
            .filter(|o| o.f == "revoke")
            .map(|o| o.start_ns)
            .min()
            .unwrap_or(u64::MAX);
        let until = (last + self.ttl_ns).saturating_sub(MARGIN_NS).min(revoked);
        (until > self.grant.end_ns).then_some((self.grant.end_ns, until))
    }
}

fn leases(history: &[Op]) -> BTreeMap<u64, LeaseOps<'_>> {
    let mut out: BTreeMap<u64, LeaseOps> = BTreeMap::new();
    for g in history
        .iter()
        .filter(|o| o.workload == "lease" && o.f == "grant" && o.outcome == Outcome::Ok)
    {
        let (Some(id), Some(ttl)) = (
            g.lease,
            g.value.as_deref().and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        out.insert(
            id,
            LeaseOps {
                grant: g,
                ttl_ns: ttl * 1_000_000_000,
                ops: Vec::new(),
            },
        );
    }
    for o in history
        .iter()
        .filter(|o| o.workload == "lease" && o.f != "grant")
    {
        if let Some(l) = o.lease.and_then(|id| out.get_mut(&id)) {
            l.ops.push(o);
        }
    }
    out
}

pub fn check(history: &[Op], last: Option<&FinalState>) -> LeaseResult {
    let all = leases(history);
    let mut r = LeaseResult {
        valid: true,
        granted: all.len(),
        kept_alive: 0,
        keepalives_ok: 0,
        reads_checked: 0,
        violations: Vec::new(),
        anomaly_ops: Vec::new(),
        problems: Vec::new(),
    };
    for (id, l) in &all {
        let oks = l
            .ops
            .iter()
            .filter(|o| o.f == "keepalive" && o.outcome == Outcome::Ok)
            .count();
        r.keepalives_ok += oks;
        r.kept_alive += usize::from(oks > 0);
        let found = check_lease(*id, l, &mut r.reads_checked);
        if !found.is_empty() {
            r.anomaly_ops.push(l.grant.index);
            r.anomaly_ops.extend(l.ops.iter().map(|o| o.index));
        }
        r.violations.extend(found);
    }
    check_final(last, &mut r);
    r.valid = r.violations.is_empty() && r.problems.is_empty();
    r
}

fn check_lease(id: u64, l: &LeaseOps, reads_checked: &mut usize) -> Vec<Violation> {
    let mut found = Vec::new();
    let Some((from, until)) = l.window() else {
        return found;
    };
    let inside = |o: &Op| o.start_ns >= from && o.end_ns <= until;
    let window = format!(
        "alive for certain over [{} .. {}] (TTL {} s, granted by #{} on n{} [{} .. {}])",
        secs(from),
        secs(until),
        l.ttl_ns / 1_000_000_000,
        l.grant.index,
        l.grant.node,
        secs(l.grant.start_ns),
        secs(l.grant.end_ns)
    );
    let attached = l
        .ops
        .iter()
        .filter(|o| o.f == "put" && o.outcome == Outcome::Ok)
        .map(|o| o.end_ns)
        .min();
    for o in &l.ops {
        let violation = |kind: &str, what: String| Violation {
            kind: kind.into(),
            lease: id,
            key: o.key.clone(),
            op: Some(o.index),
            detail: format!("{what}, but lease {id} was {window}"),
        };
        match o.f.as_str() {
            "read" if o.outcome == Outcome::Ok && attached.is_some_and(|t| t <= o.start_ns) => {
                if !inside(o) {
                    continue;
                }
                *reads_checked += 1;
                if o.value.is_none() {
                    found.push(violation(
                        "deleted-while-kept-alive",
                        format!(
                            "read #{} on n{} [{} .. {}] found no key {}",
                            o.index,
                            o.node,
                            secs(o.start_ns),
                            secs(o.end_ns),
                            o.key
                        ),
                    ));
                }
            }
            "keepalive" | "put" if o.outcome == Outcome::Fail && is_lease_gone(o) && inside(o) => {
                found.push(violation(
                    "rejected-while-alive",
                    format!(
                        "{} #{} on n{} [{} .. {}] was rejected: {}",
                        o.f,
                        o.index,
                        o.node,
                        secs(o.start_ns),
                        secs(o.end_ns),
                        o.error.as_deref().unwrap_or("?")
                    ),
                ));
            }
            _ => {}
        }
    }
    found
}

fn check_final(last: Option<&FinalState>, r: &mut LeaseResult) {
    let Some(last) = last else {
        r.problems
            .push("the final lease check did not run (no lease-final.json)".into());
        return;
    };
    match (&last.leases, &last.keys) {
        (Some(leases), Some(keys)) => {
            if !leases.is_empty() || !keys.is_empty() {
                r.violations.push(Violation {
                    kind: "never-expired".into(),
                    lease: leases.first().map(|l| l.0).unwrap_or(0),
                    key: keys.first().cloned().unwrap_or_default(),
                    op: None,
                    detail: format!(
                        "{} s after healing nobody had kept a lease alive for a while, yet node {} still \
                         had {} lease(s) (id, remaining ms) {:?} and {} key(s) {:?}",
                        last.waited_ms / 1000,
                        last.node,
                        leases.len(),
                        leases.iter().take(10).collect::<Vec<_>>(),
                        keys.len(),
                        keys.iter().take(10).collect::<Vec<_>>()
                    ),
                });
            }
        }
        _ => r.problems.push(format!(
            "the final lease check on node {} failed: {}",
            last.node,
            last.error.as_deref().unwrap_or("?")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[allow(clippy::too_many_arguments)]
    fn op(
        index: u64,
        f: &str,
        value: Option<&str>,
        start: u64,
        end: u64,
        outcome: Outcome,
        error: Option<&str>,
    ) -> Op {
        Op {
            index,
            workload: "lease".into(),
            process: 0,
            node: 0,
            f: f.into(),
            key: "jepsen/lease/0-0".into(),
            value: value.map(str::to_string),
            expect: None,
            start_ns: start,
            end_ns: end,
            outcome,
            revision: None,
            error: error.map(str::to_string),
            lease: Some(7),
        }
    }

    fn empty_final() -> FinalState {
        FinalState {
            leases: Some(Vec::new()),
            keys: Some(Vec::new()),
            ..Default::default()
        }
    }

    fn base() -> Vec<Op> {
        vec![
            op(0, "grant", Some("3"), 0, S / 10, Outcome::Ok, None),
            op(1, "put", Some("leased"), S / 10, S / 5, Outcome::Ok, None),
            op(2, "keepalive", None, 2 * S, 2 * S + 1000, Outcome::Ok, None),
        ]
    }

    #[test]
    fn kept_alive_key_must_stay() {
        let mut h = base();
        // Inside [0.1 s, 2 s + 3 s - margin]: present is fine, absent is not.
        h.push(op(
            3,
            "read",
            Some("leased"),
            4 * S,
            4 * S + 10,
            Outcome::Ok,
            None,
        ));
        let ok = check(&h, Some(&empty_final()));
        assert!(ok.valid, "{ok:?}");
        assert_eq!(ok.reads_checked, 1);
        h.push(op(
            4,
            "read",
            None,
            4 * S + 20,
            4 * S + 30,
            Outcome::Ok,
            None,
        ));
        let bad = check(&h, Some(&empty_final()));
        assert!(!bad.valid);
        assert_eq!(bad.violations[0].kind, "deleted-while-kept-alive");
    }

    #[test]
    fn expiry_after_the_ttl_and_revokes_are_fine() {
        let mut h = base();
        // After the window (2 s + 3 s): the lease may be gone.
        h.push(op(3, "read", None, 5 * S, 5 * S + 10, Outcome::Ok, None));
        h.push(op(
            4,
            "keepalive",
            None,
            5 * S + 20,
            5 * S + 30,
            Outcome::Fail,
            Some("404 lease_not_found"),
        ));
        assert!(check(&h, Some(&empty_final())).valid);
        let mut h = base();
        h.push(op(
            3,
            "revoke",
            None,
            3 * S,
            3 * S + 10,
            Outcome::Info,
            None,
        ));
        h.push(op(
            4,
            "read",
            None,
            3 * S + 20,
            3 * S + 30,
            Outcome::Ok,
            None,
        ));
        assert!(check(&h, Some(&empty_final())).valid);
    }

    #[test]
    fn rejected_keepalive_inside_the_window() {
        let mut h = base();
        h.push(op(
            3,
            "keepalive",
            None,
            S,
            S + 10,
            Outcome::Fail,
            Some("404 lease_not_found"),
        ));
        let r = check(&h, Some(&empty_final()));
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.violations[0].kind, "rejected-while-alive");
    }

    #[test]
    fn leftover_leases_never_expired() {
        let mut last = empty_final();
        last.leases = Some(vec![(7, 600_000)]);
        let r = check(&base(), Some(&last));
        assert!(!r.valid);
        assert_eq!(r.violations[0].kind, "never-expired");
    }
}
