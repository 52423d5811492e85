//! Key/value endpoints: put, get, delete, list, transactions, history,
//! rollback and compaction.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_storage::kv::{
    Command, Compare, CompareOp, CompareTarget, OpResult, Response as SmResponse, Txn, TxnOp,
};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorCode};
use super::extract::{check_value, check_writable, Body, JsonBody, KeyPath, Params};
use super::model::{kv_json, DeleteResponse, EventJson, KeyValueJson};
use crate::services::shoal::Shoal;

mod txn;

use txn::{parse_compare, parse_ops, TxnBody, TxnResponse, TxnResultJson, MAX_TXN_OPS};

/// A JSON response with the `X-Shoal-Revision` header.
pub fn with_revision(revision: u64, body: impl Serialize) -> Response {
    ([("x-shoal-revision", revision.to_string())], Json(body)).into_response()
}

/// `GET /v1/kv/{key}`: the key with its value.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "revision": 9,
    "kv": {
        "key": "prod/payments/url",
        "value": "aHR0cDovL3g=",
        "create_revision": 4,
        "mod_revision": 9,
        "version": 3,
        "lease": 0
    }
}))]
pub struct GetKeyResponse {
    /// Current store revision.
    pub revision: u64,
    /// The key, including `value`.
    pub kv: KeyValueJson,
}

/// `PUT /v1/kv/{key}`: the write's revision and the key before and after it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "revision": 10,
    "kv": {"key": "prod/payments/url", "create_revision": 4, "mod_revision": 10, "version": 4, "lease": 0},
    "prev_kv": {"key": "prod/payments/url", "create_revision": 4, "mod_revision": 9, "version": 3, "lease": 0}
}))]
pub struct PutResponse {
    /// The write's revision.
    pub revision: u64,
    /// The key after the write (without value).
    pub kv: KeyValueJson,
    /// The key before the write (without value), or null if it did not exist.
    #[schema(required = true)]
    pub prev_kv: Option<KeyValueJson>,
}

/// `GET /v1/kv`: one page of keys.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "revision": 9,
    "kvs": [{"key": "prod/payments/url", "value": "aHR0cDovL3g=", "create_revision": 4, "mod_revision": 9, "version": 3, "lease": 0}],
    "more": false,
    "next_after": null
}))]
pub struct ListResponse {
    /// The revision the page was read at.
    pub revision: u64,
    /// Keys in byte order; without `value` if `keys_only`.
    #[schema(max_items = 1000)]
    pub kvs: Vec<KeyValueJson>,
    /// Whether more keys follow.
    pub more: bool,
    /// The last key of this page if `more`, else null; pass it as `after`.
    #[schema(required = true)]
    pub next_after: Option<String>,
}

/// `GET /v1/history/{key}`: the key's retained changes, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    pub key: String,
    /// Current store revision.
    pub revision: u64,
    /// The compaction point; changes before it are not retained.
    pub compact_revision: u64,
    /// Newest first.
    #[schema(max_items = 1000)]
    pub history: Vec<EventJson>,
}

/// `POST /v1/rollback/{key}`: the rollback's revision and the key after it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "revision": 14,
    "kv": {"key": "prod/payments/url", "create_revision": 4, "mod_revision": 14, "version": 5, "lease": 0}
}))]
pub struct RollbackResponse {
    /// The rollback's new revision.
    pub revision: u64,
    /// The key after the rollback (without value), or null if it was deleted
    /// because it did not exist at the target revision.
    #[schema(required = true)]
    pub kv: Option<KeyValueJson>,
}

/// `POST /v1/compact`: the compaction point after the request.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"compact_revision": 1000}))]
pub struct CompactResponse {
    /// Oldest revision whose history is still available.
    pub compact_revision: u64,
}

fn compare_failed(current: Option<&OpResult>) -> ApiError {
    let current = match current {
        Some(OpResult::Get { kv: Some(kv) }) => kv_json(kv, false),
        _ => Value::Null,
    };
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::CompareFailed,
        "the key's mod_revision is not the expected one",
    )
    .with("current", current)
}

/// A guarded single-key transaction: `op` if `if_revision` holds, else read the key.
fn guarded(key: &str, if_revision: Option<u64>, op: TxnOp) -> Txn {
    let compare = if_revision
        .map(|revision| Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(revision),
        })
        .into_iter()
        .collect();
    Txn {
        compare,
        success: vec![op],
        failure: vec![TxnOp::Get { key: key.into() }],
    }
}

#[utoipa::path(
    put,
    path = "/v1/kv/{*key}",
    tag = "kv",
    operation_id = "putKey",
    request_body(content = inline(Body), content_type = "application/octet-stream", description = "The raw value bytes (any Content-Type is accepted; may be empty). At most `--max-value-bytes` (default 1 MiB = 1048576 bytes)."),
    summary = "Write one key",
    description = "Sets the key to the raw request body. With `if_revision=N` the write is a compare-and-set: it applies only if the key's `mod_revision` is N (`0` = only if the key does not exist, i.e. create-only); otherwise 409 `compare_failed` with the key's current metadata (or null) in `error.current`. With `lease=ID` the key is attached to the lease and deleted when it expires or is revoked.",
    params(
        ("key" = String, Path, description = "The key: the whole rest of the path after the prefix, a `/`-separated path that may contain slashes (e.g. `/v1/kv/prod/payments/url` is key `prod/payments/url`). Percent-encoded bytes are decoded. 1..1024 bytes of UTF-8 without control characters: empty, control characters or invalid UTF-8 → 400 `invalid_key`; over 1024 bytes → 413 `key_too_large`."),
        ("lease" = Option<u64>, Query, description = "Lease id to attach the key to; 0 (default) = no lease. Not a non-negative integer → 400 `bad_request`; unknown/expired lease → 404 `lease_not_found`."),
        ("if_revision" = Option<u64>, Query, description = "Compare-and-set: write only if the key's `mod_revision` equals this (0 = key must not exist). Not a non-negative integer → 400 `invalid_revision`."),
    ),
    responses(
        (status = 200, description = "Written; a new revision.", body = PutResponse, headers(("X-Shoal-Revision" = u64, description = "The current cluster revision (on successful responses that read or write the store)."))),
        (status = 400, description = "Invalid key or query parameter. `invalid_key`: the key in the path is empty, contains a control character (e.g. NUL), or is not valid UTF-8 after percent-decoding. `invalid_revision`: `if_revision` is not a non-negative integer. `bad_request`: `lease` is not a non-negative integer, malformed query string, or the body could not be read. `reserved_key`: the key is under `_shoal/`, which holds the messaging configuration (written only through /v1/webhooks, /v1/routes and /v1/bridges). Error codes: `invalid_key`, `invalid_revision`, `bad_request`, `reserved_key`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The `lease` does not exist or has expired. Error codes: `lease_not_found`.", body = crate::api::error::ErrorBody),
        (status = 409, description = "`if_revision` did not hold; `error.current` is the key's current metadata (without value) or null if it does not exist. Error codes: `compare_failed`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "Too large. `key_too_large`: the key is longer than 1024 bytes. `value_too_large`: the body is larger than `--max-value-bytes` (default 1 MiB). `payload_too_large`: the request body exceeds the body limit (2 × `--max-value-bytes` + 64 KiB; 2 MiB + 64 KiB by default). Error codes: `key_too_large`, `value_too_large`, `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn put(
    State(shoal): State<Arc<Shoal>>,
    KeyPath(key): KeyPath,
    params: Params,
    Body(value): Body,
) -> ApiResult<Response> {
    check_writable(&key, false)?;
    check_value(&shoal, value.len())?;
    let lease = params.number("lease")?.unwrap_or(0);
    let if_revision = params.revision("if_revision")?;
    let op = TxnOp::Put {
        key: key.clone(),
        value: value.to_vec(),
        lease,
    };
    let (succeeded, revision, results) = shoal.txn(guarded(&key, if_revision, op)).await?;
    match results.first() {
        Some(OpResult::Put { kv, prev }) if succeeded => Ok(with_revision(
            revision,
            PutResponse {
                revision,
                kv: KeyValueJson::new(kv, false),
                prev_kv: prev.as_ref().map(|p| KeyValueJson::new(p, false)),
            },
        )),
        current => Err(compare_failed(current)),
    }
}

#[utoipa::path(
    get,
    path = "/v1/kv/{*key}",
    tag = "kv",
    operation_id = "getKey",
    summary = "Read one key",
    description = "Reads the key with its value (base64). Linearizable by default (confirms leadership with a quorum first; a follower answers 503 `unavailable` naming the leader); `consistency=stale` serves this node's local state.",
    params(
        ("key" = String, Path, description = "The key: the whole rest of the path after the prefix, a `/`-separated path that may contain slashes (e.g. `/v1/kv/prod/payments/url` is key `prod/payments/url`). Percent-encoded bytes are decoded. 1..1024 bytes of UTF-8 without control characters: empty, control characters or invalid UTF-8 → 400 `invalid_key`; over 1024 bytes → 413 `key_too_large`."),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default): confirm leadership with a quorum first (a non-leader answers 503 `unavailable`). `stale`: serve this node's local state. Anything else → 400 `bad_request`."),
    ),
    responses(
        (status = 200, description = "The key.", body = GetKeyResponse, headers(("X-Shoal-Revision" = u64, description = "The current cluster revision (on successful responses that read or write the store)."))),
        (status = 400, description = "Invalid key or query parameter. `invalid_key`: the key in the path is empty, contains a control character (e.g. NUL), or is not valid UTF-8 after percent-decoding. `bad_request`: bad `consistency` or malformed query string. Error codes: `invalid_key`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The key does not exist. Error codes: `key_not_found`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "`key_too_large`: the key is longer than 1024 bytes. Error codes: `key_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn get(
    State(shoal): State<Arc<Shoal>>,
    KeyPath(key): KeyPath,
    params: Params,
) -> ApiResult<Response> {
    shoal.read_barrier(params.stale()?).await?;
    let wanted = key.clone();
    let (counters, kv) = shoal.read(move |store| store.kv_get(&wanted)).await?;
    match kv {
        Some(kv) => Ok(with_revision(
            counters.revision,
            GetKeyResponse {
                revision: counters.revision,
                kv: KeyValueJson::new(&kv, true),
            },
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::KeyNotFound,
            format!("key {key:?} does not exist"),
        )),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/kv/{*key}",
    tag = "kv",
    operation_id = "deleteKey",
    summary = "Delete a key or a prefix",
    description = "Deletes the key, or with `prefix=true` every key starting with `{key}` (one revision). Deleting a missing key gives 200 with `deleted: 0` and does not create a revision (`revision` is then the current one). With `if_revision=N` the delete applies only if the key's `mod_revision` is N, else 409 `compare_failed`. `if_revision` cannot be combined with `prefix=true`.",
    params(
        ("key" = String, Path, description = "The key: the whole rest of the path after the prefix, a `/`-separated path that may contain slashes (e.g. `/v1/kv/prod/payments/url` is key `prod/payments/url`). Percent-encoded bytes are decoded. 1..1024 bytes of UTF-8 without control characters: empty, control characters or invalid UTF-8 → 400 `invalid_key`; over 1024 bytes → 413 `key_too_large`."),
        ("prefix" = Option<String>, Query, description = "`true`/`1` (or present without a value): delete every key starting with `{key}`. Default false. Anything other than true/false/1/0 → 400 `bad_request`."),
        ("if_revision" = Option<u64>, Query, description = "Delete only if the key's `mod_revision` equals this. Not a non-negative integer → 400 `invalid_revision`; combined with `prefix=true` → 400 `bad_request`."),
    ),
    responses(
        (status = 200, description = "Deleted (possibly nothing).", body = DeleteResponse, headers(("X-Shoal-Revision" = u64, description = "The current cluster revision (on successful responses that read or write the store)."))),
        (status = 400, description = "Invalid key or query parameter. `invalid_key`: the key in the path is empty, contains a control character (e.g. NUL), or is not valid UTF-8 after percent-decoding. `invalid_revision`: bad `if_revision`. `bad_request`: bad `prefix` flag, `if_revision` with `prefix=true`, malformed query string. `reserved_key`: the key is under `_shoal/`, or a prefix delete would cover `_shoal/` (the messaging configuration, changed only through /v1/webhooks, /v1/routes and /v1/bridges). Error codes: `invalid_key`, `invalid_revision`, `bad_request`, `reserved_key`.", body = crate::api::error::ErrorBody),
        (status = 409, description = "`if_revision` did not hold; `error.current` is the key's current metadata (without value) or null. Error codes: `compare_failed`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "`key_too_large`: the key is longer than 1024 bytes. Error codes: `key_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn delete(
    State(shoal): State<Arc<Shoal>>,
    KeyPath(key): KeyPath,
    params: Params,
) -> ApiResult<Response> {
    let prefix = params.flag("prefix")?;
    let if_revision = params.revision("if_revision")?;
    if prefix && if_revision.is_some() {
        return Err(ApiError::bad_request(
            "if_revision cannot be combined with prefix=true",
        ));
    }
    check_writable(&key, prefix)?;
    let op = TxnOp::Delete {
        key: key.clone(),
        prefix,
    };
    let (succeeded, revision, results) = shoal.txn(guarded(&key, if_revision, op)).await?;
    match results.first() {
        Some(OpResult::Delete { deleted }) if succeeded => Ok(with_revision(
            revision,
            DeleteResponse {
                revision,
                deleted: *deleted,
            },
        )),
        current => Err(compare_failed(current)),
    }
}

#[utoipa::path(
    get,
    path = "/v1/kv",
    tag = "kv",
    operation_id = "listKeys",
    summary = "List keys by prefix",
    description = "Lists keys starting with `prefix` (all keys if empty or absent) in byte order, starting strictly after key `after`. Paginate by passing `next_after` from the previous page as `after` while `more` is true. Responses carry `X-Shoal-Revision`; the body's `revision` is the revision the page was read at (use it + 1 as `from_revision` to watch from a listing).",
    params(
        ("prefix" = Option<String>, Query, description = "Only keys starting with this string. Empty or absent: every key."),
        ("after" = Option<String>, Query, description = "Start strictly after this key (exclusive); use `next_after` of the previous page."),
        ("limit" = Option<u64>, Query, description = "Page size, 1..1000 (default 100). Out of range → 400 `bad_request`."),
        ("keys_only" = Option<String>, Query, description = "`true`/`1` (or present without a value): omit the `value` fields. `false`/`0` or absent: include values. Anything else → 400 `bad_request`."),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default): confirm leadership with a quorum first (a non-leader answers 503 `unavailable`). `stale`: serve this node's local state. Anything else → 400 `bad_request`."),
    ),
    responses(
        (status = 200, description = "One page of keys.", body = ListResponse, headers(("X-Shoal-Revision" = u64, description = "The current cluster revision (on successful responses that read or write the store)."))),
        (status = 400, description = "Bad query parameter (`limit` out of 1..1000 or not an integer, bad `keys_only` or `consistency`, malformed query string). Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn list(State(shoal): State<Arc<Shoal>>, params: Params) -> ApiResult<Response> {
    let prefix = params.string("prefix").unwrap_or("").to_string();
    let after = params.string("after").map(str::to_string);
    let limit = params.limit(100, 1000)?;
    let keys_only = params.flag("keys_only")?;
    shoal.read_barrier(params.stale()?).await?;
    let (counters, kvs, more) = shoal
        .read(move |store| store.kv_range(&prefix, after.as_deref(), limit))
        .await?;
    let next_after = if more {
        kvs.last().map(|kv| kv.key.clone())
    } else {
        None
    };
    let kvs = kvs
        .iter()
        .map(|kv| KeyValueJson::new(kv, !keys_only))
        .collect();
    Ok(with_revision(
        counters.revision,
        ListResponse {
            revision: counters.revision,
            kvs,
            more,
            next_after,
        },
    ))
}

#[utoipa::path(
    post,
    path = "/v1/txn",
    tag = "kv",
    operation_id = "txn",
    request_body(content = TxnBody, content_type = "application/json", description = "Compares and the operations of both branches. Parsed as JSON regardless of the Content-Type; unknown fields are rejected."),
    summary = "Atomic multi-key transaction",
    description = "If every `compare` holds, the `success` operations run, else the `failure` operations; atomically, as one revision (only if something was written). A missing key has 0 for every revision target and an empty value. Limits: at most 128 compares and 128 operations per branch (more → 400 `bad_request`); each put value at most `--max-value-bytes` after base64 decoding. A failed compare is not an error: the response has `succeeded: false`. The body is parsed as JSON regardless of its Content-Type; unknown fields are rejected (`bad_request`).",
    responses(
        (status = 200, description = "The transaction ran (check `succeeded`).", body = TxnResponse, headers(("X-Shoal-Revision" = u64, description = "The current cluster revision (on successful responses that read or write the store)."))),
        (status = 400, description = "`bad_request`: malformed JSON or unknown field, more than 128 compares or operations in a branch, bad compare `op`/`target`, non-integer compare value for a revision target, `<`/`>` on a value compare, bad base64. `invalid_key`: an empty key or one with a control character. `reserved_key`: a put or delete of a key under `_shoal/`, or a prefix delete covering `_shoal/` (the messaging configuration, changed only through /v1/webhooks, /v1/routes and /v1/bridges). Error codes: `bad_request`, `invalid_key`, `reserved_key`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "A put names a lease that does not exist (nothing is written). Error codes: `lease_not_found`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "Too large. `key_too_large`: a key is longer than 1024 bytes. `value_too_large`: a decoded put value exceeds `--max-value-bytes`. `payload_too_large`: the request body exceeds the body limit (2 × `--max-value-bytes` + 64 KiB; 2 MiB + 64 KiB by default). Error codes: `key_too_large`, `value_too_large`, `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn txn(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    JsonBody(body): JsonBody<TxnBody>,
) -> ApiResult<Response> {
    if body.compare.len() > MAX_TXN_OPS {
        return Err(ApiError::bad_request(format!(
            "compare has {} entries; the limit is {MAX_TXN_OPS}",
            body.compare.len()
        )));
    }
    let compare = body
        .compare
        .into_iter()
        .map(parse_compare)
        .collect::<ApiResult<Vec<_>>>()?;
    let success = parse_ops(&shoal, body.success, "success")?;
    let failure = parse_ops(&shoal, body.failure, "failure")?;
    let txn = Txn {
        compare,
        success,
        failure,
    };
    txn::check_access(&caller, &txn)?;
    let (succeeded, revision, results) = shoal.txn(txn).await?;
    Ok(with_revision(
        revision,
        TxnResponse {
            succeeded,
            revision,
            results: results.iter().map(TxnResultJson::from).collect(),
        },
    ))
}

#[utoipa::path(
    get,
    path = "/v1/history/{*key}",
    tag = "kv",
    operation_id = "getHistory",
    summary = "Change history of a key",
    description = "The retained changes to the key, newest first: put events (with value) and delete events. With `before=R` only changes with revision < R. History older than `compact_revision` is no longer available (it is simply absent; no 410). 404 `key_not_found` only if the key does not exist, has no retained history, and `before` is not given.",
    params(
        ("key" = String, Path, description = "The key: the whole rest of the path after the prefix, a `/`-separated path that may contain slashes (e.g. `/v1/kv/prod/payments/url` is key `prod/payments/url`). Percent-encoded bytes are decoded. 1..1024 bytes of UTF-8 without control characters: empty, control characters or invalid UTF-8 → 400 `invalid_key`; over 1024 bytes → 413 `key_too_large`."),
        ("limit" = Option<u64>, Query, description = "Maximum number of events, 1..1000 (default 100). Out of range → 400 `bad_request`."),
        ("before" = Option<u64>, Query, description = "Only changes with revision strictly less than this. Not a non-negative integer → 400 `invalid_revision`."),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default): confirm leadership with a quorum first (a non-leader answers 503 `unavailable`). `stale`: serve this node's local state. Anything else → 400 `bad_request`."),
    ),
    responses(
        (status = 200, description = "The key's history, newest first.", body = HistoryResponse, headers(("X-Shoal-Revision" = u64, description = "The current cluster revision (on successful responses that read or write the store)."))),
        (status = 400, description = "Invalid key or query parameter. `invalid_key`: the key in the path is empty, contains a control character (e.g. NUL), or is not valid UTF-8 after percent-decoding. `invalid_revision`: bad `before`. `bad_request`: bad `limit` or `consistency`, malformed query string. Error codes: `invalid_key`, `invalid_revision`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The key does not exist and has no retained history. Error codes: `key_not_found`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "`key_too_large`: the key is longer than 1024 bytes. Error codes: `key_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn history(
    State(shoal): State<Arc<Shoal>>,
    KeyPath(key): KeyPath,
    params: Params,
) -> ApiResult<Response> {
    let limit = params.limit(100, 1000)?;
    let before = params.revision("before")?;
    shoal.read_barrier(params.stale()?).await?;
    let wanted = key.clone();
    let (counters, events, exists) = shoal
        .read(move |store| {
            let (counters, events) = store.kv_history(&wanted, before, limit)?;
            let exists = store.kv_get(&wanted)?.1.is_some();
            Ok((counters, events, exists))
        })
        .await?;
    if events.is_empty() && !exists && before.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::KeyNotFound,
            format!("key {key:?} has no history"),
        ));
    }
    Ok(with_revision(
        counters.revision,
        HistoryResponse {
            key,
            revision: counters.revision,
            compact_revision: counters.compact_revision,
            history: events.iter().map(EventJson::from).collect(),
        },
    ))
}

/// A revision to roll back to or compact up to.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RevisionRequest)]
pub struct RevisionBody {
    /// A store revision.
    revision: u64,
}

#[utoipa::path(
    post,
    path = "/v1/rollback/{*key}",
    tag = "kv",
    operation_id = "rollbackKey",
    request_body(content = RevisionBody, content_type = "application/json", description = "The revision whose value to restore. Parsed as JSON regardless of the Content-Type; unknown fields are rejected.", example = json!({"revision": 5})),
    summary = "Restore a key's value as of a revision",
    description = "Writes the value the key had at `revision` as a new put (a new revision, no lease). If the key did not exist at that revision it is deleted and `kv` is null. 410 `compacted` if the revision is older than the compaction point (or the answer was erased by compaction); 400 `invalid_revision` if it is in the future. The body is parsed as JSON regardless of its Content-Type; unknown fields are rejected (`bad_request`).",
    params(
        ("key" = String, Path, description = "The key: the whole rest of the path after the prefix, a `/`-separated path that may contain slashes (e.g. `/v1/kv/prod/payments/url` is key `prod/payments/url`). Percent-encoded bytes are decoded. 1..1024 bytes of UTF-8 without control characters: empty, control characters or invalid UTF-8 → 400 `invalid_key`; over 1024 bytes → 413 `key_too_large`."),
    ),
    responses(
        (status = 200, description = "Rolled back; a new revision.", body = RollbackResponse, headers(("X-Shoal-Revision" = u64, description = "The current cluster revision (on successful responses that read or write the store)."))),
        (status = 400, description = "`invalid_key`: the key in the path is empty, contains a control character (e.g. NUL), or is not valid UTF-8 after percent-decoding. `invalid_revision`: `revision` is greater than the current revision. `bad_request`: malformed JSON body, missing/negative `revision`, unknown field. `reserved_key`: the key is under `_shoal/`, which holds the messaging configuration (written only through /v1/webhooks, /v1/routes and /v1/bridges). Error codes: `invalid_key`, `invalid_revision`, `bad_request`, `reserved_key`.", body = crate::api::error::ErrorBody),
        (status = 404, description = "The key does not exist and has no retained history. Error codes: `key_not_found`.", body = crate::api::error::ErrorBody),
        (status = 410, description = "`revision` is older than the compaction point; `error.compact_revision` is the oldest available revision. Error codes: `compacted`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "`key_too_large`: the key is longer than 1024 bytes. `payload_too_large`: the request body exceeds the body limit (2 × `--max-value-bytes` + 64 KiB; 2 MiB + 64 KiB by default). Error codes: `key_too_large`, `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn rollback(
    State(shoal): State<Arc<Shoal>>,
    KeyPath(key): KeyPath,
    JsonBody(body): JsonBody<RevisionBody>,
) -> ApiResult<Response> {
    check_writable(&key, false)?;
    match shoal
        .write(Command::Rollback {
            key,
            revision: body.revision,
        })
        .await?
    {
        SmResponse::Rollback { revision, kv } => Ok(with_revision(
            revision,
            RollbackResponse {
                revision,
                kv: kv.as_ref().map(|kv| KeyValueJson::new(kv, false)),
            },
        )),
        other => Err(ApiError::internal(format!(
            "unexpected state machine response {other:?}"
        ))),
    }
}

#[utoipa::path(
    post,
    path = "/v1/compact",
    tag = "kv",
    operation_id = "compact",
    request_body(content = RevisionBody, content_type = "application/json", description = "Discard history before this revision. Parsed as JSON regardless of the Content-Type; unknown fields are rejected.", example = json!({"revision": 1000})),
    summary = "Compact history now",
    description = "Discards change history (events) with revision < `revision`. History is also compacted automatically, keeping the last `--history-revisions` (default 100000) revisions. Compacting to a revision at or below the current compaction point is a no-op that returns the current point. `revision` may be at most the current revision + 1. The body is parsed as JSON regardless of its Content-Type; unknown fields are rejected (`bad_request`).",
    responses(
        (status = 200, description = "The compaction point after the request.", body = CompactResponse),
        (status = 400, description = "`invalid_revision`: `revision` is more than the current revision + 1. `bad_request`: malformed JSON body, missing/negative `revision`, unknown field. Error codes: `invalid_revision`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: the request body exceeds the body limit (2 × `--max-value-bytes` + 64 KiB; 2 MiB + 64 KiB by default). Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn compact(
    State(shoal): State<Arc<Shoal>>,
    JsonBody(body): JsonBody<RevisionBody>,
) -> ApiResult<Response> {
    match shoal
        .write(Command::Compact {
            revision: body.revision,
        })
        .await?
    {
        SmResponse::Compacted { compact_revision } => {
            Ok(Json(CompactResponse { compact_revision }).into_response())
        }
        other => Err(ApiError::internal(format!(
            "unexpected state machine response {other:?}"
        ))),
    }
}
