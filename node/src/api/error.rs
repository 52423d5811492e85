//! The one error shape every endpoint answers with:
//! `{"error": {"code": "...", "message": "...", ...extra fields}}`, and the
//! mapping of the services' typed errors to it (status and code).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use shoal_search::SearchError;

use crate::cluster::LeaveError;
use crate::services::shoal::KvError;

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

impl From<KvError> for ApiError {
    fn from(e: KvError) -> ApiError {
        let message = e.to_string();
        match e {
            KvError::Unavailable(_) | KvError::NoQuorum | KvError::ProposalExpired => {
                ApiError::unavailable(message)
            }
            KvError::Timeout => ApiError::timeout(),
            // Storage errors were logged where they happened.
            KvError::Internal(_) | KvError::Storage(_) => ApiError::internal(message),
            KvError::LeaseNotFound(id) => ApiError::lease_not_found(id),
            KvError::KeyNotFound => ApiError::new(StatusCode::NOT_FOUND, "key_not_found", message),
            KvError::Compacted { compact_revision } => {
                ApiError::new(StatusCode::GONE, "compacted", message)
                    .with("compact_revision", json!(compact_revision))
            }
            KvError::FutureRevision { .. } => ApiError::invalid_revision(message),
            KvError::HistoryCompacted {
                from,
                compact_revision,
            } => ApiError::compacted(from, compact_revision),
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> ApiError {
        match e {
            SearchError::InvalidStream(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_stream", message)
            }
            SearchError::InvalidQuery(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
            }
            SearchError::Busy(message) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
                    .with("retry_after_s", json!(1))
            }
            other => {
                tracing::error!(error = %other, "log engine error");
                ApiError::internal(other.to_string())
            }
        }
    }
}

impl From<LeaveError> for ApiError {
    fn from(e: LeaveError) -> ApiError {
        let message = e.to_string();
        match e {
            LeaveError::NotMember(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "node_not_found", message)
            }
            LeaveError::LastVoter(_) => ApiError::new(StatusCode::CONFLICT, "last_voter", message),
            LeaveError::NoLeader | LeaveError::LeaderUnreachable(_) | LeaveError::Refused(_) => {
                ApiError::unavailable(message)
            }
        }
    }
}

impl ApiError {
    /// `{"error": {"code", "message", ...extra}}`: the body of an error
    /// answer, and the data of an SSE `error` event that ends a stream.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        error.extend(self.extra.clone());
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's `error` event carries the same fields as the 410 answer,
    /// so a watcher that falls behind compaction learns where history starts.
    #[test]
    fn the_error_body_keeps_the_extra_fields() {
        let body = ApiError::compacted(3, 40).body();
        assert_eq!(body["error"]["code"], "compacted");
        assert_eq!(body["error"]["compact_revision"], 40);
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("40")));
    }
}
