//! Linearizability of the register workload: each key is an independent
//! register (read / write / compare-and-set), checked with [`wgl`].
//!
//! How outcomes map to the model:
//! - read ok → "the value is v" (nil when the key is absent); failed reads
//!   are dropped (no side effects);
//! - write ok → set; write fail → dropped; write info → set, at any time
//!   after its call, or never;
//! - cas ok → "value was old", set new; cas fail with `compare_failed` →
//!   "value was not old" (the transaction was evaluated and answered); any
//!   other cas fail → dropped; cas info → if value = old then set new.
//!
//! When a key fails, [`shrink`] finds a minimal failing time window: the
//! window [t0, t1] keeps the operations that lie wholly inside it with their
//! results, turns those that cross its edges into indeterminate ones (reads
//! crossing an edge are dropped), and starts from any state. If the full
//! history were linearizable, every such window would be too, so a window
//! that fails is a self-contained proof of the violation.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::wgl::{self, Entry, Model, Verdict};
use crate::history::{Op, Outcome};

/// Interned value; 0 = nil (key absent).
type Val = u32;

#[derive(Clone, Debug)]
pub enum ROp {
    Read(Val),
    Write(Val),
    Cas(Val, Val),
    CasFailed(Val),
    CasMaybe(Val, Val),
}

pub struct Register;

impl Model for Register {
    type State = Val;
    type Op = ROp;
    fn step(s: &Val, op: &ROp) -> Option<Val> {
        match *op {
            ROp::Read(v) => (v == *s).then_some(*s),
            ROp::Write(v) => Some(v),
            ROp::Cas(old, new) => (old == *s).then_some(new),
            ROp::CasFailed(old) => (old != *s).then_some(*s),
            ROp::CasMaybe(old, new) => Some(if old == *s { new } else { *s }),
        }
    }
}

/// Result for one key.
#[derive(Clone, Debug, Serialize)]
pub struct KeyResult {
    pub key: String,
    pub ops: usize,
    pub indeterminate: usize,
    /// `linearizable`, `not-linearizable` or `unknown` (search budget spent).
    pub verdict: String,
    /// For a failing key: the minimal failing window's operation indexes
    /// (into the history) and bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
    /// History indexes of the operations the window keeps, in start order.
    pub op_indexes: Vec<u64>,
    /// Of those, the ones that cross an edge and were made indeterminate.
    pub relaxed: Vec<u64>,
    /// Whether the window needed the known initial state (nil).
    pub from_initial_state: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegisterResult {
    pub valid: bool,
    pub keys: usize,
    pub ops: usize,
    pub failures: Vec<KeyResult>,
    pub unknown: Vec<KeyResult>,
}

struct Interner(HashMap<String, Val>);

impl Interner {
    fn id(&mut self, v: &Option<String>) -> Val {
        match v {
            None => 0,
            Some(s) => {
                let next = self.0.len() as Val + 1;
                *self.0.entry(s.clone()).or_insert(next)
            }
        }
    }
}

/// The register operations of `history`, grouped by key, in start order.
pub fn by_key(history: &[Op]) -> BTreeMap<String, Vec<Op>> {
    let mut keys: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.workload == "register") {
        keys.entry(op.key.clone()).or_default().push(op.clone());
    }
    for ops in keys.values_mut() {
        ops.sort_by_key(|o| (o.start_ns, o.index));
    }
    keys
}

/// Model operation for a history op restricted to the window [t0, t1]
/// (`None` = dropped). Returns (entry, relaxed).
fn entry_for(op: &Op, vals: &mut Interner, t0: u64, t1: u64) -> Option<(Entry<ROp>, bool)> {
    if op.end_ns < t0 && op.outcome != Outcome::Info {
        return None;
    }
    if op.start_ns > t1 {
        return None;
    }
    let inside = op.start_ns >= t0 && op.end_ns <= t1;
    let relaxed = !inside;
    let outcome = if inside { op.outcome } else { Outcome::Info };
    let definite = |o: ROp| {
        Some((
            Entry {
                op: o,
                call: op.start_ns,
                ret: Some(op.end_ns),
            },
            relaxed,
        ))
    };
    let maybe = |o: ROp| {
        Some((
            Entry {
                op: o,
                call: op.start_ns,
                ret: None,
            },
            relaxed,
        ))
    };
    match (op.f.as_str(), outcome) {
        ("read", Outcome::Ok) => definite(ROp::Read(vals.id(&op.value))),
        ("read", _) => None,
        ("write", Outcome::Ok) => definite(ROp::Write(vals.id(&op.value))),
        ("write", Outcome::Info) => maybe(ROp::Write(vals.id(&op.value))),
        ("write", Outcome::Fail) => None,
        ("cas", o) => {
            let (old, new) = (vals.id(&op.expect), vals.id(&op.value));
            match o {
                Outcome::Ok => definite(ROp::Cas(old, new)),
                Outcome::Fail if op.error.as_deref() == Some("compare_failed") => {
                    definite(ROp::CasFailed(old))
                }
                Outcome::Fail => None,
                Outcome::Info => maybe(ROp::CasMaybe(old, new)),
            }
        }
        _ => None,
    }
}

/// Checks the window [t0, t1] of one key's operations; `initial` = None
/// tries every state.
fn check_window(
    ops: &[Op],
    t0: u64,
    t1: u64,
    from_nil: bool,
    deadline: Option<Instant>,
) -> Verdict {
    let mut vals = Interner(HashMap::new());
    let entries: Vec<Entry<ROp>> = ops
        .iter()
        .filter_map(|o| entry_for(o, &mut vals, t0, t1))
        .map(|(e, _)| e)
        .collect();
    if from_nil {
        return wgl::check::<Register>(&0, &entries, deadline);
    }
    let mut result = Verdict::NotLinearizable;
    for init in 0..=vals.0.len() as Val {
        match wgl::check::<Register>(&init, &entries, deadline) {
            Verdict::Linearizable => return Verdict::Linearizable,
            Verdict::Unknown => result = Verdict::Unknown,
            Verdict::NotLinearizable => {}
        }
    }
    result
}

/// Shrinks a failing key's history to a minimal failing window: first the
/// earliest end t1 such that [start, t1] fails from the initial (nil) state,
/// then the latest start t0 such that [t0, t1] fails from any state.
pub fn shrink(ops: &[Op], budget: Duration) -> Option<Window> {
    let deadline = Some(Instant::now() + budget);
    let first = ops.iter().map(|o| o.start_ns).min()?;
    let mut ends: Vec<u64> = ops.iter().map(|o| o.end_ns).collect();
    ends.sort();
    ends.dedup();
    // Smallest t1 that fails (failure is monotone in t1).
    let fails_to =
        |t1: u64| check_window(ops, first, t1, true, deadline) == Verdict::NotLinearizable;
    let (mut lo, mut hi) = (0usize, ends.len() - 1);
    if !fails_to(ends[hi]) {
        return None;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails_to(ends[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let t1 = ends[hi];
    // Largest t0 that still fails, from any state.
    let mut starts: Vec<u64> = ops
        .iter()
        .map(|o| o.start_ns)
        .filter(|s| *s <= t1)
        .collect();
    starts.sort();
    starts.dedup();
    let fails_from = |i: usize| {
        if i == 0 {
            true // [first, t1] fails from nil, shown above
        } else {
            check_window(ops, starts[i], t1, false, deadline) == Verdict::NotLinearizable
        }
    };
    let (mut lo, mut hi) = (0usize, starts.len() - 1);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fails_from(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let t0 = starts[lo];
    let mut vals = Interner(HashMap::new());
    let mut op_indexes = Vec::new();
    let mut relaxed = Vec::new();
    for op in ops {
        if let Some((_, r)) = entry_for(op, &mut vals, t0, t1) {
            op_indexes.push(op.index);
            if r {
                relaxed.push(op.index);
            }
        }
    }
    Some(Window {
        start_ns: t0,
        end_ns: t1,
        op_indexes,
        relaxed,
        from_initial_state: lo == 0,
    })
}

/// Checks every key. `budget` bounds the search per key.
pub fn check(history: &[Op], budget: Duration) -> RegisterResult {
    let keys = by_key(history);
    let mut failures = Vec::new();
    let mut unknown = Vec::new();
    let mut total = 0;
    for (key, ops) in &keys {
        total += ops.len();
        let deadline = Some(Instant::now() + budget);
        let verdict = check_window(ops, 0, u64::MAX, true, deadline);
        let mut result = KeyResult {
            key: key.clone(),
            ops: ops.len(),
            indeterminate: ops.iter().filter(|o| o.outcome == Outcome::Info).count(),
            verdict: match verdict {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable => "not-linearizable",
                Verdict::Unknown => "unknown",
            }
            .into(),
            window: None,
        };
        match verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                result.window = shrink(ops, budget);
                failures.push(result);
            }
            Verdict::Unknown => unknown.push(result),
        }
    }
    RegisterResult {
        valid: failures.is_empty() && unknown.is_empty(),
        keys: keys.len(),
        ops: total,
        failures,
        unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        index: u64,
        f: &str,
        value: Option<&str>,
        expect: Option<&str>,
        start: u64,
        end: u64,
        outcome: Outcome,
    ) -> Op {
        Op {
            index,
            workload: "register".into(),
            process: index,
            node: 0,
            f: f.into(),
            key: "jepsen/r0".into(),
            value: value.map(str::to_string),
            expect: expect.map(str::to_string),
            start_ns: start,
            end_ns: end,
            outcome,
            revision: None,
            error: (f == "cas" && outcome == Outcome::Fail).then(|| "compare_failed".to_string()),
            lease: None,
        }
    }

    #[test]
    fn linearizable_history_passes() {
        let h = vec![
            op(0, "write", Some("1"), None, 0, 10, Outcome::Ok),
            op(1, "read", Some("1"), None, 20, 30, Outcome::Ok),
            op(2, "cas", Some("2"), Some("1"), 25, 40, Outcome::Ok),
            op(3, "read", Some("1"), None, 26, 27, Outcome::Ok), // before the cas took effect
            op(4, "read", Some("2"), None, 45, 50, Outcome::Ok),
            op(5, "cas", Some("3"), Some("1"), 55, 60, Outcome::Fail), // value was 2: a definite compare failure
            op(6, "read", None, None, 61, 62, Outcome::Fail),          // failed read: ignored
        ];
        let r = check(&h, Duration::from_secs(5));
        assert!(r.valid, "{r:?}");
    }

    #[test]
    fn stale_read_is_caught_and_shrunk() {
        let h = vec![
            op(0, "write", Some("1"), None, 0, 10, Outcome::Ok),
            op(1, "read", Some("1"), None, 15, 18, Outcome::Ok),
            op(2, "write", Some("2"), None, 20, 30, Outcome::Ok),
            op(3, "read", Some("2"), None, 35, 40, Outcome::Ok),
            op(4, "read", Some("1"), None, 45, 50, Outcome::Ok), // stale: 2 was acknowledged
            op(5, "read", Some("1"), None, 55, 60, Outcome::Ok),
            op(6, "write", Some("3"), None, 65, 70, Outcome::Ok),
        ];
        let r = check(&h, Duration::from_secs(5));
        assert!(!r.valid);
        let w = r.failures[0].window.as_ref().expect("a window");
        // The smallest self-contained proof: 2 was read, then 1, with no
        // write that could come in between (all writes ended before).
        assert_eq!(w.op_indexes, vec![3, 4], "{w:?}");
        assert_eq!((w.start_ns, w.end_ns), (35, 50));
    }

    #[test]
    fn indeterminate_write_may_or_may_not_apply() {
        // A timed-out write of 2: readers may see it late, or never.
        let seen_late = vec![
            op(0, "write", Some("1"), None, 0, 10, Outcome::Ok),
            op(1, "write", Some("2"), None, 12, 14, Outcome::Info),
            op(2, "read", Some("1"), None, 20, 25, Outcome::Ok),
            op(3, "read", Some("2"), None, 100, 110, Outcome::Ok),
        ];
        assert!(check(&seen_late, Duration::from_secs(5)).valid);
        let never = vec![
            op(0, "write", Some("1"), None, 0, 10, Outcome::Ok),
            op(1, "write", Some("2"), None, 12, 14, Outcome::Info),
            op(2, "read", Some("1"), None, 100, 110, Outcome::Ok),
        ];
        assert!(check(&never, Duration::from_secs(5)).valid);
        // But a value nobody wrote, or an effect that disappears, is caught.
        let flip_flop = vec![
            op(0, "write", Some("1"), None, 0, 10, Outcome::Ok),
            op(1, "write", Some("2"), None, 12, 14, Outcome::Info),
            op(2, "read", Some("2"), None, 20, 25, Outcome::Ok),
            op(3, "read", Some("1"), None, 30, 35, Outcome::Ok),
        ];
        let r = check(&flip_flop, Duration::from_secs(5));
        assert!(!r.valid);
        assert_eq!(
            r.failures[0].window.as_ref().unwrap().op_indexes,
            vec![1, 2, 3]
        );
        // A definitely failed write must never be seen.
        let failed_write_seen = vec![
            op(0, "write", Some("2"), None, 0, 10, Outcome::Fail),
            op(1, "read", Some("2"), None, 20, 25, Outcome::Ok),
        ];
        assert!(!check(&failed_write_seen, Duration::from_secs(5)).valid);
    }

    /// Brute force: some order of all operations that respects real time
    /// and the model (indeterminate ones have no return, so they can go last).
    fn brute_force(init: Val, entries: &[Entry<ROp>]) -> bool {
        fn go(state: Val, left: &mut Vec<usize>, entries: &[Entry<ROp>]) -> bool {
            if left.is_empty() {
                return true;
            }
            for k in 0..left.len() {
                let i = left[k];
                // i may go next only if no other pending op returned before i was called.
                if left
                    .iter()
                    .any(|&j| j != i && entries[j].ret.is_some_and(|r| r < entries[i].call))
                {
                    continue;
                }
                if let Some(next) = Register::step(&state, &entries[i].op) {
                    left.remove(k);
                    let ok = go(next, left, entries);
                    left.insert(k, i);
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        go(init, &mut (0..entries.len()).collect(), entries)
    }

    #[test]
    fn wgl_agrees_with_brute_force_on_random_histories() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..3000 {
            let n = rng.random_range(1..7);
            let entries: Vec<Entry<ROp>> = (0..n)
                .map(|_| {
                    let call = rng.random_range(0..20);
                    let ret = (rng.random_range(0..5) > 0).then(|| call + rng.random_range(0..8));
                    let v = |rng: &mut StdRng| rng.random_range(0..3);
                    let op = match (rng.random_range(0..4), ret.is_some()) {
                        (0, _) => ROp::Read(v(&mut rng)),
                        (1, true) => ROp::Write(v(&mut rng)),
                        (1, false) => ROp::Write(v(&mut rng)),
                        (2, true) => ROp::Cas(v(&mut rng), v(&mut rng)),
                        (2, false) => ROp::CasMaybe(v(&mut rng), v(&mut rng)),
                        (_, true) => ROp::CasFailed(v(&mut rng)),
                        (_, false) => ROp::CasMaybe(v(&mut rng), v(&mut rng)),
                    };
                    // Reads only make sense with a return.
                    let ret = if matches!(op, ROp::Read(_)) {
                        Some(ret.unwrap_or(call + 1))
                    } else {
                        ret
                    };
                    Entry { op, call, ret }
                })
                .collect();
            let expected = brute_force(0, &entries);
            let got = wgl::check::<Register>(&0, &entries, None) == Verdict::Linearizable;
            assert_eq!(got, expected, "{entries:?}");
            if expected {
                yes += 1
            } else {
                no += 1
            }
        }
        assert!(
            yes > 300 && no > 300,
            "a useful mix: {yes} linearizable, {no} not"
        );
    }

    /// Every window of a linearizable history passes (the shrinker's
    /// windows are sound), and a failing history's shrunk window fails.
    #[test]
    fn windows_are_sound() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(11);
        let (mut checked_ok, mut checked_bad) = (0, 0);
        for _ in 0..1500 {
            let n = rng.random_range(2..8);
            let ops: Vec<Op> = (0..n)
                .map(|i| {
                    let start = rng.random_range(0..30);
                    let end = start + rng.random_range(0..8);
                    let v = |rng: &mut StdRng| Some(rng.random_range(0..3).to_string());
                    let outcome = [Outcome::Ok, Outcome::Ok, Outcome::Info, Outcome::Fail]
                        [rng.random_range(0..4)];
                    match rng.random_range(0..3) {
                        0 => op(
                            i,
                            "read",
                            v(&mut rng).filter(|x| x != "0").as_deref(),
                            None,
                            start,
                            end,
                            Outcome::Ok,
                        ),
                        1 => op(
                            i,
                            "write",
                            v(&mut rng).as_deref(),
                            None,
                            start,
                            end,
                            outcome,
                        ),
                        _ => {
                            let (new, old) = (v(&mut rng), v(&mut rng));
                            op(
                                i,
                                "cas",
                                new.as_deref(),
                                old.as_deref(),
                                start,
                                end,
                                outcome,
                            )
                        }
                    }
                })
                .collect();
            let mut sorted = ops.clone();
            sorted.sort_by_key(|o| (o.start_ns, o.index));
            let whole = check_window(&sorted, 0, u64::MAX, true, None);
            if whole == Verdict::Linearizable {
                for _ in 0..5 {
                    let t0 = rng.random_range(0..35);
                    let t1 = t0 + rng.random_range(0..20);
                    assert_eq!(
                        check_window(&sorted, t0, t1, false, None),
                        Verdict::Linearizable,
                        "[{t0},{t1}] of {sorted:?}"
                    );
                }
                checked_ok += 1;
            } else {
                let w = shrink(&sorted, Duration::from_secs(5))
                    .expect("a failing history has a failing window");
                assert_eq!(
                    check_window(&sorted, w.start_ns, w.end_ns, w.from_initial_state, None),
                    Verdict::NotLinearizable
                );
                checked_bad += 1;
            }
        }
        assert!(
            checked_ok > 100 && checked_bad > 100,
            "{checked_ok} ok, {checked_bad} bad"
        );
    }

    #[test]
    fn failed_cas_is_an_observation() {
        // cas(1→3) answered compare_failed although the value was 1 all along.
        let h = vec![
            op(0, "write", Some("1"), None, 0, 10, Outcome::Ok),
            op(1, "cas", Some("3"), Some("1"), 20, 30, Outcome::Fail),
            op(2, "read", Some("1"), None, 40, 50, Outcome::Ok),
        ];
        assert!(!check(&h, Duration::from_secs(5)).valid);
        // An indeterminate cas may have applied, late.
        let h = vec![
            op(0, "write", Some("1"), None, 0, 10, Outcome::Ok),
            op(1, "cas", Some("3"), Some("1"), 20, 30, Outcome::Info),
            op(2, "read", Some("1"), None, 40, 50, Outcome::Ok),
            op(3, "read", Some("3"), None, 60, 70, Outcome::Ok),
        ];
        assert!(check(&h, Duration::from_secs(5)).valid);
    }
}
