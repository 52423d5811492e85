//! The Shoal nodes: one `shoal serve` process per network namespace, and the
//! harness's view of them (kill, restart, pause, resume, status, leader),
//! with the debug build's fault hooks (slow fsync, losing unsynced writes)
//! and a per-node wall clock under libfaketime.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shoal_testkit::Process;

use crate::checker::digest::{Collected, NodeDigest, Reading};
use crate::netns::{node_ip, Net};

pub const API_PORT: u16 = 7700;
const RPC_PORT: u16 = 7701;
const GOSSIP_PORT: u16 = 7702;
/// Time limit of the harness's own status queries: a paused node must not
/// stall the nemesis.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Running,
    Paused,
    Killed,
}

struct NodeProc {
    /// The node's process slot: its console log, signals, exit status
    /// (killed when dropped).
    process: Process,
    starts: u32,
}

impl NodeProc {
    fn state(&self) -> NodeState {
        if self.process.pid().is_none() {
            NodeState::Killed
        } else if self.process.is_paused() {
            NodeState::Paused
        } else {
            NodeState::Running
        }
    }
}

/// Debug builds of `shoal` read these at start (release builds ignore them).
/// The Raft log writer sleeps this many ms before every fsync.
pub const ENV_FSYNC_DELAY: &str = "SHOAL_FAULT_LOG_SYNC_DELAY_MS";
/// RocksDB keeps unsynced writes in process memory, so `kill -9` loses what
/// a power cut would.
pub const ENV_LOSE_UNSYNCED: &str = "SHOAL_FAULT_LOSE_UNSYNCED";

/// The libfaketime library, or a clear error.
pub fn find_libfaketime() -> Result<PathBuf> {
    shoal_testkit::libfaketime().context("the clock nemesis needs libfaketime")
}

/// Settings every node gets.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub shoal_bin: PathBuf,
    pub voters: usize,
    pub snapshot_every: u64,
    pub extra_args: Vec<String>,
    /// `SHOAL_FAULT_LOG_SYNC_DELAY_MS` for the nodes that run with a slow
    /// fsync.
    pub fsync_delay_ms: u64,
    /// Nodes started with the slow fsync (the nemesis may change the set).
    pub slow_fsync_nodes: BTreeSet<usize>,
    /// Every node runs with `SHOAL_FAULT_LOSE_UNSYNCED=1`.
    pub lose_unsynced: bool,
    /// Run every node under this libfaketime library, with a clock offset
    /// the nemesis can change while it runs.
    pub libfaketime: Option<PathBuf>,
}

pub struct Cluster {
    pub net: Net,
    pub n: usize,
    settings: NodeSettings,
    data_root: PathBuf,
    log_root: PathBuf,
    procs: Vec<Mutex<NodeProc>>,
    /// Node ids by index (from `/v1/status`; persisted in the data dir).
    ids: Mutex<Vec<Option<u64>>>,
    http: reqwest::Client,
    /// Unexpected exits seen so far: (index, status).
    exits: Mutex<Vec<(usize, String)>>,
    /// Nodes that get the slow fsync at their next start.
    slow_fsync: Mutex<BTreeSet<usize>>,
    /// Clock offsets in seconds (under libfaketime).
    clock_offsets: Mutex<Vec<i64>>,
}

/// `http://10.77.0.1x:7700`
pub fn api_url(i: usize) -> String {
    format!("http://{}:{API_PORT}", node_ip(i))
}

impl Cluster {
    /// Creates the network and starts every node (without waiting).
    pub fn start(
        net: Net,
        settings: NodeSettings,
        data_root: &Path,
        log_root: &Path,
    ) -> Result<Cluster> {
        let n = net.nodes;
        let settings_slow = settings.slow_fsync_nodes.clone();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(QUERY_TIMEOUT)
            .connect_timeout(Duration::from_millis(500))
            .build()?;
        let cluster = Cluster {
            net,
            n,
            settings,
            data_root: data_root.to_path_buf(),
            log_root: log_root.to_path_buf(),
            procs: (0..n)
                .map(|i| {
                    let console = console_log(log_root, i);
                    Mutex::new(NodeProc {
                        process: Process::new(&console, &console),
                        starts: 0,
                    })
                })
                .collect(),
            ids: Mutex::new(vec![None; n]),
            http,
            exits: Mutex::new(Vec::new()),
            slow_fsync: Mutex::new(settings_slow),
            clock_offsets: Mutex::new(vec![0; n]),
        };
        if cluster.settings.libfaketime.is_some() {
            for i in 0..n {
                cluster.set_clock_offset(i, 0)?;
            }
        }
        for i in 0..n {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    fn args(&self, i: usize) -> Vec<String> {
        let ip = node_ip(i);
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            self.data_dir(i).display().to_string(),
            "--api".into(),
            format!("{ip}:{API_PORT}"),
            "--rpc".into(),
            format!("{ip}:{RPC_PORT}"),
            "--gossip".into(),
            format!("{ip}:{GOSSIP_PORT}"),
        ];
        for j in 0..self.n {
            args.push("--seed".into());
            args.push(format!("{}:{GOSSIP_PORT}", node_ip(j)));
        }
        args.extend([
            "--bootstrap-expect".to_string(),
            self.n.to_string(),
            "--voters".into(),
            self.settings.voters.to_string(),
            "--dead-node-grace-secs".into(),
            "10".into(),
            "--request-timeout-ms".into(),
            "2000".into(),
            "--snapshot-every".into(),
            self.settings.snapshot_every.to_string(),
            // The API listens on the namespaces' private addresses; the
            // checker is the only client.
            "--insecure-no-auth".into(),
        ]);
        args.extend(self.settings.extra_args.iter().cloned());
        args
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.data_root.join(format!("n{i}"))
    }

    fn console_log(&self, i: usize) -> PathBuf {
        console_log(&self.log_root, i)
    }

    /// libfaketime's `FAKETIME_TIMESTAMP_FILE` of node `i` (outside its
    /// data directory, which a snapshot may replace).
    fn clock_file(&self, i: usize) -> PathBuf {
        self.log_root.join(format!("n{i}")).join("faketime.rc")
    }

    /// The fault hooks and clock of node `i`'s next start.
    fn fault_env(&self, i: usize) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if self.slow_fsync.lock().unwrap().contains(&i) {
            env.push((
                ENV_FSYNC_DELAY.to_string(),
                self.settings.fsync_delay_ms.to_string(),
            ));
        }
        if self.settings.lose_unsynced {
            env.push((ENV_LOSE_UNSYNCED.to_string(), "1".to_string()));
        }
        if let Some(lib) = &self.settings.libfaketime {
            env.extend([
                ("LD_PRELOAD".to_string(), lib.display().to_string()),
                (
                    "FAKETIME_TIMESTAMP_FILE".to_string(),
                    self.clock_file(i).display().to_string(),
                ),
                // Only the wall clock moves: Raft's timers use the monotonic
                // clock, which a real clock step (NTP, an operator) leaves alone.
                // (libfaketime 0.9.10 then fails absolute monotonic sleeps,
                // clock_nanosleep(TIMER_ABSTIME) and timed waits on monotonic
                // condvars; Rust's std, tokio and RocksDB sleep and wait with
                // relative timeouts, futexes or pthread_cond_clockwait, which
                // work: the nodes keep their normal throughput under it.)
                ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
                // Re-read the file every second.
                ("FAKETIME_CACHE_DURATION".to_string(), "1".to_string()),
            ]);
        }
        env
    }

    /// Gives node `i` the slow fsync (or takes it away) from its next start.
    pub fn set_slow_fsync(&self, i: usize, slow: bool) {
        let mut set = self.slow_fsync.lock().unwrap();
        if slow {
            set.insert(i);
        } else {
            set.remove(&i);
        }
    }

    /// Node `i` gets the slow fsync at its next start only if the run's
    /// settings say so.
    pub fn reset_slow_fsync(&self, i: usize) {
        self.set_slow_fsync(i, self.settings.slow_fsync_nodes.contains(&i));
    }

    pub fn fsync_delay_ms(&self) -> u64 {
        self.settings.fsync_delay_ms
    }

    pub fn loses_unsynced(&self) -> bool {
        self.settings.lose_unsynced
    }

    pub fn has_fake_clock(&self) -> bool {
        self.settings.libfaketime.is_some()
    }

    /// Sets node `i`'s wall clock `secs` away from the real one (it follows
    /// within a second, without a restart).
    pub fn set_clock_offset(&self, i: usize, secs: i64) -> Result<()> {
        if self.settings.libfaketime.is_none() {
            bail!("the nodes do not run under libfaketime");
        }
        let path = self.clock_file(i);
        fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        // Write and rename, so that the node never reads a half-written file.
        let tmp = path.with_extension("rc.tmp");
        fs::write(&tmp, format!("{secs:+}\n"))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        self.clock_offsets.lock().unwrap()[i] = secs;
        Ok(())
    }

    pub fn clock_offsets(&self) -> Vec<i64> {
        self.clock_offsets.lock().unwrap().clone()
    }

    /// Starts node `i` inside its namespace (it must not be running).
    fn spawn(&self, i: usize) -> Result<()> {
        let mut proc_ = self.procs[i].lock().unwrap();
        fs::create_dir_all(self.data_dir(i))?;
        let console = self.console_log(i);
        fs::create_dir_all(console.parent().unwrap())?;
        let args = self.args(i);
        let env = self.fault_env(i);
        let header = format!(
            "=== shoal-jepsen: start #{} of node {i}: {}{} {}",
            proc_.starts + 1,
            env.iter()
                .map(|(k, v)| format!("{k}={v} "))
                .collect::<String>(),
            self.settings.shoal_bin.display(),
            args.join(" ")
        );
        let ns_path = format!("/run/netns/{}", Net::ns_name(&self.net.run_id, i));
        let ns_fd: OwnedFd = File::open(&ns_path)
            .with_context(|| format!("opening {ns_path}"))?
            .into();
        let raw_ns = ns_fd.as_raw_fd();
        let mut cmd = Command::new(&self.settings.shoal_bin);
        cmd.args(&args)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .env_remove("SHOAL_CONFIG")
            .env_remove("SHOAL_CLUSTER_SECRET")
            .env_remove(ENV_FSYNC_DELAY)
            .env_remove(ENV_LOSE_UNSYNCED)
            .envs(env);
        // SAFETY: only async-signal-safe calls (setns, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw_ns, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Die with the harness, whatever kills it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = proc_
            .process
            .start(&mut cmd, &header)
            .with_context(|| format!("starting {}", self.settings.shoal_bin.display()));
        drop(ns_fd);
        started?;
        proc_.starts += 1;
        Ok(())
    }

    pub fn state(&self, i: usize) -> NodeState {
        self.procs[i].lock().unwrap().state()
    }

    /// `kill -9`. Returns false if the node was not running.
    pub fn kill(&self, i: usize) -> bool {
        !self.kill_all_of(&[i]).is_empty()
    }

    /// `kill -9` of several nodes at the same moment (every signal is sent
    /// before the first exit is awaited). Returns the nodes that were running.
    pub fn kill_all_of(&self, nodes: &[usize]) -> Vec<usize> {
        let nodes: BTreeSet<usize> = nodes.iter().copied().filter(|i| *i < self.n).collect();
        let mut guards: Vec<_> = nodes
            .iter()
            .map(|i| (*i, self.procs[*i].lock().unwrap()))
            .collect();
        let mut killed = Vec::new();
        for (i, p) in guards.iter_mut() {
            if p.process.pid().is_some() {
                let _ = p.process.signal(libc::SIGKILL);
                killed.push(*i);
            }
        }
        for (_, p) in guards.iter_mut() {
            // Reaps the process (and removes libfaketime's files).
            p.process.kill9();
        }
        killed
    }

    /// Restarts a killed node with the same flags and data.
    pub fn restart(&self, i: usize) -> Result<()> {
        if self.procs[i].lock().unwrap().process.pid().is_some() {
            return Ok(());
        }
        self.spawn(i)
    }

    /// SIGSTOP. Returns false if the node was not running.
    pub fn pause(&self, i: usize) -> bool {
        let mut p = self.procs[i].lock().unwrap();
        p.state() == NodeState::Running && p.process.pause().is_ok()
    }

    /// SIGCONT. Returns false if the node was not paused.
    pub fn resume(&self, i: usize) -> bool {
        let mut p = self.procs[i].lock().unwrap();
        p.state() == NodeState::Paused && p.process.resume().is_ok()
    }

    /// Notices nodes that exited without being killed by the nemesis (a crash
    /// or a self-shutdown), records them, and returns the new ones.
    pub fn reap_unexpected_exits(&self) -> Vec<(usize, String)> {
        let mut new = Vec::new();
        for i in 0..self.n {
            let mut p = self.procs[i].lock().unwrap();
            // Reaps an exited process (and removes libfaketime's files).
            if let Ok(Some(status)) = p.process.try_exit() {
                new.push((i, status.to_string()));
            }
        }
        self.exits.lock().unwrap().extend(new.iter().cloned());
        new
    }

    pub fn unexpected_exits(&self) -> Vec<(usize, String)> {
        self.exits.lock().unwrap().clone()
    }

    /// Kills every node (end of run).
    pub fn stop_all(&self) {
        for i in 0..self.n {
            self.resume(i);
            self.kill(i);
        }
    }

    /// Copies the nodes' own log files (DATA_DIR/logs) next to the console logs.
    pub fn copy_logs(&self) {
        for i in 0..self.n {
            let src = self.data_dir(i).join("logs");
            let dst = self.log_root.join(format!("n{i}"));
            if let Ok(entries) = fs::read_dir(&src) {
                for entry in entries.flatten() {
                    let _ = fs::copy(entry.path(), dst.join(entry.file_name()));
                }
            }
        }
    }

    // ----- queries ----------------------------------------------------------

    pub async fn get_json(&self, i: usize, path: &str) -> Option<(u16, Value)> {
        let resp = self
            .http
            .get(format!("{}{path}", api_url(i)))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.ok()?;
        Some((status, body))
    }

    pub async fn post_json(&self, i: usize, path: &str, body: &Value) -> Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", api_url(i)))
            .timeout(Duration::from_secs(5))
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// `GET /v1/cluster/digest`: the node's own replicated state in one hash.
    pub async fn digest(&self, i: usize) -> std::result::Result<Value, String> {
        let resp = self
            .http
            .get(format!("{}/v1/cluster/digest", api_url(i)))
            .send()
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("{status}: {e}"))?;
        if status != 200 {
            let text: String = text.chars().take(200).collect();
            return Err(format!("{status} {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("unreadable reply ({e}): {text}"))
    }

    /// Every node's digest, re-read until all of them report the same
    /// applied index or `patience` runs out (then the last round).
    pub async fn converged_digests(&self, patience: Duration) -> Collected {
        let start = Instant::now();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let readings: Vec<Reading> =
                futures::future::join_all((0..self.n).map(|i| async move {
                    match self.digest(i).await.and_then(|v| NodeDigest::from_json(&v)) {
                        Ok(d) => Reading {
                            node: i,
                            digest: Some(d),
                            error: None,
                        },
                        Err(e) => Reading {
                            node: i,
                            digest: None,
                            error: Some(e),
                        },
                    }
                }))
                .await;
            let converged = Collected::same_index(&readings);
            if converged || start.elapsed() >= patience {
                return Collected {
                    converged,
                    rounds,
                    waited_ms: start.elapsed().as_millis() as u64,
                    patience_ms: patience.as_millis() as u64,
                    readings,
                };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn status(&self, i: usize) -> Option<Value> {
        match self.get_json(i, "/v1/status").await {
            Some((200, v)) => {
                if let Some(id) = v["node_id"].as_u64() {
                    self.ids.lock().unwrap()[i] = Some(id);
                }
                Some(v)
            }
            _ => None,
        }
    }

    pub fn node_ids(&self) -> Vec<Option<u64>> {
        self.ids.lock().unwrap().clone()
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.lock().unwrap().iter().position(|x| *x == Some(id))
    }

    /// The statuses of all nodes, queried concurrently.
    pub async fn statuses(&self) -> Vec<Option<Value>> {
        futures::future::join_all((0..self.n).map(|i| self.status(i))).await
    }

    /// The current leader's index, as reported by the reachable node with
    /// the highest term.
    pub async fn leader(&self) -> Option<usize> {
        let statuses = self.statuses().await;
        let best = statuses
            .iter()
            .flatten()
            .filter(|s| s["leader"].as_u64().is_some())
            .max_by_key(|s| s["term"].as_u64().unwrap_or(0))?;
        self.index_of(best["leader"].as_u64()?)
    }

    /// Raft roles by node index from the leader's `/v1/cluster` view.
    pub async fn membership(&self) -> Option<BTreeMap<usize, String>> {
        let leader = self.leader().await?;
        let (status, view) = self.get_json(leader, "/v1/cluster").await?;
        if status != 200 {
            return None;
        }
        let mut roles = BTreeMap::new();
        for m in view["members"].as_array()? {
            if let (Some(id), Some(role)) = (m["node_id"].as_u64(), m["raft_role"].as_str()) {
                if let Some(i) = self.index_of(id) {
                    roles.insert(i, role.to_string());
                }
            }
        }
        Some(roles)
    }

    /// Waits until every node is ready and the leader counts every node as a
    /// Raft member, with `voters` voters. Returns how long it took, or the
    /// last thing that was missing.
    pub async fn wait_healthy(&self, timeout: Duration) -> std::result::Result<Duration, String> {
        let start = Instant::now();
        let mut missing;
        loop {
            missing = self.health_problem().await;
            match &missing {
                None => return Ok(start.elapsed()),
                Some(_) if start.elapsed() >= timeout => break,
                Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        Err(missing.unwrap_or_default())
    }

    async fn health_problem(&self) -> Option<String> {
        for (i, s) in self.statuses().await.iter().enumerate() {
            if s.is_none() {
                return Some(format!("node {i} does not answer /v1/status"));
            }
        }
        for i in 0..self.n {
            match self.get_json(i, "/ready").await {
                Some((200, _)) => {}
                other => return Some(format!("node {i} not ready: {:?}", other.map(|o| o.1))),
            }
        }
        let Some(roles) = self.membership().await else {
            return Some("no leader view of the membership".into());
        };
        let voters = roles
            .values()
            .filter(|r| *r == "leader" || *r == "voter")
            .count();
        let members = roles.values().filter(|r| *r != "none").count();
        let want_voters = self.settings.voters.min(self.n);
        if voters != want_voters || members != self.n {
            return Some(format!(
                "membership not restored yet: {roles:?} (want {want_voters} voters, {} members)",
                self.n
            ));
        }
        None
    }

    /// Ensures all node ids are known (after formation).
    pub async fn learn_ids(&self) -> Result<()> {
        self.statuses().await;
        if let Some(i) = self.node_ids().iter().position(Option::is_none) {
            bail!("node {i} did not report its id");
        }
        Ok(())
    }
}

/// Node `i`'s console log (stdout and stderr) under `log_root`.
fn console_log(log_root: &Path, i: usize) -> PathBuf {
    log_root.join(format!("n{i}")).join("console.log")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
