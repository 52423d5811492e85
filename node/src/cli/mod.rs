//! The command-line interface: the `shoal` command's arguments and the
//! client subcommands (`kv`, `lease`, `cluster`, `pub`, `sub`, `logs`,
//! `wf`, `db`, `sink`, `acl`, `status`, and `tls`, which needs no node). It owns argument parsing, output formatting and the wording of
//! errors, and talks to nodes only through `shoal-client` (typed calls where
//! the client models the API, its `request_json`/`request_events` escape
//! hatch for cluster, status and log queries), like any other client; it
//! must not depend on the node's internals (services, `cluster/`, the HTTP
//! layer), only on `settings` for the flags of `serve` and `dev`.

mod acl;
mod client;
mod data;
mod logs;
mod ship;
mod tls;
mod workflows;

use clap::{Parser, Subcommand};

use crate::settings::NodeArgs;
use acl::AclCommand;
use client::{ClientArgs, ClusterCommand, KvCommand, LeaseCommand};
use data::{DbCommand, SinkCommand};
use logs::LogsCommand;
use tls::TlsCommand;
use workflows::WfCommand;

/// Shoal: a self-contained backbone for service clusters.
///
/// Start a node with `shoal dev` (single node, data in ./shoal-data, API on
/// http://127.0.0.1:7700), then use `shoal kv` against it.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        /// Content type of the message. Default: application/json when the message is a JSON
        /// object or array, else text/plain.
        #[arg(long)]
        content_type: Option<String>,
        /// A message header NAME=VALUE (repeatable); `type`, `id`, `source` and `subject` set
        /// the CloudEvent's attributes.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Send it to the workflow event inbox instead of subscribers: stored in Raft before the
        /// answer, then taken by the workflow instances listening for it (an `id` header makes
        /// sending it again harmless; one is generated when absent).
        #[arg(long)]
        to_workflows: bool,
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
        command: LogsCommand,
    },
    /// Show a node's status: Raft role, term, leader, indexes, revision.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Publish, read, list and delete workflow definitions (CNCF Serverless
    /// Workflow DSL 1.0; `shoal wf --help`).
    Wf {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: WfCommand,
    },
    /// Define the databases SQL sinks write, with migrations from a directory
    /// (`shoal db --help`).
    Db {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Define SQL sinks (messages projected into tables), read their dead
    /// letters and replay them (`shoal sink --help`).
    Sink {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: SinkCommand,
    },
    /// Manage access control: bootstrap, tokens, roles and policies (nodes started with
    /// --acl; `shoal acl --help`).
    Acl {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: AclCommand,
    },
    /// Run one SELECT (Polars SQL) over datasets on every node: a table on
    /// the terminal, or CSV, Parquet or Arrow IPC with --format (to a file
    /// with --output). Logs are queried with `shoal logs sql`.
    Sql {
        #[command(flatten)]
        client: ClientArgs,
        /// The query, e.g. "SELECT date, count(*) FROM orders GROUP BY date".
        query: String,
        /// table (default; JSON with --json), csv, parquet or arrow.
        #[arg(long, default_value = "table")]
        format: String,
        /// Write the result to this file instead of standard output.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Make a certificate authority and certificates for nodes and clients, for clusters
    /// without a PKI of their own (`shoal tls --help`).
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (what every node serves at
    /// /openapi.json), without a node: for generating clients.
    Openapi,
    /// Internal: the process a node runs workflow expressions in (frames on
    /// stdin and stdout). Not for people.
    #[command(hide = true)]
    Evaluator,
    /// Internal: the process a node runs one SQL query over logs in (a job
    /// on stdin, the answer on stdout). Not for people.
    #[command(hide = true)]
    SqlWorker,
}

/// Run a client subcommand (`serve`, `dev`, `openapi`, `evaluator` and
/// `sql-worker` are run by `main`).
pub async fn run(command: Command) -> anyhow::Result<()> {
    dispatch(command)
        .await
        .map_err(|error| match error.downcast_ref::<shoal_client::Error>() {
            Some(e) => anyhow::anyhow!(client::describe(e)),
            None => error,
        })
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_)
        | Command::Dev(_)
        | Command::Openapi
        | Command::Evaluator
        | Command::SqlWorker => {
            anyhow::bail!("serve, dev, openapi, evaluator and sql-worker are not client commands")
        }
        Command::Kv { client, command } => client::kv(client, command).await,
        Command::Lease { client, command } => client::lease(client, command).await,
        Command::Cluster { client, command } => client::cluster(client, command).await,
        Command::Status { client } => client::status(client).await,
        Command::Logs { client, command } => logs::run(client, command).await,
        Command::Wf { client, command } => workflows::run(client, command).await,
        Command::Db { client, command } => data::db(client, command).await,
        Command::Sink { client, command } => data::sink(client, command).await,
        Command::Sql {
            client,
            query,
            format,
            output,
        } => data::sql(client, query, format, output).await,
        Command::Acl { client, command } => acl::run(client, command).await,
        Command::Tls { command } => tls::run(command),
        Command::Pub {
            client,
            topic,
            message,
            content_type,
            headers,
            to_workflows,
        } => client::publish(client, topic, message, content_type, headers, to_workflows).await,
        Command::Sub {
            client,
            pattern,
            queue,
        } => client::subscribe(client, pattern, queue).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command line's definition only when it is parsed: a
    /// clash (two arguments named alike) would panic for the user.
    #[test]
    fn every_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
