//! Test support shared by the integration tests (`tests/`), the benchmarks
//! (`bench/`) and the fault-injection harness (`jepsen/`): the process layer
//! only. It finds the `shoal` binary and the tools `./scripts/setup`
//! installs, hands out free local ports, creates temporary (optionally
//! memory-backed) directories, prepares libfaketime environments, and runs
//! processes: [`Process`] is any child with its output in log files, killed
//! when dropped; [`NodeProcess`] is a `shoal serve` (or `shoal dev`) on
//! 127.0.0.1 with its own ports and temporary data directory, which can be
//! waited on until ready (`GET /ready` answers 200), killed with SIGKILL,
//! restarted on the same ports and data, paused (SIGSTOP), resumed
//! (SIGCONT) and terminated (SIGTERM); [`Postgres`] is a PostgreSQL server
//! of a test's own. It does not talk to Shoal's API
//! beyond the readiness check. Every fallible function returns
//! [`anyhow::Result`], with the node's log tail in the error where it helps.
//!
//! The simplest use, in an async test:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let mut node = shoal_testkit::NodeProcess::dev().await?; // ready
//! let url = node.api_url(); // "http://127.0.0.1:PORT"
//! node.kill9();
//! node.restart().await?; // same ports and data directory, ready again
//! let cluster = shoal_testkit::start_cluster(3, &[]).await?; // three ready nodes
//! # let _ = (url, cluster);
//! # Ok(())
//! # }
//! ```

mod cluster;
mod node;
mod postgres;
mod process;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};

pub use cluster::{start_cluster, ClusterPlan};
pub use node::{http_client, NodeBuilder, NodeProcess, Ports, Settings, READY_TIMEOUT};
pub use postgres::{Postgres, PG_PASSWORD, PG_USER};
pub use process::{set_parent_death_signal, Process};

/// Path of something `./scripts/setup` installs under `$HOME/.cache/shoal/`
/// (`relative`), or the path in the environment variable `var` when set.
pub fn setup_tool(var: &str, relative: &str) -> Result<PathBuf> {
    match std::env::var_os(var) {
        Some(path) => Ok(PathBuf::from(path)),
        None => {
            let home =
                std::env::var_os("HOME").ok_or_else(|| anyhow!("neither {var} nor HOME is set"))?;
            Ok(PathBuf::from(home).join(".cache/shoal").join(relative))
        }
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else
/// `$HOME/.cache/shoal/target` (where `scripts/env.sh` puts it).
pub fn target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("neither CARGO_TARGET_DIR nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cache/shoal/target"))
}

/// Path of the `shoal` binary to run: `SHOAL_BIN` if set (it must be a
/// file), else `shoal` next to the running executable (a benchmark in
/// `<target>/<profile>/`) or one directory up (a test in
/// `<target>/<profile>/deps/`), else `<target>/debug/shoal`.
pub fn shoal_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHOAL_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "SHOAL_BIN points to {}, which is not a file",
                path.display()
            );
        }
        return Ok(path);
    }
    let name = format!("shoal{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(&name));
        if let Some(up) = dir.parent() {
            candidates.push(up.join(&name));
        }
    }
    if let Ok(target) = target_dir() {
        candidates.push(target.join("debug").join(&name));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "the shoal binary was not found (looked at {candidates:?}): build it with \
             `cargo build -p shoal` (same CARGO_TARGET_DIR), or set SHOAL_BIN"
            )
        })
}

/// The `shoal` binary for a benchmark, and why that one: `SHOAL_BIN`, else
/// `<target>/release/shoal`, else `<target>/debug/shoal` (see [`target_dir`]).
pub fn shoal_bin_release_first() -> Result<(PathBuf, String)> {
    if let Some(path) = std::env::var_os("SHOAL_BIN").filter(|v| !v.is_empty()) {
        return Ok((PathBuf::from(path), "SHOAL_BIN".into()));
    }
    let target = target_dir()?;
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

/// Lowest port handed out when the ephemeral range leaves room below it.
const FIRST_PORT: u16 = 10_000;

/// A local port that is free for TCP and UDP right now and that no other
/// process using this function holds (so parallel tests, even in separate
/// processes, never get the same port).
///
/// Ports come from below the kernel's ephemeral range: a port from there
/// (what binding port 0 gives) can be taken again, between this check and
/// the node binding it, as the source port of any outgoing connection on the
/// machine; that made nodes fail to start with "Address already in use".
///
/// Each port handed out is reserved until this process exits by an exclusive
/// lock on a file named after it in [`PORT_LOCKS`]: the test runner runs
/// each test in its own process, and two of them drawing the same random port
/// made a node fail to bind it.
pub fn free_port() -> Result<u16> {
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let lock_dir = std::env::temp_dir().join(PORT_LOCKS);
    std::fs::create_dir_all(&lock_dir)
        .with_context(|| format!("cannot create {}", lock_dir.display()))?;
    let below = ephemeral_ports_start();
    loop {
        let port = if below > FIRST_PORT + 1000 {
            rand::random_range(FIRST_PORT..below)
        } else {
            let listener =
                TcpListener::bind("127.0.0.1:0").context("cannot bind a local TCP port")?;
            listener.local_addr().context("local_addr")?.port()
        };
        let lock_path = lock_dir.join(port.to_string());
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        // Held by another process (or already by this one: flock locks
        // belong to the open file, so a second open conflicts too).
        if lock.try_lock().is_err() {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err()
            || UdpSocket::bind(("127.0.0.1", port)).is_err()
        {
            continue;
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
        return Ok(port);
    }
}

/// Directory, under the system's temporary directory, of the lock files that
/// reserve the ports [`free_port`] hands out.
const PORT_LOCKS: &str = "shoal-test-ports";

/// First port of the kernel's range for outgoing connections' source ports.
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A memory-backed (tmpfs) directory for node data, where an fsync costs
/// next to nothing: `/dev/shm` if it is a writable directory, else `None`.
pub fn tmpfs_root() -> Option<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    let probe = tempfile::Builder::new()
        .prefix("shoal-probe-")
        .tempdir_in(&shm)
        .ok()?;
    drop(probe);
    Some(shm)
}

/// A new temporary directory named `prefix...`, under `root` if given (e.g.
/// [`tmpfs_root`]), else in the system's temporary directory. It is removed
/// when the returned value is dropped.
pub fn temp_dir(prefix: &str, root: Option<&Path>) -> Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    match root {
        Some(root) => builder
            .tempdir_in(root)
            .with_context(|| format!("cannot create a temporary directory in {}", root.display())),
        None => builder
            .tempdir()
            .context("cannot create a temporary directory"),
    }
}

/// Where Debian's `libfaketime` package (installed by `scripts/setup`)
/// puts the multi-threaded library.
const LIBFAKETIME: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// The libfaketime library, for a process whose wall clock is off (see
/// [`clock_offset_env`]); the error says what to install if it is missing.
pub fn libfaketime() -> Result<PathBuf> {
    LIBFAKETIME
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "libfaketime is missing (Debian: apt-get install -y faketime, which \
                 ./scripts/setup does); looked in {LIBFAKETIME:?}"
            )
        })
}

/// Environment that runs a process with its wall clock `seconds` ahead (or
/// behind, if negative) under libfaketime. The monotonic clock is left
/// alone, as a real clock step (NTP, an operator) leaves it.
pub fn clock_offset_env(seconds: i64) -> Result<Vec<(String, String)>> {
    Ok(vec![
        (
            "LD_PRELOAD".to_string(),
            libfaketime()?.display().to_string(),
        ),
        ("FAKETIME".to_string(), format!("{seconds:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ])
}

/// Removes the shared memory and semaphore that libfaketime creates for a
/// process it runs in (`/dev/shm/faketime_shm_<pid>`,
/// `/dev/shm/sem.faketime_sem_<pid>`), once the process is gone: a killed
/// process cannot remove them itself, and a later process with the same pid
/// would fail to start.
pub fn remove_faketime_files(pid: u32) {
    for name in [
        format!("faketime_shm_{pid}"),
        format!("sem.faketime_sem_{pid}"),
    ] {
        let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
    }
}

/// Names of the `SHOAL_*` environment variables of this process.
pub fn inherited_shoal_vars() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.to_string_lossy().starts_with("SHOAL_"))
        .collect()
}

/// Removes the inherited `SHOAL_*` variables from `command`'s environment,
/// so that the developer's environment cannot change what is started.
pub fn clear_shoal_env(command: &mut Command) {
    for name in inherited_shoal_vars() {
        command.env_remove(name);
    }
}

/// Removes terminal colour sequences (`ESC [ ... letter`) from log text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `lines` lines of a log file (passed through `clean`, e.g.
/// [`strip_ansi`]), under a header naming the file; only the header if the
/// file cannot be read.
pub fn file_tail(path: &Path, lines: usize, clean: impl Fn(&str) -> String) -> String {
    let content = std::fs::read(path).unwrap_or_default();
    let content = clean(&String::from_utf8_lossy(&content));
    let all: Vec<&str> = content.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last {} lines of {} ---\n{}\n",
        all.len() - start,
        path.display(),
        all[start..].join("\n")
    )
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`
/// after `timeout`. Tests wait for a condition this way, never for a fixed
/// time.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another process opening a handed-out port's lock file cannot take
    /// the lock (an open of our own stands in for it: flock conflicts
    /// between open files, not only between processes).
    #[test]
    fn a_handed_out_port_stays_reserved() -> Result<()> {
        let port = free_port()?;
        let lock_path = std::env::temp_dir().join(PORT_LOCKS).join(port.to_string());
        let other = std::fs::OpenOptions::new().write(true).open(&lock_path)?;
        assert!(other.try_lock().is_err(), "port {port} is not reserved");
        assert_ne!(free_port()?, port);
        Ok(())
    }
}
