//! Idle authenticated connections to peers, kept for the next request: a
//! connection costs a TCP handshake, the secret's challenge and (with TLS)
//! a TLS handshake, which is more than most requests.

use std::collections::HashMap;
use std::sync::Mutex;

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
    pub(crate) fn take(&self, addr: &str) -> Option<PeerStream> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(addr)
            .and_then(Vec::pop)
    }

    pub(crate) fn give_back(&self, addr: &str, stream: PeerStream) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let streams = idle.entry(addr.to_string()).or_default();
        if streams.len() < IDLE_PER_PEER {
            streams.push(stream);
        }
    }

    /// Sends `request` on an idle connection to `addr` and reads its reply;
    /// when there is none, or it fails (the peer may have closed it), on a
    /// new one, so a request may be sent twice. The connection comes back
    /// with the reply, for the caller to keep or give back.
    pub(crate) async fn exchange(
        &self,
        addr: &str,
        auth: &PeerAuth,
        request: &Request,
    ) -> Result<(Reply, PeerStream), ExchangeError> {
        if let Some(mut pooled) = self.take(addr) {
            if wire::send(&mut pooled, request).await.is_ok() {
                if let Ok(reply) = receive_reply(&mut pooled, MAX_SCAN_REPLY_BYTES).await {
                    return Ok((reply, pooled));
                }
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
