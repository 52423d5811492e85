//! The node under test: a [`shoal_testkit::NodeProcess`] (which starts,
//! kills and restarts the `shoal` process) with HTTP helpers for the API.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use shoal_testkit::{NodeProcess, Ports};

use crate::http::{encode_key, num, Reply};
use crate::sse::WatchStream;

pub use shoal_testkit::{tmpfs_root, Settings};

/// Default timeout of one HTTP request made by the helpers.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Unwraps a test-support result, panicking with the whole error chain.
pub(crate) fn or_panic<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Path of something `./scripts/setup` installs; see [`shoal_testkit::setup_tool`].
pub fn setup_tool(var: &str, relative: &str) -> PathBuf {
    or_panic(shoal_testkit::setup_tool(var, relative))
}

/// Path of the `shoal` binary under test; see [`shoal_testkit::shoal_bin`].
pub fn shoal_bin() -> PathBuf {
    or_panic(shoal_testkit::shoal_bin())
}

/// A local port that is free for TCP and UDP and never handed out twice;
/// see [`shoal_testkit::free_port`].
pub fn free_port() -> u16 {
    or_panic(shoal_testkit::free_port())
}

/// The libfaketime library; panics with what to install if it is missing.
pub fn libfaketime() -> PathBuf {
    or_panic(shoal_testkit::libfaketime())
}

/// Environment that runs a process with its wall clock `seconds` off; see
/// [`shoal_testkit::clock_offset_env`].
pub fn clock_offset_env(seconds: i64) -> Vec<(String, String)> {
    or_panic(shoal_testkit::clock_offset_env(seconds))
}

/// Options for starting a node; see [`Node::builder`].
#[derive(Debug)]
pub struct NodeBuilder(pub(crate) shoal_testkit::NodeBuilder);

impl NodeBuilder {
    /// `serve` (the default) or `dev`.
    pub fn subcommand(self, subcommand: &str) -> Self {
        NodeBuilder(self.0.subcommand(subcommand))
    }

    /// Extra arguments appended to the command line, e.g. `["--snapshot-every", "20"]`.
    pub fn args(self, args: &[&str]) -> Self {
        NodeBuilder(self.0.args(args))
    }

    /// An extra environment variable for the node process.
    pub fn env(self, name: &str, value: &str) -> Self {
        NodeBuilder(self.0.env(name, value))
    }

    pub fn settings(self, settings: Settings) -> Self {
        NodeBuilder(self.0.settings(settings))
    }

    /// Fixed API, RPC and gossip ports (from [`free_port`]) instead of fresh
    /// ones: a cluster hands every node the gossip addresses of all the others
    /// before any of them starts.
    pub fn ports(self, api: u16, rpc: u16, gossip: u16) -> Self {
        NodeBuilder(self.0.ports(Ports { api, rpc, gossip }))
    }

    /// A name for the node in failure output, e.g. `"node 2"`.
    pub fn label(self, label: &str) -> Self {
        NodeBuilder(self.0.label(label))
    }

    /// Turns the OpenTelemetry receivers on, on two fresh ports
    /// (`--otlp-grpc 127.0.0.1:P1 --otlp-http 127.0.0.1:P2`), exposed as
    /// [`Node::otlp_grpc_port`] and [`Node::otlp_http_port`]. Without it a
    /// test node runs with `SHOAL_OTLP_GRPC=off` and `SHOAL_OTLP_HTTP=off`,
    /// so parallel tests never compete for the default ports 4317 and 4318.
    pub fn otlp(self) -> Self {
        NodeBuilder(self.0.otlp())
    }

    /// Creates the node's temporary directory (data directory and logs)
    /// under `root` instead of the system's temporary directory, e.g. under
    /// [`tmpfs_root`] for a node whose fsyncs should cost nothing.
    pub fn temp_root(self, root: &Path) -> Self {
        NodeBuilder(self.0.temp_root(root))
    }

    /// The node serves TLS with a certificate this CA (PEM) signed (the
    /// caller passes `--tls-cert` and `--tls-key`): [`Node::endpoint`] is
    /// `https://` and the node's clients trust the CA.
    pub fn https(self, ca_pem: &[u8]) -> Self {
        NodeBuilder(self.0.https(ca_pem))
    }

    /// Starts the process and waits until `/ready` answers 200.
    pub async fn start(self) -> Node {
        let mut node = self.start_no_wait();
        node.wait_ready().await;
        node
    }

    /// Starts the process without waiting for it to become ready (a cluster
    /// node is not ready before the cluster has formed). Use
    /// [`Node::wait_ready`] to wait.
    pub fn start_no_wait(self) -> Node {
        Node::from_process(or_panic(self.0.spawn()))
    }
}

/// A `shoal_client::Client` with `endpoint` as its only endpoint (so every
/// request goes to that node, once) and the helpers' request timeout;
/// trusting `ca_pem` for an `https://` endpoint.
pub(crate) fn api_client(endpoint: &str, ca_pem: Option<&[u8]>) -> shoal_client::Client {
    let mut builder = shoal_client::Client::builder()
        .endpoint(endpoint)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    if let Some(pem) = ca_pem {
        builder = builder.ca_certificates_pem(pem);
    }
    builder
        .build()
        .unwrap_or_else(|e| panic!("cannot build a client for {endpoint}: {e}"))
}

/// A running `shoal` process with its own data directory and ports. Dropping
/// it kills the process and removes the directory; if the test is panicking,
/// the end of the node's log is printed first. The process methods of
/// [`NodeProcess`] that cannot fail are reachable through `Deref`; the ones
/// here panic with a clear message instead of returning an error.
pub struct Node {
    process: NodeProcess,
    pub api_port: u16,
    pub rpc_port: u16,
    pub gossip_port: u16,
    /// The OTLP/gRPC and OTLP/HTTP receivers' ports, when started with
    /// [`NodeBuilder::otlp`] (otherwise the receivers are off).
    pub otlp_grpc_port: Option<u16>,
    pub otlp_http_port: Option<u16>,
    client: reqwest::Client,
    api: shoal_client::Client,
}

impl Deref for Node {
    type Target = NodeProcess;

    fn deref(&self) -> &NodeProcess {
        &self.process
    }
}

impl DerefMut for Node {
    fn deref_mut(&mut self) -> &mut NodeProcess {
        &mut self.process
    }
}

impl Node {
    /// `shoal serve` with flags and no extra arguments, ready.
    pub async fn start() -> Node {
        Node::builder().start().await
    }

    /// `shoal serve` with extra arguments, ready.
    pub async fn start_with(args: &[&str]) -> Node {
        Node::builder().args(args).start().await
    }

    pub fn builder() -> NodeBuilder {
        NodeBuilder(NodeProcess::builder())
    }

    /// Wraps a started process.
    pub fn from_process(process: NodeProcess) -> Node {
        let ports = process.ports();
        Node {
            api_port: ports.api,
            rpc_port: ports.rpc,
            gossip_port: ports.gossip,
            otlp_grpc_port: process.otlp_grpc_port(),
            otlp_http_port: process.otlp_http_port(),
            api: api_client(&process.api_url(), process.tls_ca_pem()),
            client: shoal_testkit::http_client(process.tls_ca_pem())
                .expect("cannot build an HTTP client"),
            process,
        }
    }

    /// `http://127.0.0.1:PORT` of the OTLP/HTTP receiver; panics unless the
    /// node was started with [`NodeBuilder::otlp`].
    pub fn otlp_http_endpoint(&self) -> String {
        let port = self
            .otlp_http_port
            .unwrap_or_else(|| panic!("{} was started without .otlp()", self.label()));
        format!("http://127.0.0.1:{port}")
    }

    /// `127.0.0.1:PORT` of the OTLP/gRPC receiver; panics unless the node
    /// was started with [`NodeBuilder::otlp`].
    pub fn otlp_grpc_addr(&self) -> String {
        let port = self
            .otlp_grpc_port
            .unwrap_or_else(|| panic!("{} was started without .otlp()", self.label()));
        format!("127.0.0.1:{port}")
    }

    /// `http://127.0.0.1:PORT`, the API base URL.
    pub fn endpoint(&self) -> String {
        self.process.api_url()
    }

    /// The raw HTTP client, for tests of the HTTP API itself.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Shoal's Rust client with this node as its only endpoint (no
    /// failover), for ordinary KV, lease and watch operations whose HTTP
    /// form is not what a test checks.
    pub fn api(&self) -> &shoal_client::Client {
        &self.api
    }

    /// Polls `GET /ready` every 50 ms until it answers 200 (30 s at most).
    /// Panics with the log's tail if the process exits or never gets ready.
    pub async fn wait_ready(&mut self) {
        or_panic(self.process.wait_ready().await);
    }

    /// [`Node::wait_ready`] with another time limit.
    pub async fn wait_ready_within(&mut self, timeout: Duration) {
        or_panic(self.process.wait_ready_within(timeout).await);
    }

    /// Starts the process again with the same data directory, ports and
    /// arguments (killing it first if it still runs) and waits until ready.
    pub async fn restart(&mut self) {
        self.restart_no_wait();
        self.wait_ready().await;
    }

    /// Like [`Node::restart`] without waiting for `/ready`: a cluster node
    /// may not be ready until enough of its peers are back.
    pub fn restart_no_wait(&mut self) {
        or_panic(self.process.restart_no_wait());
        // Fresh connection pools: the old connections died with the process.
        self.client = shoal_testkit::http_client(self.process.tls_ca_pem())
            .expect("cannot build an HTTP client");
        self.api = api_client(&self.process.api_url(), self.process.tls_ca_pem());
    }

    /// Deletes the data directory of a stopped node (a disk replaced, or
    /// wiped by mistake): the next start begins with nothing. The logs,
    /// kept beside the data directory, stay.
    pub fn wipe_data_dir(&mut self) {
        or_panic(self.process.wipe_data_dir());
    }

    /// Sends a signal (`libc::SIGTERM`, ...) to the running process.
    pub fn signal(&self, signal: libc::c_int) {
        or_panic(self.process.signal(signal));
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers
    /// nothing, like a hung machine.
    pub fn pause(&mut self) {
        or_panic(self.process.pause());
    }

    /// Continues a paused process (SIGCONT).
    pub fn resume(&mut self) {
        or_panic(self.process.resume());
    }

    /// Sends SIGTERM (continuing the process first if it is paused) and waits
    /// up to `timeout` for it to exit; panics with the log's tail if it does
    /// not. Returns the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        or_panic(self.process.terminate(timeout).await)
    }

    /// Waits up to `timeout` for the process to exit by itself (after a
    /// SIGTERM, or after leaving the cluster) and reaps it; panics with the
    /// log's tail if it is still running then. Returns the exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        or_panic(self.process.wait_exit(timeout).await)
    }

    // ----- raw requests -------------------------------------------------

    /// A request to `path` (which may include a query string) with the
    /// default timeout.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .timeout(REQUEST_TIMEOUT)
    }

    /// Sends a request and reads the whole reply; `Err` describes a failure
    /// to connect, a timeout, or a broken reply (for nodes that may be down).
    pub async fn try_send(&self, request: RequestBuilder) -> Result<Reply, String> {
        let response = request.send().await.map_err(|e| describe_error(&e))?;
        Reply::try_read(response)
            .await
            .map_err(|e| describe_error(&e))
    }

    /// `METHOD path` with a time limit, not panicking if the node does not
    /// answer.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<Reply, String> {
        self.try_send(self.client.request(method, self.url(path)).timeout(timeout))
            .await
    }

    /// Sends a request and reads the whole reply.
    pub async fn send(&self, request: RequestBuilder) -> Reply {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTP request failed: {e}\n{}", self.log_tail(20)));
        Reply::read(response).await
    }

    /// `GET path` (path may include a query string).
    pub async fn get_path(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// `POST path` with a CloudEvent in binary mode: its type and id as
    /// `ce-` headers, its JSON data as the body.
    pub async fn post_cloud_event(&self, path: &str, kind: &str, id: &str, data: &Value) -> Reply {
        let request = self
            .request(Method::POST, path)
            .header("ce-type", kind)
            .header("ce-id", id)
            .header("content-type", "application/json")
            .body(data.to_string());
        self.send(request).await
    }

    // ----- key/value ----------------------------------------------------

    fn kv_path(key: &str) -> String {
        format!("/v1/kv/{}", encode_key(key))
    }

    /// `PUT /v1/kv/{key}` with a time limit; `Err` if there is no reply.
    pub async fn try_put(
        &self,
        key: &str,
        value: &[u8],
        timeout: Duration,
    ) -> Result<Reply, String> {
        let request = self
            .client
            .put(self.url(&Self::kv_path(key)))
            .timeout(timeout)
            .body(value.to_vec());
        self.try_send(request).await
    }

    /// `GET /v1/kv/{key}` with query parameters and a time limit; `Err` if
    /// there is no reply.
    pub async fn try_get(
        &self,
        key: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Reply, String> {
        let request = self
            .client
            .get(self.url(&Self::kv_path(key)))
            .query(query)
            .timeout(timeout);
        self.try_send(request).await
    }

    /// `PUT /v1/kv/{key}` with query parameters; returns the reply as is.
    pub async fn put_with(&self, key: &str, value: &[u8], query: &[(&str, &str)]) -> Reply {
        let request = self
            .request(Method::PUT, &Self::kv_path(key))
            .query(query)
            .body(value.to_vec());
        self.send(request).await
    }

    /// `PUT /v1/kv/{key}`, asserting 200; returns the body.
    pub async fn put(&self, key: &str, value: &[u8]) -> Value {
        let reply = self.put_with(key, value, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "PUT {key:?}: {}",
            reply.describe()
        );
        reply.body
    }

    /// `PUT`, returning the new revision.
    pub async fn put_rev(&self, key: &str, value: &[u8]) -> u64 {
        num(&self.put(key, value).await, "/revision")
    }

    /// `GET /v1/kv/{key}` with query parameters.
    pub async fn get_with(&self, key: &str, query: &[(&str, &str)]) -> Reply {
        self.send(self.request(Method::GET, &Self::kv_path(key)).query(query))
            .await
    }

    /// `GET /v1/kv/{key}`: status and body.
    pub async fn get(&self, key: &str) -> (StatusCode, Value) {
        let reply = self.get_with(key, &[]).await;
        (reply.status, reply.body)
    }

    /// The key's `kv` object, asserting that it exists.
    pub async fn get_kv(&self, key: &str) -> Value {
        let reply = self.get_with(key, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET {key:?}: {}",
            reply.describe()
        );
        reply.body["kv"].clone()
    }

    /// `DELETE /v1/kv/{key}` with query parameters.
    pub async fn delete_with(&self, key: &str, query: &[(&str, &str)]) -> Reply {
        self.send(
            self.request(Method::DELETE, &Self::kv_path(key))
                .query(query),
        )
        .await
    }

    /// `DELETE /v1/kv/{key}`, asserting 200; returns the body.
    pub async fn delete(&self, key: &str) -> Value {
        let reply = self.delete_with(key, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "DELETE {key:?}: {}",
            reply.describe()
        );
        reply.body
    }

    /// `GET /v1/kv` with query parameters, asserting 200.
    pub async fn list(&self, query: &[(&str, &str)]) -> Reply {
        let reply = self
            .send(self.request(Method::GET, "/v1/kv").query(query))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "list {query:?}: {}",
            reply.describe()
        );
        reply
    }

    /// Every key/value object under `prefix`, following pagination.
    pub async fn list_all(&self, prefix: &str) -> Vec<Value> {
        let mut kvs = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10_000 {
            let mut query = vec![
                ("prefix", prefix.to_string()),
                ("limit", "1000".to_string()),
            ];
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let page = self.list(&query).await.body;
            kvs.extend(
                page["kvs"]
                    .as_array()
                    .expect("kvs is not an array")
                    .iter()
                    .cloned(),
            );
            if page["more"] != Value::Bool(true) {
                return kvs;
            }
            after = Some(
                page["next_after"]
                    .as_str()
                    .expect("more is true but next_after is not a string")
                    .to_string(),
            );
        }
        panic!("list_all: pagination did not end");
    }

    /// `POST /v1/txn`.
    pub async fn txn(&self, body: &Value) -> Reply {
        self.post_json("/v1/txn", body).await
    }

    // ----- node ---------------------------------------------------------

    /// `GET /v1/status`, asserting 200.
    pub async fn status(&self) -> Value {
        self.get_path("/v1/status").await.ok()
    }

    /// The current store revision, from `/v1/status`.
    pub async fn revision(&self) -> u64 {
        num(&self.status().await, "/revision")
    }

    // ----- leases -------------------------------------------------------

    /// Grants a lease, returning its id.
    pub async fn grant_lease(&self, ttl_seconds: u64) -> u64 {
        let lease = self
            .api
            .lease_grant(ttl_seconds)
            .await
            .unwrap_or_else(|e| panic!("grant a {ttl_seconds} s lease: {e}"));
        assert_eq!(lease.ttl_seconds, ttl_seconds, "grant: {lease:?}");
        lease.id
    }

    pub async fn keepalive(&self, lease: u64) -> Reply {
        self.send(self.request(Method::POST, &format!("/v1/leases/{lease}/keepalive")))
            .await
    }

    // ----- watch --------------------------------------------------------

    /// `GET /v1/watch` (SSE) without reading the stream: for error replies.
    pub async fn watch_reply(&self, query: &[(&str, &str)]) -> Reply {
        self.send(self.request(Method::GET, "/v1/watch").query(query))
            .await
    }

    /// Opens an SSE watch, asserting 200 and `text/event-stream`. With
    /// `last_event_id`, sends `Last-Event-ID` as a reconnecting client does.
    pub async fn watch(&self, query: &[(&str, &str)], last_event_id: Option<u64>) -> WatchStream {
        let mut request = self
            .client
            .get(self.url("/v1/watch"))
            .query(query)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        open_event_stream(request, &format!("watch {query:?}")).await
    }

    /// `GET /v1/watch/poll` with query parameters; the HTTP timeout is the
    /// server-side `timeout_ms` (if given) plus 10 s.
    pub async fn poll(&self, query: &[(&str, &str)]) -> Reply {
        let server_ms: u64 = query
            .iter()
            .find(|(k, _)| *k == "timeout_ms")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(30_000);
        let request = self
            .request(Method::GET, "/v1/watch/poll")
            .query(query)
            .timeout(Duration::from_millis(server_ms) + Duration::from_secs(10));
        self.send(request).await
    }
}

/// A reqwest error with its causes (the top-level message alone is often
/// just "error sending request").
fn describe_error(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        text.push_str(" (timed out)");
    }
    text
}

/// Sends a request for a Server-Sent Events stream and opens it, asserting
/// 200 and `text/event-stream`; `label` names the stream in failures.
pub async fn open_event_stream(request: RequestBuilder, label: &str) -> WatchStream {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
        .await
        .unwrap_or_else(|_| panic!("{label}: no response headers in time"))
        .unwrap_or_else(|e| panic!("{label}: request failed: {e}"));
    if response.status() != StatusCode::OK {
        let reply = Reply::read(response).await;
        panic!("{label}: expected 200, got {}", reply.describe());
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{label}: content-type is {content_type:?}"
    );
    WatchStream::new(response)
}
