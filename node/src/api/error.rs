//! The one error shape every endpoint answers with:
//! `{"error": {"code": "...", "message": "...", ...extra fields}}`, and the
//! mapping of the services' typed errors to it (status and code).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};
use shoal_outbound::OutboundError;
use shoal_search::SearchError;
use utoipa::ToSchema;

use crate::cluster::LeaveError;
use crate::services::shoal::KvError;
use crate::services::space::Alarm;

/// Every error code the API answers with, by status. The OpenAPI document's
/// enum is generated from this type, so a new code is documented when added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is malformed (body, query string or a field).
    BadRequest,
    /// 400: the key is empty, has a control character or is not UTF-8.
    InvalidKey,
    /// 400: the key is in a prefix Shoal reserves for itself.
    ReservedKey,
    /// 400: a revision parameter is not a non-negative integer or is in the future.
    InvalidRevision,
    /// 400: a log query does not parse.
    InvalidQuery,
    /// 400: a log stream name is invalid.
    InvalidStream,
    /// 400: a log record names a new stream while the node holds
    /// `--logs-max-streams` streams.
    TooManyStreams,
    /// 400: a topic name or pattern is invalid.
    InvalidTopic,
    /// 400: no Kafka brokers are configured.
    KafkaNotConfigured,
    /// 400: an SQL answer would exceed the row limit.
    TooManyRows,
    /// 400: an SQL query needed more memory than a query may have.
    QueryTooExpensive,
    /// 400: an SQL query ran past the time a query may have.
    QueryTooSlow,
    /// 400: a workflow definition is not valid (`path` says where).
    InvalidDefinition,
    /// 400: a workflow definition uses a construct Shoal does not run
    /// (`path` and `construct` name it).
    UnsupportedConstruct,
    /// 400: a SQL sink does not fit its table (a missing table or column,
    /// no unique index over the key), or names a database that is not
    /// defined.
    SinkMismatch,
    /// 400: a database's migration failed (its SQL, or an applied
    /// migration whose SQL changed); the definition is not stored.
    MigrationFailed,
    /// 400: a URL points where outbound requests may not go (loopback,
    /// link-local, private; see `--outbound-allow`).
    DestinationRefused,
    /// 401: the request carries no token, or one that is unknown, deleted
    /// or expired (ACLs are on).
    Unauthorized,
    /// 403: the token's policies do not allow this (`resource` and
    /// `access` name what was missing).
    PermissionDenied,
    /// 404: the key does not exist.
    KeyNotFound,
    /// 404: the lease does not exist or has expired.
    LeaseNotFound,
    /// 404: the node is not a cluster member.
    NodeNotFound,
    /// 404: no span of the trace is stored.
    TraceNotFound,
    /// 404: no such route or named resource.
    NotFound,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 409: a compare-and-set found another revision.
    CompareFailed,
    /// 409: the node is the cluster's only voter.
    LastVoter,
    /// 409: a workflow definition version exists with another document.
    VersionExists,
    /// 409: the ACL was bootstrapped already.
    AlreadyBootstrapped,
    /// 409: a workflow instance id is taken by another workflow's instance.
    IdTaken,
    /// 409: a workflow instance's status does not allow the action.
    WrongStatus,
    /// 410: the revision has been compacted.
    Compacted,
    /// 413: the key is longer than 1024 bytes.
    KeyTooLarge,
    /// 413: the value is over the value limit.
    ValueTooLarge,
    /// 413: the body or a message is over its limit.
    PayloadTooLarge,
    /// 413: a log batch has too many records.
    TooManyRecords,
    /// 415: the body's encoding is not supported.
    UnsupportedEncoding,
    /// 415: the body's content type is not supported.
    UnsupportedMediaType,
    /// 429: the node is at its limit; retry after a second.
    Busy,
    /// 429: the cluster holds --workflow-max-unfinished unfinished
    /// workflow instances; a start waits until some finish.
    TooManyInstances,
    /// 429: the workflow event inbox is full; send again when instances
    /// have taken some of its events.
    TooManyEvents,
    /// 429 or 503: the client address (429) or the listener (503) has as
    /// many open connections as it may; the connection is closed.
    TooManyConnections,
    /// 500: a fault of this node.
    Internal,
    /// 507: the replicated store is past `--quota-backend-mb` (on some
    /// node); deletes and compaction still work.
    QuotaExceeded,
    /// 507: a node's disk has less than `--min-free-disk-mb` free; deletes
    /// and compaction still work.
    InsufficientStorage,
    /// 502: the Kafka brokers did not answer.
    KafkaUnavailable,
    /// 424: a sink's database could not be reached to check its table.
    DatabaseUnavailable,
    /// 503: no leader or quorum now, or another node must answer.
    Unavailable,
    /// 504: the request did not complete in time.
    Timeout,
}

impl ErrorCode {
    /// The code as it appears in JSON (`"bad_request"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::ReservedKey => "reserved_key",
            ErrorCode::InvalidRevision => "invalid_revision",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidStream => "invalid_stream",
            ErrorCode::TooManyStreams => "too_many_streams",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::KafkaNotConfigured => "kafka_not_configured",
            ErrorCode::TooManyRows => "too_many_rows",
            ErrorCode::QueryTooExpensive => "query_too_expensive",
            ErrorCode::QueryTooSlow => "query_too_slow",
            ErrorCode::InvalidDefinition => "invalid_definition",
            ErrorCode::SinkMismatch => "sink_mismatch",
            ErrorCode::MigrationFailed => "migration_failed",
            ErrorCode::UnsupportedConstruct => "unsupported_construct",
            ErrorCode::DestinationRefused => "destination_refused",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::KeyNotFound => "key_not_found",
            ErrorCode::LeaseNotFound => "lease_not_found",
            ErrorCode::NodeNotFound => "node_not_found",
            ErrorCode::TraceNotFound => "trace_not_found",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::CompareFailed => "compare_failed",
            ErrorCode::LastVoter => "last_voter",
            ErrorCode::VersionExists => "version_exists",
            ErrorCode::AlreadyBootstrapped => "already_bootstrapped",
            ErrorCode::IdTaken => "id_taken",
            ErrorCode::WrongStatus => "wrong_status",
            ErrorCode::Compacted => "compacted",
            ErrorCode::KeyTooLarge => "key_too_large",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyRecords => "too_many_records",
            ErrorCode::UnsupportedEncoding => "unsupported_encoding",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Busy => "busy",
            ErrorCode::TooManyInstances => "too_many_instances",
            ErrorCode::TooManyEvents => "too_many_events",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Internal => "internal",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::KafkaUnavailable => "kafka_unavailable",
            ErrorCode::DatabaseUnavailable => "database_unavailable",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
        }
    }
}

/// `{"error": {"code", "message", ...}}`: the body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_key", "message": "key must not be empty"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The error itself. Some codes add fields: `compare_failed` adds `current`
/// (the key's metadata without value, or null), `compacted` adds
/// `compact_revision` (the oldest revision still kept), `unavailable` adds
/// `leader` (the leader's node id, when this node knows one) and `busy` adds
/// `retry_after_s`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Extra fields inside the `error` object (e.g. `compact_revision`).
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
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
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub fn invalid_revision(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRevision, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }

    pub fn timeout() -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Timeout,
            "the request did not complete in time",
        )
    }

    pub fn lease_not_found(id: u64) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::LeaseNotFound,
            format!("lease {id} does not exist or has expired"),
        )
    }

    pub fn compacted(from: u64, compact_revision: u64) -> ApiError {
        ApiError::new(
            StatusCode::GONE,
            ErrorCode::Compacted,
            format!(
                "revision {from} has been compacted (oldest available is {compact_revision}); \
                 re-list the keys and watch from the first page's revision + 1"
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
            KvError::KeyNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::KeyNotFound, message)
            }
            KvError::Compacted { compact_revision } => {
                ApiError::new(StatusCode::GONE, ErrorCode::Compacted, message)
                    .with("compact_revision", json!(compact_revision))
            }
            KvError::FutureRevision { .. } => ApiError::invalid_revision(message),
            KvError::HistoryCompacted {
                from,
                compact_revision,
            } => ApiError::compacted(from, compact_revision),
            KvError::NoSpace(alarm) => {
                let code = match alarm {
                    Alarm::Quota => ErrorCode::QuotaExceeded,
                    Alarm::Disk => ErrorCode::InsufficientStorage,
                };
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, code, message)
                    .with("alarm", json!(alarm.name()))
            }
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> ApiError {
        match e {
            SearchError::InvalidStream(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidStream, message)
            }
            SearchError::InvalidQuery(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery, message)
            }
            SearchError::Busy(message) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::Busy, message)
                    .with("retry_after_s", json!(1))
            }
            SearchError::TooManyStreams(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::TooManyStreams, message)
            }
            SearchError::NoSpace(message) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::InsufficientStorage,
                message,
            ),
            other => {
                tracing::error!(error = %other, "log engine error");
                ApiError::internal(other.to_string())
            }
        }
    }
}

impl From<shoal_actors::MessagingError> for ApiError {
    fn from(e: shoal_actors::MessagingError) -> ApiError {
        match e {
            shoal_actors::MessagingError::NoSpace => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::InsufficientStorage,
                e.to_string(),
            ),
            shoal_actors::MessagingError::ShuttingDown => ApiError::unavailable(e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<LeaveError> for ApiError {
    fn from(e: LeaveError) -> ApiError {
        let message = e.to_string();
        match e {
            LeaveError::NotMember(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NodeNotFound, message)
            }
            LeaveError::LastVoter(_) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::LastVoter, message)
            }
            LeaveError::NoLeader | LeaveError::LeaderUnreachable(_) | LeaveError::Refused(_) => {
                ApiError::unavailable(message)
            }
        }
    }
}

impl From<OutboundError> for ApiError {
    fn from(e: OutboundError) -> ApiError {
        let code = match e {
            OutboundError::Refused(_) => ErrorCode::DestinationRefused,
            OutboundError::BadUrl { .. } | OutboundError::Scheme { .. } => ErrorCode::BadRequest,
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl ApiError {
    /// `{"error": {"code", "message", ...extra}}`: the body of an error
    /// answer, and the data of an SSE `error` event that ends a stream.
    pub fn body(&self) -> Value {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                extra: self.extra.clone(),
            },
        };
        serde_json::to_value(body).unwrap_or(Value::Null)
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

impl From<crate::services::sql_worker::SqlWorkerError> for ApiError {
    fn from(e: crate::services::sql_worker::SqlWorkerError) -> ApiError {
        use crate::services::sql_worker::SqlWorkerError;
        let status = StatusCode::BAD_REQUEST;
        match e {
            SqlWorkerError::Refused(reason) => {
                ApiError::new(status, ErrorCode::InvalidQuery, reason)
            }
            SqlWorkerError::TooManyRows(reason) => {
                ApiError::new(status, ErrorCode::TooManyRows, reason)
            }
            SqlWorkerError::TooLong(_) => {
                ApiError::new(status, ErrorCode::QueryTooSlow, e.to_string())
            }
            SqlWorkerError::TooBig(_) => {
                ApiError::new(status, ErrorCode::QueryTooExpensive, e.to_string())
            }
            SqlWorkerError::Unavailable(_) => ApiError::internal(e.to_string()),
        }
    }
}

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
