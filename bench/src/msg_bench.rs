//! msg-bench: Shoal messaging against NATS core (Debian's `nats-server`), on
//! loopback, same load, Rust clients for both: Shoal over WebSocket (publish
//! stream `GET /v1/publish/ws?topic=T`, raw subscriber `GET
//! /v1/subscribe/ws?format=raw`), NATS through `async-nats`.
//!
//! Per payload size: one publisher to one subscriber as fast as the publisher's
//! socket takes it (delivered msgs/s and loss), the same to ten subscribers,
//! and end-to-end latency at a paced rate; first on one server, then across a
//! three-node cluster (publisher on node A, subscribers on node B). Every
//! payload starts with its sequence number and the time it was sent, so the
//! subscribers count loss and duplicates and measure latency themselves.
//! The `shoal-tls`, `shoal-acl` and `shoal-tls-acl` targets run the same
//! with TLS (API over wss, mutual TLS between nodes) and ACLs (clients with
//! a token of their own) on, for the side-by-side table against plain Shoal.
//! Over TLS the Shoal clients connect as the nodes do to each other
//! ([`shoal_tls::connect`], with its buffers).
//!
//! See bench/README.md.

// Shared with watch-bench and kv-bench, which use more of them.
#[path = "acl.rs"]
mod acl;
#[allow(dead_code)]
#[path = "node.rs"]
mod node;
#[path = "msg_report.rs"]
mod report;
mod rounds;
#[path = "runner.rs"]
mod runner;
#[allow(dead_code)]
#[path = "stats.rs"]
mod stats;
mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use shoal_testkit::{free_port, Process};

use crate::node::{spawn_logged, Node};
use crate::report::{
    command_output, load_average, locked_versions, machine, ms_short, print_report,
    print_security_report, size_label, thousands, Row,
};
use crate::stats::{summarize, Summary};

#[derive(Parser, Debug)]
#[command(
    about = "Shoal messaging (WebSocket) vs NATS core: throughput, fan-out, latency; one node and three"
)]
struct Args {
    /// shoal binary [default: $SHOAL_BIN, else $CARGO_TARGET_DIR/release/shoal, else .../debug/shoal]
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// nats-server binary.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_bin: PathBuf,
    /// Payload sizes in bytes (at least 16: sequence number and send time).
    #[arg(long, value_delimiter = ',', default_value = "128,4096")]
    payloads: Vec<usize>,
    /// Messages per throughput and fan-out run, one figure per payload size (same order).
    #[arg(long, value_delimiter = ',', default_value = "200000,50000")]
    messages: Vec<u64>,
    /// Rounds: in each, every system is started anew, one system later in
    /// the order than in the round before, and runs each stream and fan-out
    /// row once (latency rows in the first round only); the table shows the
    /// run with the median delivered rate (all rates are in the details).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Subscribers in the fan-out runs.
    #[arg(long, default_value_t = 10)]
    fanout: usize,
    /// Publish rate of the latency runs, messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of each latency run, seconds.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Per-subscriber buffer, in messages: Shoal's `buffer=` (server side,
    /// drop-oldest) and async-nats' subscription capacity (client side).
    #[arg(long, default_value_t = 65536)]
    buffer: u64,
    /// Systems to measure, comma-separated: nats, shoal, and with security
    /// on: nats-tls (TLS to the clients, mutual TLS between servers, same
    /// certificates), shoal-tls (API over TLS, wss for the clients, mutual
    /// TLS between nodes; certificates from `shoal tls`), shoal-acl (--acl;
    /// the clients' token has a policy of its own), shoal-tls-acl (both).
    #[arg(long, value_delimiter = ',', default_value = "nats,shoal")]
    targets: Vec<String>,
    /// Topologies: `single` (one server) and/or `cluster` (three; publisher on A, subscribers on B).
    #[arg(long, value_delimiter = ',', default_value = "single,cluster")]
    topologies: Vec<String>,
    /// Scenarios: `throughput` (1 to 1), `fanout` (1 to --fanout), `latency` (paced 1 to 1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,fanout,latency"
    )]
    scenarios: Vec<String>,
    /// After the last publish, subscribers stop once nothing arrived for this long (ms) ...
    #[arg(long, default_value_t = 2000)]
    idle_ms: u64,
    /// ... or at the latest this many seconds after the last publish.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
}

// ---------------------------------------------------------------------------
// Payloads: [sequence number u64 LE][send time, ns since BASE, u64 LE][zeros]

/// Sequence number of the probes sent before a run until every subscriber has one.
const PROBE: u64 = u64::MAX;
const HEADER: usize = 16;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size.max(HEADER)];
    data[..8].copy_from_slice(&seq.to_le_bytes());
    data[8..16].copy_from_slice(&now_ns().to_le_bytes());
    data
}

fn decode(data: &[u8]) -> Option<(u64, u64)> {
    if data.len() < HEADER {
        return None;
    }
    let seq = u64::from_le_bytes(data[..8].try_into().ok()?);
    let sent = u64::from_le_bytes(data[8..16].try_into().ok()?);
    Some((seq, sent))
}

// ---------------------------------------------------------------------------
// The systems under test

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    /// NATS core; with `tls`, TLS to the clients and between the servers.
    Nats {
        tls: bool,
    },
    Shoal(Security),
}

/// What a Shoal deployment has switched on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Security {
    tls: bool,
    acl: bool,
}

/// NATS as the comparison with Shoal runs it.
const NATS: System = System::Nats { tls: false };

/// Shoal as the comparison with NATS runs it.
const SHOAL: System = System::Shoal(Security {
    tls: false,
    acl: false,
});

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Nats { tls: false } => "NATS",
            System::Nats { tls: true } => "NATS TLS",
            System::Shoal(Security { tls, acl }) => match (tls, acl) {
                (false, false) => "Shoal",
                (true, false) => "Shoal TLS",
                (false, true) => "Shoal ACL",
                (true, true) => "Shoal TLS+ACL",
            },
        }
    }

    fn parse(target: &str) -> anyhow::Result<System> {
        let shoal = |tls, acl| System::Shoal(Security { tls, acl });
        Ok(match target {
            "nats" => NATS,
            "nats-tls" => System::Nats { tls: true },
            "shoal" => SHOAL,
            "shoal-tls" => shoal(true, false),
            "shoal-acl" => shoal(false, true),
            "shoal-tls-acl" => shoal(true, true),
            other => bail!(
                "unknown target {other:?} (nats, nats-tls, shoal, shoal-tls, shoal-acl or shoal-tls-acl)"
            ),
        })
    }

    /// The same system with security off: what a variant is set beside.
    fn plain(self) -> System {
        match self {
            System::Nats { .. } => NATS,
            System::Shoal(_) => SHOAL,
        }
    }
}

/// A nats-server process, killed (SIGKILL) when dropped.
struct NatsServer {
    process: Process,
    pid: u32,
    url: String,
    monitor: String,
}

/// The servers are configured by file: on 127.0.0.1, with a monitoring
/// port, and with `n` > 1 routes to each other. With `certs` (the directory
/// [`tls::tls_args`] filled) they take TLS from clients and speak mutual
/// TLS to each other (route TLS has no command-line flags).
fn start_nats(
    bin: &Path,
    n: usize,
    dir: &Path,
    certs: Option<&Path>,
) -> anyhow::Result<Vec<NatsServer>> {
    let ports: Vec<(u16, u16, u16)> = (0..n)
        .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let tls = match certs {
        Some(certs) => {
            let file = |name: &str| certs.join(name).display().to_string();
            format!(
                "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\" }}\n",
                file("node.pem"),
                file("node-key.pem"),
                file("ca.pem")
            )
        }
        None => String::new(),
    };
    let mut servers = Vec::new();
    for (i, (client, monitor, cluster)) in ports.iter().enumerate() {
        let mut config = format!(
            "listen: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
             server_name: \"n{i}\"\n{tls}"
        );
        if n > 1 {
            let routes: Vec<String> = ports
                .iter()
                .filter(|p| p.2 != *cluster)
                .map(|p| format!("\"nats://127.0.0.1:{}\"", p.2))
                .collect();
            config.push_str(&format!(
                "cluster {{\nname: \"msg-bench-{}\"\nlisten: \"127.0.0.1:{cluster}\"\n\
                 routes: [{}]\n{tls}}}\n",
                std::process::id(),
                routes.join(", ")
            ));
        }
        let path = dir.join(format!("nats{i}.conf"));
        std::fs::write(&path, config)?;
        let mut command = Command::new(bin);
        command.arg("-c").arg(&path);
        let process = spawn_logged(&mut command, &dir.join(format!("nats{i}.log")))?;
        let scheme = if certs.is_some() { "tls" } else { "nats" };
        servers.push(NatsServer {
            pid: process.pid().context("nats-server is not running")?,
            process,
            url: format!("{scheme}://127.0.0.1:{client}"),
            monitor: format!("http://127.0.0.1:{monitor}"),
        });
    }
    Ok(servers)
}

/// Every server answers its monitoring port and, in a cluster, has a route to every other.
async fn wait_nats(
    servers: &mut [NatsServer],
    http: &reqwest::Client,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let want_routes = servers.len() as u64 - 1;
    for server in servers.iter_mut() {
        loop {
            if let Some(status) = server.process.try_exit()? {
                bail!("nats-server {} exited ({status})", server.url);
            }
            let routes = async {
                let routez: serde_json::Value = http
                    .get(format!("{}/routez", server.monitor))
                    .send()
                    .await?
                    .json()
                    .await?;
                anyhow::Ok(routez["num_routes"].as_u64().unwrap_or(0))
            };
            if matches!(routes.await, Ok(r) if r >= want_routes) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server {} not ready (routes) within {timeout:?}",
                    server.url
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

enum Servers {
    Nats(Vec<NatsServer>),
    Shoal(Vec<Node>),
}

/// How clients reach a Shoal deployment: TLS and a token when it has them.
#[derive(Clone, Default)]
struct Access {
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<String>,
}

/// One running deployment: one server, or three clustered.
struct Deployment {
    system: System,
    servers: Servers,
    access: Access,
    /// For Shoal's HTTP API (trusting its CA, sending its token).
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Deployment {
    async fn start(
        system: System,
        n: usize,
        args: &Args,
        shoal_bin: &Path,
        http: &reqwest::Client,
    ) -> anyhow::Result<Deployment> {
        let dir = tempfile::Builder::new().prefix("msg-bench-").tempdir()?;
        let mut access = Access::default();
        let mut shoal_http = http.clone();
        let servers = match system {
            System::Nats { tls } => {
                let certs = if tls {
                    tls::tls_args(shoal_bin, dir.path(), true)?;
                    access.tls = Some(tls::client_config(dir.path())?);
                    Some(dir.path().join("certs"))
                } else {
                    None
                };
                let mut servers = start_nats(&args.nats_bin, n, dir.path(), certs.as_deref())?;
                wait_nats(&mut servers, http, Duration::from_secs(30)).await?;
                Servers::Nats(servers)
            }
            System::Shoal(security) => {
                let mut extra = vec!["--log-level".to_string(), "warn".to_string()];
                if security.acl {
                    extra.extend(acl::acl_args(dir.path())?);
                }
                let ca_pem = if security.tls {
                    let (tls_args, ca_pem) = tls::tls_args(shoal_bin, dir.path(), true)?;
                    extra.extend(tls_args);
                    access.tls = Some(tls::client_config(dir.path())?);
                    Some(ca_pem)
                } else {
                    None
                };
                let mut nodes = if n == 1 {
                    vec![Node::spawn_with(shoal_bin, &extra, ca_pem.as_deref())?]
                } else {
                    Node::spawn_cluster(shoal_bin, n, &extra, ca_pem.as_deref())?
                };
                for node in nodes.iter_mut() {
                    node.wait_ready(Duration::from_secs(60))
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!("shoal node {}: {e:#}\n{}", node.api, node.log_tail(20))
                        })?;
                }
                if security.acl {
                    // A service's token: publish and subscribe under bench.,
                    // list topics (to see interest), read its config.
                    let rules = serde_json::json!([
                        {"resource": "topic", "match": "bench.>", "access": "write"},
                        {"resource": "topic", "match": ">", "access": "read"},
                        {"resource": "kv", "match": "config/msg-bench/", "access": "read"},
                    ]);
                    access.token = Some(
                        acl::issue_token(&nodes[0].api, "msg-bench", rules, ca_pem.as_deref())
                            .await?,
                    );
                }
                shoal_http = acl::api_client(
                    ca_pem.as_deref(),
                    access.token.as_deref(),
                    Duration::from_secs(5),
                )?;
                // Every node knows the token (ACLs reach them through Raft).
                for node in &nodes {
                    wait_token(&shoal_http, &node.api).await?;
                }
                Servers::Shoal(nodes)
            }
        };
        Ok(Deployment {
            system,
            servers,
            access,
            http: shoal_http,
            _dir: dir,
        })
    }

    fn len(&self) -> usize {
        match &self.servers {
            Servers::Nats(s) => s.len(),
            Servers::Shoal(n) => n.len(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match &self.servers {
            Servers::Nats(s) => s.iter().map(|s| s.pid).collect(),
            Servers::Shoal(n) => n.iter().map(|n| n.pid).collect(),
        }
    }

    /// NATS client URL or Shoal API base URL of server `i`.
    fn endpoint(&self, i: usize) -> String {
        match &self.servers {
            Servers::Nats(s) => s[i].url.clone(),
            Servers::Shoal(n) => n[i].api.clone(),
        }
    }

    /// WARN/ERROR lines the Shoal nodes logged.
    fn warnings(&self) -> Vec<String> {
        match &self.servers {
            Servers::Nats(_) => Vec::new(),
            Servers::Shoal(nodes) => nodes.iter().flat_map(|n| n.log_warnings()).collect(),
        }
    }
}

/// Waits until `GET /v1/topics` on `api` answers 200 with the client's token.
async fn wait_token(http: &reqwest::Client, api: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let status = http
            .get(format!("{api}/v1/topics"))
            .send()
            .await
            .map(|r| r.status());
        match status {
            Ok(status) if status.is_success() => return Ok(()),
            _ if started.elapsed() > Duration::from_secs(30) => {
                bail!("{api} did not take the bench's token within 30 s: {status:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Clients

/// A client's connection: plain TCP, or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// The WebSocket URL of `path` on a Shoal API base URL (http or https).
fn ws_url(endpoint: &str, path: &str) -> String {
    let base = match endpoint.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => endpoint.replacen("http://", "ws://", 1),
    };
    format!("{base}{path}")
}

async fn ws_connect(url: String, access: &Access) -> anyhow::Result<Ws> {
    let mut request = url.as_str().into_client_request()?;
    if let Some(token) = &access.token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let host = request.uri().host().context("no host")?.to_string();
    let port = request.uri().port_u16().context("no port")?;
    let connect = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        // TCP_NODELAY on the client side, as async-nats sets it.
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &access.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())?;
                let connector = shoal_tls::TlsConnector::from(config.clone());
                Box::new(shoal_tls::connect(&connector, name, tcp).await?)
            }
        };
        let (ws, _) = tokio_tungstenite::client_async(request, io).await?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .with_context(|| format!("connecting {url}: timed out"))?
        .with_context(|| format!("connecting {url}"))
}

/// Slow-consumer and disconnect events reported by async-nats.
#[derive(Default)]
struct NatsEvents {
    slow_consumer: AtomicU64,
    disconnected: AtomicU64,
}

async fn nats_connect(
    url: &str,
    capacity: usize,
    events: Arc<NatsEvents>,
    access: &Access,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(tls) = &access.tls {
        // The same client configuration (roots, suites) Shoal's clients use.
        options = options.require_tls(true).tls_client_config((**tls).clone());
    }
    let client = options
        .subscription_capacity(capacity)
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(_) => {
                        events.slow_consumer.fetch_add(1, Ordering::Relaxed)
                    }
                    async_nats::Event::Disconnected => {
                        events.disconnected.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => 0,
                };
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting {url}"))?;
    Ok(client)
}

enum Publisher {
    Nats(async_nats::Client, async_nats::Subject),
    Shoal(Box<Ws>),
}

impl Publisher {
    async fn connect(
        dep: &Deployment,
        node: usize,
        topic: &str,
        events: Arc<NatsEvents>,
    ) -> anyhow::Result<Publisher> {
        let endpoint = dep.endpoint(node);
        Ok(match dep.system {
            System::Nats { .. } => Publisher::Nats(
                nats_connect(&endpoint, 1024, events, &dep.access).await?,
                topic.to_string().into(),
            ),
            System::Shoal(_) => {
                let url = ws_url(&endpoint, &format!("/v1/publish/ws?topic={topic}"));
                Publisher::Shoal(Box::new(ws_connect(url, &dep.access).await?))
            }
        })
    }

    /// Queue one message; waits only while the connection's buffers are full.
    async fn feed(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(client, subject) => {
                client.publish(subject.clone(), data.into()).await?
            }
            Publisher::Shoal(ws) => ws.feed(WsMessage::Binary(data.into())).await?,
        }
        Ok(())
    }

    /// Send one message now (async-nats writes as soon as its queue is empty).
    async fn send(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(client, subject) => {
                client.publish(subject.clone(), data.into()).await?
            }
            Publisher::Shoal(ws) => ws.send(WsMessage::Binary(data.into())).await?,
        }
        Ok(())
    }

    /// Everything queued is written (NATS: and the server has read it: PING/PONG).
    async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(client, _) => client.flush().await?,
            Publisher::Shoal(ws) => ws.flush().await?,
        }
        Ok(())
    }

    async fn close(self) {
        match self {
            Publisher::Nats(client, _) => {
                let _ = client.flush().await;
            }
            Publisher::Shoal(mut ws) => {
                let _ = SinkExt::close(&mut ws).await;
            }
        }
    }
}

enum SubConn {
    Nats {
        _client: async_nats::Client,
        sub: async_nats::Subscriber,
    },
    Shoal(Box<Ws>),
}

enum Incoming {
    Payload(Bytes),
    /// Shoal's `{"dropped": n}`: n messages lost to the subscriber's buffer.
    Dropped(u64),
    Closed(String),
}

impl SubConn {
    async fn connect(
        dep: &Deployment,
        node: usize,
        topic: &str,
        buffer: u64,
        events: Arc<NatsEvents>,
    ) -> anyhow::Result<SubConn> {
        let endpoint = dep.endpoint(node);
        Ok(match dep.system {
            System::Nats { .. } => {
                let client = nats_connect(&endpoint, buffer as usize, events, &dep.access).await?;
                let sub = client.subscribe(topic.to_string()).await?;
                // The server has the SUB once the PONG is back.
                client.flush().await?;
                SubConn::Nats {
                    _client: client,
                    sub,
                }
            }
            System::Shoal(_) => {
                // The node registers the subscription before it answers the upgrade.
                let url = ws_url(
                    &endpoint,
                    &format!("/v1/subscribe/ws?pattern={topic}&format=raw&buffer={buffer}"),
                );
                SubConn::Shoal(Box::new(ws_connect(url, &dep.access).await?))
            }
        })
    }

    /// Cancel-safe: the only await points are the underlying streams' `next`.
    async fn next(&mut self) -> Incoming {
        match self {
            SubConn::Nats { sub, .. } => match sub.next().await {
                Some(message) => Incoming::Payload(message.payload),
                None => Incoming::Closed("NATS subscription ended".into()),
            },
            SubConn::Shoal(ws) => loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Binary(data))) => return Incoming::Payload(data),
                    Some(Ok(WsMessage::Text(text))) => {
                        let value: serde_json::Value =
                            serde_json::from_str(text.as_str()).unwrap_or_default();
                        match value["dropped"].as_u64() {
                            Some(n) => return Incoming::Dropped(n),
                            None => {
                                return Incoming::Closed(format!("unexpected text frame: {text}"))
                            }
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        return Incoming::Closed(format!("closed by the node: {frame:?}"))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Incoming::Closed(format!("WebSocket error: {e}")),
                    None => return Incoming::Closed("WebSocket ended".into()),
                }
            },
        }
    }
}

/// Shoal: the publishing node must know (through gossip) that the subscribing
/// node wants `topic` before a publish there is forwarded.
async fn wait_interest(
    http: &reqwest::Client,
    publish_api: &str,
    subscribe_api: &str,
    topic: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let topics: serde_json::Value = http
        .get(format!("{subscribe_api}/v1/topics"))
        .send()
        .await?
        .json()
        .await?;
    let node_id = topics["node_id"]
        .as_u64()
        .context("/v1/topics without node_id")?
        .to_string();
    loop {
        let topics: serde_json::Value = http
            .get(format!("{publish_api}/v1/topics"))
            .send()
            .await?
            .json()
            .await?;
        let listed = topics["nodes"][&node_id].as_array().is_some_and(|lines| {
            lines
                .iter()
                .any(|line| line["pattern"].as_str() == Some(topic))
        });
        if listed {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{publish_api} did not learn {subscribe_api}'s interest in {topic} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// One run

#[derive(Default)]
struct SubReport {
    unique: u64,
    duplicates: u64,
    /// Shoal `{"dropped": n}` frames, summed.
    dropped_reported: u64,
    malformed: u64,
    last: Option<Instant>,
    latencies: Vec<u64>,
    ended: Option<String>,
}

async fn subscriber(
    mut conn: SubConn,
    expected: u64,
    record_latency: bool,
    probed: Arc<AtomicUsize>,
    mut done: watch::Receiver<bool>,
    idle: Duration,
    drain: Duration,
) -> SubReport {
    let mut report = SubReport::default();
    let mut seen = vec![false; expected as usize];
    let mut probe_seen = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    if record_latency {
        report.latencies.reserve(expected as usize);
    }
    while report.unique < expected {
        let incoming = match deadline {
            // The publisher is done: stop after `idle` without a message, or at the drain deadline.
            Some(deadline) => {
                let until = (tokio::time::Instant::now() + idle).min(deadline);
                match tokio::time::timeout_at(until, conn.next()).await {
                    Ok(incoming) => incoming,
                    Err(_) => break,
                }
            }
            None => tokio::select! {
                incoming = conn.next() => incoming,
                _ = done.changed() => {
                    deadline = Some(tokio::time::Instant::now() + drain);
                    continue;
                }
            },
        };
        match incoming {
            Incoming::Payload(data) => {
                let received = now_ns();
                let Some((seq, sent)) = decode(&data) else {
                    report.malformed += 1;
                    continue;
                };
                if seq == PROBE {
                    if !probe_seen {
                        probe_seen = true;
                        probed.fetch_add(1, Ordering::SeqCst);
                    }
                    continue;
                }
                let Some(slot) = seen.get_mut(seq as usize) else {
                    report.malformed += 1;
                    continue;
                };
                report.last = Some(Instant::now());
                if *slot {
                    report.duplicates += 1;
                } else {
                    *slot = true;
                    report.unique += 1;
                    if record_latency {
                        report.latencies.push(received.saturating_sub(sent));
                    }
                }
            }
            Incoming::Dropped(n) => report.dropped_reported += n,
            Incoming::Closed(why) => {
                report.ended = Some(why);
                break;
            }
        }
    }
    report
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU samples (servers, this process) every 50 ms until stopped.
fn sample_cpu(
    pids: Vec<u32>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<(Instant, u64, u64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        loop {
            let servers: u64 = pids.iter().map(|pid| cpu_ticks(Some(*pid))).sum();
            samples.push((Instant::now(), servers, cpu_ticks(None)));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => {
                    let servers: u64 = pids.iter().map(|pid| cpu_ticks(Some(*pid))).sum();
                    samples.push((Instant::now(), servers, cpu_ticks(None)));
                    return samples;
                }
            }
        }
    })
}

/// Servers' and bench's CPU (100 = one core) between `from` and `to`.
fn cpu_between(samples: &[(Instant, u64, u64)], from: Instant, to: Instant) -> (f64, f64) {
    let first = samples
        .iter()
        .rev()
        .find(|s| s.0 <= from)
        .or(samples.first());
    let last = samples.iter().find(|s| s.0 >= to).or(samples.last());
    let (Some(first), Some(last)) = (first, last) else {
        return (0.0, 0.0);
    };
    let secs = last.0.saturating_duration_since(first.0).as_secs_f64();
    if secs <= 0.0 {
        return (0.0, 0.0);
    }
    let per_sec = ticks_per_sec();
    let pct = |ticks: u64| ticks as f64 / per_sec / secs * 100.0;
    (
        pct(last.1.saturating_sub(first.1)),
        pct(last.2.saturating_sub(first.2)),
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Throughput,
    Fanout,
    Latency,
}

impl Scenario {
    fn parse(name: &str) -> anyhow::Result<Scenario> {
        Ok(match name {
            "throughput" => Scenario::Throughput,
            "fanout" => Scenario::Fanout,
            "latency" => Scenario::Latency,
            other => bail!("unknown scenario {other:?} (throughput, fanout, latency)"),
        })
    }
}

struct Outcome {
    subscribers: usize,
    sent: u64,
    publish_secs: f64,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    dropped_reported: u64,
    malformed: u64,
    /// From the first publish to the last message received.
    elapsed_secs: f64,
    latency: Option<Summary>,
    server_cpu: f64,
    bench_cpu: f64,
    interest_wait: Option<Duration>,
    nats_slow_consumer: u64,
    nats_disconnected: u64,
    ended: Vec<String>,
    /// Delivered rates of every repetition of this run.
    all_rates: Vec<f64>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.delivered as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }

    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
}

static RUN: AtomicU64 = AtomicU64::new(0);

async fn run_one(
    dep: &Deployment,
    scenario: Scenario,
    size: usize,
    count: u64,
    args: &Args,
) -> anyhow::Result<Outcome> {
    let topic = format!("bench.r{}", RUN.fetch_add(1, Ordering::Relaxed));
    let subscribers = if scenario == Scenario::Fanout {
        args.fanout
    } else {
        1
    };
    let count = if scenario == Scenario::Latency {
        args.rate * args.latency_secs
    } else {
        count
    };
    let (publish_node, subscribe_node) = (0, if dep.len() > 1 { 1 } else { 0 });
    let events = Arc::new(NatsEvents::default());

    let mut conns = Vec::new();
    for _ in 0..subscribers {
        conns.push(
            SubConn::connect(dep, subscribe_node, &topic, args.buffer, events.clone()).await?,
        );
    }
    let interest_wait = if matches!(dep.system, System::Shoal(_)) && publish_node != subscribe_node
    {
        Some(
            wait_interest(
                &dep.http,
                &dep.endpoint(publish_node),
                &dep.endpoint(subscribe_node),
                &topic,
            )
            .await?,
        )
    } else {
        None
    };
    let mut publisher = Publisher::connect(dep, publish_node, &topic, events.clone()).await?;

    let probed = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let idle = Duration::from_millis(args.idle_ms);
    let drain = Duration::from_secs(args.drain_secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let latency = scenario == Scenario::Latency;
            tokio::spawn(subscriber(
                conn,
                count,
                latency,
                probed.clone(),
                done_rx.clone(),
                idle,
                drain,
            ))
        })
        .collect();

    // Probe until every subscriber has one: the path is open end to end (for
    // NATS across servers, the route has the subscription).
    let probe_started = Instant::now();
    while probed.load(Ordering::SeqCst) < subscribers {
        if probe_started.elapsed() > Duration::from_secs(30) {
            bail!("subscribers did not get a probe within 30 s");
        }
        publisher.send(payload(PROBE, HEADER)).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (stop_cpu, stop_cpu_rx) = watch::channel(false);
    let sampler = sample_cpu(dep.pids(), stop_cpu_rx);
    tokio::time::sleep(Duration::from_millis(60)).await;

    let started = Instant::now();
    let publishing = async {
        if scenario == Scenario::Latency {
            let interval_ns = 1_000_000_000 / args.rate.max(1);
            let start = tokio::time::Instant::now();
            for seq in 0..count {
                tokio::time::sleep_until(start + Duration::from_nanos(seq * interval_ns)).await;
                publisher.send(payload(seq, size)).await?;
            }
        } else {
            for seq in 0..count {
                publisher.feed(payload(seq, size)).await?;
            }
        }
        publisher.flush().await
    };
    let published = tokio::time::timeout(Duration::from_secs(300), publishing).await;
    let publish_secs = started.elapsed().as_secs_f64();
    let _ = done_tx.send(true);
    match published {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context("publishing")),
        Err(_) => bail!("publishing did not finish within 300 s"),
    }

    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await?);
    }
    let _ = stop_cpu.send(true);
    let samples = sampler.await?;
    publisher.close().await;

    let last = reports
        .iter()
        .filter_map(|r| r.last)
        .max()
        .unwrap_or(started);
    let (server_cpu, bench_cpu) = cpu_between(&samples, started, last);
    let latency = if scenario == Scenario::Latency {
        summarize(
            reports
                .iter()
                .flat_map(|r| r.latencies.iter().copied())
                .collect(),
        )
    } else {
        None
    };
    Ok(Outcome {
        subscribers,
        sent: count,
        publish_secs,
        expected: count * subscribers as u64,
        delivered: reports.iter().map(|r| r.unique).sum(),
        duplicates: reports.iter().map(|r| r.duplicates).sum(),
        dropped_reported: reports.iter().map(|r| r.dropped_reported).sum(),
        malformed: reports.iter().map(|r| r.malformed).sum(),
        elapsed_secs: last.saturating_duration_since(started).as_secs_f64(),
        latency,
        server_cpu,
        bench_cpu,
        interest_wait,
        nats_slow_consumer: events.slow_consumer.load(Ordering::Relaxed),
        nats_disconnected: events.disconnected.load(Ordering::Relaxed),
        ended: reports.iter().filter_map(|r| r.ended.clone()).collect(),
        all_rates: Vec::new(),
    })
}

async fn run(args: &Args) -> anyhow::Result<()> {
    if args.payloads.len() != args.messages.len() {
        bail!(
            "--payloads and --messages need one entry each ({} vs {})",
            args.payloads.len(),
            args.messages.len()
        );
    }
    if let Some(small) = args.payloads.iter().find(|p| **p < HEADER) {
        bail!("payload {small} is below {HEADER} bytes (sequence number and send time)");
    }
    if args.rate == 0 || args.rate > 1_000_000_000 {
        bail!("--rate must be between 1 and 1e9");
    }
    let scenarios: Vec<Scenario> = args
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s))
        .collect::<anyhow::Result<_>>()?;
    let systems: Vec<System> = args
        .targets
        .iter()
        .map(|t| System::parse(t))
        .collect::<anyhow::Result<_>>()?;
    let mut topologies: Vec<(&'static str, usize)> = Vec::new();
    for topology in &args.topologies {
        topologies.push(match topology.as_str() {
            "single" => ("single", 1),
            "cluster" => ("cluster", 3),
            other => bail!("unknown topology {other:?} (single or cluster)"),
        });
    }
    let (shoal_bin, why) = node::resolve_binary(args.shoal_bin.clone())?;
    node::raise_fd_limit();
    base();

    println!("# msg-bench: Shoal (WebSocket publish stream + raw WebSocket subscribers) vs NATS core, 127.0.0.1");
    println!("# machine: {}", machine());
    println!(
        "# shoal: {} ({why}): {}",
        shoal_bin.display(),
        command_output(&shoal_bin, "--version")
    );
    println!(
        "# nats:  {}: {}",
        args.nats_bin.display(),
        command_output(&args.nats_bin, "--version")
    );
    println!(
        "# clients: {}",
        locked_versions(&["async-nats", "tokio-tungstenite"])
    );
    println!(
        "# runs: {} msgs per stream/fan-out run (payloads {}, median of {}), fan-out {}, latency {} msg/s for {} s, subscriber buffer {}",
        args.messages.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("/"),
        args.payloads.iter().map(|p| size_label(*p)).collect::<Vec<_>>().join("/"),
        args.repeat,
        args.fanout,
        args.rate,
        args.latency_secs,
        args.buffer
    );

    // Other work on the machine shares its cores with the servers and the bench.
    let load_before = load_average();
    println!("# load average before the runs: {load_before}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut rows: Vec<Row> = Vec::new();
    for (topology, n) in &topologies {
        let first = rows.len();
        for &scenario in &scenarios {
            for &payload in &args.payloads {
                rows.push(Row {
                    topology,
                    scenario,
                    payload,
                    results: Vec::new(),
                });
            }
        }
        // Each system's outcomes of each row, over the rounds.
        let mut runs: Vec<Vec<Runs>> = (first..rows.len())
            .map(|_| systems.iter().map(|_| Runs::default()).collect())
            .collect();
        let rounds = args.repeat.max(1);
        // Positions in `systems`: a system named twice runs twice.
        let slots: Vec<usize> = (0..systems.len()).collect();
        for round in 0..rounds {
            for &slot in rounds::round_order(&slots, round) {
                let system = systems[slot];
                eprintln!(
                    "round {}/{rounds}: {}: starting {n} server(s) ...",
                    round + 1,
                    system.name()
                );
                let started = Instant::now();
                let dep = Deployment::start(system, *n, args, &shoal_bin, &http).await?;
                eprintln!(
                    "{}: {n} server(s) ready in {} ms",
                    system.name(),
                    started.elapsed().as_millis()
                );
                for (row, runs) in rows[first..].iter().zip(runs.iter_mut()) {
                    // A latency run is long and paced: once is enough.
                    if row.scenario == Scenario::Latency && round > 0 {
                        continue;
                    }
                    let count = args.messages[args
                        .payloads
                        .iter()
                        .position(|p| *p == row.payload)
                        .unwrap_or(0)];
                    eprintln!(
                        "{} {topology}: {:?} {} (round {}/{rounds}) ...",
                        system.name(),
                        row.scenario,
                        size_label(row.payload),
                        round + 1
                    );
                    match run_one(&dep, row.scenario, row.payload, count, args).await {
                        Ok(o) => {
                            eprintln!(
                                "  delivered {}/{} in {:.2} s = {} msgs/s{}",
                                o.delivered,
                                o.expected,
                                o.elapsed_secs,
                                thousands(o.rate()),
                                o.latency
                                    .as_ref()
                                    .map(|s| format!(
                                        ", p50 {} ms p99 {} ms",
                                        ms_short(s.p50),
                                        ms_short(s.p99)
                                    ))
                                    .unwrap_or_default()
                            );
                            runs[slot].outcomes.push(o);
                        }
                        Err(e) => {
                            eprintln!("  error: {e:#}");
                            runs[slot].failure.get_or_insert(e);
                        }
                    }
                    // Let the servers drop the closed connections before the next run.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                print_warnings(&dep, system, topology, round);
            }
        }
        for (row, runs) in rows[first..].iter_mut().zip(runs) {
            for (&system, runs) in systems.iter().zip(runs) {
                row.results.push((system, runs.median()));
            }
        }
    }
    print_report(&rows, args);
    print_security_report(&rows, args, &systems, SHOAL);
    print_security_report(&rows, args, &systems, NATS);
    println!();
    println!(
        "# load average at the start: {load_before}; at the end: {}",
        load_average()
    );
    Ok(())
}

/// One system's runs of one row.
#[derive(Default)]
struct Runs {
    outcomes: Vec<Outcome>,
    failure: Option<anyhow::Error>,
}

impl Runs {
    /// The run with the median delivered rate (every rate kept beside it).
    fn median(mut self) -> anyhow::Result<Outcome> {
        let all_rates: Vec<f64> = self.outcomes.iter().map(Outcome::rate).collect();
        self.outcomes.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let middle = self.outcomes.len() / 2;
        match (self.outcomes.is_empty(), self.failure) {
            (false, failure) => {
                let mut o = self.outcomes.swap_remove(middle);
                o.all_rates = all_rates;
                if let Some(e) = failure {
                    o.ended.push(format!("a repetition failed: {e:#}"));
                }
                Ok(o)
            }
            (true, Some(e)) => Err(e),
            (true, None) => Err(anyhow::anyhow!("no run")),
        }
    }
}

/// WARN/ERROR lines in a deployment's node logs, by the module that
/// logged them.
fn print_warnings(dep: &Deployment, system: System, topology: &str, round: usize) {
    let mut by_target: Vec<(String, usize, String)> = Vec::new();
    for line in dep.warnings() {
        let target = line
            .split_whitespace()
            .skip_while(|w| *w != "WARN" && *w != "ERROR")
            .nth(1)
            .unwrap_or("?")
            .trim_end_matches(':')
            .to_string();
        match by_target.iter_mut().find(|(t, _, _)| *t == target) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 = line;
            }
            None => by_target.push((target, 1, line)),
        }
    }
    for (target, count, last) in &by_target {
        println!(
            "# {} {topology} (round {}): {count} WARN/ERROR log lines from {target}; last: {last}",
            system.name(),
            round + 1
        );
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    runner::run_benchmark("msg-bench", run(&args))
}
