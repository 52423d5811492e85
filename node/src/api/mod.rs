//! The public HTTP API (axum). Every handler answers errors as `ApiError`.

mod cluster;
mod delivery;
mod elastic;
pub mod error;
pub mod extract;
mod jaeger;
mod kv;
mod lease;
pub mod logs;
mod messaging;
mod model;
mod node;
pub mod watch;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument;

use crate::service::Shoal;

#[derive(Clone)]
pub struct AppState {
    pub shoal: Arc<Shoal>,
    pub prometheus: PrometheusHandle,
}

impl FromRef<AppState> for Arc<Shoal> {
    fn from_ref(app: &AppState) -> Arc<Shoal> {
        app.shoal.clone()
    }
}

/// Request body limit: room for a maximal value base64-encoded in a transaction.
pub fn body_limit(max_value_bytes: usize) -> usize {
    max_value_bytes * 2 + (64 << 10)
}

pub use cluster::leave_this_node;

/// Publish body limit: a batch of messages at the payload limit, as JSON.
fn publish_limit(max_message_bytes: usize) -> usize {
    max_message_bytes * 2 + (1 << 20)
}

pub fn router(app: AppState) -> Router {
    let limit = body_limit(app.shoal.settings.max_value_bytes);
    let publishing = Router::new()
        .route("/v1/topics/{topic}", post(messaging::publish_one))
        .route("/v1/publish", post(messaging::publish_batch))
        .route("/v1/kafka/{topic}", post(delivery::produce))
        .layer(DefaultBodyLimit::max(publish_limit(
            app.shoal.settings.max_message_bytes,
        )));
    // Log ingest bodies are larger than config values; their own limit.
    let ingest = Router::new()
        .route("/v1/logs/{stream}", post(logs::ingest))
        .route(
            "/_bulk",
            post(elastic::bulk_default).put(elastic::bulk_default),
        )
        .route(
            "/{index}/_bulk",
            post(elastic::bulk_index).put(elastic::bulk_index),
        )
        .route("/", get(elastic::info).head(elastic::ping))
        .layer(middleware::from_fn(elastic::product_header))
        .layer(DefaultBodyLimit::max(
            app.shoal.settings.logs_max_body_bytes,
        ));
    Router::new()
        .merge(publishing)
        .merge(ingest)
        .route("/v1/logs/search", get(logs::search).post(logs::search))
        .route(
            "/v1/logs/aggregate",
            get(logs::aggregate).post(logs::aggregate),
        )
        .route("/v1/logs/tail", get(logs::tail))
        .route("/v1/logs/streams", get(logs::streams))
        .route("/v1/logs/sql", get(logs::sql).post(logs::sql))
        .route("/v1/traces/{trace_id}", get(logs::trace))
        .route("/api/services", get(jaeger::services))
        .route(
            "/api/services/{service}/operations",
            get(jaeger::service_operations),
        )
        .route("/api/operations", get(jaeger::operations))
        .route("/api/traces", get(jaeger::find_traces))
        .route("/api/traces/{trace_id}", get(jaeger::trace))
        .route("/v1/topics", get(messaging::interest))
        .route("/v1/publish/ws", get(messaging::publish_socket))
        .route("/v1/subscribe", get(messaging::sse))
        .route("/v1/subscribe/ws", get(messaging::websocket))
        .route("/v1/webhooks", get(delivery::webhooks::list))
        .route(
            "/v1/webhooks/{name}",
            put(delivery::webhooks::put)
                .get(delivery::webhooks::get)
                .delete(delivery::webhooks::delete),
        )
        .route(
            "/v1/webhooks/{name}/dead-letters",
            get(delivery::dead_letters),
        )
        .route(
            "/v1/webhooks/{name}/dead-letters/replay",
            post(delivery::replay),
        )
        .route("/v1/routes", get(delivery::routes::list))
        .route(
            "/v1/routes/{name}",
            put(delivery::routes::put)
                .get(delivery::routes::get)
                .delete(delivery::routes::delete),
        )
        .route("/v1/bridges", get(delivery::bridges::list))
        .route(
            "/v1/bridges/{name}",
            put(delivery::bridges::put)
                .get(delivery::bridges::get)
                .delete(delivery::bridges::delete),
        )
        .route("/v1/outbox", get(delivery::outbox))
        .route("/health", get(node::health))
        .route("/ready", get(node::ready))
        .route("/metrics", get(node::metrics))
        .route("/openapi.json", get(node::openapi))
        .route("/v1/status", get(node::status))
        .route("/v1/kv", get(kv::list))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", post(kv::txn))
        .route("/v1/history/{*key}", get(kv::history))
        .route("/v1/rollback/{*key}", post(kv::rollback))
        .route("/v1/compact", post(kv::compact))
        .route("/v1/leases", get(lease::list).post(lease::grant))
        .route("/v1/leases/{id}", get(lease::get).delete(lease::revoke))
        .route("/v1/leases/{id}/keepalive", post(lease::keepalive))
        .route("/v1/watch", get(watch::sse))
        .route("/v1/watch/poll", get(watch::poll))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/leave", post(cluster::leave))
        .route("/v1/cluster/digest", get(cluster::digest))
        .fallback(node::not_found)
        .method_not_allowed_fallback(node::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Make the request's span a child of the caller's W3C `traceparent`, so a
/// request (a publish, say) shows up inside the caller's trace when spans are
/// exported over OTLP.
fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) else {
        return;
    };
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    // Fails only when no OpenTelemetry layer is installed: nothing to do then.
    let _ = span.set_parent(parent);
}

/// Per-request span (request id, node id) and request count/latency metrics.
async fn observe(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let span =
        tracing::info_span!("request", %request_id, node_id = app.shoal.node_id, %method, %route);
    continue_trace(&span, request.headers());
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    span.in_scope(|| tracing::debug!(%status, elapsed_ms = elapsed * 1000.0, "request done"));
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("shoal_http_requests_total", &labels).increment(1);
    metrics::histogram!("shoal_http_request_duration_seconds", &labels[..2]).record(elapsed);
    if let Ok(value) = request_id.parse() {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
