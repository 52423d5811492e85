//! Shoal's HTTP API as the workloads use it, with every reply classified as
//! ok / fail (definitely no effect) / info (may or may not have taken effect).

use std::time::Duration;

use anyhow::{bail, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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

#[derive(Clone)]
pub struct Api {
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

fn error_code(body: &Value) -> String {
    body["error"]["code"].as_str().unwrap_or("?").to_string()
}

impl Api {
    pub fn new() -> Result<Api> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(OP_TIMEOUT)
            .connect_timeout(Duration::from_millis(1000))
            .build()?;
        let stream_http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_millis(1000))
            .build()?;
        Ok(Api { http, stream_http })
    }

    /// Classifies the reply of a request with side effects: a 4xx is a
    /// definite failure, a connection refused before sending is too;
    /// anything else that is not a 200 may have been applied.
    async fn mutate(&self, req: reqwest::RequestBuilder) -> std::result::Result<Value, Reply<()>> {
        match req.send().await {
            Err(e) if e.is_connect() => Err(Reply::fail(format!("connect: {e}"))),
            Err(e) if e.is_timeout() => Err(Reply::info("client timeout".into())),
            Err(e) => Err(Reply::info(format!("request: {e}"))),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body: std::result::Result<Value, _> = resp.json().await;
                match (status, body) {
                    (200, Ok(body)) => Ok(body),
                    (200, Err(e)) => Err(Reply::info(format!("200 with an unreadable body: {e}"))),
                    (400..=499, Ok(body)) => {
                        Err(Reply::fail(format!("{status} {}", error_code(&body))))
                    }
                    (400..=499, Err(_)) => Err(Reply::fail(format!("{status}"))),
                    (_, Ok(body)) => Err(Reply::info(format!("{status} {}", error_code(&body)))),
                    (_, Err(_)) => Err(Reply::info(format!("{status}"))),
                }
            }
        }
    }

    /// Linearizable read: `Some(value)`, or `None` if the key does not exist.
    /// Reads have no side effects, so every error is a plain failure.
    pub async fn read(&self, node: usize, key: &str) -> Reply<Option<String>> {
        let resp = match self
            .http
            .get(format!("{}/v1/kv/{key}", api_url(node)))
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                return Reply::fail(if e.is_timeout() {
                    "client timeout".into()
                } else {
                    format!("request: {e}")
                })
            }
        };
        let status = resp.status().as_u16();
        match (status, resp.json::<Value>().await) {
            (200, Ok(body)) => match body["kv"]["value"].as_str() {
                Some(v) => Reply::ok(Some(Some(decode(v))), body["revision"].as_u64()),
                None => Reply::fail(format!("200 without a value: {body}")),
            },
            (404, Ok(body)) if error_code(&body) == "key_not_found" => Reply::ok(Some(None), None),
            (_, Ok(body)) => Reply::fail(format!("{status} {}", error_code(&body))),
            (_, Err(e)) => Reply::fail(format!("{status}: {e}")),
        }
    }

    /// `PUT /v1/kv/{key}`; returns the write's revision.
    pub async fn write(&self, node: usize, key: &str, value: &str) -> Reply<()> {
        let req = self
            .http
            .put(format!("{}/v1/kv/{key}", api_url(node)))
            .body(value.to_string());
        match self.mutate(req).await {
            Ok(body) => Reply::ok(None, body["revision"].as_u64()),
            Err(r) => r,
        }
    }

    /// Compare-and-set by value through `POST /v1/txn`. `succeeded: false`
    /// is a definite failure (error `compare_failed`).
    pub async fn cas(&self, node: usize, key: &str, old: &str, new: &str) -> Reply<()> {
        let body = json!({
            "compare": [{"key": key, "target": "value", "op": "=", "value": B64.encode(old)}],
            "success": [{"put": {"key": key, "value": B64.encode(new)}}],
        });
        let req = self
            .http
            .post(format!("{}/v1/txn", api_url(node)))
            .json(&body);
        match self.mutate(req).await {
            Ok(body) => match body["succeeded"].as_bool() {
                Some(true) => Reply::ok(None, body["revision"].as_u64()),
                Some(false) => Reply {
                    outcome: Outcome::Fail,
                    value: None,
                    revision: body["revision"].as_u64(),
                    error: Some("compare_failed".into()),
                },
                None => Reply::info(format!("txn reply without `succeeded`: {body}")),
            },
            Err(r) => r,
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
        let req = self
            .http
            .put(format!("{}/v1/kv/{key}", api_url(node)))
            .query(&[("lease", lease)])
            .body(value.to_string());
        match self.mutate(req).await {
            Ok(body) => Reply::ok(None, body["revision"].as_u64()),
            Err(r) => r,
        }
    }

    /// `POST /v1/leases`: the new lease's id.
    pub async fn lease_grant(&self, node: usize, ttl_seconds: u64) -> Reply<u64> {
        let req = self
            .http
            .post(format!("{}/v1/leases", api_url(node)))
            .json(&json!({"ttl_seconds": ttl_seconds}));
        match self.mutate(req).await {
            Ok(body) => match body["id"].as_u64() {
                Some(id) => Reply::ok(Some(id), None),
                // It was granted, but we do not know which lease it is.
                None => Reply::info(format!("grant reply without an id: {body}")),
            },
            Err(r) => Reply {
                outcome: r.outcome,
                value: None,
                revision: None,
                error: r.error,
            },
        }
    }

    /// `POST /v1/leases/{id}/keepalive`. A lease that is gone answers 404
    /// `lease_not_found` (a definite failure).
    pub async fn lease_keepalive(&self, node: usize, id: u64) -> Reply<()> {
        let req = self
            .http
            .post(format!("{}/v1/leases/{id}/keepalive", api_url(node)));
        match self.mutate(req).await {
            Ok(_) => Reply::ok(None, None),
            Err(r) => r,
        }
    }

    /// `DELETE /v1/leases/{id}`: revokes the lease and deletes its keys.
    pub async fn lease_revoke(&self, node: usize, id: u64) -> Reply<()> {
        let req = self
            .http
            .delete(format!("{}/v1/leases/{id}", api_url(node)));
        match self.mutate(req).await {
            Ok(body) => Reply::ok(None, body["revision"].as_u64()),
            Err(r) => r,
        }
    }

    /// Every live lease as (id, remaining ms), `GET /v1/leases` (linearizable).
    pub async fn leases(&self, node: usize) -> Result<Vec<(u64, u64)>> {
        let resp = self
            .http
            .get(format!("{}/v1/leases", api_url(node)))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await?;
        if status != 200 {
            bail!("lease list on node {node}: {status} {body}");
        }
        let Some(leases) = body["leases"].as_array() else {
            bail!("lease list on node {node} without `leases`: {body}");
        };
        Ok(leases
            .iter()
            .map(|l| {
                (
                    l["id"].as_u64().unwrap_or(0),
                    l["remaining_ms"].as_u64().unwrap_or(0),
                )
            })
            .collect())
    }

    /// Every key/value under `prefix` (linearizable list, paginated).
    pub async fn list(&self, node: usize, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut req = self
                .http
                .get(format!("{}/v1/kv", api_url(node)))
                .query(&[("prefix", prefix), ("limit", "1000")]);
            if let Some(a) = &after {
                req = req.query(&[("after", a.as_str())]);
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await?;
            if status != 200 {
                bail!("list on node {node}: {status} {body}");
            }
            for kv in body["kvs"].as_array().into_iter().flatten() {
                let key = kv["key"].as_str().unwrap_or("?").to_string();
                out.push((key, kv["value"].as_str().map(decode).unwrap_or_default()));
            }
            if body["more"].as_bool() != Some(true) {
                return Ok(out);
            }
            match body["next_after"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => bail!("list on node {node}: more=true without next_after"),
            }
        }
    }

    /// The whole stored change history of `prefix` from revision 1, by
    /// chaining long-polls until one comes back empty.
    pub async fn poll_all(&self, node: usize, prefix: &str) -> Result<Vec<Batch>> {
        // Long-polls read the node's local state: first make it catch up with
        // the leader's commit index through a linearizable (read-index) list.
        let barrier = self
            .http
            .get(format!("{}/v1/kv", api_url(node)))
            .query(&[("prefix", prefix), ("limit", "1"), ("keys_only", "true")])
            .send()
            .await?;
        if barrier.status().as_u16() != 200 {
            bail!(
                "linearizable list on node {node} before the poll: {}",
                barrier.status()
            );
        }
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
