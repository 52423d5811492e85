//! Node settings: each one can come from a flag, an environment variable
//! (`SHOAL_...`) or a TOML file (`--config`), in that order of precedence,
//! else its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
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
    /// Directory for everything the node persists [default: ./shoal-data].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Public HTTP API listen address [default: 127.0.0.1:7700].
    #[arg(long, env = "SHOAL_API")]
    pub api: Option<SocketAddr>,
    /// Node-to-node RPC listen address [default: 127.0.0.1:7701].
    #[arg(long, env = "SHOAL_RPC")]
    pub rpc: Option<SocketAddr>,
    /// Gossip (UDP) address, used by cluster membership [default: 127.0.0.1:7702].
    #[arg(long, env = "SHOAL_GOSSIP")]
    pub gossip: Option<SocketAddr>,
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
    /// Raft voters to keep (others are learners); 3 or 5 [default: 3].
    #[arg(long, env = "SHOAL_VOTERS")]
    pub voters: Option<usize>,
    /// Remove a member from Raft after it has been dead (by gossip) this long, in seconds [default: 30].
    #[arg(long, env = "SHOAL_DEAD_NODE_GRACE_SECS")]
    pub dead_node_grace_secs: Option<u64>,
    /// Name of the cluster: nodes only gossip with nodes of the same name (like etcd's
    /// --initial-cluster-token), so clusters that can reach each other stay apart [default: shoal].
    #[arg(long, env = "SHOAL_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Shared secret that peers must prove to exchange Raft and gossip traffic.
    #[arg(long, env = "SHOAL_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// On SIGTERM, leave the cluster (be removed from Raft) before exiting.
    #[arg(long, env = "SHOAL_LEAVE_ON_TERMINATE", num_args = 0..=1, default_missing_value = "true")]
    pub leave_on_terminate: Option<bool>,
    /// Raft election timeout in ms: a follower that hears no leader for a random time between this
    /// and twice this starts an election; heartbeats go every fifth of it [default: 300].
    #[arg(long, env = "SHOAL_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Log filter for the console and log files, e.g. `info` or `shoal=debug,info` [default: info,openraft=warn].
    #[arg(long, env = "SHOAL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Directory for the node's own rolling log files [default: DATA_DIR/logs].
    #[arg(long, env = "SHOAL_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Roll the log file when it reaches this size, in MiB (it also rolls daily) [default: 64].
    #[arg(long, env = "SHOAL_LOG_MAX_FILE_MB")]
    pub log_max_file_mb: Option<u64>,
    /// How many rolled log files to keep [default: 10].
    #[arg(long, env = "SHOAL_LOG_MAX_FILES")]
    pub log_max_files: Option<usize>,
    /// Export traces to this OpenTelemetry collector (OTLP/gRPC), e.g. http://127.0.0.1:4317.
    #[arg(long, env = "SHOAL_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Largest value accepted for a key, in bytes [default: 1048576].
    #[arg(long, env = "SHOAL_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Time limit for one API request, in milliseconds [default: 10000].
    #[arg(long, env = "SHOAL_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Take a Raft snapshot (and purge the log) every this many log entries [default: 10000].
    #[arg(long, env = "SHOAL_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Keep the history of this many most recent revisions; older ones are compacted [default: 100000].
    #[arg(long, env = "SHOAL_HISTORY_REVISIONS")]
    pub history_revisions: Option<u64>,
    /// Kafka bootstrap servers (host:port,...); enables the Kafka bridge
    /// (`POST /v1/kafka/{topic}`, `kafka:` route destinations, bridges).
    #[arg(long, env = "SHOAL_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Largest message payload accepted by publish, in bytes [default: 1048576].
    #[arg(long, env = "SHOAL_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub rpc: SocketAddr,
    pub gossip: SocketAddr,
    pub node_id: Option<u64>,
    pub seeds: Vec<String>,
    pub bootstrap_expect: usize,
    pub voters: usize,
    pub dead_node_grace_secs: u64,
    pub cluster_name: String,
    pub cluster_secret: Option<String>,
    pub leave_on_terminate: bool,
    pub election_timeout_ms: u64,
    pub log_level: String,
    pub log_dir: PathBuf,
    pub log_max_file_bytes: u64,
    pub log_max_files: usize,
    pub otlp_endpoint: Option<String>,
    pub max_value_bytes: usize,
    pub request_timeout_ms: u64,
    pub snapshot_every: u64,
    pub history_revisions: u64,
    pub kafka_brokers: Option<String>,
    pub max_message_bytes: usize,
}

impl Settings {
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
        let seeds = if flags.seed.is_empty() { file.seed.clone() } else { flags.seed.clone() };
        let data_dir = pick!(data_dir).unwrap_or_else(|| PathBuf::from("./shoal-data"));
        let settings = Settings {
            log_dir: pick!(log_dir).unwrap_or_else(|| data_dir.join("logs")),
            data_dir,
            api: pick!(api).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7700))),
            rpc: pick!(rpc).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7701))),
            gossip: pick!(gossip).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7702))),
            node_id: pick!(node_id),
            bootstrap_expect: pick!(bootstrap_expect).unwrap_or(if seeds.is_empty() { 1 } else { 0 }),
            seeds,
            voters: pick!(voters).unwrap_or(3),
            dead_node_grace_secs: pick!(dead_node_grace_secs).unwrap_or(30),
            cluster_name: pick!(cluster_name).unwrap_or_else(|| "shoal".into()),
            cluster_secret: pick!(cluster_secret),
            leave_on_terminate: pick!(leave_on_terminate).unwrap_or(false),
            election_timeout_ms: pick!(election_timeout_ms).unwrap_or(300),
            log_level: pick!(log_level).unwrap_or_else(|| "info,openraft=warn".into()),
            log_max_file_bytes: pick!(log_max_file_mb).unwrap_or(64).saturating_mul(1 << 20),
            log_max_files: pick!(log_max_files).unwrap_or(10),
            otlp_endpoint: pick!(otlp_endpoint),
            max_value_bytes: pick!(max_value_bytes).unwrap_or(1 << 20),
            request_timeout_ms: pick!(request_timeout_ms).unwrap_or(10_000),
            snapshot_every: pick!(snapshot_every).unwrap_or(10_000),
            history_revisions: pick!(history_revisions).unwrap_or(100_000),
            kafka_brokers: pick!(kafka_brokers).filter(|b| !b.trim().is_empty()),
            max_message_bytes: pick!(max_message_bytes).unwrap_or(1 << 20),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> anyhow::Result<()> {
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
            bail!("--bootstrap-expect {} needs --seed addresses to find the other nodes", self.bootstrap_expect);
        }
        if !(50..=60_000).contains(&self.election_timeout_ms) {
            bail!("--election-timeout-ms must be between 50 and 60000");
        }
        if self.history_revisions == 0 {
            bail!("--history-revisions must be at least 1");
        }
        // Retried proposals are deduplicated for PROPOSAL_ID_RETENTION_MS
        // (2 minutes); a request must end well within that.
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            bail!("--request-timeout-ms must be between 100 and 60000");
        }
        if self.log_max_files == 0 || self.log_max_file_bytes == 0 {
            bail!("--log-max-files and --log-max-file-mb must be at least 1");
        }
        let addrs = [self.api, self.rpc, self.gossip];
        if addrs[0] == addrs[1] || addrs[1] == addrs[2] || addrs[0] == addrs[2] {
            bail!("--api, --rpc and --gossip must be different addresses");
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> anyhow::Result<NodeArgs> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The node id: given, or kept in DATA_DIR/node-id (created on first start).
pub fn node_id(settings: &Settings) -> anyhow::Result<u64> {
    let path = settings.data_dir.join("node-id");
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<u64>().with_context(|| format!("bad node id in {}", path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let id = match (settings.node_id, stored) {
        (Some(given), Some(stored)) if given != stored => {
            bail!("--node-id {given} but {} holds node {stored}; use another --data-dir", settings.data_dir.display())
        }
        (_, Some(stored)) => return Ok(stored),
        (Some(given), None) => given,
        // Below 2^53 so the id survives JSON clients that use doubles.
        (None, None) => rand::random_range(1..(1u64 << 53)),
    };
    std::fs::write(&path, format!("{id}\n")).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}
