//! The one error shape every endpoint answers with:
//! `{"error": {"code": "...", "message": "...", ...extra fields}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields inside the `error` object (e.g. `compact_revision`).
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, field: &str, value: Value) -> ApiError {
        self.extra.insert(field.to_string(), value);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid_revision(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_revision", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn timeout() -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request did not complete in time",
        )
    }

    pub fn lease_not_found(id: u64) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "lease_not_found",
            format!("lease {id} does not exist or has expired"),
        )
    }

    pub fn compacted(from: u64, compact_revision: u64) -> ApiError {
        ApiError::new(
            StatusCode::GONE,
            "compacted",
            format!(
                "revision {from} has been compacted (oldest available is {compact_revision}); \
                 re-list the keys and watch from the list's revision + 1"
            ),
        )
        .with("compact_revision", json!(compact_revision))
    }
}

impl From<shoal_storage::StorageError> for ApiError {
    fn from(e: shoal_storage::StorageError) -> ApiError {
        tracing::error!(error = %e, "storage error");
        ApiError::internal(format!("storage: {e}"))
    }
}

/// Stored data that does not decode is a fault of this node, not the request.
impl From<shoal_codec::CodecError> for ApiError {
    fn from(e: shoal_codec::CodecError) -> ApiError {
        ApiError::from(shoal_storage::StorageError::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        error.extend(self.extra);
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
