//! The OpenAPI document. It is generated: every handler carries a
//! `#[utoipa::path]` annotation naming its method, path, parameters and
//! answers with their Rust types, the route table registers handlers through
//! those annotations (`routes.rs`), and this module adds what is the same for
//! every operation: the document's header, the shared error answers and the
//! `X-Request-Id` header.

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, InfoBuilder, ObjectBuilder, OpenApi, RefOr, ResponseBuilder,
    ServerBuilder, Tag, Type,
};
use utoipa::{ToResponse, ToSchema};

use super::error::ErrorBody;

/// An error answer shared by many operations, documented once under
/// `components/responses`.
fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build()
}

macro_rules! shared_error_response {
    ($name:ident, $description:literal) => {
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                (stringify!($name), RefOr::T(error_response($description)))
            }
        }
    };
}

shared_error_response!(
    Internal,
    "Internal error (storage failure, unexpected state). Error codes: `internal`."
);
shared_error_response!(
    Unavailable,
    "No leader or no quorum right now, or this node is not the leader and the request needs \
     one (`error.leader` names it when known); retry later or on the leader. A node whose disk \
     filled up completely answers every read 503 (`error.alarm` is `disk`) until it has \
     restarted by itself. Error codes: `unavailable`."
);
shared_error_response!(
    Timeout,
    "The request did not complete within the request timeout (`--request-timeout-ms`, default \
     10 s); it may still be applied. Error codes: `timeout`."
);
shared_error_response!(
    InsufficientStorage,
    "A space alarm is raised on a live member: the replicated store is past \
     `--quota-backend-mb` (`quota_exceeded`) or a disk has less than `--min-free-disk-mb` free \
     (`insufficient_storage`); `error.alarm` names it. Writes that add data are refused until \
     space is freed; deletes and compaction still work. A node whose disk filled up completely \
     answers every write (deletes included) 507 `insufficient_storage` until it has restarted \
     by itself. Error codes: `quota_exceeded`, `insufficient_storage`."
);
shared_error_response!(NotFound, "Any unknown route. Error codes: `not_found`.");
shared_error_response!(
    Unauthorized,
    "ACLs are on (`--acl`) and the request carries no token, or an unknown, deleted or expired \
     one. Error codes: `unauthorized`."
);
shared_error_response!(
    Forbidden,
    "The token's policies do not allow this (`error.resource` and `error.access` name what is \
     missing). Error codes: `permission_denied`."
);
shared_error_response!(
    MethodNotAllowed,
    "A known route called with a method it does not take. Error codes: `method_not_allowed`."
);

/// The serialized document, served at `/openapi.json`.
#[derive(Clone)]
pub struct OpenApiJson(pub Arc<str>);

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "node",
    operation_id = "openapi",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.",
               content_type = "application/json", body = Object))
)]
pub async fn openapi(Extension(document): Extension<OpenApiJson>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.to_string(),
    )
        .into_response()
}

const DESCRIPTION: &str = "HTTP API of a Shoal node (a Raft-replicated configuration store, \
pub/sub messaging and log search; default address 127.0.0.1:7700). Every node serves the same \
API. Bodies are UTF-8 JSON; key/value values are arbitrary bytes, base64 (standard alphabet, \
with padding) in JSON fields named `value`, raw bytes in the body of `PUT /v1/kv/{key}`.\n\n\
Successful responses that read or write the store carry `X-Shoal-Revision`. Every error is a \
4xx/5xx with body `{\"error\": {\"code\", \"message\", ...}}` (see the ErrorBody schema). Any \
unknown route answers 404 `not_found`; a wrong method on a known route answers 405 \
`method_not_allowed` (components/responses NotFound, MethodNotAllowed).\n\n\
Limits (defaults): key 1..1024 bytes (UTF-8, no control characters); value 1 MiB \
(`--max-value-bytes`); request body 2 × value limit + 64 KiB; 128 compares and 128 operations \
per transaction branch; list page 1..1000 (default 100); history page 1..1000 (default 100); \
long-poll `timeout_ms` ≤ 300000 (default 30000) and `limit` 1..10000 (default 1000); lease TTL \
1..86400 s; request timeout 10 s (`--request-timeout-ms`).";

const TAGS: [(&str, &str); 12] = [
    ("node", "Health, readiness, status, metrics"),
    ("cluster", "Membership, leaving, replica digests"),
    ("kv", "Keys, transactions, history, rollback, compaction"),
    ("leases", "Leases (TTL-bound keys)"),
    ("watch", "Change streams"),
    (
        "messaging",
        "Publish/subscribe between nodes, WebSocket streams",
    ),
    (
        "delivery",
        "Webhooks, routing rules, Kafka bridges, dead letters, outbox",
    ),
    (
        "logs",
        "Log ingest (own API, Elasticsearch _bulk), cluster-wide search, aggregations, live \
         tail, streams",
    ),
    (
        "workflows",
        "Workflow definitions (CNCF Serverless Workflow DSL 1.0)",
    ),
    ("data", "SQL over datasets (Polars), cluster-wide"),
    (
        "traces",
        "Whole traces across the cluster, and the Jaeger query API for Grafana",
    ),
    (
        "acl",
        "Tokens, roles and policies (with --acl, every other route needs a token)",
    ),
];

/// Completes the document the route table collected from the handlers'
/// annotations.
pub fn finish(mut document: OpenApi) -> OpenApi {
    document.info = InfoBuilder::new()
        .title("Shoal")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(DESCRIPTION))
        .build();
    document.servers = Some(vec![ServerBuilder::new()
        .url("http://127.0.0.1:7700")
        .description(Some("Default node address"))
        .build()]);
    document.tags = Some(
        TAGS.iter()
            .map(|(name, description)| {
                let mut tag = Tag::new(*name);
                tag.description = Some(description.to_string());
                tag
            })
            .collect(),
    );
    let components = document.components.get_or_insert_with(Default::default);
    for (name, response) in [
        <Internal as ToResponse>::response(),
        <Unavailable as ToResponse>::response(),
        <Timeout as ToResponse>::response(),
        <InsufficientStorage as ToResponse>::response(),
        <NotFound as ToResponse>::response(),
        <MethodNotAllowed as ToResponse>::response(),
        <Unauthorized as ToResponse>::response(),
        <Forbidden as ToResponse>::response(),
    ] {
        components.responses.insert(name.to_string(), response);
    }
    components.schemas.insert(
        "ErrorBody".to_string(),
        <ErrorBody as utoipa::PartialSchema>::schema(),
    );
    let mut schemas = Vec::new();
    <ErrorBody as ToSchema>::schemas(&mut schemas);
    components.schemas.extend(schemas);

    components.security_schemes.insert(
        "token".to_string(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A token's secret (`shoal acl token create`), needed when ACLs are on \
                     (`--acl`). Stream routes also take `access_token=`; the Elasticsearch \
                     routes also `ApiKey` and `Basic` (the token as password).",
                ))
                .build(),
        )),
    );

    // Axum's catch-all `{*key}` is the parameter `{key}` in OpenAPI.
    let paths = std::mem::take(&mut document.paths.paths);
    for (path, mut item) in paths {
        let open = super::auth::OPEN_ROUTES.contains(&path.as_str());
        for (method, operation) in operations(&mut item) {
            if matches!(method, "put" | "post" | "patch") {
                add_space_alarm(operation);
            }
            if !DISK_FULL_ANSWERED.contains(&path.as_str()) {
                add_disk_full(method, operation);
            }
            add_request_id(operation);
            if !open {
                add_token(operation);
            }
        }
        document.paths.paths.insert(path.replace("{*", "{"), item);
    }
    document
}

/// The token requirement and its two error answers.
fn add_token(operation: &mut utoipa::openapi::path::Operation) {
    operation.security = Some(vec![SecurityRequirement::new::<_, _, &str>("token", [])]);
    for (status, name) in [("401", "Unauthorized"), ("403", "Forbidden")] {
        operation.responses.responses.insert(
            status.to_string(),
            RefOr::Ref(utoipa::openapi::Ref::from_response_name(name)),
        );
    }
}

/// Writes through Raft (the PUT and POST operations that may answer 503
/// for want of a leader) but those that free space or add nothing, and the
/// local writes below, are refused with 507 while a space alarm is raised
/// (see `services::space`).
fn add_space_alarm(operation: &mut utoipa::openapi::path::Operation) {
    const LOCAL_WRITES: [&str; 3] = ["ingestLogs", "publish", "publishBatch"];
    const NEVER_REFUSED: [&str; 3] = ["compact", "keepAliveLease", "clusterLeave"];
    let id = operation.operation_id.as_deref().unwrap_or_default();
    if NEVER_REFUSED.contains(&id) {
        return;
    }
    let responses = &mut operation.responses.responses;
    if LOCAL_WRITES.contains(&id) || responses.contains_key("503") {
        responses.insert(
            "507".to_string(),
            RefOr::Ref(utoipa::openapi::Ref::from_response_name(
                "InsufficientStorage",
            )),
        );
    }
}

/// Routes a node whose disk filled up completely still answers (see
/// `disk_full`): liveness and metrics.
const DISK_FULL_ANSWERED: [&str; 2] = ["/health", "/metrics"];

/// A node whose disk filled up completely serves a stand-in that answers
/// reads 503 and writes 507 (see `disk_full`).
fn add_disk_full(method: &str, operation: &mut utoipa::openapi::path::Operation) {
    let (status, name) = if matches!(method, "get" | "head") {
        ("503", "Unavailable")
    } else {
        ("507", "InsufficientStorage")
    };
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::Ref(utoipa::openapi::Ref::from_response_name(name)));
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&'static str, &mut utoipa::openapi::path::Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("options", item.options.as_mut()),
        ("head", item.head.as_mut()),
        ("patch", item.patch.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation?)))
}

/// Every request may carry `X-Request-Id`, and every answer echoes it.
fn add_request_id(operation: &mut utoipa::openapi::path::Operation) {
    let parameter: Parameter = ParameterBuilder::new()
        .name("X-Request-Id")
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(
            "Optional request id for logs; echoed in the response. Generated (16 hex digits) \
             if absent.",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build();
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::T(parameter));
    let header = HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(
            "The request id (from the request's `X-Request-Id`, or generated).",
        ))
        .build();
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response
                .headers
                .insert("X-Request-Id".to_string(), RefOr::T(header.clone()));
        }
    }
}
