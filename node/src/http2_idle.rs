//! Closing HTTP/2 connections that carry nothing. An HTTP/1.1 connection
//! idle between requests is closed by the header-read deadline; an HTTP/2
//! connection has no such deadline in hyper, so a live client could hold
//! one (and its place under `--max-connections`) for ever without a
//! request. Here every stream of an HTTP/2 connection is counted (a
//! request being answered, a response body being sent, a WebSocket, which
//! outlives its response) and the connection is told to go away once none
//! has been open for the limit.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use futures::future::{BoxFuture, Either};
use http_body::{Frame, SizeHint};

/// The open streams of one HTTP/2 connection.
#[derive(Clone, Default)]
pub struct Streams(Arc<Counts>);

#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    /// Bumped when a stream starts or ends: unchanged over a period, no
    /// stream came or went in it.
    changes: AtomicU64,
}

/// A stream's place in [`Streams`], given back when the last clone is
/// dropped. Requests carry one in their extensions, so a WebSocket handler
/// can keep it for the socket's life.
#[derive(Clone)]
pub struct StreamHold {
    _held: Arc<Held>,
}

struct Held(Streams);

impl Drop for Held {
    fn drop(&mut self) {
        let counts = &(self.0).0;
        counts.open.fetch_sub(1, Ordering::SeqCst);
        counts.changes.fetch_add(1, Ordering::SeqCst);
    }
}

impl Streams {
    fn hold(&self) -> StreamHold {
        self.0.open.fetch_add(1, Ordering::SeqCst);
        self.0.changes.fetch_add(1, Ordering::SeqCst);
        StreamHold {
            _held: Arc::new(Held(self.clone())),
        }
    }

    /// Returns once no stream has been open for a whole `limit` (so after
    /// between one and two times `limit` of idleness).
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let before = self.0.changes.load(Ordering::SeqCst);
            tokio::time::sleep(limit).await;
            let open = self.0.open.load(Ordering::SeqCst);
            if open == 0 && self.0.changes.load(Ordering::SeqCst) == before {
                return;
            }
        }
    }
}

/// The API's router, counting each request's stream in `streams` (on
/// HTTP/2 connections; `None` on HTTP/1.1, where it only routes).
#[derive(Clone)]
pub struct CountedApp {
    pub router: Router,
    pub streams: Option<Streams>,
}

impl tower_service::Service<Request<hyper::body::Incoming>> for CountedApp {
    type Response = Response;
    type Error = Infallible;
    /// HTTP/1.1 requests go to the router as they are, with no allocation
    /// on their path; only HTTP/2 answers are wrapped.
    type Future = Either<RouteFuture<Infallible>, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A Router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<hyper::body::Incoming>) -> Self::Future {
        let Some(streams) = &self.streams else {
            return Either::Left(tower_service::Service::call(&mut self.router, request));
        };
        let hold = streams.hold();
        request.extensions_mut().insert(hold.clone());
        let answer = tower_service::Service::call(&mut self.router, request);
        Either::Right(Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Body::new(HeldBody { body, _hold: hold })))
        }))
    }
}

/// A response body that keeps its stream counted until it is sent or
/// dropped.
struct HeldBody {
    body: Body,
    _hold: StreamHold,
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_after_a_whole_period_without_streams() {
        let limit = Duration::from_secs(10);
        let streams = Streams::default();
        let held = streams.hold();
        let copy = held.clone();
        drop(held);
        // A copy (a WebSocket's) keeps the stream open.
        let idle = tokio::time::timeout(limit * 5, streams.idle_for(limit)).await;
        assert!(idle.is_err(), "idle while a stream was open");
        drop(copy);
        let started = tokio::time::Instant::now();
        streams.idle_for(limit).await;
        let waited = started.elapsed();
        assert!(waited >= limit && waited <= limit * 2, "{waited:?}");
    }
}
