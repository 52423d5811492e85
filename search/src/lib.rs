//! Logs and traces for Shoal: records are appended to a write-ahead log
//! (fsynced before they are acknowledged), indexed with Tantivy in
//! partitions of one stream and one UTC day, searched, aggregated and
//! dropped whole by retention. This crate knows nothing of the cluster: the
//! node fans a search out to its peers and merges their answers with
//! [`merge_hits`] and [`Aggregation::merge`].

mod aggregate;
mod engine;
mod index;
mod indexer;
mod metric_help;
mod query;
pub mod record;
pub mod sql;
mod state;
mod wal;

use std::path::{Path, PathBuf};

pub use aggregate::{AggregateRequest, Aggregation, Bucket};
pub use engine::{Logs, StreamInfo};
pub use metric_help::describe_metrics;
pub use query::{
    merge_hits, Cursor, Hit, KindFilter, SearchOrder, SearchRequest, MAX_LIMIT, MAX_QUERY_BYTES,
    NO_STREAM, TOP_FIELDS,
};
pub use record::{Kind, Record, SpanInfo};
pub use state::{Limits, LogsConfig, Retention};

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    InvalidStream(String),
    #[error("{0}")]
    InvalidQuery(String),
    /// A cap (WAL size, indexing memory, disk) is reached: retry later.
    #[error("{0}")]
    Busy(String),
    /// The node's disk is (nearly) full: nothing is written until space is freed.
    #[error("{0}")]
    NoSpace(String),
    /// A record for a new stream while the node holds `Limits::streams`.
    #[error("{0}")]
    TooManyStreams(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("{0}")]
    Internal(String),
}

impl SearchError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> SearchError {
        SearchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
