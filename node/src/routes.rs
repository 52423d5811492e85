//! The route table: every public HTTP route (Shoal's own API and the
//! compatibility endpoints), with its body limit and middleware. It sits
//! above `api/` and `compat/` and only assembles them.
//!
//! Handlers are registered through their `#[utoipa::path]` annotations
//! (`routes!`), so the path and method a handler is served at are the ones
//! its documentation names, and the OpenAPI document is collected from the
//! same table: neither can drift from the other.

use axum::extract::DefaultBodyLimit;
use axum::routing::{on, MethodFilter};
use axum::{middleware, Extension, Router};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::doc::OpenApiJson;
use crate::api::{self, AppState};
use crate::compat;

/// Publish body limit: a batch of messages at the payload limit, as JSON.
fn publish_limit(max_message_bytes: usize) -> usize {
    max_message_bytes * 2 + (1 << 20)
}

/// Body limits of the route groups (see `Settings`).
pub struct Limits {
    /// Everything not named below.
    pub default: usize,
    pub publish: usize,
    pub log_ingest: usize,
}

impl Limits {
    pub fn of(app: &AppState) -> Limits {
        let settings = &app.shoal.settings;
        Limits {
            default: api::body_limit(settings.max_value_bytes),
            publish: publish_limit(settings.max_message_bytes),
            log_ingest: settings.logs_max_body_bytes,
        }
    }
}

fn table(limits: &Limits) -> OpenApiRouter<AppState> {
    let publishing = OpenApiRouter::new()
        .routes(routes!(api::messaging::publish_one))
        .routes(routes!(api::messaging::publish_batch))
        .routes(routes!(api::delivery::produce))
        .layer(DefaultBodyLimit::max(limits.publish));
    // Log ingest bodies are larger than config values; their own limit.
    let ingest = OpenApiRouter::new()
        .routes(routes!(api::logs::ingest))
        .routes(routes!(
            compat::elastic::bulk_default,
            compat::elastic::bulk_default_put
        ))
        .routes(routes!(
            compat::elastic::bulk_index,
            compat::elastic::bulk_index_put
        ))
        .routes(routes!(compat::elastic::info, compat::elastic::ping))
        .layer(middleware::from_fn(compat::elastic::product_header))
        .layer(DefaultBodyLimit::max(limits.log_ingest));
    OpenApiRouter::new()
        .merge(publishing)
        .merge(ingest)
        .routes(routes!(api::logs::search, api::logs::search_post))
        .routes(routes!(api::logs::aggregate, api::logs::aggregate_post))
        .routes(routes!(api::logs::tail::tail))
        .routes(routes!(api::logs::streams))
        .routes(routes!(api::logs::sql::sql_get, api::logs::sql::sql))
        .routes(routes!(api::logs::trace))
        .routes(routes!(compat::jaeger::services))
        .routes(routes!(compat::jaeger::service_operations))
        .routes(routes!(compat::jaeger::operations))
        .routes(routes!(compat::jaeger::find_traces))
        .routes(routes!(compat::jaeger::trace))
        .routes(routes!(api::messaging::interest))
        .routes(routes!(api::messaging::publish_socket::publish_socket))
        .routes(routes!(api::messaging::subscribe::sse))
        .routes(routes!(api::messaging::subscribe::websocket))
        .routes(routes!(api::delivery::webhooks::list))
        .routes(routes!(
            api::delivery::webhooks::put,
            api::delivery::webhooks::get,
            api::delivery::webhooks::delete
        ))
        .routes(routes!(api::delivery::dead_letters))
        .routes(routes!(api::delivery::replay))
        .routes(routes!(api::delivery::routes::list))
        .routes(routes!(
            api::delivery::routes::put,
            api::delivery::routes::get,
            api::delivery::routes::delete
        ))
        .routes(routes!(api::delivery::bridges::list))
        .routes(routes!(
            api::delivery::bridges::put,
            api::delivery::bridges::get,
            api::delivery::bridges::delete
        ))
        .routes(routes!(api::delivery::sinks::list))
        .routes(routes!(
            api::delivery::sinks::put,
            api::delivery::sinks::get,
            api::delivery::sinks::delete
        ))
        .routes(routes!(api::delivery::sql_sinks::sink_dead_letters))
        .routes(routes!(api::delivery::sql_sinks::sink_replay))
        .routes(routes!(api::delivery::databases::list))
        .routes(routes!(
            api::delivery::databases::put,
            api::delivery::databases::get,
            api::delivery::databases::delete
        ))
        .routes(routes!(api::delivery::datasets::definition::list))
        .routes(routes!(
            api::delivery::datasets::definition::put,
            api::delivery::datasets::definition::get,
            api::delivery::datasets::definition::delete
        ))
        .routes(routes!(api::delivery::datasets::dataset_files))
        .routes(routes!(api::delivery::datasets::dataset_dead_letters))
        .routes(routes!(api::delivery::datasets::dataset_replay))
        .routes(routes!(api::sql::sql))
        .routes(routes!(api::reports::list))
        .routes(routes!(
            api::reports::put,
            api::reports::get,
            api::reports::delete
        ))
        .routes(routes!(api::reports::run))
        .routes(routes!(api::reports::runs))
        .routes(routes!(api::delivery::outbox))
        .routes(routes!(api::node::health))
        .routes(routes!(api::node::ready))
        .routes(routes!(api::node::metrics))
        .routes(routes!(api::doc::openapi))
        .routes(routes!(api::node::status))
        .routes(routes!(api::kv::list))
        .routes(routes!(api::kv::get, api::kv::put, api::kv::delete))
        .routes(routes!(api::kv::txn))
        .routes(routes!(api::kv::history))
        .routes(routes!(api::kv::rollback))
        .routes(routes!(api::kv::compact))
        .routes(routes!(api::lease::list, api::lease::grant))
        .routes(routes!(api::lease::get, api::lease::revoke))
        .routes(routes!(api::lease::keepalive))
        .routes(routes!(api::watch::sse))
        .routes(routes!(api::watch::poll))
        .routes(routes!(api::cluster::status))
        .routes(routes!(api::cluster::leave))
        .routes(routes!(api::cluster::digest))
        .routes(routes!(api::workflows::list_definitions))
        .routes(routes!(
            api::workflows::put_definition,
            api::workflows::get_definition,
            api::workflows::delete_definition
        ))
        .routes(routes!(api::workflow_instances::start_instance))
        .routes(routes!(api::workflow_instances::list_instances))
        .routes(routes!(api::workflow_instances::get_instance))
        .routes(routes!(api::workflow_instances::act_on_instance))
        .routes(routes!(api::workflow_instances::act_on_instances))
        .routes(routes!(api::workflow_events::send_event))
        .routes(routes!(api::workflow_events::list_events))
        .routes(routes!(api::acl::bootstrap))
        .routes(routes!(api::acl::whoami))
        .routes(routes!(api::acl::list_policies))
        .routes(routes!(
            api::acl::put_policy,
            api::acl::get_policy,
            api::acl::delete_policy
        ))
        .routes(routes!(api::acl::list_roles))
        .routes(routes!(
            api::acl::put_role,
            api::acl::get_role,
            api::acl::delete_role
        ))
        .routes(routes!(api::acl::list_tokens, api::acl::create_token))
        .routes(routes!(api::acl::get_token, api::acl::delete_token))
        .layer(DefaultBodyLimit::max(limits.default))
}

/// The OpenAPI document of the routes `router` serves.
pub fn document() -> OpenApi {
    let limits = Limits {
        default: 0,
        publish: 0,
        log_ingest: 0,
    };
    api::doc::finish(table(&limits).split_for_parts().1)
}

pub fn router(app: AppState) -> Router {
    let (router, document) = table(&Limits::of(&app)).split_for_parts();
    let document = api::doc::finish(document);
    let json = serde_json::to_string(&document).unwrap_or_else(|_| "{}".to_string());
    // WebSockets over HTTP/2 open with CONNECT (RFC 8441), a method OpenAPI
    // has no operation for: the same handlers, beside their documented GET.
    router
        .route(
            "/v1/subscribe/ws",
            on(MethodFilter::CONNECT, api::messaging::subscribe::websocket),
        )
        .route(
            "/v1/publish/ws",
            on(
                MethodFilter::CONNECT,
                api::messaging::publish_socket::publish_socket,
            ),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), api::limit_time))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            api::auth::authorize,
        ))
        .fallback(api::node::not_found)
        .method_not_allowed_fallback(api::node::method_not_allowed)
        .layer(Extension(OpenApiJson(json.into())))
        .layer(middleware::from_fn_with_state(app.clone(), api::observe))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }

    /// The schema names of every type deriving `ToSchema` under `dir`
    /// (its own name, or the one `#[schema(as = ...)]` gives it), with the
    /// file it is in.
    fn schema_names(dir: &std::path::Path, found: &mut Vec<(String, String)>) {
        let entries = std::fs::read_dir(dir).expect("read the source directory");
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                schema_names(&path, found);
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap_or_default();
            for item in source.split("#[derive(").skip(1) {
                let derives = item.split(')').next().unwrap_or_default();
                if !derives.contains("ToSchema") {
                    continue;
                }
                let Some(at) = ["struct ", "enum "]
                    .iter()
                    .filter_map(|keyword| item.find(keyword).map(|i| i + keyword.len()))
                    .min()
                else {
                    continue;
                };
                let rust_name: String = item[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let attributes = &item[..at];
                let name = attributes
                    .split("as = ")
                    .nth(1)
                    .map(|rest| {
                        rest.chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect()
                    })
                    .unwrap_or(rust_name);
                found.push((name, path.display().to_string()));
            }
        }
    }

    /// No two types document themselves under the same schema name: the
    /// generator keeps one of them silently, and the other's answers are
    /// then checked against the wrong schema.
    #[test]
    fn every_schema_name_is_used_once() {
        let mut found = Vec::new();
        // The checkout under test, not the one this test was compiled in
        // (checkouts that share a target directory reuse compiled tests).
        let root = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
        );
        // This crate and the crates whose types it documents.
        for dir in ["src", "../actors/src", "../workflows/src"] {
            schema_names(&root.join(dir), &mut found);
        }
        assert!(found.len() > 50, "only {} schemas found", found.len());
        let mut seen = std::collections::BTreeMap::new();
        for (name, file) in found {
            if let Some(other) = seen.insert(name.clone(), file.clone()) {
                panic!("schema {name} is defined in {other} and in {file}");
            }
        }
    }

    /// Every `$ref` points at a component that exists, and no component is
    /// a bare Rust primitive (what a type alias such as `NodeId` becomes
    /// without `#[schema(value_type = u64)]`).
    #[test]
    fn every_reference_in_the_document_resolves() {
        let document = serde_json::to_value(document()).expect("the document serializes");
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(found.len() > 50, "only {} references", found.len());
        for target in found {
            let pointer = target.trim_start_matches('#');
            assert!(
                document.pointer(pointer).is_some(),
                "{target} does not resolve"
            );
        }
        let schemas = document["components"]["schemas"]
            .as_object()
            .expect("schemas");
        for name in schemas.keys() {
            assert!(
                name.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
                "component schema {name} is not a named type"
            );
        }
    }

    /// Every `{parameter}` of a path is documented as a path parameter, and
    /// every operation has its own id (clients generate method names from
    /// them).
    #[test]
    fn the_document_names_every_path_parameter_and_operation_once() {
        let document: serde_json::Value =
            serde_json::to_value(document()).expect("the document serializes");
        let paths = document["paths"].as_object().expect("paths");
        assert!(paths.len() > 40, "only {} paths", paths.len());
        let mut ids = BTreeSet::new();
        for (path, operations) in paths {
            let wanted: BTreeSet<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|rest| rest.split('}').next())
                .collect();
            for (method, operation) in operations.as_object().expect("operations") {
                let id = operation["operationId"].as_str().unwrap_or_default();
                assert!(
                    ids.insert(id.to_string()),
                    "{method} {path}: operationId {id} twice"
                );
                let documented: BTreeSet<&str> = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert_eq!(wanted, documented, "{method} {path}: path parameters");
            }
        }
    }
}
