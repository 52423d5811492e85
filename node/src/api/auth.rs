//! Who a request is and whether it may do what it asks: the credentials a
//! request carries, the resource and access each route needs, and the
//! middleware that checks them before the handler runs. Routes whose
//! resources are in the body (transactions, batch publishes, bulk ingest)
//! are checked by their handlers through [`Caller`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use shoal_acl::{Access, Acl, AuthError, Identity, Resource};

use super::error::{ApiError, ApiResult, ErrorCode};
use super::extract::Params;
use super::{audit, AppState, RequestId};

/// Routes anyone may call: probes, the API description, and the one-time
/// ACL bootstrap (which refuses once done).
pub const OPEN_ROUTES: [&str; 4] = ["/health", "/ready", "/openapi.json", "/v1/acl/bootstrap"];

/// Streaming routes, where a browser cannot set headers: they also take
/// the token as `access_token=` in the query string.
const STREAM_ROUTES: [&str; 5] = [
    "/v1/subscribe",
    "/v1/subscribe/ws",
    "/v1/publish/ws",
    "/v1/watch",
    "/v1/logs/tail",
];

/// What a route needs of the caller.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    /// Nothing: an open route.
    Nothing,
    /// A valid token; the handler checks the resources named in the body.
    Token,
    /// `access` on one named thing.
    One(Resource, String, Access),
    /// `access` on every thing whose name starts with the prefix.
    Under(Resource, String, Access),
    /// `access` on some thing of the kind: the handler narrows the request
    /// to the things the caller may reach (log streams).
    Any(Resource, Access),
}

/// The request's identity, for handlers that check resources themselves.
/// Not `Debug`: it holds the secret.
#[derive(Clone)]
pub struct Caller {
    pub identity: Identity,
    /// The credentials as sent, to ask peers on the caller's behalf.
    pub authorization: Option<HeaderValue>,
    /// The secret, to check again while a stream stays open.
    secret: Option<String>,
}

/// How often an open stream checks that its token is still accepted.
pub const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Caller {
    /// 403 unless the caller may do `access` on `name`.
    pub fn require(&self, resource: Resource, name: &str, access: Access) -> ApiResult<()> {
        if self.identity.allows(resource, name, access) {
            return Ok(());
        }
        Err(denied(&self.identity, resource, name, access))
    }

    /// 403 unless the caller may do `access` on everything under `prefix`.
    pub fn require_under(&self, resource: Resource, prefix: &str, access: Access) -> ApiResult<()> {
        if self.identity.allows_under(resource, prefix, access) {
            return Ok(());
        }
        Err(denied(&self.identity, resource, prefix, access))
    }

    pub fn may(&self, resource: Resource, name: &str, access: Access) -> bool {
        self.identity.allows(resource, name, access)
    }

    /// The caller's identity as the ACLs stand now: None once its token is
    /// no longer accepted (deleted, expired). With ACLs off, as it came.
    pub fn identity_now(&self, acl: &Acl) -> Option<Identity> {
        if !acl.enabled() {
            return Some(self.identity.clone());
        }
        acl.authenticate(self.secret.as_deref(), shoal_storage::now_ms())
            .ok()
    }

    /// Resolves once the caller's token is no longer accepted (deleted,
    /// expired), or its policies as they are now no longer allow what the
    /// stream reads (`still_allowed`); never with ACLs off. Streams end on
    /// it, so a revoked token or a narrowed policy does not keep a
    /// subscription, watch or tail open.
    pub fn revoked(
        &self,
        acl: Arc<Acl>,
        still_allowed: impl Fn(&Identity) -> bool + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let caller = self.clone();
        async move {
            if !acl.enabled() {
                return std::future::pending().await;
            }
            loop {
                tokio::time::sleep(REVOCATION_CHECK).await;
                match caller.identity_now(&acl) {
                    Some(identity) if still_allowed(&identity) => {}
                    _ => return,
                }
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Set by `authorize` on every route; missing means a route outside
        // the table, which must not pass.
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::PermissionDenied,
                "this route is not covered by access control",
            )
        })
    }
}

fn denied(identity: &Identity, resource: Resource, name: &str, access: Access) -> ApiError {
    let verb = match access {
        Access::Read => "read",
        _ => "write",
    };
    let what = if resource.named() {
        format!("{} {name:?}", resource.as_str())
    } else {
        resource.as_str().to_string()
    };
    tracing::info!(
        accessor = identity.accessor(),
        resource = resource.as_str(),
        name,
        access = verb,
        "request denied"
    );
    metrics::counter!("shoal_acl_denied_total", "resource" => resource.as_str()).increment(1);
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::PermissionDenied,
        format!("the token may not {verb} {what}"),
    )
    .with("resource", resource.as_str().into())
    .with("access", verb.into())
}

pub fn unauthorized(e: AuthError) -> ApiError {
    metrics::counter!("shoal_acl_unauthenticated_total").increment(1);
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        e.to_string(),
    )
}

/// The secret a request carries: `Authorization: Bearer`, `ApiKey` (the
/// token, or base64 of `id:token` as Elasticsearch clients send it) or
/// `Basic` (the token as password); on stream routes also `access_token=`.
pub fn credentials(headers: &HeaderMap, query: Option<&str>, stream: bool) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        let after_colon = |encoded: &str| {
            STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| text.split_once(':').map(|(_, secret)| secret.to_string()))
        };
        return match scheme.to_ascii_lowercase().as_str() {
            "bearer" => Some(rest.to_string()),
            "apikey" => Some(after_colon(rest).unwrap_or_else(|| rest.to_string())),
            "basic" => after_colon(rest),
            _ => None,
        };
    }
    if !stream {
        return None;
    }
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned())
}

/// A refused request, and who sent it (for the audit trail).
struct Refusal {
    error: ApiError,
    accessor: String,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Refusal {
        Refusal {
            error,
            accessor: Identity::anonymous().accessor().to_string(),
        }
    }
}

/// Authenticate the request and check what its route needs; the handler
/// finds the identity as [`Caller`]. With ACLs on, changes and refusals
/// go to the audit trail.
pub async fn authorize(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    if !app.shoal.acl.enabled() {
        // Everything is allowed and nothing is audited: no need to look.
        let caller = Caller {
            identity: Identity::unrestricted(),
            authorization: sensitive_authorization(request.headers()),
            secret: None,
        };
        request.extensions_mut().insert(caller);
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_default();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let request_id = request.extensions().get::<RequestId>().cloned();
    let (response, accessor) = match check(&app, &route, request).await {
        Ok(request) => {
            let accessor = request
                .extensions()
                .get::<Caller>()
                .map(|caller| caller.identity.accessor().to_string())
                .unwrap_or_default();
            (next.run(request).await, accessor)
        }
        Err(refusal) => {
            let mut response = refusal.error.into_response();
            if response.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"shoal\""),
                );
            }
            (response, refusal.accessor)
        }
    };
    let status = response.status().as_u16();
    if audit::audited(&route, &method, status) {
        audit::record(
            &app.shoal,
            audit::Entry {
                accessor: &accessor,
                method: &method,
                route: &route,
                path: &path,
                status,
                request_id: request_id.as_ref().map(|id| id.0.as_str()),
            },
        );
    }
    response
}

/// The `Authorization` header, marked sensitive (kept out of debug output).
fn sensitive_authorization(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(header::AUTHORIZATION)
        .cloned()
        .map(|mut value| {
            value.set_sensitive(true);
            value
        })
}

async fn check(app: &AppState, route: &str, request: Request) -> Result<Request, Refusal> {
    let stream = STREAM_ROUTES.contains(&route);
    let secret = credentials(request.headers(), request.uri().query(), stream);
    let authorization = sensitive_authorization(request.headers());
    let (mut parts, body) = request.into_parts();
    let axum::extract::Path(path) =
        axum::extract::Path::<HashMap<String, String>>::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("bad path parameter: {e}")))?;
    let params = Params::from_request_parts(&mut parts, &()).await?;
    let need = need(route, &parts.method, &path, &params);
    let identity = match (
        &need,
        app.shoal
            .acl
            .authenticate(secret.as_deref(), shoal_storage::now_ms()),
    ) {
        (_, Ok(identity)) => identity,
        (Need::Nothing, Err(_)) => Identity::anonymous(),
        (_, Err(e)) => return Err(unauthorized(e).into()),
    };
    let caller = Caller {
        identity,
        authorization,
        secret,
    };
    let allowed = match &need {
        Need::Nothing | Need::Token => Ok(()),
        Need::One(resource, name, access) => caller.require(*resource, name, *access),
        Need::Under(resource, prefix, access) => caller.require_under(*resource, prefix, *access),
        Need::Any(resource, access) if caller.identity.allows_some(*resource, *access) => Ok(()),
        Need::Any(resource, access) => Err(denied(&caller.identity, *resource, "", *access)),
    };
    if let Err(error) = allowed {
        return Err(Refusal {
            error,
            accessor: caller.identity.accessor().to_string(),
        });
    }
    let mut request = Request::from_parts(parts, body);
    request.extensions_mut().insert(caller);
    Ok(request)
}

/// What `route` (as registered) needs for `method`, given its path and
/// query parameters. A route missing here is refused.
fn need(route: &str, method: &Method, path: &HashMap<String, String>, params: &Params) -> Need {
    use Access::{Read, Write};
    use Need::{One, Token, Under};
    use Resource::*;
    let param = |name: &str| path.get(name).cloned().unwrap_or_default();
    let read_or_write = if method == Method::GET || method == Method::HEAD {
        Read
    } else {
        Write
    };
    let delivery = |kind: &str| match path.get("name") {
        Some(name) => One(Delivery, format!("{kind}/{name}"), read_or_write),
        None => Under(Delivery, format!("{kind}/"), Read),
    };
    let workflow = || format!("{}/{}", param("namespace"), param("name"));
    match route {
        _ if OPEN_ROUTES.contains(&route) => Need::Nothing,
        // Resources named in the body, or none (the Elasticsearch info route).
        "/" | "/v1/acl/whoami" | "/v1/txn" | "/v1/publish" | "/v1/publish/ws" | "/_bulk"
        | "/{index}/_bulk" => Token,
        "/metrics" | "/v1/status" | "/v1/cluster" | "/v1/cluster/digest" | "/v1/outbox" => {
            One(Operator, String::new(), Read)
        }
        "/v1/cluster/leave" | "/v1/compact" => One(Operator, String::new(), Write),
        "/v1/kv/{*key}" if method == Method::DELETE && params.flag("prefix").unwrap_or(true) => {
            Under(Kv, param("key"), Write)
        }
        "/v1/kv/{*key}" => One(Kv, param("key"), read_or_write),
        "/v1/kv" => Under(Kv, params.string("prefix").unwrap_or("").into(), Read),
        "/v1/history/{*key}" => One(Kv, param("key"), Read),
        "/v1/rollback/{*key}" => One(Kv, param("key"), Write),
        "/v1/watch" | "/v1/watch/poll" => match (params.string("key"), params.string("prefix")) {
            (Some(key), None) => One(Kv, key.into(), Read),
            (None, Some(prefix)) => Under(Kv, prefix.into(), Read),
            // The handler answers 400.
            _ => Token,
        },
        "/v1/leases" | "/v1/leases/{id}" | "/v1/leases/{id}/keepalive" => {
            One(Leases, String::new(), read_or_write)
        }
        "/v1/topics/{topic}" => One(Topic, param("topic"), Write),
        "/v1/topics" => One(Topic, ">".into(), Read),
        "/v1/subscribe" | "/v1/subscribe/ws" => match params.string("pattern") {
            Some(pattern) => One(Topic, pattern.into(), Read),
            None => Token,
        },
        "/v1/kafka/{topic}" => One(Kafka, param("topic"), Write),
        "/v1/webhooks" | "/v1/webhooks/{name}" => delivery("webhooks"),
        "/v1/routes" | "/v1/routes/{name}" => delivery("routes"),
        "/v1/bridges" | "/v1/bridges/{name}" => delivery("bridges"),
        "/v1/sinks" | "/v1/sinks/{name}" => delivery("sinks"),
        "/v1/databases" | "/v1/databases/{name}" => delivery("databases"),
        "/v1/datasets" | "/v1/datasets/{name}" => delivery("datasets"),
        "/v1/datasets/{name}/files"
        | "/v1/datasets/{name}/dead-letters"
        | "/v1/datasets/{name}/dead-letters/replay" => One(
            Delivery,
            format!("datasets/{}", param("name")),
            read_or_write,
        ),
        "/v1/reports" | "/v1/reports/{name}" => delivery("reports"),
        "/v1/reports/{name}/run" | "/v1/reports/{name}/runs" => One(
            Delivery,
            format!("reports/{}", param("name")),
            read_or_write,
        ),
        // Each table the query reads is checked by the handler.
        "/v1/sql" => Token,
        "/v1/webhooks/{name}/dead-letters" | "/v1/webhooks/{name}/dead-letters/replay" => One(
            Delivery,
            format!("webhooks/{}", param("name")),
            read_or_write,
        ),
        "/v1/sinks/{name}/dead-letters" | "/v1/sinks/{name}/dead-letters/replay" => {
            One(Delivery, format!("sinks/{}", param("name")), read_or_write)
        }
        "/v1/logs/{stream}" => One(Logs, param("stream"), Write),
        "/v1/logs/search"
        | "/v1/logs/aggregate"
        | "/v1/logs/tail"
        | "/v1/logs/streams"
        | "/v1/logs/sql"
        | "/v1/traces/{trace_id}"
        | "/api/services"
        | "/api/services/{service}/operations"
        | "/api/operations"
        | "/api/traces"
        | "/api/traces/{trace_id}" => Need::Any(Logs, Read),
        "/v1/workflows/definitions" => Under(Workflows, String::new(), Read),
        "/v1/workflows/definitions/{namespace}/{name}/{version}"
        | "/v1/workflows/{namespace}/{name}/instances"
        | "/v1/workflows/{namespace}/{name}/instances/{action}" => {
            One(Workflows, workflow(), read_or_write)
        }
        "/v1/workflows/instances" => match (params.string("namespace"), params.string("name")) {
            (Some(namespace), Some(name)) => One(Workflows, format!("{namespace}/{name}"), Read),
            (Some(namespace), None) => Under(Workflows, format!("{namespace}/"), Read),
            _ => Under(Workflows, String::new(), Read),
        },
        "/v1/workflows/instances/{id}"
        | "/v1/workflows/instances/{id}/{action}"
        | "/v1/workflows/events"
        | "/v1/workflows/events/{topic}" => Under(Workflows, String::new(), read_or_write),
        _ if route.starts_with("/v1/acl/") => One(Acl, String::new(), read_or_write),
        // Not in this table: only a management token passes.
        _ => One(Acl, String::new(), Write),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_document_is_in_the_table() {
        let document = crate::routes::document();
        let params = Params::default();
        for (path, item) in &document.paths.paths {
            // The document names `{*key}` as `{key}`.
            let route = if path.contains("{key}") {
                path.replace("{key}", "{*key}")
            } else {
                path.clone()
            };
            let methods = [
                (Method::GET, item.get.is_some()),
                (Method::PUT, item.put.is_some()),
                (Method::POST, item.post.is_some()),
                (Method::DELETE, item.delete.is_some()),
                (Method::HEAD, item.head.is_some()),
            ];
            for (method, present) in methods {
                if !present {
                    continue;
                }
                let found = need(&route, &method, &HashMap::new(), &params);
                let fallback = Need::One(Resource::Acl, String::new(), Access::Write);
                let acl_route = route.starts_with("/v1/acl/") && method != Method::GET;
                assert!(
                    found != fallback || acl_route,
                    "{method} {route} is not in the access table"
                );
            }
        }
    }

    #[test]
    fn credentials_come_from_every_scheme_clients_use() {
        let mut headers = HeaderMap::new();
        let with = |headers: &mut HeaderMap, value: &str| {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        };
        with(&mut headers, "Bearer abc");
        assert_eq!(credentials(&headers, None, false).as_deref(), Some("abc"));
        with(
            &mut headers,
            &format!("ApiKey {}", STANDARD.encode("id:abc")),
        );
        assert_eq!(credentials(&headers, None, false).as_deref(), Some("abc"));
        with(&mut headers, "ApiKey shoal_abc");
        assert_eq!(
            credentials(&headers, None, false).as_deref(),
            Some("shoal_abc")
        );
        with(
            &mut headers,
            &format!("Basic {}", STANDARD.encode("elastic:abc")),
        );
        assert_eq!(credentials(&headers, None, false).as_deref(), Some("abc"));
        let none = HeaderMap::new();
        assert_eq!(credentials(&none, Some("access_token=abc"), false), None);
        assert_eq!(
            credentials(&none, Some("pattern=a&access_token=abc"), true).as_deref(),
            Some("abc")
        );
    }
}
