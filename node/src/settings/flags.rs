//! The flags of `shoal serve` and `shoal dev`, and every setting's
//! default (shown in `--help`, applied by [`super::Settings::resolve`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

/// Flags shared by `shoal serve` and `shoal dev`. Every field is optional
/// here so that a flag that was not given can fall back to the file.
#[derive(Args, Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeArgs {
    /// TOML file with settings (keys are the flag names with `_`, e.g. `data_dir = "d1"`).
    #[arg(long, env = "SHOAL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory for everything the node persists.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Public HTTP API listen address.
    #[arg(long, env = "SHOAL_API")]
    pub api: Option<SocketAddr>,
    /// Node-to-node RPC listen address.
    #[arg(long, env = "SHOAL_RPC")]
    pub rpc: Option<SocketAddr>,
    /// Gossip (UDP) address, used by cluster membership.
    #[arg(long, env = "SHOAL_GOSSIP")]
    pub gossip: Option<SocketAddr>,
    /// API address other nodes and clients are told to use (host:port) [default: the --api address].
    #[arg(long, env = "SHOAL_ADVERTISE_API")]
    pub advertise_api: Option<String>,
    /// RPC address peers connect to (host:port); needed when --rpc listens on 0.0.0.0 or
    /// behind NAT, e.g. in a container [default: the --rpc address].
    #[arg(long, env = "SHOAL_ADVERTISE_RPC")]
    pub advertise_rpc: Option<String>,
    /// Gossip address peers send to (host:port, resolved at start); needed when --gossip
    /// listens on 0.0.0.0 or behind NAT [default: the --gossip address].
    #[arg(long, env = "SHOAL_ADVERTISE_GOSSIP")]
    pub advertise_gossip: Option<String>,
    /// Node id; by default generated on first start and kept in DATA_DIR/node-id.
    #[arg(long, env = "SHOAL_NODE_ID")]
    pub node_id: Option<u64>,
    /// Gossip address of a node to join through (repeat, or comma-separate); may name this node itself.
    #[arg(long = "seed", env = "SHOAL_SEEDS", value_delimiter = ',')]
    #[serde(default, alias = "seeds")]
    pub seed: Vec<String>,
    /// Form a new cluster once this many nodes see each other by gossip [default: 1 without --seed, else 0: only join].
    #[arg(long, env = "SHOAL_BOOTSTRAP_EXPECT")]
    pub bootstrap_expect: Option<usize>,
    /// Raft voters to keep (others are learners); 3 or 5.
    #[arg(long, env = "SHOAL_VOTERS")]
    pub voters: Option<usize>,
    /// Remove a member from Raft after it has been dead (by gossip) this long, in seconds.
    #[arg(long, env = "SHOAL_DEAD_NODE_GRACE_SECS")]
    pub dead_node_grace_secs: Option<u64>,
    /// Name of the cluster: nodes only gossip with nodes of the same name (like etcd's
    /// --initial-cluster-token), so clusters that can reach each other stay apart.
    #[arg(long, env = "SHOAL_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Shared secret that peers must prove to exchange Raft and gossip traffic.
    #[arg(long, env = "SHOAL_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Require a token on every API request (`Authorization: Bearer ...`); without one that
    /// a policy allows, a request is refused. Start with `shoal acl bootstrap` or
    /// --initial-management-token-file.
    #[arg(long, env = "SHOAL_ACL", num_args = 0..=1, default_missing_value = "true")]
    pub acl: Option<bool>,
    /// A file holding a secret that this node accepts as a management token (allowed
    /// everything), to set up ACLs without `shoal acl bootstrap`.
    #[arg(long, env = "SHOAL_INITIAL_MANAGEMENT_TOKEN_FILE")]
    pub initial_management_token_file: Option<PathBuf>,
    /// Serve the API and OTLP on addresses other than loopback without --acl (anyone who can
    /// reach them can read and change everything).
    #[arg(long, env = "SHOAL_INSECURE_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_no_auth: Option<bool>,
    /// Serve the API and both OTLP receivers over TLS only, with this certificate chain (PEM,
    /// leaf first; e.g. from `shoal tls cert`). Read again on SIGHUP and when the file changes.
    #[arg(long, env = "SHOAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SHOAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM, e.g. the ca.pem of `shoal tls ca`): node-to-node RPC becomes
    /// mutual TLS (each node presents --tls-cert, which needs client use too, and accepts only
    /// peers whose certificate this CA signed), and it is trusted, besides the system's roots,
    /// when this node calls the other nodes' API.
    #[arg(long, env = "SHOAL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// On SIGTERM, leave the cluster (be removed from Raft) before exiting.
    #[arg(long, env = "SHOAL_LEAVE_ON_TERMINATE", num_args = 0..=1, default_missing_value = "true")]
    pub leave_on_terminate: Option<bool>,
    /// Raft election timeout in ms: a follower that hears no leader for a random time between this
    /// and twice this starts an election; heartbeats go every fifth of it.
    #[arg(long, env = "SHOAL_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Log filter for the console and log files, e.g. `info` or `shoal=debug,info`.
    #[arg(long, env = "SHOAL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Directory for the node's own rolling log files [default: DATA_DIR/logs].
    #[arg(long, env = "SHOAL_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Roll the log file when it reaches this size, in MiB (it also rolls daily).
    #[arg(long, env = "SHOAL_LOG_MAX_FILE_MB")]
    pub log_max_file_mb: Option<u64>,
    /// How many rolled log files to keep.
    #[arg(long, env = "SHOAL_LOG_MAX_FILES")]
    pub log_max_files: Option<usize>,
    /// Export traces to this OpenTelemetry collector (OTLP/gRPC), e.g. http://127.0.0.1:4317.
    #[arg(long, env = "SHOAL_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Largest value accepted for a key, in bytes.
    #[arg(long, env = "SHOAL_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Time limit for one API request, in milliseconds.
    #[arg(long, env = "SHOAL_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Most open connections on each HTTP listener (API, OTLP/HTTP, OTLP/gRPC); past it a connection is
    /// answered 503 and closed.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open connections from one client address on each HTTP listener; past it a
    /// connection is answered 429 and closed.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: Option<usize>,
    /// Time a client has to send a request's headers, in milliseconds; it also closes an
    /// HTTP/1.1 connection idle between requests for this long.
    #[arg(long, env = "SHOAL_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Time a client may leave the node's writes to it untaken (a subscriber that stops
    /// reading), in milliseconds; then the connection is closed and its subscription dropped.
    #[arg(long, env = "SHOAL_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Most space the replicated store (keys, history, leases) may take on a node, in MiB; past
    /// it on any node, writes that add data get 507 `quota_exceeded` until keys are deleted and
    /// history compacted (deletes and compaction still work).
    #[arg(long, env = "SHOAL_QUOTA_BACKEND_MB")]
    pub quota_backend_mb: Option<u64>,
    /// Keep this much of the data directory's file system free, in MiB; below it on any node,
    /// writes that add data get 507 `insufficient_storage` (and log ingest and webhook/Kafka
    /// messages on that node) until space is freed.
    #[arg(long, env = "SHOAL_MIN_FREE_DISK_MB")]
    pub min_free_disk_mb: Option<u64>,
    /// Take a Raft snapshot (and purge the log) every this many log entries.
    #[arg(long, env = "SHOAL_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Keep the history of this many most recent revisions; older ones are compacted.
    #[arg(long, env = "SHOAL_HISTORY_REVISIONS")]
    pub history_revisions: Option<u64>,
    /// Kafka bootstrap servers (host:port,...); enables the Kafka bridge
    /// (`POST /v1/kafka/{topic}`, `kafka:` route destinations, bridges).
    #[arg(long, env = "SHOAL_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Speak TLS to the Kafka brokers (verified against the system's roots, or --kafka-ca-file).
    #[arg(long, env = "SHOAL_KAFKA_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub kafka_tls: Option<bool>,
    /// A PEM file of CA certificates to verify the Kafka brokers with (implies --kafka-tls).
    #[arg(long, env = "SHOAL_KAFKA_CA_FILE")]
    pub kafka_ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for Kafka brokers that ask for one; with --kafka-key-file.
    #[arg(long, env = "SHOAL_KAFKA_CERT_FILE")]
    pub kafka_cert_file: Option<PathBuf>,
    /// The key (PEM) of --kafka-cert-file.
    #[arg(long, env = "SHOAL_KAFKA_KEY_FILE")]
    pub kafka_key_file: Option<PathBuf>,
    /// Authenticate to the Kafka brokers with SASL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; with
    /// --kafka-sasl-username and --kafka-sasl-password-file.
    #[arg(long, env = "SHOAL_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    /// The SASL user name.
    #[arg(long, env = "SHOAL_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// A file whose first line is the SASL password (a file, so that it is not in the process
    /// list).
    #[arg(long, env = "SHOAL_KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for https:// webhooks and workflow calls, besides
    /// the system's roots (/etc/ssl/certs).
    #[arg(long, env = "SHOAL_OUTBOUND_CA_FILE")]
    pub outbound_ca_file: Option<PathBuf>,
    /// Let webhooks and workflow calls reach this network (10.0.0.0/8), address or host name
    /// although it is loopback, link-local, private or otherwise not public (repeat, or
    /// comma-separate). `shoal dev` allows loopback.
    #[arg(long, env = "SHOAL_OUTBOUND_ALLOW", value_delimiter = ',')]
    #[serde(default)]
    pub outbound_allow: Vec<String>,
    /// Memory all subscribers' buffers may hold together, in MiB; past it a subscriber that is
    /// behind is disconnected (`slow_consumer`). One subscriber holds at most a quarter of it.
    #[arg(long, env = "SHOAL_SUBSCRIBER_BUFFER_MB")]
    pub subscriber_buffer_mb: Option<u64>,
    /// Largest message payload accepted by publish, in bytes.
    #[arg(long, env = "SHOAL_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// OpenTelemetry OTLP/gRPC receiver for logs and traces, or `off` (if the default
    /// port is taken, the receiver is skipped with a warning).
    #[arg(long, env = "SHOAL_OTLP_GRPC")]
    pub otlp_grpc: Option<String>,
    /// OpenTelemetry OTLP/HTTP receiver (`/v1/logs`, `/v1/traces`), or `off` (if the default
    /// port is taken, the receiver is skipped with a warning).
    #[arg(long, env = "SHOAL_OTLP_HTTP")]
    pub otlp_http: Option<String>,
    /// Keep log records and spans this many days; older days are dropped whole.
    #[arg(long, env = "SHOAL_LOGS_RETENTION_DAYS")]
    pub logs_retention_days: Option<u64>,
    /// Keep at most this many MiB of index per stream; its oldest days are dropped first.
    #[arg(long, env = "SHOAL_LOGS_RETENTION_MB")]
    pub logs_retention_mb: Option<u64>,
    /// Per-stream retention STREAM=DAYS[:MB] (repeat, or comma-separate), e.g. `debug=1,audit=90:50000`.
    #[arg(
        long = "logs-stream-retention",
        env = "SHOAL_LOGS_STREAM_RETENTION",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub logs_stream_retention: Vec<String>,
    /// Cap on the log write-ahead log, in MiB; past it ingest answers 429.
    #[arg(long, env = "SHOAL_LOGS_WAL_MAX_MB")]
    pub logs_wal_max_mb: Option<u64>,
    /// Cap on acknowledged log data not yet searchable (indexed and committed), in MiB; past it ingest answers 429.
    #[arg(long, env = "SHOAL_LOGS_INDEXING_MAX_MB")]
    pub logs_indexing_max_mb: Option<u64>,
    /// Most log streams on this node; records for a new stream past it are refused (400
    /// `too_many_streams`) until retention drops a stream. The node's own streams are not refused.
    #[arg(long, env = "SHOAL_LOGS_MAX_STREAMS")]
    pub logs_max_streams: Option<usize>,
    /// Cap on log storage on disk (indexes and WAL), in MiB; past it ingest answers 429.
    #[arg(long, env = "SHOAL_LOGS_DISK_MAX_MB")]
    pub logs_disk_max_mb: Option<u64>,
    /// Largest log ingest request (own API, `_bulk`, OTLP), in MiB.
    #[arg(long, env = "SHOAL_LOGS_MAX_BODY_MB")]
    pub logs_max_body_mb: Option<u64>,
    /// Records become searchable within this many milliseconds (the index commit interval).
    #[arg(long, env = "SHOAL_LOGS_COMMIT_MS")]
    pub logs_commit_ms: Option<u64>,
    /// Index this node's own logs into the stream `shoal`.
    #[arg(long, env = "SHOAL_LOGS_SELF", num_args = 0..=1, default_missing_value = "true")]
    pub logs_self: Option<bool>,
    /// Keep finished workflow instances (completed, faulted, cancelled) this long after they
    /// finished, then delete them, e.g. `12h`, `7d`, `30min`; the Raft leader's setting applies.
    #[arg(long, env = "SHOAL_WORKFLOW_RETENTION")]
    pub workflow_retention: Option<String>,
    /// Most unfinished workflow instances (pending, running, waiting, suspended) the cluster
    /// holds: past it, starts are refused with 429 `too_many_instances` (the leader drives every
    /// one, so this bounds its memory); counted by each node from its replica.
    #[arg(long, env = "SHOAL_WORKFLOW_MAX_UNFINISHED")]
    pub workflow_max_unfinished: Option<u64>,
    /// Keep an event of the workflow event inbox that no instance took this long, then delete
    /// it, e.g. `30min`, `1h`, `2d`; the Raft leader's setting applies.
    #[arg(long, env = "SHOAL_WORKFLOW_EVENT_RETENTION")]
    pub workflow_event_retention: Option<String>,
    /// Most rows (or groups, when each node aggregates its own) of a dataset that one node's
    /// part of a SQL query may have: past it the query is refused with 400 `too_many_rows`.
    /// The setting of the node that was asked applies to every node's part.
    #[arg(long, env = "SHOAL_SQL_MAX_ROWS_PER_NODE")]
    pub sql_max_rows_per_node: Option<u64>,
    /// Most MiB of Arrow IPC (ZSTD) in one node's part of a dataset in a SQL query, at most
    /// 1024: past it the query is refused with 400 `too_many_rows`. The setting of the node that
    /// was asked applies to every node's part.
    #[arg(long, env = "SHOAL_SQL_MAX_PART_MB")]
    pub sql_max_part_mb: Option<u64>,
}

/// The highest `--sql-max-rows-per-node` (the worker's memory and the
/// 1 GiB bound on a node's part stop a query before this many rows).
pub(super) const MAX_SQL_ROWS_PER_NODE: u64 = 100_000_000;

/// Every setting's default, written once: `Settings::resolve` parses its
/// value from here, and `--help` shows it (see [`with_defaults_in_help`]).
pub(super) const DEFAULTS: &[(&str, &str)] = &[
    ("data_dir", "./shoal-data"),
    ("api", "127.0.0.1:7700"),
    ("rpc", "127.0.0.1:7701"),
    ("gossip", "127.0.0.1:7702"),
    ("voters", "3"),
    ("dead_node_grace_secs", "30"),
    ("cluster_name", "shoal"),
    ("election_timeout_ms", "300"),
    ("log_level", "info,openraft=warn"),
    ("log_max_file_mb", "64"),
    ("log_max_files", "10"),
    ("max_value_bytes", "1048576"),
    ("request_timeout_ms", "10000"),
    ("max_connections", "16384"),
    ("max_connections_per_client", "1024"),
    ("header_read_timeout_ms", "30000"),
    ("write_timeout_ms", "10000"),
    ("quota_backend_mb", "8192"),
    ("min_free_disk_mb", "256"),
    ("snapshot_every", "10000"),
    ("history_revisions", "100000"),
    ("max_message_bytes", "1048576"),
    ("subscriber_buffer_mb", "1024"),
    ("otlp_grpc", "127.0.0.1:4317"),
    ("otlp_http", "127.0.0.1:4318"),
    ("logs_retention_days", "7"),
    ("logs_retention_mb", "10240"),
    ("logs_wal_max_mb", "1024"),
    ("logs_indexing_max_mb", "256"),
    ("logs_disk_max_mb", "102400"),
    ("logs_max_streams", "1000"),
    ("logs_max_body_mb", "32"),
    ("logs_commit_ms", "1000"),
    ("logs_self", "true"),
    ("workflow_retention", "7d"),
    ("workflow_max_unfinished", "1000000"),
    ("workflow_event_retention", "1h"),
    ("sql_max_rows_per_node", "10000000"),
    ("sql_max_part_mb", "1024"),
];

/// A duration setting (`12h`, `7d`) given as `--{flag}`, or its default.
pub(super) fn duration_setting(
    flag: &str,
    text: Option<String>,
) -> anyhow::Result<std::time::Duration> {
    match text {
        Some(text) => Ok(text
            .parse::<humantime::Duration>()
            .with_context(|| format!("--{flag} {text:?} is not a duration such as 12h or 7d"))?
            .into()),
        None => Ok(default_of::<humantime::Duration>(&flag.replace('-', "_")).into()),
    }
}

/// The default of the setting `name`, parsed. Every entry of [`DEFAULTS`]
/// is parsed by a unit test, so this cannot fail at run time.
pub(super) fn default_of<T: std::str::FromStr>(name: &str) -> T {
    let text = DEFAULTS
        .iter()
        .find(|(setting, _)| *setting == name)
        .map(|(_, value)| *value)
        .unwrap_or_else(|| panic!("no default for the setting {name}"));
    text.parse()
        .unwrap_or_else(|_| panic!("the default of {name} ({text:?}) does not parse"))
}

/// `serve`'s and `dev`'s help with each setting's default from [`DEFAULTS`].
pub fn with_defaults_in_help(command: clap::Command) -> clap::Command {
    ["serve", "dev"]
        .into_iter()
        .fold(command, |command, subcommand| {
            command.mut_subcommand(subcommand, |sub| {
                DEFAULTS.iter().fold(sub, |sub, (name, value)| {
                    sub.mut_arg(*name, |arg| {
                        let with_default = |help: &clap::builder::StyledStr| {
                            format!(
                                "{} [default: {value}]",
                                help.to_string().trim_end_matches('.')
                            )
                        };
                        let short = arg.get_help().map(with_default);
                        let long = arg.get_long_help().map(with_default);
                        let arg = match short {
                            Some(help) => arg.help(help),
                            None => arg,
                        };
                        match long {
                            Some(help) => arg.long_help(help),
                            None => arg,
                        }
                    })
                })
            })
        })
}
