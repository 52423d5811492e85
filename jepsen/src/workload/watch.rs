//! Watch workload: writers put unique values under `jepsen/w/`, watchers
//! follow the prefix over SSE. A watcher reconnects to a different random
//! node whenever its stream fails or stalls, and also on its own every few
//! seconds, resuming with `Last-Event-ID`. Every received batch is logged
//! for the checker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::{op_of, pace, Ctx, Process};
use crate::checker::watch::{Connection, Received, Reference, WatcherLog};
use crate::client::Batch;

pub const PREFIX: &str = "jepsen/w/";
const KEYS: u32 = 5;
/// A stream that delivers nothing for this long is abandoned (events flow
/// continuously while writers run; keepalives come every 15 s).
const IDLE: Duration = Duration::from_secs(5);
/// How often a waiting watcher looks at the clock and at its stop signals.
const TICK: Duration = Duration::from_millis(200);

pub async fn writer(ctx: Ctx, writer: usize, writers: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = Process::new(writer, writers, 2000);
    let mut seq = 0u64;
    while !ctx.stopped() {
        let node = rng.random_range(0..ctx.n);
        let key = format!("{PREFIX}{}", rng.random_range(0..KEYS));
        let value = format!("{writer}-{seq}");
        seq += 1;
        let start = ctx.rec.clock.now_ns();
        let reply = ctx.api.write(node, &key, &value).await;
        let op = op_of(
            "watch",
            process.id,
            node,
            "write",
            &key,
            Some(value),
            None,
            start,
            ctx.rec.clock.now_ns(),
            &reply,
        );
        process.after(op.outcome);
        ctx.rec.record(op);
        pace(&mut rng).await;
        // Writers go a little slower than the other workloads: every write
        // fans out to every watcher.
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..20))).await;
    }
}

/// Tells the watchers when to stop.
#[derive(Default)]
pub struct WatchControl {
    /// Stop now, wherever you are.
    pub abort: AtomicBool,
    /// Stop once you have received this revision (or anything later).
    pub target: Mutex<Option<u64>>,
}

pub struct Watcher {
    pub log: Arc<Mutex<WatcherLog>>,
    pub handle: tokio::task::JoinHandle<()>,
}

/// Starts watcher `id` after `delay`: from revision 1 for watcher 0, else
/// from the current revision of a random node + 1.
pub fn spawn_watcher(
    ctx: Ctx,
    control: Arc<WatchControl>,
    id: usize,
    delay: Duration,
    seed: u64,
) -> Watcher {
    let log = Arc::new(Mutex::new(WatcherLog {
        id,
        ..Default::default()
    }));
    let task_log = log.clone();
    let handle = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut rng = StdRng::seed_from_u64(seed);
        let start_revision = if id == 0 {
            1
        } else {
            loop {
                if control.abort.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(rev) = ctx.api.revision(rng.random_range(0..ctx.n)).await {
                    break rev + 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        task_log.lock().unwrap().start_revision = start_revision;
        follow(&ctx, &control, &task_log, start_revision, &mut rng).await;
    });
    Watcher { log, handle }
}

fn note(
    ctx: &Ctx,
    log: &Mutex<WatcherLog>,
    node: usize,
    event: &str,
    detail: String,
    last_event_id: Option<u64>,
) {
    log.lock().unwrap().connections.push(Connection {
        at_ns: ctx.rec.clock.now_ns(),
        node,
        event: event.into(),
        detail,
        last_event_id,
    });
}

async fn follow(
    ctx: &Ctx,
    control: &WatchControl,
    log: &Mutex<WatcherLog>,
    start_revision: u64,
    rng: &mut StdRng,
) {
    let mut last: Option<u64> = None;
    let mut prev_node: Option<usize> = None;
    let done = |last: Option<u64>| {
        control.abort.load(Ordering::Relaxed)
            || matches!((*control.target.lock().unwrap(), last), (Some(t), Some(l)) if l >= t)
            || matches!(*control.target.lock().unwrap(), Some(t) if t < start_revision)
    };
    while !done(last) {
        let node = loop {
            let candidate = rng.random_range(0..ctx.n);
            if ctx.n == 1 || Some(candidate) != prev_node {
                break candidate;
            }
        };
        prev_node = Some(node);
        let resp = match ctx.api.watch(node, PREFIX, start_revision, last).await {
            Ok(resp) => resp,
            Err(e) => {
                note(ctx, log, node, "open-failed", e, last);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        note(ctx, log, node, "open", String::new(), last);
        let voluntary =
            tokio::time::Instant::now() + Duration::from_millis(rng.random_range(1000..6000));
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        let mut event = Event::default();
        let mut last_activity = tokio::time::Instant::now();
        let reason = loop {
            if done(last) {
                break "done".to_string();
            }
            let now = tokio::time::Instant::now();
            if now >= voluntary {
                break "voluntary reconnect".to_string();
            }
            if now >= last_activity + IDLE {
                break format!("idle for {IDLE:?}");
            }
            let chunk = match tokio::time::timeout(TICK, stream.next()).await {
                Err(_) => continue,
                Ok(None) => break "stream ended".to_string(),
                Ok(Some(Err(e))) => break format!("stream error: {e}"),
                Ok(Some(Ok(chunk))) => chunk,
            };
            last_activity = tokio::time::Instant::now();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            let mut failed = None;
            while let Some(nl) = buf.find('\n') {
                let line: String = buf.drain(..=nl).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if !line.is_empty() {
                    event.field(line);
                    continue;
                }
                // Blank line: dispatch the event.
                let ev = std::mem::take(&mut event);
                match ev.name.as_deref() {
                    Some("change") => match serde_json::from_str::<Value>(&ev.data)
                        .map_err(|e| e.to_string())
                        .and_then(|v| Batch::from_json(&v).map_err(|e| e.to_string()))
                    {
                        Ok(batch) => {
                            last = Some(batch.revision);
                            log.lock().unwrap().received.push(Received {
                                at_ns: ctx.rec.clock.now_ns(),
                                node,
                                sse_id: ev.id.as_deref().and_then(|s| s.trim().parse().ok()),
                                batch,
                            });
                        }
                        Err(e) => {
                            failed = Some(format!("unparsable change event: {e}: {}", ev.data))
                        }
                    },
                    Some("error") => failed = Some(format!("error event: {}", ev.data)),
                    _ => {}
                }
            }
            if let Some(f) = failed {
                break f;
            }
        };
        note(ctx, log, node, "closed", reason, last);
    }
}

#[derive(Default)]
struct Event {
    name: Option<String>,
    id: Option<String>,
    data: String,
}

impl Event {
    fn field(&mut self, line: &str) {
        if line.starts_with(':') {
            return; // comment (keepalive)
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "event" => self.name = Some(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            "data" => {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            _ => {}
        }
    }
}

/// The committed change history of the prefix, from every node.
pub async fn references(ctx: &Ctx, patience: Duration) -> Vec<Reference> {
    let mut out = Vec::new();
    for node in 0..ctx.n {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match ctx.api.poll_all(node, PREFIX).await {
                Ok(batches) => {
                    out.push(Reference {
                        node,
                        batches: Some(batches),
                        error: None,
                    });
                    break;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    out.push(Reference {
                        node,
                        batches: None,
                        error: Some(e.to_string()),
                    });
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    out
}
