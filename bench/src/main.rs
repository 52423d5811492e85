//! watch-bench: many concurrent SSE watches on one Shoal node.
//!
//! Scenario 1 ("one watch per key"): N connections, connection i watching the
//! single key `bench/w/{i}`; then W writes (values are sequence numbers) to
//! random watched keys from C concurrent writers. Each write must wake exactly
//! the one watcher of its key, exactly once; the write-to-event latency is the
//! time from just before the PUT is sent to the moment the watcher reads the
//! event from its socket.
//!
//! Scenario 2 ("fanout"): K more connections all watching the prefix
//! `bench/fan/` (scenario 1's watches stay open), then writes to
//! `bench/fan/x` one at a time; for each write, the time until the last of
//! the K watchers has it.
//!
//! See bench/README.md.

mod node;
#[path = "watch_report.rs"]
mod report;
#[path = "watch_scenarios.rs"]
mod scenarios;
#[path = "watch_sinks.rs"]
mod sinks;
mod sse;
mod stats;
#[path = "watch_status.rs"]
mod status;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use crate::node::{Node, ProcStats};
use crate::report::Report;
use crate::scenarios::run;
use crate::watch::Problems;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "watch-bench",
    about = "Write-to-event latency with many concurrent watches on one Shoal node"
)]
struct Args {
    /// shoal binary to spawn [default: $SHOAL_BIN, else
    /// ${CARGO_TARGET_DIR:-$HOME/.cache/shoal/target}/release/shoal, else .../debug/shoal].
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// Use this already running node (http://127.0.0.1:PORT) instead of spawning one.
    #[arg(long)]
    endpoint: Option<String>,
    /// Scenario 1: watch connections, connection i on key bench/w/{i}.
    #[arg(long, default_value_t = 10_000)]
    watches: usize,
    /// Scenario 1: writes, each to a random watched key.
    #[arg(long, default_value_t = 2_000)]
    writes: usize,
    /// Scenario 1: concurrent writers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Scenario 2: watchers on the prefix bench/fan/ (0 skips the scenario).
    #[arg(long, default_value_t = 1_000)]
    fanout: usize,
    /// Scenario 2: writes to bench/fan/x, one at a time.
    #[arg(long, default_value_t = 50)]
    fanout_writes: usize,
    /// Watch connections being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Limit for opening all the watches of a scenario (until the node reports them registered).
    #[arg(long, default_value_t = 300)]
    connect_timeout_secs: u64,
    /// After the last write, how long to wait for outstanding events.
    #[arg(long, default_value_t = 15)]
    settle_secs: u64,
    /// The whole run stops (node killed, exit code 2) after this long.
    #[arg(long, default_value_t = 900)]
    deadline_secs: u64,
    /// Seed for choosing which key each write goes to.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

// ---------------------------------------------------------------- the run

struct Target {
    api: String,
    node: Option<Node>,
}

impl Target {
    fn proc(&self) -> Option<ProcStats> {
        self.node.as_ref().and_then(|n| ProcStats::read(n.pid))
    }
}

/// Only 127.0.0.1 is allowed.
fn local_endpoint(url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("bad --endpoint {url:?}"))?;
    match parsed.host_str() {
        Some("127.0.0.1") | Some("localhost") => {}
        other => bail!("--endpoint must be on 127.0.0.1 (got host {other:?})"),
    }
    if parsed.scheme() != "http" {
        bail!("--endpoint must be http:// (the bench has no TLS)");
    }
    let port = parsed.port().unwrap_or(80);
    Ok(format!("http://127.0.0.1:{port}"))
}

async fn start(args: &Args, report: &mut Report) -> anyhow::Result<Target> {
    let (soft, hard) = node::raise_fd_limit();
    let needed = (args.watches + args.fanout + args.concurrency + 256) as u64;
    report.row(
        "open files limit",
        format!("soft {soft}, hard {hard} (needs about {needed} in the bench and in the node)"),
    );
    if soft < needed {
        bail!("open files limit {soft} (hard {hard}) is below the ~{needed} needed; raise it (ulimit -n) or use fewer watches");
    }
    if let Some(endpoint) = &args.endpoint {
        let api = local_endpoint(endpoint)?;
        report.row("node", format!("external, {api} (no RSS figures)"));
        eprintln!("using the running node at {api}");
        return Ok(Target { api, node: None });
    }
    let (binary, why) = node::resolve_binary(args.shoal_bin.clone())?;
    if !binary.is_file() {
        bail!("shoal binary {} does not exist", binary.display());
    }
    let built = std::fs::metadata(&binary)
        .map(|m| {
            let age = m
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map(|a| a.as_secs())
                .unwrap_or(0);
            format!("{} bytes, modified {age} s ago", m.len())
        })
        .unwrap_or_default();
    eprintln!("shoal binary: {} ({why}; {built})", binary.display());
    report.row(
        "shoal binary",
        format!("{} ({why}; {built})", binary.display()),
    );
    let mut node = Node::spawn(&binary)?;
    match node.wait_ready(Duration::from_secs(60)).await {
        Ok(took) => {
            eprintln!(
                "node pid {} ready at {} in {} ms",
                node.pid,
                node.api,
                took.as_millis()
            );
            report.row(
                "node",
                format!(
                    "spawned, pid {}, {}, ready in {} ms",
                    node.pid,
                    node.api,
                    took.as_millis()
                ),
            );
        }
        Err(e) => {
            eprintln!("node log (tail):\n{}", node.log_tail(30));
            return Err(e);
        }
    }
    Ok(Target {
        api: node.api.clone(),
        node: Some(node),
    })
}

async fn interrupted() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted (SIGINT)",
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => "terminated (SIGTERM)",
    }
}

/// 0: OK, 1: MISMATCH, 2: error.
async fn main_async(args: Args) -> i32 {
    let mut report = Report { rows: Vec::new() };
    report.row("== watch-bench", "");
    let deadline = Duration::from_secs(args.deadline_secs);
    let started = Instant::now();
    let mut target = match tokio::select! {
        r = tokio::time::timeout(deadline, start(&args, &mut report)) => r.unwrap_or_else(|_| Err(anyhow::anyhow!("global deadline passed while starting"))),
        why = interrupted() => Err(anyhow::anyhow!(why)),
    } {
        Ok(target) => target,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let remaining = deadline.saturating_sub(started.elapsed());
    let failures = Arc::new(Problems::default());
    let warnings = Arc::new(Problems::default());
    let result = tokio::select! {
        r = tokio::time::timeout(remaining, run(&args, &mut target, &mut report, failures.clone(), warnings.clone())) =>
            r.unwrap_or_else(|_| Err(anyhow::anyhow!("global deadline of {}s passed (--deadline-secs)", args.deadline_secs))),
        why = interrupted() => Err(anyhow::anyhow!(why)),
    };
    let mut code = match &result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => 2,
    };
    if result.is_err() {
        // The run stopped early: show what had been seen up to then.
        report.section("stopped early");
        for line in failures.lines() {
            report.row("MISMATCH", line);
        }
        for line in warnings.lines() {
            report.row("warning", line);
        }
    }
    if let Some(node) = target.node.as_mut() {
        let warnings = node.log_warnings();
        if code != 0 {
            eprintln!("node log (tail):\n{}", node.log_tail(30));
        }
        let how = node.stop(Duration::from_secs(5));
        report.row("node shutdown", how.clone());
        if !how.starts_with("exited after SIGTERM") {
            report.row("warning", format!("node shutdown: {how}"));
        }
        report.row("node WARN/ERROR log lines", warnings.len().to_string());
        for line in warnings.iter().take(10) {
            report.row("  node log", line.clone());
        }
    }
    report.row(
        "total run time",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    report.print();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        code = 2;
    }
    code
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(main_async(args));
    // Drops the node (kills it if still running) and any leftover tasks.
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
