//! Help text and units of the metrics this crate records.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Register the help text of this crate's metrics with the installed recorder.
pub fn describe_metrics() {
    describe_counter!(
        "shoal_logs_ingested_records_total",
        Unit::Count,
        "Log records and spans accepted (written to the WAL), by stream."
    );
    describe_counter!(
        "shoal_logs_ingested_bytes_total",
        Unit::Bytes,
        "Bytes of log records and spans accepted, by stream."
    );
    describe_counter!(
        "shoal_logs_index_errors_total",
        Unit::Count,
        "Failures to index or commit log records (they stay in the WAL and are retried)."
    );
    describe_counter!(
        "shoal_logs_partitions_set_aside_total",
        Unit::Count,
        "Log partitions Tantivy could not open, renamed <day>.set-aside-<nanos> and replaced by a new one."
    );
    describe_counter!(
        "shoal_logs_partitions_dropped_total",
        Unit::Count,
        "Log partitions (one stream, one day) dropped by retention."
    );
    describe_gauge!(
        "shoal_logs_streams",
        Unit::Count,
        "Log streams holding records on this node, its own streams not counted (at most --logs-max-streams)."
    );
    describe_counter!(
        "shoal_logs_streams_refused_total",
        Unit::Count,
        "Ingest requests refused because they named a new stream past --logs-max-streams."
    );
    describe_gauge!(
        "shoal_logs_index_bytes",
        Unit::Bytes,
        "Size of all log indexes on disk."
    );
    describe_gauge!(
        "shoal_logs_stream_bytes",
        Unit::Bytes,
        "Size of one stream's log indexes on disk, by stream."
    );
    describe_gauge!(
        "shoal_logs_wal_bytes",
        Unit::Bytes,
        "Size of the log write-ahead log on disk."
    );
    describe_histogram!(
        "shoal_logs_commit_seconds",
        Unit::Seconds,
        "Time to commit the log index (records become searchable)."
    );
    describe_histogram!(
        "shoal_logs_wal_sync_seconds",
        Unit::Seconds,
        "Time to fsync the log write-ahead log."
    );
}
