//! Key/value endpoints: put, get, delete, list, transactions, history,
//! rollback and compaction.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_storage::kv::{
    Command, Compare, CompareOp, CompareTarget, OpResult, Response as SmResponse, Txn, TxnOp,
};

use super::error::{ApiError, ApiResult};
use super::extract::{check_writable, validate_key, Body, JsonBody, KeyPath, Params};
use super::model::{decode_value, event_json, kv_json};
use crate::services::shoal::Shoal;

/// Operations allowed in each part of a transaction.
pub const MAX_TXN_OPS: usize = 128;

/// A JSON response with the `X-Shoal-Revision` header.
pub fn with_revision(revision: u64, body: Value) -> Response {
    ([("x-shoal-revision", revision.to_string())], Json(body)).into_response()
}

fn check_value(shoal: &Shoal, len: usize) -> ApiResult<()> {
    let limit = shoal.settings.max_value_bytes;
    if len > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("value is {len} bytes; the limit is {limit} (--max-value-bytes)"),
        ));
    }
    Ok(())
}

fn compare_failed(current: Option<&OpResult>) -> ApiError {
    let current = match current {
        Some(OpResult::Get { kv: Some(kv) }) => kv_json(kv, false),
        _ => Value::Null,
    };
    ApiError::new(
        StatusCode::CONFLICT,
        "compare_failed",
        "the key's mod_revision is not the expected one",
    )
    .with("current", current)
}

/// A guarded single-key transaction: `op` if `if_revision` holds, else read the key.
fn guarded(key: &str, if_revision: Option<u64>, op: TxnOp) -> Command {
    let compare = if_revision
        .map(|revision| Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(revision),
        })
        .into_iter()
        .collect();
    Command::Txn(Txn {
        compare,
        success: vec![op],
        failure: vec![TxnOp::Get { key: key.into() }],
    })
}

fn txn_outcome(response: SmResponse) -> ApiResult<(bool, u64, Vec<OpResult>)> {
    match response {
        SmResponse::Txn {
            succeeded,
            revision,
            results,
        } => Ok((succeeded, revision, results)),
        other => Err(ApiError::internal(format!(
            "unexpected state machine response {other:?}"
        ))),
    }
}

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
    let (succeeded, revision, results) =
        txn_outcome(shoal.write(guarded(&key, if_revision, op)).await?)?;
    match results.first() {
        Some(OpResult::Put { kv, prev }) if succeeded => Ok(with_revision(
            revision,
            json!({"revision": revision, "kv": kv_json(kv, false), "prev_kv": prev.as_ref().map(|p| kv_json(p, false))}),
        )),
        current => Err(compare_failed(current)),
    }
}

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
            json!({"revision": counters.revision, "kv": kv_json(&kv, true)}),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            format!("key {key:?} does not exist"),
        )),
    }
}

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
    let (succeeded, revision, results) =
        txn_outcome(shoal.write(guarded(&key, if_revision, op)).await?)?;
    match results.first() {
        Some(OpResult::Delete { deleted }) if succeeded => Ok(with_revision(
            revision,
            json!({"revision": revision, "deleted": deleted}),
        )),
        current => Err(compare_failed(current)),
    }
}

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
    let kvs: Vec<Value> = kvs.iter().map(|kv| kv_json(kv, !keys_only)).collect();
    Ok(with_revision(
        counters.revision,
        json!({"revision": counters.revision, "kvs": kvs, "more": more, "next_after": next_after}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnBody {
    #[serde(default)]
    compare: Vec<CompareBody>,
    #[serde(default)]
    success: Vec<OpBody>,
    #[serde(default)]
    failure: Vec<OpBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    key: String,
    target: String,
    op: String,
    value: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum OpBody {
    Put {
        key: String,
        value: String,
        #[serde(default)]
        lease: u64,
    },
    Delete {
        key: String,
        #[serde(default)]
        prefix: bool,
    },
    Get {
        key: String,
    },
}

fn parse_compare(body: CompareBody) -> ApiResult<Compare> {
    validate_key(&body.key)?;
    let op = match body.op.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        other => {
            return Err(ApiError::bad_request(format!(
                "compare op must be =, !=, < or >, got {other:?}"
            )))
        }
    };
    let number = || {
        body.value.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "compare value for {} must be a non-negative integer",
                body.target
            ))
        })
    };
    let target = match body.target.as_str() {
        "mod_revision" => CompareTarget::ModRevision(number()?),
        "create_revision" => CompareTarget::CreateRevision(number()?),
        "version" => CompareTarget::Version(number()?),
        "value" => {
            if !matches!(op, CompareOp::Equal | CompareOp::NotEqual) {
                return Err(ApiError::bad_request(
                    "a value compare supports only = and !=",
                ));
            }
            let text = body
                .value
                .as_str()
                .ok_or_else(|| ApiError::bad_request("compare value must be base64 text"))?;
            CompareTarget::Value(decode_value("compare value", text)?)
        }
        other => {
            return Err(ApiError::bad_request(format!(
            "compare target must be mod_revision, create_revision, version or value, got {other:?}"
        )))
        }
    };
    Ok(Compare {
        key: body.key,
        op,
        target,
    })
}

fn parse_ops(shoal: &Shoal, ops: Vec<OpBody>, branch: &str) -> ApiResult<Vec<TxnOp>> {
    if ops.len() > MAX_TXN_OPS {
        return Err(ApiError::bad_request(format!(
            "{branch} has {} operations; the limit is {MAX_TXN_OPS}",
            ops.len()
        )));
    }
    ops.into_iter()
        .map(|op| match op {
            OpBody::Put { key, value, lease } => {
                validate_key(&key)?;
                check_writable(&key, false)?;
                let value = decode_value("put value", &value)?;
                check_value(shoal, value.len())?;
                Ok(TxnOp::Put { key, value, lease })
            }
            OpBody::Delete { key, prefix } => {
                validate_key(&key)?;
                check_writable(&key, prefix)?;
                Ok(TxnOp::Delete { key, prefix })
            }
            OpBody::Get { key } => {
                validate_key(&key)?;
                Ok(TxnOp::Get { key })
            }
        })
        .collect()
}

fn result_json(result: &OpResult) -> Value {
    match result {
        OpResult::Put { kv, prev } => {
            json!({"put": {"kv": kv_json(kv, false), "prev_kv": prev.as_ref().map(|p| kv_json(p, false))}})
        }
        OpResult::Delete { deleted } => json!({"delete": {"deleted": deleted}}),
        OpResult::Get { kv } => json!({"get": {"kv": kv.as_ref().map(|kv| kv_json(kv, true))}}),
    }
}

pub async fn txn(
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
    let (succeeded, revision, results) = txn_outcome(
        shoal
            .write(Command::Txn(Txn {
                compare,
                success,
                failure,
            }))
            .await?,
    )?;
    let results: Vec<Value> = results.iter().map(result_json).collect();
    Ok(with_revision(
        revision,
        json!({"succeeded": succeeded, "revision": revision, "results": results}),
    ))
}

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
            "key_not_found",
            format!("key {key:?} has no history"),
        ));
    }
    let history: Vec<Value> = events.iter().map(event_json).collect();
    Ok(with_revision(
        counters.revision,
        json!({"key": key, "revision": counters.revision, "compact_revision": counters.compact_revision, "history": history}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionBody {
    revision: u64,
}

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
            json!({"revision": revision, "kv": kv.as_ref().map(|kv| kv_json(kv, false))}),
        )),
        other => Err(ApiError::internal(format!(
            "unexpected state machine response {other:?}"
        ))),
    }
}

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
            Ok(Json(json!({"compact_revision": compact_revision})).into_response())
        }
        other => Err(ApiError::internal(format!(
            "unexpected state machine response {other:?}"
        ))),
    }
}
