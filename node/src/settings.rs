//! Node settings: each one can come from a flag, an environment variable
//! (`SHOAL_...`) or a TOML file (`--config`), in that order of precedence,
//! else its default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

mod flags;
mod node_id;

use flags::{default_of, duration_setting, MAX_SQL_ROWS_PER_NODE};
pub use flags::{with_defaults_in_help, NodeArgs};
pub use node_id::node_id;

/// A node was asked to serve its API or OTLP beyond loopback without ACLs.
#[derive(Debug, thiserror::Error)]
#[error(
    "{listener} listens on {addr}, which is reachable from other machines, and --acl is off: \
     anyone who can reach it could read and change everything. Start with --acl (then \
     `shoal acl bootstrap`, or --initial-management-token-file), listen on 127.0.0.1, or pass \
     --insecure-no-auth if the network itself is trusted"
)]
pub struct Unprotected {
    pub listener: &'static str,
    pub addr: SocketAddr,
}

/// A secret from a file: its first line, which must not be empty.
fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --initial-management-token-file {}", path.display()))?;
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.len() < 16 {
        bail!(
            "--initial-management-token-file {}: the secret on its first line must have at least 16 characters",
            path.display()
        );
    }
    Ok(secret.to_string())
}

/// The --kafka-* flags past --kafka-brokers.
struct KafkaFlags {
    tls: bool,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    sasl_mechanism: Option<String>,
    sasl_username: Option<String>,
    sasl_password_file: Option<PathBuf>,
}

/// How to reach Kafka, checked: TLS and SASL settings need brokers, and
/// what goes together is given together.
fn kafka_connection(
    brokers: Option<String>,
    flags: KafkaFlags,
) -> anyhow::Result<Option<shoal_actors::kafka::KafkaConnection>> {
    use shoal_actors::kafka::{KafkaConnection, Sasl, SASL_MECHANISMS};
    let Some(brokers) = brokers else {
        let any = flags.tls
            || flags.ca_file.is_some()
            || flags.cert_file.is_some()
            || flags.key_file.is_some()
            || flags.sasl_mechanism.is_some()
            || flags.sasl_username.is_some()
            || flags.sasl_password_file.is_some();
        if any {
            bail!("the --kafka-* settings need --kafka-brokers");
        }
        return Ok(None);
    };
    let client_cert = match (flags.cert_file, flags.key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("--kafka-cert-file and --kafka-key-file go together"),
    };
    let sasl = match (
        flags.sasl_mechanism,
        flags.sasl_username,
        flags.sasl_password_file,
    ) {
        (None, None, None) => None,
        (Some(mechanism), Some(username), Some(password_file)) => {
            let mechanism = mechanism.to_ascii_uppercase();
            if !SASL_MECHANISMS.contains(&mechanism.as_str()) {
                bail!(
                    "--kafka-sasl-mechanism {mechanism:?} is not one of {}",
                    SASL_MECHANISMS.join(", ")
                );
            }
            let text = std::fs::read_to_string(&password_file).with_context(|| {
                format!("reading --kafka-sasl-password-file {}", password_file.display())
            })?;
            let password = text.lines().next().unwrap_or_default().to_string();
            if password.is_empty() {
                bail!(
                    "--kafka-sasl-password-file {}: the password on its first line is empty",
                    password_file.display()
                );
            }
            Some(Sasl {
                mechanism,
                username,
                password,
            })
        }
        _ => bail!(
            "--kafka-sasl-mechanism, --kafka-sasl-username and --kafka-sasl-password-file go together"
        ),
    };
    let tls = flags.tls || flags.ca_file.is_some() || client_cert.is_some();
    for path in flags
        .ca_file
        .iter()
        .chain(client_cert.iter().flat_map(|(c, k)| [c, k]))
    {
        if !path.is_file() {
            bail!("the Kafka TLS file {} cannot be read", path.display());
        }
    }
    Ok(Some(KafkaConnection {
        brokers,
        tls,
        ca_file: flags.ca_file,
        client_cert,
        sasl,
    }))
}

/// An optional listener: its address, and whether the user named it (a
/// named address that cannot be bound is an error; the default is skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalListener {
    pub addr: Option<SocketAddr>,
    pub explicit: bool,
}

fn optional_listener(
    given: Option<String>,
    default: SocketAddr,
    flag: &str,
) -> anyhow::Result<OptionalListener> {
    match given.as_deref().map(str::trim) {
        None => Ok(OptionalListener {
            addr: Some(default),
            explicit: false,
        }),
        Some("off") | Some("") => Ok(OptionalListener {
            addr: None,
            explicit: true,
        }),
        Some(text) => {
            let addr = text
                .parse()
                .with_context(|| format!("--{flag} {text:?} is neither an address nor `off`"))?;
            Ok(OptionalListener {
                addr: Some(addr),
                explicit: true,
            })
        }
    }
}

/// The address to tell others for the listener `--{flag}`: the advertised
/// one when given (host:port), else the listen address. Peers cannot reach
/// 0.0.0.0, so a peer-facing listener on an unspecified address needs one.
fn advertised(
    flag: &str,
    listen: SocketAddr,
    given: Option<String>,
    peers_need_it: bool,
) -> anyhow::Result<String> {
    match given.map(|text| text.trim().to_string()) {
        Some(text) => {
            let port = text
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            match port {
                Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(text),
                _ => bail!("--advertise-{flag} {text:?} is not HOST:PORT"),
            }
        }
        None if peers_need_it && listen.ip().is_unspecified() => bail!(
            "--{flag} {listen} listens on every interface, so peers need to be told \
             one address: give --advertise-{flag} HOST:PORT"
        ),
        None => Ok(listen.to_string()),
    }
}

/// `STREAM=DAYS[:MB]` entries.
fn stream_retention(
    entries: &[String],
) -> anyhow::Result<BTreeMap<String, (Option<u64>, Option<u64>)>> {
    let mut streams = BTreeMap::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let bad = || format!("--logs-stream-retention {entry:?} is not STREAM=DAYS[:MB]");
        let (stream, rule) = entry.split_once('=').with_context(bad)?;
        shoal_search::record::validate_stream(stream).with_context(bad)?;
        let (days, mb) = match rule.split_once(':') {
            Some((days, mb)) => (days, Some(mb)),
            None => (rule, None),
        };
        let days = if days.is_empty() {
            None
        } else {
            Some(days.parse::<u64>().with_context(bad)?)
        };
        let mb = mb
            .map(|mb| mb.parse::<u64>())
            .transpose()
            .with_context(bad)?;
        streams.insert(stream.to_string(), (days, mb));
    }
    Ok(streams)
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub rpc: SocketAddr,
    pub gossip: SocketAddr,
    /// What peers and clients are told: `--advertise-*`, else the listen address.
    pub advertise_api: String,
    pub advertise_rpc: String,
    pub advertise_gossip: String,
    pub node_id: Option<u64>,
    pub seeds: Vec<String>,
    pub bootstrap_expect: usize,
    pub voters: usize,
    pub dead_node_grace_secs: u64,
    pub cluster_name: String,
    pub cluster_secret: Option<String>,
    pub leave_on_terminate: bool,
    pub acl: bool,
    /// The secret read from --initial-management-token-file.
    pub initial_management_token: Option<String>,
    pub insecure_no_auth: bool,
    /// `--tls-cert` and `--tls-key`, when the listeners serve TLS.
    pub tls: Option<shoal_tls::CertificateFiles>,
    pub tls_ca: Option<PathBuf>,
    pub election_timeout_ms: u64,
    pub log_level: String,
    pub log_dir: PathBuf,
    pub log_max_file_bytes: u64,
    pub log_max_files: usize,
    pub otlp_endpoint: Option<String>,
    pub max_value_bytes: usize,
    pub request_timeout_ms: u64,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub snapshot_every: u64,
    pub history_revisions: u64,
    /// The Kafka brokers and how to reach them (--kafka-*).
    pub kafka: Option<shoal_actors::kafka::KafkaConnection>,
    pub outbound_ca_file: Option<PathBuf>,
    /// Where webhooks and workflow calls may go (`--outbound-allow`).
    pub outbound_policy: shoal_outbound::Policy,
    pub max_message_bytes: usize,
    pub otlp_grpc: OptionalListener,
    pub otlp_http: OptionalListener,
    pub logs_retention_days: u64,
    pub logs_retention_bytes: u64,
    /// Stream -> (days, MiB) overrides.
    pub logs_stream_retention: BTreeMap<String, (Option<u64>, Option<u64>)>,
    pub logs_wal_max_bytes: u64,
    pub logs_indexing_max_bytes: u64,
    pub logs_disk_max_bytes: u64,
    pub logs_max_streams: usize,
    pub quota_backend_bytes: u64,
    pub subscriber_buffer_bytes: u64,
    pub min_free_disk_bytes: u64,
    pub logs_max_body_bytes: usize,
    pub logs_commit_ms: u64,
    pub logs_self: bool,
    pub workflow_retention: std::time::Duration,
    pub workflow_max_unfinished: u64,
    pub workflow_event_retention: std::time::Duration,
    pub sql_max_rows_per_node: u64,
    pub sql_max_part_bytes: u64,
}

impl Settings {
    /// `--write-timeout-ms`: how long a client may leave the node's writes
    /// to it untaken.
    pub fn write_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.write_timeout_ms)
    }

    /// The scheme of this node's API, and so of every node's (they are
    /// started alike).
    pub fn api_scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn resolve(flags: NodeArgs) -> anyhow::Result<Settings> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => NodeArgs::default(),
        };
        // Flags (which clap already merged with the environment) win over the file.
        macro_rules! pick {
            ($field:ident) => {
                flags.$field.clone().or(file.$field.clone())
            };
        }
        // A size setting given in MiB, in bytes.
        let mib = |value: Option<u64>, name: &str| {
            value
                .unwrap_or_else(|| default_of::<u64>(name))
                .saturating_mul(1 << 20)
        };
        let seeds = if flags.seed.is_empty() {
            file.seed.clone()
        } else {
            flags.seed.clone()
        };
        let data_dir = pick!(data_dir).unwrap_or_else(|| default_of("data_dir"));
        let api = pick!(api).unwrap_or_else(|| default_of("api"));
        let rpc = pick!(rpc).unwrap_or_else(|| default_of("rpc"));
        let gossip = pick!(gossip).unwrap_or_else(|| default_of("gossip"));
        let settings = Settings {
            log_dir: pick!(log_dir).unwrap_or_else(|| data_dir.join("logs")),
            data_dir,
            advertise_api: advertised("api", api, pick!(advertise_api), false)?,
            advertise_rpc: advertised("rpc", rpc, pick!(advertise_rpc), true)?,
            advertise_gossip: advertised("gossip", gossip, pick!(advertise_gossip), true)?,
            api,
            rpc,
            gossip,
            node_id: pick!(node_id),
            bootstrap_expect: pick!(bootstrap_expect).unwrap_or(if seeds.is_empty() {
                1
            } else {
                0
            }),
            seeds,
            voters: pick!(voters).unwrap_or_else(|| default_of("voters")),
            dead_node_grace_secs: pick!(dead_node_grace_secs)
                .unwrap_or_else(|| default_of("dead_node_grace_secs")),
            cluster_name: pick!(cluster_name).unwrap_or_else(|| default_of("cluster_name")),
            cluster_secret: pick!(cluster_secret),
            leave_on_terminate: pick!(leave_on_terminate).unwrap_or(false),
            acl: pick!(acl).unwrap_or(false),
            initial_management_token: pick!(initial_management_token_file)
                .map(|path| read_secret_file(&path))
                .transpose()?,
            insecure_no_auth: pick!(insecure_no_auth).unwrap_or(false),
            tls: match (pick!(tls_cert), pick!(tls_key)) {
                (Some(certificate), Some(key)) => {
                    Some(shoal_tls::CertificateFiles { certificate, key })
                }
                (None, None) => None,
                _ => bail!("--tls-cert and --tls-key go together"),
            },
            tls_ca: pick!(tls_ca),
            election_timeout_ms: pick!(election_timeout_ms)
                .unwrap_or_else(|| default_of("election_timeout_ms")),
            log_level: pick!(log_level).unwrap_or_else(|| default_of("log_level")),
            log_max_file_bytes: mib(pick!(log_max_file_mb), "log_max_file_mb"),
            log_max_files: pick!(log_max_files).unwrap_or_else(|| default_of("log_max_files")),
            otlp_endpoint: pick!(otlp_endpoint),
            max_value_bytes: pick!(max_value_bytes)
                .unwrap_or_else(|| default_of("max_value_bytes")),
            request_timeout_ms: pick!(request_timeout_ms)
                .unwrap_or_else(|| default_of("request_timeout_ms")),
            max_connections: pick!(max_connections)
                .unwrap_or_else(|| default_of("max_connections")),
            max_connections_per_client: pick!(max_connections_per_client)
                .unwrap_or_else(|| default_of("max_connections_per_client")),
            header_read_timeout_ms: pick!(header_read_timeout_ms)
                .unwrap_or_else(|| default_of("header_read_timeout_ms")),
            write_timeout_ms: pick!(write_timeout_ms)
                .unwrap_or_else(|| default_of("write_timeout_ms")),
            snapshot_every: pick!(snapshot_every).unwrap_or_else(|| default_of("snapshot_every")),
            history_revisions: pick!(history_revisions)
                .unwrap_or_else(|| default_of("history_revisions")),
            kafka: kafka_connection(
                pick!(kafka_brokers).filter(|b| !b.trim().is_empty()),
                KafkaFlags {
                    tls: pick!(kafka_tls).unwrap_or(false),
                    ca_file: pick!(kafka_ca_file),
                    cert_file: pick!(kafka_cert_file),
                    key_file: pick!(kafka_key_file),
                    sasl_mechanism: pick!(kafka_sasl_mechanism),
                    sasl_username: pick!(kafka_sasl_username),
                    sasl_password_file: pick!(kafka_sasl_password_file),
                },
            )?,
            outbound_ca_file: pick!(outbound_ca_file),
            outbound_policy: shoal_outbound::Policy::new(if flags.outbound_allow.is_empty() {
                &file.outbound_allow
            } else {
                &flags.outbound_allow
            })?,
            max_message_bytes: pick!(max_message_bytes)
                .unwrap_or_else(|| default_of("max_message_bytes")),
            otlp_grpc: optional_listener(pick!(otlp_grpc), default_of("otlp_grpc"), "otlp-grpc")?,
            otlp_http: optional_listener(pick!(otlp_http), default_of("otlp_http"), "otlp-http")?,
            logs_retention_days: pick!(logs_retention_days)
                .unwrap_or_else(|| default_of("logs_retention_days")),
            logs_retention_bytes: mib(pick!(logs_retention_mb), "logs_retention_mb"),
            logs_stream_retention: stream_retention(if flags.logs_stream_retention.is_empty() {
                &file.logs_stream_retention
            } else {
                &flags.logs_stream_retention
            })?,
            logs_wal_max_bytes: mib(pick!(logs_wal_max_mb), "logs_wal_max_mb"),
            logs_indexing_max_bytes: mib(pick!(logs_indexing_max_mb), "logs_indexing_max_mb"),
            subscriber_buffer_bytes: mib(pick!(subscriber_buffer_mb), "subscriber_buffer_mb"),
            quota_backend_bytes: mib(pick!(quota_backend_mb), "quota_backend_mb"),
            min_free_disk_bytes: mib(pick!(min_free_disk_mb), "min_free_disk_mb"),
            logs_max_streams: pick!(logs_max_streams)
                .unwrap_or_else(|| default_of("logs_max_streams")),
            logs_disk_max_bytes: mib(pick!(logs_disk_max_mb), "logs_disk_max_mb"),
            logs_max_body_bytes: usize::try_from(
                pick!(logs_max_body_mb)
                    .unwrap_or_else(|| default_of::<u64>("logs_max_body_mb"))
                    .saturating_mul(1 << 20),
            )
            .unwrap_or(usize::MAX),
            logs_commit_ms: pick!(logs_commit_ms).unwrap_or_else(|| default_of("logs_commit_ms")),
            logs_self: pick!(logs_self).unwrap_or_else(|| default_of("logs_self")),
            workflow_retention: duration_setting("workflow-retention", pick!(workflow_retention))?,
            workflow_event_retention: duration_setting(
                "workflow-event-retention",
                pick!(workflow_event_retention),
            )?,
            workflow_max_unfinished: pick!(workflow_max_unfinished)
                .unwrap_or_else(|| default_of("workflow_max_unfinished")),
            sql_max_rows_per_node: pick!(sql_max_rows_per_node)
                .unwrap_or_else(|| default_of("sql_max_rows_per_node")),
            sql_max_part_bytes: pick!(sql_max_part_mb)
                .unwrap_or_else(|| default_of::<u64>("sql_max_part_mb"))
                .saturating_mul(1 << 20),
        };
        settings.check()?;
        Ok(settings)
    }

    /// Refuse to serve beyond loopback without ACLs unless told to.
    fn check_protected(&self) -> Result<(), Unprotected> {
        if self.acl || self.insecure_no_auth {
            return Ok(());
        }
        let listeners = [
            ("the API", Some(self.api)),
            ("the OTLP/gRPC receiver", self.otlp_grpc.addr),
            ("the OTLP/HTTP receiver", self.otlp_http.addr),
        ];
        for (listener, addr) in listeners {
            if let Some(addr) = addr.filter(|addr| !addr.ip().is_loopback()) {
                return Err(Unprotected { listener, addr });
            }
        }
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        self.check_protected()?;
        if self.tls_ca.is_some() && self.tls.is_none() {
            bail!("--tls-ca needs --tls-cert and --tls-key");
        }
        if self.initial_management_token.is_some() && !self.acl {
            bail!("--initial-management-token-file needs --acl");
        }
        if self.node_id == Some(0) {
            bail!("--node-id must be greater than 0");
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > 64 << 20 {
            bail!("--max-message-bytes must be between 1 and 67108864");
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 64 << 20 {
            bail!("--max-value-bytes must be between 1 and 67108864");
        }
        if self.snapshot_every < 10 {
            bail!("--snapshot-every must be at least 10");
        }
        if !(1..=7).contains(&self.voters) {
            bail!("--voters must be between 1 and 7 (3 or 5 are the usual choices)");
        }
        if self.bootstrap_expect > 1 && self.seeds.is_empty() {
            bail!(
                "--bootstrap-expect {} needs --seed addresses to find the other nodes",
                self.bootstrap_expect
            );
        }
        if !(50..=60_000).contains(&self.election_timeout_ms) {
            bail!("--election-timeout-ms must be between 50 and 60000");
        }
        if self.subscriber_buffer_bytes == 0 {
            bail!("--subscriber-buffer-mb must be at least 1");
        }
        if self.quota_backend_bytes == 0 {
            bail!("--quota-backend-mb must be at least 1");
        }
        if self.history_revisions == 0 {
            bail!("--history-revisions must be at least 1");
        }
        // A request's retries must end while the state machine still
        // remembers its proposal id (the last PROPOSAL_ID_WINDOW proposals:
        // about a minute at 15 000 writes/s); a retry after that is refused.
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            bail!("--request-timeout-ms must be between 100 and 60000");
        }
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            bail!("--max-connections and --max-connections-per-client must be at least 1");
        }
        if !(100..=600_000).contains(&self.header_read_timeout_ms) {
            bail!("--header-read-timeout-ms must be between 100 and 600000");
        }
        if !(100..=600_000).contains(&self.write_timeout_ms) {
            bail!("--write-timeout-ms must be between 100 and 600000");
        }
        if self.log_max_files == 0 || self.log_max_file_bytes == 0 {
            bail!("--log-max-files and --log-max-file-mb must be at least 1");
        }
        if self.logs_retention_days == 0 || self.logs_retention_bytes == 0 {
            bail!("--logs-retention-days and --logs-retention-mb must be at least 1");
        }
        if self.workflow_retention < std::time::Duration::from_secs(1) {
            bail!("--workflow-retention must be at least 1s");
        }
        if self.workflow_event_retention < std::time::Duration::from_secs(1) {
            bail!("--workflow-event-retention must be at least 1s");
        }
        if self.workflow_max_unfinished == 0 {
            bail!("--workflow-max-unfinished must be at least 1");
        }
        if !(1..=MAX_SQL_ROWS_PER_NODE).contains(&self.sql_max_rows_per_node) {
            bail!("--sql-max-rows-per-node must be between 1 and {MAX_SQL_ROWS_PER_NODE}");
        }
        let max_part_bytes = shoal_datasets::ipc::MAX_PART_BYTES as u64;
        if !(1 << 20..=max_part_bytes).contains(&self.sql_max_part_bytes) {
            bail!(
                "--sql-max-part-mb must be between 1 and {}",
                max_part_bytes >> 20
            );
        }
        if !(10..=60_000).contains(&self.logs_commit_ms) {
            bail!("--logs-commit-ms must be between 10 and 60000");
        }
        if self.logs_max_body_bytes == 0 || self.logs_max_body_bytes > 1 << 30 {
            bail!("--logs-max-body-mb must be between 1 and 1024");
        }
        if self.logs_wal_max_bytes == 0
            || self.logs_indexing_max_bytes == 0
            || self.logs_disk_max_bytes == 0
        {
            bail!("--logs-wal-max-mb, --logs-indexing-max-mb and --logs-disk-max-mb must be at least 1");
        }
        let addrs = [self.api, self.rpc, self.gossip];
        if addrs[0] == addrs[1] || addrs[1] == addrs[2] || addrs[0] == addrs[2] {
            bail!("--api, --rpc and --gossip must be different addresses");
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> anyhow::Result<NodeArgs> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};

    use super::flags::DEFAULTS;
    use super::*;

    fn kafka_flags() -> KafkaFlags {
        KafkaFlags {
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_file: None,
        }
    }

    #[test]
    fn kafka_sasl_settings_are_checked_and_the_password_read_from_its_file() {
        let dir = std::env::temp_dir().join(format!("shoal-kafka-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let password = dir.join("password");
        std::fs::write(&password, "s3cret\n").expect("write");
        let brokers = || Some("127.0.0.1:9092".to_string());
        let sasl = |mechanism: &str| KafkaFlags {
            sasl_mechanism: Some(mechanism.into()),
            sasl_username: Some("alice".into()),
            sasl_password_file: Some(password.clone()),
            ..kafka_flags()
        };
        let connection = kafka_connection(brokers(), sasl("scram-sha-512"))
            .expect("valid")
            .expect("configured");
        let sasl_set = connection.sasl.expect("SASL");
        assert_eq!(sasl_set.mechanism, "SCRAM-SHA-512");
        assert_eq!(sasl_set.password, "s3cret");
        assert!(!connection.tls);
        assert!(
            !format!("{sasl_set:?}").contains("s3cret"),
            "the password is not shown"
        );
        assert!(kafka_connection(brokers(), sasl("GSSAPI")).is_err());
        let half = KafkaFlags {
            sasl_mechanism: Some("PLAIN".into()),
            ..kafka_flags()
        };
        assert!(kafka_connection(brokers(), half).is_err());
        assert!(
            kafka_connection(None, sasl("PLAIN")).is_err(),
            "needs brokers"
        );
        let missing_ca = KafkaFlags {
            ca_file: Some(dir.join("absent.pem")),
            ..kafka_flags()
        };
        assert!(kafka_connection(brokers(), missing_ca).is_err());
        assert!(kafka_connection(None, kafka_flags())
            .expect("valid")
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Resolving no flags at all takes every default, so every entry of
    /// `DEFAULTS` parses into its setting's type.
    #[test]
    fn every_default_parses_and_resolves() {
        let settings = Settings::resolve(NodeArgs::default()).expect("the defaults are valid");
        assert_eq!(settings.api.to_string(), "127.0.0.1:7700");
        assert_eq!(settings.advertise_rpc, "127.0.0.1:7701");
        assert_eq!(settings.logs_retention_bytes, 10240 << 20);
        assert!(settings.logs_self);
        assert_eq!(
            settings.workflow_retention,
            std::time::Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(
            settings.workflow_event_retention,
            std::time::Duration::from_secs(3600)
        );
    }

    /// `--help` shows each default, taken from the same table.
    #[test]
    fn help_shows_every_default() {
        let command = ["serve", "dev"]
            .into_iter()
            .fold(Command::new("shoal"), |command, name| {
                command.subcommand(NodeArgs::augment_args(Command::new(name)))
            });
        let mut command = with_defaults_in_help(command);
        let help = command
            .find_subcommand_mut("serve")
            .expect("serve")
            .render_long_help()
            .to_string();
        // Help is wrapped to the terminal's width.
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for (name, value) in DEFAULTS {
            assert!(
                help.contains(&format!("[default: {value}]")),
                "--help does not show the default of {name}:\n{help}"
            );
        }
    }
}
