//! `shoal`: one binary for configuration, messaging, logs and workflows.
//!
//! Layers, each depending only on those below it:
//! - `main.rs`, `server.rs` (wiring a node), `routes.rs` (the HTTP route
//!   table), `cli/` (the command-line client);
//! - `compat/` (OTLP, Elasticsearch and Jaeger adapters) over `api/` (the
//!   HTTP API and its plumbing);
//! - `services/` (the shared state, writes and reads, watches, leases,
//!   messaging, cluster-wide log search);
//! - `cluster/` (gossip, formation, membership);
//! - `settings`, `telemetry`, `faults`.
//!
//! Errors: one style per layer. Libraries and services return `thiserror`
//! enums (`KvError`, `LeaveError`, the crates' own errors); the HTTP layer
//! converts them with `From` into `ApiError`, which carries the status and
//! the stable `code` clients see; the binary's top level (`main`, `server`,
//! settings, the CLI) uses `anyhow` with context.

mod api;
mod api_server;
mod cli;
mod cluster;
mod compat;
mod disk_full;
mod faults;
mod http2_idle;
mod routes;
mod server;
mod services;
mod settings;
mod telemetry;
mod tls;
mod write_deadline;

use clap::{CommandFactory, FromArgMatches};

// Indexing allocates and frees many small buffers from several threads;
// mimalloc does that with less CPU than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::cli::{Cli, Command};
use crate::settings::Settings;

/// Opt this process in or out of transparent huge pages. A node and its
/// evaluators opt out: the allocator returns freed memory to the system and
/// asks for huge pages when it takes memory back, so every reuse faulted in
/// and zeroed 2 MiB (a noticeable share of a node's CPU under write load;
/// databases commonly ask for THP off). A SQL worker opts back in (the flag
/// is inherited from the node that starts it): it lives for one query and
/// fills hundreds of MiB once, which huge pages fault in with far fewer
/// faults (bench/README.md, analytics).
fn transparent_huge_pages(allowed: bool) {
    let disable = libc::c_ulong::from(!allowed);
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, disable, 0, 0, 0) };
}

/// Keep the C heap (RocksDB's memtables, blocks and compaction buffers)
/// from holding memory it freed. By default glibc raises its mmap
/// threshold each time a large block is freed, so later memtable blocks
/// come from the heap, where freed ones are seldom given back; and it
/// keeps up to eight arenas per core. A node's memory then grew with its
/// data well past RocksDB's buffers (bench/README.md, memory per waiting
/// instance). Rust's own allocations go to mimalloc.
fn bounded_c_heap() {
    // SAFETY: mallopt only changes glibc's allocator settings, and runs
    // before this process starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// For client commands: end quietly when the reader of stdout goes away
/// (`shoal logs stats | head -3`), as Unix tools do, instead of panicking
/// in `println!`. Rust ignores SIGPIPE by default; sockets are unaffected
/// either way (their writes use MSG_NOSIGNAL), so only the pipe changes.
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal for this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// How long an exiting node waits for its database to close.
const STORE_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn print_openapi() -> std::process::ExitCode {
    match serde_json::to_string_pretty(&routes::document()) {
        Ok(document) => {
            println!("{document}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot serialize the OpenAPI document: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    let matches = settings::with_defaults_in_help(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    transparent_huge_pages(matches!(cli.command, Command::SqlWorker));
    bounded_c_heap();
    if !matches!(cli.command, Command::Serve(_) | Command::Dev(_)) {
        default_sigpipe();
    }
    if matches!(cli.command, Command::Openapi) {
        return print_openapi();
    }
    if matches!(cli.command, Command::Evaluator) {
        return services::evaluator::serve();
    }
    if matches!(cli.command, Command::SqlWorker) {
        return services::sql_worker::serve();
    }
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
    // A node's settings, kept for the wait after a full disk stopped it.
    let mut node_settings = None;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let settings = Settings::resolve(args)?;
                node_settings = Some(settings.clone());
                server::run(settings, &mut store_closed).await
            }
            Command::Dev(mut args) => {
                args.bootstrap_expect.get_or_insert(1);
                let mut settings = Settings::resolve(args)?;
                settings.outbound_policy.allow_loopback();
                node_settings = Some(settings.clone());
                let try_first = if settings.acl {
                    "shoal acl bootstrap, then export SHOAL_TOKEN=<its secret>"
                } else {
                    "shoal kv put hello world && shoal kv get hello"
                };
                disk_full::to_stderr(format_args!(
                    "shoal dev: single node, data in {}, API on http://{}\n  try: {try_first}",
                    settings.data_dir.display(),
                    settings.api
                ));
                server::run(settings, &mut store_closed).await
            }
            client_command => cli::run(client_command).await,
        }
    });
    // Dropping the runtime drops every task and, with them, the node's
    // handles on its database; the last one may be on another thread (the
    // Raft log writer), so wait until RocksDB is closed before exiting.
    drop(runtime);
    if let Some(closed) = store_closed {
        if !closed.wait(STORE_CLOSE_TIMEOUT) {
            disk_full::to_stderr(format_args!(
                "warning: the database was not closed within {STORE_CLOSE_TIMEOUT:?}; exiting anyway"
            ));
        }
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            disk_full::to_stderr(format_args!("error: {e:#}"));
            if let Some(settings) = node_settings.filter(|_| disk_full::caused_by_full_disk(&e)) {
                let e = disk_full::wait_then_restart(&settings);
                disk_full::to_stderr(format_args!("error: {e:#}"));
                return std::process::ExitCode::FAILURE;
            }
            if e.downcast_ref::<settings::Unprotected>().is_some() {
                // A usage error, like clap's: the command line must change.
                return std::process::ExitCode::from(2);
            }
            std::process::ExitCode::FAILURE
        }
    }
}
