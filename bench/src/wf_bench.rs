//! wf-bench: workflow instances on a three-node cluster on this machine.
//!
//! - throughput: `--instances` instances of a three-step workflow (two
//!   1 ms timers, then a `set`) started by `--clients` concurrent clients
//!   through every node; the time until all have completed, and the driver's
//!   state writes per second (`shoal_workflow_transitions_total` on the
//!   leader);
//! - latency: `--waiting` instances wait for an event each; events are
//!   published at `--rate` per second on one node, and the time from publish
//!   to the instance's `completed` lifecycle event (received over SSE on
//!   another node) is measured;
//! - inbox: the same, with the events sent to the workflow event inbox
//!   (stored in Raft before the answer) instead of a topic;
//! - memory: the leader's and a follower's resident memory before and after
//!   `--sleeping` instances start waiting on an hour-long timer, per instance;
//! - timers: `--timers` instances wait on hour-long timers (the leader's
//!   memory per instance), and beside them `--probes` 5 s timers started at
//!   `--rate`: how late each fired (its recorded firing time against its
//!   due time);
//! - burst (not run by default): `--timers` instances each wait
//!   `--timer-wait-secs`, so they all fall due as fast as they started;
//! - recovery: `--recovering` instances wait on a timer, the leader is
//!   killed (`kill -9`); the time until a new leader tracks all of them,
//!   and until all completed. This run kills a node, so it is the last.
//!
//! No other workflow engine installs here, so there is no peer side by
//! side. See bench/README.md.

#[allow(dead_code)]
#[path = "node.rs"]
mod node;
#[path = "runner.rs"]
mod runner;
#[allow(dead_code)]
#[path = "sse.rs"]
mod sse;
#[allow(dead_code)]
#[path = "stats.rs"]
mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::node::{Node, ProcStats};
use crate::stats::{ms, summarize};

#[derive(Parser, Debug)]
#[command(
    about = "Workflow instances on three nodes: transitions/s, event-to-state latency, memory per waiting instance, timer lateness, recovery after a leader kill"
)]
struct Args {
    /// shoal binary [default: $SHOAL_BIN, else $CARGO_TARGET_DIR/release/shoal, else .../debug/shoal]
    #[arg(long)]
    shoal_bin: Option<std::path::PathBuf>,
    /// Instances of the throughput run.
    #[arg(long, default_value_t = 12_000)]
    instances: usize,
    /// Concurrent clients starting them (with 32, the starts, each an API
    /// write, bound the run, not the driver).
    #[arg(long, default_value_t = 128)]
    clients: usize,
    /// Instances waiting for an event in the latency run.
    #[arg(long, default_value_t = 1000)]
    waiting: usize,
    /// Events per second in the latency run.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Instances waiting on a timer in the memory run.
    #[arg(long, default_value_t = 10000)]
    sleeping: usize,
    /// Instances waiting on an hour-long timer in the timers run, and
    /// instances with a timer in the burst run.
    #[arg(long, default_value_t = 100_000)]
    timers: usize,
    /// Timers measured beside them in the timers run (started at --rate).
    #[arg(long, default_value_t = 2000)]
    probes: usize,
    /// How long each timer of the burst run waits: long enough that all
    /// are waiting before the first is due.
    #[arg(long, default_value_t = 150)]
    timer_wait_secs: u64,
    /// Instances waiting when the leader is killed in the recovery run.
    #[arg(long, default_value_t = 10_000)]
    recovering: usize,
    /// How long the `pause` run waits (between two runs, to tell the
    /// after-effects of one from the next).
    #[arg(long, default_value_t = 20)]
    pause_secs: u64,
    /// The runs to make, in this order (also: `burst`, `pause`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,latency,inbox,memory,timers,recovery"
    )]
    runs: Vec<String>,
    /// A `shoal serve` flag for every node, e.g. `--node-arg=--snapshot-every=100000`
    /// (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
}

/// How long a count of instances may stand still, once it has begun to
/// grow, before a run gives up on the rest.
const STALLED: Duration = Duration::from_secs(60);

const STEPS: &str = r#"
document: {dsl: '1.0.0', namespace: bench, name: steps, version: '1.0.0'}
do:
  - a: {wait: {milliseconds: 1}}
  - b: {wait: {milliseconds: 1}}
  - c: {set: {done: true}}
"#;

const EVENT: &str = r#"
document: {dsl: '1.0.0', namespace: bench, name: event, version: '1.0.0'}
do:
  - go:
      listen:
        to:
          one:
            with: {type: bench.go}
            correlate: {id: {from: '${ .data.id }', expect: '${ .id }'}}
  - done: {set: {done: true}}
"#;

const SLEEP: &str = r#"
document: {dsl: '1.0.0', namespace: bench, name: sleep, version: '1.0.0'}
do:
  - long: {wait: {hours: 1}}
"#;

/// A workflow whose one timer lasts `seconds`.
fn timer_workflow(name: &str, seconds: u64) -> String {
    format!(
        "document: {{dsl: '1.0.0', namespace: bench, name: {name}, version: '1.0.0'}}\n\
         do:\n  - nap: {{wait: {{seconds: {seconds}}}}}\n  - done: {{set: {{done: true}}}}\n"
    )
}

/// Starts answered 503 or 504 and sent again.
static RETRIED_STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Bench {
    http: reqwest::Client,
    apis: Vec<String>,
    leader: usize,
}

impl Bench {
    async fn put_definition(&self, yaml: &str, name: &str) -> anyhow::Result<()> {
        let url = format!(
            "{}/v1/workflows/definitions/bench/{name}/1.0.0",
            self.apis[0]
        );
        let answer = self.http.put(url).body(yaml.to_string()).send().await?;
        if !answer.status().is_success() {
            bail!("publishing bench/{name}: {}", answer.text().await?);
        }
        Ok(())
    }

    /// Starts an instance, as a client would: again (it is idempotent by
    /// id) while the cluster answers 503 or 504, for up to a minute.
    async fn start(&self, node: usize, workflow: &str, id: &str) -> anyhow::Result<()> {
        let url = format!(
            "{}/v1/workflows/bench/{workflow}/instances",
            self.apis[node]
        );
        let begun = Instant::now();
        loop {
            let answer = self
                .http
                .post(&url)
                .json(&json!({"id": id, "input": {"id": id}}))
                .send()
                .await?;
            let status = answer.status();
            if status.is_success() {
                return Ok(());
            }
            if !matches!(status.as_u16(), 503 | 504) || begun.elapsed() > Duration::from_secs(60) {
                bail!("starting {id}: {}", answer.text().await?);
            }
            RETRIED_STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's metrics: (transitions, instances by workflow and status).
    /// The node that leads now (it may have changed under load).
    async fn current_leader(&self) -> anyhow::Result<usize> {
        for _ in 0..600 {
            for (i, api) in self.apis.iter().enumerate() {
                let Ok(answer) = self.http.get(format!("{api}/v1/status")).send().await else {
                    continue;
                };
                let status: Value = answer.json().await.unwrap_or(Value::Null);
                if status["state"] == json!("Leader") {
                    return Ok(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("no leader for 12 s")
    }

    async fn leader_metrics(&self) -> anyhow::Result<(f64, HashMap<(String, String), f64>)> {
        let leader = self.current_leader().await?;
        let text = self
            .http
            .get(format!("{}/metrics", self.apis[leader]))
            .send()
            .await?
            .text()
            .await?;
        let mut transitions = 0.0;
        let mut instances = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if name == "shoal_workflow_transitions_total" {
                transitions = value;
            } else if let Some(labels) = name.strip_prefix("shoal_workflow_instances{") {
                let label = |key: &str| {
                    labels
                        .split(&format!("{key}=\""))
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                        .unwrap_or_default()
                        .to_string()
                };
                instances.insert((label("workflow"), label("status")), value);
            }
        }
        Ok((transitions, instances))
    }

    async fn count(&self, workflow: &str, status: &str) -> anyhow::Result<usize> {
        let (_, instances) = self.leader_metrics().await?;
        Ok(instances
            .get(&(format!("bench/{workflow}/1.0.0"), status.to_string()))
            .copied()
            .unwrap_or(0.0) as usize)
    }

    async fn wait_count(
        &self,
        workflow: &str,
        status: &str,
        want: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut last = (0, Instant::now());
        loop {
            let count = self.count(workflow, status).await?;
            if count >= want {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!("only {count} of {want} bench/{workflow} instances {status} after {limit:?}");
            }
            // Once some arrived (timers may hold all back at first), stuck
            // instances end the run now rather than at the limit.
            if count != last.0 {
                last = (count, Instant::now());
            } else if count > 0 && last.1.elapsed() > STALLED {
                bail!("bench/{workflow} instances {status} stayed at {count} of {want} for {STALLED:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Nanoseconds each completed instance of `workflow` fired its `nap`
    /// timer after it was due, from the recorded outcomes (read on `node`).
    async fn timer_lateness(&self, node: usize, workflow: &str) -> anyhow::Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/v1/workflows/instances?namespace=bench&name={workflow}&status=completed&limit=1000",
                self.apis[node]
            );
            if let Some(after) = &after {
                url.push_str(&format!("&after={after}"));
            }
            let page: Value = self.http.get(url).send().await?.json().await?;
            for instance in page["instances"].as_array().into_iter().flatten() {
                if let Some(id) = instance["id"].as_str() {
                    ids.push(id.to_string());
                }
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        let api = &self.apis[node];
        let lateness = futures::stream::iter(ids)
            .map(|id| async move {
                let instance: Value = self
                    .http
                    .get(format!("{api}/v1/workflows/instances/{id}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                let timer = &instance["outcomes"]["/do/0/nap"];
                Ok::<_, anyhow::Error>(
                    match (timer["outcome"]["due_ms"].as_u64(), timer["at_ms"].as_u64()) {
                        (Some(due), Some(fired)) => Some(fired.saturating_sub(due) * 1_000_000),
                        _ => None,
                    },
                )
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        let mut samples = Vec::with_capacity(lateness.len());
        for sample in lateness {
            samples.extend(sample?);
        }
        Ok(samples)
    }

    /// Starts `ids` with `clients` concurrent clients through every node.
    async fn start_all(
        &self,
        workflow: &str,
        ids: Vec<String>,
        clients: usize,
    ) -> anyhow::Result<()> {
        let queue = Arc::new(Mutex::new(ids));
        let mut tasks = Vec::new();
        for client in 0..clients {
            let queue = queue.clone();
            let bench = Bench {
                http: self.http.clone(),
                apis: self.apis.clone(),
                leader: self.leader,
            };
            let workflow = workflow.to_string();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(id) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    bench
                        .start(client % bench.apis.len(), &workflow, &id)
                        .await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    }
}

async fn throughput(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    bench.put_definition(STEPS, "steps").await?;
    let (before, _) = bench.leader_metrics().await?;
    let ids: Vec<String> = (0..args.instances).map(|i| format!("s-{i}")).collect();
    let started = Instant::now();
    bench.start_all("steps", ids, args.clients).await?;
    let all_started = started.elapsed();
    bench
        .wait_count(
            "steps",
            "completed",
            args.instances,
            Duration::from_secs(600),
        )
        .await?;
    let elapsed = started.elapsed();
    let (after, _) = bench.leader_metrics().await?;
    let transitions = after - before;
    // Every completed instance ran the definition's three tasks.
    let task_runs = 3.0 * args.instances as f64;
    println!(
        "| throughput | {} instances of 3 steps, {} clients | started in {:.2} s, all completed in {:.2} s | {:.0} instances/s | {:.0} driver writes/s ({} state writes), {:.0} task runs/s |",
        args.instances,
        args.clients,
        all_started.as_secs_f64(),
        elapsed.as_secs_f64(),
        args.instances as f64 / elapsed.as_secs_f64(),
        transitions / elapsed.as_secs_f64(),
        transitions,
        task_runs / elapsed.as_secs_f64()
    );
    Ok(())
}

/// Event-to-state latency, the events published on a topic or (`inbox`)
/// sent to the workflow event inbox.
async fn latency(bench: &Bench, args: &Args, inbox: bool) -> anyhow::Result<()> {
    bench.put_definition(EVENT, "event").await?;
    let prefix = if inbox { "i" } else { "e" };
    let ids: Vec<String> = (0..args.waiting).map(|i| format!("{prefix}-{i}")).collect();
    bench.start_all("event", ids.clone(), args.clients).await?;
    bench
        .wait_count("event", "waiting", args.waiting, Duration::from_secs(300))
        .await?;
    let subscriber = (bench.leader + 1) % bench.apis.len();
    let publisher = (bench.leader + 2) % bench.apis.len();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stream = bench
        .http
        .get(format!(
            "{}/v1/subscribe?pattern=workflows.bench.event.completed",
            bench.apis[subscriber]
        ))
        .send()
        .await?;
    let reader = {
        let (sent, samples) = (sent.clone(), samples.clone());
        let want = args.waiting;
        tokio::spawn(async move {
            let mut body = stream.bytes_stream();
            let mut parser = sse::SseParser::default();
            let mut events = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                parser.push(&chunk, &mut events);
                for event in events.drain(..) {
                    let Ok(envelope) = serde_json::from_str::<Value>(&event.data) else {
                        continue;
                    };
                    let Some(id) = envelope["data"]["instance"].as_str() else {
                        continue;
                    };
                    let at = sent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(id)
                        .copied();
                    if let Some(at) = at {
                        let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
                        samples.push(at.elapsed().as_nanos() as u64);
                        if samples.len() >= want {
                            return;
                        }
                    }
                }
            }
        })
    };
    // The subscription reaches the leader by gossip.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut next = Instant::now();
    for id in &ids {
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        sent.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Instant::now());
        let path = if inbox {
            "/v1/workflows/events/bench.go"
        } else {
            "/v1/topics/bench.go"
        };
        let answer = bench
            .http
            .post(format!("{}{path}", bench.apis[publisher]))
            .header("ce-type", "bench.go")
            .header("ce-id", format!("go-{id}"))
            .header("content-type", "application/json")
            .body(json!({ "id": id }).to_string())
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!("publishing the event of {id}: {}", answer.status());
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), reader).await;
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let received = samples.len();
    let summary = summarize(samples).context("no instance completed")?;
    println!(
        "| {} | {} events at {}/s, {} on a follower, seen on another | {received} completed | p50 {} | p99 {} (max {}) |",
        if inbox { "inbox latency" } else { "latency" },
        args.waiting,
        args.rate,
        if inbox {
            "sent to the inbox"
        } else {
            "published"
        },
        ms(summary.p50),
        ms(summary.p99),
        ms(summary.max)
    );
    Ok(())
}

/// The leader's and a follower's RSS before any, after half and after all
/// `--sleeping` instances wait on a timer: the growth per instance over all
/// of them, and over the second half alone (the marginal cost: buffers of
/// fixed size, such as memtables and caches, have filled in the first
/// half). A follower holds the same replicated state but drives nothing,
/// so the difference between the two is what driving costs.
async fn memory(
    bench: &Bench,
    args: &Args,
    leader_pid: u32,
    follower_pid: u32,
) -> anyhow::Result<()> {
    bench.put_definition(SLEEP, "sleep").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let half = args.sleeping / 2;
    let read = || -> anyhow::Result<(ProcStats, ProcStats)> {
        Ok((
            ProcStats::read(leader_pid).context("reading the leader's memory")?,
            ProcStats::read(follower_pid).context("reading a follower's memory")?,
        ))
    };
    let mut rss = vec![read()?];
    for (from, to) in [(0, half), (half, args.sleeping)] {
        let ids: Vec<String> = (from..to).map(|i| format!("z-{i}")).collect();
        bench.start_all("sleep", ids, args.clients).await?;
        bench
            .wait_count("sleep", "waiting", to, Duration::from_secs(600))
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push(read()?);
    }
    let per_instance = |from: &ProcStats, to: &ProcStats, count: usize| {
        (to.rss_mib() - from.rss_mib()) * 1024.0 * 1024.0 / count.max(1) as f64
    };
    for (role, follower) in [("leader", false), ("follower", true)] {
        let pick = |pair: &(ProcStats, ProcStats)| if follower { pair.1 } else { pair.0 };
        let (before, middle, after) = (pick(&rss[0]), pick(&rss[1]), pick(&rss[2]));
        println!(
            "| memory | {} instances waiting on a timer | {role} RSS {:.1} MiB -> {:.1} MiB | {:.0} bytes per waiting instance | |",
            args.sleeping,
            before.rss_mib(),
            after.rss_mib(),
            per_instance(&before, &after, args.sleeping)
        );
        println!(
            "| memory | the second {} of them | {role} RSS {:.1} MiB -> {:.1} MiB | {:.0} bytes per waiting instance (marginal) | |",
            args.sleeping - half,
            middle.rss_mib(),
            after.rss_mib(),
            per_instance(&middle, &after, args.sleeping - half)
        );
    }
    Ok(())
}

/// `--timers` instances wait on hour-long timers (the leader's memory for
/// them is measured); beside them, `--probes` instances with 5 s timers
/// start at `--rate` per second, and each probe's lateness is taken from
/// its recorded outcome.
async fn timers(bench: &Bench, args: &Args, leader_pid: u32) -> anyhow::Result<()> {
    const PROBE_SECS: u64 = 5;
    bench
        .put_definition(&timer_workflow("held", 3600), "held")
        .await?;
    bench
        .put_definition(&timer_workflow("probe", PROBE_SECS), "probe")
        .await?;
    let before = ProcStats::read(leader_pid).context("reading the leader's memory")?;
    let ids: Vec<String> = (0..args.timers).map(|i| format!("h-{i}")).collect();
    let started = Instant::now();
    bench.start_all("held", ids, args.clients).await?;
    bench
        .wait_count("held", "waiting", args.timers, Duration::from_secs(900))
        .await?;
    let all_waiting = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ProcStats::read(leader_pid).context("reading the leader's memory")?;
    println!(
        "| memory | {} instances waiting on a timer (all waiting after {:.0} s) | leader RSS {:.1} MiB -> {:.1} MiB | {:.0} bytes per waiting instance | |",
        args.timers,
        all_waiting.as_secs_f64(),
        before.rss_mib(),
        after.rss_mib(),
        (after.rss_mib() - before.rss_mib()) * 1024.0 * 1024.0 / args.timers as f64
    );
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut next = Instant::now();
    for i in 0..args.probes {
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        bench
            .start(i % bench.apis.len(), "probe", &format!("p-{i}"))
            .await?;
    }
    bench
        .wait_count("probe", "completed", args.probes, Duration::from_secs(300))
        .await?;
    let samples = bench.timer_lateness(bench.leader, "probe").await?;
    let count = samples.len();
    let summary = summarize(samples).context("no timer fired")?;
    println!(
        "| timers | {} timers of {PROBE_SECS} s started at {}/s beside {} waiting | {count} fired | lateness p50 {} | p99 {} (max {}) |",
        args.probes,
        args.rate,
        args.timers,
        ms(summary.p50),
        ms(summary.p99),
        ms(summary.max)
    );
    Ok(())
}

/// `--timers` instances whose timers all fall due within the time it took
/// to start them: a burst of firings at the cluster's write capacity.
async fn burst(bench: &Bench, args: &Args, leader_pid: u32) -> anyhow::Result<()> {
    bench
        .put_definition(&timer_workflow("timer", args.timer_wait_secs), "timer")
        .await?;
    let before = ProcStats::read(leader_pid).context("reading the leader's memory")?;
    let ids: Vec<String> = (0..args.timers).map(|i| format!("t-{i}")).collect();
    let started = Instant::now();
    bench.start_all("timer", ids, args.clients).await?;
    let waiting = bench
        .wait_count(
            "timer",
            "waiting",
            args.timers,
            Duration::from_secs(args.timer_wait_secs),
        )
        .await;
    let all_waiting = started.elapsed();
    let after = ProcStats::read(leader_pid).context("reading the leader's memory")?;
    if waiting.is_err() {
        eprintln!(
            "wf-bench: not all {} timers were armed before the first was due",
            args.timers
        );
    }
    bench
        .wait_count(
            "timer",
            "completed",
            args.timers,
            Duration::from_secs(args.timer_wait_secs + 600),
        )
        .await?;
    let samples = bench.timer_lateness(bench.leader, "timer").await?;
    let count = samples.len();
    let summary = summarize(samples).context("no timer fired")?;
    println!(
        "| burst | {} instances wait {} s each (all waiting after {:.0} s) | {count} fired | lateness p50 {} | p99 {} (max {}) |",
        args.timers,
        args.timer_wait_secs,
        all_waiting.as_secs_f64(),
        ms(summary.p50),
        ms(summary.p99),
        ms(summary.max)
    );
    println!(
        "| memory | {} instances waiting on a timer | leader RSS {:.1} MiB -> {:.1} MiB | {:.0} bytes per waiting instance | |",
        args.timers,
        before.rss_mib(),
        after.rss_mib(),
        (after.rss_mib() - before.rss_mib()) * 1024.0 * 1024.0 / args.timers as f64
    );
    Ok(())
}

async fn recovery(bench: &mut Bench, args: &Args, leader_pid: u32) -> anyhow::Result<()> {
    const WAIT_SECS: u64 = 30;
    bench
        .put_definition(&timer_workflow("recover", WAIT_SECS), "recover")
        .await?;
    let ids: Vec<String> = (0..args.recovering).map(|i| format!("r-{i}")).collect();
    let started = Instant::now();
    bench.start_all("recover", ids, args.clients).await?;
    bench
        .wait_count(
            "recover",
            "waiting",
            args.recovering,
            Duration::from_secs(WAIT_SECS),
        )
        .await?;
    let armed = started.elapsed();
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-9", &leader_pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -9 {leader_pid} failed");
    }
    let old = bench.leader;
    let mut elected = None;
    while elected.is_none() {
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("no new leader 60 s after killing the old one");
        }
        for (i, api) in bench.apis.iter().enumerate().filter(|(i, _)| *i != old) {
            let Ok(answer) = bench.http.get(format!("{api}/v1/status")).send().await else {
                continue;
            };
            let status: Value = answer.json().await.unwrap_or(Value::Null);
            if status["state"] == json!("Leader") {
                elected = Some((i, killed.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (leader, elected_after) = elected.context("no leader")?;
    bench.leader = leader;
    // The new leader's runner tracks every instance (its gauges count them).
    loop {
        let waiting = bench.count("recover", "waiting").await.unwrap_or(0);
        let completed = bench.count("recover", "completed").await.unwrap_or(0);
        if waiting + completed >= args.recovering {
            break;
        }
        if killed.elapsed() > Duration::from_secs(120) {
            bail!(
                "the new leader tracks {waiting} + {completed} of {} instances after 120 s",
                args.recovering
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tracked_after = killed.elapsed();
    bench
        .wait_count(
            "recover",
            "completed",
            args.recovering,
            Duration::from_secs(WAIT_SECS + 300),
        )
        .await?;
    let completed_after = killed.elapsed();
    let samples = bench.timer_lateness(leader, "recover").await?;
    let summary = summarize(samples).context("no timer fired")?;
    println!(
        "| recovery | {} instances waiting on {WAIT_SECS} s timers (armed in {:.1} s), leader killed | new leader after {:.2} s, tracking all after {:.2} s, all completed {:.1} s after the kill | lateness p50 {} | p99 {} |",
        args.recovering,
        armed.as_secs_f64(),
        elected_after.as_secs_f64(),
        tracked_after.as_secs_f64(),
        completed_after.as_secs_f64(),
        ms(summary.p50),
        ms(summary.p99),
    );
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (binary, _) = node::resolve_binary(args.shoal_bin.clone())?;
    let mut nodes = Node::spawn_cluster(&binary, 3, &args.node_args, None)?;
    for node in &mut nodes {
        node.wait_ready(Duration::from_secs(60)).await?;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let apis: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
    let mut leader = None;
    for _ in 0..100 {
        for (i, api) in apis.iter().enumerate() {
            let status: Value = http
                .get(format!("{api}/v1/status"))
                .send()
                .await?
                .json()
                .await?;
            if status["state"] == json!("Leader") {
                leader = Some(i);
            }
        }
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = leader.context("no leader")?;
    eprintln!("wf-bench: {} (leader: node {leader})", binary.display());
    let mut bench = Bench { http, apis, leader };
    println!("| run | load | result | rate or p50 | transitions or p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for run in &args.runs {
        match run.as_str() {
            "throughput" => throughput(&bench, &args).await?,
            "latency" => latency(&bench, &args, false).await?,
            "inbox" => latency(&bench, &args, true).await?,
            "memory" => {
                let follower = (leader + 1) % nodes.len();
                memory(&bench, &args, nodes[leader].pid, nodes[follower].pid).await?
            }
            "timers" => timers(&bench, &args, nodes[leader].pid).await?,
            "burst" => burst(&bench, &args, nodes[leader].pid).await?,
            "pause" => tokio::time::sleep(Duration::from_secs(args.pause_secs)).await,
            "recovery" => {
                let leader = bench.current_leader().await?;
                bench.leader = leader;
                recovery(&mut bench, &args, nodes[leader].pid).await?
            }
            other => bail!("no run named {other}"),
        }
    }
    let retried = RETRIED_STARTS.load(std::sync::atomic::Ordering::Relaxed);
    if retried > 0 {
        eprintln!("wf-bench: {retried} starts were answered 503/504 and sent again");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    runner::run_benchmark("wf-bench", run(args))
}
