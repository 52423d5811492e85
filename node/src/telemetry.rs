//! The node's own logs (console + rolling files), optional OTLP trace export,
//! and the Prometheus metrics recorder.

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use rolling_file::{BasicRollingFileAppender, RollingConditionBasic};
use shoal_search::Record;
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::settings::Settings;

/// Own log events waiting to be indexed; beyond this they are dropped (and counted).
const SELF_LOG_QUEUE: usize = 8192;

/// Keeps log writers and exporters alive; flushes them when dropped.
pub struct TelemetryGuard {
    _file: tracing_appender::non_blocking::WorkerGuard,
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// The node's own log events, to be indexed into the stream `shoal`.
    pub own_logs: Option<mpsc::Receiver<Record>>,
}

/// Turns the node's log events into log records (bounded; drops when full).
struct OwnLogs {
    sender: mpsc::Sender<Record>,
}

#[derive(Default)]
struct EventFields {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl tracing::field::Visit for EventFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields
                .insert(field.name().to_string(), serde_json::Value::String(text));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.insert(
                field.name().to_string(),
                serde_json::Value::String(value.to_string()),
            );
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.fields.insert(field.name().to_string(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.fields.insert(field.name().to_string(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.fields.insert(field.name().to_string(), value.into());
    }
}

impl<S> tracing_subscriber::Layer<S> for OwnLogs
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut visited = EventFields::default();
        event.record(&mut visited);
        let metadata = event.metadata();
        visited
            .fields
            .insert("target".into(), metadata.target().into());
        // The enclosing spans with their fields (request id, node id, route).
        if let Some(scope) = ctx.event_scope(event) {
            let spans: Vec<String> = scope
                .from_root()
                .map(|span| {
                    let extensions = span.extensions();
                    match extensions.get::<tracing_subscriber::fmt::FormattedFields<
                        tracing_subscriber::fmt::format::DefaultFields,
                    >>() {
                        Some(fields) if !fields.is_empty() => {
                            format!("{}{{{}}}", span.name(), fields)
                        }
                        _ => span.name().to_string(),
                    }
                })
                .collect();
            if !spans.is_empty() {
                visited
                    .fields
                    .insert("spans".into(), spans.join(":").into());
            }
        }
        let record = Record {
            kind: shoal_search::Kind::Log,
            ts_nanos: shoal_search::record::now_nanos(),
            level: metadata.level().as_str().to_ascii_lowercase(),
            service: "shoal".into(),
            message: visited.message,
            trace_id: String::new(),
            span_id: String::new(),
            attributes: serde_json::Value::Object(visited.fields).to_string(),
            span: None,
        };
        if self.sender.try_send(record).is_err() {
            metrics::counter!("shoal_logs_self_dropped_total").increment(1);
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown();
        }
    }
}

/// Console and rolling-file logging for a node. Files roll daily and when
/// they reach the size limit; only the newest `log_max_files` are kept.
pub fn init_node(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    std::fs::create_dir_all(&settings.log_dir)
        .with_context(|| format!("creating {}", settings.log_dir.display()))?;
    let condition = RollingConditionBasic::new()
        .daily()
        .max_size(settings.log_max_file_bytes);
    let appender = BasicRollingFileAppender::new(
        settings.log_dir.join("shoal.log"),
        condition,
        settings.log_max_files,
    )
    .with_context(|| format!("opening log file in {}", settings.log_dir.display()))?;
    let (file_writer, file_guard) = tracing_appender::non_blocking(appender);
    let filter = EnvFilter::try_new(&settings.log_level)
        .with_context(|| format!("bad --log-level {:?}", settings.log_level))?;

    let tracer = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .context("building the OTLP exporter")?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("shoal")
                .build();
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel_layer = tracer
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("shoal")));
    let (own_layer, own_logs) = if settings.logs_self {
        let (sender, receiver) = mpsc::channel(SELF_LOG_QUEUE);
        (Some(OwnLogs { sender }), Some(receiver))
    } else {
        (None, None)
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(file_writer),
        )
        .with(otel_layer)
        .with(own_layer)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(TelemetryGuard {
        _file: file_guard,
        tracer,
        own_logs,
    })
}

/// Install the process-wide metrics recorder, register every metric's help
/// text, and return the handle that renders them.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    // Every other histogram counts things (batch sizes).
    let counts = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets(&counts)
        .context("metric buckets")?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    shoal_raft::describe_metrics();
    shoal_transport::describe_metrics();
    shoal_search::describe_metrics();
    shoal_actors::describe_metrics();
    describe_node_metrics();
    Ok(handle)
}

/// Help text and units of the metrics the node itself records.
fn describe_node_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "shoal_http_requests_total",
        Unit::Count,
        "HTTP API requests answered, by method, route and status."
    );
    describe_histogram!(
        "shoal_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP API request, by method and route."
    );
    describe_counter!(
        "shoal_state_digests_total",
        Unit::Count,
        "Digests of the whole replicated state computed for GET /v1/cluster/digest (requests answered with the last one, nothing having been applied since, are not counted)."
    );
    describe_histogram!(
        "shoal_raft_write_seconds",
        Unit::Seconds,
        "Time from a write's arrival to its commit and apply by Raft."
    );
    describe_histogram!(
        "shoal_proposal_batch_proposals",
        Unit::Count,
        "Writes proposed to Raft together as one log entry."
    );
    describe_gauge!(
        "shoal_api_connections",
        Unit::Count,
        "Open connections on each of the node's HTTP listeners (listener=api, otlp_http, otlp_grpc)."
    );
    describe_counter!(
        "shoal_api_connections_refused_total",
        Unit::Count,
        "Connections answered 503 or 429 and closed because the listener was at --max-connections (limit=node) or the client address at --max-connections-per-client (limit=client)."
    );
    describe_counter!(
        "shoal_api_idle_closed_total",
        Unit::Count,
        "HTTP/2 connections told to go away (GOAWAY) after --header-read-timeout-ms without a stream, by listener; an idle HTTP/1.1 connection is closed by the same deadline."
    );
    describe_counter!(
        "shoal_api_write_timeouts_total",
        Unit::Count,
        "Connections closed, and streams (SSE, WebSocket, watches, log tails) ended, because the client took nothing the node wrote to it for --write-timeout-ms (a stalled subscriber, most likely), by listener."
    );
    describe_counter!(
        "shoal_gossip_dropped_total",
        Unit::Count,
        "Gossip datagrams dropped (with --cluster-secret, gossip is sealed): reason=unsealed (not sealed with this cluster's secret: a stranger or a forgery), replayed (sent before), invalid (sealed but not gossip), too_large (not sent: over the UDP limit once sealed)."
    );
    describe_counter!(
        "shoal_membership_join_refused_total",
        Unit::Count,
        "Times the leader did not add a node seen by gossip because it failed the RPC handshake (another cluster secret, or with --tls-ca no certificate from the cluster CA)."
    );
    describe_counter!(
        "shoal_tls_handshake_failures_total",
        Unit::Count,
        "TLS handshakes that failed on each HTTP listener (listener=api, otlp_http, otlp_grpc): plain HTTP, an old protocol version, a client that does not trust the certificate."
    );
    describe_counter!(
        "shoal_tls_reloads_total",
        Unit::Count,
        "Reads of --tls-cert and --tls-key after start (on SIGHUP or a change of the files): result=ok, or result=error when the files did not load and the certificate in use stayed."
    );
    describe_gauge!(
        "shoal_tls_certificate_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the certificate the node serves expires (Unix time)."
    );
    describe_gauge!(
        "shoal_raft_term",
        Unit::Count,
        "This node's current Raft term."
    );
    describe_gauge!(
        "shoal_raft_commit_index",
        Unit::Count,
        "Highest Raft log index this node knows to be committed."
    );
    describe_gauge!(
        "shoal_raft_applied_index",
        Unit::Count,
        "Highest Raft log index applied to this node's state machine."
    );
    describe_gauge!(
        "shoal_raft_last_log_index",
        Unit::Count,
        "Highest index in this node's Raft log."
    );
    describe_gauge!(
        "shoal_raft_is_leader",
        Unit::Count,
        "1 if this node is the Raft leader, else 0."
    );
    describe_gauge!(
        "shoal_kv_revision",
        Unit::Count,
        "Current revision of the key/value store."
    );
    describe_gauge!(
        "shoal_kv_compact_revision",
        Unit::Count,
        "Revision below which key history has been compacted."
    );
    describe_gauge!(
        "shoal_snapshot_installing",
        Unit::Count,
        "1 while this node replaces its state with a snapshot from the leader (its reads wait meanwhile), else 0."
    );
    describe_gauge!(
        "shoal_storage_disk_bytes",
        Unit::Bytes,
        "Size of the node's RocksDB files on disk."
    );
    describe_gauge!(
        "shoal_storage_state_machine_bytes",
        Unit::Bytes,
        "Size of the replicated store (keys, history, leases) on this node: what --quota-backend-mb limits."
    );
    describe_gauge!(
        "shoal_storage_free_bytes",
        Unit::Bytes,
        "Free space on the file system of the node's data directory."
    );
    describe_gauge!(
        "shoal_space_alarm",
        Unit::Count,
        "1 while the space alarm (quota, disk) is raised on any live member: writes that add data get 507."
    );
    describe_counter!(
        "shoal_sql_stopped_total",
        Unit::Count,
        "SQL queries stopped, by why: time (past the request's time) or memory (past 2 GiB)."
    );
    describe_counter!(
        "shoal_sql_node_failures_total",
        Unit::Count,
        "Nodes that did not send their part of a dataset SQL query (the result was partial)."
    );
    describe_counter!(
        "shoal_report_runs_total",
        Unit::Count,
        "Report runs this node made, by status (succeeded, failed)."
    );
    describe_counter!(
        "shoal_dataset_files_compacted_total",
        Unit::Count,
        "Dataset files merged into compacted files on this node, per dataset."
    );
    describe_counter!(
        "shoal_dataset_files_deleted_total",
        Unit::Count,
        "Dataset files deleted on this node (merged, left by an interrupted write, or past retention), per dataset."
    );
    describe_counter!(
        "shoal_kv_writes_refused_total",
        Unit::Count,
        "Replicated writes refused with 507 because a space alarm was raised, by alarm."
    );
    describe_gauge!(
        "shoal_watchers",
        Unit::Count,
        "Key/value watchers registered on this node."
    );
    describe_gauge!(
        "shoal_watch_streams",
        Unit::Count,
        "Open SSE watch streams on this node."
    );
    describe_gauge!(
        "shoal_log_tail_streams",
        Unit::Count,
        "Open live log tails (SSE) on this node."
    );
    describe_counter!(
        "shoal_watch_overflows_total",
        Unit::Count,
        "Watchers cancelled because they fell too far behind."
    );
    describe_counter!(
        "shoal_logs_search_node_failures_total",
        Unit::Count,
        "Peers that failed to answer a cluster-wide log search (partial results)."
    );
    describe_counter!(
        "shoal_logs_self_dropped_total",
        Unit::Count,
        "Lines of this node's own log not indexed because the queue was full."
    );
    describe_counter!(
        "shoal_http_requests_timed_out_total",
        Unit::Count,
        "API requests answered 504 because they (their body included) took longer than --request-timeout-ms plus a second."
    );
    describe_counter!(
        "shoal_acl_denied_total",
        Unit::Count,
        "Requests refused 403 because the token's policies do not allow them, by resource."
    );
    describe_counter!(
        "shoal_acl_unauthenticated_total",
        Unit::Count,
        "Requests refused 401: no token, or an unknown, deleted or expired one."
    );
    describe_counter!(
        "shoal_audit_dropped_total",
        Unit::Count,
        "Audit records not indexed: the queue was full (counted per record) or the log engine refused a batch."
    );
    describe_counter!(
        "shoal_otlp_log_records_rejected_total",
        Unit::Count,
        "OTLP log records rejected (reported back as partial success)."
    );
    describe_counter!(
        "shoal_otlp_spans_rejected_total",
        Unit::Count,
        "OTLP spans rejected (reported back as partial success)."
    );
    describe_gauge!(
        "shoal_workflow_instances",
        Unit::Count,
        "Workflow instances known to the leader, by workflow version and status."
    );
    describe_gauge!(
        "shoal_workflow_actors",
        Unit::Count,
        "Workflow instance actors running on this node (the leader)."
    );
    describe_counter!(
        "shoal_workflow_actor_restarts_total",
        Unit::Count,
        "Workflow instance actors restarted by their supervisor after a failure."
    );
    describe_histogram!(
        "shoal_workflow_task_duration_seconds",
        Unit::Seconds,
        "Workflow task runs from start to end (completed or faulted), by workflow version and task; timed by the leader that saw both."
    );
    describe_counter!(
        "shoal_workflow_instances_deleted_total",
        Unit::Count,
        "Finished workflow instances deleted by this node (the leader) once --workflow-retention passed."
    );
    describe_counter!(
        "shoal_workflow_transitions_total",
        Unit::Count,
        "Workflow instance state changes written by this node's driver."
    );
    describe_counter!(
        "shoal_workflow_write_conflicts_total",
        Unit::Count,
        "Workflow instance writes of this node's driver refused because a later write (an event, an operator's action) came first; the driver reads the instance and evaluates it again."
    );
    describe_counter!(
        "shoal_workflow_events_total",
        Unit::Count,
        "Events offered to workflow instances, by result (applied, duplicate, not_waiting, dropped, failed: the definition's expressions could not be run on it)."
    );
    describe_counter!(
        "shoal_workflow_evaluators_started_total",
        Unit::Count,
        "Workflow expression evaluator processes this node started (two per core, at least four, and again after each one that died or was killed)."
    );
    describe_counter!(
        "shoal_workflow_evaluators_killed_total",
        Unit::Count,
        "Workflow expression evaluators killed because a piece of work ran past its time limit."
    );
    describe_counter!(
        "shoal_workflow_lifecycle_events_total",
        Unit::Count,
        "Workflow lifecycle events (completed, faulted, cancelled, suspended, resumed, retried) this node published as leader, repeats after a leader change included."
    );
    describe_gauge!(
        "shoal_workflow_inbox_waiting",
        Unit::Count,
        "Events in the workflow event inbox that no instance has taken yet, in this node's replica."
    );
    describe_counter!(
        "shoal_workflow_inbox_events_total",
        Unit::Count,
        "Workflow event inbox events by result: accepted and duplicate (sent to this node), taken and expired (deleted by this node as leader)."
    );
    describe_histogram!(
        "shoal_workflow_timer_lateness_seconds",
        Unit::Seconds,
        "How long after its due time a workflow timer fired."
    );
}
