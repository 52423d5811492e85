//! kv-bench: a three-node Shoal cluster against a three-node etcd cluster on
//! loopback, same load: puts/s and linearizable gets/s with p50/p99 at several
//! client counts, then the time from killing the leader to the first
//! successful write through a surviving node.
//!
//! Shoal is driven through its own Rust client, `shoal-client` (HTTP/1.1, one
//! connection per client); etcd through its own gRPC client (one HTTP/2
//! channel per node). Each client sticks to one node, spread round-robin over
//! the three: a Shoal client gets that node as its only endpoint, so it
//! never fails over.

#[path = "acl.rs"]
mod acl;
mod rounds;
#[path = "runner.rs"]
mod runner;
// Shared with watch-bench, which uses more of its fields.
#[allow(dead_code)]
#[path = "stats.rs"]
mod stats;
mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::{Rng, SeedableRng};

use shoal_testkit::{free_port, set_parent_death_signal, shoal_bin_release_first, Process};

use crate::stats::{ms, summarize};

#[derive(Parser, Debug)]
#[command(about = "Three-node Shoal vs three-node etcd: throughput, latency and failover")]
struct Args {
    /// shoal binary [default: $SHOAL_BIN, else $CARGO_TARGET_DIR/release/shoal, else .../debug/shoal]
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Client counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    clients: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Systems to measure, comma-separated: shoal, shoal-acl (ACLs on; the
    /// clients' token has a policy allowing bench/), shoal-tls (TLS on the
    /// API, mutual TLS between nodes, certificates from `shoal tls`),
    /// shoal-tls-api (TLS on the API only: no --tls-ca, RPC plain),
    /// shoal-tls-acl (TLS and ACLs), etcd.
    #[arg(long, value_delimiter = ',', default_value = "shoal,etcd")]
    targets: Vec<String>,
    /// Shoal's clients speak HTTP/1.1 over TLS too (by default they take
    /// HTTP/2, which ALPN offers, and multiplex on one connection per node).
    #[arg(long)]
    http1: bool,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Distinct keys written and read.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Leader kills to time per system (in the first round).
    #[arg(long, default_value_t = 3)]
    failovers: usize,
    /// Rounds: each starts fresh clusters of every system in turn, so that
    /// drift in the machine's speed falls on both systems alike; a summary
    /// of the mean throughput per system follows the rows.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    rounds: u64,
}

/// A child process killed (SIGKILL) when dropped, and when the bench dies.
struct Proc {
    process: Process,
    command: Command,
}

impl Proc {
    fn start(mut command: Command, log: &Path) -> anyhow::Result<Proc> {
        set_parent_death_signal(&mut command);
        let mut process = Process::new(log, log);
        process.start(&mut command, "")?;
        Ok(Proc { process, command })
    }

    fn kill(&mut self) {
        self.process.kill9();
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.process.start(&mut self.command, "")
    }
}

/// One client's connection to one node.
#[derive(Clone)]
enum Conn {
    Shoal(shoal_client::Client),
    Etcd(Box<etcd_client::Client>),
}

impl Conn {
    async fn put(&mut self, key: &str, value: Vec<u8>, timeout: Duration) -> anyhow::Result<()> {
        match self {
            Conn::Shoal(client) => {
                tokio::time::timeout(timeout, client.put(key, value)).await??;
                Ok(())
            }
            Conn::Etcd(client) => {
                tokio::time::timeout(timeout, client.put(key, value, None)).await??;
                Ok(())
            }
        }
    }

    async fn get(&mut self, key: &str, timeout: Duration) -> anyhow::Result<()> {
        match self {
            Conn::Shoal(client) => {
                // Linearizable; a missing key is an answer (`None`), not an error.
                tokio::time::timeout(timeout, client.get(key)).await??;
                Ok(())
            }
            Conn::Etcd(client) => {
                // etcd's default range request is linearizable.
                tokio::time::timeout(timeout, client.get(key, None)).await??;
                Ok(())
            }
        }
    }
}

/// A running three-node cluster of either system.
struct Cluster {
    name: &'static str,
    nodes: Vec<Proc>,
    /// Client endpoint per node.
    endpoints: Vec<String>,
    /// With ACLs on: the management token (for the bench's own requests)
    /// and the token the clients send.
    management_token: Option<String>,
    client_token: Option<String>,
    /// With TLS on: the CA (PEM) the clients trust.
    ca_pem: Option<Vec<u8>>,
    /// Shoal's clients speak HTTP/1.1 only (`--http1`).
    http1: bool,
    _dir: tempfile::TempDir,
}

/// Where a bench cluster uses TLS.
#[derive(Clone, Copy, PartialEq)]
enum Tls {
    Off,
    /// On the API only (RPC between nodes stays plain).
    Api,
    /// On the API, and mutual TLS between nodes.
    Everywhere,
}

impl Cluster {
    fn shoal(bin: &Path, acl: bool, tls: Tls) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-kv-bench-")
            .tempdir()?;
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let seeds: Vec<String> = ports
            .iter()
            .map(|(_, _, g)| format!("127.0.0.1:{g}"))
            .collect();
        let mut acl_args = if acl {
            crate::acl::acl_args(dir.path())?
        } else {
            Vec::new()
        };
        let ca_pem = if tls == Tls::Off {
            None
        } else {
            let (args, ca_pem) = crate::tls::tls_args(bin, dir.path(), tls == Tls::Everywhere)?;
            acl_args.extend(args);
            Some(ca_pem)
        };
        let scheme = if tls == Tls::Off { "http" } else { "https" };
        let mut nodes = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (api, rpc, gossip)) in ports.iter().enumerate() {
            let mut command = Command::new(bin);
            command
                .arg("serve")
                .arg("--data-dir")
                .arg(dir.path().join(format!("n{i}")))
                .args([
                    "--api",
                    &format!("127.0.0.1:{api}"),
                    "--rpc",
                    &format!("127.0.0.1:{rpc}"),
                ])
                .args([
                    "--gossip",
                    &format!("127.0.0.1:{gossip}"),
                    "--bootstrap-expect",
                    "3",
                ])
                .args(["--log-level", "warn"])
                .args(&acl_args);
            for seed in &seeds {
                command.args(["--seed", seed]);
            }
            nodes.push(Proc::start(command, &dir.path().join(format!("n{i}.log")))?);
            endpoints.push(format!("{scheme}://127.0.0.1:{api}"));
        }
        let management_token = acl.then(|| crate::acl::MANAGEMENT_TOKEN.to_string());
        Ok(Cluster {
            name: "shoal",
            nodes,
            endpoints,
            client_token: management_token.clone(),
            management_token,
            ca_pem,
            http1: false,
            _dir: dir,
        })
    }

    fn etcd(bin: &Path) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("etcd-kv-bench-")
            .tempdir()?;
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut nodes = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let mut command = Command::new(bin);
            command
                .args(["--name", &format!("n{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("n{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args([
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                ])
                .args(["--initial-cluster-token", "kv-bench", "--log-level", "warn"]);
            nodes.push(Proc::start(command, &dir.path().join(format!("n{i}.log")))?);
            endpoints.push(format!("http://127.0.0.1:{client}"));
        }
        Ok(Cluster {
            name: "etcd",
            nodes,
            endpoints,
            management_token: None,
            client_token: None,
            ca_pem: None,
            http1: false,
            _dir: dir,
        })
    }

    async fn connect(&self, node: usize) -> anyhow::Result<Conn> {
        let endpoint = &self.endpoints[node];
        match self.name {
            "shoal" => {
                let mut builder = shoal_client::Client::builder().endpoint(endpoint.as_str());
                if let Some(token) = &self.client_token {
                    builder = builder.token(token);
                }
                if let Some(pem) = &self.ca_pem {
                    builder = builder.ca_certificates_pem(pem.clone());
                }
                if self.http1 {
                    builder = builder.http1_only();
                }
                Ok(Conn::Shoal(builder.build()?))
            }
            _ => {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5));
                Ok(Conn::Etcd(Box::new(
                    etcd_client::Client::connect([endpoint.as_str()], Some(options)).await?,
                )))
            }
        }
    }

    /// Index of the current leader, as node 0 (or any answering node) sees it.
    async fn leader(&self) -> anyhow::Result<usize> {
        for node in 0..self.endpoints.len() {
            if let Ok(leader) = self.leader_via(node).await {
                return Ok(leader);
            }
        }
        bail!("no node names a leader")
    }

    async fn leader_via(&self, node: usize) -> anyhow::Result<usize> {
        match self.name {
            "shoal" => {
                let http = crate::acl::api_client(
                    self.ca_pem.as_deref(),
                    self.management_token.as_deref(),
                    Duration::from_secs(2),
                )?;
                let cluster: serde_json::Value = http
                    .get(format!("{}/v1/cluster", self.endpoints[node]))
                    .send()
                    .await?
                    .json()
                    .await?;
                let leader = cluster["leader"].as_u64().context("no leader")?;
                let api = cluster["members"]
                    .as_array()
                    .and_then(|m| m.iter().find(|m| m["node_id"].as_u64() == Some(leader)))
                    .and_then(|m| m["api"].as_str())
                    .context("leader not listed")?;
                self.endpoints
                    .iter()
                    .position(|e| e.ends_with(api))
                    .context("unknown leader address")
            }
            _ => {
                let Conn::Etcd(mut client) = self.connect(node).await? else {
                    bail!("not etcd")
                };
                let leader = client.status().await?.leader();
                for (i, _) in self.endpoints.iter().enumerate() {
                    let Conn::Etcd(mut other) = self.connect(i).await? else {
                        continue;
                    };
                    if let Ok(status) = other.status().await {
                        if status.header().map(|h| h.member_id()) == Some(leader) {
                            return Ok(i);
                        }
                    }
                }
                bail!("leader {leader:x} not found")
            }
        }
    }

    /// With ACLs on, give the clients a token of their own whose policy
    /// allows the keys they use (so every request is checked against rules,
    /// as a service's would be).
    async fn issue_client_token(&mut self) -> anyhow::Result<()> {
        if self.management_token.is_none() {
            return Ok(());
        }
        let rules = serde_json::json!([
            {"resource": "kv", "match": "bench/", "access": "write"},
            {"resource": "kv", "match": "bench/private/", "access": "deny"},
        ]);
        let secret =
            crate::acl::issue_token(&self.endpoints[0], "bench", rules, self.ca_pem.as_deref())
                .await?;
        self.client_token = Some(secret);
        // Every node must know the token before the clients start.
        self.wait_ready(Duration::from_secs(30)).await
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ready = 0;
            for node in 0..self.endpoints.len() {
                if let Ok(mut conn) = self.connect(node).await {
                    if conn
                        .put("bench/ready", b"1".to_vec(), Duration::from_secs(1))
                        .await
                        .is_ok()
                    {
                        ready += 1;
                    }
                }
            }
            if ready == self.endpoints.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} cluster not ready after {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Put,
    Get,
}

struct Measured {
    ops_per_sec: f64,
    p50: String,
    p99: String,
    errors: u64,
}

async fn measure(
    cluster: &Cluster,
    op: Op,
    clients: usize,
    args: &Args,
) -> anyhow::Result<Measured> {
    let mut conns = Vec::new();
    for node in 0..cluster.endpoints.len() {
        conns.push(cluster.connect(node).await?);
    }
    let value = Arc::new(vec![b'v'; args.value_bytes]);
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for client in 0..clients {
        // Shoal: one HTTP connection per client (the pool grows per task);
        // etcd: clients on a node share that node's HTTP/2 channel.
        let mut conn = conns[client % conns.len()].clone();
        let (value, keys) = (value.clone(), args.keys);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            while Instant::now() < until {
                let key = format!("bench/k{}", rng.random_range(0..keys));
                let t0 = Instant::now();
                let result = match op {
                    Op::Put => conn.put(&key, value.to_vec(), Duration::from_secs(5)).await,
                    Op::Get => conn.get(&key, Duration::from_secs(5)).await,
                };
                match result {
                    Ok(()) => latencies.push(t0.elapsed().as_nanos() as u64),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, task_errors) = task.await?;
        all.extend(latencies);
        errors += task_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = all.len();
    let summary = summarize(all);
    Ok(Measured {
        ops_per_sec: count as f64 / elapsed,
        p50: summary
            .as_ref()
            .map(|s| ms(s.p50))
            .unwrap_or_else(|| "-".into()),
        p99: summary
            .as_ref()
            .map(|s| ms(s.p99))
            .unwrap_or_else(|| "-".into()),
        errors,
    })
}

/// Kill the leader; time until a write through a surviving node succeeds.
async fn failover(cluster: &mut Cluster) -> anyhow::Result<Duration> {
    let leader = cluster.leader().await?;
    let survivor = (leader + 1) % cluster.nodes.len();
    let mut conn = cluster.connect(survivor).await?;
    let killed_at = Instant::now();
    cluster.nodes[leader].kill();
    let deadline = killed_at + Duration::from_secs(60);
    let mut attempt = 0u64;
    let elapsed = loop {
        attempt += 1;
        if conn
            .put(
                &format!("bench/failover/{attempt}"),
                b"x".to_vec(),
                Duration::from_millis(500),
            )
            .await
            .is_ok()
        {
            break killed_at.elapsed();
        }
        if Instant::now() > deadline {
            bail!(
                "{}: no successful write within 60 s of killing the leader",
                cluster.name
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Bring the old leader back and let the cluster settle before the next round.
    cluster.nodes[leader].restart()?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    Ok(elapsed)
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let shoal_bin = match args.shoal_bin.clone() {
        Some(path) => path,
        None => shoal_bin_release_first()?.0,
    };
    println!(
        "# kv-bench: 3-node clusters on 127.0.0.1, {} s per figure, {} B values, {} keys",
        args.seconds, args.value_bytes, args.keys
    );
    println!("# shoal: {}", shoal_bin.display());
    println!("# etcd:  {}", args.etcd_bin.display());
    println!();
    println!(
        "| system | clients | puts/s | put p50 | put p99 | gets/s | get p50 | get p99 | errors |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut failovers = Vec::new();
    // (system, clients) -> puts/s and gets/s of each round.
    let mut throughput: Vec<(String, usize, f64, f64)> = Vec::new();
    for round in 0..args.rounds {
        for target in rounds::round_order(&args.targets, usize::try_from(round).unwrap_or(0)) {
            let mut cluster = match target.as_str() {
                "shoal" => Cluster::shoal(&shoal_bin, false, Tls::Off)?,
                "shoal-acl" => Cluster::shoal(&shoal_bin, true, Tls::Off)?,
                "shoal-tls" => Cluster::shoal(&shoal_bin, false, Tls::Everywhere)?,
                "shoal-tls-api" => Cluster::shoal(&shoal_bin, false, Tls::Api)?,
                "shoal-tls-acl" => Cluster::shoal(&shoal_bin, true, Tls::Everywhere)?,
                "etcd" => Cluster::etcd(&args.etcd_bin)?,
                other => bail!(
                    "unknown target {other:?} (shoal, shoal-acl, shoal-tls, shoal-tls-api, shoal-tls-acl or etcd)"
                ),
            };
            cluster.http1 = args.http1;
            cluster.wait_ready(Duration::from_secs(60)).await?;
            cluster.issue_client_token().await?;
            for clients in &args.clients {
                eprintln!(
                    "round {}/{}: {target}: {clients} clients ...",
                    round + 1,
                    args.rounds
                );
                let puts = measure(&cluster, Op::Put, *clients, args).await?;
                let gets = measure(&cluster, Op::Get, *clients, args).await?;
                println!(
                    "| {target} | {clients} | {:.0} | {} | {} | {:.0} | {} | {} | {} |",
                    puts.ops_per_sec,
                    puts.p50,
                    puts.p99,
                    gets.ops_per_sec,
                    gets.p50,
                    gets.p99,
                    puts.errors + gets.errors
                );
                throughput.push((target.clone(), *clients, puts.ops_per_sec, gets.ops_per_sec));
            }
            if round == 0 {
                let mut times = Vec::new();
                for kill in 0..args.failovers {
                    eprintln!("{target}: failover {}/{} ...", kill + 1, args.failovers);
                    times.push(failover(&mut cluster).await?);
                }
                failovers.push((target.clone(), times));
            }
            drop(cluster);
            settle_disk().await?;
        }
    }
    if args.rounds > 1 {
        print_means(&throughput, &args.targets, &args.clients, args.rounds);
    }
    println!();
    println!("| system | leader kill -9 → first successful write (each run) | median |");
    println!("| --- | --- | ---: |");
    for (target, mut times) in failovers {
        let each: Vec<String> = times
            .iter()
            .map(|t| format!("{} ms", t.as_millis()))
            .collect();
        times.sort();
        let median = times
            .get(times.len() / 2)
            .map(|t| format!("{} ms", t.as_millis()))
            .unwrap_or_default();
        println!("| {target} | {} | {median} |", each.join(", "));
    }
    Ok(())
}

/// Write back what a stopped cluster left in the page cache before the
/// next one starts, so that the write-back does not fall on its figures.
async fn settle_disk() -> anyhow::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await?;
    Ok(())
}

/// Mean puts/s and gets/s per system and client count over the rounds,
/// and each system's share of the last system's figure (etcd's, by default).
fn print_means(
    throughput: &[(String, usize, f64, f64)],
    targets: &[String],
    clients: &[usize],
    rounds: u64,
) {
    let mean = |target: &str, count: usize, pick: fn(&(String, usize, f64, f64)) -> f64| -> f64 {
        let values: Vec<f64> = throughput
            .iter()
            .filter(|row| row.0 == target && row.1 == count)
            .map(pick)
            .collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    };
    println!();
    println!(
        "Mean over {rounds} rounds (share: of {}'s figure):",
        targets.last().map(String::as_str).unwrap_or("-")
    );
    println!();
    println!("| system | clients | puts/s | share | gets/s | share |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let Some(base) = targets.last() else { return };
    for target in targets {
        for &count in clients {
            let (puts, gets) = (
                mean(target, count, |row| row.2),
                mean(target, count, |row| row.3),
            );
            let (base_puts, base_gets) = (
                mean(base, count, |row| row.2),
                mean(base, count, |row| row.3),
            );
            let share = |value: f64, of: f64| {
                if of > 0.0 {
                    format!("{:.0} %", 100.0 * value / of)
                } else {
                    "-".into()
                }
            };
            println!(
                "| {target} | {count} | {puts:.0} | {} | {gets:.0} | {} |",
                share(puts, base_puts),
                share(gets, base_gets)
            );
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    runner::run_benchmark("kv-bench", run(&args))
}
