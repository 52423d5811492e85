//! The node under test: finding the binary, spawning it on 127.0.0.1 with a
//! temporary data dir (through `shoal-testkit`), waiting for readiness,
//! reading its memory from /proc, and killing it on every way out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use shoal_testkit::{set_parent_death_signal, strip_ansi, ClusterPlan, NodeProcess, Process};

/// Which shoal binary to run, and why that one.
pub fn resolve_binary(flag: Option<PathBuf>) -> anyhow::Result<(PathBuf, String)> {
    if let Some(path) = flag {
        return Ok((path, "--shoal-bin".into()));
    }
    shoal_testkit::shoal_bin_release_first()
}

/// Raise the soft open-files limit to the hard limit. Returns (soft, hard)
/// after the attempt. A child spawned afterwards inherits the raised limit.
pub fn raise_fd_limit() -> (u64, u64) {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, 0);
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        (lim.rlim_cur, lim.rlim_max)
    }
}

/// Start `command` with stdin closed and stdout/stderr appended to `log`. The
/// child is started with `PR_SET_PDEATHSIG=SIGKILL`: if the bench dies without
/// running its destructors (SIGKILL, abort), the kernel kills the child too.
/// Dropping the returned process kills it.
#[allow(dead_code)] // msg-bench only
pub fn spawn_logged(command: &mut Command, log: &Path) -> anyhow::Result<Process> {
    set_parent_death_signal(command);
    let mut process = Process::new(log, log);
    process.start(command, "")?;
    Ok(process)
}

/// A spawned shoal node. Dropping it kills the process, then removes the data dir.
pub struct Node {
    process: NodeProcess,
    pub pid: u32,
    pub api: String,
}

impl Node {
    /// A single node (it forms a one-node cluster of its own).
    pub fn spawn(binary: &Path) -> anyhow::Result<Node> {
        Node::start(bench_node(binary))
    }

    /// A node on fresh ports, with extra `serve` flags; with `ca_pem`, its
    /// API is https with a certificate of that CA.
    #[allow(dead_code)] // log-bench and msg-bench only
    pub fn spawn_with(
        binary: &Path,
        extra: &[String],
        ca_pem: Option<&[u8]>,
    ) -> anyhow::Result<Node> {
        let builder = bench_node(binary).args(extra);
        Node::start(match ca_pem {
            Some(pem) => builder.https(pem),
            None => builder,
        })
    }

    fn start(builder: shoal_testkit::NodeBuilder) -> anyhow::Result<Node> {
        let process = builder.spawn()?;
        let pid = process.pid().context("the node is not running")?;
        Ok(Node {
            api: process.api_url(),
            pid,
            process,
        })
    }

    /// `n` nodes that find each other through gossip (each names all of them
    /// as seeds) and bootstrap one cluster once all `n` are up. `extra` is
    /// passed to every node; with `ca_pem`, their APIs are https with
    /// certificates of that CA. The cluster name is unique to this cluster,
    /// so it cannot merge with another cluster that reuses a port.
    #[allow(dead_code)] // msg-bench and wf-bench only
    pub fn spawn_cluster(
        binary: &Path,
        n: usize,
        extra: &[String],
        ca_pem: Option<&[u8]>,
    ) -> anyhow::Result<Vec<Node>> {
        let plan = ClusterPlan::new(n)?;
        (0..n)
            .map(|i| {
                let builder = bench_node(binary)
                    .ports(plan.ports[i])
                    .args(&plan.seed_args())
                    .args(&["--bootstrap-expect", &n.to_string()])
                    .args(extra);
                Node::start(match ca_pem {
                    Some(pem) => builder.https(pem),
                    None => builder,
                })
            })
            .collect()
    }

    /// Wait until `GET /ready` is 200, the process dies, or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        self.process.wait_ready_within(timeout).await
    }

    /// The node's `--data-dir`.
    #[allow(dead_code)] // log-bench only
    pub fn data_dir(&self) -> &Path {
        self.process.data_dir()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.process.is_running()
    }

    /// The last `lines` lines of the node's stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Count log lines at WARN or ERROR level (the node's console format).
    pub fn log_warnings(&self) -> Vec<String> {
        let (stdout, stderr) = self.process.process().log_paths();
        [stdout, stderr]
            .iter()
            .flat_map(|path| {
                strip_ansi(&std::fs::read_to_string(path).unwrap_or_default())
                    .lines()
                    .filter(|l| {
                        l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked")
                    })
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// SIGTERM, up to `grace` for a clean exit, then SIGKILL. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> String {
        self.process.stop(grace)
    }
}

/// A bench node: `shoal serve` with the binary under test, its settings from
/// flags only (OTLP receivers as the node has them by default), killed by
/// the kernel if the bench dies.
/// Every client of a bench is on 127.0.0.1, and watch-bench alone holds
/// 10 000 connections: the per-address limit would refuse them.
fn bench_node(binary: &Path) -> shoal_testkit::NodeBuilder {
    NodeProcess::builder()
        .binary(binary)
        .temp_prefix("shoal-bench-")
        .otlp_node_default()
        .die_with_parent()
        .env("SHOAL_MAX_CONNECTIONS_PER_CLIENT", "65536")
        .env("SHOAL_MAX_CONNECTIONS", "65536")
}

/// Figures from /proc/PID/status and /proc/PID/fd.
#[derive(Clone, Copy, Default)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

impl ProcStats {
    pub fn read(pid: u32) -> Option<ProcStats> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Some(ProcStats {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            threads: field("Threads:"),
            fds,
        })
    }

    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    pub fn hwm_mib(&self) -> f64 {
        self.hwm_kib as f64 / 1024.0
    }
}
