//! Webhook subscriptions, routing rules and Kafka bridges (stored in Raft),
//! dead letters and the outbox (per node, gathered across the cluster), and
//! producing to Kafka.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_actors::config::{
    validate_kafka_topic, Bridge, ConfigError, Route, Webhook, BRIDGES_PREFIX, ROUTES_PREFIX,
    WEBHOOKS_PREFIX,
};
use shoal_actors::deliver::Entry;
use shoal_actors::kafka::Record;
use shoal_storage::kv::{Command, Txn, TxnOp};
use shoal_storage::outbox::List;

use super::error::{ApiError, ApiResult, ErrorCode};
use super::extract::{Body, JsonBody, Params};
use crate::services::shoal::Shoal;

/// Time allowed to each other node when gathering dead letters.
const FAN_OUT_TIMEOUT: Duration = Duration::from_secs(5);

/// The three kinds of messaging configuration, for the shared handlers.
#[derive(Clone, Copy)]
pub enum Kind {
    Webhook,
    Route,
    Bridge,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Webhook => WEBHOOKS_PREFIX,
            Kind::Route => ROUTES_PREFIX,
            Kind::Bridge => BRIDGES_PREFIX,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Route => "route",
            Kind::Bridge => "bridge",
        }
    }

    /// Parse and validate a definition; the stored JSON.
    fn validate(self, name: &str, body: Value) -> ApiResult<Value> {
        fn check<T: DeserializeOwned + Serialize>(
            body: Value,
            validate: impl FnOnce(T) -> Result<T, ConfigError>,
        ) -> ApiResult<Value> {
            let parsed: T = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("invalid definition: {e}")))?;
            let valid = validate(parsed).map_err(|e| ApiError::bad_request(e.0))?;
            serde_json::to_value(valid).map_err(|e| ApiError::internal(e.to_string()))
        }
        match self {
            Kind::Webhook => check(body, |w: Webhook| w.validate(name)),
            Kind::Route => check(body, |r: Route| r.validate(name)),
            Kind::Bridge => check(body, |b: Bridge| b.validate(name)),
        }
    }
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("{} {name:?} does not exist", kind.noun()),
    )
}

fn check_name(kind: Kind, name: &str) -> ApiResult<()> {
    shoal_actors::config::validate_name(kind.noun(), name).map_err(|e| ApiError::bad_request(e.0))
}

/// `PUT /v1/{webhooks,routes,bridges}/{name}`: create or replace.
pub async fn put(shoal: Arc<Shoal>, kind: Kind, name: String, body: Value) -> ApiResult<Response> {
    check_name(kind, &name)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the definition must be a JSON object",
        ));
    }
    let stored = kind.validate(&name, body)?;
    let value = serde_json::to_vec(&stored).map_err(|e| ApiError::internal(e.to_string()))?;
    let limit = shoal.settings.max_value_bytes;
    if value.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ValueTooLarge,
            format!(
                "the definition is {} bytes stored; the limit is {limit} (--max-value-bytes)",
                value.len()
            ),
        ));
    }
    let key = format!("{}{name}", kind.prefix());
    let put = TxnOp::Put {
        key,
        value,
        lease: 0,
    };
    shoal
        .write(Command::Txn(Txn {
            compare: vec![],
            success: vec![put],
            failure: vec![],
        }))
        .await?;
    Ok(Json(stored).into_response())
}

/// `GET /v1/{kind}/{name}` (linearizable).
pub async fn get(shoal: Arc<Shoal>, kind: Kind, name: String) -> ApiResult<Response> {
    check_name(kind, &name)?;
    shoal.read_barrier(false).await?;
    let key = format!("{}{name}", kind.prefix());
    let (_, kv) = shoal.read(move |store| store.kv_get(&key)).await?;
    let kv = kv.ok_or_else(|| not_found(kind, &name))?;
    let value: Value =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(value).into_response())
}

/// `GET /v1/{kind}` (linearizable): every definition, by name.
pub async fn list(shoal: Arc<Shoal>, kind: Kind) -> ApiResult<Response> {
    shoal.read_barrier(false).await?;
    let prefix = kind.prefix();
    let (_, kvs, _) = shoal
        .read(move |store| store.kv_range(prefix, None, 10_000))
        .await?;
    let items: Vec<Value> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    Ok(Json(json!({ format!("{}s", kind.noun()): items })).into_response())
}

/// `DELETE /v1/{kind}/{name}`; 404 if it does not exist.
pub async fn delete(shoal: Arc<Shoal>, kind: Kind, name: String) -> ApiResult<Response> {
    check_name(kind, &name)?;
    let key = format!("{}{name}", kind.prefix());
    let delete = TxnOp::Delete { key, prefix: false };
    let response = shoal
        .write(Command::Txn(Txn {
            compare: vec![],
            success: vec![delete],
            failure: vec![],
        }))
        .await?;
    let deleted = match response {
        shoal_storage::kv::Response::Txn { results, .. } => results.iter().any(
            |r| matches!(r, shoal_storage::kv::OpResult::Delete { deleted, .. } if *deleted > 0),
        ),
        _ => false,
    };
    if !deleted {
        return Err(not_found(kind, &name));
    }
    Ok(Json(json!({"deleted": name})).into_response())
}

pub mod webhooks {
    use super::*;

    #[utoipa::path(
        put,
        path = "/v1/webhooks/{name}",
        tag = "delivery",
        operation_id = "putWebhook",
        summary = "Create or replace a webhook",
        description = "Every message published on a topic matching `pattern` (or sent by a route) is POSTed to `url` at least once, signed as Standard Webhooks specifies (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), retried on the schedule, then kept as a dead letter. Stored in Raft: every node applies it without a restart.",
        params(
            ("name" = String, Path, description = "1-128 letters, digits, '-', '_' or '.'"),
        ),
        responses(
            (status = 200, description = "The stored definition."),
            (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn put(
        State(shoal): State<Arc<Shoal>>,
        Path(name): Path<String>,
        JsonBody(body): JsonBody<Value>,
    ) -> ApiResult<Response> {
        super::put(shoal, Kind::Webhook, name, body).await
    }

    #[utoipa::path(
        get,
        path = "/v1/webhooks/{name}",
        tag = "delivery",
        operation_id = "getWebhook",
        summary = "Read a webhook",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "The definition."),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
            (status = 404, response = crate::api::doc::NotFound),
            (status = 503, response = crate::api::doc::Unavailable),
        )
    )]
    pub async fn get(
        State(shoal): State<Arc<Shoal>>,
        Path(name): Path<String>,
    ) -> ApiResult<Response> {
        super::get(shoal, Kind::Webhook, name).await
    }

    #[utoipa::path(
        get,
        path = "/v1/webhooks",
        tag = "delivery",
        operation_id = "listWebhooks",
        summary = "List webhooks",
        description = "Linearizable read.",
        responses(
            (status = 200, description = "All webhooks."),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Response> {
        super::list(shoal, Kind::Webhook).await
    }

    #[utoipa::path(
        delete,
        path = "/v1/webhooks/{name}",
        tag = "delivery",
        operation_id = "deleteWebhook",
        summary = "Delete a webhook",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "Deleted."),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
            (status = 404, response = crate::api::doc::NotFound),
            (status = 503, response = crate::api::doc::Unavailable),
        )
    )]
    pub async fn delete(
        State(shoal): State<Arc<Shoal>>,
        Path(name): Path<String>,
    ) -> ApiResult<Response> {
        super::delete(shoal, Kind::Webhook, name).await
    }
}

pub mod routes {
    use super::*;

    #[utoipa::path(
        put,
        path = "/v1/routes/{name}",
        tag = "delivery",
        operation_id = "putRoute",
        summary = "Create or replace a route",
        description = "Messages on topics matching `source` (and passing `filter`) also go to each destination: `topic:<t>` re-publishes a copy (loops stop after 8 hops), `webhook:<name>` and `kafka:<topic>` go through the durable outbox. Stored in Raft: every node applies it without a restart.",
        params(
            ("name" = String, Path, description = "1-128 letters, digits, '-', '_' or '.'"),
        ),
        responses(
            (status = 200, description = "The stored definition."),
            (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn put(
        State(shoal): State<Arc<Shoal>>,
        Path(name): Path<String>,
        JsonBody(body): JsonBody<Value>,
    ) -> ApiResult<Response> {
        super::put(shoal, Kind::Route, name, body).await
    }

    #[utoipa::path(
        get,
        path = "/v1/routes/{name}",
        tag = "delivery",
        operation_id = "getRoute",
        summary = "Read a route",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "The definition."),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
            (status = 404, response = crate::api::doc::NotFound),
            (status = 503, response = crate::api::doc::Unavailable),
        )
    )]
    pub async fn get(
        State(shoal): State<Arc<Shoal>>,
        Path(name): Path<String>,
    ) -> ApiResult<Response> {
        super::get(shoal, Kind::Route, name).await
    }

    #[utoipa::path(
        get,
        path = "/v1/routes",
        tag = "delivery",
        operation_id = "listRoutes",
        summary = "List routes",
        description = "Linearizable read.",
        responses(
            (status = 200, description = "All routes."),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Response> {
        super::list(shoal, Kind::Route).await
    }

    #[utoipa::path(
        delete,
        path = "/v1/routes/{name}",
        tag = "delivery",
        operation_id = "deleteRoute",
        summary = "Delete a route",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "Deleted."),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
            (status = 404, response = crate::api::doc::NotFound),
            (status = 503, response = crate::api::doc::Unavailable),
        )
    )]
    pub async fn delete(
        State(shoal): State<Arc<Shoal>>,
        Path(name): Path<String>,
    ) -> ApiResult<Response> {
        super::delete(shoal, Kind::Route, name).await
    }
}

pub mod bridges {
    use super::*;

    #[utoipa::path(
        put,
        path = "/v1/bridges/{name}",
        tag = "delivery",
        operation_id = "putBridge",
        summary = "Create or replace a bridge",
        description = "Every node consumes `kafka_topic` in the consumer group `shoal-bridge-<name>` and publishes each record to `topic`, committing the offset after the hand-on. Needs --kafka-brokers. Stored in Raft: every node applies it without a restart.",
        params(
            ("name" = String, Path, description = "1-128 letters, digits, '-', '_' or '.'"),
        ),
        responses(
            (status = 200, description = "The stored definition."),
            (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn put(
        State(shoal): State<Arc<Shoal>>,
        Path(name): Path<String>,
        JsonBody(body): JsonBody<Value>,
    ) -> ApiResult<Response> {
        super::put(shoal, Kind::Bridge, name, body).await
    }

    #[utoipa::path(
        get,
        path = "/v1/bridges/{name}",
        tag = "delivery",
        operation_id = "getBridge",
        summary = "Read a bridge",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "The definition."),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
            (status = 404, response = crate::api::doc::NotFound),
            (status = 503, response = crate::api::doc::Unavailable),
        )
    )]
    pub async fn get(
        State(shoal): State<Arc<Shoal>>,
        Path(name): Path<String>,
    ) -> ApiResult<Response> {
        super::get(shoal, Kind::Bridge, name).await
    }

    #[utoipa::path(
        get,
        path = "/v1/bridges",
        tag = "delivery",
        operation_id = "listBridges",
        summary = "List bridges",
        description = "Linearizable read.",
        responses(
            (status = 200, description = "All bridges."),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Response> {
        super::list(shoal, Kind::Bridge).await
    }

    #[utoipa::path(
        delete,
        path = "/v1/bridges/{name}",
        tag = "delivery",
        operation_id = "deleteBridge",
        summary = "Delete a bridge",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "Deleted."),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
            (status = 404, response = crate::api::doc::NotFound),
            (status = 503, response = crate::api::doc::Unavailable),
        )
    )]
    pub async fn delete(
        State(shoal): State<Arc<Shoal>>,
        Path(name): Path<String>,
    ) -> ApiResult<Response> {
        super::delete(shoal, Kind::Bridge, name).await
    }
}

/// A dead letter as the API shows it.
fn dead_letter_json(node_id: u64, seq: u64, entry: &Entry) -> Value {
    json!({
        "node_id": node_id,
        "seq": seq,
        "id": entry.message.id,
        "topic": entry.message.topic,
        "attempts": entry.attempts,
        "last_error": entry.last_error,
        "message": entry.message.envelope(),
    })
}

/// Whether a request is about this node only (`scope=local`) or the cluster.
fn local_scope(params: &Params) -> ApiResult<bool> {
    match params.string("scope") {
        None | Some("cluster") => Ok(false),
        Some("local") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "scope must be cluster or local, got {other:?}"
        ))),
    }
}

/// Ask every other live node the same question over its HTTP API
/// (`scope=local`); answers by node, and the nodes that did not answer.
async fn fan_out(
    shoal: &Shoal,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> (Vec<Value>, Vec<u64>) {
    let members = shoal.cluster.gossip.members().await;
    let client = reqwest::Client::new();
    let calls = members
        .values()
        .filter(|m| m.node_id != shoal.node_id && !m.left)
        .map(|member| {
            let url = format!("http://{}{path_and_query}", member.api);
            let mut request = client.request(method.clone(), url).timeout(FAN_OUT_TIMEOUT);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let (node_id, alive) = (member.node_id, member.alive);
            async move {
                if !alive {
                    return Err(node_id);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        response.json::<Value>().await.map_err(|_| node_id)
                    }
                    _ => Err(node_id),
                }
            }
        });
    let mut answers = Vec::new();
    let mut unreachable = Vec::new();
    for result in futures::future::join_all(calls).await {
        match result {
            Ok(answer) => answers.push(answer),
            Err(node_id) => unreachable.push(node_id),
        }
    }
    (answers, unreachable)
}

/// `GET /v1/webhooks/{name}/dead-letters`: messages whose retries ran out,
/// from every node (each keeps those it accepted); `unreachable` lists
/// nodes that did not answer, so a partial answer is never silent.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{name}/dead-letters",
    tag = "delivery",
    operation_id = "deadLetters",
    summary = "A webhook's dead letters",
    description = "Messages whose retry schedule ran out, from every node (each node keeps those it accepted). `unreachable` lists nodes that did not answer.",
    params(
        ("name" = String, Path, description = "Webhook name"),
        ("scope" = Option<String>, Query, description = "cluster (default: ask every live node) or local"),
        ("limit" = Option<u64>, Query, description = "Per node, 1-10000 (default 100)"),
    ),
    responses(
        (status = 200, description = "Dead letters."),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn dead_letters(
    State(shoal): State<Arc<Shoal>>,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    check_name(Kind::Webhook, &name)?;
    let limit = params.limit(100, 10_000)?;
    let destination = format!("webhook:{name}");
    let outbox = shoal.messaging.deliveries.outbox().clone();
    let node_id = shoal.node_id;
    let stored =
        tokio::task::spawn_blocking(move || outbox.scan(List::Dead, &destination, None, limit))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
    let mut letters = Vec::with_capacity(stored.len());
    for item in stored {
        let entry: Entry = shoal_codec::decode(&item.value)?;
        letters.push(dead_letter_json(node_id, item.seq, &entry));
    }
    let mut unreachable = Vec::new();
    if !local_scope(&params)? {
        let path = format!("/v1/webhooks/{name}/dead-letters?scope=local&limit={limit}");
        let (answers, missing) = fan_out(&shoal, reqwest::Method::GET, &path, None).await;
        for answer in answers {
            if let Some(more) = answer["dead_letters"].as_array() {
                letters.extend(more.iter().cloned());
            }
        }
        unreachable = missing;
    }
    Ok(
        Json(json!({"webhook": name, "dead_letters": letters, "unreachable": unreachable}))
            .into_response(),
    )
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Only these dead letters (by `node_id` and `seq`); all when absent.
    #[serde(default)]
    only: Option<Vec<ReplayItem>>,
}

#[derive(Deserialize, Serialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct ReplayItem {
    node_id: u64,
    seq: u64,
}

/// `POST /v1/webhooks/{name}/dead-letters/replay`: put dead letters back in
/// the outbox with a fresh retry schedule, on every node.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{name}/dead-letters/replay",
    tag = "delivery",
    operation_id = "replayDeadLetters",
    summary = "Replay dead letters",
    description = "Put dead letters back in the outbox with a fresh retry schedule, on every node. Body (optional): `{\"only\": [{\"node_id\": 1, \"seq\": 12}]}`.",
    params(
        ("name" = String, Path, description = "Webhook name"),
        ("scope" = Option<String>, Query, description = "cluster (default: ask every live node) or local"),
    ),
    responses(
        (status = 200, description = "Replayed."),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn replay(
    State(shoal): State<Arc<Shoal>>,
    Path(name): Path<String>,
    params: Params,
    Body(body): Body,
) -> ApiResult<Response> {
    check_name(Kind::Webhook, &name)?;
    let replay: Replay = if body.is_empty() {
        Replay::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let node_id = shoal.node_id;
    let only: Option<Vec<u64>> = replay.only.as_ref().map(|items| {
        items
            .iter()
            .filter(|i| i.node_id == node_id)
            .map(|i| i.seq)
            .collect()
    });
    let destination = format!("webhook:{name}");
    let outbox = shoal.messaging.deliveries.outbox().clone();
    let target = destination.clone();
    let moved = tokio::task::spawn_blocking(move || {
        outbox.replay(
            &target,
            only.as_deref(),
            |value| match shoal_codec::decode::<Entry>(value) {
                Ok(entry) => shoal_codec::encode(&Entry::new(entry.message))
                    .unwrap_or_else(|_| value.to_vec()),
                Err(_) => value.to_vec(),
            },
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    if moved > 0 {
        shoal.messaging.deliveries.wake(&destination).await;
    }
    let mut replayed = moved;
    let mut unreachable = Vec::new();
    if !local_scope(&params)? {
        let path = format!("/v1/webhooks/{name}/dead-letters/replay?scope=local");
        let body = serde_json::to_value(&replay).map_err(|e| ApiError::internal(e.to_string()))?;
        let (answers, missing) = fan_out(&shoal, reqwest::Method::POST, &path, Some(body)).await;
        replayed += answers
            .iter()
            .filter_map(|a| a["replayed"].as_u64())
            .sum::<u64>() as usize;
        unreachable = missing;
    }
    Ok(
        Json(json!({"webhook": name, "replayed": replayed, "unreachable": unreachable}))
            .into_response(),
    )
}

/// `GET /v1/outbox`: this node's pending and dead entries per destination.
#[utoipa::path(
    get,
    path = "/v1/outbox",
    tag = "delivery",
    operation_id = "outbox",
    summary = "This node's outbox",
    description = "Pending and dead entries per destination on this node.",
    responses(
        (status = 200, description = "Counts."),
    )
)]
pub async fn outbox(State(shoal): State<Arc<Shoal>>) -> ApiResult<Response> {
    let outbox = shoal.messaging.deliveries.outbox().clone();
    let config = shoal.messaging.config();
    let mut names: Vec<String> = config
        .webhooks
        .keys()
        .map(|name| format!("webhook:{name}"))
        .collect();
    let counts =
        tokio::task::spawn_blocking(move || -> Result<Vec<Value>, shoal_storage::StorageError> {
            for destination in outbox.destinations()? {
                if !names.contains(&destination) {
                    names.push(destination);
                }
            }
            names
                .into_iter()
                .map(|destination| {
                    let pending = outbox.count(List::Pending, &destination)?;
                    let dead = outbox.count(List::Dead, &destination)?;
                    Ok(json!({"destination": destination, "pending": pending, "dead": dead}))
                })
                .collect()
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(json!({"node_id": shoal.node_id, "destinations": counts})).into_response())
}

/// `POST /v1/kafka/{topic}`: produce the body to Kafka with acks=all and
/// answer with the partition and offset Kafka gave it. `key=` and
/// `partition=` are optional; `content-type`, `traceparent` and `ce-*`
/// headers become Kafka headers.
#[utoipa::path(
    post,
    path = "/v1/kafka/{topic}",
    tag = "delivery",
    operation_id = "produceKafka",
    summary = "Produce to Kafka",
    description = "Produces the body with acks=all and answers once Kafka acknowledged it. `content-type`, `traceparent` and `ce-*` headers become Kafka headers.",
    params(
        ("topic" = String, Path, description = "Kafka topic"),
        ("key" = Option<String>, Query, description = "Record key"),
        ("partition" = Option<u64>, Query, description = "Partition"),
    ),
    responses(
        (status = 200, description = "Stored by Kafka."),
        (status = 400, description = "Malformed request. Error codes: `kafka_not_configured`, `invalid_topic`, `bad_request`.", body = crate::api::error::ErrorBody),
        (status = 413, description = "Payload too large. Error codes: `payload_too_large`.", body = crate::api::error::ErrorBody),
        (status = 502, description = "Kafka did not take the record. Error codes: `kafka_unavailable`.", body = crate::api::error::ErrorBody),
    )
)]
pub async fn produce(
    State(shoal): State<Arc<Shoal>>,
    Path(topic): Path<String>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let kafka = shoal.messaging.kafka.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::KafkaNotConfigured,
            "this node has no --kafka-brokers",
        )
    })?;
    validate_kafka_topic(&topic)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidTopic, e.0))?;
    let limit = shoal.settings.max_message_bytes;
    if body.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!(
                "message payload is {} bytes; the limit is {limit}",
                body.len()
            ),
        ));
    }
    let partition = match params.string("partition") {
        None => None,
        Some(raw) => Some(raw.parse::<i32>().ok().filter(|p| *p >= 0).ok_or_else(|| {
            ApiError::bad_request(format!(
                "partition must be a non-negative integer, got {raw:?}"
            ))
        })?),
    };
    let mut kafka_headers = Vec::new();
    for (name, value) in &headers {
        let name = name.as_str();
        if name == "content-type" || name == "traceparent" || name.starts_with("ce-") {
            let value = value.to_str().map_err(|_| {
                ApiError::bad_request(format!("header {name} is not visible ASCII"))
            })?;
            kafka_headers.push((name.to_string(), value.to_string()));
        }
    }
    let record = Record {
        topic: &topic,
        key: params.string("key").map(str::as_bytes),
        partition,
        headers: &kafka_headers,
        payload: &body,
    };
    let produced = kafka.produce(record).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::KafkaUnavailable,
            e.to_string(),
        )
    })?;
    Ok(
        Json(json!({"topic": topic, "partition": produced.partition, "offset": produced.offset}))
            .into_response(),
    )
}
