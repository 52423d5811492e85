//! A node whose disk filled up completely stays up and comes back by itself.
//!
//! The `disk` alarm (`services::space`) refuses writes while some space is
//! left, but something else on the machine can still take the last byte.
//! Then a Raft log or state-machine write fails with ENOSPC, openraft stops
//! its core for good, and RocksDB cannot even be opened again (opening
//! replays its WAL into a new file). Exiting would make a supervisor restart
//! the node into the same failure: a crash loop. Instead, once the node
//! has stopped and closed its database, it serves a stand-in API on its
//! address (writes: 507 `insufficient_storage`; reads and `/ready`: 503;
//! `/health`: 200, for the process is alive) and measures the disk every
//! second; when enough space is back it replaces itself with a fresh start
//! of the same command (`exec`), which reopens the database and rejoins Raft
//! from what is on disk. The same happens when the database cannot be opened
//! at start for want of space. Nothing acknowledged is lost: a
//! write is acknowledged only once Raft has stored and applied it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use tokio::sync::watch;

use crate::api::error::{ApiError, ErrorCode};
use crate::api::node::Health;
use crate::api_server::{self, ConnectionLimits};
use crate::services::space::free_bytes;
use crate::settings::Settings;

/// Least free space before the node restarts, when `--min-free-disk-mb` is
/// lower: opening the database replays its WAL into new files.
const RESTART_FLOOR_BYTES: u64 = 16 << 20;
/// How often the disk is measured while waiting.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the wait is reported on standard error.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Whether a node's failure came from a full file system (ENOSPC, or EDQUOT
/// for a user's quota), as the error's text says: the errors come through
/// RocksDB, Tantivy and openraft, which keep only the message.
pub fn caused_by_full_disk(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}");
    text.contains("No space left on device") || text.contains("Disk quota exceeded")
}

/// Writes a line to standard error, which may be a file on the full disk:
/// unlike `eprintln!`, a failed write is ignored rather than a panic.
pub fn to_stderr(line: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Free bytes the node waits for before it restarts.
fn restart_threshold(settings: &Settings) -> u64 {
    settings.min_free_disk_bytes.max(RESTART_FLOOR_BYTES)
}

/// Serve the stand-in API until the data directory has room again, then
/// restart this process in place. Returns only if that is impossible.
pub fn wait_then_restart(settings: &Settings) -> anyhow::Error {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return anyhow::anyhow!("cannot start the async runtime: {e}"),
    };
    runtime.block_on(wait_for_space(settings));
    // The listener closes with the runtime (and would on exec anyway).
    drop(runtime);
    to_stderr(format_args!("shoal: disk space is back; restarting"));
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(crate::services::evaluator::SELF_EXE);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let e = command.args(args).exec();
    anyhow::anyhow!("restarting after the disk had room again: {e}")
}

async fn wait_for_space(settings: &Settings) {
    let threshold = restart_threshold(settings);
    // Without the stand-in (its address taken, its certificate unreadable)
    // the node still waits: exiting is what this is here to avoid.
    let (stop, stopped) = watch::channel(false);
    let server = match serve_stand_in(settings, threshold, stopped).await {
        Ok(server) => Some(server),
        Err(e) => {
            to_stderr(format_args!(
                "shoal: cannot answer on {} while the disk is full: {e:#}",
                settings.api
            ));
            None
        }
    };
    let started = Instant::now();
    let mut last_report = None::<Instant>;
    loop {
        let free = free_bytes(&settings.data_dir).ok();
        if free.is_some_and(|free| free >= threshold) {
            break;
        }
        if last_report.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            to_stderr(format_args!(
                "shoal: the disk of {} is full ({} MiB free); answering 507 on {} and restarting once {} MiB are free (waiting {} s)",
                settings.data_dir.display(),
                free.map_or_else(|| "unknown".to_string(), |f| (f >> 20).to_string()),
                settings.api,
                threshold >> 20,
                started.elapsed().as_secs(),
            ));
            last_report = Some(Instant::now());
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
    let _ = stop.send(true);
    if let Some(server) = server {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
}

async fn serve_stand_in(
    settings: &Settings,
    threshold: u64,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(settings.api)
        .await
        .map_err(|e| anyhow::anyhow!("binding the API address: {e}"))?;
    let tls = crate::tls::load(settings)?.map(|tls| tls.acceptor);
    let data_dir = settings.data_dir.clone();
    let app = Router::new().fallback(move |method: Method, uri: axum::http::Uri| {
        let data_dir = data_dir.clone();
        async move { stand_in(&method, uri.path(), free_bytes(&data_dir).ok(), threshold) }
    });
    Ok(tokio::spawn(api_server::serve(
        listener,
        "api",
        app,
        ConnectionLimits::of(settings),
        tls,
        stopped,
    )))
}

/// What the stand-in answers: the same JSON error shape as the API.
fn stand_in(method: &Method, path: &str, free: Option<u64>, threshold: u64) -> Response {
    let message = format!(
        "the node's disk is full; it restarts by itself once {} MiB are free",
        threshold >> 20
    );
    if path == "/metrics" {
        let text = format!(
            "# HELP shoal_disk_full_waiting 1 while the node waits for disk space to restart.\n\
             # TYPE shoal_disk_full_waiting gauge\nshoal_disk_full_waiting 1\n\
             # HELP shoal_storage_free_bytes Bytes free on the file system of the data directory.\n\
             # TYPE shoal_storage_free_bytes gauge\nshoal_storage_free_bytes {}\n",
            free.unwrap_or(0)
        );
        return (StatusCode::OK, text).into_response();
    }
    if path == "/health" {
        // Liveness: the process serves, and restarting it would not help.
        return axum::Json(Health { status: "ok" }).into_response();
    }
    let error = if *method == Method::GET || *method == Method::HEAD {
        ApiError::unavailable(message)
    } else {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::InsufficientStorage,
            message,
        )
    };
    error.with("alarm", json!("disk")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_full_disks_through_wrapped_errors() {
        let rocks = anyhow::anyhow!(
            "rocksdb: IO error: No space left on device: While appending to file: db/000004.log"
        )
        .context("the Raft core stopped");
        assert!(caused_by_full_disk(&rocks));
        let io: anyhow::Error = std::io::Error::from_raw_os_error(libc::ENOSPC).into();
        assert!(caused_by_full_disk(&io.context("opening the database")));
        let quota: anyhow::Error = std::io::Error::from_raw_os_error(libc::EDQUOT).into();
        assert!(caused_by_full_disk(&quota));
        let other: anyhow::Error = std::io::Error::from_raw_os_error(libc::EACCES).into();
        assert!(!caused_by_full_disk(&other));
    }

    #[test]
    fn the_stand_in_refuses_writes_and_is_not_ready() {
        let put = stand_in(&Method::PUT, "/v1/kv/a", Some(0), 16 << 20);
        assert_eq!(put.status(), StatusCode::INSUFFICIENT_STORAGE);
        let ready = stand_in(&Method::GET, "/ready", Some(0), 16 << 20);
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let health = stand_in(&Method::GET, "/health", Some(0), 16 << 20);
        assert_eq!(health.status(), StatusCode::OK);
        let metrics = stand_in(&Method::GET, "/metrics", Some(7), 16 << 20);
        assert_eq!(metrics.status(), StatusCode::OK);
    }

    #[test]
    fn every_answer_of_the_stand_in_is_in_the_api_document() {
        let document = crate::routes::document();
        for (path, item) in &document.paths.paths {
            let operations = [
                (Method::GET, &item.get),
                (Method::HEAD, &item.head),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let status = stand_in(&method, path, Some(0), 16 << 20).status();
                assert!(
                    operation.responses.responses.contains_key(status.as_str()),
                    "{method} {path}: the stand-in answers {status}, which the document does not name"
                );
            }
        }
    }
}
