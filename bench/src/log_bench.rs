//! log-bench: ingest throughput and search latency of one Shoal node on a
//! realistic log file, with `grep`/`rg` over the same raw file as the
//! brute-force bound.
//!
//! 1. Writes N NDJSON log lines (200-400 bytes, a seeded mix of services,
//!    levels and messages, timestamps spread over the last 24 hours).
//! 2. Ingests them through `POST /v1/logs/{stream}` with C concurrent
//!    clients; reports MB/s and records/s of wall time and per CPU-second
//!    the node spent (its utime + stime from /proc), then waits until every
//!    record is searchable and checks the count.
//! 3. Reports the index footprint against the raw size.
//! 4. Times a term query, a phrase query and a 24 h histogram (p50/p99 over
//!    R runs each) and the same searches with grep and rg over the raw file.

mod acl;
// Shared with the other benchmarks, which use more of them.
#[allow(dead_code)]
mod node;
#[allow(dead_code)]
mod runner;
#[allow(dead_code)]
mod stats;
mod tls;

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::node::Node;
use crate::stats::{ms, summarize};

#[derive(Parser, Debug)]
#[command(about = "Shoal log ingest and search benchmark, with grep/rg as the brute-force bound")]
struct Args {
    /// Log lines to generate and ingest.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Concurrent ingest clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Lines per ingest request.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Runs of each search.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// The shoal binary (default: $SHOAL_BIN, else the release build).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// Keep the generated file here instead of a temporary directory.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Run the node with ACLs on; every request carries a token whose
    /// policy allows ingest and search on the bench's stream.
    #[arg(long)]
    acl: bool,
    /// Serve the API over TLS (certificates made with `shoal tls`); the
    /// clients trust its CA.
    #[arg(long)]
    tls: bool,
}

const SERVICES: &[&str] = &[
    "checkout",
    "payments",
    "orders",
    "inventory",
    "shipping",
    "users",
    "search",
    "gateway",
];
const PATHS: &[&str] = &[
    "/api/orders",
    "/api/cart",
    "/api/payments",
    "/api/users",
    "/api/items",
    "/api/shipments",
];
const REGIONS: &[&str] = &[
    "eu-west-1",
    "eu-central-1",
    "us-east-1",
    "us-west-2",
    "ap-south-1",
];

/// One log line of 200-400 bytes. About 1% mention "timeout" and 0.5% the
/// phrase "payment declined", the targets of the timed searches.
fn line(rng: &mut StdRng, ts_ms: i64) -> String {
    let service = SERVICES[rng.random_range(0..SERVICES.len())];
    let region = REGIONS[rng.random_range(0..REGIONS.len())];
    let user = format!("u-{:05}", rng.random_range(0..50_000));
    let roll = rng.random_range(0..1000);
    let (level, message, status) = if roll < 10 {
        (
            "error",
            format!(
                "upstream timeout after {} ms calling {service}-db pool={}",
                rng.random_range(1000..5000),
                rng.random_range(1..9)
            ),
            504,
        )
    } else if roll < 15 {
        (
            "warn",
            format!(
                "payment declined for order {} card ending {:04} reason=insufficient_funds",
                rng.random_range(100_000..999_999),
                rng.random_range(0..10_000)
            ),
            402,
        )
    } else if roll < 60 {
        (
            "warn",
            format!(
                "slow request {} took {} ms (threshold 500 ms) cache=miss",
                PATHS[rng.random_range(0..PATHS.len())],
                rng.random_range(500..3000)
            ),
            200,
        )
    } else {
        let path = PATHS[rng.random_range(0..PATHS.len())];
        (
            "info",
            format!(
                "GET {path}/{} completed status=200 bytes={} cache=hit",
                rng.random_range(1..1_000_000),
                rng.random_range(200..90_000)
            ),
            200,
        )
    };
    let trace: u128 = rng.random();
    json!({
        "timestamp": ts_ms,
        "level": level,
        "service": service,
        "message": message,
        "trace_id": format!("{trace:032x}"),
        "attributes": {"user.id": user, "region": region, "http.status": status, "latency_ms": rng.random_range(1..3000), "pod": format!("{service}-{}", rng.random_range(0..20))},
    })
    .to_string()
}

/// Returns the bytes written and the generation time (Unix ms): the
/// records span the 24 hours before it.
fn generate(path: &Path, records: usize, seed: u64) -> anyhow::Result<(u64, i64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let span_ms = 24 * 3600 * 1000 - 60_000;
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut bytes = 0u64;
    for i in 0..records {
        // Spread evenly over the last 24 hours, oldest first.
        let ts = now_ms - span_ms + (i as i64 * span_ms) / records.max(1) as i64;
        let line = line(&mut rng, ts);
        bytes += line.len() as u64 + 1;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok((bytes, now_ms))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut by_extension = BTreeMap::new();
    bytes_by_extension(dir, &mut by_extension);
    by_extension.values().sum()
}

/// Bytes under `dir` per file extension (Tantivy's parts: store, term, idx, pos, fast...).
fn bytes_by_extension(dir: &Path, out: &mut BTreeMap<String, u64>) {
    if let Ok(items) = std::fs::read_dir(dir) {
        for item in items.flatten() {
            match item.metadata() {
                Ok(meta) if meta.is_dir() => bytes_by_extension(&item.path(), out),
                Ok(meta) => {
                    let path = item.path();
                    let extension = path
                        .extension()
                        .map_or("other".to_string(), |e| e.to_string_lossy().to_string());
                    *out.entry(extension).or_default() += meta.len();
                }
                Err(_) => {}
            }
        }
    }
}

async fn total(client: &reqwest::Client, api: &str) -> anyhow::Result<u64> {
    let answer: Value = client
        .get(format!(
            "{api}/v1/logs/aggregate?stream=bench&since=30h&histogram=false"
        ))
        .send()
        .await?
        .json()
        .await?;
    answer["total"]
        .as_u64()
        .context("no total in the aggregate answer")
}

/// Time `runs` calls of a search URL; checks each answer is a 200 with the same result.
async fn time_search(
    client: &reqwest::Client,
    url: &str,
    runs: usize,
    field: &str,
) -> anyhow::Result<(Vec<u64>, Value)> {
    let mut samples = Vec::with_capacity(runs);
    let mut first: Option<Value> = None;
    for _ in 0..runs {
        let started = Instant::now();
        let response = client.get(url).send().await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        samples.push(started.elapsed().as_nanos() as u64);
        if !status.is_success() {
            bail!("{url} answered {status}: {answer}");
        }
        match &first {
            None => first = Some(answer[field].clone()),
            Some(expected) if *expected != answer[field] => {
                bail!("{url} changed its answer between runs")
            }
            Some(_) => {}
        }
    }
    Ok((samples, first.unwrap_or(Value::Null)))
}

/// Wall time of a shell command (best of 3, after one warm-up), and its output.
fn time_command(program: &str, args: &[&str]) -> Option<(Duration, String)> {
    let run = || -> Option<(Duration, String)> {
        let started = Instant::now();
        let output = Command::new(program).args(args).output().ok()?;
        Some((
            started.elapsed(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        ))
    };
    run()?;
    (0..3)
        .filter_map(|_| run())
        .min_by_key(|(elapsed, _)| *elapsed)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let (binary, why) = node::resolve_binary(args.shoal_bin.clone())?;
    println!(
        "# log-bench: {} records, {} clients x {} lines per request, {} runs per search",
        args.records, args.clients, args.batch, args.runs
    );
    println!("# shoal: {} ({why})", binary.display());
    if args.acl {
        println!("# ACLs on: every request carries a token with a logs policy");
    }
    if args.tls {
        println!("# TLS on the API: every request is https");
    }
    let scratch = tempfile::Builder::new().prefix("log-bench-").tempdir()?;
    let raw = args
        .data
        .clone()
        .unwrap_or_else(|| scratch.path().join("raw.ndjson"));
    let started = Instant::now();
    let (raw_bytes, generated_ms) = generate(&raw, args.records, args.seed)?;
    println!(
        "# generated {} ({:.1} MB, {:.0} bytes/line) in {:.1} s",
        raw.display(),
        raw_bytes as f64 / 1e6,
        raw_bytes as f64 / args.records.max(1) as f64,
        started.elapsed().as_secs_f64()
    );

    let extra: Vec<String> = [
        "--logs-self",
        "false",
        "--otlp-grpc",
        "off",
        "--otlp-http",
        "off",
        "--logs-retention-days",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut extra = extra;
    if args.acl {
        extra.extend(acl::acl_args(scratch.path())?);
    }
    let ca_pem = if args.tls {
        let (tls_args, ca_pem) = tls::tls_args(&binary, scratch.path(), false)?;
        extra.extend(tls_args);
        Some(ca_pem)
    } else {
        None
    };
    let mut node = Node::spawn_with(&binary, &extra, ca_pem.as_deref())?;
    node.wait_ready(Duration::from_secs(30)).await?;
    let token = if args.acl {
        // A shipper's and a dashboard's token: ingest and search the logs.
        let rules = serde_json::json!([{"resource": "logs", "match": "", "access": "write"}]);
        Some(acl::issue_token(&node.api, "log-bench", rules, ca_pem.as_deref()).await?)
    } else {
        None
    };
    let client = acl::api_client(
        ca_pem.as_deref(),
        token.as_deref(),
        Duration::from_secs(120),
    )?;

    // Ingest: the file split into batches, C clients taking the next batch.
    let text = std::fs::read_to_string(&raw)?;
    let lines: Vec<&str> = text.lines().collect();
    let batches: Arc<Vec<String>> = Arc::new(
        lines
            .chunks(args.batch.max(1))
            .map(|chunk| chunk.join("\n"))
            .collect(),
    );
    drop(lines);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_seconds(node.pid);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (client, batches, next, url) = (
            client.clone(),
            batches.clone(),
            next.clone(),
            format!("{}/v1/logs/bench", node.api),
        );
        workers.push(tokio::spawn(async move {
            let mut busy = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = batches.get(i) else {
                    return Ok::<u64, anyhow::Error>(busy);
                };
                loop {
                    let response = client
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .await?;
                    if response.status().as_u16() == 429 {
                        busy += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    let answer: Value = response.json().await?;
                    if answer["rejected"].as_u64() != Some(0) {
                        bail!("a batch was partly refused: {answer}");
                    }
                    break;
                }
            }
        }));
    }
    let mut busy = 0;
    for worker in workers {
        busy += worker.await??;
    }
    let acked = started.elapsed();
    let cpu = cpu_seconds(node.pid) - cpu_before;
    // Searchable: every record counted.
    loop {
        let count = total(&client, &node.api).await.unwrap_or(0);
        if count == args.records as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("only {count} of {} records became searchable", args.records);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let searchable = started.elapsed();
    let cpu_all = cpu_seconds(node.pid) - cpu_before;
    let mb = raw_bytes as f64 / 1e6;
    println!();
    println!("| ingest figure | value |");
    println!("| --- | ---: |");
    println!(
        "| acknowledged (fsynced in the WAL) | {:.1} s: {:.1} MB/s, {:.0} records/s |",
        acked.as_secs_f64(),
        mb / acked.as_secs_f64(),
        args.records as f64 / acked.as_secs_f64()
    );
    println!(
        "| all searchable | {:.1} s: {:.1} MB/s, {:.0} records/s |",
        searchable.as_secs_f64(),
        mb / searchable.as_secs_f64(),
        args.records as f64 / searchable.as_secs_f64()
    );
    println!(
        "| node CPU until acknowledged | {cpu:.1} s: {:.1} MB/s and {:.0} records/s per core |",
        mb / cpu.max(0.001),
        args.records as f64 / cpu.max(0.001)
    );
    println!(
        "| node CPU until searchable | {cpu_all:.1} s: {:.1} MB/s and {:.0} records/s per core |",
        mb / cpu_all.max(0.001),
        args.records as f64 / cpu_all.max(0.001)
    );
    println!("| 429 answers (retried) | {busy} |");
    if let Some(stats) = node::ProcStats::read(node.pid) {
        println!(
            "| node memory (RSS / peak) | {:.0} MiB / {:.0} MiB |",
            stats.rss_mib(),
            stats.hwm_mib()
        );
    }

    // Let background merges settle a little before measuring the footprint.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let data_dir = node.data_dir();
    let index = dir_bytes(&data_dir.join("search/indexes"));
    let wal = dir_bytes(&data_dir.join("search/wal"));
    println!(
        "| index on disk | {:.1} MB ({:.0} % of raw), WAL left {:.1} MB |",
        index as f64 / 1e6,
        100.0 * index as f64 / raw_bytes as f64,
        wal as f64 / 1e6
    );
    let mut parts = BTreeMap::new();
    bytes_by_extension(&data_dir.join("search/indexes"), &mut parts);
    let mut parts: Vec<(String, u64)> = parts
        .into_iter()
        .filter(|(_, bytes)| *bytes >= 1_000_000)
        .collect();
    parts.sort_by_key(|part| std::cmp::Reverse(part.1));
    let parts: Vec<String> = parts
        .iter()
        .map(|(name, bytes)| {
            format!(
                "{name} {:.1} % of raw",
                100.0 * *bytes as f64 / raw_bytes as f64
            )
        })
        .collect();
    println!("| index parts (Tantivy files) | {} |", parts.join(", "));

    // Searches.
    let base = format!("{}/v1/logs", node.api);
    // The generated day, fixed: a window relative to now would lose the
    // oldest records as the benchmark runs.
    let day = format!(
        "since={}&until={}",
        generated_ms - 24 * 3600 * 1000,
        generated_ms + 1000
    );
    let searches = [
        (
            "term: timeout (newest 100)",
            format!("{base}/search?q=timeout&{day}&limit=100"),
            "count",
        ),
        (
            "phrase: \"payment declined\" (newest 100)",
            format!("{base}/search?q=%22payment%20declined%22&{day}&limit=100"),
            "count",
        ),
        (
            "24 h histogram, 1 h buckets, all records",
            format!("{base}/aggregate?{day}&interval=1h"),
            "total",
        ),
        (
            "24 h histogram of term timeout",
            format!("{base}/aggregate?q=timeout&{day}&interval=1h"),
            "total",
        ),
    ];
    println!();
    println!(
        "| search ({} records) | result | p50 | p99 | max |",
        args.records
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, url, field) in &searches {
        let (samples, result) = time_search(&client, url, args.runs, field).await?;
        let summary = summarize(samples).context("no samples")?;
        println!(
            "| {name} | {result} | {} | {} | {} |",
            ms(summary.p50),
            ms(summary.p99),
            ms(summary.max)
        );
    }
    let raw_path = raw.display().to_string();
    println!();
    println!("| brute force over the raw file | matches | time (best of 3) |");
    println!("| --- | ---: | ---: |");
    for (tool, pattern) in [
        ("grep", "timeout"),
        ("grep", "payment declined"),
        ("rg", "timeout"),
        ("rg", "payment declined"),
    ] {
        match time_command(tool, &["-c", pattern, &raw_path]) {
            Some((elapsed, count)) => println!(
                "| {tool} -c {pattern:?} | {count} | {} |",
                ms(elapsed.as_nanos() as u64)
            ),
            None => println!("| {tool} -c {pattern:?} | ({tool} not installed) | |"),
        }
    }
    if !node.alive() {
        bail!("the node died during the benchmark:\n{}", node.log_tail(30));
    }
    let warnings = node.log_warnings();
    if !warnings.is_empty() {
        println!(
            "\n# node warnings: {}\n{}",
            warnings.len(),
            warnings
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    println!("\n# node: {}", node.stop(Duration::from_secs(10)));
    Ok(())
}

fn main() -> std::process::ExitCode {
    runner::run_benchmark("log-bench", bench(Args::parse()))
}
