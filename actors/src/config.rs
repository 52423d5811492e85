//! Messaging configuration replicated by Raft: webhook subscriptions,
//! routing rules and Kafka bridges. The node stores each one as a key under
//! `_shoal/` in the configuration store; every node applies the same Raft
//! log and so sees the same set, and a change takes effect everywhere
//! without a restart.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use utoipa::ToSchema;

use shoal_datasets::{Dataset, DATASETS_PREFIX};
use shoal_sinks::definition::{Database, Sink, DATABASES_PREFIX, SINKS_PREFIX};

use crate::message::Message;
use crate::subject::{validate_topic, Pattern};

/// Keys of the configuration store that hold messaging configuration.
pub const CONFIG_PREFIX: &str = "_shoal/";
pub const WEBHOOKS_PREFIX: &str = "_shoal/webhooks/";
pub const ROUTES_PREFIX: &str = "_shoal/routes/";
pub const BRIDGES_PREFIX: &str = "_shoal/bridges/";

/// Longest webhook, route, bridge or sink name (one rule for every
/// definition, kept with the sinks, the crate below this one).
pub use shoal_sinks::definition::MAX_NAME_BYTES;
/// Most destinations per routing rule.
pub const MAX_DESTINATIONS: usize = 16;
/// Most retries in a schedule.
pub const MAX_RETRIES: usize = 32;
/// How often a message may be re-published by routing rules before it is
/// dropped (stops rule loops such as a -> b -> a).
pub const MAX_ROUTE_HOPS: u32 = 8;

/// The Standard Webhooks-like default: immediately, then 5 s, 5 min, 30 min,
/// 2 h, 5 h, 10 h, 10 h (about a day in all).
pub const DEFAULT_RETRY_SCHEDULE_MS: [u64; 8] = [
    0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
];

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

pub fn validate_name(kind: &str, name: &str) -> Result<(), ConfigError> {
    shoal_sinks::definition::validate_name(kind, name).map_err(|e| ConfigError(e.0))
}

/// A webhook subscription: every message on a matching topic is POSTed to
/// `url`, signed, at least once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "billing", "url": "https://example.com/hooks/orders",
    "pattern": "orders.*", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "retry_schedule_ms": [0, 5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000],
    "timeout_ms": 10000}))]
pub struct Webhook {
    /// Read-only: the name in the path.
    #[serde(default)]
    pub name: String,
    /// The http(s) URL messages are POSTed to.
    pub url: String,
    /// Topic pattern; messages on matching topics are delivered. Optional:
    /// a webhook may receive only what routing rules send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `whsec_` + base64 key (16 to 64 bytes), as Standard Webhooks
    /// defines it; generated when not given.
    #[serde(default)]
    pub secret: String,
    /// Delay before each attempt, in milliseconds; after the last one the
    /// message becomes a dead letter.
    #[serde(default = "default_schedule")]
    #[schema(default = default_schedule)]
    pub retry_schedule_ms: Vec<u64>,
    /// Time allowed per attempt, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    #[schema(default = default_timeout_ms)]
    pub timeout_ms: u64,
}

fn default_schedule() -> Vec<u64> {
    DEFAULT_RETRY_SCHEDULE_MS.to_vec()
}

fn default_timeout_ms() -> u64 {
    10_000
}

impl Webhook {
    /// Check and complete a webhook given by a user.
    pub fn validate(mut self, name: &str) -> Result<Webhook, ConfigError> {
        validate_name("webhook", name)?;
        self.name = name.to_string();
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| invalid(format!("url {:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("url must be http:// or https://"));
        }
        if let Some(pattern) = &self.pattern {
            Pattern::parse(pattern).map_err(|e| invalid(e.to_string()))?;
        }
        if self.secret.is_empty() {
            let key: [u8; 24] = rand::random();
            self.secret = format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            );
        }
        secret_key(&self.secret)?;
        if self.retry_schedule_ms.is_empty() || self.retry_schedule_ms.len() > MAX_RETRIES {
            return Err(invalid(format!(
                "retry_schedule_ms needs 1 to {MAX_RETRIES} delays"
            )));
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            return Err(invalid("timeout_ms must be between 100 and 120000"));
        }
        Ok(self)
    }
}

/// The signing key of a `whsec_` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, ConfigError> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| invalid("secret must start with whsec_"))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| invalid("secret must be whsec_ followed by base64"))?;
    if !(16..=64).contains(&key.len()) {
        return Err(invalid("secret key must be 16 to 64 bytes"));
    }
    Ok(key)
}

/// Which messages a routing rule takes, beyond its source pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Filter {
    /// A header equals a value.
    Header { name: String, equals: String },
    /// A field of a JSON payload (a JSON Pointer such as `/amount`) equals a value.
    Json {
        pointer: String,
        #[schema(value_type = Value)]
        equals: Value,
    },
}

impl Filter {
    fn accepts(&self, message: &Message) -> bool {
        match self {
            Filter::Header { name, equals } => message.header(name) == Some(equals.as_str()),
            Filter::Json { pointer, equals } => message
                .json_data()
                .is_some_and(|data| data.pointer(pointer) == Some(equals)),
        }
    }
}

/// Where a routing rule sends a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Topic(String),
    Webhook(String),
    Kafka(String),
    /// A SQL sink (`sql:<name>`).
    Sql(String),
    /// A dataset (`dataset:<name>`): Parquet files on the receiving node.
    Dataset(String),
    /// The workflow event inbox (`workflows:inbox`): stored in Raft for the
    /// instances that listen for the message, now or later.
    WorkflowInbox,
}

/// The text of the workflow event inbox as a destination.
pub const WORKFLOW_INBOX: &str = "workflows:inbox";

impl Destination {
    pub fn parse(text: &str) -> Result<Destination, ConfigError> {
        let bad = || {
            invalid(format!(
                "destination {text:?} must be topic:<topic>, webhook:<name>, kafka:<topic>, sql:<sink>, dataset:<name> or {WORKFLOW_INBOX}"
            ))
        };
        if text == WORKFLOW_INBOX {
            return Ok(Destination::WorkflowInbox);
        }
        let (kind, target) = text.split_once(':').ok_or_else(bad)?;
        match kind {
            "topic" => {
                validate_topic(target).map_err(|e| invalid(e.to_string()))?;
                Ok(Destination::Topic(target.to_string()))
            }
            "webhook" => {
                validate_name("webhook", target)?;
                Ok(Destination::Webhook(target.to_string()))
            }
            "kafka" => {
                validate_kafka_topic(target)?;
                Ok(Destination::Kafka(target.to_string()))
            }
            "sql" => {
                validate_name("sink", target)?;
                Ok(Destination::Sql(target.to_string()))
            }
            "dataset" => {
                validate_name("dataset", target)?;
                Ok(Destination::Dataset(target.to_string()))
            }
            _ => Err(bad()),
        }
    }

    /// The outbox key of a durable destination (None for topics).
    pub fn outbox_name(&self) -> Option<String> {
        match self {
            Destination::Topic(_) => None,
            Destination::Webhook(name) => Some(format!("webhook:{name}")),
            Destination::Kafka(topic) => Some(format!("kafka:{topic}")),
            Destination::Sql(sink) => Some(format!("sql:{sink}")),
            Destination::Dataset(name) => Some(format!("dataset:{name}")),
            Destination::WorkflowInbox => Some(WORKFLOW_INBOX.to_string()),
        }
    }
}

/// Kafka's own rule for topic names.
pub fn validate_kafka_topic(topic: &str) -> Result<(), ConfigError> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "Kafka topic {topic:?} must be 1-249 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A routing rule: messages on topics matching `source` (and passing the
/// filter) also go to each destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "big-orders", "source": "orders.>",
    "filter": {"json": {"pointer": "/amount", "equals": 1000}},
    "destinations": ["topic:orders.big", "webhook:billing"]}))]
pub struct Route {
    /// Read-only: the name in the path.
    #[serde(default)]
    pub name: String,
    /// Topic pattern of the messages taken (`*` one token, `>` the rest).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// 1 or more of `topic:<topic>`, `webhook:<name>`, `kafka:<topic>`,
    /// `sql:<sink>`, `workflows:inbox`.
    pub destinations: Vec<String>,
}

impl Route {
    pub fn validate(mut self, name: &str) -> Result<Route, ConfigError> {
        validate_name("route", name)?;
        self.name = name.to_string();
        Pattern::parse(&self.source).map_err(|e| invalid(e.to_string()))?;
        if self.destinations.is_empty() || self.destinations.len() > MAX_DESTINATIONS {
            return Err(invalid(format!(
                "a route needs 1 to {MAX_DESTINATIONS} destinations"
            )));
        }
        for destination in &self.destinations {
            Destination::parse(destination)?;
        }
        if let Some(Filter::Json { pointer, .. }) = &self.filter {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(invalid(
                    "a JSON filter's pointer starts with '/', e.g. /order/amount",
                ));
            }
        }
        Ok(self)
    }
}

/// A Kafka -> Shoal bridge: records of `kafka_topic` are published to the
/// Shoal topic `topic`. Every node consumes in the group
/// `shoal-bridge-<name>`, so Kafka spreads the partitions across nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "payments-in", "kafka_topic": "payments", "topic": "payments.in"}))]
pub struct Bridge {
    /// Read-only: the name in the path.
    #[serde(default)]
    pub name: String,
    /// The Kafka topic consumed.
    pub kafka_topic: String,
    /// The Shoal topic each record is published to.
    pub topic: String,
}

impl Bridge {
    pub fn validate(mut self, name: &str) -> Result<Bridge, ConfigError> {
        validate_name("bridge", name)?;
        self.name = name.to_string();
        validate_kafka_topic(&self.kafka_topic)?;
        validate_topic(&self.topic).map_err(|e| invalid(e.to_string()))?;
        Ok(self)
    }

    pub fn group_id(&self) -> String {
        format!("shoal-bridge-{}", self.name)
    }
}

/// The whole messaging configuration at one revision.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub webhooks: BTreeMap<String, Webhook>,
    pub routes: BTreeMap<String, Route>,
    pub bridges: BTreeMap<String, Bridge>,
    pub sinks: BTreeMap<String, Sink>,
    pub databases: BTreeMap<String, Database>,
    pub datasets: BTreeMap<String, Dataset>,
}

impl Config {
    /// The outbox names of the destinations this configuration defines
    /// (webhooks, sinks, datasets), whose entries go when they are deleted.
    pub fn defined_outboxes(&self) -> impl Iterator<Item = String> + '_ {
        let webhooks = self.webhooks.keys().cloned().map(Destination::Webhook);
        let sinks = self.sinks.keys().cloned().map(Destination::Sql);
        let datasets = self.datasets.keys().cloned().map(Destination::Dataset);
        webhooks
            .chain(sinks)
            .chain(datasets)
            .filter_map(|destination| destination.outbox_name())
    }

    /// Whether a durable destination's outbox entries are kept: a deleted
    /// webhook, sink or dataset loses them (Kafka topics and the workflow
    /// inbox have no definition to delete).
    pub fn keeps_outbox(&self, outbox_name: &str) -> bool {
        match outbox_name.split_once(':') {
            Some(("webhook", name)) => self.webhooks.contains_key(name),
            Some(("sql", name)) => self.sinks.contains_key(name),
            Some(("dataset", name)) => self.datasets.contains_key(name),
            _ => true,
        }
    }

    /// Apply a stored key's new value (None when deleted). Values that do
    /// not parse are ignored with a warning: they were validated on the way in.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
            serde_json::from_slice(value)
                .map_err(|e| tracing::warn!(key, error = %e, "ignoring unreadable messaging configuration"))
                .ok()
        }
        if let Some(name) = key.strip_prefix(WEBHOOKS_PREFIX) {
            match value.and_then(|v| parse(key, v)) {
                Some(webhook) => self.webhooks.insert(name.to_string(), webhook),
                None => self.webhooks.remove(name),
            };
        } else if let Some(name) = key.strip_prefix(ROUTES_PREFIX) {
            match value.and_then(|v| parse(key, v)) {
                Some(route) => self.routes.insert(name.to_string(), route),
                None => self.routes.remove(name),
            };
        } else if let Some(name) = key.strip_prefix(BRIDGES_PREFIX) {
            match value.and_then(|v| parse(key, v)) {
                Some(bridge) => self.bridges.insert(name.to_string(), bridge),
                None => self.bridges.remove(name),
            };
        } else if let Some(name) = key.strip_prefix(SINKS_PREFIX) {
            match value.and_then(|v| parse(key, v)) {
                Some(sink) => self.sinks.insert(name.to_string(), sink),
                None => self.sinks.remove(name),
            };
        } else if let Some(name) = key.strip_prefix(DATABASES_PREFIX) {
            match value.and_then(|v| parse(key, v)) {
                Some(database) => self.databases.insert(name.to_string(), database),
                None => self.databases.remove(name),
            };
        } else if let Some(name) = key.strip_prefix(DATASETS_PREFIX) {
            match value.and_then(|v| parse(key, v)) {
                Some(dataset) => self.datasets.insert(name.to_string(), dataset),
                None => self.datasets.remove(name),
            };
        }
    }

    /// Where a message published on this node must go besides subscribers:
    /// webhooks whose pattern matches, and the destinations of matching
    /// routing rules (deduplicated).
    pub fn destinations_for(&self, message: &Message) -> Vec<Destination> {
        let mut found: Vec<Destination> = Vec::new();
        let mut add = |destination: Destination| {
            if !found.contains(&destination) {
                found.push(destination);
            }
        };
        for webhook in self.webhooks.values() {
            if webhook
                .pattern
                .as_deref()
                .is_some_and(|p| crate::subject::pattern_matches(p, &message.topic))
            {
                add(Destination::Webhook(webhook.name.clone()));
            }
        }
        for route in self.routes.values() {
            if !crate::subject::pattern_matches(&route.source, &message.topic) {
                continue;
            }
            if route
                .filter
                .as_ref()
                .is_some_and(|filter| !filter.accepts(message))
            {
                continue;
            }
            for destination in &route.destinations {
                if let Ok(destination) = Destination::parse(destination) {
                    add(destination);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_filter_by_header_and_json() {
        let mut config = Config::default();
        let route = Route {
            name: String::new(),
            source: "orders.*".into(),
            filter: Some(Filter::Json {
                pointer: "/region".into(),
                equals: json!("eu"),
            }),
            destinations: vec!["topic:audit.eu".into(), "kafka:orders".into()],
        }
        .validate("eu-orders")
        .unwrap();
        config.apply(
            "_shoal/routes/eu-orders",
            Some(&serde_json::to_vec(&route).unwrap()),
        );
        let mut message = Message {
            topic: "orders.created".into(),
            content_type: "application/json".into(),
            data: br#"{"region":"eu"}"#.to_vec(),
            ..Default::default()
        };
        assert_eq!(
            config.destinations_for(&message),
            vec![
                Destination::Topic("audit.eu".into()),
                Destination::Kafka("orders".into())
            ]
        );
        message.data = br#"{"region":"us"}"#.to_vec();
        assert!(config.destinations_for(&message).is_empty());
        config.apply("_shoal/routes/eu-orders", None);
        assert!(config.routes.is_empty());
    }

    #[test]
    fn bad_definitions_are_rejected() {
        assert!(Destination::parse("queue:x").is_err());
        assert_eq!(
            Destination::parse("workflows:inbox").ok(),
            Some(Destination::WorkflowInbox)
        );
        assert!(Destination::parse("workflows:other").is_err());
        assert!(Destination::parse("topic:a.*").is_err());
        assert_eq!(
            Destination::parse("sql:orders").ok(),
            Some(Destination::Sql("orders".into()))
        );
        assert!(Destination::parse("sql:a/b").is_err());
        assert_eq!(
            Destination::parse("dataset:orders").ok(),
            Some(Destination::Dataset("orders".into()))
        );
        assert!(Destination::parse("dataset:").is_err());
        let webhook = Webhook {
            name: String::new(),
            url: "ftp://x".into(),
            pattern: None,
            secret: String::new(),
            retry_schedule_ms: vec![0],
            timeout_ms: 1000,
        };
        assert!(webhook.clone().validate("w").is_err());
        let ok = Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            ..webhook
        }
        .validate("w")
        .unwrap();
        assert!(ok.secret.starts_with("whsec_"));
        assert!(validate_name("webhook", "a/b").is_err());
    }
}
