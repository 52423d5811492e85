//! Webhook subscriptions, routing rules and Kafka bridges (stored in Raft),
//! dead letters and the outbox (per node, gathered across the cluster), and
//! producing to Kafka.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_actors::config::{
    validate_kafka_topic, Bridge, ConfigError, Route, Webhook, BRIDGES_PREFIX, ROUTES_PREFIX,
    WEBHOOKS_PREFIX,
};
use shoal_actors::deliver::Entry;
use shoal_actors::kafka::Record;
use shoal_storage::kv::{Command, Txn, TxnOp};
use shoal_storage::outbox::List;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use super::extract::{Body, JsonBody, Params, PathText};
use super::messaging::RawPayload;
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
pub async fn put(
    shoal: Arc<Shoal>,
    kind: Kind,
    name: String,
    body: Value,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(stored))
}

/// `GET /v1/{kind}/{name}` (linearizable).
pub async fn get(shoal: Arc<Shoal>, kind: Kind, name: String) -> ApiResult<Json<Value>> {
    check_name(kind, &name)?;
    shoal.read_barrier(false).await?;
    let key = format!("{}{name}", kind.prefix());
    let (_, kv) = shoal.read(move |store| store.kv_get(&key)).await?;
    let kv = kv.ok_or_else(|| not_found(kind, &name))?;
    let value: Value =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(value))
}

/// `GET /v1/{kind}` (linearizable): every definition, by name.
pub async fn list(shoal: Arc<Shoal>, kind: Kind) -> ApiResult<Vec<Value>> {
    shoal.read_barrier(false).await?;
    let prefix = kind.prefix();
    let (_, kvs, _) = shoal
        .read(move |store| store.kv_range(prefix, None, 10_000))
        .await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// `DELETE /v1/{kind}/{name}`; 404 if it does not exist.
pub async fn delete(
    shoal: Arc<Shoal>,
    kind: Kind,
    name: String,
) -> ApiResult<Json<DefinitionDeleted>> {
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
    Ok(Json(DefinitionDeleted { deleted: name }))
}

/// The answer to deleting a webhook, route or bridge.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"deleted": "billing"}))]
pub struct DefinitionDeleted {
    /// The deleted definition's name
    pub deleted: String,
}

/// The answer of `GET /v1/webhooks`.
#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    /// Every webhook, by name (each as `PUT /v1/webhooks/{name}` stored it)
    #[schema(value_type = Vec<shoal_actors::config::Webhook>)]
    pub webhooks: Vec<Value>,
}

/// The answer of `GET /v1/routes`.
#[derive(Serialize, ToSchema)]
pub struct RouteList {
    /// Every route, by name (each as `PUT /v1/routes/{name}` stored it)
    #[schema(value_type = Vec<shoal_actors::config::Route>)]
    pub routes: Vec<Value>,
}

/// The answer of `GET /v1/bridges`.
#[derive(Serialize, ToSchema)]
pub struct BridgeList {
    /// Every bridge, by name (each as `PUT /v1/bridges/{name}` stored it)
    #[schema(value_type = Vec<shoal_actors::config::Bridge>)]
    pub bridges: Vec<Value>,
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
        request_body(
            content = shoal_actors::config::Webhook,
            content_type = "application/json",
            example = json!({"url": "https://example.com/hooks/orders", "pattern": "orders.*"}),
        ),
        responses(
            (status = 200, description = "The stored definition, defaults filled in. ",
             body = shoal_actors::config::Webhook, example = json!({"name": "billing", "url": "https://example.com/hooks/orders", "pattern": "orders.*", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "retry_schedule_ms": [0, 5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000], "timeout_ms": 10000})),
            (status = 400, description = "Malformed request: the name, or a definition that does not parse or is invalid. Error codes: `bad_request`.", body = ErrorBody),
            (status = 413, description = "The body is over the request size limit (`payload_too_large`), or the stored definition would be over the value limit, --max-value-bytes (`value_too_large`). Error codes: `payload_too_large`, `value_too_large`.", body = ErrorBody),
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
        super::put(shoal, Kind::Webhook, name, body).await
    }

    #[utoipa::path(
        get,
        path = "/v1/webhooks/{name}",
        tag = "delivery",
        operation_id = "getWebhook",
        summary = "Read a webhook",
        description = "Linearizable read.",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "The definition. ",
             body = shoal_actors::config::Webhook, example = json!({"name": "billing", "url": "https://example.com/hooks/orders", "pattern": "orders.*", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "retry_schedule_ms": [0, 5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000], "timeout_ms": 10000})),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No webhook has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn get(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<Value>> {
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
            (status = 200, description = "All webhooks, by name. ", body = WebhookList,
             example = json!({"webhooks": [{"name": "billing", "url": "https://example.com/hooks/orders", "pattern": "orders.*", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "retry_schedule_ms": [0, 5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000], "timeout_ms": 10000}]})),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<WebhookList>> {
        Ok(Json(WebhookList {
            webhooks: super::list(shoal, Kind::Webhook).await?,
        }))
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
            (status = 200, description = "Deleted.", body = DefinitionDeleted),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No webhook has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn delete(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<DefinitionDeleted>> {
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
        request_body(
            content = shoal_actors::config::Route,
            content_type = "application/json",
            example = json!({"source": "orders.*", "filter": {"header": {"name": "region", "equals": "eu"}}, "destinations": ["topic:orders.eu", "webhook:billing"]}),
        ),
        responses(
            (status = 200, description = "The stored definition, defaults filled in. ",
             body = shoal_actors::config::Route, example = json!({"name": "eu-orders", "source": "orders.*", "filter": {"header": {"name": "region", "equals": "eu"}}, "destinations": ["topic:orders.eu", "webhook:billing"]})),
            (status = 400, description = "Malformed request: the name, or a definition that does not parse or is invalid. Error codes: `bad_request`.", body = ErrorBody),
            (status = 413, description = "The body is over the request size limit (`payload_too_large`), or the stored definition would be over the value limit, --max-value-bytes (`value_too_large`). Error codes: `payload_too_large`, `value_too_large`.", body = ErrorBody),
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
        super::put(shoal, Kind::Route, name, body).await
    }

    #[utoipa::path(
        get,
        path = "/v1/routes/{name}",
        tag = "delivery",
        operation_id = "getRoute",
        summary = "Read a route",
        description = "Linearizable read.",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "The definition. ",
             body = shoal_actors::config::Route, example = json!({"name": "eu-orders", "source": "orders.*", "filter": {"header": {"name": "region", "equals": "eu"}}, "destinations": ["topic:orders.eu", "webhook:billing"]})),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No route has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn get(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<Value>> {
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
            (status = 200, description = "All routes, by name. ", body = RouteList,
             example = json!({"routes": [{"name": "eu-orders", "source": "orders.*", "filter": {"header": {"name": "region", "equals": "eu"}}, "destinations": ["topic:orders.eu", "webhook:billing"]}]})),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<RouteList>> {
        Ok(Json(RouteList {
            routes: super::list(shoal, Kind::Route).await?,
        }))
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
            (status = 200, description = "Deleted.", body = DefinitionDeleted),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No route has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn delete(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<DefinitionDeleted>> {
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
        request_body(
            content = shoal_actors::config::Bridge,
            content_type = "application/json",
            example = json!({"kafka_topic": "orders", "topic": "kafka.orders"}),
        ),
        responses(
            (status = 200, description = "The stored definition, defaults filled in. ",
             body = shoal_actors::config::Bridge, example = json!({"name": "orders-in", "kafka_topic": "orders", "topic": "kafka.orders"})),
            (status = 400, description = "Malformed request: the name, or a definition that does not parse or is invalid. Error codes: `bad_request`.", body = ErrorBody),
            (status = 413, description = "The body is over the request size limit (`payload_too_large`), or the stored definition would be over the value limit, --max-value-bytes (`value_too_large`). Error codes: `payload_too_large`, `value_too_large`.", body = ErrorBody),
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
        super::put(shoal, Kind::Bridge, name, body).await
    }

    #[utoipa::path(
        get,
        path = "/v1/bridges/{name}",
        tag = "delivery",
        operation_id = "getBridge",
        summary = "Read a bridge",
        description = "Linearizable read.",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "The definition. ",
             body = shoal_actors::config::Bridge, example = json!({"name": "orders-in", "kafka_topic": "orders", "topic": "kafka.orders"})),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No bridge has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn get(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<Value>> {
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
            (status = 200, description = "All bridges, by name. ", body = BridgeList,
             example = json!({"bridges": [{"name": "orders-in", "kafka_topic": "orders", "topic": "kafka.orders"}]})),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<BridgeList>> {
        Ok(Json(BridgeList {
            bridges: super::list(shoal, Kind::Bridge).await?,
        }))
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
            (status = 200, description = "Deleted.", body = DefinitionDeleted),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No bridge has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn delete(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<DefinitionDeleted>> {
        super::delete(shoal, Kind::Bridge, name).await
    }
}

/// A message whose retry schedule ran out.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    /// The node that keeps it (the node that accepted the message)
    pub node_id: u64,
    /// Its sequence number on that node (with `node_id`, what replay's `only` names)
    pub seq: u64,
    /// The message's id
    pub id: String,
    /// The message's topic
    pub topic: String,
    /// Delivery attempts made
    pub attempts: u32,
    /// Why the last attempt failed
    pub last_error: Option<String>,
    /// The message as the webhook receives it: its envelope (CloudEvents 1.0
    /// structured mode, plus `topic` and `headers`: `specversion`, `id`, `topic`,
    /// `source`, `type`, `time`, `subject`, `datacontenttype`, `traceparent`,
    /// `headers`, and `data` or `data_base64`)
    #[schema(value_type = Object)]
    pub message: Value,
}

impl DeadLetter {
    fn new(node_id: u64, seq: u64, entry: &Entry) -> DeadLetter {
        DeadLetter {
            node_id,
            seq,
            id: entry.message.id.clone(),
            topic: entry.message.topic.clone(),
            attempts: entry.attempts,
            last_error: entry.last_error.clone(),
            message: entry.message.envelope(),
        }
    }
}

/// A webhook's dead letters, from every node that answered.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "webhook": "billing",
    "dead_letters": [{"node_id": 1, "seq": 12, "id": "5f1c...", "topic": "orders.created",
                      "attempts": 8, "last_error": "POST http://...: answered 500", "message": {}}],
    "unreachable": []
}))]
pub struct DeadLetters {
    /// The webhook's name
    pub webhook: String,
    /// The dead letters, node by node (at most `limit` per node)
    pub dead_letters: Vec<DeadLetter>,
    /// Nodes that did not answer (their dead letters are missing)
    pub unreachable: Vec<u64>,
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
/// (`scope=local`); answers by node, and the nodes that did not answer (or
/// whose answer did not parse).
async fn fan_out<T: DeserializeOwned>(
    shoal: &Shoal,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> (Vec<T>, Vec<u64>) {
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
                        response.json::<T>().await.map_err(|_| node_id)
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
        (status = 200, description = "Dead letters.", body = DeadLetters),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn dead_letters(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    params: Params,
) -> ApiResult<Json<DeadLetters>> {
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
        letters.push(DeadLetter::new(node_id, item.seq, &entry));
    }
    let mut unreachable = Vec::new();
    if !local_scope(&params)? {
        let path = format!("/v1/webhooks/{name}/dead-letters?scope=local&limit={limit}");
        let (answers, missing) =
            fan_out::<DeadLetters>(&shoal, reqwest::Method::GET, &path, None).await;
        for answer in answers {
            letters.extend(answer.dead_letters);
        }
        unreachable = missing;
    }
    Ok(Json(DeadLetters {
        webhook: name,
        dead_letters: letters,
        unreachable,
    }))
}

/// Which dead letters to replay (the body is optional: all of them).
#[derive(Deserialize, Serialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"only": [{"node_id": 1, "seq": 12}]}))]
pub struct ReplayRequest {
    /// Only these dead letters (by `node_id` and `seq`); all when absent.
    #[serde(default)]
    only: Option<Vec<ReplayItem>>,
}

/// One dead letter, as `GET /v1/webhooks/{name}/dead-letters` names it.
#[derive(Deserialize, Serialize, Clone, Copy, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayItem {
    /// The node that keeps it
    node_id: u64,
    /// Its sequence number on that node
    seq: u64,
}

/// How many dead letters went back to the outbox.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"webhook": "billing", "replayed": 3, "unreachable": []}))]
pub struct Replayed {
    /// The webhook's name
    pub webhook: String,
    /// Dead letters put back in the outbox, on every node that answered
    pub replayed: u64,
    /// Nodes that did not answer (their dead letters were not replayed)
    pub unreachable: Vec<u64>,
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
    request_body(
        content = Option<ReplayRequest>,
        content_type = "application/json",
        description = "Optional: without a body (or with `null`), every dead letter of the webhook is replayed.",
    ),
    responses(
        (status = 200, description = "Replayed.", body = Replayed),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = ErrorBody),
        (status = 413, description = "The body is too large. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn replay(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<Replayed>> {
    check_name(Kind::Webhook, &name)?;
    // No body (or `null`) replays every dead letter.
    let replay: ReplayRequest = if body.is_empty() {
        ReplayRequest::default()
    } else {
        serde_json::from_slice::<Option<ReplayRequest>>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
            .unwrap_or_default()
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
    let mut replayed = moved as u64;
    let mut unreachable = Vec::new();
    if !local_scope(&params)? {
        let path = format!("/v1/webhooks/{name}/dead-letters/replay?scope=local");
        let body = serde_json::to_value(&replay).map_err(|e| ApiError::internal(e.to_string()))?;
        let (answers, missing) =
            fan_out::<Replayed>(&shoal, reqwest::Method::POST, &path, Some(body)).await;
        replayed += answers.iter().map(|a| a.replayed).sum::<u64>();
        unreachable = missing;
    }
    Ok(Json(Replayed {
        webhook: name,
        replayed,
        unreachable,
    }))
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
        (status = 200, description = "Counts.", body = Outbox),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn outbox(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<Outbox>> {
    let outbox = shoal.messaging.deliveries.outbox().clone();
    let config = shoal.messaging.config();
    let mut names: Vec<String> = config
        .webhooks
        .keys()
        .map(|name| format!("webhook:{name}"))
        .collect();
    let counts = tokio::task::spawn_blocking(
        move || -> Result<Vec<OutboxDestination>, shoal_storage::StorageError> {
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
                    Ok(OutboxDestination {
                        destination,
                        pending,
                        dead,
                    })
                })
                .collect()
        },
    )
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(Outbox {
        node_id: shoal.node_id,
        destinations: counts,
    }))
}

/// This node's outbox: entries per destination.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"node_id": 1, "destinations": [
    {"destination": "webhook:billing", "pending": 0, "dead": 1}
]}))]
pub struct Outbox {
    /// This node
    pub node_id: u64,
    /// Every configured webhook and every destination with entries
    pub destinations: Vec<OutboxDestination>,
}

/// The outbox entries of one destination on this node.
#[derive(Serialize, ToSchema)]
pub struct OutboxDestination {
    /// `webhook:<name>` or `kafka:<topic>`
    pub destination: String,
    /// Entries waiting for delivery (or a retry)
    pub pending: u64,
    /// Dead letters: entries whose retry schedule ran out
    pub dead: u64,
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
    request_body(
        content = inline(RawPayload),
        content_type = "*/*",
        description = "The record's value, any bytes (up to --max-message-bytes).",
    ),
    responses(
        (status = 200, description = "Stored by Kafka.", body = KafkaReceipt),
        (status = 400, description = "Malformed request. Error codes: `kafka_not_configured`, `invalid_topic`, `bad_request`.", body = ErrorBody),
        (status = 413, description = "Payload too large. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 502, description = "Kafka did not take the record. Error codes: `kafka_unavailable`.", body = ErrorBody),
    )
)]
pub async fn produce(
    State(shoal): State<Arc<Shoal>>,
    PathText(topic): PathText,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<KafkaReceipt>> {
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
    Ok(Json(KafkaReceipt {
        topic,
        partition: produced.partition,
        offset: produced.offset,
    }))
}

/// Where Kafka stored a record.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"topic": "orders", "partition": 2, "offset": 41}))]
pub struct KafkaReceipt {
    /// The Kafka topic
    pub topic: String,
    /// The partition Kafka wrote the record to
    pub partition: i32,
    /// The record's offset in that partition
    pub offset: i64,
}
