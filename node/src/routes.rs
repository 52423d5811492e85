//! The route table: every public HTTP route (Shoal's own API and the
//! compatibility endpoints), with its body limit and middleware. It sits
//! above `api/` and `compat/` and only assembles them.

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;

use crate::api::{self, AppState};
use crate::compat;

/// Publish body limit: a batch of messages at the payload limit, as JSON.
fn publish_limit(max_message_bytes: usize) -> usize {
    max_message_bytes * 2 + (1 << 20)
}

pub fn router(app: AppState) -> Router {
    let limit = api::body_limit(app.shoal.settings.max_value_bytes);
    let publishing = Router::new()
        .route("/v1/topics/{topic}", post(api::messaging::publish_one))
        .route("/v1/publish", post(api::messaging::publish_batch))
        .route("/v1/kafka/{topic}", post(api::delivery::produce))
        .layer(DefaultBodyLimit::max(publish_limit(
            app.shoal.settings.max_message_bytes,
        )));
    // Log ingest bodies are larger than config values; their own limit.
    let ingest = Router::new()
        .route("/v1/logs/{stream}", post(api::logs::ingest))
        .route(
            "/_bulk",
            post(compat::elastic::bulk_default).put(compat::elastic::bulk_default),
        )
        .route(
            "/{index}/_bulk",
            post(compat::elastic::bulk_index).put(compat::elastic::bulk_index),
        )
        .route("/", get(compat::elastic::info).head(compat::elastic::ping))
        .layer(middleware::from_fn(compat::elastic::product_header))
        .layer(DefaultBodyLimit::max(
            app.shoal.settings.logs_max_body_bytes,
        ));
    Router::new()
        .merge(publishing)
        .merge(ingest)
        .route(
            "/v1/logs/search",
            get(api::logs::search).post(api::logs::search),
        )
        .route(
            "/v1/logs/aggregate",
            get(api::logs::aggregate).post(api::logs::aggregate),
        )
        .route("/v1/logs/tail", get(api::logs::tail))
        .route("/v1/logs/streams", get(api::logs::streams))
        .route("/v1/logs/sql", get(api::logs::sql).post(api::logs::sql))
        .route("/v1/traces/{trace_id}", get(api::logs::trace))
        .route("/api/services", get(compat::jaeger::services))
        .route(
            "/api/services/{service}/operations",
            get(compat::jaeger::service_operations),
        )
        .route("/api/operations", get(compat::jaeger::operations))
        .route("/api/traces", get(compat::jaeger::find_traces))
        .route("/api/traces/{trace_id}", get(compat::jaeger::trace))
        .route("/v1/topics", get(api::messaging::interest))
        .route("/v1/publish/ws", get(api::messaging::publish_socket))
        .route("/v1/subscribe", get(api::messaging::sse))
        .route("/v1/subscribe/ws", get(api::messaging::websocket))
        .route("/v1/webhooks", get(api::delivery::webhooks::list))
        .route(
            "/v1/webhooks/{name}",
            put(api::delivery::webhooks::put)
                .get(api::delivery::webhooks::get)
                .delete(api::delivery::webhooks::delete),
        )
        .route(
            "/v1/webhooks/{name}/dead-letters",
            get(api::delivery::dead_letters),
        )
        .route(
            "/v1/webhooks/{name}/dead-letters/replay",
            post(api::delivery::replay),
        )
        .route("/v1/routes", get(api::delivery::routes::list))
        .route(
            "/v1/routes/{name}",
            put(api::delivery::routes::put)
                .get(api::delivery::routes::get)
                .delete(api::delivery::routes::delete),
        )
        .route("/v1/bridges", get(api::delivery::bridges::list))
        .route(
            "/v1/bridges/{name}",
            put(api::delivery::bridges::put)
                .get(api::delivery::bridges::get)
                .delete(api::delivery::bridges::delete),
        )
        .route("/v1/outbox", get(api::delivery::outbox))
        .route("/health", get(api::node::health))
        .route("/ready", get(api::node::ready))
        .route("/metrics", get(api::node::metrics))
        .route("/openapi.json", get(api::node::openapi))
        .route("/v1/status", get(api::node::status))
        .route("/v1/kv", get(api::kv::list))
        .route(
            "/v1/kv/{*key}",
            get(api::kv::get).put(api::kv::put).delete(api::kv::delete),
        )
        .route("/v1/txn", post(api::kv::txn))
        .route("/v1/history/{*key}", get(api::kv::history))
        .route("/v1/rollback/{*key}", post(api::kv::rollback))
        .route("/v1/compact", post(api::kv::compact))
        .route("/v1/leases", get(api::lease::list).post(api::lease::grant))
        .route(
            "/v1/leases/{id}",
            get(api::lease::get).delete(api::lease::revoke),
        )
        .route("/v1/leases/{id}/keepalive", post(api::lease::keepalive))
        .route("/v1/watch", get(api::watch::sse))
        .route("/v1/watch/poll", get(api::watch::poll))
        .route("/v1/cluster", get(api::cluster::status))
        .route("/v1/cluster/leave", post(api::cluster::leave))
        .route("/v1/cluster/digest", get(api::cluster::digest))
        .fallback(api::node::not_found)
        .method_not_allowed_fallback(api::node::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(app.clone(), api::observe))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// (path, method) of every `.route(...)` in this file's source. The
    /// route table is read from the source because a built axum `Router`
    /// does not list its routes.
    fn routes_in_source() -> BTreeSet<(String, String)> {
        let source = include_str!("routes.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        let mut routes = BTreeSet::new();
        for call in source.split(".route(").skip(1) {
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(call.len(), |(i, _)| i);
            let call = &call[..end];
            let path = call
                .split('"')
                .nth(1)
                .expect("a route path literal")
                .to_string();
            // Methods are `get(`, `.put(`, ... at the start of the handler
            // expression or after a dot (not inside `api::kv::get`).
            let handlers = call.split_once(',').map_or("", |(_, rest)| rest);
            for method in ["get", "post", "put", "delete", "head", "patch"] {
                let called = format!("{method}(");
                let mut rest = handlers;
                while let Some(at) = rest.find(&called) {
                    let before = rest[..at].trim_end().chars().last();
                    if matches!(before, None | Some('.') | Some(',')) {
                        routes.insert((path.clone(), method.to_string()));
                    }
                    rest = &rest[at + called.len()..];
                }
            }
        }
        routes
    }

    /// The OpenAPI document lists exactly the routes the router serves:
    /// a route added or removed without its documentation fails here (the
    /// API fuzz test in tests/ checks the answers against the document).
    #[test]
    fn the_openapi_document_lists_exactly_the_routes_served() {
        let document: serde_json::Value =
            serde_json::from_str(include_str!("api/openapi.json")).expect("openapi.json is JSON");
        let mut documented = BTreeSet::new();
        for (path, operations) in document["paths"].as_object().expect("paths") {
            // The document names a catch-all `{*key}` parameter `{key}`.
            let path = path.replace("{key}", "{*key}");
            for method in operations.as_object().expect("operations").keys() {
                if method != "parameters" {
                    documented.insert((path.clone(), method.clone()));
                }
            }
        }
        let served = routes_in_source();
        assert!(served.len() > 40, "the route parser found only {served:?}");
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not in openapi.json: {undocumented:?}\n\
             in openapi.json but not served: {unserved:?}"
        );
    }
}
