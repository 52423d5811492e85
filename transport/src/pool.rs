//! Idle authenticated connections to peers, kept for the next request: a
//! connection costs a TCP handshake, the secret's challenge and (with TLS)
//! a TLS handshake, which is more than most requests.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::wire::PeerStream;

/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 64;

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
}
