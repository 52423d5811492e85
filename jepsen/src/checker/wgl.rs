//! A Wing–Gong linearizability checker with Lowe's memoisation (the algorithm
//! of Porcupine and Knossos' `wgl`).
//!
//! The history is a list of operations, each with a call time and a return
//! time; an indeterminate operation has no return time (it may take effect at
//! any point after its call, or never). The search walks the time-ordered
//! list of call and return events, tries to linearize each pending call
//! against the model, and backtracks when it meets the return of an
//! operation it has not linearized yet. A cache of (set of linearized
//! operations, model state) prunes configurations already explored.
//!
//! An indeterminate operation is linearized like any other, but since it
//! never returns it can always be placed after everything else, where its
//! effect is invisible: that covers "never happened". So the model only
//! needs to describe what it does if it happens.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Op;
    /// The state after `op`, or `None` if `op` (with its observed result) is
    /// impossible in `state`.
    fn step(state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Entry<O> {
    pub op: O,
    pub call: u64,
    /// `None`: indeterminate, may take effect at any time after `call`.
    pub ret: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search ran out of its time budget.
    Unknown,
}

const NIL: usize = usize::MAX;

/// Doubly linked list of call/return events; node 0 is the head sentinel.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For node k ≥ 1: (operation index, is_call).
    what: Vec<(usize, bool)>,
    /// For an operation: its (call node, return node).
    nodes_of: Vec<(usize, usize)>,
}

impl Events {
    fn build<O>(ops: &[Entry<O>]) -> Events {
        let mut evs: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, e) in ops.iter().enumerate() {
            evs.push((e.call, 0, i));
            // Returns sort after calls at the same instant: touching
            // operations count as concurrent (the lenient reading).
            evs.push((e.ret.unwrap_or(u64::MAX), 1, i));
        }
        evs.sort();
        let len = evs.len() + 1;
        let mut ev = Events {
            next: vec![NIL; len],
            prev: vec![NIL; len],
            what: vec![(0, false); len],
            nodes_of: vec![(0, 0); ops.len()],
        };
        for (k, (_, kind, i)) in evs.iter().enumerate() {
            let node = k + 1;
            ev.what[node] = (*i, *kind == 0);
            if *kind == 0 {
                ev.nodes_of[*i].0 = node;
            } else {
                ev.nodes_of[*i].1 = node;
            }
            ev.prev[node] = k;
            ev.next[k] = node;
        }
        ev
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Removes an operation's call and return from the list.
    fn lift(&mut self, op: usize) {
        let (c, r) = self.nodes_of[op];
        self.unlink(c);
        self.unlink(r);
    }

    /// Undoes `lift` (in LIFO order).
    fn unlift(&mut self, op: usize) {
        let (c, r) = self.nodes_of[op];
        self.relink(r);
        self.relink(c);
    }
}

fn bit_set(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn bit_clear(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

/// Checks `ops` against `M` from `init`. With a `deadline`, gives up with
/// [`Verdict::Unknown`] when it passes.
pub fn check<M: Model>(
    init: &M::State,
    ops: &[Entry<M::Op>],
    deadline: Option<Instant>,
) -> Verdict {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    let mut ev = Events::build(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    // (operation, state before it)
    let mut calls: Vec<(usize, M::State)> = Vec::new();
    let mut state = init.clone();
    // Operations with a return still to be linearized; once none is left the
    // remaining indeterminate ones can all go at the end.
    let mut definite_left = ops.iter().filter(|e| e.ret.is_some()).count();
    let mut entry = ev.next[0];
    let mut steps: u64 = 0;
    while definite_left > 0 {
        steps += 1;
        if steps & 4095 == 0 {
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Verdict::Unknown;
                }
            }
        }
        debug_assert!(entry != NIL, "ran off the event list");
        let (op, is_call) = ev.what[entry];
        if is_call {
            if let Some(next_state) = M::step(&state, &ops[op].op) {
                bit_set(&mut linearized, op);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    calls.push((op, std::mem::replace(&mut state, next_state)));
                    if ops[op].ret.is_some() {
                        definite_left -= 1;
                    }
                    ev.lift(op);
                    entry = ev.next[0];
                    continue;
                }
                bit_clear(&mut linearized, op);
            }
            entry = ev.next[entry];
        } else {
            // The return of an operation not linearized yet: backtrack.
            let Some((op, prev_state)) = calls.pop() else {
                return Verdict::NotLinearizable;
            };
            state = prev_state;
            bit_clear(&mut linearized, op);
            if ops[op].ret.is_some() {
                definite_left += 1;
            }
            ev.unlift(op);
            entry = ev.next[ev.nodes_of[op].0];
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register of small integers; 0 = nil.
    struct Reg;
    #[derive(Debug)]
    enum R {
        Read(u8),
        Write(u8),
    }
    impl Model for Reg {
        type State = u8;
        type Op = R;
        fn step(s: &u8, op: &R) -> Option<u8> {
            match op {
                R::Read(v) => (*v == *s).then_some(*s),
                R::Write(v) => Some(*v),
            }
        }
    }

    fn e(op: R, call: u64, ret: Option<u64>) -> Entry<R> {
        Entry { op, call, ret }
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        // w1 [0,10] concurrent with r→1 [2,3] and r→0 [4,5]: not ok (the read
        // of 1 precedes the read of 0, and nothing writes 0 again).
        let h = vec![
            e(R::Write(1), 0, Some(10)),
            e(R::Read(1), 2, Some(3)),
            e(R::Read(0), 4, Some(5)),
        ];
        assert_eq!(check::<Reg>(&0, &h, None), Verdict::NotLinearizable);
        // The other order is fine.
        let h = vec![
            e(R::Write(1), 0, Some(10)),
            e(R::Read(0), 2, Some(3)),
            e(R::Read(1), 4, Some(5)),
        ];
        assert_eq!(check::<Reg>(&0, &h, None), Verdict::Linearizable);
    }

    #[test]
    fn indeterminate_write_may_apply_late() {
        // An indeterminate write of 2 at t=0; reads at 10 and 20 see 0, then 2.
        let h = vec![
            e(R::Write(2), 0, None),
            e(R::Read(0), 10, Some(11)),
            e(R::Read(2), 20, Some(21)),
        ];
        assert_eq!(check::<Reg>(&0, &h, None), Verdict::Linearizable);
        // But once seen it cannot be unseen without another write.
        let h = vec![
            e(R::Write(2), 0, None),
            e(R::Read(2), 10, Some(11)),
            e(R::Read(0), 20, Some(21)),
        ];
        assert_eq!(check::<Reg>(&0, &h, None), Verdict::NotLinearizable);
    }
}
