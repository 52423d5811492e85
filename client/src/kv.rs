//! Key/value operations: get, put, delete, list, transactions, history,
//! rollback and compaction.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::Method;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::client::{encode_path, query, Client, Request, Retry};
use crate::error::{Error, Result};

// In this module rather than error.rs, so that the error type does not
// depend on the KV model (kv.rs already depends on the error type).
impl Error {
    /// For a failed compare-and-set: the key as it is now (`None` if it does
    /// not exist). The server sends it without its value.
    pub fn current_kv(&self) -> Option<KeyValue> {
        match self {
            Error::Api { code, details, .. } if code == "compare_failed" => details
                .get("current")
                .and_then(|v| serde_json::from_value::<KeyValue>(v.clone()).ok()),
            _ => None,
        }
    }
}

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value. Empty where the server sends no value: in write answers,
    /// `prev_kv`, `keys_only` lists and delete events.
    #[serde(default, deserialize_with = "base64_value")]
    pub value: Vec<u8>,
    /// Revision of the key's creation (since its last deletion).
    pub create_revision: u64,
    /// Revision of the key's last change.
    pub mod_revision: u64,
    /// Number of changes since creation (0 after a delete).
    pub version: u64,
    /// Lease the key is attached to (0: none).
    #[serde(default)]
    pub lease: u64,
}

impl KeyValue {
    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

fn base64_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    match text {
        None => Ok(Vec::new()),
        Some(text) => STANDARD.decode(text).map_err(serde::de::Error::custom),
    }
}

/// Read consistency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Read-index through the leader: sees every acknowledged write (default).
    #[default]
    Linearizable,
    /// This node's state as it is, possibly behind; cheaper, works without a leader.
    Stale,
}

impl Consistency {
    fn param(self) -> Option<String> {
        match self {
            Consistency::Linearizable => None,
            Consistency::Stale => Some("stale".into()),
        }
    }
}

/// Answer to a get.
#[derive(Debug, Clone, Deserialize)]
pub struct GetResponse {
    /// The store's revision when read.
    pub revision: u64,
    /// The key, with its value.
    pub kv: KeyValue,
}

/// Options of a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Attach the key to this lease: it is deleted when the lease expires.
    pub lease: Option<u64>,
    /// Write only if the key's `mod_revision` is this (0: only if the key
    /// does not exist). A mismatch is [`Error::is_compare_failed`].
    pub if_revision: Option<u64>,
}

/// Answer to a put.
#[derive(Debug, Clone, Deserialize)]
pub struct PutResponse {
    /// The revision of this write.
    pub revision: u64,
    /// The key as written (without its value).
    pub kv: KeyValue,
    /// The key before the write (without its value), if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Delete every key starting with the given key.
    pub prefix: bool,
    /// Delete only if the key's `mod_revision` is this (not with `prefix`).
    pub if_revision: Option<u64>,
}

/// Answer to a delete.
#[derive(Debug, Clone, Deserialize)]
pub struct DeleteResponse {
    /// The revision of this delete (the current one if nothing was deleted).
    pub revision: u64,
    /// How many keys were deleted.
    pub deleted: u64,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Page size, 1..=1000 (server default 100).
    pub limit: Option<u32>,
    /// Start after this key (the previous page's `next_after`).
    pub after: Option<String>,
    /// Leave the values out.
    pub keys_only: bool,
    /// Read consistency.
    pub consistency: Consistency,
}

/// One page of a list.
#[derive(Debug, Clone, Deserialize)]
pub struct ListResponse {
    /// The store's revision when read.
    pub revision: u64,
    /// Keys in byte order.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys follow.
    pub more: bool,
    /// Pass as [`ListOptions::after`] for the next page.
    pub next_after: Option<String>,
}

/// Kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// Put or delete.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The key after the change (a delete has no value and version 0).
    pub kv: KeyValue,
}

/// Options of a history read.
#[derive(Debug, Clone, Default)]
pub struct HistoryOptions {
    /// Most events to return, 1..=1000.
    pub limit: Option<u32>,
    /// Only events before this revision (for paging backwards).
    pub before: Option<u64>,
    /// Read consistency.
    pub consistency: Consistency,
}

/// A key's past changes, newest first.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryResponse {
    /// The key.
    pub key: String,
    /// The store's revision when read.
    pub revision: u64,
    /// History before this revision is gone.
    pub compact_revision: u64,
    /// The changes, newest first.
    #[serde(rename = "history")]
    pub events: Vec<Event>,
}

/// A comparison operator of a transaction guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

impl CompareOp {
    fn symbol(self) -> &'static str {
        match self {
            CompareOp::Equal => "=",
            CompareOp::NotEqual => "!=",
            CompareOp::Less => "<",
            CompareOp::Greater => ">",
        }
    }
}

/// What a transaction guard looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's `mod_revision` (0 for a key that does not exist).
    ModRevision(u64),
    /// The key's `create_revision`.
    CreateRevision(u64),
    /// The key's `version`.
    Version(u64),
    /// The key's value (only `=` and `!=`).
    Value(Vec<u8>),
}

/// One guard of a transaction: `key`'s target `op` the given value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    key: String,
    op: CompareOp,
    target: CompareTarget,
}

impl Compare {
    /// A guard on any target.
    pub fn new(key: impl Into<String>, op: CompareOp, target: CompareTarget) -> Compare {
        Compare {
            key: key.into(),
            op,
            target,
        }
    }

    /// `mod_revision(key) op revision`; `(key, Equal, 0)` means "does not exist".
    pub fn mod_revision(key: impl Into<String>, op: CompareOp, revision: u64) -> Compare {
        Compare::new(key, op, CompareTarget::ModRevision(revision))
    }

    /// `create_revision(key) op revision`.
    pub fn create_revision(key: impl Into<String>, op: CompareOp, revision: u64) -> Compare {
        Compare::new(key, op, CompareTarget::CreateRevision(revision))
    }

    /// `version(key) op version`.
    pub fn version(key: impl Into<String>, op: CompareOp, version: u64) -> Compare {
        Compare::new(key, op, CompareTarget::Version(version))
    }

    /// `value(key) op value` (`Equal` or `NotEqual`).
    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<Vec<u8>>) -> Compare {
        Compare::new(key, op, CompareTarget::Value(value.into()))
    }

    fn to_json(&self) -> Value {
        let (target, value) = match &self.target {
            CompareTarget::ModRevision(n) => ("mod_revision", json!(n)),
            CompareTarget::CreateRevision(n) => ("create_revision", json!(n)),
            CompareTarget::Version(n) => ("version", json!(n)),
            CompareTarget::Value(bytes) => ("value", json!(STANDARD.encode(bytes))),
        };
        json!({"key": self.key, "target": target, "op": self.op.symbol(), "value": value})
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Write a key (lease 0: none).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Lease to attach, 0 for none.
        lease: u64,
    },
    /// Delete a key, or every key with this prefix.
    Delete {
        /// The key or prefix.
        key: String,
        /// Treat `key` as a prefix.
        prefix: bool,
    },
    /// Read a key.
    Get {
        /// The key.
        key: String,
    },
}

impl TxnOp {
    /// A put without a lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    /// A delete of one key.
    pub fn delete(key: impl Into<String>) -> TxnOp {
        TxnOp::Delete {
            key: key.into(),
            prefix: false,
        }
    }

    /// A get.
    pub fn get(key: impl Into<String>) -> TxnOp {
        TxnOp::Get { key: key.into() }
    }

    fn to_json(&self) -> Value {
        match self {
            TxnOp::Put { key, value, lease } => {
                json!({"put": {"key": key, "value": STANDARD.encode(value), "lease": lease}})
            }
            TxnOp::Delete { key, prefix } => json!({"delete": {"key": key, "prefix": prefix}}),
            TxnOp::Get { key } => json!({"get": {"key": key}}),
        }
    }
}

/// An atomic transaction: if every compare holds, the `success` operations
/// apply, else the `failure` ones; either way as one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    compare: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds guards (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.compare.extend(compares);
        self
    }

    /// Adds operations to apply when every guard holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.success.extend(ops);
        self
    }

    /// Adds operations to apply when a guard fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.failure.extend(ops);
        self
    }

    fn to_json(&self) -> Value {
        let ops = |ops: &[TxnOp]| ops.iter().map(TxnOp::to_json).collect::<Vec<_>>();
        json!({
            "compare": self.compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": ops(&self.success),
            "failure": ops(&self.failure),
        })
    }
}

/// The result of one transaction operation, in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOpResult {
    /// A put: the key as written and before (both without values).
    Put {
        /// The key as written.
        kv: KeyValue,
        /// The key before, if it existed.
        prev_kv: Option<KeyValue>,
    },
    /// A delete: how many keys went.
    Delete {
        /// Keys deleted.
        deleted: u64,
    },
    /// A get: the key with its value, if it exists.
    Get {
        /// The key.
        kv: Option<KeyValue>,
    },
}

/// Answer to a transaction.
#[derive(Debug, Clone, Deserialize)]
pub struct TxnResponse {
    /// Whether every guard held (so the success branch ran).
    pub succeeded: bool,
    /// The revision after the transaction.
    pub revision: u64,
    /// One result per operation of the branch that ran.
    pub results: Vec<TxnOpResult>,
}

#[derive(Deserialize)]
struct RollbackAnswer {
    revision: u64,
    kv: Option<KeyValue>,
}

#[derive(Deserialize)]
struct CompactAnswer {
    compact_revision: u64,
}

impl Client {
    /// Reads a key (linearizable); `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self
            .get_with(key, Consistency::Linearizable)
            .await?
            .map(|r| r.kv))
    }

    /// Reads a key with the given consistency; `None` if it does not exist.
    pub async fn get_with(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<GetResponse>> {
        let path = format!(
            "/v1/kv/{}{}",
            encode_path(key),
            query(&[("consistency", consistency.param())])
        );
        match self.call_json(Request::get(path), "get answer").await {
            Ok(answer) => Ok(Some(answer)),
            Err(e) if e.code() == Some("key_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a key.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<PutResponse> {
        self.put_with(key, value, &PutOptions::default()).await
    }

    /// Writes a key with a lease and/or a compare-and-set guard.
    pub async fn put_with(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: &PutOptions,
    ) -> Result<PutResponse> {
        let path = format!(
            "/v1/kv/{}{}",
            encode_path(key),
            query(&[
                ("lease", options.lease.map(|l| l.to_string())),
                ("if_revision", options.if_revision.map(|r| r.to_string())),
            ])
        );
        let retry = match options.if_revision {
            None => Retry::Idempotent,
            Some(_) => Retry::Once,
        };
        let request =
            Request::new(Method::PUT, path, retry).body(value.into(), "application/octet-stream");
        self.call_json(request, "put answer").await
    }

    /// Deletes a key (not an error if it does not exist: `deleted` is 0).
    pub async fn delete(&self, key: &str) -> Result<DeleteResponse> {
        self.delete_with(key, &DeleteOptions::default()).await
    }

    /// Deletes every key with this prefix.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<DeleteResponse> {
        let options = DeleteOptions {
            prefix: true,
            if_revision: None,
        };
        self.delete_with(prefix, &options).await
    }

    /// Deletes with options.
    pub async fn delete_with(&self, key: &str, options: &DeleteOptions) -> Result<DeleteResponse> {
        let path = format!(
            "/v1/kv/{}{}",
            encode_path(key),
            query(&[
                ("prefix", options.prefix.then(|| "true".to_string())),
                ("if_revision", options.if_revision.map(|r| r.to_string())),
            ])
        );
        let retry = match options.if_revision {
            None => Retry::Idempotent,
            Some(_) => Retry::Once,
        };
        self.call_json(Request::new(Method::DELETE, path, retry), "delete answer")
            .await
    }

    /// One page of the keys starting with `prefix`, in byte order.
    pub async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResponse> {
        let path = format!(
            "/v1/kv{}",
            query(&[
                ("prefix", Some(prefix.to_string())),
                ("limit", options.limit.map(|l| l.to_string())),
                ("after", options.after.clone()),
                ("keys_only", options.keys_only.then(|| "true".to_string())),
                ("consistency", options.consistency.param()),
            ])
        );
        self.call_json(Request::get(path), "list answer").await
    }

    /// Every key starting with `prefix`, reading page after page; returns
    /// the keys and the revision of the first page. Pages are separate
    /// reads, so later pages may include changes made after that revision.
    pub async fn list_all(&self, prefix: &str) -> Result<(u64, Vec<KeyValue>)> {
        let mut options = ListOptions {
            limit: Some(1000),
            ..ListOptions::default()
        };
        let mut kvs = Vec::new();
        let mut revision = None;
        loop {
            let page = self.list(prefix, &options).await?;
            revision.get_or_insert(page.revision);
            kvs.extend(page.kvs);
            match (page.more, page.next_after) {
                (true, Some(after)) => options.after = Some(after),
                _ => break,
            }
        }
        Ok((revision.unwrap_or(0), kvs))
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        let request =
            Request::new(Method::POST, "/v1/txn".into(), Retry::Once).json(&txn.to_json());
        self.call_json(request, "txn answer").await
    }

    /// A key's past changes, newest first.
    pub async fn history(&self, key: &str, options: &HistoryOptions) -> Result<HistoryResponse> {
        let path = format!(
            "/v1/history/{}{}",
            encode_path(key),
            query(&[
                ("limit", options.limit.map(|l| l.to_string())),
                ("before", options.before.map(|r| r.to_string())),
                ("consistency", options.consistency.param()),
            ])
        );
        self.call_json(Request::get(path), "history answer").await
    }

    /// Writes the key's value of `revision` again, as a new revision; returns
    /// the new revision and the key (`None` if it was deleted at `revision`).
    pub async fn rollback(&self, key: &str, revision: u64) -> Result<(u64, Option<KeyValue>)> {
        let path = format!("/v1/rollback/{}", encode_path(key));
        let request =
            Request::new(Method::POST, path, Retry::Once).json(&json!({ "revision": revision }));
        let answer: RollbackAnswer = self.call_json(request, "rollback answer").await?;
        Ok((answer.revision, answer.kv))
    }

    /// Drops history before `revision`; returns the compaction point.
    pub async fn compact(&self, revision: u64) -> Result<u64> {
        let request = Request::new(Method::POST, "/v1/compact".into(), Retry::Idempotent)
            .json(&json!({ "revision": revision }));
        let answer: CompactAnswer = self.call_json(request, "compact answer").await?;
        Ok(answer.compact_revision)
    }
}

/// Decodes a base64 value as the API sends it.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>> {
    STANDARD
        .decode(text)
        .map_err(|e| Error::decode("base64 value", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_json_matches_the_api() {
        let txn = Txn::new()
            .when([Compare::mod_revision("a", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("a", "x")])
            .or_else([TxnOp::get("a")]);
        assert_eq!(
            txn.to_json(),
            json!({
                "compare": [{"key": "a", "target": "mod_revision", "op": "=", "value": 0}],
                "success": [{"put": {"key": "a", "value": "eA==", "lease": 0}}],
                "failure": [{"get": {"key": "a"}}],
            })
        );
    }

    #[test]
    fn key_values_decode() {
        let kv: KeyValue = serde_json::from_value(json!({
            "key": "k", "value": "aGk=", "create_revision": 1, "mod_revision": 2, "version": 2, "lease": 0
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kv.value_str(), Some("hi"));
    }
}
