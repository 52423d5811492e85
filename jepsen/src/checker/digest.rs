//! Replica convergence. Everything a replica applies is decided by the log
//! alone, so two replicas at the same applied index hold the same state: the
//! same `GET /v1/cluster/digest` (a hash of every key with its revisions and
//! value, the history, leases, counters and applied position), revision and
//! record count. After healing, the harness re-reads every node's digest
//! until all of them report the same applied index (or the patience runs
//! out); then they must agree. This is what catches replicas that forked
//! (the same (term, index) holding different entries on different nodes),
//! which no client-visible check needs to see.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One node's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDigest {
    pub node_id: u64,
    pub applied_index: u64,
    pub applied_term: u64,
    pub revision: u64,
    pub digest: String,
    pub records: u64,
}

impl NodeDigest {
    pub fn from_json(v: &Value) -> Result<NodeDigest, String> {
        let field = |name: &str| {
            v[name]
                .as_u64()
                .ok_or_else(|| format!("reply without a numeric `{name}`: {v}"))
        };
        let digest = v["digest"]
            .as_str()
            .filter(|d| d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| format!("reply without a 64-hex-digit `digest`: {v}"))?;
        Ok(NodeDigest {
            node_id: field("node_id")?,
            applied_index: field("applied_index")?,
            applied_term: field("applied_term")?,
            revision: field("revision")?,
            digest: digest.to_string(),
            records: field("records")?,
        })
    }

    fn short(&self) -> String {
        format!(
            "applied {} (term {}), revision {}, records {}, digest {}",
            self.applied_index,
            self.applied_term,
            self.revision,
            self.records,
            &self.digest[..self.digest.len().min(16)]
        )
    }
}

/// One node in one round of reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reading {
    pub node: usize,
    pub digest: Option<NodeDigest>,
    pub error: Option<String>,
}

/// What the harness collected: the last round of reads (the one in which
/// every node reported the same applied index, if that happened).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Collected {
    /// Every node answered and reported the same applied index.
    pub converged: bool,
    pub rounds: usize,
    pub waited_ms: u64,
    pub patience_ms: u64,
    pub readings: Vec<Reading>,
}

impl Collected {
    /// True when every node answered with the same applied index.
    pub fn same_index(readings: &[Reading]) -> bool {
        let mut indexes = readings
            .iter()
            .map(|r| r.digest.as_ref().map(|d| d.applied_index));
        match indexes.next() {
            Some(Some(first)) => indexes.all(|i| i == Some(first)),
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DigestResult {
    pub valid: bool,
    /// The applied index at which every node was compared.
    pub compared_at: Option<u64>,
    pub problems: Vec<String>,
}

/// Nodes at the same applied index must agree on everything; every node
/// must answer and reach the same applied index.
pub fn check(c: &Collected) -> DigestResult {
    let mut problems = Vec::new();
    for r in &c.readings {
        if r.digest.is_none() {
            problems.push(format!(
                "node {} did not answer GET /v1/cluster/digest: {}",
                r.node,
                r.error.as_deref().unwrap_or("?")
            ));
        }
    }
    // Divergence is definite whenever two nodes at the same index differ,
    // converged or not.
    let mut by_index: BTreeMap<u64, Vec<(usize, &NodeDigest)>> = BTreeMap::new();
    for r in &c.readings {
        if let Some(d) = &r.digest {
            by_index
                .entry(d.applied_index)
                .or_default()
                .push((r.node, d));
        }
    }
    for (index, nodes) in &by_index {
        let mut groups: BTreeMap<(&str, u64, u64, u64), Vec<usize>> = BTreeMap::new();
        for (node, d) in nodes {
            groups
                .entry((d.digest.as_str(), d.revision, d.applied_term, d.records))
                .or_default()
                .push(*node);
        }
        if groups.len() > 1 {
            let sides: Vec<String> = groups
                .values()
                .map(|members| {
                    let d = nodes
                        .iter()
                        .find(|(n, _)| *n == members[0])
                        .map(|(_, d)| d.short())
                        .unwrap_or_default();
                    format!("nodes {members:?}: {d}")
                })
                .collect();
            problems.push(format!(
                "replicas DIVERGED at applied index {index}: {}",
                sides.join(" | ")
            ));
        }
    }
    let answered = c.readings.iter().all(|r| r.digest.is_some());
    if answered && !c.converged {
        let at: Vec<String> = c
            .readings
            .iter()
            .filter_map(|r| r.digest.as_ref().map(|d| (r.node, d)))
            .map(|(n, d)| format!("node {n} at {} (term {})", d.applied_index, d.applied_term))
            .collect();
        problems.push(format!(
            "the nodes did not reach the same applied index within {:.0} s: {}",
            c.patience_ms as f64 / 1000.0,
            at.join(", ")
        ));
    }
    let compared_at = (c.converged && problems.is_empty())
        .then(|| by_index.keys().next().copied())
        .flatten();
    DigestResult {
        valid: problems.is_empty(),
        compared_at,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(node: usize, index: u64, digest: char, revision: u64) -> Reading {
        Reading {
            node,
            digest: Some(NodeDigest {
                node_id: node as u64 + 1,
                applied_index: index,
                applied_term: 3,
                revision,
                digest: std::iter::repeat_n(digest, 64).collect(),
                records: 10,
            }),
            error: None,
        }
    }

    fn collected(readings: Vec<Reading>) -> Collected {
        Collected {
            converged: Collected::same_index(&readings),
            rounds: 1,
            waited_ms: 0,
            patience_ms: 30_000,
            readings,
        }
    }

    #[test]
    fn agreeing_replicas_pass() {
        let r = check(&collected(vec![
            reading(0, 9, 'a', 5),
            reading(1, 9, 'a', 5),
        ]));
        assert!(r.valid, "{r:?}");
        assert_eq!(r.compared_at, Some(9));
    }

    #[test]
    fn forks_and_stragglers_fail() {
        let r = check(&collected(vec![
            reading(0, 9, 'a', 5),
            reading(1, 9, 'b', 5),
            reading(2, 9, 'a', 5),
        ]));
        assert!(!r.valid);
        assert!(
            r.problems[0].contains("DIVERGED at applied index 9"),
            "{r:?}"
        );
        assert!(r.problems[0].contains("nodes [1]"), "{r:?}");
        let r = check(&collected(vec![
            reading(0, 9, 'a', 5),
            reading(1, 8, 'a', 4),
        ]));
        assert!(!r.valid);
        assert!(r.problems[0].contains("did not reach the same applied index"));
        let mut missing = collected(vec![reading(0, 9, 'a', 5)]);
        missing.readings.push(Reading {
            node: 1,
            digest: None,
            error: Some("404".into()),
        });
        let r = check(&missing);
        assert!(r.problems[0].contains("node 1 did not answer"));
    }

    #[test]
    fn parses_the_reply() {
        let v = serde_json::json!({"node_id": 1, "applied_index": 2, "applied_term": 1, "revision": 3, "digest": "ab".repeat(32), "records": 4});
        assert_eq!(NodeDigest::from_json(&v).map(|d| d.revision), Ok(3));
        assert!(NodeDigest::from_json(&serde_json::json!({"digest": "x"})).is_err());
    }
}
