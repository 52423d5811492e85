//! `shoal`: one binary for configuration, messaging, logs and workflows.

mod api;
mod client;
mod cluster;
mod faults;
mod leases;
mod logs;
mod logs_client;
mod messaging;
mod otlp;
mod server;
mod service;
mod settings;
mod telemetry;
mod watch;

use clap::{Parser, Subcommand};

// Indexing allocates and frees many small buffers from several threads;
// mimalloc does that with less CPU than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::client::{ClientArgs, ClusterCommand, KvCommand, LeaseCommand};
use crate::settings::{NodeArgs, Settings};

/// Shoal: a self-contained backbone for service clusters.
///
/// Start a node with `shoal dev` (single node, data in ./shoal-data, API on
/// http://127.0.0.1:7700), then use `shoal kv` against it.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. Every setting is a flag, an environment variable
    /// (SHOAL_...) or a key in the --config TOML file, in that order.
    Serve(NodeArgs),
    /// Run a single self-bootstrapping node for development, with the same
    /// flags as `serve` and the same defaults (data in ./shoal-data).
    Dev(NodeArgs),
    /// Read and write configuration keys.
    Kv {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Grant, keep alive and revoke leases.
    Lease {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Inspect cluster membership, or make a node leave.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Publish a message to a topic (from standard input when MESSAGE is omitted).
    Pub {
        #[command(flatten)]
        client: ClientArgs,
        /// Topic, dot-separated (e.g. orders.created).
        topic: String,
        message: Option<String>,
        /// Content type of the message.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        /// A message header NAME=VALUE (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Print messages on topics matching PATTERN as they arrive, one per line
    /// (`*` matches one token, `>` the rest; --json prints whole envelopes).
    Sub {
        #[command(flatten)]
        client: ClientArgs,
        pattern: String,
        /// Join this queue group: each message goes to one member of the group.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Ship, search and tail logs and traces (`shoal logs --help`).
    Logs {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: logs_client::LogsCommand,
    },
    /// Show a node's status: Raft role, term, leader, indexes, revision.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Opt this process out of transparent huge pages. The allocator returns
/// freed memory to the system and asks for huge pages when it takes memory
/// back, so every reuse faulted in and zeroed 2 MiB: 6 % of a node's CPU
/// under a steady write load. (Databases commonly ask for THP off.)
fn no_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// How long an exiting node waits for its database to close.
const STORE_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    no_transparent_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut store_closed = None;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => server::run(Settings::resolve(args)?, &mut store_closed).await,
            Command::Dev(mut args) => {
                args.bootstrap_expect.get_or_insert(1);
                let settings = Settings::resolve(args)?;
                eprintln!(
                    "shoal dev: single node, data in {}, API on http://{}\n  try: shoal kv put hello world && shoal kv get hello",
                    settings.data_dir.display(),
                    settings.api
                );
                server::run(settings, &mut store_closed).await
            }
            Command::Kv { client, command } => client::kv(client, command).await,
            Command::Lease { client, command } => client::lease(client, command).await,
            Command::Cluster { client, command } => client::cluster(client, command).await,
            Command::Status { client } => client::status(client).await,
            Command::Logs { client, command } => logs_client::run(client, command).await,
            Command::Pub { client, topic, message, content_type, headers } => {
                client::publish(client, topic, message, content_type, headers).await
            }
            Command::Sub { client, pattern, queue } => client::subscribe(client, pattern, queue).await,
        }
    });
    // Dropping the runtime drops every task and, with them, the node's
    // handles on its database; the last one may be on another thread (the
    // Raft log writer), so wait until RocksDB is closed before exiting.
    drop(runtime);
    if let Some(closed) = store_closed {
        if !closed.wait(STORE_CLOSE_TIMEOUT) {
            eprintln!("warning: the database was not closed within {STORE_CLOSE_TIMEOUT:?}; exiting anyway");
        }
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
