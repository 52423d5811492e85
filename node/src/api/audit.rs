//! The audit trail: with ACLs on, every request that changes something
//! (KV, leases, definitions, workflows, the ACL, membership, compaction) and
//! every refused request (401, 403) becomes a record in the log stream
//! `audit` of the node that served it, searchable like any other stream.
//! Records name the token by accessor id, never by secret, and the path
//! without its query string (which may carry `access_token`).

use axum::http::Method;
use serde_json::json;
use shoal_search::Record;

use crate::services::shoal::Shoal;

/// The stream audit records go to.
pub const AUDIT_STREAM: &str = "audit";

/// Routes whose writes are data, not changes of configuration: messages,
/// log records, searches sent as POST, lease keep-alives. Their refusals
/// are still recorded.
const DATA_ROUTES: [&str; 12] = [
    "/v1/topics/{topic}",
    "/v1/publish",
    "/v1/publish/ws",
    "/v1/kafka/{topic}",
    "/v1/logs/{stream}",
    "/_bulk",
    "/{index}/_bulk",
    "/v1/logs/search",
    "/v1/logs/aggregate",
    "/v1/logs/sql",
    "/v1/leases/{id}/keepalive",
    "/v1/workflows/events/{topic}",
];

/// One request as the audit trail keeps it.
pub struct Entry<'a> {
    pub accessor: &'a str,
    pub method: &'a Method,
    pub route: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub request_id: Option<&'a str>,
}

/// Whether a request is recorded: a refusal, or a change.
pub fn audited(route: &str, method: &Method, status: u16) -> bool {
    if status == 401 || status == 403 {
        return true;
    }
    // CONNECT opens a WebSocket over HTTP/2, like a GET upgrade.
    let reads = [Method::GET, Method::HEAD, Method::OPTIONS, Method::CONNECT];
    !reads.contains(method) && !DATA_ROUTES.contains(&route)
}

/// The accessor id of changes the cluster makes by itself (membership).
pub const CLUSTER_ACCESSOR: &str = "cluster";

/// Record a membership change the leader made by itself (a node joined,
/// was promoted, or was removed for being dead), with ACLs on.
pub fn record_membership(shoal: &Shoal, change: &str) {
    if !shoal.acl.enabled() {
        return;
    }
    queue(
        shoal,
        Record {
            kind: shoal_search::Kind::Log,
            ts_nanos: shoal_search::record::now_nanos(),
            level: "info".into(),
            service: "shoal".into(),
            message: format!("membership: {change}"),
            trace_id: String::new(),
            span_id: String::new(),
            attributes: json!({
                "accessor_id": CLUSTER_ACCESSOR,
                "change": change,
                "node_id": shoal.node_id,
            })
            .to_string(),
            span: None,
        },
    );
}

fn queue(shoal: &Shoal, record: Record) {
    if shoal.audit.try_send(record).is_err() {
        metrics::counter!("shoal_audit_dropped_total").increment(1);
    }
}

/// Queue the entry for indexing; when the queue is full it is counted in
/// `shoal_audit_dropped_total` rather than slowing the request.
pub fn record(shoal: &Shoal, entry: Entry<'_>) {
    let refused = entry.status == 401 || entry.status == 403;
    let record = Record {
        kind: shoal_search::Kind::Log,
        ts_nanos: shoal_search::record::now_nanos(),
        level: if refused { "warn" } else { "info" }.into(),
        service: "shoal".into(),
        message: format!("{} {} {}", entry.method, entry.path, entry.status),
        trace_id: String::new(),
        span_id: String::new(),
        attributes: json!({
            "accessor_id": entry.accessor,
            "method": entry.method.as_str(),
            "route": entry.route,
            "path": entry.path,
            "status": entry.status,
            "request_id": entry.request_id,
            "node_id": shoal.node_id,
        })
        .to_string(),
        span: None,
    };
    queue(shoal, record);
}
