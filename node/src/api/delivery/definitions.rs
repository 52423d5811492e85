//! The webhook, route and bridge definition endpoints: handlers shared by
//! these kinds (and the sinks and databases of `sql_sinks.rs`), and one module
//! per kind whose annotated handlers call them (each kind has its own
//! paths, schemas and operation ids).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use shoal_acl::{Access, Resource};
use shoal_actors::config::{
    Bridge, Route, Webhook, BRIDGES_PREFIX, ROUTES_PREFIX, WEBHOOKS_PREFIX,
};
use shoal_datasets::report::{Report, REPORTS_PREFIX};
use shoal_datasets::{Dataset, DATASETS_PREFIX};
use shoal_sinks::definition::{Database, Sink, DATABASES_PREFIX, SINKS_PREFIX};
use shoal_storage::kv::{Txn, TxnOp};
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::api::extract::{JsonBody, PathText};
use crate::services::shoal::Shoal;

/// The kinds of messaging configuration, for the shared handlers.
#[derive(Clone, Copy)]
pub enum Kind {
    Webhook,
    Route,
    Bridge,
    Sink,
    Database,
    Dataset,
    Report,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Webhook => WEBHOOKS_PREFIX,
            Kind::Route => ROUTES_PREFIX,
            Kind::Bridge => BRIDGES_PREFIX,
            Kind::Sink => SINKS_PREFIX,
            Kind::Database => DATABASES_PREFIX,
            Kind::Dataset => DATASETS_PREFIX,
            Kind::Report => REPORTS_PREFIX,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Route => "route",
            Kind::Bridge => "bridge",
            Kind::Sink => "sink",
            Kind::Database => "database",
            Kind::Dataset => "dataset",
            Kind::Report => "report",
        }
    }

    /// Parse and validate a definition; the stored JSON.
    fn validate(self, name: &str, body: Value) -> ApiResult<Value> {
        fn check<T: DeserializeOwned + Serialize, E: ToString>(
            body: Value,
            validate: impl FnOnce(T) -> Result<T, E>,
        ) -> ApiResult<Value> {
            let parsed: T = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("invalid definition: {e}")))?;
            let valid = validate(parsed).map_err(|e| ApiError::bad_request(e.to_string()))?;
            serde_json::to_value(valid).map_err(|e| ApiError::internal(e.to_string()))
        }
        match self {
            Kind::Webhook => check(body, |w: Webhook| w.validate(name)),
            Kind::Route => check(body, |r: Route| r.validate(name)),
            Kind::Bridge => check(body, |b: Bridge| b.validate(name)),
            Kind::Sink => check(body, |s: Sink| s.validate(name)),
            Kind::Database => check(body, |d: Database| d.validate(name)),
            Kind::Dataset => check(body, |d: Dataset| d.validate(name)),
            Kind::Report => check(body, |r: Report| r.validate(name)),
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

pub fn check_name(kind: Kind, name: &str) -> ApiResult<()> {
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
    // After the size check: a database's check runs its migrations.
    match (kind, stored.get("url").and_then(Value::as_str)) {
        (Kind::Webhook, Some(url)) => shoal.outbound.check_destination(url).await?,
        (Kind::Database, _) => super::sql_sinks::check_database(&shoal, &stored).await?,
        (Kind::Sink, _) => super::sql_sinks::check_sink(&shoal, &stored).await?,
        (Kind::Dataset, _) => super::datasets::check_dataset(&shoal, &stored).await?,
        (Kind::Report, _) => crate::api::reports::check_report(&shoal, &stored)?,
        _ => {}
    }
    let key = format!("{}{name}", kind.prefix());
    let put = TxnOp::Put {
        key,
        value,
        lease: 0,
    };
    shoal
        .txn(Txn {
            compare: vec![],
            success: vec![put],
            failure: vec![],
        })
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
    if shoal.delete_key(key).await?.is_none() {
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
        description = "Every message published on a topic matching `pattern` (or sent by a route) is POSTed to `url` at least once, signed as Standard Webhooks specifies (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), retried on the schedule, then kept as a dead letter. Stored in Raft: every node applies it without a restart. A `url` that points at a loopback, link-local, private or otherwise non-public address (by its address, `localhost`, or a name resolving only to such addresses) is refused unless the operator allows it with `--outbound-allow`.",
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
            (status = 400, description = "Malformed request: the name, or a definition that does not parse or is invalid (`bad_request`), or a `url` the outbound policy refuses (`destination_refused`). Error codes: `bad_request`, `destination_refused`.", body = ErrorBody),
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
        caller: Caller,
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<Value>> {
        let Json(webhook) = super::get(shoal, Kind::Webhook, name).await?;
        Ok(Json(without_secret(&caller, webhook)))
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
    pub async fn list(
        caller: Caller,
        State(shoal): State<Arc<Shoal>>,
    ) -> ApiResult<Json<WebhookList>> {
        let webhooks = super::list(shoal, Kind::Webhook).await?;
        Ok(Json(WebhookList {
            webhooks: webhooks
                .into_iter()
                .map(|webhook| without_secret(&caller, webhook))
                .collect(),
        }))
    }

    /// The signing secret is shown only to tokens that may change the
    /// webhook (read access alone does not reveal it).
    fn without_secret(caller: &Caller, mut webhook: Value) -> Value {
        let name = webhook
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let resource = format!("webhooks/{name}");
        if !caller.may(Resource::Delivery, &resource, Access::Write) {
            if let Some(fields) = webhook.as_object_mut() {
                fields.remove("secret");
            }
        }
        webhook
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
        description = "Messages on topics matching `source` (and passing `filter`) also go to each destination: `topic:<t>` re-publishes a copy (loops stop after 8 hops), `webhook:<name>`, `kafka:<topic>`, `sql:<sink>` (a row of a SQL sink's table) and `workflows:inbox` (the workflow event inbox) go through the durable outbox. Stored in Raft: every node applies it without a restart.",
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
