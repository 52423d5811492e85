//! What the client's long-lived streams (watches and subscriptions) share:
//! a background task feeding a bounded channel that the caller reads as a
//! `Stream`, and reconnection across the endpoint list with backoff.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::{Client, Request};
use crate::error::Error;
use crate::sse::{SseEvent, SseReader};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The receiving end of a stream fed by a task; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct TaskStream<T> {
    receiver: mpsc::Receiver<T>,
    task: JoinHandle<()>,
}

impl<T> TaskStream<T> {
    pub(crate) fn new(receiver: mpsc::Receiver<T>, task: JoinHandle<()>) -> TaskStream<T> {
        TaskStream { receiver, task }
    }
}

impl<T> Stream for TaskStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.receiver.poll_recv(cx)
    }
}

impl<T> Drop for TaskStream<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one connection of a long-lived stream ended.
pub(crate) enum Ended {
    /// The consumer is gone.
    Closed,
    /// Connect again (after `error`, if any).
    Reconnect(Option<Error>),
    /// Report this error and stop.
    Fatal(Error),
}

impl Ended {
    /// How a connection ends when opening it failed: another attempt
    /// (perhaps on another endpoint) may succeed, or it cannot.
    pub(crate) fn after(error: Error) -> Ended {
        if error.is_retryable() {
            Ended::Reconnect(Some(error))
        } else {
            Ended::Fatal(error)
        }
    }
}

/// The next event of a connection, or how the connection ended: the server
/// closing it or a read failing both mean connecting again.
pub(crate) async fn next_event(reader: &mut SseReader) -> Result<SseEvent, Ended> {
    match reader.next().await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(Ended::Reconnect(None)),
        Err(e) => Err(Ended::Reconnect(Some(e))),
    }
}

/// Which endpoint a stream connects to next, and how long it waits first.
pub(crate) struct Reconnect {
    count: usize,
    /// The endpoint to try (an index into the client's list).
    pub(crate) index: usize,
    backoff: Duration,
}

impl Reconnect {
    pub(crate) fn new(client: &Client) -> Reconnect {
        Reconnect {
            count: client.endpoints().len().max(1),
            index: client.current_index(),
            backoff: BACKOFF_MIN,
        }
    }

    /// Opens `request` on the endpoint this policy names and remembers the
    /// one that answered; returns the event reader and that endpoint.
    pub(crate) async fn open(
        &mut self,
        client: &Client,
        request: &Request,
    ) -> Result<(SseReader, String), Error> {
        let (response, at) = client.open_stream(request, self.index).await?;
        self.index = at;
        let endpoint = client.endpoints()[at].clone();
        Ok((SseReader::new(response, &endpoint), endpoint))
    }

    /// The stream delivered something: the next outage starts from the
    /// shortest wait again.
    pub(crate) fn delivered(&mut self) {
        self.backoff = BACKOFF_MIN;
    }

    /// Moves to the next endpoint (another node may serve while this one
    /// is down) and waits out the backoff. False if the consumer went away
    /// meanwhile.
    pub(crate) async fn wait<T>(&mut self, sender: &mpsc::Sender<T>) -> bool {
        self.index = (self.index + 1) % self.count;
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = sender.closed() => return false,
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        true
    }
}
