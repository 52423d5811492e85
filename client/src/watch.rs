//! Watches: a `Stream` of change batches that survives disconnects and node
//! failures without losing or repeating a revision.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::client::error_from_body;
use crate::client::{query, Client, Request};
use crate::error::{Error, Result};
use crate::kv::{Consistency, Event, ListOptions};
use crate::stream::{next_event, Ended, Reconnect, TaskStream};

/// Batches buffered between the connection task and the consumer.
const BUFFER: usize = 64;

/// What to watch and from where.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    key: Option<String>,
    prefix: Option<String>,
    from_revision: Option<u64>,
    consistency: Consistency,
}

impl WatchOptions {
    /// Watch one key.
    pub fn key(key: impl Into<String>) -> WatchOptions {
        WatchOptions {
            key: Some(key.into()),
            prefix: None,
            from_revision: None,
            consistency: Consistency::Linearizable,
        }
    }

    /// Watch every key starting with `prefix` (`""`: every key).
    pub fn prefix(prefix: impl Into<String>) -> WatchOptions {
        WatchOptions {
            key: None,
            prefix: Some(prefix.into()),
            from_revision: None,
            consistency: Consistency::Linearizable,
        }
    }

    /// Start at this revision (replaying history from it). Without it the
    /// watch starts right after the cluster's current revision.
    pub fn from_revision(mut self, revision: u64) -> WatchOptions {
        self.from_revision = Some(revision);
        self
    }

    /// Consistency of the read that fixes the start revision when no
    /// `from_revision` is given.
    pub fn consistency(mut self, consistency: Consistency) -> WatchOptions {
        self.consistency = consistency;
        self
    }

    fn path(&self, from: u64) -> String {
        let query = query(&[
            ("key", self.key.clone()),
            ("prefix", self.prefix.clone()),
            ("from_revision", Some(from.to_string())),
        ]);
        format!("/v1/watch{query}")
    }
}

/// All changes of one revision that match the watch (a transaction can
/// change several keys in one revision).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WatchBatch {
    /// The revision.
    pub revision: u64,
    /// The matching changes, in order.
    pub events: Vec<Event>,
}

/// A stream of [`WatchBatch`]es in revision order, each revision exactly once.
///
/// A background task holds the SSE connection. When it drops (node down,
/// network), the task reconnects, to the next endpoint, asking for the
/// revision after the last one delivered, with a backoff of up to 2 s and
/// without giving up. An item is an error only when watching cannot go on:
/// [`Error::Compacted`] (the history needed is gone: re-read and watch
/// again) or a request the server refuses; the stream ends after it.
/// Dropping the stream closes the connection.
#[derive(Debug)]
pub struct WatchStream {
    batches: TaskStream<Result<WatchBatch>>,
    start_revision: u64,
    connected: Arc<Mutex<Option<String>>>,
    reconnects: Arc<AtomicU64>,
}

impl WatchStream {
    /// How often the watch has had to connect again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The first revision this watch delivers (if it changes anything matching).
    pub fn start_revision(&self) -> u64 {
        self.start_revision
    }

    /// The endpoint the watch is connected to now, if connected.
    pub fn connected_endpoint(&self) -> Option<String> {
        self.connected.lock().map(|c| c.clone()).unwrap_or(None)
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.batches).poll_next(cx)
    }
}

impl Client {
    /// Opens a watch. Returns once its start revision is fixed: every change
    /// after that revision is delivered, including changes written before
    /// the first connection is made.
    pub async fn watch(&self, options: WatchOptions) -> Result<WatchStream> {
        let start = match options.from_revision {
            Some(revision) => revision,
            None => {
                // The cluster's revision now; watching from the next one
                // makes reconnects exact even before the first event.
                let list = ListOptions {
                    limit: Some(1),
                    keys_only: true,
                    consistency: options.consistency,
                    ..ListOptions::default()
                };
                self.list("", &list).await?.revision + 1
            }
        };
        let (sender, receiver) = mpsc::channel(BUFFER);
        let connected = Arc::new(Mutex::new(None));
        let reconnects = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            self.clone(),
            options,
            start,
            sender,
            connected.clone(),
            reconnects.clone(),
        ));
        Ok(WatchStream {
            batches: TaskStream::new(receiver, task),
            start_revision: start,
            connected,
            reconnects,
        })
    }
}

async fn run(
    client: Client,
    options: WatchOptions,
    mut next: u64,
    sender: mpsc::Sender<Result<WatchBatch>>,
    connected: Arc<Mutex<Option<String>>>,
    reconnects: Arc<AtomicU64>,
) {
    let mut reconnect = Reconnect::new(&client);
    loop {
        let ended = tokio::select! {
            ended = connect(&client, &options, &mut next, &mut reconnect, &sender, &connected) => ended,
            _ = sender.closed() => Ended::Closed,
        };
        set_connected(&connected, None);
        match ended {
            Ended::Closed => return,
            Ended::Fatal(error) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
            Ended::Reconnect(error) => {
                match &error {
                    Some(e) => tracing::warn!(next, "watch disconnected, reconnecting: {e}"),
                    None => tracing::info!(next, "watch stream ended, reconnecting"),
                }
                reconnects.fetch_add(1, Ordering::Relaxed);
                if !reconnect.wait(&sender).await {
                    return;
                }
            }
        }
    }
}

fn set_connected(connected: &Mutex<Option<String>>, endpoint: Option<String>) {
    if let Ok(mut slot) = connected.lock() {
        *slot = endpoint;
    }
}

async fn connect(
    client: &Client,
    options: &WatchOptions,
    next: &mut u64,
    reconnect: &mut Reconnect,
    sender: &mpsc::Sender<Result<WatchBatch>>,
    connected: &Mutex<Option<String>>,
) -> Ended {
    let request = Request::get(options.path(*next));
    let (mut reader, endpoint) = match reconnect.open(client, &request).await {
        Ok(opened) => opened,
        Err(Error::Compacted {
            compact_revision,
            message,
            ..
        }) => {
            return Ended::Fatal(Error::Compacted {
                requested: *next,
                compact_revision,
                message,
            })
        }
        Err(e) => return Ended::after(e),
    };
    tracing::debug!(%endpoint, from = *next, "watch connected");
    set_connected(connected, Some(endpoint));
    loop {
        let event = match next_event(&mut reader).await {
            Ok(event) => event,
            Err(ended) => return ended,
        };
        match event.event.as_str() {
            "change" => {
                let batch: WatchBatch = match serde_json::from_str(&event.data) {
                    Ok(batch) => batch,
                    Err(e) => return Ended::Fatal(Error::decode("watch event", e)),
                };
                // The server never repeats a revision on one connection; this
                // guards the seam between two connections.
                if batch.revision < *next {
                    continue;
                }
                *next = batch.revision + 1;
                reconnect.delivered();
                if sender.send(Ok(batch)).await.is_err() {
                    return Ended::Closed;
                }
            }
            "error" => match error_from_body(500, event.data.as_bytes()) {
                Error::Compacted {
                    compact_revision,
                    message,
                    ..
                } => {
                    return Ended::Fatal(Error::Compacted {
                        requested: *next,
                        compact_revision,
                        message,
                    })
                }
                other => return Ended::Reconnect(Some(other)),
            },
            _ => {}
        }
    }
}
