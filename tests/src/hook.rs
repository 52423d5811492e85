//! A webhook receiver for the delivery tests: a real HTTP server that records requests and answers as told.
//!
//! [`Hook::start`] binds a fresh local port; [`Hook::start_on`] binds a
//! given one (a test may hand a node the URL of a receiver that is not up
//! yet, see [`hook_url`]). The server is a minimal HTTP/1.1 implementation
//! over tokio's `TcpListener` (keep-alive, `content-length` and chunked
//! bodies), enough for what Shoal's deliverer sends. Each request is
//! recorded with the status it was answered: the next scripted status
//! ([`Hook::fail_first`]), else the default one ([`Hook::set_status`], 200 at
//! first). Dropping the `Hook` closes the listener and every connection.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::wait_for;

/// The path the receiver is reached at (any path is accepted and recorded).
const PATH: &str = "/hook";
/// Largest request head or body the receiver accepts.
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// A connection the receiver reads requests from: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// The URL of a receiver on `port` (whether it runs yet or not).
pub fn hook_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}{PATH}")
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the receiver answered.
    pub status: u16,
    /// When the request was complete.
    pub received: Instant,
}

impl Request {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// `webhook-id`, panicking if it is missing.
    #[track_caller]
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id")
            .unwrap_or_else(|| panic!("request without webhook-id: {self:?}"))
    }

    /// The body parsed as JSON, panicking if it is not.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Checks the Standard Webhooks signature against `secret`
    /// (`whsec_<base64 key>`): one of the space-separated `v1,<base64>`
    /// entries of `webhook-signature` must be HMAC-SHA256 of
    /// `{webhook-id}.{webhook-timestamp}.{body}`, and the timestamp must be
    /// within five minutes of now.
    pub fn verify(&self, secret: &str) -> Result<(), String> {
        let id = self.header("webhook-id").ok_or("no webhook-id header")?;
        let timestamp = self
            .header("webhook-timestamp")
            .ok_or("no webhook-timestamp header")?;
        let signatures = self
            .header("webhook-signature")
            .ok_or("no webhook-signature header")?;
        let seconds: u64 = timestamp
            .parse()
            .map_err(|_| format!("webhook-timestamp {timestamp:?} is not a number of seconds"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock before 1970")
            .as_secs();
        if seconds.abs_diff(now) > 300 {
            return Err(format!(
                "webhook-timestamp {seconds} is not within 5 minutes of {now}"
            ));
        }
        let expected = sign(secret, id, timestamp, &self.body)?;
        if signatures.split(' ').any(|s| s == expected) {
            Ok(())
        } else {
            Err(format!(
                "webhook-signature {signatures:?} does not contain the expected {expected:?}"
            ))
        }
    }
}

/// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), with the key
/// decoded from a `whsec_` secret.
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> Result<String, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| format!("secret {secret:?} does not start with whsec_"))?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|e| format!("secret {secret:?} is not whsec_<base64>: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    /// Statuses for the next requests, in order.
    script: VecDeque<u16>,
    /// The status once the script is used up.
    default_status: u16,
}

/// A running webhook receiver.
pub struct Hook {
    port: u16,
    /// Served over TLS (the URL is https://).
    tls: bool,
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
}

impl Hook {
    /// A receiver on a fresh local port, answering 200.
    pub async fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind a local TCP port for the webhook receiver");
        Hook::serve(listener, None)
    }

    /// A receiver over TLS (`https://127.0.0.1:PORT/hook`) on a fresh
    /// local port, with this certificate chain and key (PEM).
    pub async fn start_tls(certificate_pem: &str, key_pem: &str) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind a local TCP port for the webhook receiver");
        Hook::serve(
            listener,
            Some(crate::tls::acceptor(certificate_pem, key_pem)),
        )
    }

    /// A receiver on this port (e.g. one from [`crate::free_port`] whose
    /// URL a node already has), answering 200.
    pub async fn start_on(port: u16) -> Hook {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("cannot bind port {port} for the webhook receiver: {e}"));
        Hook::serve(listener, None)
    }

    fn serve(listener: TcpListener, tls: Option<TlsAcceptor>) -> Hook {
        let port = listener.local_addr().expect("local_addr").port();
        let state = Arc::new(Mutex::new(State {
            default_status: 200,
            ..State::default()
        }));
        let shared = state.clone();
        let secure = tls.is_some();
        let server = tokio::spawn(async move {
            // Dropped with the accept loop when the Hook is dropped, which
            // aborts every connection task.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => match &tls {
                            None => {
                                connections.spawn(serve_connection(stream, shared.clone()));
                            }
                            Some(acceptor) => {
                                let accept = acceptor.accept(stream);
                                let shared = shared.clone();
                                connections.spawn(async move {
                                    match accept.await {
                                        Ok(stream) => serve_connection(stream, shared).await,
                                        Err(e) => eprintln!("webhook receiver: TLS handshake failed: {e}"),
                                    }
                                });
                            }
                        },
                        Err(e) => {
                            eprintln!("webhook receiver: accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Hook {
            port,
            tls: secure,
            state,
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/hook` (`https://` over TLS).
    pub fn url(&self) -> String {
        let url = hook_url(self.port);
        match self.tls {
            true => url.replacen("http://", "https://", 1),
            false => url,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answer the next `n` requests with `status`, then the default status.
    pub fn fail_first(&self, n: usize, status: u16) {
        self.lock().script.extend(std::iter::repeat_n(status, n));
    }

    /// The status for every request once the script is used up.
    pub fn set_status(&self, status: u16) {
        self.lock().default_status = status;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// The distinct `webhook-id`s received so far (answered with any status).
    pub fn ids(&self) -> std::collections::BTreeSet<String> {
        self.requests()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_string))
            .collect()
    }

    /// The distinct `webhook-id`s of requests answered with a 2xx.
    pub fn delivered_ids(&self) -> std::collections::BTreeSet<String> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .filter_map(|r| r.header("webhook-id").map(str::to_string))
            .collect()
    }

    /// Waits until `done` holds for the requests received so far; returns them.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        wait_for(timeout, what, || async {
            let requests = self.requests();
            if done(&requests) {
                Ok(requests)
            } else {
                Err(summarize(&requests))
            }
        })
        .await
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        self.wait_until(timeout, &format!("{n} webhook requests"), |r| r.len() >= n)
            .await
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One line per request, for timeout messages.
pub fn summarize(requests: &[Request]) -> String {
    let lines: Vec<String> = requests
        .iter()
        .map(|r| {
            format!(
                "{} {} id={:?} -> {}",
                r.method,
                r.path,
                r.header("webhook-id"),
                r.status
            )
        })
        .collect();
    format!("{} requests: [{}]", requests.len(), lines.join(", "))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Requests on one connection, one after the other, until the peer closes it.
async fn serve_connection<S: Stream>(mut stream: S, state: Arc<Mutex<State>>) {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                eprintln!("webhook receiver: bad request: {e}");
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
        };
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let status = {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            let status = state.script.pop_front().unwrap_or(state.default_status);
            state.requests.push(Request { status, ..request });
            status
        };
        let body = if (200..300).contains(&status) {
            "ok"
        } else {
            "no"
        };
        let answer = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
            reason(status),
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        if stream.write_all(answer.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads more bytes into `buffer`; false at end of stream.
async fn fill<S: Stream>(stream: &mut S, buffer: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buffer.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request from the connection; `None` if it closed between requests.
async fn read_request<S: Stream>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> Result<Option<Request>, String> {
    let head_end = loop {
        if let Some(at) = find(buffer, b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_REQUEST_BYTES {
            return Err("request head too large".into());
        }
        match fill(stream, buffer).await {
            Ok(true) => {}
            Ok(false) if buffer.is_empty() => return Ok(None),
            Ok(false) => return Err("connection closed inside a request head".into()),
            // A reset between requests is an ordinary end of the connection.
            Err(_) if buffer.is_empty() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    buffer.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    if method.is_empty() || path.is_empty() {
        return Err(format!("bad request line {request_line:?}"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(stream, buffer).await?
    } else {
        let length: usize = match header("content-length") {
            Some(v) => v.parse().map_err(|_| format!("bad content-length {v:?}"))?,
            None => 0,
        };
        if length > MAX_REQUEST_BYTES {
            return Err(format!("body of {length} bytes is too large"));
        }
        while buffer.len() < length {
            if !fill(stream, buffer).await.map_err(|e| e.to_string())? {
                return Err("connection closed inside a body".into());
            }
        }
        buffer.drain(..length).collect()
    };
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
        status: 0,
        received: Instant::now(),
    }))
}

/// A chunked body (trailers are read and ignored).
async fn read_chunked<S: Stream>(stream: &mut S, buffer: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = find(buffer, b"\r\n") {
                break at;
            }
            if !fill(stream, buffer).await.map_err(|e| e.to_string())? {
                return Err("connection closed inside a chunked body".into());
            }
        };
        let line = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        buffer.drain(..line_end + 2);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers up to the empty line.
            loop {
                let end = loop {
                    if let Some(at) = find(buffer, b"\r\n") {
                        break at;
                    }
                    if !fill(stream, buffer).await.map_err(|e| e.to_string())? {
                        return Err("connection closed inside chunk trailers".into());
                    }
                };
                buffer.drain(..end + 2);
                if end == 0 {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_REQUEST_BYTES {
            return Err("chunked body too large".into());
        }
        while buffer.len() < size + 2 {
            if !fill(stream, buffer).await.map_err(|e| e.to_string())? {
                return Err("connection closed inside a chunk".into());
            }
        }
        body.extend_from_slice(&buffer[..size]);
        buffer.drain(..size + 2);
    }
}
