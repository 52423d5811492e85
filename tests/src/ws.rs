//! WebSocket clients for the messaging tests, and the other messaging helpers
//! built on them.
//!
//! - [`WsClient`]: a WebSocket connection (`/v1/subscribe/ws`,
//!   `/v1/publish/ws`) with time-limited reads; a handshake the node refuses
//!   comes back as a [`Rejected`] with the HTTP status and JSON error body.
//! - [`Subscriber`]: one subscription, over SSE (`/v1/subscribe`) or
//!   WebSocket, read as a sequence of [`Delivery`]s, so a test treats both
//!   transports alike.
//! - `Node` methods to publish (`POST /v1/topics/{topic}`, `POST
//!   /v1/publish`), subscribe, and read and wait on `GET /v1/topics`.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::http::Reply;
use crate::node::{open_event_stream, Node, REQUEST_TIMEOUT};
use crate::sse::{SseEvent, WatchStream};
use crate::wait_for;

/// How long interest may take to travel between nodes by gossip (it
/// usually takes well under a second).
pub const INTEREST_TIMEOUT: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A handshake the node answered with an HTTP error instead of `101`.
#[derive(Debug)]
pub struct Rejected {
    pub status: StatusCode,
    /// The body parsed as JSON (`Value::Null` if it is not JSON).
    pub body: Value,
    pub text: String,
}

impl Rejected {
    /// The `error.code` of the body, if any.
    pub fn code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Value::as_str)
    }

    pub fn describe(&self) -> String {
        format!("{} {}", self.status, self.text)
    }
}

/// One frame read from a WebSocket (pings and pongs are skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: its code and reason, if it had any.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (or the read failed).
    Ended(String),
}

/// An open WebSocket connection to a node.
pub struct WsClient {
    socket: Socket,
    ended: bool,
}

/// Opens a WebSocket to `url` (`ws://...`). `Err` if the node answers the
/// handshake with an HTTP error; panics if it cannot be reached or does not
/// answer within the request timeout.
pub async fn ws_connect(url: &str) -> Result<WsClient, Rejected> {
    let connected = tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|_| {
            panic!("WebSocket {url}: no handshake answer within {REQUEST_TIMEOUT:?}")
        });
    match connected {
        Ok((socket, _response)) => Ok(WsClient {
            socket,
            ended: false,
        }),
        Err(WsError::Http(response)) => {
            let status = StatusCode::from_u16(response.status().as_u16()).expect("HTTP status");
            let bytes = response.body().clone().unwrap_or_default();
            Err(Rejected {
                status,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                text: String::from_utf8_lossy(&bytes).into_owned(),
            })
        }
        Err(e) => panic!("WebSocket {url}: connecting failed: {e}"),
    }
}

impl WsClient {
    /// The next frame; `None` if none arrives within `timeout`. After the
    /// connection has ended, every call returns [`Frame::Ended`].
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ended {
                return Some(Frame::Ended("the connection has ended".into()));
            }
            let next = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return None,
                Ok(next) => next,
            };
            let frame = match next {
                None => Frame::Ended("the connection closed".into()),
                Some(Err(e)) => Frame::Ended(format!("reading failed: {e}")),
                Some(Ok(WsMessage::Text(text))) => Frame::Text(text.to_string()),
                Some(Ok(WsMessage::Binary(bytes))) => Frame::Binary(bytes.to_vec()),
                Some(Ok(WsMessage::Close(close))) => {
                    Frame::Close(close.map(|c| (u16::from(c.code), c.reason.to_string())))
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
            };
            if matches!(frame, Frame::Ended(_)) {
                self.ended = true;
            }
            return Some(frame);
        }
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, data: &[u8]) {
        self.try_send_binary(data)
            .await
            .unwrap_or_else(|e| panic!("sending a binary frame failed: {e}"));
    }

    /// Sends one binary frame; an error if the connection failed meanwhile
    /// (the node may close it before a frame over its limit is all sent).
    pub async fn try_send_binary(&mut self, data: &[u8]) -> Result<(), String> {
        self.socket
            .send(WsMessage::binary(data.to_vec()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(WsMessage::text(text.to_string()))
            .await
            .unwrap_or_else(|e| panic!("sending a text frame failed: {e}"));
    }

    /// Queues a frame without flushing (see [`WsClient::flush`]): for
    /// sending many frames quickly.
    pub async fn feed_binary(&mut self, data: &[u8]) {
        self.socket
            .feed(WsMessage::binary(data.to_vec()))
            .await
            .unwrap_or_else(|e| panic!("sending a binary frame failed: {e}"));
    }

    pub async fn flush(&mut self) {
        self.socket
            .flush()
            .await
            .unwrap_or_else(|e| panic!("flushing the WebSocket failed: {e}"));
    }

    /// Starts the closing handshake (normal closure) and reads until the
    /// node's close frame or the end of the connection (5 s at most).
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        };
        if self
            .socket
            .send(WsMessage::Close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.socket.next()).await {}
    }

    /// Reads frames until a close frame, skipping data frames; returns the
    /// close code and reason. Panics if the connection ends otherwise or
    /// nothing closes it within `timeout`.
    pub async fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        let deadline = Instant::now() + timeout;
        let mut skipped = 0usize;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                None => panic!("no close frame within {timeout:?} ({skipped} data frames read)"),
                Some(Frame::Close(Some(close))) => return close,
                Some(Frame::Close(None)) => {
                    panic!("a close frame without a code ({skipped} data frames read)")
                }
                Some(Frame::Ended(why)) => {
                    panic!("the connection ended without a close frame: {why}")
                }
                Some(Frame::Text(_) | Frame::Binary(_)) => skipped += 1,
            }
        }
    }
}

/// What a subscriber reads from its stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// A message envelope (SSE `event: message`, or a WebSocket text frame
    /// in `format=json`).
    Message(Value),
    /// A payload alone (a binary frame in `format=raw`).
    Payload(Vec<u8>),
    /// `{"dropped": n}`: the buffer overflowed and n messages were lost.
    Dropped(u64),
    /// SSE `event: error`, with its JSON data.
    Error(Value),
    /// A WebSocket close frame: code and reason.
    Closed(Option<(u16, String)>),
    /// The stream ended (without an error event or close frame).
    Ended(String),
}

impl Delivery {
    /// The envelope of a `Message`, or a panic naming what came instead.
    #[track_caller]
    pub fn envelope(self) -> Value {
        match self {
            Delivery::Message(envelope) => envelope,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

enum Transport {
    Sse(WatchStream),
    Ws(Box<WsClient>),
}

/// One live subscription on a node, over SSE or WebSocket. Dropping it
/// closes the connection, which ends the subscription.
pub struct Subscriber {
    transport: Transport,
    /// What the subscription was opened with, for failure messages.
    pub label: String,
}

impl Subscriber {
    /// The next delivery; `None` if nothing arrives within `timeout`. Keep-alive
    /// comments and pings are skipped.
    pub async fn next(&mut self, timeout: Duration) -> Option<Delivery> {
        match &mut self.transport {
            Transport::Sse(stream) => {
                let event = match stream.next_sse(timeout).await {
                    Ok(None) => return None,
                    Ok(Some(event)) => event,
                    Err(e) => return Some(Delivery::Ended(format!("{e:#}"))),
                };
                Some(sse_delivery(&event))
            }
            Transport::Ws(ws) => {
                let delivery = match ws.next_frame(timeout).await? {
                    Frame::Text(text) => {
                        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                            panic!("{}: a text frame is not JSON ({e}): {text:?}", self.label)
                        });
                        match value.get("dropped").and_then(Value::as_u64) {
                            Some(n) if value.get("specversion").is_none() => Delivery::Dropped(n),
                            _ => Delivery::Message(value),
                        }
                    }
                    Frame::Binary(bytes) => Delivery::Payload(bytes),
                    Frame::Close(close) => Delivery::Closed(close),
                    Frame::Ended(why) => Delivery::Ended(why),
                };
                Some(delivery)
            }
        }
    }

    /// The next delivery, which must come within `timeout`.
    pub async fn expect(&mut self, timeout: Duration) -> Delivery {
        self.next(timeout)
            .await
            .unwrap_or_else(|| panic!("{}: nothing delivered within {timeout:?}", self.label))
    }

    /// Reads exactly `count` message envelopes (all within `timeout`);
    /// panics on anything else (a drop report, the end of the stream) or a
    /// timeout, showing what had arrived.
    pub async fn messages(&mut self, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Delivery::Message(envelope)) => got.push(envelope),
                Some(other) => panic!(
                    "{}: expected {count} messages, got {other:?} after {} of them (last: {:?})",
                    self.label,
                    got.len(),
                    got.last()
                ),
                None => panic!(
                    "{}: {} of {count} messages within {timeout:?}; topics so far: {:?}",
                    self.label,
                    got.len(),
                    topics_of(&got)
                ),
            }
        }
        got
    }

    /// Reads exactly `count` raw payloads (WebSocket `format=raw`).
    pub async fn payloads(&mut self, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Delivery::Payload(data)) => got.push(data),
                Some(other) => panic!(
                    "{}: expected {count} payloads, got {other:?} after {} of them",
                    self.label,
                    got.len()
                ),
                None => panic!(
                    "{}: {} of {count} payloads within {timeout:?}",
                    self.label,
                    got.len()
                ),
            }
        }
        got
    }

    /// Reads message envelopes until one with id `id` (included), all
    /// within `timeout`.
    pub async fn messages_through(&mut self, id: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Delivery::Message(envelope)) => {
                    let last = envelope["id"] == id;
                    got.push(envelope);
                    if last {
                        return got;
                    }
                }
                Some(other) => panic!(
                    "{}: waiting for message {id}, got {other:?}; topics so far: {:?}",
                    self.label,
                    topics_of(&got)
                ),
                None => panic!(
                    "{}: message {id} did not arrive within {timeout:?}; topics so far: {:?}",
                    self.label,
                    topics_of(&got)
                ),
            }
        }
    }

    /// Asserts that nothing is delivered for `quiet` (a bounded check that
    /// nothing more arrives, e.g. no duplicates after the last message).
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Some(delivery) = self.next(quiet).await {
            panic!("{}: expected nothing more, got {delivery:?}", self.label);
        }
    }

    /// Closes the subscription: a WebSocket with a close handshake, an SSE
    /// stream by dropping the connection.
    pub async fn close(self) {
        match self.transport {
            Transport::Sse(stream) => drop(stream),
            Transport::Ws(ws) => ws.close().await,
        }
    }
}

fn topics_of(envelopes: &[Value]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| e["topic"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn sse_delivery(event: &SseEvent) -> Delivery {
    let json = || -> Value {
        serde_json::from_str(&event.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {event:?}"))
    };
    match event.event.as_deref() {
        Some("message") => {
            let envelope = json();
            assert_eq!(
                event.id.as_deref(),
                envelope["id"].as_str(),
                "the SSE id is not the message id: {event:?}"
            );
            Delivery::Message(envelope)
        }
        Some("dropped") => {
            let data = json();
            let n = data["dropped"]
                .as_u64()
                .unwrap_or_else(|| panic!("a dropped event without a count: {event:?}"));
            Delivery::Dropped(n)
        }
        Some("error") => Delivery::Error(json()),
        _ => panic!("unexpected SSE event on a subscription: {event:?}"),
    }
}

/// Whether `topics` (a `GET /v1/topics` body) lists, for node `owner`, the
/// `pattern` with this queue `group`; returns its subscriber count.
pub fn interest_in(topics: &Value, owner: u64, pattern: &str, group: Option<&str>) -> Option<u64> {
    let lines = topics["nodes"][owner.to_string()].as_array()?;
    lines
        .iter()
        .find(|line| line["pattern"] == pattern && line["group"].as_str() == group)
        .map(|line| line["subscribers"].as_u64().unwrap_or(0))
}

fn query_string(query: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("URL");
    url.query_pairs_mut().extend_pairs(query);
    url.query().map(|q| format!("?{q}")).unwrap_or_default()
}

impl Node {
    /// `ws://127.0.0.1:PORT{path}?{query}`.
    pub fn ws_url(&self, path: &str, query: &[(&str, &str)]) -> String {
        format!(
            "ws://127.0.0.1:{}{path}{}",
            self.api_port,
            query_string(query)
        )
    }

    /// The node's id, from `GET /v1/topics`.
    pub async fn node_id(&self) -> u64 {
        let body = self.topics().await;
        body["node_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("/v1/topics without a node_id: {body}"))
    }

    // ----- publishing ---------------------------------------------------

    /// `POST /v1/topics/{topic}` with these headers; the reply as is.
    pub async fn publish_with(&self, topic: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        let mut request = self
            .request(Method::POST, &format!("/v1/topics/{topic}"))
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    /// `POST /v1/topics/{topic}` (`text/plain`), asserting 202; returns
    /// the receipt.
    pub async fn publish(&self, topic: &str, body: &[u8]) -> Value {
        let reply = self
            .publish_with(topic, body, &[("content-type", "text/plain")])
            .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "publish to {topic}: {}",
            reply.describe()
        );
        reply.body
    }

    /// `POST /v1/publish` with a JSON body; the reply as is.
    pub async fn publish_batch(&self, body: &Value) -> Reply {
        self.post_json("/v1/publish", body).await
    }

    /// `GET /v1/publish/ws?...`: a publishing stream.
    pub async fn publish_ws(&self, query: &[(&str, &str)]) -> WsClient {
        self.try_publish_ws(query)
            .await
            .unwrap_or_else(|r| panic!("publish/ws {query:?} refused: {}", r.describe()))
    }

    pub async fn try_publish_ws(&self, query: &[(&str, &str)]) -> Result<WsClient, Rejected> {
        ws_connect(&self.ws_url("/v1/publish/ws", query)).await
    }

    // ----- subscribing --------------------------------------------------

    /// `GET /v1/subscribe?...` without reading a stream: for error replies.
    pub async fn subscribe_reply(&self, query: &[(&str, &str)]) -> Reply {
        self.send(self.request(Method::GET, "/v1/subscribe").query(query))
            .await
    }

    /// Opens an SSE subscription, asserting 200, `text/event-stream` and a
    /// first `event: subscribed`. The subscription is registered on the
    /// node when this returns.
    pub async fn subscribe_sse(&self, query: &[(&str, &str)]) -> Subscriber {
        let label = format!("SSE subscriber {query:?} on {}", self.label());
        let request = self
            .client()
            .get(self.url("/v1/subscribe"))
            .query(query)
            .header("accept", "text/event-stream");
        let mut stream = open_event_stream(request, &label).await;
        let first = stream
            .next_sse(REQUEST_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e:#}"))
            .unwrap_or_else(|| panic!("{label}: no subscribed event"));
        assert_eq!(
            first.event.as_deref(),
            Some("subscribed"),
            "{label}: first event {first:?}"
        );
        let hello: Value = serde_json::from_str(&first.data)
            .unwrap_or_else(|e| panic!("{label}: subscribed data is not JSON ({e}): {first:?}"));
        assert!(
            hello["subscription"].is_u64(),
            "{label}: subscribed without an id: {hello}"
        );
        Subscriber {
            transport: Transport::Sse(stream),
            label,
        }
    }

    /// Opens a WebSocket subscription (`format=json` unless `query` says
    /// otherwise), asserting that the handshake succeeds. The subscription
    /// is registered on the node when this returns.
    pub async fn subscribe_ws(&self, query: &[(&str, &str)]) -> Subscriber {
        let label = format!("WebSocket subscriber {query:?} on {}", self.label());
        let ws = self
            .try_subscribe_ws(query)
            .await
            .unwrap_or_else(|r| panic!("{label}: refused: {}", r.describe()));
        Subscriber {
            transport: Transport::Ws(Box::new(ws)),
            label,
        }
    }

    pub async fn try_subscribe_ws(&self, query: &[(&str, &str)]) -> Result<WsClient, Rejected> {
        ws_connect(&self.ws_url("/v1/subscribe/ws", query)).await
    }

    // ----- interest -----------------------------------------------------

    /// `GET /v1/topics`, asserting 200.
    pub async fn topics(&self) -> Value {
        self.get_path("/v1/topics").await.ok()
    }

    /// Waits until this node's `/v1/topics` shows node `owner` holding
    /// `pattern` (in queue `group`) with exactly `subscribers` subscribers;
    /// `0` waits until the line is gone.
    pub async fn wait_interest(
        &self,
        owner: u64,
        pattern: &str,
        group: Option<&str>,
        subscribers: u64,
    ) {
        let what = format!(
            "{}'s /v1/topics to show node {owner} with {subscribers} subscriber(s) of {pattern:?} (group {group:?})",
            self.label()
        );
        wait_for(INTEREST_TIMEOUT, &what, || async {
            let reply = self
                .try_request(Method::GET, "/v1/topics", Duration::from_secs(2))
                .await?;
            if reply.status != StatusCode::OK {
                return Err(reply.describe());
            }
            let count = interest_in(&reply.body, owner, pattern, group).unwrap_or(0);
            if count == subscribers {
                Ok(())
            } else {
                Err(reply.body.to_string())
            }
        })
        .await
    }
}
