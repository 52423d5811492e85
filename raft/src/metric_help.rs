//! Help text and units of the metrics this crate records.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Register the help text of this crate's metrics with the installed recorder.
pub fn describe_metrics() {
    describe_counter!(
        "shoal_raft_votes_refused_catching_up_total",
        Unit::Count,
        "Vote requests refused because this node started empty and has not caught up."
    );
    describe_histogram!(
        "shoal_read_index_batch_reads",
        Unit::Count,
        "Linearizable reads served by one leadership confirmation round."
    );
    describe_histogram!(
        "shoal_raft_log_sync_batch_appends",
        Unit::Count,
        "Raft log appends made durable by one fsync (group commit)."
    );
    describe_gauge!(
        "shoal_raft_log_tail_bytes",
        Unit::Bytes,
        "Encoded bytes of the newest Raft log entries kept in memory (at most 16 MiB once written)."
    );
}
