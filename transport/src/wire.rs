//! Framing and peer authentication for node-to-node TCP connections.
//!
//! A frame is a u32 big-endian length, a version byte, then a body encoded
//! with `shoal_codec`.
//! Every connection starts with a challenge: the server sends a random
//! nonce, the client answers HMAC-SHA256(cluster secret, nonce), and the
//! server answers one byte, 1 (accepted) or 0 (rejected), before any request.
//! Without a secret both sides use the empty key, so a node with a secret
//! and one without cannot talk.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Version 2: typed search requests and answers, typed errors in replies.
const WIRE_VERSION: u8 = 2;
/// Largest frame accepted; snapshot chunks and append batches stay far below.
const MAX_FRAME_BYTES: usize = 64 << 20;
/// Largest frame of the handshake (a nonce, a proof, a verdict: 32 bytes
/// or less), so a stranger cannot make a node wait for or hold more.
const MAX_HANDSHAKE_FRAME_BYTES: usize = 64;
/// Memory reserved for a frame before its bytes arrive; a bigger frame's
/// buffer grows as they do, so a length header alone holds nothing.
const FRAME_RESERVE_BYTES: usize = 1 << 20;
const NONCE_BYTES: usize = 16;
/// A peer must complete the handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared cluster secret (empty when none is configured).
#[derive(Clone, Default)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    pub fn new(secret: Option<&str>) -> ClusterKey {
        ClusterKey(secret.unwrap_or_default().as_bytes().to_vec())
    }

    fn proof(&self, nonce: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => return Vec::new(),
        };
        mac.update(b"shoal-rpc-v1");
        mac.update(nonce);
        mac.finalize().into_bytes().to_vec()
    }

    fn verify(&self, nonce: &[u8], proof: &[u8]) -> bool {
        match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mut mac) => {
                mac.update(b"shoal-rpc-v1");
                mac.update(nonce);
                mac.verify_slice(proof).is_ok()
            }
            Err(_) => false,
        }
    }
}

/// Bodies up to this size are copied behind their header and written at
/// once; bigger ones are written after the header without the copy.
const COPY_BELOW: usize = 64 << 10;

pub async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len() + 1).map_err(std::io::Error::other)?;
    let mut header = [0; 5];
    header[..4].copy_from_slice(&len.to_be_bytes());
    header[4] = WIRE_VERSION;
    if body.len() < COPY_BELOW {
        let mut frame = Vec::with_capacity(body.len() + 5);
        frame.extend_from_slice(&header);
        frame.extend_from_slice(body);
        return stream.write_all(&frame).await;
    }
    stream.write_all(&header).await?;
    stream.write_all(body).await
}

pub async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    read_frame_within(stream, MAX_FRAME_BYTES).await
}

async fn read_frame_within(stream: &mut TcpStream, max: usize) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u32().await? as usize;
    if len == 0 || len > max {
        return Err(std::io::Error::other(format!(
            "bad frame length {len} (at most {max})"
        )));
    }
    let version = stream.read_u8().await?;
    if version != WIRE_VERSION {
        return Err(std::io::Error::other(format!(
            "unknown wire version {version}"
        )));
    }
    let want = len - 1;
    let mut body = Vec::with_capacity(want.min(FRAME_RESERVE_BYTES));
    (&mut *stream)
        .take(want as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() != want {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(body)
}

pub async fn send<T: Serialize>(stream: &mut TcpStream, message: &T) -> std::io::Result<()> {
    let body = shoal_codec::encode(message).map_err(std::io::Error::other)?;
    write_frame(stream, &body).await
}

pub async fn receive<T: DeserializeOwned>(stream: &mut TcpStream) -> std::io::Result<T> {
    let frame = read_frame(stream).await?;
    shoal_codec::decode(&frame).map_err(std::io::Error::other)
}

/// Connect to a peer and prove we know the cluster secret.
pub async fn connect(addr: &str, key: &ClusterKey) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let handshake = async {
        let nonce = read_frame_within(&mut stream, MAX_HANDSHAKE_FRAME_BYTES).await?;
        write_frame(&mut stream, &key.proof(&nonce)).await?;
        match read_frame_within(&mut stream, MAX_HANDSHAKE_FRAME_BYTES)
            .await?
            .as_slice()
        {
            [1] => Ok(()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{addr} rejected our cluster secret"),
            )),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("handshake with {addr} timed out"),
            )
        })??;
    Ok(stream)
}

/// Challenge a connecting peer; Ok(false) if it does not know the secret.
pub async fn accept(stream: &mut TcpStream, key: &ClusterKey) -> std::io::Result<bool> {
    stream.set_nodelay(true)?;
    let handshake = async {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        write_frame(stream, &nonce).await?;
        let proof = read_frame_within(stream, MAX_HANDSHAKE_FRAME_BYTES).await?;
        let accepted = key.verify(&nonce, &proof);
        write_frame(stream, &[u8::from(accepted)]).await?;
        Ok(accepted)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::protocol::{SearchAnswer, SearchCall};

    /// One server accepting one connection with `server_key`; returns the
    /// client's connect result and whether the server accepted.
    async fn handshake(server_key: &str, client_key: &str) -> (bool, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server_key = ClusterKey::new(Some(server_key));
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let accepted = accept(&mut stream, &server_key).await.expect("handshake");
            if accepted {
                let call: SearchCall = receive(&mut stream).await.expect("request");
                assert!(matches!(call, SearchCall::Position));
                send(&mut stream, &SearchAnswer::Position(7))
                    .await
                    .expect("reply");
            }
            accepted
        });
        let client = match connect(&addr, &ClusterKey::new(Some(client_key))).await {
            Ok(mut stream) => {
                send(&mut stream, &SearchCall::Position)
                    .await
                    .expect("send");
                let answer: SearchAnswer = receive(&mut stream).await.expect("receive");
                assert!(matches!(answer, SearchAnswer::Position(7)));
                true
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
                false
            }
        };
        (client, server.await.expect("server task"))
    }

    #[tokio::test]
    async fn peers_with_the_same_secret_talk_and_others_are_refused() {
        assert_eq!(handshake("secret", "secret").await, (true, true));
        assert_eq!(handshake("secret", "other").await, (false, false));
    }

    #[tokio::test]
    async fn a_frame_of_another_wire_version_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let writer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            // Length 2 (version byte + one body byte), version 1.
            stream.write_all(&[0, 0, 0, 2, 1, 0]).await.expect("write");
        });
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let error = read_frame(&mut stream).await.expect_err("old version");
        assert!(error.to_string().contains("unknown wire version 1"));
        writer.await.expect("writer task");
    }
}
