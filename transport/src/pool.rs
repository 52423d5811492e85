//! Idle authenticated connections to peers, kept for the next request: a
//! connection costs a TCP handshake, the secret's challenge and (with TLS)
//! a TLS handshake, which is more than most requests.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

use crate::protocol::{receive_reply, Reply, Request, MAX_SCAN_REPLY_BYTES};
use crate::wire::{self, PeerAuth, PeerStream};

/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 64;

/// Why [`IdleConnections::exchange`] failed.
pub(crate) enum ExchangeError {
    /// No new connection could be made (or its handshake failed).
    Connect(std::io::Error),
    /// The request or its reply failed on a new connection.
    Exchange(std::io::Error),
}

/// Idle connections by peer address. A connection given back must be
/// between requests: no request of it unanswered, no reply half read.
#[derive(Default)]
pub(crate) struct IdleConnections(Mutex<HashMap<String, Vec<PeerStream>>>);

impl IdleConnections {
    /// An idle connection to `addr` that is still open; closed ones found
    /// on the way are dropped.
    pub(crate) fn take(&self, addr: &str) -> Option<PeerStream> {
        loop {
            let mut stream = self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(addr)
                .and_then(Vec::pop)?;
            if still_open(&mut stream) {
                return Some(stream);
            }
        }
    }

    pub(crate) fn give_back(&self, addr: &str, stream: PeerStream) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let streams = idle.entry(addr.to_string()).or_default();
        if streams.len() < IDLE_PER_PEER {
            streams.push(stream);
        }
    }

    /// Sends `request` on an idle connection to `addr` and reads its reply;
    /// when there is none, on a new one. When the idle one fails, the peer
    /// may have run the request before the connection broke: a request
    /// that may run twice is sent again on a new connection, a frame of
    /// messages (at most once) is not. The connection comes back with the
    /// reply, for the caller to keep or give back.
    pub(crate) async fn exchange(
        &self,
        addr: &str,
        auth: &PeerAuth,
        request: &Request,
    ) -> Result<(Reply, PeerStream), ExchangeError> {
        if let Some(mut pooled) = self.take(addr) {
            let sent = async {
                wire::send(&mut pooled, request).await?;
                receive_reply(&mut pooled, MAX_SCAN_REPLY_BYTES).await
            };
            match sent.await {
                Ok(reply) => return Ok((reply, pooled)),
                Err(e) if !request.may_run_twice() => return Err(ExchangeError::Exchange(e)),
                Err(_) => {}
            }
        }
        let mut stream = wire::connect(addr, auth)
            .await
            .map_err(ExchangeError::Connect)?;
        wire::send(&mut stream, request)
            .await
            .map_err(ExchangeError::Exchange)?;
        let reply = receive_reply(&mut stream, MAX_SCAN_REPLY_BYTES)
            .await
            .map_err(ExchangeError::Exchange)?;
        Ok((reply, stream))
    }
}

/// Whether an idle connection can carry a request: between requests the
/// peer sends nothing, so anything to read (its close, an error, stray
/// bytes) means it cannot. Asked without waiting.
fn still_open(stream: &mut PeerStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut context = Context::from_waker(Waker::noop());
    matches!(
        Pin::new(stream).poll_read(&mut context, &mut buf),
        Poll::Pending
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// What the test peer does after answering a connection's first frame
    /// of messages.
    #[derive(Clone, Copy)]
    enum AfterFirst {
        /// Closes the connection at once.
        Close,
        /// Takes the next frame and closes without answering it.
        TakeAndVanish,
    }

    /// A peer that counts the frames of messages it takes; `closed` hears
    /// of each connection it closes.
    async fn peer(after_first: AfterFirst) -> (String, Arc<AtomicUsize>, mpsc::Receiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let taken = Arc::new(AtomicUsize::new(0));
        let (closed, closes) = mpsc::channel(16);
        let counter = taken.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(Some(mut stream)) = wire::accept(tcp, &PeerAuth::default()).await else {
                    continue;
                };
                let mut answered = 0;
                while let Ok(Request::Messages(_)) = wire::receive(&mut stream).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if answered == 1 {
                        break;
                    }
                    answered += 1;
                    let reply = Reply::Messages(Ok(1));
                    if wire::send(&mut stream, &reply).await.is_err() {
                        break;
                    }
                    if matches!(after_first, AfterFirst::Close) {
                        break;
                    }
                }
                drop(stream);
                let _ = closed.send(()).await;
            }
        });
        (addr, taken, closes)
    }

    fn messages() -> Request {
        Request::Messages(vec![1, 2, 3])
    }

    /// A first frame, answered; its connection goes back to `idle`.
    async fn first_frame(idle: &IdleConnections, auth: &PeerAuth, addr: &str) {
        let (_, stream) = idle
            .exchange(addr, auth, &messages())
            .await
            .unwrap_or_else(|_| panic!("the first frame was not answered"));
        idle.give_back(addr, stream);
    }

    #[tokio::test]
    async fn a_frame_of_messages_the_peer_may_have_taken_is_not_sent_again() {
        let (addr, taken, _closes) = peer(AfterFirst::TakeAndVanish).await;
        let (idle, auth) = (IdleConnections::default(), PeerAuth::default());
        first_frame(&idle, &auth, &addr).await;
        let second = idle.exchange(&addr, &auth, &messages()).await;
        assert!(second.is_err(), "the peer never answered the second frame");
        assert_eq!(
            taken.load(Ordering::SeqCst),
            2,
            "the second frame was sent again on a new connection"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_the_peer_closed_is_not_used() {
        let (addr, taken, mut closes) = peer(AfterFirst::Close).await;
        let (idle, auth) = (IdleConnections::default(), PeerAuth::default());
        first_frame(&idle, &auth, &addr).await;
        closes.recv().await.expect("the peer closed the connection");
        // Closed while idle: the frame goes on a new connection, once.
        let second = idle.exchange(&addr, &auth, &messages()).await;
        assert!(
            second.is_ok(),
            "the second frame failed on the closed connection"
        );
        assert_eq!(taken.load(Ordering::SeqCst), 2);
    }
}
