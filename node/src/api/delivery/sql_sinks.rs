//! SQL sink and database definitions (stored in Raft like webhooks), the
//! checks a sink passes before it is stored, and its dead letters.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_acl::{Access, Resource};
use shoal_sinks::definition::{Database, Sink, DATABASES_PREFIX, LOCAL_DATABASE};
use shoal_sinks::WriteError;
use utoipa::ToSchema;

use super::definitions::{self as shared, DefinitionDeleted, Kind};
use super::{gather_dead_letters, replay_dead_letters, DeadLetter, ReplayRequest};
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::api::extract::{Body, JsonBody, Params, PathText};
use crate::services::shoal::Shoal;

fn mismatch(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::SinkMismatch, message)
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::FAILED_DEPENDENCY,
        ErrorCode::DatabaseUnavailable,
        message,
    )
}

/// A database URL's host must be one outbound connections may reach, and
/// its migrations must run (on this node, for `local`) before it is stored.
pub async fn check_database(shoal: &Arc<Shoal>, stored: &Value) -> ApiResult<()> {
    let database: Database =
        serde_json::from_value(stored.clone()).map_err(|e| ApiError::internal(e.to_string()))?;
    if !database.is_local() {
        let url = &database.url;
        let parsed =
            url::Url::parse(url).map_err(|e| ApiError::bad_request(format!("url {url:?}: {e}")))?;
        shoal.outbound.check_host_of(&parsed).await?;
    }
    if database.migrations.is_empty() {
        return Ok(());
    }
    let password = password_of(shoal, Some(&database)).await?;
    let databases = shoal.messaging.deliveries.databases();
    match databases.pool(Some(&database), password).await {
        Ok(_) => Ok(()),
        Err(WriteError::Refused(reason)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MigrationFailed,
            reason,
        )),
        Err(WriteError::Unavailable(reason)) => Err(unavailable(format!(
            "database {} could not be reached to run its migrations: {reason}",
            database.name
        ))),
    }
}

/// A sink must name a database that exists and fit its table; the
/// embedded database of a cluster of more than one node needs `per_node`.
pub async fn check_sink(shoal: &Arc<Shoal>, stored: &Value) -> ApiResult<()> {
    let sink: Sink =
        serde_json::from_value(stored.clone()).map_err(|e| ApiError::internal(e.to_string()))?;
    let database = if sink.database == LOCAL_DATABASE {
        let nodes = shoal
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .count();
        if nodes > 1 && !sink.per_node {
            return Err(mismatch(format!(
                "database {LOCAL_DATABASE:?} is each node's own SQLite file and this cluster has {nodes} nodes: \
                 rows would be split across them. Say \"per_node\": true if that is meant, or use a PostgreSQL database"
            )));
        }
        // Its definition, when there is one, carries its migrations.
        find_database(shoal, LOCAL_DATABASE).await?
    } else {
        let name = &sink.database;
        Some(find_database(shoal, name).await?.ok_or_else(|| {
            mismatch(format!(
                "database {name:?} is not defined (PUT /v1/databases/{name}), and is not {LOCAL_DATABASE:?}"
            ))
        })?)
    };
    let password = password_of(shoal, database.as_ref()).await?;
    let databases = shoal.messaging.deliveries.databases();
    let checked = match databases.pool(database.as_ref(), password).await {
        Ok(pool) => databases.check(&pool, &sink).await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(()) => Ok(()),
        Err(WriteError::Refused(reason)) => Err(mismatch(reason)),
        Err(WriteError::Unavailable(reason)) => Err(unavailable(format!(
            "database {} could not be reached to check table {}: {reason}",
            sink.database, sink.table
        ))),
    }
}

/// A database's definition, if there is one (linearizable).
async fn find_database(shoal: &Arc<Shoal>, name: &str) -> ApiResult<Option<Database>> {
    shoal.read_barrier(false).await?;
    let key = format!("{DATABASES_PREFIX}{name}");
    let (_, kv) = shoal.read(move |store| store.kv_get(&key)).await?;
    kv.map(|kv| serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string())))
        .transpose()
}

/// The password of a database that names a `password_key`.
async fn password_of(shoal: &Arc<Shoal>, database: Option<&Database>) -> ApiResult<Option<String>> {
    let Some(key) = database.and_then(|d| d.password_key.clone()) else {
        return Ok(None);
    };
    let name = key.clone();
    let (_, kv) = shoal.read(move |store| store.kv_get(&key)).await?;
    shoal_sinks::definition::password(&name, kv.map(|kv| kv.value))
        .map(Some)
        .map_err(|e| mismatch(e.0))
}

/// The answer of `GET /v1/sinks`.
#[derive(Serialize, ToSchema)]
pub struct SinkList {
    /// Every sink, by name (each as `PUT /v1/sinks/{name}` stored it)
    #[schema(value_type = Vec<shoal_sinks::Sink>)]
    pub sinks: Vec<Value>,
}

/// The answer of `GET /v1/databases`.
#[derive(Serialize, ToSchema)]
pub struct DatabaseList {
    /// Every database, by name (each as `PUT /v1/databases/{name}` stored
    /// it); `local` is listed only when its migrations were defined
    #[schema(value_type = Vec<shoal_sinks::Database>)]
    pub databases: Vec<Value>,
}

pub mod sinks {
    use super::*;

    #[utoipa::path(
        put,
        path = "/v1/sinks/{name}",
        tag = "delivery",
        operation_id = "putSink",
        summary = "Create or replace a SQL sink",
        description = "A projection of messages into a table: each message a route sends to `sql:<name>` becomes a row, its columns taken from the message's CloudEvent envelope by JSON Pointer. Delivered at least once from the durable outbox, in batches of up to 256 rows; writes are idempotent (`upsert`: insert or update by `key`, never replacing a row whose `version_column` is greater; `insert`: a row whose key exists is left alone), so a redelivered message leaves the same row. Before storing, the table is checked: it must exist, have every mapped column and a primary key or unique index over exactly `key`. `local` is each node's embedded SQLite file; in a cluster of more than one node it needs `per_node: true`. Stored in Raft: every node applies it without a restart.",
        params(
            ("name" = String, Path, description = "1-128 letters, digits, '-', '_' or '.'"),
        ),
        request_body(
            content = shoal_sinks::Sink,
            content_type = "application/json",
            example = json!({"database": "shop", "table": "orders", "key": ["id"], "columns": {"id": "/data/id", "status": "/data/status", "updated_at": "/time"}, "version_column": "updated_at"}),
        ),
        responses(
            (status = 200, description = "The stored definition, defaults filled in. ",
             body = shoal_sinks::Sink, example = json!({"name": "orders", "database": "shop", "table": "orders", "key": ["id"], "columns": {"id": "/data/id", "status": "/data/status", "updated_at": "/time"}, "mode": "upsert", "version_column": "updated_at", "per_node": false})),
            (status = 400, description = "The name, or a definition that does not parse or is invalid (`bad_request`); a database that is not defined, a table that does not exist or lacks a mapped column or a unique index over the key, or `local` in a cluster without `per_node` (`sink_mismatch`). Error codes: `bad_request`, `sink_mismatch`.", body = ErrorBody),
            (status = 413, description = "The body is over the request size limit (`payload_too_large`), or the stored definition would be over the value limit, --max-value-bytes (`value_too_large`). Error codes: `payload_too_large`, `value_too_large`.", body = ErrorBody),
            (status = 424, description = "The database could not be reached (or refused the password) to check the table: the sink is not stored. Error codes: `database_unavailable`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn put(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
        JsonBody(body): JsonBody<Value>,
    ) -> ApiResult<Json<Value>> {
        shared::put(shoal, Kind::Sink, name, body).await
    }

    #[utoipa::path(
        get,
        path = "/v1/sinks/{name}",
        tag = "delivery",
        operation_id = "getSink",
        summary = "Read a SQL sink",
        description = "Linearizable read.",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "The definition. ", body = shoal_sinks::Sink),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No sink has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn get(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<Value>> {
        shared::get(shoal, Kind::Sink, name).await
    }

    #[utoipa::path(
        get,
        path = "/v1/sinks",
        tag = "delivery",
        operation_id = "listSinks",
        summary = "List SQL sinks",
        description = "Linearizable read.",
        responses(
            (status = 200, description = "All sinks, by name. ", body = SinkList),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<SinkList>> {
        Ok(Json(SinkList {
            sinks: shared::list(shoal, Kind::Sink).await?,
        }))
    }

    #[utoipa::path(
        delete,
        path = "/v1/sinks/{name}",
        tag = "delivery",
        operation_id = "deleteSink",
        summary = "Delete a SQL sink",
        description = "Its pending entries and dead letters are dropped on every node; rows written stay in the table.",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "Deleted.", body = DefinitionDeleted),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No sink has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn delete(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<DefinitionDeleted>> {
        shared::delete(shoal, Kind::Sink, name).await
    }
}

pub mod databases {
    use super::*;

    #[utoipa::path(
        put,
        path = "/v1/databases/{name}",
        tag = "delivery",
        operation_id = "putDatabase",
        summary = "Create or replace a database",
        description = "A PostgreSQL database SQL sinks may write: `url` is `postgres://user@host:port/database` with libpq's `sslmode` and `sslrootcert` parameters (TLS through rustls, certificates verified against the system roots or `sslrootcert`); the password is read from the KV key `password_key` (never from the URL). Each node opens up to `max_connections` connections when a sink first writes. A host that is loopback, link-local, private or otherwise non-public is refused unless the operator allows it with `--outbound-allow`. `local` (each node's embedded SQLite) needs no definition; defined, it carries `migrations` only. `migrations` (up to 256, by version) run in version order, each once and in a transaction, recorded in the database's `_sqlx_migrations` table as the sqlx CLI records them: on the receiving node before the definition is stored (a failure stores nothing), and on every node when it first writes the database after a start or a change of the definition. A statement of a migration still running at four fifths of --request-timeout-ms is stopped and the migration refused (`migration_failed`). In the embedded SQLite, migrations cannot attach other files. With ACLs on, the token must also be allowed to read the KV key `password_key` names (403 otherwise): the node sends that password to the database's server. Stored in Raft.",
        params(
            ("name" = String, Path, description = "1-128 letters, digits, '-', '_' or '.'; `local` is the embedded SQLite (migrations only)"),
        ),
        request_body(
            content = shoal_sinks::Database,
            content_type = "application/json",
            example = json!({"url": "postgres://shoal@db.internal:5432/shop?sslmode=verify-full", "password_key": "secrets/shop-db"}),
        ),
        responses(
            (status = 200, description = "The stored definition, defaults filled in. ", body = shoal_sinks::Database),
            (status = 400, description = "The name, a definition that does not parse or is invalid, a URL with a password (`bad_request`), a host the outbound policy refuses (`destination_refused`), a password_key that does not exist (`sink_mismatch`), or a migration that failed or differs from the one applied with its version (`migration_failed`). Error codes: `bad_request`, `destination_refused`, `migration_failed`, `sink_mismatch`.", body = ErrorBody),
            (status = 413, description = "The body is over the request size limit (`payload_too_large`), or the stored definition would be over the value limit, --max-value-bytes (`value_too_large`). Error codes: `payload_too_large`, `value_too_large`.", body = ErrorBody),
            (status = 424, description = "The database could not be reached (or refused the password) to run its migrations: the definition is not stored. Error codes: `database_unavailable`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn put(
        caller: Caller,
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
        JsonBody(body): JsonBody<Value>,
    ) -> ApiResult<Json<Value>> {
        // The node sends the password to the URL's server: only a token
        // that may read the key may point a database at it.
        if let Some(key) = body.get("password_key").and_then(Value::as_str) {
            caller.require(Resource::Kv, key, Access::Read)?;
        }
        shared::put(shoal, Kind::Database, name, body).await
    }

    #[utoipa::path(
        get,
        path = "/v1/databases/{name}",
        tag = "delivery",
        operation_id = "getDatabase",
        summary = "Read a database",
        description = "Linearizable read.",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "The definition. ", body = shoal_sinks::Database),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No database has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn get(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<Value>> {
        shared::get(shoal, Kind::Database, name).await
    }

    #[utoipa::path(
        get,
        path = "/v1/databases",
        tag = "delivery",
        operation_id = "listDatabases",
        summary = "List databases",
        description = "Linearizable read.",
        responses(
            (status = 200, description = "All defined databases, by name. ", body = DatabaseList),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<DatabaseList>> {
        Ok(Json(DatabaseList {
            databases: shared::list(shoal, Kind::Database).await?,
        }))
    }

    #[utoipa::path(
        delete,
        path = "/v1/databases/{name}",
        tag = "delivery",
        operation_id = "deleteDatabase",
        summary = "Delete a database",
        description = "Sinks that name it keep their rows in the outbox until it is defined again. Deleting `local` drops its migrations from the definition (tables they made stay) and nothing else: `local` is always there.",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "Deleted.", body = DefinitionDeleted),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No database has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn delete(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<DefinitionDeleted>> {
        shared::delete(shoal, Kind::Database, name).await
    }
}

/// A sink's dead letters, from every node that answered.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "sink": "orders",
    "dead_letters": [{"node_id": 1, "seq": 12, "id": "5f1c...", "topic": "orders.created",
                      "attempts": 1, "last_error": "error returned from database: invalid input syntax for type bigint: \"abc\"", "message": {}}],
    "unreachable": []
}))]
pub struct SinkDeadLetters {
    /// The sink's name
    pub sink: String,
    /// The dead letters, node by node (at most `limit` per node)
    pub dead_letters: Vec<DeadLetter>,
    /// Nodes that did not answer (their dead letters are missing)
    pub unreachable: Vec<u64>,
}

/// How many of a sink's dead letters went back to the outbox.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"sink": "orders", "replayed": 3, "unreachable": []}))]
pub struct SinkReplayed {
    /// The sink's name
    pub sink: String,
    /// Dead letters put back in the outbox, on every node that answered
    pub replayed: u64,
    /// Nodes that did not answer (their dead letters were not replayed)
    pub unreachable: Vec<u64>,
}

/// `GET /v1/sinks/{name}/dead-letters`.
#[utoipa::path(
    get,
    path = "/v1/sinks/{name}/dead-letters",
    tag = "delivery",
    operation_id = "sinkDeadLetters",
    summary = "A sink's dead letters",
    description = "Messages the database refused for good (a value of the wrong type, a constraint, a table that no longer fits the sink), with the database's reason in `last_error`, from every node (each keeps those it accepted). A database that is down makes no dead letters: its rows wait. `unreachable` lists nodes that did not answer.",
    params(
        ("name" = String, Path, description = "Sink name"),
        ("scope" = Option<String>, Query, description = "cluster (default: ask every live node) or local"),
        ("limit" = Option<u64>, Query, description = "Per node, 1-10000 (default 100)"),
    ),
    responses(
        (status = 200, description = "Dead letters.", body = SinkDeadLetters),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn sink_dead_letters(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    params: Params,
) -> ApiResult<Json<SinkDeadLetters>> {
    let (dead_letters, unreachable) =
        gather_dead_letters(&shoal, &caller, Kind::Sink, &name, &params).await?;
    Ok(Json(SinkDeadLetters {
        sink: name,
        dead_letters,
        unreachable,
    }))
}

/// `POST /v1/sinks/{name}/dead-letters/replay`.
#[utoipa::path(
    post,
    path = "/v1/sinks/{name}/dead-letters/replay",
    tag = "delivery",
    operation_id = "replaySinkDeadLetters",
    summary = "Replay a sink's dead letters",
    description = "Put dead letters back in the outbox (after the table or the data was fixed), on every node. Body (optional): `{\"only\": [{\"node_id\": 1, \"seq\": 12}]}`.",
    params(
        ("name" = String, Path, description = "Sink name"),
        ("scope" = Option<String>, Query, description = "cluster (default: ask every live node) or local"),
    ),
    request_body(
        content = Option<ReplayRequest>,
        content_type = "application/json",
        description = "Optional: without a body (or with `null`), every dead letter of the sink is replayed.",
    ),
    responses(
        (status = 200, description = "Replayed.", body = SinkReplayed),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = ErrorBody),
        (status = 413, description = "The body is too large. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn sink_replay(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<SinkReplayed>> {
    let (replayed, unreachable) =
        replay_dead_letters(&shoal, &caller, Kind::Sink, &name, &params, &body).await?;
    Ok(Json(SinkReplayed {
        sink: name,
        replayed,
        unreachable,
    }))
}
