//! The Rust client for Shoal.
//!
//! This crate owns everything a service needs to use a Shoal cluster over
//! its HTTP API: the replicated key/value store (get, put, delete, list,
//! transactions, history), leases with a background keeper, watches as a
//! `Stream` that resumes across disconnects and node failures without
//! losing or repeating a revision, typed configuration read from a key
//! prefix into a serde type and kept current, publish/subscribe messaging,
//! and log ingest and search, plus [`Client::request_json`] and
//! [`Client::request_events`] for endpoints it does not model. A [`Client`]
//! holds a list of endpoints (any nodes of the cluster) and fails over
//! between them. The API is async and needs a Tokio runtime: watches,
//! subscriptions, lease keepers and the log batcher run in Tokio tasks.
//!
//! ```no_run
//! use futures::StreamExt;
//! use shoal_client::{Client, WatchOptions};
//!
//! # async fn example() -> Result<(), shoal_client::Error> {
//! let client = Client::new(["http://127.0.0.1:7700"])?;
//! client.put("app/mode", "blue").await?;
//! if let Some(kv) = client.get("app/mode").await? {
//!     println!("app/mode = {:?}", kv.value_str());
//! }
//!
//! let mut watch = client.watch(WatchOptions::prefix("app/")).await?;
//! client.put("app/mode", "green").await?;
//! if let Some(batch) = watch.next().await {
//!     let batch = batch?;
//!     println!("revision {}: {} change(s)", batch.revision, batch.events.len());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Only plain `http://` endpoints are supported. Values are bytes; keys are
//! UTF-8 strings.

#![warn(missing_docs)]

mod client;
pub mod config;
mod error;
mod kv;
mod lease;
mod logs;
mod messaging;
mod raw;
mod sse;
mod stream;
mod watch;

pub use client::{Client, ClientBuilder};
pub use config::ConfigWatcher;
pub use error::{Error, Result};
pub use kv::{
    Compare, CompareOp, CompareTarget, Consistency, DeleteOptions, DeleteResponse, Event,
    EventType, GetResponse, HistoryOptions, HistoryResponse, KeyValue, ListOptions, ListResponse,
    PutOptions, PutResponse, Txn, TxnOp, TxnOpResult, TxnResponse,
};
pub use lease::{Lease, LeaseInfo, LeaseKeeper, LeaseStatus, RevokeResponse};
pub use logs::{
    BatcherOptions, BatcherStats, IngestError, IngestResponse, LogBatcher, LogHit, LogRecord,
    SearchQuery, SearchResponse,
};
pub use messaging::{
    BatchReceipt, Message, OutgoingMessage, Overflow, PublishOptions, PublishReceipt,
    SubscribeOptions, Subscription, WorkflowEventReceipt,
};
pub use raw::{RawEvent, RawEvents};
pub use reqwest::Method;
pub use watch::{WatchBatch, WatchOptions, WatchStream};

/// Compiles the Rust snippets of the README as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
