//! watch-bench's run on a started node: scenario 1 (one watch per key),
//! scenario 2 (fanout), and what the node holds after every watch is closed.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;

use super::{Args, Target};
use crate::report::{mib, own_rss, Report};
use crate::sinks::{nanos, FanSink, KeySink, FAN_KEY, FAN_PREFIX};
use crate::stats::{ms, summarize};
use crate::status::{wait_registered, watchers};
use crate::watch::{chain, open_group, Problems, Spawn};

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

pub(super) async fn run(
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
