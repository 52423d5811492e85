//! The HTTP API's accept loop, with the limits that keep a node alive
//! under abusive clients: at most so many connections in all and per
//! client address (past them a connection gets a JSON 503 or 429 and is
//! closed), and a deadline for a request's headers, which also closes an
//! HTTP/1.1 connection that sits idle between requests (slowloris), and an
//! HTTP/2 connection without a stream for as long.
//! With a TLS acceptor, every connection is TLS: the handshake has the same
//! deadline as a request's headers, and ALPN tells HTTP/2 from HTTP/1.1.
//! Writes the client leaves untaken fail after a deadline (see
//! [`WriteDeadline`]), which closes the connection; TCP keepalive finds
//! peers that are gone (a host down, a network cut) on idle connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use shoal_tls::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::error::{ApiError, ErrorCode};
use crate::http2_idle::{CountedApp, Streams};
use crate::settings::Settings;
use crate::write_deadline::WriteDeadline;

/// How long a refused connection gets to send its request's headers, take
/// its answer and close.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Back-off after a failed accept (out of file descriptors, most likely).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How often a connection that sent part of the HTTP/2 preface is looked
/// at again.
const PREFACE_POLL: Duration = Duration::from_millis(10);
/// TCP keepalive on every accepted connection: probes after a minute of
/// silence, every 10 s, closed after 6 unanswered (about 2 minutes). An idle
/// connection to a peer that is gone (an HTTP/2 client, a subscriber
/// waiting for messages) would otherwise hold its place for ever.
const TCP_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10))
    .with_retries(6);

/// The API listener's limits (`--max-connections`,
/// `--max-connections-per-client`, `--header-read-timeout-ms`,
/// `--write-timeout-ms`).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_client: usize,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
}

impl ConnectionLimits {
    pub fn of(settings: &Settings) -> ConnectionLimits {
        ConnectionLimits {
            total: settings.max_connections,
            per_client: settings.max_connections_per_client,
            header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms),
            write_timeout: settings.write_timeout(),
        }
    }
}

/// Open connections, in all and by client address.
#[derive(Default)]
struct Open {
    /// The listener's name in metrics (`api`, `otlp_http`).
    listener: &'static str,
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// A connection's place in [`Open`], given back when it closes.
struct Slot {
    open: Arc<Mutex<Open>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.by_client.remove(&self.client);
            }
        }
        metrics::gauge!("shoal_api_connections", "listener" => open.listener)
            .set(open.total as f64);
    }
}

/// Why a connection is not served.
#[derive(Clone, Copy)]
enum Refusal {
    Node,
    Client,
}

impl Refusal {
    fn answer(self, limits: &ConnectionLimits) -> String {
        let (status, message) = match self {
            Refusal::Node => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the node has {} open connections, its limit (--max-connections)",
                    limits.total
                ),
            ),
            Refusal::Client => (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this address has {} open connections, the limit per client address (--max-connections-per-client)",
                    limits.per_client
                ),
            ),
        };
        let body = ApiError::new(status, ErrorCode::TooManyConnections, message)
            .body()
            .to_string();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default(),
            body.len()
        )
    }

    fn label(self) -> &'static str {
        match self {
            Refusal::Node => "node",
            Refusal::Client => "client",
        }
    }
}

fn admit(
    open: &Arc<Mutex<Open>>,
    client: IpAddr,
    limits: &ConnectionLimits,
) -> Result<Slot, Refusal> {
    let mut state = open.lock().unwrap_or_else(|e| e.into_inner());
    if state.total >= limits.total {
        return Err(Refusal::Node);
    }
    let count = state.by_client.entry(client).or_insert(0);
    if *count >= limits.per_client {
        return Err(Refusal::Client);
    }
    *count += 1;
    state.total += 1;
    metrics::gauge!("shoal_api_connections", "listener" => state.listener).set(state.total as f64);
    Ok(Slot {
        open: open.clone(),
        client,
    })
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` changes;
/// then stops accepting, asks every connection to finish what it is
/// answering, and returns once all have closed (the caller bounds that
/// wait: streams never finish).
pub async fn serve(
    listener: TcpListener,
    name: &'static str,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let open = Arc::new(Mutex::new(Open {
        listener: name,
        ..Open::default()
    }));
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            // A dropped sender stops the loop too.
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        // No Nagle delay: stream frames (SSE, WebSocket) go out as soon as
        // they are written.
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&TCP_KEEPALIVE);
        match admit(&open, peer.ip(), &limits) {
            Ok(slot) => {
                connections.spawn(serve_connection(
                    stream,
                    Listener {
                        name,
                        app: app.clone(),
                        limits,
                        tls: tls.clone(),
                    },
                    slot,
                    stop.clone(),
                ));
            }
            Err(refusal) => {
                metrics::counter!(
                    "shoal_api_connections_refused_total",
                    "listener" => name,
                    "limit" => refusal.label()
                )
                .increment(1);
                tracing::debug!(%peer, limit = refusal.label(), "API connection refused");
                connections.spawn(refuse(stream, tls.clone(), refusal.answer(&limits)));
            }
        }
    }
    while connections.join_next().await.is_some() {}
}

/// What a connection is served with.
struct Listener {
    name: &'static str,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
}

/// Which HTTP a connection speaks.
#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Http1,
    Http2,
}

async fn serve_connection(
    stream: TcpStream,
    listener: Listener,
    _slot: Slot,
    stop: watch::Receiver<bool>,
) {
    let deadline = listener.limits.header_read_timeout;
    let stream = WriteDeadline::new(stream, listener.limits.write_timeout, listener.name);
    match &listener.tls {
        None => {
            // The first bytes tell HTTP/1.1 from HTTP/2; the wait for
            // them is bounded by the header deadline.
            if let Ok(Some(protocol)) =
                tokio::time::timeout(deadline, protocol_of(stream.get_ref())).await
            {
                serve_http(stream, protocol, listener, stop).await;
            }
        }
        Some(acceptor) => {
            let accepted = shoal_tls::accept(acceptor, stream);
            let stream = match tokio::time::timeout(deadline, accepted).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    metrics::counter!("shoal_tls_handshake_failures_total", "listener" => listener.name)
                        .increment(1);
                    tracing::debug!(error = %e, listener = listener.name, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            serve_http(stream, protocol, listener, stop).await;
        }
    }
}

async fn serve_http<S>(
    stream: S,
    protocol: Protocol,
    listener: Listener,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(listener.limits.header_read_timeout);
    // WebSockets over HTTP/2 use the CONNECT protocol.
    builder.http2().enable_connect_protocol();
    // hyper tells HTTP/1.1 from HTTP/2 by itself (with upgrades, its
    // `http1_only`/`http2_only` do nothing); `protocol` decides only this:
    // an HTTP/2 connection with no stream for the header deadline is told
    // to go away, as an idle HTTP/1.1 connection is closed.
    let streams = (protocol == Protocol::Http2).then(Streams::default);
    let idle = {
        let streams = streams.clone();
        let limit = listener.limits.header_read_timeout;
        async move {
            match streams {
                Some(streams) => streams.idle_for(limit).await,
                None => std::future::pending().await,
            }
        }
    };
    let service = TowerToHyperService::new(CountedApp {
        router: listener.app,
        streams,
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stop.changed() => connection.as_mut().graceful_shutdown(),
        _ = idle => {
            metrics::counter!("shoal_api_idle_closed_total", "listener" => listener.name)
                .increment(1);
            connection.as_mut().graceful_shutdown();
        }
    }
    let _ = connection.await;
}

/// Waits until the bytes waiting on the connection tell its protocol: they
/// are the whole HTTP/2 preface or differ from it. None if it closed.
async fn protocol_of(stream: &TcpStream) -> Option<Protocol> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        if first[..n] != H2_PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // Part of the preface: peeking again at once would see the same.
        tokio::time::sleep(PREFACE_POLL).await;
    }
}

async fn refuse(stream: TcpStream, tls: Option<TlsAcceptor>, answer: String) {
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        match tls {
            None => answer_and_close(stream, answer).await,
            Some(acceptor) => {
                if let Ok(stream) = shoal_tls::accept(&acceptor, stream).await {
                    answer_and_close(stream, answer).await;
                }
            }
        }
    })
    .await;
}

async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: String) {
    // An HTTP client takes an answer that comes before its request as
    // a broken connection: wait for the request's headers first.
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Read on until the client closes: closing with its body unread
    // would reset the connection, and the client might lose the answer.
    while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
}

/// Raises this process's soft limit on open files to its hard limit (as
/// Go programs do), so the connection limits, not the file descriptors,
/// are what a flood of connections meets. Returns the soft limit after.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_admitted_up_to_each_limit_and_given_back() {
        let limits = ConnectionLimits {
            total: 3,
            per_client: 2,
            header_read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
        };
        let open = Arc::new(Mutex::new(Open::default()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admit(&open, a, &limits).ok().unwrap();
        let _second = admit(&open, a, &limits).ok().unwrap();
        assert!(matches!(admit(&open, a, &limits), Err(Refusal::Client)));
        let _third = admit(&open, b, &limits).ok().unwrap();
        assert!(matches!(admit(&open, b, &limits), Err(Refusal::Node)));
        drop(first);
        assert!(admit(&open, a, &limits).is_ok());
    }
}
