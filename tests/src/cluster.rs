//! Clusters of `shoal` nodes that find each other by gossip.
//!
//! [`Cluster::builder`] pre-allocates the ports of every node, so that all of
//! them start with the same `--seed` list (every node's gossip address) and
//! `--bootstrap-expect N`, then starts them, optionally in a random order with
//! small random delays. Nodes are addressed by index (`0..len()`), in the
//! order they were created; [`Cluster::add_node`] starts a joiner that only
//! has `--seed`s. Each node is an ordinary [`Node`]: kill, restart, pause and
//! terminate it through [`Cluster::node_mut`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use shoal_client::{Consistency, KeyValue, ListOptions};
use shoal_testkit::ClusterPlan;

use crate::http::{num, Reply};

use crate::node::{Node, NodeBuilder};
use crate::wait_for;

/// How long a cluster may take to form, or to agree on a leader again.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of the harness's own status queries: a paused node must not
/// stall a poll loop.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Options for starting a cluster; see [`Cluster::builder`].
#[derive(Debug)]
pub struct ClusterBuilder {
    size: usize,
    args: Vec<String>,
    env: Vec<(String, String)>,
    random_order: bool,
    otlp: bool,
    /// Per node (by index): extra arguments, extra environment, and the
    /// directory to create its temporary directory in.
    node_args: BTreeMap<usize, Vec<String>>,
    node_env: BTreeMap<usize, Vec<(String, String)>>,
    node_temp_root: BTreeMap<usize, PathBuf>,
}

impl ClusterBuilder {
    /// Extra arguments for every node (also for nodes added later with
    /// [`Cluster::add_node`]).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An extra environment variable for every node.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Starts every node with its OpenTelemetry receivers on fresh ports
    /// (see [`crate::NodeBuilder::otlp`]); they are off otherwise.
    pub fn otlp(mut self) -> Self {
        self.otlp = true;
        self
    }

    /// Extra arguments for node `i` only (kept for its restarts).
    pub fn node_args(mut self, i: usize, args: &[&str]) -> Self {
        assert!(
            i < self.size,
            "node_args: no node {i} in a cluster of {}",
            self.size
        );
        self.node_args
            .entry(i)
            .or_default()
            .extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An extra environment variable for node `i` only (kept for its
    /// restarts); it wins over one of the same name given to every node.
    pub fn node_env(mut self, i: usize, name: &str, value: &str) -> Self {
        assert!(
            i < self.size,
            "node_env: no node {i} in a cluster of {}",
            self.size
        );
        self.node_env
            .entry(i)
            .or_default()
            .push((name.to_string(), value.to_string()));
        self
    }

    /// Runs node `i` with its wall clock `seconds` off (see
    /// [`crate::clock_offset_env`]).
    pub fn node_clock_offset(mut self, i: usize, seconds: i64) -> Self {
        for (name, value) in crate::node::clock_offset_env(seconds) {
            self = self.node_env(i, &name, &value);
        }
        self
    }

    /// Creates node `i`'s temporary directory (data and logs) under `root`,
    /// e.g. [`crate::tmpfs_root`].
    pub fn node_temp_root(mut self, i: usize, root: &std::path::Path) -> Self {
        assert!(
            i < self.size,
            "node_temp_root: no node {i} in a cluster of {}",
            self.size
        );
        self.node_temp_root.insert(i, root.to_path_buf());
        self
    }

    /// Gives node `i` the fixed id `i + 1` (`--node-id`). With
    /// `--bootstrap-expect` the lowest id forms the cluster and is its first
    /// leader, so node 0 leads first.
    pub fn numbered(mut self) -> Self {
        for i in 0..self.size {
            self = self.node_args(i, &["--node-id", &(i + 1).to_string()]);
        }
        self
    }

    /// Starts the nodes in a random order, with a random delay of up to
    /// 400 ms before each. The order is printed to stderr.
    pub fn random_order(mut self) -> Self {
        self.random_order = true;
        self
    }

    /// Starts every node and returns without waiting for the cluster to form
    /// (see [`Cluster::wait_formed`]).
    pub async fn start(self) -> Cluster {
        let plan = crate::node::or_panic(ClusterPlan::new(self.size));
        let mut order: Vec<usize> = (0..self.size).collect();
        let mut delays = vec![Duration::ZERO; self.size];
        if self.random_order {
            // Decided up front: the generator must not live across an await.
            let mut rng = rand::rng();
            order.shuffle(&mut rng);
            for delay in &mut delays {
                *delay = Duration::from_millis(rng.random_range(0..400));
            }
            eprintln!("cluster: starting nodes in the order {order:?} with delays {delays:?}");
        }

        let mut started: Vec<Option<Node>> = (0..self.size).map(|_| None).collect();
        for (position, &i) in order.iter().enumerate() {
            if !delays[position].is_zero() {
                tokio::time::sleep(delays[position]).await;
            }
            let mut builder = NodeBuilder(plan.node(i)).args(&as_strs(&self.args));
            for (name, value) in &self.env {
                builder = builder.env(name, value);
            }
            if let Some(args) = self.node_args.get(&i) {
                builder = builder.args(&as_strs(args));
            }
            for (name, value) in self.node_env.get(&i).into_iter().flatten() {
                builder = builder.env(name, value);
            }
            if let Some(root) = self.node_temp_root.get(&i) {
                builder = builder.temp_root(root);
            }
            if self.otlp {
                builder = builder.otlp();
            }
            started[i] = Some(builder.start_no_wait());
        }
        let nodes: Vec<Node> = started
            .into_iter()
            .map(|n| n.expect("node started"))
            .collect();
        Cluster {
            ids: Mutex::new(vec![None; nodes.len()]),
            name: plan.name,
            nodes,
            args: self.args,
            env: self.env,
            otlp: self.otlp,
        }
    }
}

fn as_strs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

/// One entry of `GET /v1/cluster`'s `members`.
#[derive(Clone, Debug)]
pub struct Member {
    pub node_id: u64,
    pub api: String,
    /// `alive`, `dead`, `left` or `unknown`.
    pub gossip_state: String,
    /// `leader`, `voter`, `learner` or `none` (empty if absent).
    pub raft_role: String,
    pub match_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The whole JSON object.
    pub raw: Value,
}

impl Member {
    /// A voter: raft role `leader` or `voter`.
    pub fn is_voter(&self) -> bool {
        self.raft_role == "leader" || self.raft_role == "voter"
    }

    /// A Raft member of any kind: voter, leader or learner.
    pub fn is_raft_member(&self) -> bool {
        self.is_voter() || self.raft_role == "learner"
    }
}

/// Parses the `members` of a `GET /v1/cluster` body.
pub fn members_of(view: &Value) -> Vec<Member> {
    let members = view["members"]
        .as_array()
        .unwrap_or_else(|| panic!("/v1/cluster without a members array: {view}"));
    members
        .iter()
        .map(|m| Member {
            node_id: m["node_id"]
                .as_u64()
                .unwrap_or_else(|| panic!("member without a numeric node_id: {m}")),
            api: m["api"].as_str().unwrap_or("").to_string(),
            gossip_state: m["gossip_state"].as_str().unwrap_or("").to_string(),
            raft_role: m["raft_role"].as_str().unwrap_or("").to_string(),
            match_index: m["match_index"].as_u64(),
            applied_index: m["applied_index"].as_u64(),
            raw: m.clone(),
        })
        .collect()
}

/// Several `shoal serve` processes forming one cluster. Dropping it kills
/// them all (printing their logs' tails if the test is failing).
pub struct Cluster {
    nodes: Vec<Node>,
    /// Node ids by index, learned from `/v1/status` (they are persisted in
    /// the data directory, so they survive restarts).
    ids: Mutex<Vec<Option<u64>>>,
    /// `--cluster-name`, unique per test cluster.
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Whether nodes get OTLP receivers ([`ClusterBuilder::otlp`]).
    otlp: bool,
}

impl Cluster {
    /// A cluster of `size` nodes, each with `--bootstrap-expect size` and a
    /// `--seed` for every node's gossip address.
    pub fn builder(size: usize) -> ClusterBuilder {
        assert!(size > 0, "a cluster needs at least one node");
        ClusterBuilder {
            size,
            args: Vec::new(),
            env: Vec::new(),
            random_order: false,
            otlp: false,
            node_args: BTreeMap::new(),
            node_env: BTreeMap::new(),
            node_temp_root: BTreeMap::new(),
        }
    }

    /// Starts `size` nodes with `args` and waits until the cluster has formed.
    pub async fn start(size: usize, args: &[&str]) -> Cluster {
        let mut cluster = Cluster::builder(size).args(args).start().await;
        cluster.wait_formed().await;
        cluster
    }

    /// Number of nodes ever started (killed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Indices of the nodes that run and are not paused.
    pub fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_up())
            .collect()
    }

    /// `["--seed", ADDR, ...]` for every node's gossip address.
    pub fn seed_args(&self) -> Vec<String> {
        let mut args = vec!["--cluster-name".to_string(), self.name.clone()];
        for node in &self.nodes {
            args.push("--seed".to_string());
            args.push(node.gossip_addr());
        }
        args
    }

    /// Starts a node that joins the running cluster: `--seed` for every
    /// existing node, the cluster's common arguments and `extra_args`, no
    /// `--bootstrap-expect`. Does not wait for it; returns its index.
    pub fn add_node(&mut self, extra_args: &[&str]) -> usize {
        self.add_node_with(extra_args, &[], true)
    }

    /// Like [`Cluster::add_node`], with extra environment variables, and
    /// with or without the cluster's common arguments and environment.
    pub fn add_node_with(&mut self, args: &[&str], env: &[(&str, &str)], common: bool) -> usize {
        let i = self.nodes.len();
        let mut builder = Node::builder()
            .label(&format!("node {i} (joiner)"))
            .args(&as_strs(&self.seed_args()));
        if common {
            builder = builder.args(&as_strs(&self.args));
            for (name, value) in &self.env {
                builder = builder.env(name, value);
            }
            if self.otlp {
                builder = builder.otlp();
            }
        }
        builder = builder.args(args);
        for (name, value) in env {
            builder = builder.env(name, value);
        }
        self.nodes.push(builder.start_no_wait());
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(None);
        i
    }

    // ----- queries that never panic on an unreachable node -------------

    /// `GET path` on node `i` with a 2 s limit; `Err` if it does not answer.
    pub async fn query(&self, i: usize, path: &str) -> Result<Reply, String> {
        if !self.nodes[i].is_up() {
            return Err(format!("node {i} is not running"));
        }
        self.nodes[i]
            .try_request(Method::GET, path, QUERY_TIMEOUT)
            .await
    }

    /// `GET /v1/status` of node `i` if it answers 200.
    pub async fn status(&self, i: usize) -> Option<Value> {
        match self.query(i, "/v1/status").await {
            Ok(reply) if reply.status == StatusCode::OK => {
                if let Some(id) = reply.body["node_id"].as_u64() {
                    self.ids.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(id);
                }
                Some(reply.body)
            }
            _ => None,
        }
    }

    /// `GET /v1/cluster` of node `i` if it answers 200.
    pub async fn view(&self, i: usize) -> Option<Value> {
        match self.query(i, "/v1/cluster").await {
            Ok(reply) if reply.status == StatusCode::OK => Some(reply.body),
            _ => None,
        }
    }

    /// The members listed by node `i`'s `/v1/cluster`.
    pub async fn members(&self, i: usize) -> Option<Vec<Member>> {
        self.view(i).await.map(|view| members_of(&view))
    }

    /// Whether node `i`'s `/ready` answers 200.
    pub async fn is_ready(&self, i: usize) -> bool {
        matches!(self.query(i, "/ready").await, Ok(r) if r.status == StatusCode::OK)
    }

    /// Node `i`'s id (asked once from `/v1/status`, then remembered).
    pub async fn node_id(&self, i: usize) -> u64 {
        if let Some(id) = self.ids.lock().unwrap_or_else(|e| e.into_inner())[i] {
            return id;
        }
        wait_for(
            FORM_TIMEOUT,
            &format!("the node id of node {i}"),
            || async {
                self.status(i)
                    .await
                    .and_then(|s| s["node_id"].as_u64())
                    .ok_or_else(|| format!("node {i}: /v1/status did not answer"))
            },
        )
        .await
    }

    /// The index of the node with this id, among the ids learned so far.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .position(|known| *known == Some(id))
    }

    /// The node that says it is leader (the highest term wins if a deposed
    /// leader has not noticed yet), among the running, unpaused nodes.
    pub async fn leader_index(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in self.up() {
            let Some(status) = self.status(i).await else {
                continue;
            };
            if status["state"] == "Leader" {
                let term = status["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits until every running, unpaused node is ready and all of them
    /// report the same leader, which is one of them. Returns its index.
    pub async fn wait_formed(&mut self) -> usize {
        let up = self.up();
        self.wait_agreement(&up, FORM_TIMEOUT).await
    }

    /// Waits until the nodes `indices` are all ready and all report the same
    /// leader, one of `indices`. Returns the leader's index.
    pub async fn wait_agreement(&self, indices: &[usize], timeout: Duration) -> usize {
        let what = format!("nodes {indices:?} ready and agreeing on a leader among them");
        wait_for(timeout, &what, || async {
            let mut leader = None;
            let mut seen = Vec::new();
            for &i in indices {
                if !self.is_ready(i).await {
                    return Err(format!("node {i} is not ready; seen so far {seen:?}"));
                }
                let Some(status) = self.status(i).await else {
                    return Err(format!("node {i}: no /v1/status"));
                };
                let Some(l) = status["leader"].as_u64() else {
                    return Err(format!("node {i} knows no leader: {status}"));
                };
                seen.push((i, l, status["term"].as_u64()));
                match leader {
                    None => leader = Some(l),
                    Some(other) if other != l => {
                        return Err(format!("different leaders: {seen:?}"));
                    }
                    Some(_) => {}
                }
            }
            let leader = leader.ok_or_else(|| "no nodes".to_string())?;
            for &i in indices {
                self.node_id(i).await;
            }
            match self.index_of(leader) {
                Some(i) if indices.contains(&i) => Ok(i),
                _ => Err(format!(
                    "the leader {leader} is not one of {indices:?}: {seen:?}"
                )),
            }
        })
        .await
    }

    /// The leader's index once the running nodes agree on one.
    pub async fn wait_leader(&self) -> usize {
        self.wait_agreement(&self.up(), FORM_TIMEOUT).await
    }

    /// `GET /v1/cluster/digest` of node `i`: its own replicated state's
    /// digest (`node_id`, `applied_index`, `applied_term`, `revision`,
    /// `digest`, `records`). `Err` unless it answers 200 with those fields.
    pub async fn digest(&self, i: usize) -> Result<Value, String> {
        let reply = self.query(i, "/v1/cluster/digest").await?;
        parse_digest(i, reply)
    }

    /// Waits (at most `timeout`) until the nodes `indices` report the same
    /// `applied_index` in `/v1/cluster/digest` (read one after the other),
    /// and returns those digests in the order of `indices`. It does not
    /// compare the digests: the caller asserts that they are equal, so that a
    /// difference is reported as such rather than as a timeout. `Err` after
    /// `timeout` with the last observation, or at once if a node answers 404
    /// (it has no such endpoint).
    pub async fn wait_same_applied_digest(
        &self,
        indices: &[usize],
        timeout: Duration,
    ) -> Result<Vec<Value>, String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut digests = Vec::new();
            let mut last = None;
            for &i in indices {
                let reply = self.query(i, "/v1/cluster/digest").await;
                let missing = matches!(&reply, Ok(r) if r.status == StatusCode::NOT_FOUND);
                match reply.and_then(|reply| parse_digest(i, reply)) {
                    Ok(digest) => digests.push(digest),
                    Err(e) if missing => return Err(e),
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                }
            }
            if last.is_none() {
                let applied: Vec<u64> = digests.iter().map(|d| num(d, "/applied_index")).collect();
                if applied.windows(2).all(|w| w[0] == w[1]) {
                    return Ok(digests);
                }
                last = Some(format!("applied indexes {applied:?}; digests {digests:?}"));
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "not at the same applied_index after {timeout:?}; last seen: {}",
                    last.unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every key under `prefix` that node `i` holds, read locally
    /// (`consistency=stale`), as key -> (value, mod_revision); `Err` if the
    /// node does not answer.
    pub async fn stale_kvs(
        &self,
        i: usize,
        prefix: &str,
    ) -> Result<BTreeMap<String, (Vec<u8>, u64)>, String> {
        let kvs = self.list_kvs(i, prefix, Consistency::Stale).await?;
        Ok(kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
            .collect())
    }

    /// Every key under `prefix` on node `i` (and only node `i`), page after
    /// page, with this read consistency; `Err` if the node is down or does
    /// not answer (10 s per page).
    pub async fn list_kvs(
        &self,
        i: usize,
        prefix: &str,
        consistency: Consistency,
    ) -> Result<Vec<KeyValue>, String> {
        let mut kvs = Vec::new();
        let mut options = ListOptions {
            limit: Some(1000),
            consistency,
            ..ListOptions::default()
        };
        loop {
            if !self.nodes[i].is_up() {
                return Err(format!("node {i} is not running"));
            }
            let page = tokio::time::timeout(
                Duration::from_secs(10),
                self.nodes[i].api().list(prefix, &options),
            )
            .await
            .map_err(|_| format!("list on node {i}: no answer within 10 s"))?
            .map_err(|e| format!("list on node {i}: {e}"))?;
            kvs.extend(page.kvs);
            match (page.more, page.next_after) {
                (false, _) => return Ok(kvs),
                (true, Some(after)) => options.after = Some(after),
                (true, None) => return Err(format!("list on node {i}: more without next_after")),
            }
        }
    }

    /// A one-line summary per node, for assertion messages.
    pub async fn describe(&self) -> String {
        let mut out = String::new();
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let state = if node.is_paused() {
                "paused".to_string()
            } else if !node.is_up() {
                format!("down (last exit {:?})", node.last_exit())
            } else {
                match self.status(i).await {
                    Some(s) => format!(
                        "{} id {} term {} leader {} commit {} applied {}",
                        s["state"],
                        s["node_id"],
                        s["term"],
                        s["leader"],
                        s["commit_index"],
                        s["applied_index"]
                    ),
                    None => "not answering".to_string(),
                }
            };
            out.push_str(&format!("  node {i} {}: {state}\n", node.endpoint()));
        }
        out
    }
}

/// Checks a `/v1/cluster/digest` reply of node `i`; see [`Cluster::digest`].
fn parse_digest(i: usize, reply: Reply) -> Result<Value, String> {
    if reply.status != StatusCode::OK {
        return Err(format!(
            "node {i}: /v1/cluster/digest answered {}",
            reply.describe()
        ));
    }
    let body = reply.body;
    for field in [
        "node_id",
        "applied_index",
        "applied_term",
        "revision",
        "records",
    ] {
        if body[field].as_u64().is_none() {
            return Err(format!(
                "node {i}: /v1/cluster/digest without a numeric {field}: {body}"
            ));
        }
    }
    let digest = body["digest"].as_str().unwrap_or("");
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "node {i}: /v1/cluster/digest: digest is not 64 hex digits: {body}"
        ));
    }
    Ok(body)
}
