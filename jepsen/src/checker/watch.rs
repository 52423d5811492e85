//! The watch workload: every watcher must receive every committed change of
//! the prefix from its start revision, exactly once, in order, across
//! reconnects to other nodes.
//!
//! The reference is the prefix's full change history read after healing
//! (`/v1/watch/poll` from revision 1) from every node; those must agree.
//! Then:
//! - every acknowledged write appears in the reference at its revision, and
//!   every change in the reference comes from a write that was attempted and
//!   did not definitely fail, and was applied once;
//! - each watcher's received sequence equals the reference from its start
//!   revision: no duplicate, nothing out of order, no gap, no phantom or
//!   altered batch, and it reached the end.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::client::Batch;
use crate::history::{Op, Outcome};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reference {
    pub node: usize,
    pub batches: Option<Vec<Batch>>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Received {
    pub at_ns: u64,
    pub node: usize,
    /// The SSE `id:` field.
    pub sse_id: Option<u64>,
    pub batch: Batch,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Connection {
    pub at_ns: u64,
    pub node: usize,
    /// `open`, `open-failed`, `closed`
    pub event: String,
    pub detail: String,
    /// The Last-Event-ID sent (for `open`).
    pub last_event_id: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WatcherLog {
    pub id: usize,
    pub start_revision: u64,
    pub received: Vec<Received>,
    pub connections: Vec<Connection>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WatcherResult {
    pub id: usize,
    pub start_revision: u64,
    pub received: usize,
    pub expected: usize,
    pub reconnects: usize,
    pub nodes_used: Vec<usize>,
    pub valid: bool,
    pub anomalies: Vec<String>,
    /// Around the first anomaly: received batches (revision, node, time) and
    /// the connection events in between.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub window: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WatchResult {
    pub valid: bool,
    pub reference_revisions: usize,
    pub writes_acknowledged: usize,
    pub problems: Vec<String>,
    pub watchers: Vec<WatcherResult>,
}

const MAX_LISTED: usize = 20;

fn push_limited(list: &mut Vec<String>, counter: &mut usize, text: String) {
    *counter += 1;
    if *counter <= MAX_LISTED {
        list.push(text);
    } else if *counter == MAX_LISTED + 1 {
        list.push("... (more omitted)".into());
    }
}

pub fn check(history: &[Op], references: &[Reference], watchers: &[WatcherLog]) -> WatchResult {
    let mut problems = Vec::new();
    let mut n_problems = 0usize;
    let writes: Vec<&Op> = history
        .iter()
        .filter(|o| o.workload == "watch" && o.f == "write")
        .collect();
    let ok_refs: Vec<(usize, &Vec<Batch>)> = references
        .iter()
        .filter_map(|r| r.batches.as_ref().map(|b| (r.node, b)))
        .collect();
    let Some(&(ref_node, reference)) = ok_refs.first() else {
        return WatchResult {
            valid: false,
            reference_revisions: 0,
            writes_acknowledged: 0,
            problems: vec!["no node returned the change history".into()],
            watchers: Vec::new(),
        };
    };

    for r in references.iter().filter(|r| r.batches.is_none()) {
        push_limited(
            &mut problems,
            &mut n_problems,
            format!(
                "node {} did not return the change history: {}",
                r.node,
                r.error.as_deref().unwrap_or("?")
            ),
        );
    }
    // All nodes agree on the history.
    for (node, other) in &ok_refs[1..] {
        if *other != reference {
            let at = reference
                .iter()
                .zip(other.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(reference.len().min(other.len()));
            push_limited(
                &mut problems,
                &mut n_problems,
                format!(
                    "node {node}'s change history differs from node {ref_node}'s at position {at}: {:?} vs {:?} (lengths {} and {})",
                    other.get(at),
                    reference.get(at),
                    other.len(),
                    reference.len()
                ),
            );
        }
    }

    // The reference is well-formed and matches the writes.
    let by_rev: BTreeMap<u64, &Batch> = reference.iter().map(|b| (b.revision, b)).collect();
    if reference.windows(2).any(|w| w[0].revision >= w[1].revision) {
        push_limited(
            &mut problems,
            &mut n_problems,
            "the change history's revisions are not strictly increasing".into(),
        );
    }
    let write_of: HashMap<(&str, &str), &Op> = writes
        .iter()
        .filter_map(|o| o.value.as_deref().map(|v| ((o.key.as_str(), v), *o)))
        .collect();
    let mut applied: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for b in reference {
        for e in &b.events {
            if e.kind != "put" {
                push_limited(
                    &mut problems,
                    &mut n_problems,
                    format!(
                        "revision {}: unexpected {} of {}",
                        b.revision, e.kind, e.key
                    ),
                );
                continue;
            }
            if e.mod_revision != b.revision {
                push_limited(
                    &mut problems,
                    &mut n_problems,
                    format!(
                        "revision {}: event for {} has mod_revision {}",
                        b.revision, e.key, e.mod_revision
                    ),
                );
            }
            let value = e.value.clone().unwrap_or_default();
            match write_of.get(&(e.key.as_str(), value.as_str())) {
                None => push_limited(
                    &mut problems,
                    &mut n_problems,
                    format!(
                        "revision {}: {}={} was never written",
                        b.revision, e.key, value
                    ),
                ),
                Some(op) if op.outcome == Outcome::Fail => push_limited(
                    &mut problems,
                    &mut n_problems,
                    format!(
                        "revision {}: {}={} is from write #{} that definitely failed ({})",
                        b.revision,
                        e.key,
                        value,
                        op.index,
                        op.error.as_deref().unwrap_or("")
                    ),
                ),
                Some(_) => {}
            }
            applied
                .entry((e.key.clone(), value))
                .or_default()
                .push(b.revision);
        }
    }
    for ((key, value), revs) in &applied {
        if revs.len() > 1 {
            push_limited(
                &mut problems,
                &mut n_problems,
                format!(
                    "the write {key}={value} was applied {} times, at revisions {revs:?}",
                    revs.len()
                ),
            );
        }
    }
    let acked: Vec<&&Op> = writes.iter().filter(|o| o.outcome == Outcome::Ok).collect();
    for op in &acked {
        let value = op.value.as_deref().unwrap_or("");
        let found = op.revision.and_then(|r| by_rev.get(&r)).is_some_and(|b| {
            b.events
                .iter()
                .any(|e| e.key == op.key && e.value.as_deref() == Some(value))
        });
        if !found {
            push_limited(
                &mut problems,
                &mut n_problems,
                format!(
                    "acknowledged write #{} {}={} (revision {:?}) is not in the change history at that revision",
                    op.index, op.key, value, op.revision
                ),
            );
        }
    }

    let results: Vec<WatcherResult> = watchers
        .iter()
        .map(|w| check_watcher(w, reference))
        .collect();
    WatchResult {
        valid: problems.is_empty() && results.iter().all(|w| w.valid),
        reference_revisions: reference.len(),
        writes_acknowledged: acked.len(),
        problems,
        watchers: results,
    }
}

fn check_watcher(w: &WatcherLog, reference: &[Batch]) -> WatcherResult {
    let expected: Vec<&Batch> = reference
        .iter()
        .filter(|b| b.revision >= w.start_revision)
        .collect();
    let by_rev: HashMap<u64, &Batch> = expected.iter().map(|b| (b.revision, *b)).collect();
    let mut anomalies = Vec::new();
    let mut count = 0usize;
    let mut first_bad: Option<usize> = None;
    let mut mark =
        |pos: usize, text: String, anomalies: &mut Vec<String>, first_bad: &mut Option<usize>| {
            push_limited(anomalies, &mut count, text);
            first_bad.get_or_insert(pos);
        };

    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut last: Option<u64> = None;
    for (pos, r) in w.received.iter().enumerate() {
        let rev = r.batch.revision;
        if r.sse_id != Some(rev) {
            mark(
                pos,
                format!("batch {rev} came with SSE id {:?}", r.sse_id),
                &mut anomalies,
                &mut first_bad,
            );
        }
        if let Some(prev) = seen.insert(rev, pos) {
            mark(
                pos,
                format!(
                    "revision {rev} delivered twice (#{prev} and #{pos}, the second from node {})",
                    r.node
                ),
                &mut anomalies,
                &mut first_bad,
            );
        } else if last.is_some_and(|l| rev < l) {
            mark(
                pos,
                format!(
                    "revision {rev} delivered after {} (out of order), from node {}",
                    last.unwrap(),
                    r.node
                ),
                &mut anomalies,
                &mut first_bad,
            );
        }
        if rev < w.start_revision {
            mark(
                pos,
                format!(
                    "revision {rev} is before the start revision {}",
                    w.start_revision
                ),
                &mut anomalies,
                &mut first_bad,
            );
        }
        match by_rev.get(&rev) {
            None if rev >= w.start_revision => {
                mark(pos, format!("revision {rev} (from node {}) is not in the committed history", r.node), &mut anomalies, &mut first_bad)
            }
            Some(b) if **b != r.batch => mark(
                pos,
                format!("revision {rev} from node {} differs from the committed change: got {:?}, committed {:?}", r.node, r.batch.events, b.events),
                &mut anomalies,
                &mut first_bad,
            ),
            _ => {}
        }
        last = Some(last.map_or(rev, |l| l.max(rev)));
    }
    // Gaps: committed revisions the watcher skipped or never got to.
    let max_received = last.unwrap_or(0);
    for b in &expected {
        if seen.contains_key(&b.revision) {
            continue;
        }
        if b.revision < max_received {
            // The position where it should have arrived: first received later revision.
            let pos = w
                .received
                .iter()
                .position(|r| r.batch.revision > b.revision)
                .unwrap_or(0);
            mark(
                pos,
                format!(
                    "gap: revision {} was never delivered (later ones were)",
                    b.revision
                ),
                &mut anomalies,
                &mut first_bad,
            );
        } else {
            mark(
                w.received.len().saturating_sub(1),
                format!(
                    "incomplete: revision {} and later were not delivered by the end of the run",
                    b.revision
                ),
                &mut anomalies,
                &mut first_bad,
            );
            break;
        }
    }

    let window = first_bad
        .map(|pos| window_around(w, pos))
        .unwrap_or_default();
    let mut nodes_used: Vec<usize> = w
        .connections
        .iter()
        .filter(|c| c.event == "open")
        .map(|c| c.node)
        .collect();
    nodes_used.sort();
    nodes_used.dedup();
    WatcherResult {
        id: w.id,
        start_revision: w.start_revision,
        received: w.received.len(),
        expected: expected.len(),
        reconnects: w
            .connections
            .iter()
            .filter(|c| c.event == "open")
            .count()
            .saturating_sub(1),
        nodes_used,
        valid: anomalies.is_empty(),
        anomalies,
        window,
    }
}

/// Received batches around position `pos`, interleaved with the
/// connection events of that time span.
fn window_around(w: &WatcherLog, pos: usize) -> Vec<String> {
    let lo = pos.saturating_sub(3);
    let hi = (pos + 4).min(w.received.len());
    let (t0, t1) = match (w.received.get(lo), w.received.get(hi.saturating_sub(1))) {
        (Some(a), Some(b)) => (a.at_ns, b.at_ns),
        _ => (0, u64::MAX),
    };
    let mut lines: Vec<(u64, String)> = Vec::new();
    for (i, r) in w.received.iter().enumerate().take(hi).skip(lo) {
        let mark = if i == pos { "  <== first anomaly" } else { "" };
        lines.push((
            r.at_ns,
            format!(
                "{} received revision {} from node {}{mark}",
                crate::history::secs(r.at_ns),
                r.batch.revision,
                r.node
            ),
        ));
    }
    for c in w
        .connections
        .iter()
        .filter(|c| c.at_ns >= t0.saturating_sub(2_000_000_000) && c.at_ns <= t1)
    {
        lines.push((
            c.at_ns,
            format!(
                "{} {} node {} (Last-Event-ID {:?}) {}",
                crate::history::secs(c.at_ns),
                c.event,
                c.node,
                c.last_event_id,
                c.detail
            ),
        ));
    }
    lines.sort_by_key(|(t, _)| *t);
    lines.into_iter().map(|(_, l)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ChangeEvent;

    fn batch(rev: u64, key: &str, value: &str) -> Batch {
        Batch {
            revision: rev,
            events: vec![ChangeEvent {
                kind: "put".into(),
                key: key.into(),
                value: Some(value.into()),
                mod_revision: rev,
            }],
        }
    }

    fn write(index: u64, key: &str, value: &str, rev: u64) -> Op {
        Op {
            index,
            workload: "watch".into(),
            process: 0,
            node: 0,
            f: "write".into(),
            key: key.into(),
            value: Some(value.into()),
            expect: None,
            start_ns: index,
            end_ns: index + 1,
            outcome: Outcome::Ok,
            revision: Some(rev),
            error: None,
            lease: None,
        }
    }

    fn got(revs: &[(u64, &str)]) -> Vec<Received> {
        revs.iter()
            .map(|(r, v)| Received {
                at_ns: *r,
                node: 0,
                sse_id: Some(*r),
                batch: batch(*r, "jepsen/w/0", v),
            })
            .collect()
    }

    #[test]
    fn gaps_and_duplicates_are_caught() {
        let h = vec![
            write(0, "jepsen/w/0", "a", 1),
            write(1, "jepsen/w/0", "b", 2),
            write(2, "jepsen/w/0", "c", 3),
        ];
        let reference = vec![
            batch(1, "jepsen/w/0", "a"),
            batch(2, "jepsen/w/0", "b"),
            batch(3, "jepsen/w/0", "c"),
        ];
        let refs = vec![Reference {
            node: 0,
            batches: Some(reference.clone()),
            error: None,
        }];
        let good = WatcherLog {
            id: 0,
            start_revision: 2,
            received: got(&[(2, "b"), (3, "c")]),
            connections: vec![],
        };
        let gap = WatcherLog {
            id: 1,
            start_revision: 1,
            received: got(&[(1, "a"), (3, "c")]),
            connections: vec![],
        };
        let dup = WatcherLog {
            id: 2,
            start_revision: 1,
            received: got(&[(1, "a"), (2, "b"), (2, "b"), (3, "c")]),
            connections: vec![],
        };
        let r = check(&h, &refs, &[good, gap, dup]);
        assert!(!r.valid);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(r.watchers[0].valid);
        assert!(
            r.watchers[1].anomalies[0].contains("gap: revision 2"),
            "{:?}",
            r.watchers[1].anomalies
        );
        assert!(
            r.watchers[2].anomalies[0].contains("delivered twice"),
            "{:?}",
            r.watchers[2].anomalies
        );
    }
}
