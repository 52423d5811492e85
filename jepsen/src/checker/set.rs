//! The set workload: unique adds while faults happen, then a final read on
//! every node after healing.
//!
//! - lost: acknowledged adds missing from a final read;
//! - unexpected: elements present that nobody tried to add;
//! - failed-but-present: adds that definitely failed (a 4xx, or a connection
//!   refused before the request was sent) but appear;
//! - vanished: present in an earlier final read, absent from a later one
//!   (the final reads run one after another with no writes in between).
//!
//! Indeterminate adds may appear or not ("recovered" counts those that did).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Op, Outcome};

/// A final read of the whole set on one node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinalRead {
    pub node: usize,
    pub at_ns: u64,
    pub elements: Option<Vec<String>>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SetResult {
    pub valid: bool,
    pub attempted: usize,
    pub acknowledged: usize,
    pub failed: usize,
    pub indeterminate: usize,
    /// Indeterminate adds that turned out to be applied.
    pub recovered: usize,
    pub final_reads_ok: usize,
    /// By node: acknowledged elements missing from that node's final read.
    pub lost: BTreeMap<usize, Vec<String>>,
    pub unexpected: BTreeMap<usize, Vec<String>>,
    pub failed_but_present: BTreeMap<usize, Vec<String>>,
    pub vanished: BTreeMap<usize, Vec<String>>,
    /// The add operations behind every anomaly (history indexes).
    pub anomaly_ops: Vec<u64>,
    pub problems: Vec<String>,
}

pub fn check(history: &[Op], reads: &[FinalRead]) -> SetResult {
    let adds: Vec<&Op> = history
        .iter()
        .filter(|o| o.workload == "set" && o.f == "add")
        .collect();
    let elem = |o: &Op| o.value.clone().unwrap_or_default();
    let by_elem: BTreeMap<String, &Op> = adds.iter().map(|o| (elem(o), *o)).collect();
    let acked: BTreeSet<String> = adds
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .map(|o| elem(o))
        .collect();
    let failed: BTreeSet<String> = adds
        .iter()
        .filter(|o| o.outcome == Outcome::Fail)
        .map(|o| elem(o))
        .collect();
    let info: BTreeSet<String> = adds
        .iter()
        .filter(|o| o.outcome == Outcome::Info)
        .map(|o| elem(o))
        .collect();

    let mut r = SetResult {
        valid: true,
        attempted: adds.len(),
        acknowledged: acked.len(),
        failed: failed.len(),
        indeterminate: info.len(),
        recovered: 0,
        final_reads_ok: 0,
        lost: BTreeMap::new(),
        unexpected: BTreeMap::new(),
        failed_but_present: BTreeMap::new(),
        vanished: BTreeMap::new(),
        anomaly_ops: Vec::new(),
        problems: Vec::new(),
    };
    let mut anomalous: BTreeSet<String> = BTreeSet::new();
    let mut seen_before: BTreeSet<String> = BTreeSet::new();
    let mut recovered: BTreeSet<String> = BTreeSet::new();
    for read in reads {
        let Some(elements) = &read.elements else {
            r.problems.push(format!(
                "the final read on node {} failed: {}",
                read.node,
                read.error.as_deref().unwrap_or("?")
            ));
            continue;
        };
        r.final_reads_ok += 1;
        let present: BTreeSet<String> = elements.iter().cloned().collect();
        let mut note = |map: &mut BTreeMap<usize, Vec<String>>, items: Vec<String>| {
            if !items.is_empty() {
                anomalous.extend(items.iter().cloned());
                map.insert(read.node, items);
            }
        };
        note(&mut r.lost, acked.difference(&present).cloned().collect());
        note(
            &mut r.unexpected,
            present
                .iter()
                .filter(|e| !by_elem.contains_key(*e))
                .cloned()
                .collect(),
        );
        note(
            &mut r.failed_but_present,
            failed.intersection(&present).cloned().collect(),
        );
        note(
            &mut r.vanished,
            seen_before.difference(&present).cloned().collect(),
        );
        if elements.len() != present.len() {
            r.problems.push(format!(
                "node {}: the final read listed some element twice",
                read.node
            ));
        }
        recovered.extend(info.intersection(&present).cloned());
        seen_before.extend(present);
    }
    r.recovered = recovered.len();
    if r.final_reads_ok == 0 {
        r.problems.push("no final read succeeded".into());
    }
    r.anomaly_ops = anomalous
        .iter()
        .filter_map(|e| by_elem.get(e).map(|o| o.index))
        .collect();
    r.valid = r.lost.is_empty()
        && r.unexpected.is_empty()
        && r.failed_but_present.is_empty()
        && r.vanished.is_empty()
        && r.problems.is_empty();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(index: u64, e: &str, outcome: Outcome) -> Op {
        Op {
            index,
            workload: "set".into(),
            process: 0,
            node: 0,
            f: "add".into(),
            key: format!("jepsen/set/{e}"),
            value: Some(e.into()),
            expect: None,
            start_ns: index * 10,
            end_ns: index * 10 + 5,
            outcome,
            revision: None,
            error: None,
            lease: None,
        }
    }

    fn read(node: usize, els: &[&str]) -> FinalRead {
        FinalRead {
            node,
            at_ns: 0,
            elements: Some(els.iter().map(|s| s.to_string()).collect()),
            error: None,
        }
    }

    #[test]
    fn lost_and_phantom_elements() {
        let h = vec![
            add(0, "a", Outcome::Ok),
            add(1, "b", Outcome::Info),
            add(2, "c", Outcome::Ok),
            add(3, "d", Outcome::Fail),
        ];
        let ok = check(&h, &[read(0, &["a", "b", "c"]), read(1, &["a", "b", "c"])]);
        assert!(ok.valid, "{ok:?}");
        assert_eq!(ok.recovered, 1);
        let bad = check(&h, &[read(0, &["a", "b", "c"]), read(1, &["a", "d", "x"])]);
        assert!(!bad.valid);
        assert_eq!(bad.lost[&1], vec!["c".to_string()]);
        assert_eq!(bad.unexpected[&1], vec!["x".to_string()]);
        assert_eq!(bad.failed_but_present[&1], vec!["d".to_string()]);
        assert_eq!(bad.vanished[&1], vec!["b".to_string(), "c".to_string()]);
    }
}
