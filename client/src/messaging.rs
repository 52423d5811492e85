//! Publish/subscribe: single and batch publishes, and subscriptions as a
//! `Stream` of messages over Server-Sent Events.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::Stream;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::client::{encode_path, error_from_body, query, Client, Request, Retry};
use crate::error::{Error, Result};
use crate::kv::decode_base64;
use crate::stream::{next_event, Ended, Reconnect, TaskStream};

/// Messages buffered between the connection task and the consumer.
const BUFFER: usize = 256;

/// Envelope attributes of a single publish; all optional.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Content type of the payload (default `application/octet-stream`).
    pub content_type: Option<String>,
    /// Message headers (sent as `ce-NAME`; names are lowercase HTTP header names).
    pub headers: Vec<(String, String)>,
    /// Message id (default: a random one).
    pub id: Option<String>,
    /// CloudEvents `source` (default: the node).
    pub source: Option<String>,
    /// CloudEvents `type` (default `shoal.message`).
    pub kind: Option<String>,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// W3C trace context to continue (default: a new trace).
    pub traceparent: Option<String>,
}

/// Answer to a single publish.
#[derive(Debug, Clone, Deserialize)]
pub struct PublishReceipt {
    /// The message id.
    pub id: String,
    /// The topic.
    pub topic: String,
    /// Subscribers on the accepting node that got it.
    pub local: u64,
    /// Other nodes it was forwarded to.
    pub forwarded: u64,
    /// Messages created by routing rules.
    pub routed: u64,
    /// Durable deliveries (webhooks, Kafka) queued in the outbox.
    pub durable: u64,
}

/// Answer to an event sent to the workflow event inbox.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowEventReceipt {
    /// The event id.
    pub id: String,
    /// The topic it names.
    pub topic: String,
    /// True when an event with this id was waiting already (nothing changed).
    pub duplicate: bool,
    /// The KV revision it was stored at.
    pub revision: u64,
}

/// One message as a request: the payload as the body, the envelope as
/// headers.
fn message_request(
    path: String,
    retry: Retry,
    payload: Vec<u8>,
    options: &PublishOptions,
) -> Request {
    let content_type = options
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut request = Request::new(Method::POST, path, retry).body(payload, content_type);
    for (name, value) in &options.headers {
        request = request.header(format!("ce-{name}"), value.clone());
    }
    let attributes = [
        ("ce-id", &options.id),
        ("ce-source", &options.source),
        ("ce-type", &options.kind),
        ("ce-subject", &options.subject),
        ("traceparent", &options.traceparent),
    ];
    for (name, value) in attributes {
        if let Some(value) = value {
            request = request.header(name, value.clone());
        }
    }
    request
}

/// Answer to a batch publish.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchReceipt {
    /// The message ids, in order.
    pub ids: Vec<String>,
    /// Deliveries to subscribers on the accepting node.
    pub local: u64,
    /// Forwards to other nodes.
    pub forwarded: u64,
    /// Messages created by routing rules.
    pub routed: u64,
    /// Durable deliveries queued in the outbox.
    pub durable: u64,
}

/// One message of a batch publish.
#[derive(Debug, Clone, Serialize)]
pub struct OutgoingMessage {
    topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    headers: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

impl OutgoingMessage {
    fn empty(topic: impl Into<String>) -> OutgoingMessage {
        OutgoingMessage {
            topic: topic.into(),
            data: None,
            data_base64: None,
            content_type: None,
            headers: Map::new(),
            id: None,
            subject: None,
            kind: None,
        }
    }

    /// Raw bytes (content type `application/octet-stream` unless set).
    pub fn bytes(topic: impl Into<String>, payload: impl AsRef<[u8]>) -> OutgoingMessage {
        OutgoingMessage {
            data_base64: Some(STANDARD.encode(payload)),
            ..OutgoingMessage::empty(topic)
        }
    }

    /// Text (content type `text/plain`).
    pub fn text(topic: impl Into<String>, text: impl Into<String>) -> OutgoingMessage {
        OutgoingMessage {
            data: Some(Value::String(text.into())),
            ..OutgoingMessage::empty(topic)
        }
    }

    /// A JSON document (content type `application/json`).
    pub fn json<T: Serialize>(topic: impl Into<String>, value: &T) -> Result<OutgoingMessage> {
        let value = serde_json::to_value(value).map_err(|e| Error::decode("message", e))?;
        // A JSON string would be taken as text; send it serialized instead.
        Ok(match value {
            Value::String(_) => OutgoingMessage {
                data_base64: Some(STANDARD.encode(value.to_string())),
                content_type: Some("application/json".into()),
                ..OutgoingMessage::empty(topic)
            },
            value => OutgoingMessage {
                data: Some(value),
                ..OutgoingMessage::empty(topic)
            },
        })
    }

    /// Sets the content type.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .insert(name.into(), Value::String(value.into()));
        self
    }

    /// Sets the message id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the CloudEvents subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the CloudEvents type.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }
}

/// A received message (a CloudEvents envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message id.
    pub id: String,
    /// The topic it was published to.
    pub topic: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `type`.
    pub kind: String,
    /// Publish time, RFC 3339.
    pub time: String,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// Content type of the payload.
    pub content_type: String,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// Message headers.
    pub headers: BTreeMap<String, String>,
    /// The payload. A JSON payload is re-serialized from the envelope, so it
    /// is equal as JSON, not necessarily byte for byte.
    pub payload: Vec<u8>,
    /// The envelope as received (JSON text), for [`Message::envelope`].
    envelope: String,
}

impl Message {
    /// The payload as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }

    /// The CloudEvents envelope exactly as the node sent it (JSON text),
    /// including attributes this type has no field for.
    pub fn envelope(&self) -> &str {
        &self.envelope
    }

    /// The payload parsed as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| Error::decode("message payload", e))
    }

    fn from_envelope(text: &str) -> Result<Message> {
        #[derive(Deserialize)]
        struct Envelope {
            id: String,
            topic: String,
            #[serde(default)]
            source: String,
            #[serde(rename = "type", default)]
            kind: String,
            #[serde(default)]
            time: String,
            subject: Option<String>,
            #[serde(rename = "datacontenttype", default)]
            content_type: String,
            traceparent: Option<String>,
            #[serde(default)]
            headers: BTreeMap<String, String>,
            data: Option<Value>,
            data_base64: Option<String>,
        }
        let envelope: Envelope =
            serde_json::from_str(text).map_err(|e| Error::decode("message envelope", e))?;
        let payload = match (envelope.data, envelope.data_base64) {
            (_, Some(encoded)) => decode_base64(&encoded)?,
            // The server embeds JSON payloads as JSON and text as a string.
            (Some(Value::String(text)), None) if !is_json(&envelope.content_type) => {
                text.into_bytes()
            }
            (Some(value), None) => value.to_string().into_bytes(),
            (None, None) => Vec::new(),
        };
        Ok(Message {
            id: envelope.id,
            topic: envelope.topic,
            source: envelope.source,
            kind: envelope.kind,
            time: envelope.time,
            subject: envelope.subject,
            content_type: envelope.content_type,
            traceparent: envelope.traceparent,
            headers: envelope.headers,
            payload,
            envelope: text.to_string(),
        })
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence == "application/json" || essence.ends_with("+json")
}

/// What a subscriber does when its buffer on the node overflows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest messages and report the count (default).
    #[default]
    DropOldest,
    /// End the subscription with a `slow_consumer` error.
    Disconnect,
}

/// Options of a subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Queue group: each message goes to one member of the group.
    pub queue: Option<String>,
    /// Buffer size on the node, 1..=65536 (default 1024).
    pub buffer: Option<u32>,
    /// Overflow policy.
    pub overflow: Overflow,
}

/// A subscription: a `Stream` of messages matching a pattern.
///
/// Core topics are at-most-once: if the connection drops, the subscription
/// is made again (on the next endpoint, with backoff) and messages
/// published in between are not seen. Messages the node dropped because
/// this subscriber was slow are counted in [`Subscription::dropped`]. The
/// stream ends with an error item only if the server refuses the
/// subscription or ends it (`slow_consumer` with [`Overflow::Disconnect`]).
#[derive(Debug)]
pub struct Subscription {
    messages: TaskStream<Result<Message>>,
    dropped: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
}

impl Subscription {
    /// Messages the node dropped for this subscriber so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How often the subscription had to be made again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.messages).poll_next(cx)
    }
}

impl Client {
    /// Publishes one message (content type `application/octet-stream`).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<PublishReceipt> {
        self.publish_with(topic, payload, &PublishOptions::default())
            .await
    }

    /// Publishes a value as JSON (content type `application/json`).
    pub async fn publish_json<T: Serialize>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<PublishReceipt> {
        let payload = serde_json::to_vec(value).map_err(|e| Error::decode("message", e))?;
        let options = PublishOptions {
            content_type: Some("application/json".into()),
            ..PublishOptions::default()
        };
        self.publish_with(topic, payload, &options).await
    }

    /// Publishes one message with envelope attributes.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        options: &PublishOptions,
    ) -> Result<PublishReceipt> {
        let path = format!("/v1/topics/{}", encode_path(topic));
        let request = message_request(path, Retry::Once, payload.into(), options);
        self.call_json(request, "publish answer").await
    }

    /// Sends an event to the workflow event inbox: it is stored in Raft
    /// before the answer and applied to the workflow instances listening
    /// for it (not published to subscribers). Give `options.id`: a retried
    /// request then changes nothing, and is retried on another endpoint
    /// after any transport error.
    pub async fn send_workflow_event(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        options: &PublishOptions,
    ) -> Result<WorkflowEventReceipt> {
        let path = format!("/v1/workflows/events/{}", encode_path(topic));
        let retry = match options.id {
            Some(_) => Retry::Idempotent,
            None => Retry::Once,
        };
        let request = message_request(path, retry, payload.into(), options);
        self.call_json(request, "workflow event answer").await
    }

    /// Publishes 1..=1000 messages at once: all are accepted or none.
    pub async fn publish_batch(&self, messages: &[OutgoingMessage]) -> Result<BatchReceipt> {
        let body = json!({ "messages": messages });
        let request = Request::new(Method::POST, "/v1/publish".into(), Retry::Once).json(&body);
        self.call_json(request, "publish answer").await
    }

    /// Subscribes to a pattern (`orders.*`, `orders.>`). Returns once the
    /// node has registered the subscription, so a message published after
    /// this returns is delivered.
    pub async fn subscribe(
        &self,
        pattern: &str,
        options: &SubscribeOptions,
    ) -> Result<Subscription> {
        let path = format!(
            "/v1/subscribe{}",
            query(&[
                ("pattern", Some(pattern.to_string())),
                ("queue", options.queue.clone()),
                ("buffer", options.buffer.map(|b| b.to_string())),
                (
                    "overflow",
                    (options.overflow == Overflow::Disconnect).then(|| "disconnect".to_string()),
                ),
            ])
        );
        let (sender, receiver) = mpsc::channel(BUFFER);
        let (ready, subscribed) = oneshot::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let reconnects = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run_subscription(
            self.clone(),
            Request::get(path),
            sender,
            Some(ready),
            dropped.clone(),
            reconnects.clone(),
        ));
        let subscription = Subscription {
            messages: TaskStream::new(receiver, task),
            dropped,
            reconnects,
        };
        match subscribed.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed("the subscription task stopped".into())),
        }
    }
}

async fn run_subscription(
    client: Client,
    request: Request,
    sender: mpsc::Sender<Result<Message>>,
    mut ready: Option<oneshot::Sender<Result<()>>>,
    dropped: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
) {
    let mut reconnect = Reconnect::new(&client);
    loop {
        let ended = tokio::select! {
            ended = connect(&client, &request, &mut reconnect, &sender, &mut ready, &dropped) => ended,
            _ = sender.closed() => Ended::Closed,
        };
        let error = match ended {
            Ended::Closed => return,
            Ended::Fatal(error) => {
                match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Err(error));
                    }
                    None => {
                        let _ = sender.send(Err(error)).await;
                    }
                }
                return;
            }
            Ended::Reconnect(error) => error,
        };
        // The first connection's failure is the caller's to see.
        if let Some(ready) = ready.take() {
            let _ = ready.send(Err(error.unwrap_or_else(|| {
                Error::Closed("the subscription ended before it started".into())
            })));
            return;
        }
        match &error {
            Some(e) => tracing::warn!("subscription disconnected, reconnecting: {e}"),
            None => tracing::info!("subscription ended by the node, reconnecting"),
        }
        reconnects.fetch_add(1, Ordering::Relaxed);
        if !reconnect.wait(&sender).await {
            return;
        }
    }
}

async fn connect(
    client: &Client,
    request: &Request,
    reconnect: &mut Reconnect,
    sender: &mpsc::Sender<Result<Message>>,
    ready: &mut Option<oneshot::Sender<Result<()>>>,
    dropped: &AtomicU64,
) -> Ended {
    let (mut reader, endpoint) = match reconnect.open(client, request).await {
        Ok(opened) => opened,
        Err(e) => return Ended::after(e),
    };
    loop {
        let event = match next_event(&mut reader).await {
            Ok(event) => event,
            Err(ended) => return ended,
        };
        match event.event.as_str() {
            "subscribed" => {
                tracing::debug!(%endpoint, hello = %event.data, "subscribed");
                reconnect.delivered();
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            "message" => {
                let item = Message::from_envelope(&event.data);
                if sender.send(item).await.is_err() {
                    return Ended::Closed;
                }
            }
            "dropped" => {
                let count = serde_json::from_str::<Value>(&event.data)
                    .ok()
                    .and_then(|v| v.get("dropped").and_then(Value::as_u64))
                    .unwrap_or(0);
                dropped.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(count, "the node dropped messages for this slow subscriber");
            }
            "error" => return Ended::Fatal(error_from_body(500, event.data.as_bytes())),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_decode() {
        let text = r#"{"data":{"a":1},"datacontenttype":"application/json","headers":{"region":"eu"},"id":"x","source":"s","specversion":"1.0","time":"t","topic":"orders.x","type":"shoal.message"}"#;
        let message = Message::from_envelope(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(message.payload, br#"{"a":1}"#);
        assert_eq!(
            message.headers.get("region").map(String::as_str),
            Some("eu")
        );
        let text = r#"{"data":"hi","datacontenttype":"text/plain","id":"y","topic":"t"}"#;
        let message = Message::from_envelope(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(message.text(), Some("hi"));
    }
}
