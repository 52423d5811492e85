//! The client handle, its builder, and the request path with endpoint failover.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Default time limit of one unary request (the server's own limit is 10 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default time limit for opening a TCP connection to an endpoint.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest error body kept in an error message when it is not Shoal's JSON.
const MAX_ERROR_TEXT: usize = 512;

/// A handle to a Shoal cluster. Cheap to clone; clones share connections
/// and the endpoint in use.
///
/// Every request goes to one endpoint (the last one that answered). When it
/// cannot be reached, or answers `503` (not ready, no quorum), the request
/// moves on to the next endpoint in the list. Requests that could apply
/// twice (transactions, compare-and-set writes, lease grants, publishes,
/// log ingest) only move on when the connection was refused, i.e. when the
/// first endpoint surely never saw them. With a single endpoint every
/// request is sent exactly once.
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) endpoints: Vec<String>,
    current: AtomicUsize,
    timeout: Duration,
}

/// Options for a [`Client`]; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    timeout: Duration,
    connect_timeout: Duration,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    http1_only: bool,
}

impl ClientBuilder {
    /// Adds an endpoint, e.g. `http://127.0.0.1:7700` (the scheme may be left out).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Adds several endpoints, tried in this order.
    pub fn endpoints(mut self, endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// Time limit of one request to one endpoint (default 15 s). Streams
    /// (watch, subscribe) have no overall limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time limit for connecting to an endpoint (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sends this token (`Authorization: Bearer`) with every request, as
    /// nodes with ACLs on (`--acl`) require.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Speaks HTTP/1.1 over `https://` too, instead of HTTP/2 (offered by
    /// ALPN), so concurrent requests use connections of their own rather
    /// than streams of one.
    pub fn http1_only(mut self) -> Self {
        self.http1_only = true;
        self
    }

    /// Trusts the certificate authorities in this PEM (besides the
    /// system's) for `https://` endpoints, as nodes with certificates from
    /// `shoal tls` need.
    pub fn ca_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Checks the endpoints and builds the client. No connection is made yet.
    pub fn build(self) -> Result<Client> {
        if self.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect::<Result<Vec<_>>>()?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::InvalidEndpoint {
                    endpoint: endpoints.join(","),
                    reason: "the token has characters a header cannot carry".into(),
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut http = reqwest::Client::builder();
        if self.http1_only {
            http = http.http1_only();
        }
        if let Some(pem) = &self.ca_pem {
            let certificates =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| Error::InvalidEndpoint {
                    endpoint: endpoints.join(","),
                    reason: format!("the CA certificates are not PEM: {e}"),
                })?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http
            .default_headers(headers)
            .connect_timeout(self.connect_timeout)
            // The endpoints are cluster nodes: a system proxy would only be in the way.
            .no_proxy()
            .build()
            .map_err(|e| Error::InvalidEndpoint {
                endpoint: endpoints.join(","),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                endpoints,
                current: AtomicUsize::new(0),
                timeout: self.timeout,
            }),
        })
    }
}

fn normalize_endpoint(raw: &str) -> Result<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: raw.to_string(),
        reason: reason.to_string(),
    };
    let Some(rest) = with_scheme
        .strip_prefix("http://")
        .or_else(|| with_scheme.strip_prefix("https://"))
    else {
        return Err(invalid("only http:// and https:// endpoints are supported"));
    };
    if rest.is_empty() || rest.contains('/') {
        return Err(invalid("expected http://host:port or https://host:port"));
    }
    Ok(with_scheme)
}

/// How safe a request is to send again to another endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Applying it twice leaves the same state: fail over on any transport
    /// error or 503.
    Idempotent,
    /// Fail over only when the connection was refused.
    Once,
}

/// One HTTP request, kept so that it can be sent to another endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    method: Method,
    path: String,
    body: Option<(Vec<u8>, String)>,
    headers: Vec<(String, String)>,
    retry: Retry,
    /// `None` for streams.
    timeout: Option<Duration>,
}

impl Request {
    pub(crate) fn new(method: Method, path: String, retry: Retry) -> Request {
        Request {
            method,
            path,
            body: None,
            headers: Vec::new(),
            retry,
            timeout: None,
        }
    }

    pub(crate) fn get(path: String) -> Request {
        Request::new(Method::GET, path, Retry::Idempotent)
    }

    pub(crate) fn json(mut self, body: &Value) -> Request {
        self.body = Some((body.to_string().into_bytes(), "application/json".into()));
        self
    }

    pub(crate) fn body(mut self, bytes: Vec<u8>, content_type: impl Into<String>) -> Request {
        self.body = Some((bytes, content_type.into()));
        self
    }

    pub(crate) fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl Client {
    /// A client for these endpoints (e.g. `["http://127.0.0.1:7700"]`) with
    /// default timeouts.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Client> {
        Client::builder().endpoints(endpoints).build()
    }

    /// A builder to set endpoints and timeouts.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            endpoints: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            token: None,
            ca_pem: None,
            http1_only: false,
        }
    }

    /// The endpoints, normalized, in failover order.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The endpoint requests go to now (the last one that answered).
    pub fn current_endpoint(&self) -> &str {
        let index = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        &self.inner.endpoints[index]
    }

    /// Index of the endpoint requests start at.
    pub(crate) fn current_index(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len()
    }

    /// Sends a request and decodes the JSON answer.
    pub(crate) async fn call_json<T: DeserializeOwned>(
        &self,
        request: Request,
        what: &'static str,
    ) -> Result<T> {
        let mut request = request;
        request.timeout = Some(self.inner.timeout);
        let (response, index) = self.send_from(&request, self.current_index()).await?;
        read_json(response, &self.inner.endpoints[index], what).await
    }

    /// Like [`Client::send_from`] for a stream: waiting for the answer's
    /// headers is limited by the client's timeout (the body is not).
    pub(crate) async fn open_stream(
        &self,
        request: &Request,
        start: usize,
    ) -> Result<(reqwest::Response, usize)> {
        match tokio::time::timeout(self.inner.timeout, self.send_from(request, start)).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Timeout {
                endpoint: self.inner.endpoints[start % self.inner.endpoints.len()].clone(),
                what: format!(
                    "no answer to {} within {:?}",
                    request.path, self.inner.timeout
                ),
            }),
        }
    }

    /// Sends `request` starting at endpoint `start`, moving on through the
    /// list as `request.retry` allows; returns the answer and the index of
    /// the endpoint that gave it.
    pub(crate) async fn send_from(
        &self,
        request: &Request,
        start: usize,
    ) -> Result<(reqwest::Response, usize)> {
        let count = self.inner.endpoints.len();
        let mut last = None;
        for attempt in 0..count {
            let index = (start + attempt) % count;
            let endpoint = &self.inner.endpoints[index];
            let mut builder = self.inner.http.request(
                request.method.clone(),
                format!("{endpoint}{}", request.path),
            );
            if let Some(timeout) = request.timeout {
                builder = builder.timeout(timeout);
            }
            for (name, value) in &request.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            if let Some((bytes, content_type)) = &request.body {
                builder = builder
                    .header(reqwest::header::CONTENT_TYPE, content_type.as_str())
                    .body(bytes.clone());
            }
            match builder.send().await {
                Ok(response) if response.status().is_success() => {
                    self.inner.current.store(index, Ordering::Relaxed);
                    return Ok((response, index));
                }
                Ok(response) => {
                    let status = response.status();
                    let error = api_error(response, endpoint).await;
                    if status == StatusCode::SERVICE_UNAVAILABLE
                        && request.retry == Retry::Idempotent
                    {
                        tracing::debug!(%endpoint, %error, "endpoint unavailable; trying the next");
                        last = Some(error);
                        continue;
                    }
                    return Err(error);
                }
                Err(source) => {
                    let may_retry = source.is_connect() || request.retry == Retry::Idempotent;
                    let error = Error::Transport {
                        endpoint: endpoint.clone(),
                        source,
                    };
                    if may_retry {
                        tracing::debug!(%endpoint, %error, "endpoint failed; trying the next");
                        last = Some(error);
                        continue;
                    }
                    return Err(error);
                }
            }
        }
        Err(last.unwrap_or(Error::NoEndpoints))
    }
}

/// Reads a JSON body.
pub(crate) async fn read_json<T: DeserializeOwned>(
    response: reqwest::Response,
    endpoint: &str,
    what: &'static str,
) -> Result<T> {
    let bytes = response.bytes().await.map_err(|source| Error::Transport {
        endpoint: endpoint.to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::decode(what, e))
}

/// The error of a non-2xx answer, from Shoal's `{"error": {...}}` body when
/// it has one. The status alone is already the server's answer: if the body
/// breaks off, the error is still [`Error::Api`] with that status (code
/// `http_{status}`), not a transport error, so a definite refusal (`4xx`)
/// stays recognizable as one.
pub(crate) async fn api_error(response: reqwest::Response, endpoint: &str) -> Error {
    let status = response.status().as_u16();
    match response.bytes().await {
        Ok(bytes) => error_from_body(status, &bytes),
        Err(source) => Error::Api {
            status,
            code: format!("http_{status}"),
            message: format!("the error body from {endpoint} could not be read: {source}"),
            details: Map::new(),
        },
    }
}

/// Parses `{"error": {"code", "message", ...}}`; anything else becomes a
/// generic error carrying (the start of) the body.
pub(crate) fn error_from_body(status: u16, body: &[u8]) -> Error {
    let parsed: Option<Map<String, Value>> =
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|mut v| match v.get_mut("error").map(Value::take) {
                Some(Value::Object(map)) => Some(map),
                _ => None,
            });
    match parsed {
        Some(mut details) => {
            let code = match details.remove("code") {
                Some(Value::String(code)) => code,
                _ => format!("http_{status}"),
            };
            let message = match details.remove("message") {
                Some(Value::String(message)) => message,
                _ => String::new(),
            };
            if code == "compacted" {
                return Error::Compacted {
                    requested: 0,
                    compact_revision: details
                        .get("compact_revision")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    message,
                };
            }
            Error::Api {
                status,
                code,
                message,
                details,
            }
        }
        None => {
            let text = String::from_utf8_lossy(body);
            let mut end = text.len().min(MAX_ERROR_TEXT);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            Error::Api {
                status,
                code: format!("http_{status}"),
                message: text[..end].to_string(),
                details: Map::new(),
            }
        }
    }
}

/// Percent-encodes a key for a URL path: `/` stays, so `a/b` reads as the
/// server's `{*key}` wildcard expects.
pub(crate) fn encode_path(key: &str) -> String {
    encode(key, b"-._~/")
}

/// Percent-encodes a query parameter value.
pub(crate) fn encode_query(value: &str) -> String {
    encode(value, b"-._~")
}

fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Builds `?a=b&c=d` from the parameters that are set.
pub(crate) fn query(params: &[(&str, Option<String>)]) -> String {
    let mut out = String::new();
    for (name, value) in params {
        if let Some(value) = value {
            out.push(if out.is_empty() { '?' } else { '&' });
            out.push_str(name);
            out.push('=');
            out.push_str(&encode_query(value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7700/").ok().as_deref(),
            Some("http://127.0.0.1:7700")
        );
        assert_eq!(
            normalize_endpoint("https://x:1/").ok().as_deref(),
            Some("https://x:1")
        );
        assert!(normalize_endpoint("ftp://x:1").is_err());
        assert!(normalize_endpoint("http://x:1/api").is_err());
    }

    #[test]
    fn keys_and_queries_are_encoded() {
        assert_eq!(encode_path("a b/c?d"), "a%20b/c%3Fd");
        assert_eq!(
            query(&[("prefix", Some("a/b".into())), ("limit", None)]),
            "?prefix=a%2Fb"
        );
    }

    #[test]
    fn error_bodies_are_parsed() {
        let body = br#"{"error":{"code":"compare_failed","message":"no","current":null}}"#;
        match error_from_body(409, body) {
            Error::Api {
                status,
                code,
                details,
                ..
            } => {
                assert_eq!((status, code.as_str()), (409, "compare_failed"));
                assert!(details.contains_key("current"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let body = br#"{"error":{"code":"compacted","message":"m","compact_revision":7}}"#;
        assert!(matches!(
            error_from_body(410, body),
            Error::Compacted {
                compact_revision: 7,
                ..
            }
        ));
        assert_eq!(
            error_from_body(502, b"bad gateway").code(),
            Some("http_502")
        );
    }
}
