//! msg-bench: Shoal messaging against NATS core (Debian's `nats-server`), on
//! loopback, same load, Rust clients for both: Shoal over WebSocket (publish
//! stream `GET /v1/publish/ws?topic=T`, raw subscriber `GET
//! /v1/subscribe/ws?format=raw`), NATS through `async-nats`.
//!
//! Per payload size: one publisher to one subscriber as fast as the publisher's
//! socket takes it (delivered msgs/s and loss), the same to ten subscribers,
//! and end-to-end latency at a paced rate; first on one server, then across a
//! three-node cluster (publisher on node A, subscribers on node B). Every
//! payload starts with its sequence number and the time it was sent, so the
//! subscribers count loss and duplicates and measure latency themselves.
//! The `shoal-tls`, `shoal-acl` and `shoal-tls-acl` targets run the same
//! with TLS (API over wss, mutual TLS between nodes) and ACLs (clients with
//! a token of their own) on, for the side-by-side table against plain Shoal.
//! Over TLS the Shoal clients connect as the nodes do to each other
//! ([`shoal_tls::connect`], with its buffers).
//!
//! See bench/README.md.

// Shared with watch-bench and kv-bench, which use more of them.
#[path = "acl.rs"]
mod acl;
#[path = "msg_client.rs"]
mod client;
#[path = "msg_cpu.rs"]
mod cpu;
#[allow(dead_code)]
#[path = "node.rs"]
mod node;
#[path = "msg_one_run.rs"]
mod one_run;
#[path = "msg_payload.rs"]
mod payload;
#[path = "msg_report.rs"]
mod report;
mod rounds;
#[path = "runner.rs"]
mod runner;
#[allow(dead_code)]
#[path = "stats.rs"]
mod stats;
#[path = "msg_systems.rs"]
mod systems;
mod tls;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;

use crate::one_run::{run_one, Outcome, Scenario};
use crate::payload::{base, HEADER};
use crate::report::{
    command_output, load_average, locked_versions, machine, ms_short, print_report,
    print_security_report, size_label, thousands, Row,
};
use crate::systems::{Deployment, System, NATS, SHOAL};

#[derive(Parser, Debug)]
#[command(
    about = "Shoal messaging (WebSocket) vs NATS core: throughput, fan-out, latency; one node and three"
)]
struct Args {
    /// shoal binary [default: $SHOAL_BIN, else $CARGO_TARGET_DIR/release/shoal, else .../debug/shoal]
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// nats-server binary.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_bin: PathBuf,
    /// Payload sizes in bytes (at least 16: sequence number and send time).
    #[arg(long, value_delimiter = ',', default_value = "128,4096")]
    payloads: Vec<usize>,
    /// Messages per throughput and fan-out run, one figure per payload size (same order).
    #[arg(long, value_delimiter = ',', default_value = "200000,50000")]
    messages: Vec<u64>,
    /// Rounds: in each, every system is started anew, one system later in
    /// the order than in the round before, and runs each stream and fan-out
    /// row once (latency rows in the first round only); the table shows the
    /// run with the median delivered rate (all rates are in the details).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Subscribers in the fan-out runs.
    #[arg(long, default_value_t = 10)]
    fanout: usize,
    /// Publish rate of the latency runs, messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of each latency run, seconds.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Per-subscriber buffer, in messages: Shoal's `buffer=` (server side,
    /// drop-oldest) and async-nats' subscription capacity (client side).
    #[arg(long, default_value_t = 65536)]
    buffer: u64,
    /// Systems to measure, comma-separated: nats, shoal, and with security
    /// on: nats-tls (TLS to the clients, mutual TLS between servers, same
    /// certificates), shoal-tls (API over TLS, wss for the clients, mutual
    /// TLS between nodes; certificates from `shoal tls`), shoal-acl (--acl;
    /// the clients' token has a policy of its own), shoal-tls-acl (both).
    #[arg(long, value_delimiter = ',', default_value = "nats,shoal")]
    targets: Vec<String>,
    /// Topologies: `single` (one server) and/or `cluster` (three; publisher on A, subscribers on B).
    #[arg(long, value_delimiter = ',', default_value = "single,cluster")]
    topologies: Vec<String>,
    /// Scenarios: `throughput` (1 to 1), `fanout` (1 to --fanout), `latency` (paced 1 to 1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,fanout,latency"
    )]
    scenarios: Vec<String>,
    /// After the last publish, subscribers stop once nothing arrived for this long (ms) ...
    #[arg(long, default_value_t = 2000)]
    idle_ms: u64,
    /// ... or at the latest this many seconds after the last publish.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
}

async fn run(args: &Args) -> anyhow::Result<()> {
    if args.payloads.len() != args.messages.len() {
        bail!(
            "--payloads and --messages need one entry each ({} vs {})",
            args.payloads.len(),
            args.messages.len()
        );
    }
    if let Some(small) = args.payloads.iter().find(|p| **p < HEADER) {
        bail!("payload {small} is below {HEADER} bytes (sequence number and send time)");
    }
    if args.rate == 0 || args.rate > 1_000_000_000 {
        bail!("--rate must be between 1 and 1e9");
    }
    let scenarios: Vec<Scenario> = args
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s))
        .collect::<anyhow::Result<_>>()?;
    let systems: Vec<System> = args
        .targets
        .iter()
        .map(|t| System::parse(t))
        .collect::<anyhow::Result<_>>()?;
    let mut topologies: Vec<(&'static str, usize)> = Vec::new();
    for topology in &args.topologies {
        topologies.push(match topology.as_str() {
            "single" => ("single", 1),
            "cluster" => ("cluster", 3),
            other => bail!("unknown topology {other:?} (single or cluster)"),
        });
    }
    let (shoal_bin, why) = node::resolve_binary(args.shoal_bin.clone())?;
    node::raise_fd_limit();
    base();

    println!("# msg-bench: Shoal (WebSocket publish stream + raw WebSocket subscribers) vs NATS core, 127.0.0.1");
    println!("# machine: {}", machine());
    println!(
        "# shoal: {} ({why}): {}",
        shoal_bin.display(),
        command_output(&shoal_bin, "--version")
    );
    println!(
        "# nats:  {}: {}",
        args.nats_bin.display(),
        command_output(&args.nats_bin, "--version")
    );
    println!(
        "# clients: {}",
        locked_versions(&["async-nats", "tokio-tungstenite"])
    );
    println!(
        "# runs: {} msgs per stream/fan-out run (payloads {}, median of {}), fan-out {}, latency {} msg/s for {} s, subscriber buffer {}",
        args.messages.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("/"),
        args.payloads.iter().map(|p| size_label(*p)).collect::<Vec<_>>().join("/"),
        args.repeat,
        args.fanout,
        args.rate,
        args.latency_secs,
        args.buffer
    );

    // Other work on the machine shares its cores with the servers and the bench.
    let load_before = load_average();
    println!("# load average before the runs: {load_before}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut rows: Vec<Row> = Vec::new();
    for (topology, n) in &topologies {
        let first = rows.len();
        for &scenario in &scenarios {
            for &payload in &args.payloads {
                rows.push(Row {
                    topology,
                    scenario,
                    payload,
                    results: Vec::new(),
                });
            }
        }
        // Each system's outcomes of each row, over the rounds.
        let mut runs: Vec<Vec<Runs>> = (first..rows.len())
            .map(|_| systems.iter().map(|_| Runs::default()).collect())
            .collect();
        let rounds = args.repeat.max(1);
        // Positions in `systems`: a system named twice runs twice.
        let slots: Vec<usize> = (0..systems.len()).collect();
        for round in 0..rounds {
            for &slot in rounds::round_order(&slots, round) {
                let system = systems[slot];
                eprintln!(
                    "round {}/{rounds}: {}: starting {n} server(s) ...",
                    round + 1,
                    system.name()
                );
                let started = Instant::now();
                let dep = Deployment::start(system, *n, args, &shoal_bin, &http).await?;
                eprintln!(
                    "{}: {n} server(s) ready in {} ms",
                    system.name(),
                    started.elapsed().as_millis()
                );
                for (row, runs) in rows[first..].iter().zip(runs.iter_mut()) {
                    // A latency run is long and paced: once is enough.
                    if row.scenario == Scenario::Latency && round > 0 {
                        continue;
                    }
                    let count = args.messages[args
                        .payloads
                        .iter()
                        .position(|p| *p == row.payload)
                        .unwrap_or(0)];
                    eprintln!(
                        "{} {topology}: {:?} {} (round {}/{rounds}) ...",
                        system.name(),
                        row.scenario,
                        size_label(row.payload),
                        round + 1
                    );
                    match run_one(&dep, row.scenario, row.payload, count, args).await {
                        Ok(o) => {
                            eprintln!(
                                "  delivered {}/{} in {:.2} s = {} msgs/s{}",
                                o.delivered,
                                o.expected,
                                o.elapsed_secs,
                                thousands(o.rate()),
                                o.latency
                                    .as_ref()
                                    .map(|s| format!(
                                        ", p50 {} ms p99 {} ms",
                                        ms_short(s.p50),
                                        ms_short(s.p99)
                                    ))
                                    .unwrap_or_default()
                            );
                            runs[slot].outcomes.push(o);
                        }
                        Err(e) => {
                            eprintln!("  error: {e:#}");
                            runs[slot].failure.get_or_insert(e);
                        }
                    }
                    // Let the servers drop the closed connections before the next run.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                print_warnings(&dep, system, topology, round);
            }
        }
        for (row, runs) in rows[first..].iter_mut().zip(runs) {
            for (&system, runs) in systems.iter().zip(runs) {
                row.results.push((system, runs.median()));
            }
        }
    }
    print_report(&rows, args);
    print_security_report(&rows, args, &systems, SHOAL);
    print_security_report(&rows, args, &systems, NATS);
    println!();
    println!(
        "# load average at the start: {load_before}; at the end: {}",
        load_average()
    );
    Ok(())
}

/// One system's runs of one row.
#[derive(Default)]
struct Runs {
    outcomes: Vec<Outcome>,
    failure: Option<anyhow::Error>,
}

impl Runs {
    /// The run with the median delivered rate (every rate kept beside it).
    fn median(mut self) -> anyhow::Result<Outcome> {
        let all_rates: Vec<f64> = self.outcomes.iter().map(Outcome::rate).collect();
        self.outcomes.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let middle = self.outcomes.len() / 2;
        match (self.outcomes.is_empty(), self.failure) {
            (false, failure) => {
                let mut o = self.outcomes.swap_remove(middle);
                o.all_rates = all_rates;
                if let Some(e) = failure {
                    o.ended.push(format!("a repetition failed: {e:#}"));
                }
                Ok(o)
            }
            (true, Some(e)) => Err(e),
            (true, None) => Err(anyhow::anyhow!("no run")),
        }
    }
}

/// WARN/ERROR lines in a deployment's node logs, by the module that
/// logged them.
fn print_warnings(dep: &Deployment, system: System, topology: &str, round: usize) {
    let mut by_target: Vec<(String, usize, String)> = Vec::new();
    for line in dep.warnings() {
        let target = line
            .split_whitespace()
            .skip_while(|w| *w != "WARN" && *w != "ERROR")
            .nth(1)
            .unwrap_or("?")
            .trim_end_matches(':')
            .to_string();
        match by_target.iter_mut().find(|(t, _, _)| *t == target) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 = line;
            }
            None => by_target.push((target, 1, line)),
        }
    }
    for (target, count, last) in &by_target {
        println!(
            "# {} {topology} (round {}): {count} WARN/ERROR log lines from {target}; last: {last}",
            system.name(),
            round + 1
        );
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    runner::run_benchmark("msg-bench", run(&args))
}
