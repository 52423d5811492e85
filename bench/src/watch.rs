//! SSE watch connections: opening many of them with bounded concurrency,
//! reading their streams, and handing every delivered event to a `Sink`.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::sse::{SseEvent, SseParser};

/// Problems by kind, with the first few examples of each.
#[derive(Default)]
pub struct Problems {
    inner: Mutex<BTreeMap<&'static str, (u64, Vec<String>)>>,
}

impl Problems {
    pub fn add(&self, kind: &'static str, detail: String) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(kind).or_default();
        entry.0 += 1;
        if entry.1.len() < 5 {
            entry.1.push(detail);
        }
    }

    pub fn total(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(n, _)| n)
            .sum()
    }

    pub fn lines(&self) -> Vec<String> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (kind, (count, examples)) in map.iter() {
            out.push(format!("{kind}: {count}"));
            for example in examples {
                out.push(format!("    e.g. {example}"));
            }
        }
        out
    }
}

/// An error with its whole source chain (reqwest hides the cause otherwise).
pub fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Receives every event delivered to any watcher of a group.
pub trait Sink: Send + Sync + 'static {
    /// `watcher` is the index of the connection that received the event;
    /// `at` is when the chunk holding it was read from the socket.
    fn on_event(
        &self,
        watcher: usize,
        revision: u64,
        kind: &str,
        key: &str,
        value: Option<&[u8]>,
        at: Instant,
    );
}

/// Counters shared by the connections of one group.
#[derive(Default)]
pub struct GroupStats {
    /// Connections that got `200 text/event-stream`.
    pub connected: AtomicUsize,
    /// Connections that gave up after all attempts.
    pub failed: AtomicUsize,
    /// Attempts that failed and were retried.
    pub retries: AtomicUsize,
    /// Streams that ended or failed while the bench still needed them.
    pub dropped: AtomicUsize,
    /// Set before the bench closes the connections on purpose.
    pub closing: AtomicBool,
    pub sse_events: AtomicU64,
    pub comments: AtomicU64,
}

pub struct Group {
    pub stats: Arc<GroupStats>,
    pub tasks: JoinSet<()>,
}

impl Group {
    /// Close every connection of the group (on purpose: not counted as drops).
    pub async fn close(mut self) {
        self.stats.closing.store(true, Ordering::SeqCst);
        self.tasks.shutdown().await;
    }
}

pub struct Spawn {
    pub client: reqwest::Client,
    pub semaphore: Arc<Semaphore>,
    pub attempt_timeout: Duration,
    pub attempts: usize,
    /// Problems that make the run fail.
    pub failures: Arc<Problems>,
    /// Problems worth reporting that the bench recovered from (retried connects).
    pub warnings: Arc<Problems>,
}

/// Open `urls.len()` watch connections; connection `i` reads `urls[i]`.
pub fn open_group(spawn: &Spawn, urls: Vec<String>, sink: Arc<dyn Sink>) -> Group {
    let stats = Arc::new(GroupStats::default());
    let mut tasks = JoinSet::new();
    for (i, url) in urls.into_iter().enumerate() {
        tasks.spawn(watcher(
            i,
            url,
            spawn.client.clone(),
            spawn.semaphore.clone(),
            spawn.attempt_timeout,
            spawn.attempts,
            stats.clone(),
            sink.clone(),
            spawn.failures.clone(),
            spawn.warnings.clone(),
        ));
    }
    Group { stats, tasks }
}

#[allow(clippy::too_many_arguments)]
async fn watcher(
    i: usize,
    url: String,
    client: reqwest::Client,
    semaphore: Arc<Semaphore>,
    attempt_timeout: Duration,
    attempts: usize,
    stats: Arc<GroupStats>,
    sink: Arc<dyn Sink>,
    failures: Arc<Problems>,
    warnings: Arc<Problems>,
) {
    let response = {
        let Ok(_permit) = semaphore.acquire().await else {
            return;
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = client
                .get(&url)
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .send();
            let result = match tokio::time::timeout(attempt_timeout, request).await {
                Err(_) => Err(format!("no response headers within {attempt_timeout:?}")),
                Ok(Err(e)) => Err(chain(&e)),
                Ok(Ok(resp)) if resp.status() == reqwest::StatusCode::OK => {
                    let kind = resp
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if kind.starts_with("text/event-stream") {
                        Ok(resp)
                    } else {
                        Err(format!("200 with content-type {kind:?}"))
                    }
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    Err(format!(
                        "HTTP {status}: {}",
                        resp.text().await.unwrap_or_default()
                    ))
                }
            };
            match result {
                Ok(resp) => break resp,
                Err(e) if attempt < attempts => {
                    warnings.add(
                        "watch connect attempt failed (retried)",
                        format!("watch {i} attempt {attempt}: {e}"),
                    );
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
                Err(e) => {
                    failures.add(
                        "watch could not connect",
                        format!("watch {i} after {attempt} attempts: {e}"),
                    );
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);

    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut comments = 0;
    loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                let at = Instant::now();
                parser.push(&chunk, &mut events);
                if parser.comments != comments {
                    stats
                        .comments
                        .fetch_add(parser.comments - comments, Ordering::Relaxed);
                    comments = parser.comments;
                }
                for event in events.drain(..) {
                    stats.sse_events.fetch_add(1, Ordering::Relaxed);
                    deliver(i, &event, at, &*sink, &failures);
                }
            }
            end => {
                if !stats.closing.load(Ordering::SeqCst) {
                    let why = match end {
                        Some(Err(e)) => chain(&e),
                        _ => "the server ended the stream".to_string(),
                    };
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    failures.add("watch stream dropped", format!("watch {i}: {why}"));
                }
                return;
            }
        }
    }
}

fn deliver(i: usize, event: &SseEvent, at: Instant, sink: &dyn Sink, failures: &Problems) {
    match event.event.as_str() {
        "change" => {}
        "error" => {
            failures.add("SSE error event", format!("watch {i}: {}", event.data));
            return;
        }
        other => {
            failures.add(
                "unexpected SSE event type",
                format!("watch {i}: {other:?} {}", event.data),
            );
            return;
        }
    }
    let batch: serde_json::Value = match serde_json::from_str(&event.data) {
        Ok(batch) => batch,
        Err(e) => {
            failures.add(
                "unparsable change data",
                format!("watch {i}: {e}: {}", event.data),
            );
            return;
        }
    };
    let Some(revision) = batch["revision"].as_u64() else {
        failures.add(
            "change without revision",
            format!("watch {i}: {}", event.data),
        );
        return;
    };
    if event.id.as_deref() != Some(revision.to_string().as_str()) {
        failures.add(
            "SSE id differs from batch revision",
            format!("watch {i}: id {:?}, revision {revision}", event.id),
        );
    }
    let Some(items) = batch["events"].as_array().filter(|a| !a.is_empty()) else {
        failures.add(
            "change without events",
            format!("watch {i}: {}", event.data),
        );
        return;
    };
    for item in items {
        let kind = item["type"].as_str().unwrap_or("");
        let Some(key) = item["kv"]["key"].as_str() else {
            failures.add("event without key", format!("watch {i}: {item}"));
            continue;
        };
        let value = match item["kv"]["value"].as_str() {
            None => None,
            Some(text) => match base64::engine::general_purpose::STANDARD.decode(text) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    failures.add("bad base64 value", format!("watch {i}: {e}: {item}"));
                    continue;
                }
            },
        };
        sink.on_event(i, revision, kind, key, value.as_deref(), at);
    }
}
