//! The node under test: finding the binary, spawning it on 127.0.0.1 with a
//! temporary data dir, waiting for readiness, reading its memory from /proc,
//! and killing it on every way out.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Which shoal binary to run, and why that one.
pub fn resolve_binary(flag: Option<PathBuf>) -> anyhow::Result<(PathBuf, String)> {
    if let Some(path) = flag {
        return Ok((path, "--shoal-bin".into()));
    }
    if let Some(path) = std::env::var_os("SHOAL_BIN").filter(|v| !v.is_empty()) {
        return Ok((PathBuf::from(path), "SHOAL_BIN".into()));
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home =
                std::env::var_os("HOME").context("neither CARGO_TARGET_DIR nor HOME is set")?;
            PathBuf::from(home).join(".cache/shoal/target")
        }
    };
    let release = target.join("release/shoal");
    if release.is_file() {
        return Ok((release, "release build".into()));
    }
    let debug = target.join("debug/shoal");
    if debug.is_file() {
        return Ok((debug, "debug build (no release build found)".into()));
    }
    bail!(
        "no shoal binary at {} or {}; build one or pass --shoal-bin",
        release.display(),
        debug.display()
    )
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

pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Start `command` with stdin closed and stdout/stderr appended to `log`. The
/// child is started with `PR_SET_PDEATHSIG=SIGKILL`: if the bench dies without
/// running its destructors (SIGKILL, abort), the kernel kills the child too.
pub fn spawn_logged(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .context("creating a process log")?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .spawn()
        .with_context(|| format!("starting {program}"))
}

/// A spawned shoal node. Dropping it kills the process, then removes the data dir.
pub struct Node {
    child: Option<Child>,
    pub pid: u32,
    pub api: String,
    #[allow(dead_code)] // log-bench only
    data_dir: PathBuf,
    log_path: PathBuf,
    // Dropped after `Drop::drop` has killed the process.
    _dir: tempfile::TempDir,
}

impl Node {
    /// A single node (it forms a one-node cluster of its own).
    pub fn spawn(binary: &Path) -> anyhow::Result<Node> {
        Node::spawn_with(binary, (free_port()?, free_port()?, free_port()?), &[])
    }

    /// A node on the given (api, rpc, gossip) ports, with extra `serve` flags.
    pub fn spawn_with(
        binary: &Path,
        ports: (u16, u16, u16),
        extra: &[String],
    ) -> anyhow::Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-")
            .tempdir()
            .context("creating a temp dir")?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("node.log");
        let (api, rpc, gossip) = ports;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--api", &format!("127.0.0.1:{api}")])
            .args(["--rpc", &format!("127.0.0.1:{rpc}")])
            .args(["--gossip", &format!("127.0.0.1:{gossip}")])
            .args(extra);
        // The node takes its settings from our flags only.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SHOAL_") {
                command.env_remove(name);
            }
        }
        let child = spawn_logged(&mut command, &log_path)?;
        let pid = child.id();
        Ok(Node {
            child: Some(child),
            pid,
            api: format!("http://127.0.0.1:{api}"),
            data_dir,
            log_path,
            _dir: dir,
        })
    }

    /// `n` nodes that find each other through gossip (each names all of them
    /// as seeds) and bootstrap one cluster once all `n` are up. `extra` is
    /// passed to every node. The cluster name is unique to this process, so it
    /// cannot merge with another cluster that reuses a port.
    #[allow(dead_code)] // msg-bench only
    pub fn spawn_cluster(binary: &Path, n: usize, extra: &[String]) -> anyhow::Result<Vec<Node>> {
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let mut flags = vec![
            "--bootstrap-expect".to_string(),
            n.to_string(),
            "--cluster-name".to_string(),
            format!("bench-{}", std::process::id()),
        ];
        for (_, _, gossip) in &ports {
            flags.push("--seed".into());
            flags.push(format!("127.0.0.1:{gossip}"));
        }
        flags.extend(extra.iter().cloned());
        ports
            .into_iter()
            .map(|p| Node::spawn_with(binary, p, &flags))
            .collect()
    }

    /// Wait until `GET /ready` is 200, the process dies, or `timeout` passes.
    pub async fn wait_ready(
        &mut self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let url = format!("{}/ready", self.api);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("the node exited before it was ready ({status})");
                }
            }
            if let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(2), client.get(&url).send()).await
            {
                if resp.status().is_success() {
                    return Ok(started.elapsed());
                }
            }
            if started.elapsed() > timeout {
                bail!("the node was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node's `--data-dir`.
    #[allow(dead_code)] // log-bench only
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last `lines` lines of the node's stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(mut file) = File::open(&self.log_path) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let text = strip_ansi(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Count log lines at WARN or ERROR level (the node's console format).
    pub fn log_warnings(&self) -> Vec<String> {
        let text = strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default());
        text.lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM, up to `grace` for a clean exit, then SIGKILL. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> String {
        let Some(mut child) = self.child.take() else {
            return "already stopped".into();
        };
        if let Ok(Some(status)) = child.try_wait() {
            return format!("had already exited ({status})");
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                return format!(
                    "exited after SIGTERM in {} ms ({status})",
                    started.elapsed().as_millis()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        format!(
            "did not exit within {} ms of SIGTERM; killed (SIGKILL)",
            grace.as_millis()
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The node colours its console log even when it is not a terminal.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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
