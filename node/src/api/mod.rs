//! The public HTTP API (axum): Shoal's own endpoints, grouped per service,
//! and the HTTP plumbing they and the compatibility endpoints share
//! (`ApiError`, extractors, JSON models, [`AppState`], the request
//! middleware). Every handler answers errors as `ApiError`, converting the
//! services' typed errors with `From`. It sits on the services and must
//! not be imported by them, by `cluster/`, or by the CLI; the route table
//! is `routes.rs`, above both this and `compat/`.

pub mod acl;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod delivery;
pub mod doc;
pub mod error;
pub mod extract;
pub mod kv;
pub mod lease;
pub mod logs;
pub mod messaging;
pub mod model;
pub mod node;
pub mod reports;
pub mod sql;
pub mod watch;
pub mod workflow_events;
pub mod workflow_instances;
pub mod workflows;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument;

use crate::services::shoal::Shoal;

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

/// The request's id (the client's `X-Request-Id`, or one made up), for the
/// middleware and handlers after [`observe`].
#[derive(Clone)]
pub struct RequestId(pub String);

/// Per-request span (request id, node id) and request count/latency metrics.
pub async fn observe(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
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
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
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

/// Routes allowed to take longer than `--request-timeout-ms`: the
/// long-poll waits up to its own `timeout_ms` (300 s at most).
const UNTIMED_ROUTES: [&str; 1] = ["/v1/watch/poll"];

/// Bound every request, its body included, by `--request-timeout-ms` plus
/// a second (so that the services' own deadlines answer first): a client
/// that sends its body slowly, or a request stuck for any other reason,
/// gets `504 timeout` and gives its place back. Streams are not bounded:
/// their handlers answer at once and the stream runs after.
pub async fn limit_time(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    if route.is_some_and(|route| UNTIMED_ROUTES.contains(&route)) {
        return next.run(request).await;
    }
    let limit = std::time::Duration::from_millis(app.shoal.settings.request_timeout_ms)
        + std::time::Duration::from_secs(1);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("shoal_http_requests_timed_out_total").increment(1);
            axum::response::IntoResponse::into_response(error::ApiError::timeout())
        }
    }
}
