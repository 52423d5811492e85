//! Request extractors that turn every malformed input into an `ApiError`.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;

use axum::body::Bytes;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult, ErrorCode};
use crate::http2_idle::StreamHold;
use crate::services::shoal::Shoal;

/// A WebSocket upgrade; a request that is not one is answered 400
/// `bad_request` in JSON like every other malformed request (axum's own
/// rejection is plain text).
pub struct Upgrade {
    upgrade: WebSocketUpgrade,
    /// Over HTTP/2, the request's stream: the socket outlives the response,
    /// and its connection is not idle while it is open.
    stream: Option<StreamHold>,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let upgrade = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::bad_request(format!("this route takes a WebSocket upgrade: {e}"))
            })?;
        Ok(Upgrade {
            upgrade,
            stream: parts.extensions.get::<StreamHold>().cloned(),
        })
    }
}

impl Upgrade {
    /// Accepts the upgrade and runs `serve` on the socket, which refuses
    /// frames and messages larger than `max_bytes`.
    pub fn serve<F, Fut>(self, max_bytes: usize, serve: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stream = self.stream;
        self.upgrade
            .max_message_size(max_bytes)
            .max_frame_size(max_bytes)
            .on_upgrade(move |socket| async move {
                let _stream = stream;
                serve(socket).await;
            })
    }
}

/// Query parameters, read by name with explicit parsing and error messages.
#[derive(Default)]
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
        Ok(Params(map))
    }
}

impl Params {
    /// These parameters with `extra` added (an `extra` value wins).
    pub fn merged(mut self, extra: HashMap<String, String>) -> Params {
        self.0.extend(extra);
        self
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A comma-separated list (empty items dropped); absent is empty.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.string(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A non-negative integer, or a `bad_request` error naming the parameter.
    pub fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.parse(name, ApiError::bad_request)
    }

    /// Like `number`, but errors have the code `invalid_revision`.
    pub fn revision(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.parse(name, ApiError::invalid_revision)
    }

    fn parse(&self, name: &str, error: fn(String) -> ApiError) -> Result<Option<u64>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(raw) => raw.parse::<u64>().map(Some).map_err(|_| {
                error(format!(
                    "{name} must be a non-negative integer, got {raw:?}"
                ))
            }),
        }
    }

    /// `true`/`1` or `false`/`0`; absent is false.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "{name} must be true or false, got {other:?}"
            ))),
        }
    }

    /// A bounded page size.
    pub fn limit(&self, default: u64, max: u64) -> Result<usize, ApiError> {
        let limit = self.number("limit")?.unwrap_or(default);
        if limit == 0 || limit > max {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {max}, got {limit}"
            )));
        }
        Ok(limit as usize)
    }

    /// `consistency=linearizable` (default) or `stale`; true means stale.
    pub fn stale(&self) -> Result<bool, ApiError> {
        match self.string("consistency") {
            None | Some("linearizable") => Ok(false),
            Some("stale") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "consistency must be linearizable or stale, got {other:?}"
            ))),
        }
    }
}

/// A raw request body; an oversize body is a JSON 413.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::PayloadTooLarge,
                        "request body is too large",
                    )
                } else {
                    ApiError::bad_request(format!("cannot read the request body: {e}"))
                }
            })
    }
}

/// In the OpenAPI document a raw body is a string of bytes.
impl utoipa::PartialSchema for Body {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .content_media_type("application/octet-stream")
            .description(Some("Raw bytes."))
            .into()
    }
}

impl utoipa::ToSchema for Body {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("RawBytes")
    }
}

/// A JSON request body, parsed with error messages that name the problem.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Body(bytes) = Body::from_request(req, state).await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        // serde would also accept an array for a struct; bodies are objects.
        if !value.is_object() {
            return Err(ApiError::bad_request("the JSON body must be an object"));
        }
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The path parameters of a route as text (one `String`, or a tuple for
/// several); a segment that is not UTF-8 after percent-decoding is
/// answered 400 `bad_request` in JSON (axum's own rejection is plain text).
pub struct PathText<T = String>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for PathText<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(text)| PathText(text))
            .map_err(|e| ApiError::bad_request(format!("bad path parameter: {e}")))
    }
}

/// The `{*key}` path segment as a validated key.
pub struct KeyPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(key) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::InvalidKey,
                        format!("bad key in path: {e}"),
                    )
                })?;
        validate_key(&key)?;
        Ok(KeyPath(key))
    }
}

/// Keys under this prefix hold the messaging configuration (webhooks,
/// routes, bridges); they are written only through their own endpoints,
/// which validate them.
pub const RESERVED_PREFIX: &str = shoal_actors::config::CONFIG_PREFIX;

/// Refuse a write to a reserved key, or a prefix delete that would cover them.
pub fn check_writable(key: &str, prefix: bool) -> Result<(), ApiError> {
    if key.starts_with(RESERVED_PREFIX) || (prefix && RESERVED_PREFIX.starts_with(key)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ReservedKey,
            format!(
                "keys under {RESERVED_PREFIX} hold the messaging configuration; change it through \
                 /v1/webhooks, /v1/routes and /v1/bridges"
            ),
        ));
    }
    Ok(())
}

/// Keys are non-empty UTF-8 of at most `MAX_KEY_BYTES` bytes without control
/// characters (NUL separates keys from revisions in the history index).
pub fn validate_key(key: &str) -> Result<(), ApiError> {
    use shoal_storage::kv::MAX_KEY_BYTES;
    if key.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidKey,
            "key must not be empty",
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::KeyTooLarge,
            format!("key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len()),
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidKey,
            format!("key contains the control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

/// Decompress at most `max_bytes` (a small gzip body can expand enormously).
pub fn inflate(reader: impl Read, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let mut data = Vec::new();
    reader
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| ApiError::bad_request(format!("cannot decompress the body: {e}")))?;
    if data.len() > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the decompressed body exceeds {max_bytes} bytes"),
        ));
    }
    Ok(data)
}

/// A value is at most `--max-value-bytes`.
pub fn check_value(shoal: &Shoal, len: usize) -> ApiResult<()> {
    let limit = shoal.settings.max_value_bytes;
    if len > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ValueTooLarge,
            format!("value is {len} bytes; the limit is {limit} (--max-value-bytes)"),
        ));
    }
    Ok(())
}
