//! The transaction endpoint's body and answer: their JSON shapes (from
//! which the OpenAPI schemas are generated) and their translation to and
//! from the store's transaction types.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_storage::kv::{Compare, CompareOp, CompareTarget, OpResult, Txn, TxnOp};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
use utoipa::openapi::{Object, Schema};
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{check_value, check_writable, validate_key};
use crate::api::model::{decode_value, KeyValueJson};
use crate::services::shoal::Shoal;

/// Operations allowed in each part of a transaction.
pub const MAX_TXN_OPS: usize = 128;

/// `POST /v1/txn`: compares and the operations of both branches.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TxnRequest, example = json!({
    "compare": [{"key": "a", "target": "mod_revision", "op": "=", "value": 5}],
    "success": [
        {"put": {"key": "a", "value": "YmFy", "lease": 0}},
        {"delete": {"key": "b", "prefix": false}},
        {"get": {"key": "c"}}
    ],
    "failure": [{"get": {"key": "a"}}]
}))]
pub struct TxnBody {
    /// All must hold for `success` to run. At most 128.
    #[serde(default)]
    #[schema(max_items = 128, default = json!([]))]
    pub compare: Vec<CompareBody>,
    /// Run if every compare holds. At most 128.
    #[serde(default)]
    #[schema(max_items = 128, default = json!([]))]
    pub success: Vec<OpBody>,
    /// Run otherwise. At most 128.
    #[serde(default)]
    #[schema(max_items = 128, default = json!([]))]
    pub failure: Vec<OpBody>,
}

/// One condition of a transaction.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Compare)]
pub struct CompareBody {
    #[schema(min_length = 1, max_length = 1024)]
    pub key: String,
    #[schema(schema_with = compare_target_schema)]
    pub target: String,
    #[schema(schema_with = compare_op_schema)]
    pub op: String,
    #[schema(schema_with = compare_value_schema)]
    pub value: Value,
}

pub fn compare_target_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([
            "mod_revision",
            "create_revision",
            "version",
            "value",
        ]))
        .description(Some(
            "A missing key has 0 for every revision target and an empty value.",
        ))
        .build()
}

pub fn compare_op_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["=", "==", "!=", "<", ">"]))
        .description(Some(
            "`==` is accepted as `=`. Only `=`/`!=` for target `value`.",
        ))
        .build()
}

pub fn compare_value_schema() -> Schema {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_encoding("base64"),
        )
        .description(Some(
            "A non-negative integer for revision/version targets; base64 text for target `value`.",
        ))
        .build()
        .into()
}

/// One operation of a transaction: exactly one of `put`, `delete`, `get`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = TxnOp)]
pub enum OpBody {
    Put {
        #[schema(min_length = 1, max_length = 1024)]
        key: String,
        /// Base64; at most `--max-value-bytes` (default 1 MiB) decoded.
        #[schema(content_encoding = "base64")]
        value: String,
        /// Lease id; 0 = none. Unknown lease → 404 `lease_not_found`.
        #[serde(default)]
        #[schema(default = 0)]
        lease: u64,
    },
    Delete {
        #[schema(min_length = 1, max_length = 1024)]
        key: String,
        /// Delete every key starting with `key`.
        #[serde(default)]
        #[schema(default = false)]
        prefix: bool,
    },
    Get {
        #[schema(min_length = 1, max_length = 1024)]
        key: String,
    },
}

pub fn parse_compare(body: CompareBody) -> ApiResult<Compare> {
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

/// 403 unless the caller may read every compared or read key and write
/// every written or deleted one (whichever branch runs).
pub fn check_access(caller: &Caller, txn: &Txn) -> ApiResult<()> {
    use shoal_acl::{Access, Resource};
    for compare in &txn.compare {
        caller.require(Resource::Kv, &compare.key, Access::Read)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            TxnOp::Put { key, .. } | TxnOp::Delete { key, prefix: false } => {
                caller.require(Resource::Kv, key, Access::Write)?
            }
            TxnOp::Delete { key, prefix: true } => {
                caller.require_under(Resource::Kv, key, Access::Write)?
            }
            TxnOp::Get { key } => caller.require(Resource::Kv, key, Access::Read)?,
        }
    }
    Ok(())
}

pub fn parse_ops(shoal: &Shoal, ops: Vec<OpBody>, branch: &str) -> ApiResult<Vec<TxnOp>> {
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

/// One result per operation of the branch that ran, in order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = TxnResult)]
pub enum TxnResultJson {
    Put {
        /// The key after the write (without value).
        kv: KeyValueJson,
        /// The key before the write (without value), or null if it did not exist.
        #[schema(required = true)]
        prev_kv: Option<KeyValueJson>,
    },
    Delete {
        /// Number of keys deleted.
        deleted: u64,
    },
    Get {
        /// The key with its value (as seen at that point of the transaction),
        /// or null if missing.
        #[schema(required = true)]
        kv: Option<KeyValueJson>,
    },
}

impl From<&OpResult> for TxnResultJson {
    fn from(result: &OpResult) -> TxnResultJson {
        match result {
            OpResult::Put { kv, prev } => TxnResultJson::Put {
                kv: KeyValueJson::new(kv, false),
                prev_kv: prev.as_ref().map(|p| KeyValueJson::new(p, false)),
            },
            OpResult::Delete { deleted } => TxnResultJson::Delete { deleted: *deleted },
            OpResult::Get { kv } => TxnResultJson::Get {
                kv: kv.as_ref().map(|kv| KeyValueJson::new(kv, true)),
            },
        }
    }
}

/// `POST /v1/txn`: whether the compares held, and the results of the branch
/// that ran.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "succeeded": true,
    "revision": 13,
    "results": [
        {"put": {
            "kv": {"key": "a", "create_revision": 2, "mod_revision": 13, "version": 4, "lease": 0},
            "prev_kv": {"key": "a", "create_revision": 2, "mod_revision": 5, "version": 3, "lease": 0}
        }},
        {"delete": {"deleted": 1}},
        {"get": {"kv": null}}
    ]
}))]
pub struct TxnResponse {
    /// Whether every compare held (so `success` ran).
    pub succeeded: bool,
    /// The transaction's revision if it wrote something, else the current revision.
    pub revision: u64,
    pub results: Vec<TxnResultJson>,
}
