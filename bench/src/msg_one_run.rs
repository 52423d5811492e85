//! One run of msg-bench: one scenario at one payload size on one
//! deployment, its subscribers counting what they get, and its outcome.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::watch;

use super::Args;
use crate::client::{wait_interest, Incoming, NatsEvents, Publisher, SubConn};
use crate::cpu::{cpu_between, sample_cpu, CpuUse};
use crate::payload::{decode, now_ns, payload, HEADER, PROBE};
use crate::stats::{summarize, Summary};
use crate::systems::{Deployment, System};

#[derive(Default)]
struct SubReport {
    unique: u64,
    duplicates: u64,
    /// Shoal `{"dropped": n}` frames, summed.
    dropped_reported: u64,
    malformed: u64,
    last: Option<Instant>,
    latencies: Vec<u64>,
    ended: Option<String>,
}

async fn subscriber(
    mut conn: SubConn,
    expected: u64,
    record_latency: bool,
    probed: Arc<AtomicUsize>,
    mut done: watch::Receiver<bool>,
    idle: Duration,
    drain: Duration,
) -> SubReport {
    let mut report = SubReport::default();
    let mut seen = vec![false; expected as usize];
    let mut probe_seen = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    if record_latency {
        report.latencies.reserve(expected as usize);
    }
    while report.unique < expected {
        let incoming = match deadline {
            // The publisher is done: stop after `idle` without a message, or at the drain deadline.
            Some(deadline) => {
                let until = (tokio::time::Instant::now() + idle).min(deadline);
                match tokio::time::timeout_at(until, conn.next()).await {
                    Ok(incoming) => incoming,
                    Err(_) => break,
                }
            }
            None => tokio::select! {
                incoming = conn.next() => incoming,
                _ = done.changed() => {
                    deadline = Some(tokio::time::Instant::now() + drain);
                    continue;
                }
            },
        };
        match incoming {
            Incoming::Payload(data) => {
                let received = now_ns();
                let Some((seq, sent)) = decode(&data) else {
                    report.malformed += 1;
                    continue;
                };
                if seq == PROBE {
                    if !probe_seen {
                        probe_seen = true;
                        probed.fetch_add(1, Ordering::SeqCst);
                    }
                    continue;
                }
                let Some(slot) = seen.get_mut(seq as usize) else {
                    report.malformed += 1;
                    continue;
                };
                report.last = Some(Instant::now());
                if *slot {
                    report.duplicates += 1;
                } else {
                    *slot = true;
                    report.unique += 1;
                    if record_latency {
                        report.latencies.push(received.saturating_sub(sent));
                    }
                }
            }
            Incoming::Dropped(n) => report.dropped_reported += n,
            Incoming::Closed(why) => {
                report.ended = Some(why);
                break;
            }
        }
    }
    report
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Scenario {
    Throughput,
    Fanout,
    Latency,
}

impl Scenario {
    pub(super) fn parse(name: &str) -> anyhow::Result<Scenario> {
        Ok(match name {
            "throughput" => Scenario::Throughput,
            "fanout" => Scenario::Fanout,
            "latency" => Scenario::Latency,
            other => bail!("unknown scenario {other:?} (throughput, fanout, latency)"),
        })
    }
}

pub(super) struct Outcome {
    pub(super) subscribers: usize,
    pub(super) sent: u64,
    pub(super) publish_secs: f64,
    pub(super) expected: u64,
    pub(super) delivered: u64,
    pub(super) duplicates: u64,
    pub(super) dropped_reported: u64,
    pub(super) malformed: u64,
    /// From the first publish to the last message received.
    pub(super) elapsed_secs: f64,
    pub(super) latency: Option<Summary>,
    pub(super) cpu: CpuUse,
    pub(super) interest_wait: Option<Duration>,
    pub(super) nats_slow_consumer: u64,
    pub(super) nats_disconnected: u64,
    pub(super) ended: Vec<String>,
    /// Delivered rates of every repetition of this run.
    pub(super) all_rates: Vec<f64>,
}

impl Outcome {
    pub(super) fn rate(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.delivered as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }

    /// Microseconds of the servers' CPU per message delivered: what bounds
    /// the throughput of servers on cores of their own, which the bench's
    /// clients (here on the same cores) do not share.
    pub(super) fn server_us_per_message(&self) -> f64 {
        self.cpu.server_secs * 1e6 / self.delivered.max(1) as f64
    }

    pub(super) fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
}

static RUN: AtomicU64 = AtomicU64::new(0);

pub(super) async fn run_one(
    dep: &Deployment,
    scenario: Scenario,
    size: usize,
    count: u64,
    args: &Args,
) -> anyhow::Result<Outcome> {
    let topic = format!("bench.r{}", RUN.fetch_add(1, Ordering::Relaxed));
    let subscribers = if scenario == Scenario::Fanout {
        args.fanout
    } else {
        1
    };
    let count = if scenario == Scenario::Latency {
        args.rate * args.latency_secs
    } else {
        count
    };
    let (publish_node, subscribe_node) = (0, if dep.len() > 1 { 1 } else { 0 });
    let events = Arc::new(NatsEvents::default());

    let mut conns = Vec::new();
    for _ in 0..subscribers {
        conns.push(
            SubConn::connect(dep, subscribe_node, &topic, args.buffer, events.clone()).await?,
        );
    }
    let interest_wait = if matches!(dep.system, System::Shoal(_)) && publish_node != subscribe_node
    {
        Some(
            wait_interest(
                &dep.http,
                &dep.endpoint(publish_node),
                &dep.endpoint(subscribe_node),
                &topic,
            )
            .await?,
        )
    } else {
        None
    };
    let mut publisher = Publisher::connect(dep, publish_node, &topic, events.clone()).await?;

    let probed = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let idle = Duration::from_millis(args.idle_ms);
    let drain = Duration::from_secs(args.drain_secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let latency = scenario == Scenario::Latency;
            tokio::spawn(subscriber(
                conn,
                count,
                latency,
                probed.clone(),
                done_rx.clone(),
                idle,
                drain,
            ))
        })
        .collect();

    // Probe until every subscriber has one: the path is open end to end (for
    // NATS across servers, the route has the subscription).
    let probe_started = Instant::now();
    while probed.load(Ordering::SeqCst) < subscribers {
        if probe_started.elapsed() > Duration::from_secs(30) {
            bail!("subscribers did not get a probe within 30 s");
        }
        publisher.send(payload(PROBE, HEADER)).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (stop_cpu, stop_cpu_rx) = watch::channel(false);
    let sampler = sample_cpu(dep.pids(), stop_cpu_rx);
    tokio::time::sleep(Duration::from_millis(60)).await;

    let started = Instant::now();
    let publishing = async {
        if scenario == Scenario::Latency {
            let interval_ns = 1_000_000_000 / args.rate.max(1);
            let start = tokio::time::Instant::now();
            for seq in 0..count {
                tokio::time::sleep_until(start + Duration::from_nanos(seq * interval_ns)).await;
                publisher.send(payload(seq, size)).await?;
            }
        } else {
            for seq in 0..count {
                publisher.feed(payload(seq, size)).await?;
            }
        }
        publisher.flush().await
    };
    let published = tokio::time::timeout(Duration::from_secs(300), publishing).await;
    let publish_secs = started.elapsed().as_secs_f64();
    let _ = done_tx.send(true);
    match published {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context("publishing")),
        Err(_) => bail!("publishing did not finish within 300 s"),
    }

    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await?);
    }
    let _ = stop_cpu.send(true);
    let samples = sampler.await?;
    publisher.close().await;

    let last = reports
        .iter()
        .filter_map(|r| r.last)
        .max()
        .unwrap_or(started);
    let cpu = cpu_between(&samples, started, last);
    let latency = if scenario == Scenario::Latency {
        summarize(
            reports
                .iter()
                .flat_map(|r| r.latencies.iter().copied())
                .collect(),
        )
    } else {
        None
    };
    Ok(Outcome {
        subscribers,
        sent: count,
        publish_secs,
        expected: count * subscribers as u64,
        delivered: reports.iter().map(|r| r.unique).sum(),
        duplicates: reports.iter().map(|r| r.duplicates).sum(),
        dropped_reported: reports.iter().map(|r| r.dropped_reported).sum(),
        malformed: reports.iter().map(|r| r.malformed).sum(),
        elapsed_secs: last.saturating_duration_since(started).as_secs_f64(),
        latency,
        cpu,
        interest_wait,
        nats_slow_consumer: events.slow_consumer.load(Ordering::Relaxed),
        nats_disconnected: events.disconnected.load(Ordering::Relaxed),
        ended: reports.iter().filter_map(|r| r.ended.clone()).collect(),
        all_rates: Vec::new(),
    })
}
