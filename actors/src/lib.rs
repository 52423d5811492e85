//! Messaging for Shoal: topics routed between nodes, subscribers with
//! bounded buffers, routing rules, and at-least-once delivery to webhooks
//! and Kafka from a durable outbox. Knows nothing of HTTP serving or Raft:
//! the node hands it messages, configuration changes and a transport to
//! its peers.

pub mod config;
pub mod deliver;
pub mod kafka;
pub mod labels;
pub mod message;
mod messaging;
mod metric_help;
pub mod queue;
pub mod router;
pub mod subject;

pub use messaging::{Messaging, MessagingError, Receipt};
pub use metric_help::describe_metrics;
