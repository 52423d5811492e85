//! Logs: ingest records into a stream, a batching sender, and search.

use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::{encode_path, Client, Request, Retry};
use crate::error::{Error, Result};

/// One log record. Serialized as the JSON object the ingest endpoint reads
/// (`timestamp`, `level`, `service`, `message`, `trace_id`, `span_id`,
/// `attributes`); fields left out get the server's defaults (now, the
/// stream's name as service).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogRecord {
    /// RFC 3339 time, or Unix seconds/ms/ns as a number (default: arrival).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Value>,
    /// Level, e.g. `info`, `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Service name (default: the stream name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The message text (searchable).
    pub message: String,
    /// Trace id, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Span id, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// Extra fields, searchable as `attributes.NAME:value`.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
}

impl LogRecord {
    /// A record with this message.
    pub fn new(message: impl Into<String>) -> LogRecord {
        LogRecord {
            message: message.into(),
            ..LogRecord::default()
        }
    }

    /// Sets the level.
    pub fn level(mut self, level: impl Into<String>) -> Self {
        self.level = Some(level.into());
        self
    }

    /// Sets the service.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// Sets the timestamp (RFC 3339 text or a Unix time number).
    pub fn timestamp(mut self, timestamp: impl Into<Value>) -> Self {
        self.timestamp = Some(timestamp.into());
        self
    }

    /// Sets the trace id.
    pub fn trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// Adds an attribute.
    pub fn attr(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }
}

/// Answer to an ingest.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestResponse {
    /// The stream.
    pub stream: String,
    /// Records stored (fsynced in the node's write-ahead log).
    pub accepted: u64,
    /// Records refused.
    pub rejected: u64,
    /// Why records were refused (at most 100 listed).
    #[serde(default)]
    pub errors: Vec<IngestError>,
}

/// A refused record.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestError {
    /// Position of the record in the request.
    pub index: u64,
    /// Why.
    pub error: String,
}

/// A log search. Times are RFC 3339, Unix time, `now`, or a duration ago
/// (`15m`, `2h`, `7d`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SearchQuery {
    /// Query text, e.g. `payment AND attributes.user:alice` (empty: everything).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub q: String,
    /// Only these streams.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stream: Vec<String>,
    /// Only these levels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub level: Vec<String>,
    /// Only these services.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service: Vec<String>,
    /// From this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Until this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// `newest` (default) or `oldest` first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// Page size (default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl SearchQuery {
    /// A query for this text.
    pub fn new(q: impl Into<String>) -> SearchQuery {
        SearchQuery {
            q: q.into(),
            ..SearchQuery::default()
        }
    }

    /// Restricts to a stream.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream.push(stream.into());
        self
    }

    /// Sets the start time (e.g. `1h`).
    pub fn since(mut self, since: impl Into<String>) -> Self {
        self.since = Some(since.into());
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// One found record.
#[derive(Debug, Clone, Deserialize)]
pub struct LogHit {
    /// Time, RFC 3339.
    pub ts: String,
    /// Time in Unix nanoseconds.
    pub ts_nanos: i64,
    /// Node holding it.
    pub node: u64,
    /// Stream.
    pub stream: String,
    /// `log` or `span`.
    pub kind: String,
    /// Level.
    #[serde(default)]
    pub level: String,
    /// Service.
    #[serde(default)]
    pub service: String,
    /// Message.
    #[serde(default)]
    pub message: String,
    /// Attributes.
    #[serde(default)]
    pub attributes: Value,
    /// Trace id, if any.
    pub trace_id: Option<String>,
    /// Span id, if any.
    pub span_id: Option<String>,
}

/// A page of search results.
#[derive(Debug, Clone, Deserialize)]
pub struct SearchResponse {
    /// The records.
    pub hits: Vec<LogHit>,
    /// How many.
    pub count: u64,
    /// Pass as [`SearchQuery::cursor`] for the next page.
    pub next_cursor: Option<String>,
    /// True if a node did not answer (results may be missing).
    #[serde(default)]
    pub partial: bool,
}

impl Client {
    /// Sends records to `stream` as one request (NDJSON). Records become
    /// searchable within about a second (the node's commit interval).
    pub async fn ingest(&self, stream: &str, records: &[LogRecord]) -> Result<IngestResponse> {
        let mut body = Vec::new();
        for record in records {
            serde_json::to_writer(&mut body, record).map_err(|e| Error::decode("log record", e))?;
            body.push(b'\n');
        }
        self.ingest_raw(stream, body, "application/x-ndjson").await
    }

    /// Sends a prepared body: NDJSON, a JSON array, or with `text/plain`
    /// one record per line.
    pub async fn ingest_raw(
        &self,
        stream: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<IngestResponse> {
        let path = format!("/v1/logs/{}", encode_path(stream));
        let request = Request::new(Method::POST, path, Retry::Once).body(body, content_type);
        self.call_json(request, "ingest answer").await
    }

    /// Searches logs on every node.
    pub async fn search_logs(&self, query: &SearchQuery) -> Result<SearchResponse> {
        let body = serde_json::to_value(query).map_err(|e| Error::decode("search query", e))?;
        let request =
            Request::new(Method::POST, "/v1/logs/search".into(), Retry::Idempotent).json(&body);
        self.call_json(request, "search answer").await
    }

    /// A batching sender of records to `stream` (see [`LogBatcher`]).
    pub fn log_batcher(&self, stream: &str, options: BatcherOptions) -> LogBatcher {
        let (sender, receiver) = mpsc::channel(options.max_records.max(1));
        let task = tokio::spawn(batch_loop(
            self.clone(),
            stream.to_string(),
            options,
            receiver,
        ));
        LogBatcher { sender, task }
    }
}

/// Options of a [`LogBatcher`].
#[derive(Debug, Clone)]
pub struct BatcherOptions {
    /// Send when this many records are waiting (default 1000).
    pub max_records: usize,
    /// Send at most this long after the first waiting record (default 1 s).
    pub max_delay: Duration,
    /// Tries per batch when the node is busy (429) or unreachable (default 5).
    pub attempts: u32,
}

impl Default for BatcherOptions {
    fn default() -> Self {
        BatcherOptions {
            max_records: 1000,
            max_delay: Duration::from_secs(1),
            attempts: 5,
        }
    }
}

/// Totals of a [`LogBatcher`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatcherStats {
    /// Records the node accepted.
    pub accepted: u64,
    /// Records the node refused (bad records).
    pub rejected: u64,
    /// Records dropped because their batch failed every try.
    pub failed: u64,
}

enum Command {
    Record(LogRecord),
    Flush(oneshot::Sender<()>),
}

/// Gathers records and sends them in batches from a background task.
/// [`LogBatcher::send`] waits when the queue is full (backpressure). A batch
/// whose answer was lost is sent again, so a record may be stored twice
/// (at-least-once); a batch that fails every try is counted in
/// [`BatcherStats::failed`] and logged.
/// [`LogBatcher::close`] sends what is left and returns the totals.
#[derive(Debug)]
pub struct LogBatcher {
    sender: mpsc::Sender<Command>,
    task: JoinHandle<BatcherStats>,
}

impl LogBatcher {
    /// Queues a record.
    pub async fn send(&self, record: LogRecord) -> Result<()> {
        self.sender
            .send(Command::Record(record))
            .await
            .map_err(|_| Error::Closed("the log batcher stopped".into()))
    }

    /// Sends everything queued so far and waits until it is done.
    pub async fn flush(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.sender
            .send(Command::Flush(done))
            .await
            .map_err(|_| Error::Closed("the log batcher stopped".into()))?;
        wait.await
            .map_err(|_| Error::Closed("the log batcher stopped".into()))
    }

    /// Sends what is left, stops, and returns the totals.
    pub async fn close(self) -> Result<BatcherStats> {
        drop(self.sender);
        self.task
            .await
            .map_err(|e| Error::Closed(format!("the log batcher failed: {e}")))
    }
}

async fn batch_loop(
    client: Client,
    stream: String,
    options: BatcherOptions,
    mut receiver: mpsc::Receiver<Command>,
) -> BatcherStats {
    let mut stats = BatcherStats::default();
    let mut batch: Vec<LogRecord> = Vec::new();
    let mut deadline = None;
    loop {
        let command = match deadline {
            Some(at) => tokio::select! {
                command = receiver.recv() => command,
                _ = tokio::time::sleep_until(at) => {
                    send_batch(&client, &stream, &options, &mut batch, &mut stats).await;
                    deadline = None;
                    continue;
                }
            },
            None => receiver.recv().await,
        };
        match command {
            Some(Command::Record(record)) => {
                batch.push(record);
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + options.max_delay);
                if batch.len() >= options.max_records {
                    send_batch(&client, &stream, &options, &mut batch, &mut stats).await;
                    deadline = None;
                }
            }
            Some(Command::Flush(done)) => {
                send_batch(&client, &stream, &options, &mut batch, &mut stats).await;
                deadline = None;
                let _ = done.send(());
            }
            None => {
                send_batch(&client, &stream, &options, &mut batch, &mut stats).await;
                return stats;
            }
        }
    }
}

async fn send_batch(
    client: &Client,
    stream: &str,
    options: &BatcherOptions,
    batch: &mut Vec<LogRecord>,
    stats: &mut BatcherStats,
) {
    if batch.is_empty() {
        return;
    }
    let records = std::mem::take(batch);
    let mut pause = Duration::from_millis(200);
    for attempt in 1..=options.attempts.max(1) {
        match client.ingest(stream, &records).await {
            Ok(answer) => {
                stats.accepted += answer.accepted;
                stats.rejected += answer.rejected;
                return;
            }
            Err(e)
                if (e.status() == Some(429) || e.is_retryable()) && attempt < options.attempts =>
            {
                tracing::debug!(attempt, "log batch not taken, retrying: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(records = records.len(), "log batch dropped: {e}");
                stats.failed += records.len() as u64;
                return;
            }
        }
    }
}
