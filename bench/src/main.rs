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
mod sse;
mod stats;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;

use crate::node::{Node, ProcStats};
use crate::stats::{ms, summarize};
use crate::watch::{chain, open_group, GroupStats, Problems, Sink, Spawn};

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

/// When the process started; every stored instant is nanoseconds since this, plus 1 (0 = unset).
fn nanos(base: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(base).as_nanos() as u64 + 1
}

// ---------------------------------------------------------------- scenario 1

struct KeySink {
    base: Instant,
    /// seq -> index of the watcher whose key the write goes to.
    target: Vec<u32>,
    sent_at: Vec<AtomicU64>,
    put_rev: Vec<AtomicU64>,
    recv_count: Vec<AtomicU32>,
    latency: Vec<AtomicU64>,
    event_rev: Vec<AtomicU64>,
    /// Per watcher: last revision received (order check).
    last_rev: Vec<AtomicU64>,
    total: AtomicU64,
    first_receipts: AtomicUsize,
    failures: Arc<Problems>,
}

impl Sink for KeySink {
    fn on_event(
        &self,
        w: usize,
        revision: u64,
        kind: &str,
        key: &str,
        value: Option<&[u8]>,
        at: Instant,
    ) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let own = format!("bench/w/{w}");
        if key != own {
            self.failures.add(
                "event for a key the watcher does not watch",
                format!("watcher of {own} got {key} at revision {revision}"),
            );
            return;
        }
        if kind != "put" {
            self.failures.add(
                "unexpected event type",
                format!("{own}: {kind:?} at revision {revision}"),
            );
        }
        let previous = self.last_rev[w].fetch_max(revision, Ordering::Relaxed);
        if previous >= revision {
            self.failures.add(
                "revision not increasing on one watch",
                format!("{own}: {revision} after {previous}"),
            );
        }
        let seq = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<usize>().ok());
        let Some(seq) = seq.filter(|s| *s < self.target.len()) else {
            self.failures.add(
                "event with a value the bench did not write",
                format!("{own}: {:?}", value.map(String::from_utf8_lossy)),
            );
            return;
        };
        if self.target[seq] as usize != w {
            self.failures.add(
                "write delivered to the wrong watcher",
                format!("write {seq} (to bench/w/{}) at {own}", self.target[seq]),
            );
            return;
        }
        if self.recv_count[seq].fetch_add(1, Ordering::AcqRel) > 0 {
            self.failures.add(
                "duplicate event",
                format!("write {seq} to {own} delivered again at revision {revision}"),
            );
            return;
        }
        let sent = self.sent_at[seq].load(Ordering::Acquire);
        if sent == 0 {
            self.failures.add(
                "event before its PUT was sent",
                format!("write {seq} to {own}"),
            );
        } else {
            self.latency[seq].store(
                nanos(self.base, at).saturating_sub(sent).max(1),
                Ordering::Relaxed,
            );
        }
        self.event_rev[seq].store(revision, Ordering::Relaxed);
        self.first_receipts.fetch_add(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------------- scenario 2

const FAN_PREFIX: &str = "bench/fan/";
const FAN_KEY: &str = "bench/fan/x";

struct FanSink {
    base: Instant,
    writes: usize,
    sent_at: Vec<AtomicU64>,
    put_rev: Vec<AtomicU64>,
    /// Revision the first watcher saw for each write (all must agree).
    seen_rev: Vec<AtomicU64>,
    count: Vec<AtomicUsize>,
    first: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    /// Per watcher: the next write it should see.
    next: Vec<AtomicUsize>,
    total: AtomicU64,
    failures: Arc<Problems>,
}

impl Sink for FanSink {
    fn on_event(
        &self,
        w: usize,
        revision: u64,
        kind: &str,
        key: &str,
        value: Option<&[u8]>,
        at: Instant,
    ) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if key != FAN_KEY {
            self.failures.add(
                "fanout watcher got an unexpected key",
                format!("watcher {w}: {key} at revision {revision}"),
            );
            return;
        }
        if kind != "put" {
            self.failures.add(
                "unexpected event type",
                format!("fan watcher {w}: {kind:?} at revision {revision}"),
            );
        }
        let n = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix('f'))
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n < self.writes);
        let Some(n) = n else {
            self.failures.add(
                "fanout event with a value the bench did not write",
                format!("watcher {w}: {:?}", value.map(String::from_utf8_lossy)),
            );
            return;
        };
        let expected = self.next[w].swap(n + 1, Ordering::Relaxed);
        if n != expected {
            let kind = if n < expected {
                "fanout duplicate or reordered event"
            } else {
                "fanout event missed"
            };
            self.failures.add(
                kind,
                format!("watcher {w}: got write {n}, expected write {expected}"),
            );
        }
        if let Err(other) =
            self.seen_rev[n].compare_exchange(0, revision, Ordering::Relaxed, Ordering::Relaxed)
        {
            if other != revision {
                self.failures.add(
                    "fanout watchers disagree on a revision",
                    format!("write {n}: {revision} vs {other}"),
                );
            }
        }
        let sent = self.sent_at[n].load(Ordering::Acquire);
        if sent == 0 {
            self.failures
                .add("event before its PUT was sent", format!("fan write {n}"));
        } else {
            let latency = nanos(self.base, at).saturating_sub(sent).max(1);
            self.first[n].fetch_min(latency, Ordering::Relaxed);
            self.last[n].fetch_max(latency, Ordering::Relaxed);
        }
        self.count[n].fetch_add(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------------- the run

struct Report {
    rows: Vec<(String, String)>,
}

impl Report {
    fn section(&mut self, title: &str) {
        self.rows.push((String::new(), String::new()));
        self.rows.push((format!("-- {title}"), String::new()));
    }
    fn row(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.rows.push((name.into(), value.into()));
    }
    fn print(&self) {
        let width = self
            .rows
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(0);
        for (name, value) in &self.rows {
            if value.is_empty() {
                println!("{name}");
            } else {
                println!("{name:<width$}  {value}");
            }
        }
    }
}

struct Target {
    api: String,
    node: Option<Node>,
}

impl Target {
    fn proc(&self) -> Option<ProcStats> {
        self.node.as_ref().and_then(|n| ProcStats::read(n.pid))
    }
}

async fn status(control: &reqwest::Client, api: &str) -> anyhow::Result<serde_json::Value> {
    let resp = control
        .get(format!("{api}/v1/status"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(chain(&e)))?;
    if !resp.status().is_success() {
        bail!("GET /v1/status: HTTP {}", resp.status());
    }
    Ok(resp.json().await?)
}

async fn watchers(control: &reqwest::Client, api: &str) -> anyhow::Result<u64> {
    status(control, api).await?["watchers"]
        .as_u64()
        .context("/v1/status has no `watchers` number")
}

/// Poll `/v1/status` until it reports at least `want` watchers; progress to stderr every second.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the arguments
async fn wait_registered(
    control: &reqwest::Client,
    api: &str,
    label: &str,
    want: u64,
    baseline: u64,
    total: usize,
    stats: &GroupStats,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let registered = watchers(control, api).await?;
        let connected = stats.connected.load(Ordering::Relaxed);
        let done = registered >= want;
        if done || last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "{label}: connected {connected}/{total} (node watchers {})",
                registered.saturating_sub(baseline)
            );
            last_print = Instant::now();
        }
        if done {
            return Ok(started.elapsed());
        }
        let failed = stats.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} {label} watches could not connect");
        }
        if started.elapsed() > limit {
            bail!(
                "{label}: only {connected}/{total} connected, {} registered, after {limit:?}",
                registered.saturating_sub(baseline)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mib(stats: Option<ProcStats>) -> String {
    match stats {
        Some(s) => format!(
            "{:.1} MiB (fds {}, threads {})",
            s.rss_mib(),
            s.fds,
            s.threads
        ),
        None => "n/a (external node)".into(),
    }
}

fn own_rss() -> String {
    ProcStats::read(std::process::id())
        .map(|s| format!("{:.1} MiB", s.rss_mib()))
        .unwrap_or_default()
}

fn http_client(timeout: Option<Duration>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(usize::MAX)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    Ok(builder.build()?)
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

async fn run(
    args: &Args,
    target: &mut Target,
    report: &mut Report,
    failures: Arc<Problems>,
    warnings: Arc<Problems>,
) -> anyhow::Result<bool> {
    let api = target.api.clone();
    let base = Instant::now();
    let control = http_client(Some(Duration::from_secs(10)))?;
    // Writes go through Shoal's Rust client; the watches stay raw SSE (the
    // bench times each event from the socket read, counts keepalive comments
    // and checks SSE ids, and must see every dropped stream, which the
    // client's resuming watch would hide).
    let writer = shoal_client::Client::builder()
        .endpoint(api.as_str())
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let watch_client = http_client(None)?;
    let spawn = Spawn {
        client: watch_client,
        semaphore: Arc::new(Semaphore::new(args.connect_concurrency.max(1))),
        attempt_timeout: Duration::from_secs(30),
        attempts: 3,
        failures: failures.clone(),
        warnings: warnings.clone(),
    };
    let connect_limit = Duration::from_secs(args.connect_timeout_secs);
    let baseline = watchers(&control, &api).await?;
    if baseline > 0 {
        eprintln!("note: the node already has {baseline} watchers; counting from there");
    }
    let node_start = target.proc();

    // ---- scenario 1: open N single-key watches
    let n = args.watches;
    eprintln!(
        "scenario 1: opening {n} watches ({} at a time)",
        args.connect_concurrency
    );
    let urls = (0..n)
        .map(|i| format!("{api}/v1/watch?key=bench/w/{i}"))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let target_of: Vec<u32> = if n == 0 {
        Vec::new()
    } else {
        (0..args.writes)
            .map(|_| rng.random_range(0..n as u32))
            .collect()
    };
    if n == 0 && args.writes > 0 {
        bail!("--writes needs --watches > 0");
    }
    let w = args.writes;
    let atomics = |len: usize| (0..len).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let key_sink = Arc::new(KeySink {
        base,
        target: target_of,
        sent_at: atomics(w),
        put_rev: atomics(w),
        recv_count: (0..w).map(|_| AtomicU32::new(0)).collect(),
        latency: atomics(w),
        event_rev: atomics(w),
        last_rev: atomics(n),
        total: AtomicU64::new(0),
        first_receipts: AtomicUsize::new(0),
        failures: failures.clone(),
    });
    let group1 = open_group(&spawn, urls, key_sink.clone());
    let connect1 = wait_registered(
        &control,
        &api,
        "scenario 1",
        baseline + n as u64,
        baseline,
        n,
        &group1.stats,
        connect_limit,
    )
    .await?;
    let node_idle = target.proc();
    let bench_idle = own_rss();
    eprintln!(
        "scenario 1: {n} watches registered in {:.2} s",
        connect1.as_secs_f64()
    );

    // ---- scenario 1: W writes at concurrency C
    eprintln!(
        "scenario 1: {w} writes, {} concurrent writers",
        args.concurrency
    );
    let next = Arc::new(AtomicUsize::new(0));
    let put_latencies = Arc::new(Mutex::new(Vec::with_capacity(w)));
    let write_started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (next, sink, client, lat, failures) = (
            next.clone(),
            key_sink.clone(),
            writer.clone(),
            put_latencies.clone(),
            failures.clone(),
        );
        writers.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= sink.target.len() {
                    return;
                }
                let key = format!("bench/w/{}", sink.target[seq]);
                let sent = Instant::now();
                sink.sent_at[seq].store(nanos(sink.base, sent), Ordering::Release);
                let result = client.put(&key, seq.to_string()).await;
                let took = sent.elapsed();
                match result {
                    Ok(answer) => {
                        lat.lock().unwrap().push(took.as_nanos() as u64);
                        sink.put_rev[seq].store(answer.revision, Ordering::Relaxed);
                    }
                    Err(e) => failures.add("PUT failed", format!("write {seq}: {}", chain(&e))),
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
    let write_time = write_started.elapsed();
    let puts_ok = put_latencies.lock().unwrap().len();
    let settle_started = Instant::now();
    while key_sink.first_receipts.load(Ordering::Acquire) < puts_ok
        && settle_started.elapsed() < Duration::from_secs(args.settle_secs)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_in = write_started.elapsed();
    // Grace period: a duplicate or stray event would show up here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node_after_writes = target.proc();

    let mut lost = 0;
    let mut duplicated = 0;
    let mut rev_mismatch = 0;
    let mut latencies = Vec::with_capacity(w);
    for seq in 0..w {
        match key_sink.recv_count[seq].load(Ordering::Acquire) {
            0 => {
                lost += 1;
                if lost <= 5 {
                    failures.add(
                        "write produced no event",
                        format!("write {seq} to bench/w/{}", key_sink.target[seq]),
                    );
                } else {
                    failures.add("write produced no event", String::new());
                }
            }
            1 => {}
            _ => duplicated += 1,
        }
        let (put, got) = (
            key_sink.put_rev[seq].load(Ordering::Relaxed),
            key_sink.event_rev[seq].load(Ordering::Relaxed),
        );
        if put != 0 && got != 0 && put != got {
            rev_mismatch += 1;
            failures.add(
                "event revision differs from the PUT's revision",
                format!("write {seq}: PUT {put}, event {got}"),
            );
        }
        let latency = key_sink.latency[seq].load(Ordering::Relaxed);
        if latency > 0 {
            latencies.push(latency);
        }
    }
    let total1 = key_sink.total.load(Ordering::Relaxed);
    if total1 != w as u64 {
        failures.add(
            "total events differ from writes",
            format!("{total1} events for {w} writes"),
        );
    }

    report.section(&format!(
        "scenario 1: {n} watches, one key each (bench/w/{{i}})"
    ));
    report.row("watches", n.to_string());
    report.row(
        "time to connect all watches",
        format!(
            "{:.2} s ({} at a time; retried attempts {}, failed {})",
            connect1.as_secs_f64(),
            args.connect_concurrency,
            group1.stats.retries.load(Ordering::Relaxed),
            group1.stats.failed.load(Ordering::Relaxed)
        ),
    );
    report.row(
        "writes",
        format!(
            "{w} ({} concurrent writers, {} succeeded)",
            args.concurrency, puts_ok
        ),
    );
    report.row(
        "write throughput",
        format!(
            "{:.1} writes/s ({:.3} s for all PUTs; last event {:.3} s after the first PUT)",
            puts_ok as f64 / write_time.as_secs_f64(),
            write_time.as_secs_f64(),
            all_in.as_secs_f64()
        ),
    );
    match summarize(latencies) {
        Some(s) => report.row(
            "write-to-event latency",
            format!(
                "p50 {}  p90 {}  p99 {}  max {}  (n={})",
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max),
                s.count
            ),
        ),
        None => report.row("write-to-event latency", "no events"),
    }
    let put_lat = std::mem::take(&mut *put_latencies.lock().unwrap());
    match summarize(put_lat) {
        Some(s) => report.row(
            "PUT latency",
            format!(
                "p50 {}  p90 {}  p99 {}  max {}",
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max)
            ),
        ),
        None => report.row("PUT latency", "no successful PUTs"),
    }
    report.row(
        "events",
        format!(
            "{total1} received / {w} expected; lost {lost}, duplicated {duplicated}, revision mismatches {rev_mismatch}, dropped streams {}",
            group1.stats.dropped.load(Ordering::Relaxed)
        ),
    );
    report.row("node before watches", mib(node_start));
    report.row(format!("node with {n} idle watches"), mib(node_idle));
    report.row("node after the writes", mib(node_after_writes));
    report.row("bench process RSS with watches", bench_idle);

    // ---- scenario 2: fanout
    let group2 = if args.fanout > 0 {
        let k = args.fanout;
        let fw = args.fanout_writes;
        let before = watchers(&control, &api).await?;
        eprintln!("scenario 2: opening {k} watches on prefix {FAN_PREFIX} ({} scenario-1 watches stay open)", n);
        let urls = (0..k)
            .map(|_| format!("{api}/v1/watch?prefix={FAN_PREFIX}"))
            .collect();
        let fan = Arc::new(FanSink {
            base,
            writes: fw,
            sent_at: atomics(fw),
            put_rev: atomics(fw),
            seen_rev: atomics(fw),
            count: (0..fw).map(|_| AtomicUsize::new(0)).collect(),
            first: (0..fw).map(|_| AtomicU64::new(u64::MAX)).collect(),
            last: atomics(fw),
            next: (0..k).map(|_| AtomicUsize::new(0)).collect(),
            total: AtomicU64::new(0),
            failures: failures.clone(),
        });
        let group2 = open_group(&spawn, urls, fan.clone());
        let connect2 = wait_registered(
            &control,
            &api,
            "scenario 2",
            before + k as u64,
            before,
            k,
            &group2.stats,
            connect_limit,
        )
        .await?;
        let node_fan_idle = target.proc();
        eprintln!(
            "scenario 2: {k} prefix watches registered in {:.2} s; {fw} writes to {FAN_KEY}",
            connect2.as_secs_f64()
        );
        let mut fan_put = Vec::with_capacity(fw);
        let mut incomplete = 0;
        for i in 0..fw {
            let sent = Instant::now();
            fan.sent_at[i].store(nanos(base, sent), Ordering::Release);
            match writer.put(FAN_KEY, format!("f{i}")).await {
                Ok(answer) => {
                    fan_put.push(sent.elapsed().as_nanos() as u64);
                    fan.put_rev[i].store(answer.revision, Ordering::Relaxed);
                }
                Err(e) => {
                    failures.add("PUT failed", format!("fan write {i}: {}", chain(&e)));
                    continue;
                }
            }
            let waiting = Instant::now();
            while fan.count[i].load(Ordering::Acquire) < k
                && waiting.elapsed() < Duration::from_secs(args.settle_secs)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let got = fan.count[i].load(Ordering::Acquire);
            if got < k {
                incomplete += 1;
                failures.add(
                    "fan write not received by every watcher",
                    format!("write {i}: {got}/{k} within {}s", args.settle_secs),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let node_fan_after = target.proc();
        let total2 = fan.total.load(Ordering::Relaxed);
        let expected2 = (fw * k) as u64;
        if total2 != expected2 {
            failures.add(
                "fanout: total events differ from writes x watchers",
                format!("{total2} events, expected {expected2}"),
            );
        }
        for i in 0..fw {
            let (put, seen) = (
                fan.put_rev[i].load(Ordering::Relaxed),
                fan.seen_rev[i].load(Ordering::Relaxed),
            );
            if put != 0 && seen != 0 && put != seen {
                failures.add(
                    "event revision differs from the PUT's revision",
                    format!("fan write {i}: PUT {put}, event {seen}"),
                );
            }
        }
        let short: usize = fan
            .next
            .iter()
            .filter(|n| n.load(Ordering::Relaxed) != fw)
            .count();
        let lasts: Vec<u64> = fan
            .last
            .iter()
            .map(|v| v.load(Ordering::Relaxed))
            .filter(|v| *v > 0)
            .collect();
        let firsts: Vec<u64> = fan
            .first
            .iter()
            .map(|v| v.load(Ordering::Relaxed))
            .filter(|v| *v != u64::MAX)
            .collect();

        report.section(&format!(
            "scenario 2: fanout, {k} watches on prefix {FAN_PREFIX} (plus the {n} above)"
        ));
        report.row("fanout watches", k.to_string());
        report.row(
            "time to connect them",
            format!(
                "{:.2} s (retried attempts {}, failed {})",
                connect2.as_secs_f64(),
                group2.stats.retries.load(Ordering::Relaxed),
                group2.stats.failed.load(Ordering::Relaxed)
            ),
        );
        report.row("writes", format!("{fw} to {FAN_KEY}, one at a time"));
        match summarize(lasts) {
            Some(s) => report.row(
                "write to last watcher",
                format!(
                    "p50 {}  p90 {}  p99 {}  max {}",
                    ms(s.p50),
                    ms(s.p90),
                    ms(s.p99),
                    ms(s.max)
                ),
            ),
            None => report.row("write to last watcher", "no events"),
        }
        if let Some(s) = summarize(firsts) {
            report.row(
                "write to first watcher",
                format!("p50 {}  p99 {}  max {}", ms(s.p50), ms(s.p99), ms(s.max)),
            );
        }
        if let Some(s) = summarize(fan_put) {
            report.row(
                "PUT latency",
                format!("p50 {}  p99 {}  max {}", ms(s.p50), ms(s.p99), ms(s.max)),
            );
        }
        report.row(
            "events",
            format!(
                "{total2} received / {expected2} expected; writes not seen by all {incomplete}, watchers with a wrong count {short}, dropped streams {}",
                group2.stats.dropped.load(Ordering::Relaxed)
            ),
        );
        report.row("node with fanout watches idle", mib(node_fan_idle));
        report.row("node after fanout writes", mib(node_fan_after));
        Some(group2)
    } else {
        None
    };

    // Scenario 1's watchers must not have seen any fanout write.
    let total1_end = key_sink.total.load(Ordering::Relaxed);
    if total1_end != total1 {
        failures.add(
            "scenario-1 watchers got events during the fanout scenario",
            format!("{} extra", total1_end - total1),
        );
    }
    let dropped1 = group1.stats.dropped.load(Ordering::Relaxed);
    let keepalives = group1.stats.comments.load(Ordering::Relaxed)
        + group2
            .as_ref()
            .map_or(0, |g| g.stats.comments.load(Ordering::Relaxed));

    // ---- after: close everything and see the node let go of the watches
    eprintln!("closing all watch connections");
    let registered_open = watchers(&control, &api).await?;
    group1.close().await;
    if let Some(group2) = group2 {
        group2.close().await;
    }
    let closed_at = Instant::now();
    let mut remaining = watchers(&control, &api).await?;
    while remaining > baseline && closed_at.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        remaining = watchers(&control, &api).await?;
    }
    report.section("after closing every watch connection");
    report.row(
        "node watchers while open",
        registered_open.saturating_sub(baseline).to_string(),
    );
    report.row(
        "node watchers 5 s after close",
        format!(
            "{}{}",
            remaining.saturating_sub(baseline),
            if remaining > baseline {
                "  (WARNING: registrations outlive their connections)"
            } else {
                ""
            }
        ),
    );
    if remaining > baseline && args.fanout > 0 {
        // Does a matching write release the registrations of closed connections?
        let _ = writer.put(FAN_KEY, "probe").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after_probe = watchers(&control, &api).await?;
        report.row(
            format!("... after one more write to {FAN_KEY}"),
            after_probe.saturating_sub(baseline).to_string(),
        );
        warnings.add(
            "watch registrations outlive closed connections",
            format!(
                "{} still registered 5 s after close; {} after one write to {FAN_KEY}",
                remaining - baseline,
                after_probe.saturating_sub(baseline)
            ),
        );
    }
    let after_close = target.proc();
    report.row("node after close", mib(after_close));
    if let Some(s) = after_close {
        report.row("node peak RSS (VmHWM)", format!("{:.1} MiB", s.hwm_mib()));
    }
    report.row("keepalive comments received", keepalives.to_string());
    if let Some(node) = target.node.as_mut() {
        if !node.alive() {
            failures.add("node process died", "the node exited during the run".into());
        }
    }
    if dropped1 > 0 {
        eprintln!("{dropped1} scenario-1 streams dropped");
    }

    let ok = failures.total() == 0;
    report.section("checks");
    if ok {
        report.row(
            "verdict",
            "OK: every write produced exactly one event at exactly its watcher(s); no stray events",
        );
    } else {
        report.row("verdict", "MISMATCH");
        for line in failures.lines() {
            report.row("MISMATCH", line);
        }
    }
    for line in warnings.lines() {
        report.row("warning", line);
    }
    Ok(ok)
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
