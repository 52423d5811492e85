//! Help text and units of the metrics this crate records.

use metrics::{describe_counter, Unit};

/// Register the help text of this crate's metrics with the installed recorder.
pub fn describe_metrics() {
    describe_counter!(
        "shoal_rpc_rejected_peers_total",
        Unit::Count,
        "Node-to-node connections closed at the handshake: reason=secret (the peer did not know the cluster secret) or reason=tls (with --tls-ca, no certificate from the cluster CA)."
    );
    describe_counter!(
        "shoal_rpc_handshakes_refused_total",
        Unit::Count,
        "Node-to-node connections closed unanswered because 64 handshakes were already under way."
    );
}
