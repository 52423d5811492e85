//! A small Server-Sent Events reader for `GET /v1/watch`, and helpers to
//! compare change batches.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

use crate::http::{num, text, unb64};

/// One dispatched SSE event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `id:` field of this event, if any.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

type ChunkStream = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// An open SSE watch. Dropping it closes the connection.
pub struct WatchStream {
    body: ChunkStream,
    buffer: Vec<u8>,
    ready: VecDeque<SseEvent>,
    // The event being assembled.
    event: Option<String>,
    id: Option<String>,
    data: Vec<String>,
    ended: bool,
}

impl WatchStream {
    pub fn new(response: reqwest::Response) -> WatchStream {
        let body = response
            .bytes_stream()
            .map(|chunk| chunk.map(|b| b.to_vec()));
        WatchStream {
            body: Box::pin(body),
            buffer: Vec::new(),
            ready: VecDeque::new(),
            event: None,
            id: None,
            data: Vec::new(),
            ended: false,
        }
    }

    /// The next SSE event: `Ok(None)` if none arrives within `timeout`, an
    /// error if the stream ends or fails. Comment lines are skipped.
    pub async fn next_sse(&mut self, timeout: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            if self.ended {
                bail!("the watch stream ended");
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => return Err(e).context("reading the watch stream failed"),
                Ok(Some(Ok(chunk))) => {
                    self.buffer.extend_from_slice(&chunk);
                    self.parse_lines();
                }
            }
        }
    }

    /// The next change batch as `(id, batch JSON)`: `None` if nothing arrives
    /// within `timeout`. Panics if the stream ends or the event is malformed
    /// (not `event: change`, id not the batch revision, data not JSON).
    pub async fn try_next_event(&mut self, timeout: Duration) -> Option<(u64, Value)> {
        let event = self
            .next_sse(timeout)
            .await
            .unwrap_or_else(|e| panic!("watch: {e:#}"))?;
        Some(parse_change_event(&event))
    }

    /// The next change batch as `(id, batch JSON)`; panics if none arrives
    /// within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> (u64, Value) {
        self.try_next_event(timeout)
            .await
            .unwrap_or_else(|| panic!("watch: no event within {timeout:?}"))
    }

    /// Reads batches until one with revision ≥ `revision` arrives (all of
    /// them within `timeout`), returning every batch read.
    pub async fn events_through(&mut self, revision: u64, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut batches = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((id, batch)) = self.try_next_event(left).await else {
                panic!(
                    "watch: timed out waiting for revision {revision}; got {} batches: {:?}",
                    batches.len(),
                    changes(&batches)
                );
            };
            batches.push(batch);
            if id >= revision {
                return batches;
            }
        }
    }

    fn parse_lines(&mut self) {
        loop {
            let Some(end) = self.buffer.iter().position(|&b| b == b'\n' || b == b'\r') else {
                return;
            };
            let mut consumed = end + 1;
            if self.buffer[end] == b'\r' {
                match self.buffer.get(end + 1) {
                    // A CR at the end of the chunk may be the first half of CRLF.
                    None => return,
                    Some(b'\n') => consumed += 1,
                    Some(_) => {}
                }
            }
            let line = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
            self.buffer.drain(..consumed);
            self.process_line(&line);
        }
    }

    fn process_line(&mut self, line: &str) {
        if line.is_empty() {
            let event = self.event.take();
            let id = self.id.take();
            if !self.data.is_empty() {
                let data = std::mem::take(&mut self.data).join("\n");
                self.ready.push_back(SseEvent { event, id, data });
            }
            return;
        }
        if line.starts_with(':') {
            return; // comment, e.g. ": keepalive"
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {} // "retry" and unknown fields are ignored
        }
    }
}

fn parse_change_event(event: &SseEvent) -> (u64, Value) {
    assert_eq!(
        event.event.as_deref(),
        Some("change"),
        "watch: unexpected SSE event type: {event:?}"
    );
    let id: u64 = event
        .id
        .as_deref()
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("watch: SSE event without a numeric id: {event:?}"));
    let batch: Value = serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("watch: data is not JSON ({e}): {event:?}"));
    assert_eq!(
        num(&batch, "/revision"),
        id,
        "watch: SSE id differs from the batch revision: {event:?}"
    );
    (id, batch)
}

/// One event of a change batch, flattened for comparisons.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub revision: u64,
    /// `"put"` or `"delete"`.
    pub kind: String,
    pub key: String,
    /// The value for puts; `None` for deletes.
    pub value: Option<Vec<u8>>,
}

impl Change {
    pub fn put(revision: u64, key: &str, value: &[u8]) -> Change {
        Change {
            revision,
            kind: "put".to_string(),
            key: key.to_string(),
            value: Some(value.to_vec()),
        }
    }

    pub fn delete(revision: u64, key: &str) -> Change {
        Change {
            revision,
            kind: "delete".to_string(),
            key: key.to_string(),
            value: None,
        }
    }
}

/// Flattens change batches into their events, checking that every event's
/// `kv.mod_revision` is its batch's revision.
pub fn changes(batches: &[Value]) -> Vec<Change> {
    let mut out = Vec::new();
    for batch in batches {
        let revision = num(batch, "/revision");
        let events = batch["events"]
            .as_array()
            .unwrap_or_else(|| panic!("batch without an events array: {batch}"));
        assert!(!events.is_empty(), "empty change batch: {batch}");
        for event in events {
            let kind = text(event, "/type").to_string();
            let kv = &event["kv"];
            assert_eq!(
                num(kv, "/mod_revision"),
                revision,
                "event mod_revision differs from its batch revision: {batch}"
            );
            let value = match kind.as_str() {
                "put" => Some(unb64(text(kv, "/value"))),
                "delete" => None,
                other => panic!("unknown event type {other:?} in {batch}"),
            };
            out.push(Change {
                revision,
                kind,
                key: text(kv, "/key").to_string(),
                value,
            });
        }
    }
    out
}
