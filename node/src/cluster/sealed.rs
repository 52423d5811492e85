//! Gossip sealed with the cluster secret: with `--cluster-secret`, every
//! gossip datagram is encrypted and authenticated (ChaCha20-Poly1305), so a
//! stranger can neither read the cluster's gossip nor inject any, and a
//! datagram sent again (a replay) is dropped before chitchat sees it.
//!
//! A datagram is `epoch (16 bytes) | counter (8 bytes, big-endian) |
//! ciphertext | tag`. Each socket picks a random epoch when it opens and
//! seals with its own key, HKDF-SHA256(secret, epoch), under the nonce
//! `counter`, which it increments per datagram: a nonce is never used twice
//! under a key. A receiver keeps, per epoch it has opened a datagram of,
//! the highest counter and which of the 64 below it it has seen (as IPsec
//! does), and drops the rest. A receiver that restarts forgets the epochs
//! it knew: a datagram recorded before that could be replayed to it once,
//! and would carry only gossip state older than what it learns next
//! (chitchat keeps the highest version of each key).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;

/// The largest UDP payload (what chitchat fills its datagrams up to).
const MAX_DATAGRAM: usize = 65_507;
const EPOCH_LEN: usize = 16;
const HEADER_LEN: usize = EPOCH_LEN + 8;
const TAG_LEN: usize = 16;
/// Senders whose replay windows are kept (the oldest is forgotten first).
const EPOCHS_KEPT: usize = 4096;
/// Counters below a sender's highest that are still accepted once.
const WINDOW: u64 = 64;

type Epoch = [u8; EPOCH_LEN];

/// chitchat's UDP transport, sealed with a key derived from the secret.
pub struct SealedUdpTransport {
    master: hkdf::Prk,
}

impl SealedUdpTransport {
    pub fn new(secret: &str) -> SealedUdpTransport {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"shoal-gossip");
        SealedUdpTransport {
            master: salt.extract(secret.as_bytes()),
        }
    }
}

/// The key of one sender's epoch.
fn epoch_key(master: &hkdf::Prk, epoch: &Epoch) -> anyhow::Result<LessSafeKey> {
    let info = [b"shoal-gossip-v1".as_slice(), epoch.as_slice()];
    let okm = master
        .expand(&info, &CHACHA20_POLY1305)
        .map_err(|_| anyhow::anyhow!("deriving a gossip key failed"))?;
    let key = UnboundKey::from(okm);
    Ok(LessSafeKey::new(key))
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

#[async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        let epoch: Epoch = rand::random();
        Ok(Box::new(SealedSocket {
            key: epoch_key(&self.master, &epoch)?,
            master: self.master.clone(),
            epoch,
            counter: 0,
            socket,
            senders: Senders::default(),
            buf: vec![0; MAX_DATAGRAM],
        }))
    }
}

struct SealedSocket {
    master: hkdf::Prk,
    /// This socket's epoch and its key.
    epoch: Epoch,
    key: LessSafeKey,
    /// The nonce of the next datagram sent.
    counter: u64,
    socket: tokio::net::UdpSocket,
    senders: Senders,
    buf: Vec<u8>,
}

fn dropped(reason: &'static str) {
    metrics::counter!("shoal_gossip_dropped_total", "reason" => reason).increment(1);
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket
            .local_addr()
            .context("failed to get UDP socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let counter = self.counter;
        self.counter += 1;
        let mut body = envelope.serialize_to_vec();
        let mut datagram = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
        datagram.extend_from_slice(&self.epoch);
        datagram.extend_from_slice(&counter.to_be_bytes());
        self.key
            .seal_in_place_append_tag(nonce(counter), Aad::from(&datagram[..]), &mut body)
            .map_err(|_| anyhow::anyhow!("sealing a gossip message failed"))?;
        datagram.extend_from_slice(&body);
        if datagram.len() > MAX_DATAGRAM {
            // chitchat fills datagrams up to the UDP limit, which the seal's
            // 40 bytes can push over; the next round gossips another delta.
            dropped("too_large");
            tracing::warn!(
                bytes = datagram.len(),
                "a sealed gossip message is larger than a UDP datagram; not sent"
            );
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let num_bytes_sent = self
            .socket
            .send_to(&datagram, to)
            .await
            .context("failed to send a gossip message")?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from_addr) = match self.socket.recv_from(&mut self.buf).await {
                Ok(received) => received,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).context("fatal UDP recv error"),
            };
            match open(&self.master, &mut self.senders, &mut self.buf[..len]) {
                Ok(plaintext) => {
                    let mut plaintext: &[u8] = plaintext;
                    match ChitchatEnvelope::deserialize(&mut plaintext) {
                        Ok(envelope) => {
                            return Ok(RecvOutcome {
                                from_addr,
                                envelope,
                                num_bytes_received: len,
                            })
                        }
                        Err(e) => {
                            dropped("invalid");
                            tracing::warn!(from = %from_addr, error = %e, "a sealed gossip message does not decode");
                        }
                    }
                }
                Err(reason) => {
                    dropped(reason);
                    tracing::debug!(from = %from_addr, reason, "gossip datagram dropped");
                }
            }
        }
    }
}

/// Opens a datagram in place; the reason it was dropped otherwise.
fn open<'a>(
    master: &hkdf::Prk,
    senders: &mut Senders,
    datagram: &'a mut [u8],
) -> Result<&'a [u8], &'static str> {
    if datagram.len() < HEADER_LEN + TAG_LEN {
        return Err("unsealed");
    }
    let (header, body) = datagram.split_at_mut(HEADER_LEN);
    let mut epoch = [0u8; EPOCH_LEN];
    epoch.copy_from_slice(&header[..EPOCH_LEN]);
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&header[EPOCH_LEN..]);
    let counter = u64::from_be_bytes(counter);
    if senders.seen(&epoch, counter) {
        return Err("replayed");
    }
    let key = epoch_key(master, &epoch).map_err(|_| "unsealed")?;
    let plaintext = key
        .open_in_place(nonce(counter), Aad::from(&header[..]), body)
        .map_err(|_| "unsealed")?;
    // Recorded only once it opened: forged datagrams cannot fill the windows.
    senders.record(epoch, counter);
    Ok(plaintext)
}

/// The replay windows of the senders heard from.
#[derive(Default)]
struct Senders {
    windows: HashMap<Epoch, Window>,
    /// Epochs in the order they were first heard, to forget the oldest.
    order: VecDeque<Epoch>,
}

/// The highest counter of a sender, and a bit for each of the `WINDOW`
/// counters below it that was seen (bit 0: `highest` itself).
#[derive(Clone, Copy)]
struct Window {
    highest: u64,
    seen: u64,
}

impl Senders {
    /// Whether `counter` of `epoch` was seen already or is too old to tell.
    fn seen(&self, epoch: &Epoch, counter: u64) -> bool {
        let Some(window) = self.windows.get(epoch) else {
            return false;
        };
        if counter > window.highest {
            return false;
        }
        let age = window.highest - counter;
        age >= WINDOW || window.seen & (1 << age) != 0
    }

    fn record(&mut self, epoch: Epoch, counter: u64) {
        match self.windows.get_mut(&epoch) {
            Some(window) if counter > window.highest => {
                let shift = counter - window.highest;
                window.seen = if shift >= WINDOW {
                    0
                } else {
                    window.seen << shift
                } | 1;
                window.highest = counter;
            }
            Some(window) => window.seen |= 1 << (window.highest - counter),
            None => {
                if self.order.len() >= EPOCHS_KEPT {
                    if let Some(oldest) = self.order.pop_front() {
                        self.windows.remove(&oldest);
                    }
                }
                self.order.push_back(epoch);
                self.windows.insert(
                    epoch,
                    Window {
                        highest: counter,
                        seen: 1,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chitchat::transport::UdpTransport;
    use chitchat::{ChitchatMessage, ProtocolVersion};

    use super::*;

    fn envelope() -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::BadCluster,
        }
    }

    async fn recv_within(socket: &mut Box<dyn Socket>) -> Option<RecvOutcome> {
        tokio::time::timeout(Duration::from_millis(500), socket.recv())
            .await
            .ok()
            .map(|received| received.expect("recv"))
    }

    #[tokio::test]
    async fn forged_plain_and_replayed_datagrams_are_dropped() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let cluster = SealedUdpTransport::new("secret");
        let mut receiver = cluster.open(any).await.expect("open");
        let to = receiver.local_addr().expect("addr");

        // A member's datagram arrives; the same bytes sent again do not.
        let mut member = cluster.open(any).await.expect("open");
        let capture = tokio::net::UdpSocket::bind(any).await.expect("bind");
        member
            .send(capture.local_addr().expect("addr"), envelope())
            .await
            .expect("send");
        let mut datagram = vec![0; MAX_DATAGRAM];
        let (len, _) = capture.recv_from(&mut datagram).await.expect("capture");
        datagram.truncate(len);
        capture.send_to(&datagram, to).await.expect("forward");
        assert!(
            recv_within(&mut receiver).await.is_some(),
            "the member's datagram was dropped"
        );
        capture.send_to(&datagram, to).await.expect("replay");
        assert!(
            recv_within(&mut receiver).await.is_none(),
            "a replay was accepted"
        );

        // Another secret, plain chitchat, and a flipped bit: all dropped.
        let mut stranger = SealedUdpTransport::new("other")
            .open(any)
            .await
            .expect("open");
        stranger.send(to, envelope()).await.expect("send");
        let mut plain = UdpTransport.open(any).await.expect("open");
        plain.send(to, envelope()).await.expect("send");
        let mut flipped = datagram.clone();
        flipped[HEADER_LEN] ^= 1;
        // A fresh counter, so only the flipped bit can make it fail.
        flipped[HEADER_LEN - 1] ^= 0x80;
        capture.send_to(&flipped, to).await.expect("send");
        assert!(
            recv_within(&mut receiver).await.is_none(),
            "a forged datagram was accepted"
        );

        // The member's next datagram still arrives.
        member.send(to, envelope()).await.expect("send");
        assert!(recv_within(&mut receiver).await.is_some());
    }

    #[test]
    fn the_window_takes_each_counter_once_and_refuses_ones_too_old() {
        let mut senders = Senders::default();
        let epoch = [1; EPOCH_LEN];
        for counter in [5, 3, 70, 69, 8] {
            assert!(!senders.seen(&epoch, counter), "{counter}");
            senders.record(epoch, counter);
            assert!(senders.seen(&epoch, counter), "{counter}");
        }
        // 5 is more than 64 below 70: too old to tell, so refused.
        assert!(senders.seen(&epoch, 5));
        assert!(!senders.seen(&epoch, 68));
        assert!(!senders.seen(&[2; EPOCH_LEN], 5));
    }
}
