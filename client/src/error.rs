//! The error type of every client call.

use serde_json::{Map, Value};

/// Everything that can go wrong talking to Shoal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client was built without any endpoint.
    #[error("no endpoints configured")]
    NoEndpoints,

    /// An endpoint is not an `http://host:port` URL.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The request could not be sent or its answer not read (connection
    /// refused or reset, timeout).
    #[error("transport error talking to {endpoint}: {source}")]
    Transport {
        /// The endpoint the request went to.
        endpoint: String,
        /// The underlying HTTP client error.
        #[source]
        source: reqwest::Error,
    },

    /// An endpoint accepted the connection but did not answer in time (a
    /// stream heard nothing, not even a keepalive, for too long).
    #[error("{endpoint} did not answer: {what}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// What did not arrive.
        what: String,
    },

    /// The server answered with an error status and its
    /// `{"error": {"code", "message"}}` body.
    #[error("{code} ({status}): {message}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// Machine-readable error code, e.g. `key_not_found`, `compare_failed`.
        code: String,
        /// Human-readable explanation from the server.
        message: String,
        /// Any extra fields of the error object (e.g. `current` for
        /// `compare_failed`, `index` for a bad publish batch entry).
        details: Map<String, Value>,
    },

    /// A watch asked for history that has been compacted away. Re-read the
    /// keys and watch again from the read's revision + 1.
    #[error(
        "revision {requested} is compacted (oldest available is {compact_revision}): {message}"
    )]
    Compacted {
        /// The first revision the watch asked for (0 outside a watch).
        requested: u64,
        /// The oldest revision still available (0 if the server did not say).
        compact_revision: u64,
        /// The server's message.
        message: String,
    },

    /// The server's answer could not be understood.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// The configuration under a prefix does not deserialize into the type asked for.
    #[error("configuration under {prefix:?} does not fit the type: {reason}")]
    Config {
        /// The configuration prefix.
        prefix: String,
        /// The deserialization error.
        reason: String,
    },

    /// A background task (watch, subscription, lease keeper) stopped.
    #[error("the background task stopped: {0}")]
    Closed(String),
}

impl Error {
    /// The server's error code (`key_not_found`, `compare_failed`, `compacted`, ...), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::Compacted { .. } => Some("compacted"),
            _ => None,
        }
    }

    /// The HTTP status of a server error, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::Compacted { .. } => Some(410),
            _ => None,
        }
    }

    /// True for `key_not_found` and `lease_not_found`.
    pub fn is_not_found(&self) -> bool {
        matches!(self.code(), Some("key_not_found" | "lease_not_found"))
    }

    /// True when a compare-and-set (`if_revision`) did not hold.
    pub fn is_compare_failed(&self) -> bool {
        self.code() == Some("compare_failed")
    }

    /// Whether another endpoint may succeed where this one failed: a
    /// connection problem, or a node that says it cannot serve right now.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::Api { status, .. } => *status == 503,
            _ => false,
        }
    }

    pub(crate) fn decode(what: &'static str, reason: impl ToString) -> Error {
        Error::Decode {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
