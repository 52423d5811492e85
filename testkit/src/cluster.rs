//! Nodes that form one cluster by gossip: [`ClusterPlan`] and
//! [`start_cluster`].

use anyhow::Result;

use crate::node::{NodeBuilder, NodeProcess, Ports};

/// The ports and cluster name of a cluster, decided before any node starts,
/// so that every node can be given every node's gossip address as a seed.
#[derive(Clone, Debug)]
pub struct ClusterPlan {
    /// `--cluster-name`, random: it keeps the cluster apart from the
    /// clusters of tests running beside it, even if a port is reused.
    pub name: String,
    /// The ports of each node, by index.
    pub ports: Vec<Ports>,
}

impl ClusterPlan {
    /// Fresh ports for `size` nodes and a random cluster name.
    pub fn new(size: usize) -> Result<ClusterPlan> {
        let ports = (0..size).map(|_| Ports::free()).collect::<Result<_>>()?;
        Ok(ClusterPlan {
            name: format!("test-{:016x}", rand::random::<u64>()),
            ports,
        })
    }

    /// `--cluster-name NAME` and a `--seed 127.0.0.1:PORT` for every node's
    /// gossip address: what a joining node needs.
    pub fn seed_args(&self) -> Vec<String> {
        let mut args = vec!["--cluster-name".to_string(), self.name.clone()];
        for ports in &self.ports {
            args.push("--seed".to_string());
            args.push(format!("127.0.0.1:{}", ports.gossip));
        }
        args
    }

    /// Options for node `i`: labelled `node i`, on its planned ports, with
    /// [`ClusterPlan::seed_args`] and `--bootstrap-expect SIZE`. Add more
    /// with the builder's methods, then spawn it.
    ///
    /// # Panics
    /// If `i` is not below the plan's size.
    pub fn node(&self, i: usize) -> NodeBuilder {
        NodeProcess::builder()
            .label(&format!("node {i}"))
            .ports(self.ports[i])
            .args(&self.seed_args())
            .args(&["--bootstrap-expect", &self.ports.len().to_string()])
    }
}

/// Starts `size` nodes that form one cluster (see [`ClusterPlan::node`]),
/// each with the extra arguments `args`, and waits until every one is ready.
pub async fn start_cluster(size: usize, args: &[&str]) -> Result<Vec<NodeProcess>> {
    let plan = ClusterPlan::new(size)?;
    let mut nodes = (0..size)
        .map(|i| plan.node(i).args(args).spawn())
        .collect::<Result<Vec<_>>>()?;
    for node in &mut nodes {
        node.wait_ready().await?;
    }
    Ok(nodes)
}
