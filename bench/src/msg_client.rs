//! msg-bench's clients: the publisher and the subscribers' connections,
//! over WebSocket (plain or TLS, with a token) for Shoal and through
//! async-nats for NATS, and waiting for a cluster to route a topic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use crate::systems::{Access, Deployment, System};

/// A client's connection: plain TCP, or TLS.
pub(super) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
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
pub(super) struct NatsEvents {
    pub(super) slow_consumer: AtomicU64,
    pub(super) disconnected: AtomicU64,
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

pub(super) enum Publisher {
    Nats(async_nats::Client, async_nats::Subject),
    Shoal(Box<Ws>),
}

impl Publisher {
    pub(super) async fn connect(
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
    pub(super) async fn feed(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(client, subject) => {
                client.publish(subject.clone(), data.into()).await?
            }
            Publisher::Shoal(ws) => ws.feed(WsMessage::Binary(data.into())).await?,
        }
        Ok(())
    }

    /// Send one message now (async-nats writes as soon as its queue is empty).
    pub(super) async fn send(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(client, subject) => {
                client.publish(subject.clone(), data.into()).await?
            }
            Publisher::Shoal(ws) => ws.send(WsMessage::Binary(data.into())).await?,
        }
        Ok(())
    }

    /// Everything queued is written (NATS: and the server has read it: PING/PONG).
    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(client, _) => client.flush().await?,
            Publisher::Shoal(ws) => ws.flush().await?,
        }
        Ok(())
    }

    pub(super) async fn close(self) {
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

pub(super) enum SubConn {
    Nats {
        _client: async_nats::Client,
        sub: async_nats::Subscriber,
    },
    Shoal(Box<Ws>),
}

pub(super) enum Incoming {
    Payload(Bytes),
    /// Shoal's `{"dropped": n}`: n messages lost to the subscriber's buffer.
    Dropped(u64),
    Closed(String),
}

impl SubConn {
    pub(super) async fn connect(
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
    pub(super) async fn next(&mut self) -> Incoming {
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
pub(super) async fn wait_interest(
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
