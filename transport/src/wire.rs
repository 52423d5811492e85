//! Framing and peer authentication for node-to-node TCP connections.
//!
//! A frame is a u32 big-endian length, a version byte, then a body encoded
//! with `shoal_codec`.
//! With TLS configured ([`PeerTls`]), a connection is mutual TLS first:
//! each side presents its certificate and checks the other's against the
//! cluster CA, and everything after, the challenge included, is inside it.
//! Every connection then starts with a mutual challenge: the server sends a
//! random nonce, the client answers with its own nonce and its proof,
//! HMAC-SHA256(cluster secret, "client", both nonces), and the server
//! answers 0 (rejected), or 1 and its own proof over both nonces, which the
//! client checks before sending any request. So each side knows the other
//! holds the secret. Without a secret both sides use the empty key, so a
//! node with a secret and one without cannot talk.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;
use shoal_tls::rustls::pki_types::ServerName;
use shoal_tls::{TlsAcceptor, TlsConnector};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bumped with every change of a message's encoding (3: the handshake
/// proves the secret both ways; 5: a dataset scan may carry a partial query;
/// 6: and the days it reads; 7: and the columns it sends; 8: its rows come
/// in chunks; 9: refusals say which limit; 10: a scan carries its row
/// limit; 11: and its byte limit).
const WIRE_VERSION: u8 = 12;
/// Largest frame accepted; snapshot chunks (1 MiB), AppendEntries (4 MiB of
/// entries, or one larger entry) and Raft entries (4 MiB of proposals, or
/// one larger proposal) stay far below.
const MAX_FRAME_BYTES: usize = 64 << 20;
/// Largest frame of the handshake (a nonce, a proof and a nonce, a verdict
/// and a proof: 48 bytes or less), so a stranger cannot make a node wait for
/// or hold more.
const MAX_HANDSHAKE_FRAME_BYTES: usize = 64;
/// Memory reserved for a frame before its bytes arrive; a bigger frame's
/// buffer grows as they do, so a length header alone holds nothing.
const FRAME_RESERVE_BYTES: usize = 1 << 20;
const NONCE_BYTES: usize = 16;
/// A peer must complete the handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared cluster secret (empty when none is configured).
#[derive(Clone, Default)]
struct ClusterKey(Vec<u8>);

impl ClusterKey {
    fn new(secret: Option<&str>) -> ClusterKey {
        ClusterKey(secret.unwrap_or_default().as_bytes().to_vec())
    }

    /// HMAC-SHA256 over the role and both nonces.
    fn proof(&self, role: Role, server_nonce: &[u8], client_nonce: &[u8]) -> Vec<u8> {
        self.mac(role, server_nonce, client_nonce)
            .map(|mac| mac.finalize().into_bytes().to_vec())
            .unwrap_or_default()
    }

    fn verify(&self, role: Role, server_nonce: &[u8], client_nonce: &[u8], proof: &[u8]) -> bool {
        self.mac(role, server_nonce, client_nonce)
            .is_some_and(|mac| mac.verify_slice(proof).is_ok())
    }

    fn mac(&self, role: Role, server_nonce: &[u8], client_nonce: &[u8]) -> Option<Hmac<Sha256>> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        mac.update(match role {
            Role::Client => b"shoal-rpc-v3-client",
            Role::Server => b"shoal-rpc-v3-server",
        });
        mac.update(server_nonce);
        mac.update(client_nonce);
        Some(mac)
    }
}

/// Which side of a connection a proof comes from (so neither side's proof
/// can be sent back to it as the other's).
#[derive(Clone, Copy)]
enum Role {
    Client,
    Server,
}

/// Mutual TLS between nodes: the acceptor asks connecting peers for a
/// certificate from the cluster CA, and the connector presents this node's
/// and checks the peer's against the same CA.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

/// How this node and its peers prove themselves to each other: the cluster
/// secret, inside mutual TLS when that is configured.
#[derive(Clone, Default)]
pub struct PeerAuth {
    key: ClusterKey,
    tls: Option<PeerTls>,
}

impl PeerAuth {
    pub fn new(secret: Option<&str>, tls: Option<PeerTls>) -> PeerAuth {
        PeerAuth {
            key: ClusterKey::new(secret),
            tls,
        }
    }
}

/// What a connection to or from a peer is: TCP, or TLS over it.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> PeerIo for T {}

/// An authenticated connection to or from a peer.
pub type PeerStream = Box<dyn PeerIo>;

/// Bodies up to this size are copied behind their header and written at
/// once; bigger ones are written after the header without the copy.
const COPY_BELOW: usize = 64 << 10;

pub async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len() + 1).map_err(std::io::Error::other)?;
    let mut header = [0; 5];
    header[..4].copy_from_slice(&len.to_be_bytes());
    header[4] = WIRE_VERSION;
    if body.len() < COPY_BELOW {
        let mut frame = Vec::with_capacity(body.len() + 5);
        frame.extend_from_slice(&header);
        frame.extend_from_slice(body);
        stream.write_all(&frame).await?;
    } else {
        stream.write_all(&header).await?;
        stream.write_all(body).await?;
    }
    // TLS may hold the last records of a write that met a full socket
    // buffer until something polls the stream's writer again: without the
    // flush, the peer waits for the rest of the frame and the caller for an
    // answer, until its timeout.
    stream.flush().await
}

pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    read_frame_within(stream, MAX_FRAME_BYTES).await
}

async fn read_frame_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> std::io::Result<Vec<u8>> {
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

pub async fn send<T: Serialize>(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> std::io::Result<()> {
    let body = shoal_codec::encode(message).map_err(std::io::Error::other)?;
    write_frame(stream, &body).await
}

pub async fn receive<T: DeserializeOwned>(
    stream: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<T> {
    let frame = read_frame(stream).await?;
    shoal_codec::decode(&frame).map_err(std::io::Error::other)
}

/// The host part of `host:port` as TLS names it (an IP address or a DNS name).
fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr}: not a host name for TLS: {e}"),
        )
    })
}

fn timed_out(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// A refused handshake: the peer's TLS, or its answer to the challenge.
fn denied(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, why)
}

/// Connect to a peer (over mutual TLS when configured) and prove we know
/// the cluster secret.
pub async fn connect(addr: &str, auth: &PeerAuth) -> std::io::Result<PeerStream> {
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut stream: PeerStream = match &auth.tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(
                shoal_tls::connect(&tls.connector, server_name(addr)?, tcp)
                    .await
                    .map_err(|e| denied(format!("TLS with {addr} failed: {e}")))?,
            ),
        };
        let server_nonce = read_frame_within(&mut stream, MAX_HANDSHAKE_FRAME_BYTES).await?;
        let client_nonce: [u8; NONCE_BYTES] = rand::random();
        let mut answer = auth.key.proof(Role::Client, &server_nonce, &client_nonce);
        answer.extend_from_slice(&client_nonce);
        write_frame(&mut stream, &answer).await?;
        match read_frame_within(&mut stream, MAX_HANDSHAKE_FRAME_BYTES)
            .await?
            .split_first()
        {
            Some((1, proof))
                if auth
                    .key
                    .verify(Role::Server, &server_nonce, &client_nonce, proof) =>
            {
                Ok(stream)
            }
            Some((1, _)) => Err(denied(format!("{addr} does not know the cluster secret"))),
            _ => Err(denied(format!("{addr} rejected our cluster secret"))),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| timed_out(format!("handshake with {addr} timed out")))?
}

/// Authenticate a connecting peer: mutual TLS when configured, then the
/// challenge. `Ok(None)` if it does not know the secret; an error of kind
/// `PermissionDenied` if its TLS handshake failed (no certificate, or one
/// the cluster CA did not sign).
pub async fn accept(stream: TcpStream, auth: &PeerAuth) -> std::io::Result<Option<PeerStream>> {
    stream.set_nodelay(true)?;
    let handshake = async {
        let mut stream: PeerStream = match &auth.tls {
            None => Box::new(stream),
            Some(tls) => Box::new(
                shoal_tls::accept(&tls.acceptor, stream)
                    .await
                    .map_err(|e| denied(format!("TLS handshake failed: {e}")))?,
            ),
        };
        let server_nonce: [u8; NONCE_BYTES] = rand::random();
        write_frame(&mut stream, &server_nonce).await?;
        let answer = read_frame_within(&mut stream, MAX_HANDSHAKE_FRAME_BYTES).await?;
        let accepted = answer.len() > NONCE_BYTES && {
            let (proof, client_nonce) = answer.split_at(answer.len() - NONCE_BYTES);
            auth.key
                .verify(Role::Client, &server_nonce, client_nonce, proof)
        };
        if !accepted {
            write_frame(&mut stream, &[0]).await?;
            return Ok(None);
        }
        let client_nonce = &answer[answer.len() - NONCE_BYTES..];
        let mut verdict = vec![1];
        verdict.extend(auth.key.proof(Role::Server, &server_nonce, client_nonce));
        write_frame(&mut stream, &verdict).await?;
        Ok(Some(stream))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| timed_out("handshake timed out".to_string()))?
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::protocol::{SearchAnswer, SearchCall};

    #[tokio::test]
    async fn a_frame_is_flushed_through_a_stream_that_buffers_writes() {
        // Like TLS, a BufWriter holds what it was given until it is flushed.
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut client = tokio::io::BufWriter::new(client);
        write_frame(&mut client, b"all of it").await.expect("write");
        let read = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut server)).await;
        assert_eq!(
            read.expect("the frame never arrived").expect("read"),
            b"all of it"
        );
    }

    /// One server accepting one connection with `server_key`; returns the
    /// client's connect result and whether the server accepted.
    async fn handshake(server_key: &str, client_key: &str) -> (bool, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server_auth = PeerAuth::new(Some(server_key), None);
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let accepted = accept(stream, &server_auth).await.expect("handshake");
            if let Some(mut stream) = accepted {
                let call: SearchCall = receive(&mut stream).await.expect("request");
                assert!(matches!(call, SearchCall::Position));
                send(&mut stream, &SearchAnswer::Position(7))
                    .await
                    .expect("reply");
                true
            } else {
                false
            }
        });
        let client = match connect(&addr, &PeerAuth::new(Some(client_key), None)).await {
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

    /// The `PeerAuth` of a node holding a certificate that `holder` (a CA)
    /// signed and trusting only the CA `trusted` (files in `dir`).
    fn tls_auth(
        dir: &std::path::Path,
        holder: &shoal_tls::Issued,
        trusted: &shoal_tls::Issued,
    ) -> PeerAuth {
        use std::sync::Arc;
        let write = |pem: &str| {
            let path = dir.join(format!("{:016x}.pem", rand::random::<u64>()));
            std::fs::write(&path, pem).expect("write");
            path
        };
        let node = shoal_tls::issue(
            &holder.certificate_pem,
            &holder.key_pem,
            "node",
            &["127.0.0.1".to_string()],
            shoal_tls::Usage::Node,
            1,
        )
        .expect("a node certificate");
        let files = shoal_tls::CertificateFiles {
            certificate: write(&node.certificate_pem),
            key: write(&node.key_pem),
        };
        let roots = shoal_tls::read_roots(&write(&trusted.certificate_pem)).expect("roots");
        let certificate = shoal_tls::ReloadingCertificate::load(files).expect("load");
        let server = shoal_tls::server_config(certificate.clone(), Some(roots.clone()), &[])
            .expect("server config");
        let client = shoal_tls::client_config(roots, Some(certificate)).expect("client config");
        PeerAuth::new(
            Some("secret"),
            Some(PeerTls {
                acceptor: TlsAcceptor::from(Arc::new(server)),
                connector: TlsConnector::from(Arc::new(client)),
            }),
        )
    }

    #[tokio::test]
    async fn peers_without_a_certificate_from_the_cluster_ca_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ours = shoal_tls::new_authority("ours", 1).expect("a CA");
        let theirs = shoal_tls::new_authority("theirs", 1).expect("a CA");
        let server_auth = tls_auth(dir.path(), &ours, &ours);
        // The same secret is not enough: a client that trusts our CA (so it
        // accepts the server) but holds another CA's certificate must be
        // refused by the server, and a client that trusts only another CA
        // refuses the server.
        let clients = [
            ("a peer", tls_auth(dir.path(), &ours, &ours)),
            (
                "another CA's certificate",
                tls_auth(dir.path(), &theirs, &ours),
            ),
            ("another CA's trust", tls_auth(dir.path(), &theirs, &theirs)),
        ];
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let mut verdicts = Vec::new();
            for _ in 0..3 {
                let (stream, _) = listener.accept().await.expect("accept");
                verdicts.push(match accept(stream, &server_auth).await {
                    Ok(Some(mut stream)) => {
                        let call: SearchCall = receive(&mut stream).await.expect("request");
                        assert!(matches!(call, SearchCall::Position));
                        send(&mut stream, &SearchAnswer::Position(7))
                            .await
                            .expect("reply");
                        "accepted".to_string()
                    }
                    Ok(None) => "wrong secret".to_string(),
                    Err(e) => format!("{:?}", e.kind()),
                });
            }
            verdicts
        });
        for (who, auth) in &clients {
            match connect(&addr, auth).await {
                Ok(mut stream) => {
                    assert_eq!(*who, "a peer", "{who} was accepted");
                    send(&mut stream, &SearchCall::Position)
                        .await
                        .expect("send");
                    let answer: SearchAnswer = receive(&mut stream).await.expect("receive");
                    assert!(matches!(answer, SearchAnswer::Position(7)));
                }
                // With TLS 1.3 a client hears that the server refused its
                // certificate when it reads the first frame (an alert).
                Err(e) => assert_ne!(*who, "a peer", "{e}"),
            }
        }
        assert_eq!(
            server.await.expect("server task"),
            vec!["accepted", "PermissionDenied", "PermissionDenied"]
        );
    }

    #[tokio::test]
    async fn a_server_that_does_not_know_the_secret_is_not_talked_to() {
        // It says yes to anything, with a proof it cannot make.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let impostor = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            write_frame(&mut stream, &[7; NONCE_BYTES])
                .await
                .expect("nonce");
            read_frame(&mut stream).await.expect("the client's answer");
            let mut verdict = vec![1];
            verdict.extend([0u8; 32]);
            write_frame(&mut stream, &verdict).await.expect("verdict");
        });
        let refused = connect(&addr, &PeerAuth::new(Some("secret"), None))
            .await
            .err()
            .expect("an impostor accepted");
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(refused
            .to_string()
            .contains("does not know the cluster secret"));
        impostor.await.expect("impostor task");
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
