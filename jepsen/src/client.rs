//! Shoal's HTTP API as the workloads use it, with every reply classified as
//! ok / fail (definitely no effect) / info (may or may not have taken effect).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_client::{
    Client, Compare, CompareOp, Consistency, Error, ListOptions, PutOptions, Txn, TxnOp,
};

use crate::cluster::api_url;
use crate::history::Outcome;

/// Client-side limit of one operation. Nodes run with
/// `--request-timeout-ms 2000`, so a live node answers well within this; a
/// paused one does not answer at all.
pub const OP_TIMEOUT: Duration = Duration::from_millis(4000);

/// Result of one operation.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub outcome: Outcome,
    pub value: Option<T>,
    pub revision: Option<u64>,
    pub error: Option<String>,
}

impl<T> Reply<T> {
    fn ok(value: Option<T>, revision: Option<u64>) -> Self {
        Reply {
            outcome: Outcome::Ok,
            value,
            revision,
            error: None,
        }
    }
    fn fail(error: String) -> Self {
        Reply {
            outcome: Outcome::Fail,
            value: None,
            revision: None,
            error: Some(error),
        }
    }
    fn info(error: String) -> Self {
        Reply {
            outcome: Outcome::Info,
            value: None,
            revision: None,
            error: Some(error),
        }
    }
}

/// The API as the workloads use it. Key/value, transaction and lease
/// operations go through `shoal_client`, one client per node with that node
/// as its only endpoint: the workload chooses the node, and a client with a
/// single endpoint sends every request exactly once (no failover, no
/// retries), so each reply says what happened on that node. The watch
/// stream, the long-poll reference read and `/v1/status` stay raw HTTP (the
/// watch workload checks the SSE stream itself: ids, resumption with
/// `Last-Event-ID`, duplicates, which the client's resuming stream hides).
#[derive(Clone)]
pub struct Api {
    /// `nodes[i]` talks to node `i` only.
    nodes: Vec<Client>,
    http: reqwest::Client,
    /// No overall timeout: watch streams last.
    stream_http: reqwest::Client,
}

/// One change event of a watch batch, reduced to what the checker compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    /// Decoded value (puts only).
    pub value: Option<String>,
    pub mod_revision: u64,
}

/// One revision's changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub revision: u64,
    pub events: Vec<ChangeEvent>,
}

impl Batch {
    pub fn from_json(v: &Value) -> Result<Batch> {
        let Some(revision) = v["revision"].as_u64() else {
            bail!("batch without revision: {v}")
        };
        let mut events = Vec::new();
        for e in v["events"].as_array().into_iter().flatten() {
            let kv = &e["kv"];
            events.push(ChangeEvent {
                kind: e["type"].as_str().unwrap_or("?").to_string(),
                key: kv["key"].as_str().unwrap_or("?").to_string(),
                value: kv["value"].as_str().map(decode),
                mod_revision: kv["mod_revision"].as_u64().unwrap_or(0),
            });
        }
        Ok(Batch { revision, events })
    }
}

/// base64 → string (lossy); for values we wrote ourselves (ASCII).
pub fn decode(b64: &str) -> String {
    match B64.decode(b64) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => format!("<bad base64 {b64}>"),
    }
}

/// The server's error code of an error answer (`?` if it has none).
fn error_code(error: &Error) -> &str {
    error.code().unwrap_or("?")
}

/// Classifies a failed request with side effects: a `4xx` answer is a
/// definite failure, and so is a connection refused before anything was
/// sent; anything else (timeout, broken connection, `5xx`, a `200` whose
/// body cannot be read) may have been applied.
fn mutation_failed<T>(error: Error) -> Reply<T> {
    match &error {
        Error::Transport { source, .. } if source.is_connect() => {
            Reply::fail(format!("connect: {source}"))
        }
        Error::Transport { source, .. } if source.is_timeout() => {
            Reply::info("client timeout".into())
        }
        Error::Transport { source, .. } => Reply::info(format!("request: {source}")),
        _ => match error.status() {
            Some(status @ 400..=499) => Reply::fail(format!("{status} {}", error_code(&error))),
            Some(status) => Reply::info(format!("{status} {}", error_code(&error))),
            // A 200 whose body is not the expected answer.
            None if matches!(error, Error::Decode { .. }) => {
                Reply::info(format!("200 with an unreadable body: {error}"))
            }
            // Nothing else happens to a unary request; if it did, whether the
            // request was applied would be unknown.
            None => Reply::info(error.to_string()),
        },
    }
}

/// Describes a failed read (reads have no side effects: always a failure).
fn read_failed<T>(error: Error) -> Reply<T> {
    Reply::fail(match &error {
        Error::Transport { source, .. } if source.is_timeout() => "client timeout".into(),
        Error::Transport { source, .. } => format!("request: {source}"),
        _ => match error.status() {
            Some(status) => format!("{status} {}", error_code(&error)),
            None => format!("200: {error}"),
        },
    })
}

/// Bytes we wrote ourselves (ASCII) as text.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Api {
    /// Clients for nodes `0..n`.
    pub fn new(n: usize) -> Result<Api> {
        let nodes = (0..n)
            .map(|node| {
                Client::builder()
                    .endpoint(api_url(node))
                    .timeout(OP_TIMEOUT)
                    .connect_timeout(Duration::from_millis(1000))
                    .build()
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(OP_TIMEOUT)
            .connect_timeout(Duration::from_millis(1000))
            .build()?;
        let stream_http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_millis(1000))
            .build()?;
        Ok(Api {
            nodes,
            http,
            stream_http,
        })
    }

    /// Linearizable read: `Some(value)`, or `None` if the key does not exist.
    /// Reads have no side effects, so every error is a plain failure.
    pub async fn read(&self, node: usize, key: &str) -> Reply<Option<String>> {
        match self.nodes[node]
            .get_with(key, Consistency::Linearizable)
            .await
        {
            Ok(Some(answer)) => {
                Reply::ok(Some(Some(text(&answer.kv.value))), Some(answer.revision))
            }
            Ok(None) => Reply::ok(Some(None), None),
            Err(e) => read_failed(e),
        }
    }

    /// `PUT /v1/kv/{key}`; returns the write's revision.
    pub async fn write(&self, node: usize, key: &str, value: &str) -> Reply<()> {
        match self.nodes[node].put(key, value).await {
            Ok(answer) => Reply::ok(None, Some(answer.revision)),
            Err(e) => mutation_failed(e),
        }
    }

    /// Compare-and-set by value through `POST /v1/txn`. `succeeded: false`
    /// is a definite failure (error `compare_failed`).
    pub async fn cas(&self, node: usize, key: &str, old: &str, new: &str) -> Reply<()> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, old)])
            .and_then([TxnOp::put(key, new)]);
        match self.nodes[node].txn(&txn).await {
            Ok(answer) if answer.succeeded => Reply::ok(None, Some(answer.revision)),
            Ok(answer) => Reply {
                outcome: Outcome::Fail,
                value: None,
                revision: Some(answer.revision),
                error: Some("compare_failed".into()),
            },
            Err(e) => mutation_failed(e),
        }
    }

    /// `PUT /v1/kv/{key}?lease=ID`: a put that attaches the key to a lease.
    pub async fn put_with_lease(
        &self,
        node: usize,
        key: &str,
        value: &str,
        lease: u64,
    ) -> Reply<()> {
        let options = PutOptions {
            lease: Some(lease),
            ..PutOptions::default()
        };
        match self.nodes[node].put_with(key, value, &options).await {
            Ok(answer) => Reply::ok(None, Some(answer.revision)),
            Err(e) => mutation_failed(e),
        }
    }

    /// `POST /v1/leases`: the new lease's id. An answer without an id is
    /// indeterminate: a lease was granted, but we do not know which.
    pub async fn lease_grant(&self, node: usize, ttl_seconds: u64) -> Reply<u64> {
        match self.nodes[node].lease_grant(ttl_seconds).await {
            Ok(lease) => Reply::ok(Some(lease.id), None),
            Err(e) => mutation_failed(e),
        }
    }

    /// `POST /v1/leases/{id}/keepalive`. A lease that is gone answers 404
    /// `lease_not_found` (a definite failure).
    pub async fn lease_keepalive(&self, node: usize, id: u64) -> Reply<()> {
        match self.nodes[node].lease_keepalive(id).await {
            Ok(_) => Reply::ok(None, None),
            Err(e) => mutation_failed(e),
        }
    }

    /// `DELETE /v1/leases/{id}`: revokes the lease and deletes its keys.
    pub async fn lease_revoke(&self, node: usize, id: u64) -> Reply<()> {
        match self.nodes[node].lease_revoke(id).await {
            Ok(answer) => Reply::ok(None, Some(answer.revision)),
            Err(e) => mutation_failed(e),
        }
    }

    /// Every live lease as (id, remaining ms), `GET /v1/leases` (linearizable).
    pub async fn leases(&self, node: usize) -> Result<Vec<(u64, u64)>> {
        let leases = self.nodes[node]
            .lease_list()
            .await
            .with_context(|| format!("lease list on node {node}"))?;
        Ok(leases.iter().map(|l| (l.id, l.remaining_ms)).collect())
    }

    /// Every key/value under `prefix` (linearizable list, paginated).
    pub async fn list(&self, node: usize, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut options = ListOptions {
            limit: Some(1000),
            ..ListOptions::default()
        };
        loop {
            let page = self.nodes[node]
                .list(prefix, &options)
                .await
                .with_context(|| format!("list on node {node}"))?;
            out.extend(page.kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))));
            if !page.more {
                return Ok(out);
            }
            match page.next_after {
                Some(next) => options.after = Some(next),
                None => bail!("list on node {node}: more=true without next_after"),
            }
        }
    }

    /// The whole stored change history of `prefix` from revision 1, by
    /// chaining long-polls until one comes back empty.
    pub async fn poll_all(&self, node: usize, prefix: &str) -> Result<Vec<Batch>> {
        // Long-polls read the node's local state: first make it catch up with
        // the leader's commit index through a linearizable (read-index) list.
        let barrier = ListOptions {
            limit: Some(1),
            keys_only: true,
            ..ListOptions::default()
        };
        self.nodes[node]
            .list(prefix, &barrier)
            .await
            .with_context(|| format!("linearizable list on node {node} before the poll"))?;
        let mut out = Vec::new();
        let mut from = 1u64;
        loop {
            let resp = self
                .http
                .get(format!("{}/v1/watch/poll", api_url(node)))
                .query(&[
                    ("prefix", prefix),
                    ("timeout_ms", "200"),
                    ("limit", "10000"),
                ])
                .query(&[("from_revision", from)])
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await?;
            if status != 200 {
                bail!("watch poll on node {node}: {status} {body}");
            }
            let batches = body["batches"].as_array().cloned().unwrap_or_default();
            for b in &batches {
                out.push(Batch::from_json(b)?);
            }
            let Some(next) = body["next_revision"].as_u64() else {
                bail!("poll reply without next_revision: {body}")
            };
            if batches.is_empty() {
                return Ok(out);
            }
            if next <= from {
                bail!("poll on node {node} did not advance (from {from}, next {next})");
            }
            from = next;
        }
    }

    /// Opens an SSE watch on `prefix`: from `from_revision`, or after
    /// `last_event_id` when resuming.
    pub async fn watch(
        &self,
        node: usize,
        prefix: &str,
        from_revision: u64,
        last_event_id: Option<u64>,
    ) -> std::result::Result<reqwest::Response, String> {
        let mut req = self
            .stream_http
            .get(format!("{}/v1/watch", api_url(node)))
            .query(&[("prefix", prefix)])
            .query(&[("from_revision", from_revision)]);
        if let Some(last) = last_event_id {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let resp = tokio::time::timeout(OP_TIMEOUT, req.send())
            .await
            .map_err(|_| "timeout opening the stream".to_string())?
            .map_err(|e| format!("request: {e}"))?;
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            let body = tokio::time::timeout(OP_TIMEOUT, resp.text())
                .await
                .ok()
                .and_then(|b| b.ok())
                .unwrap_or_default();
            return Err(format!("{status} {body}"));
        }
        Ok(resp)
    }

    /// A raw JSON request to a node: the status and the body (`null` when
    /// it is not JSON), or why no answer came.
    pub async fn http_json(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> std::result::Result<(u16, Value), String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", api_url(node)));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                format!("connect: {e}")
            } else if e.is_timeout() {
                "client timeout".to_string()
            } else {
                format!("request: {e}")
            }
        })?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// The node's current revision (`/v1/status`).
    pub async fn revision(&self, node: usize) -> Option<u64> {
        let resp = self
            .http
            .get(format!("{}/v1/status", api_url(node)))
            .send()
            .await
            .ok()?;
        let body: Value = resp.json().await.ok()?;
        body["revision"].as_u64()
    }
}
