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
//! - memory: the leader's resident memory before and after `--sleeping`
//!   instances start waiting on an hour-long timer, per instance.
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
    about = "Workflow instances on three nodes: transitions/s, event-to-state latency, memory per waiting instance"
)]
struct Args {
    /// shoal binary [default: $SHOAL_BIN, else $CARGO_TARGET_DIR/release/shoal, else .../debug/shoal]
    #[arg(long)]
    shoal_bin: Option<std::path::PathBuf>,
    /// Instances of the throughput run.
    #[arg(long, default_value_t = 3000)]
    instances: usize,
    /// Concurrent clients starting them.
    #[arg(long, default_value_t = 32)]
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
}

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

    async fn start(&self, node: usize, workflow: &str, id: &str) -> anyhow::Result<()> {
        let url = format!(
            "{}/v1/workflows/bench/{workflow}/instances",
            self.apis[node]
        );
        let answer = self
            .http
            .post(url)
            .json(&json!({"id": id, "input": {"id": id}}))
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!("starting {id}: {}", answer.text().await?);
        }
        Ok(())
    }

    /// The leader's metrics: (transitions, instances by workflow and status).
    async fn leader_metrics(&self) -> anyhow::Result<(f64, HashMap<(String, String), f64>)> {
        let text = self
            .http
            .get(format!("{}/metrics", self.apis[self.leader]))
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
        loop {
            let count = self.count(workflow, status).await?;
            if count >= want {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!("only {count} of {want} bench/{workflow} instances {status} after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    println!(
        "| throughput | {} instances of 3 steps, {} clients | started in {:.2} s, all completed in {:.2} s | {:.0} instances/s | {:.0} transitions/s ({} state writes) |",
        args.instances,
        args.clients,
        all_started.as_secs_f64(),
        elapsed.as_secs_f64(),
        args.instances as f64 / elapsed.as_secs_f64(),
        transitions / elapsed.as_secs_f64(),
        transitions
    );
    Ok(())
}

async fn latency(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    bench.put_definition(EVENT, "event").await?;
    let ids: Vec<String> = (0..args.waiting).map(|i| format!("e-{i}")).collect();
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
        let answer = bench
            .http
            .post(format!("{}/v1/topics/bench.go", bench.apis[publisher]))
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
        "| latency | {} events at {}/s, published on a follower, seen on another | {received} completed | p50 {} | p99 {} (max {}) |",
        args.waiting,
        args.rate,
        ms(summary.p50),
        ms(summary.p99),
        ms(summary.max)
    );
    Ok(())
}

async fn memory(bench: &Bench, args: &Args, leader_pid: u32) -> anyhow::Result<()> {
    bench.put_definition(SLEEP, "sleep").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = ProcStats::read(leader_pid).context("reading the leader's memory")?;
    let ids: Vec<String> = (0..args.sleeping).map(|i| format!("z-{i}")).collect();
    bench.start_all("sleep", ids, args.clients).await?;
    bench
        .wait_count("sleep", "waiting", args.sleeping, Duration::from_secs(600))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ProcStats::read(leader_pid).context("reading the leader's memory")?;
    let per_instance =
        (after.rss_mib() - before.rss_mib()) * 1024.0 * 1024.0 / args.sleeping as f64;
    println!(
        "| memory | {} instances waiting on a timer | leader RSS {:.1} MiB -> {:.1} MiB | {:.0} bytes per waiting instance | |",
        args.sleeping,
        before.rss_mib(),
        after.rss_mib(),
        per_instance
    );
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (binary, _) = node::resolve_binary(args.shoal_bin.clone())?;
    let mut nodes = Node::spawn_cluster(&binary, 3, &[])?;
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
    let bench = Bench { http, apis, leader };
    println!("| run | load | result | rate or p50 | transitions or p99 |");
    println!("| --- | --- | --- | --- | --- |");
    throughput(&bench, &args).await?;
    latency(&bench, &args).await?;
    memory(&bench, &args, nodes[leader].pid).await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    runner::run_benchmark("wf-bench", run(args))
}
