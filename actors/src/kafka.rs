//! The Kafka side of the bridge (rdkafka with its bundled librdkafka):
//! producing with acks=all, and consuming a Kafka topic into Shoal.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use thiserror::Error;

use crate::config::Bridge;
use crate::labels::topic_label;
use crate::message::{rfc3339, Message};

/// How long a produce may wait in librdkafka's queue and for the brokers.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum KafkaError {
    #[error("Kafka did not take the message: {0}")]
    Produce(String),
    #[error("Kafka client: {0}")]
    Client(String),
}

/// What Kafka answered for a produced record.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Produced {
    pub partition: i32,
    pub offset: i64,
}

/// A record to produce.
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub partition: Option<i32>,
    pub headers: &'a [(String, String)],
    pub payload: &'a [u8],
}

/// How to reach the brokers: their addresses, and TLS and SASL when the
/// cluster asks for them (librdkafka's `security.protocol`, `ssl.*` and
/// `sasl.*` settings).
#[derive(Clone, Debug, Default)]
pub struct KafkaConnection {
    /// `host:port,...`
    pub brokers: String,
    /// TLS to the brokers.
    pub tls: bool,
    /// PEM CA certificates to verify the brokers with (else the system's).
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for brokers that ask for one.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// SASL: the mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`),
    /// user name and password.
    pub sasl: Option<Sasl>,
}

#[derive(Clone)]
pub struct Sasl {
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    /// Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The SASL mechanisms the bridge speaks.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl KafkaConnection {
    /// A librdkafka configuration with the brokers, TLS and SASL set.
    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        let protocol = match (self.tls, self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(ca) = &self.ca_file {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some((cert, key)) = &self.client_cert {
            config.set("ssl.certificate.location", cert.display().to_string());
            config.set("ssl.key.location", key.display().to_string());
        }
        if let Some(sasl) = &self.sasl {
            config.set("sasl.mechanism", &sasl.mechanism);
            config.set("sasl.username", &sasl.username);
            config.set("sasl.password", &sasl.password);
        }
        config
    }
}

#[derive(Clone)]
pub struct KafkaClient {
    connection: KafkaConnection,
    producer: FutureProducer,
}

impl KafkaClient {
    pub fn new(connection: KafkaConnection) -> Result<KafkaClient, KafkaError> {
        let producer = connection
            .config()
            .set("acks", "all")
            .set("enable.idempotence", "false")
            .set(
                "message.timeout.ms",
                PRODUCE_TIMEOUT.as_millis().to_string(),
            )
            .set("linger.ms", "1")
            .create()
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        Ok(KafkaClient {
            connection,
            producer,
        })
    }

    /// Produce one record and wait until the brokers acknowledged it (acks=all).
    pub async fn produce(&self, record: Record<'_>) -> Result<Produced, KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut future = FutureRecord::<[u8], [u8]>::to(record.topic)
            .payload(record.payload)
            .headers(headers);
        if let Some(key) = record.key {
            future = future.key(key);
        }
        if let Some(partition) = record.partition {
            future = future.partition(partition);
        }
        match self.producer.send(future, PRODUCE_TIMEOUT).await {
            Ok(delivery) => {
                metrics::counter!(
                    "shoal_kafka_produced_total",
                    "topic" => topic_label(record.topic))
                .increment(1);
                Ok(Produced {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((e, _)) => Err(KafkaError::Produce(e.to_string())),
        }
    }

    /// A message as a Kafka record: the payload as is, the envelope
    /// attributes and headers as Kafka headers.
    pub async fn produce_message(
        &self,
        topic: &str,
        message: &Message,
    ) -> Result<Produced, KafkaError> {
        let mut headers = vec![
            ("ce_id".to_string(), message.id.clone()),
            ("ce_source".to_string(), message.source.clone()),
            ("ce_type".to_string(), message.kind.clone()),
            ("ce_time".to_string(), message.time.clone()),
            ("ce_topic".to_string(), message.topic.clone()),
            ("content-type".to_string(), message.content_type.clone()),
        ];
        if let Some(traceparent) = &message.traceparent {
            headers.push(("traceparent".to_string(), traceparent.clone()));
        }
        headers.extend(message.headers.iter().cloned());
        let key = message.header("kafka-key").map(str::as_bytes);
        self.produce(Record {
            topic,
            key,
            partition: None,
            headers: &headers,
            payload: &message.data,
        })
        .await
    }

    /// Consume a bridge's Kafka topic as a member of its consumer group,
    /// handing each record to `hand_on` and committing its offset only once
    /// `hand_on` succeeded. A record that could not be handed on is retried
    /// with backoff before the next one is read, so nothing is skipped.
    pub async fn run_bridge<F, Fut, E>(
        &self,
        bridge: Bridge,
        node_name: String,
        hand_on: F,
    ) -> Result<(), KafkaError>
    where
        F: Fn(Message) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let consumer: StreamConsumer = self
            .connection
            .config()
            .set("group.id", bridge.group_id())
            .set("client.id", format!("shoal-{node_name}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            // A bridge may be defined before its topic exists: librdkafka
            // sees the topic appear at its next metadata refresh, every
            // 5 minutes by default.
            .set("topic.metadata.refresh.interval.ms", "5000")
            .create()
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        consumer
            .subscribe(&[&bridge.kafka_topic])
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        tracing::info!(
            bridge = %bridge.name,
            kafka_topic = %bridge.kafka_topic,
            topic = %bridge.topic,
            "Kafka bridge consuming",
        );
        loop {
            let record = match consumer.recv().await {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(bridge = %bridge.name, error = %e, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let message = bridge_message(&bridge, &record);
            let mut delay = Duration::from_millis(100);
            loop {
                match hand_on(message.clone()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(
                            bridge = %bridge.name,
                            error = %e,
                            "handing a Kafka record on failed; retrying",
                        );
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            if let Err(e) = consumer.commit_message(&record, CommitMode::Async) {
                tracing::warn!(
                    bridge = %bridge.name,
                    error = %e,
                    "committing a Kafka offset failed",
                );
            }
            metrics::counter!("shoal_kafka_consumed_total", "bridge" => bridge.name.clone())
                .increment(1);
        }
    }
}

/// Longest `ce_` header a bridge takes into a message's envelope (a longer
/// one is left out, and the attribute takes its default).
const MAX_ENVELOPE_HEADER_BYTES: usize = 4096;

/// A consumed Kafka record as a Shoal message on the bridge's topic.
fn bridge_message(bridge: &Bridge, record: &rdkafka::message::BorrowedMessage<'_>) -> Message {
    let mut headers = vec![
        ("kafka-topic".to_string(), record.topic().to_string()),
        (
            "kafka-partition".to_string(),
            record.partition().to_string(),
        ),
        ("kafka-offset".to_string(), record.offset().to_string()),
    ];
    if let Some(key) = record.key() {
        headers.push((
            "kafka-key".to_string(),
            String::from_utf8_lossy(key).into_owned(),
        ));
    }
    let mut content_type = "application/octet-stream".to_string();
    let mut traceparent = None;
    // The CloudEvents Kafka binding (binary mode): `ce_` headers are the
    // envelope's attributes, as `produce_message` writes them.
    let mut envelope: HashMap<&str, String> = HashMap::new();
    if let Some(kafka_headers) = record.headers() {
        for header in kafka_headers.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            match header.key {
                "content-type" => content_type = value,
                "traceparent" => traceparent = Some(value),
                key if key.starts_with("ce_") => {
                    if !value.is_empty() && value.len() <= MAX_ENVELOPE_HEADER_BYTES {
                        envelope.insert(key, value);
                    }
                }
                key => headers.push((key.to_string(), value)),
            }
        }
    }
    let time = record
        .timestamp()
        .to_millis()
        .map(|ms| rfc3339(ms.max(0) as u64))
        .unwrap_or_else(crate::message::rfc3339_now);
    Message {
        id: envelope.remove("ce_id").unwrap_or_else(|| {
            format!(
                "kafka-{}-{}-{}",
                record.topic(),
                record.partition(),
                record.offset()
            )
        }),
        topic: bridge.topic.clone(),
        source: envelope
            .remove("ce_source")
            .unwrap_or_else(|| format!("kafka://{}", record.topic())),
        kind: envelope
            .remove("ce_type")
            .unwrap_or_else(|| "shoal.kafka.record".to_string()),
        time: envelope.remove("ce_time").unwrap_or(time),
        subject: envelope.remove("ce_subject"),
        content_type,
        traceparent,
        headers,
        data: record.payload().unwrap_or_default().to_vec(),
    }
}
