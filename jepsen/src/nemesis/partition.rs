//! Partitions: who drops whose packets for each variant.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::Nemesis;

impl Nemesis {
    /// The partition for `variant`: who drops whose packets.
    pub(super) async fn grudge(
        &self,
        variant: &str,
        rng: &mut StdRng,
    ) -> (Vec<BTreeSet<usize>>, String, Vec<usize>) {
        let n = self.cluster.n;
        let mut nodes: Vec<usize> = (0..n).collect();
        nodes.shuffle(rng);
        let split = |a: &[usize], b: &[usize]| {
            let mut g = vec![BTreeSet::new(); n];
            for &x in a {
                for &y in b {
                    g[x].insert(y);
                    g[y].insert(x);
                }
            }
            g
        };
        match variant {
            "halves" => {
                let (a, b) = nodes.split_at(n / 2);
                (split(a, b), format!("halves {a:?} | {b:?}"), nodes.clone())
            }
            "leader-minority" | "isolate-leader" => {
                let (l, how) = self.leader_or_random(rng).await;
                let minority_size = if variant == "isolate-leader" {
                    1
                } else {
                    (n - 1) / 2
                };
                let mut others: Vec<usize> = nodes.iter().copied().filter(|x| *x != l).collect();
                let mut minority = vec![l];
                minority.extend(others.drain(..minority_size - 1));
                (
                    split(&minority, &others),
                    format!("{minority:?} ({how} in the minority) | {others:?}"),
                    minority,
                )
            }
            "isolate-node" => {
                let (a, b) = nodes.split_at(1);
                (split(a, b), format!("{a:?} | {b:?}"), a.to_vec())
            }
            "bridge" => {
                // Two sides that only the bridge node connects.
                let bridge = nodes[0];
                let rest = &nodes[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                (
                    split(a, b),
                    format!("{a:?} | {b:?}, bridged by {bridge}"),
                    vec![bridge],
                )
            }
            _ => {
                // majorities-ring: each node hears its ring neighbours within
                // distance d — a majority — but no two majorities coincide.
                let d = (n / 2).div_ceil(2);
                let mut g = vec![BTreeSet::new(); n];
                for (p, &x) in nodes.iter().enumerate() {
                    for (q, &y) in nodes.iter().enumerate() {
                        let dist = (p as isize - q as isize).unsigned_abs();
                        if dist.min(n - dist) > d {
                            g[x].insert(y);
                        }
                    }
                }
                (
                    g,
                    format!("ring {nodes:?}, each node hears {d} neighbour(s) each side"),
                    nodes.clone(),
                )
            }
        }
    }
}
