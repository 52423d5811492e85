//! A deadline on writes that make no progress, for every API connection
//! (like NATS's write deadline): a client that stops reading while the node
//! has something to send, a stalled subscriber above all, fills its socket
//! and the node's write waits. After `--write-timeout-ms` with not one byte
//! taken the write fails, the connection closes, and what waited for it (a
//! subscription and its buffer, a response) is let go. A slow reader that
//! takes bytes now and then is not cut: each byte taken restarts the clock.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Whether `write` went through within `limit`. A task that hands a
/// stream's frames (SSE events, WebSocket messages) to its connection
/// bounds each hand-over with it: over HTTP/2, flow control stops a
/// stalled stream before the socket fills, so [`WriteDeadline`] never sees
/// it, and the task would wait for ever.
/// A hand-over that timed out counts as a write timeout of the API
/// listener, like a socket that took nothing: which of the two deadlines
/// lets a stalled stream go first is a race.
pub async fn within<T, E>(limit: Duration, write: impl Future<Output = Result<T, E>>) -> bool {
    match tokio::time::timeout(limit, write).await {
        Ok(written) => written.is_ok(),
        Err(_) => {
            metrics::counter!("shoal_api_write_timeouts_total", "listener" => "api").increment(1);
            false
        }
    }
}

/// `inner` whose writes, flushes and shutdown fail with `TimedOut` once one
/// has waited `limit` without the socket taking anything.
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// The listener's name in metrics (`api`, `otlp_http`, `otlp_grpc`).
    listener: &'static str,
    /// Armed while a write waits; reset by every write that goes through.
    timer: Pin<Box<Sleep>>,
    waiting: bool,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration, listener: &'static str) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            limit,
            listener,
            timer: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Passes a finished write through and stops the clock; for a write
    /// still waiting, starts the clock (if not running) and fails the write
    /// once it runs out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.waiting = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                if !self.waiting {
                    self.waiting = true;
                    self.timer.as_mut().reset(Instant::now() + self.limit);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        metrics::counter!("shoal_api_write_timeouts_total", "listener" => self.listener)
                            .increment(1);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client took nothing written to it for --write-timeout-ms",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_limit_and_a_slow_reader_is_not_cut() {
        // A pipe with room for 64 bytes: the 65th waits for the reader.
        let (near, mut far) = tokio::io::duplex(64);
        let limit = Duration::from_secs(1);
        let mut near = WriteDeadline::new(near, limit, "test");
        near.write_all(&[1; 64]).await.expect("fits in the pipe");

        // The reader takes 16 bytes every 50 ms, well inside the limit: each
        // wait is shorter than the limit and the writes go through.
        let reader = tokio::spawn(async move {
            let mut chunk = [0u8; 16];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                far.read_exact(&mut chunk).await.expect("read");
            }
            far
        });
        near.write_all(&[2; 128])
            .await
            .expect("a slow reader is not cut");
        let _far = reader.await.expect("reader");

        // Now nobody reads: the pipe is full, and the write fails.
        let started = std::time::Instant::now();
        let error = near
            .write_all(&[3; 1])
            .await
            .expect_err("a write nobody takes fails");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limit);
    }
}
