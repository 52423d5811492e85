//! Harness for Shoal's integration tests.
//!
//! Every test starts its own `shoal` process ([`Node`]) on free local ports with
//! a fresh data directory, and drives it over HTTP (or through the `shoal kv`
//! command line). Nothing here knows Shoal's internals: the tests are written
//! against the public HTTP API described in `docs/config-api.md`.
//!
//! [`Cluster`] starts several nodes that form one Raft cluster by gossip and
//! gives each the same `--seed` list; its nodes are ordinary [`Node`]s that
//! can be killed, restarted, paused (SIGSTOP) and terminated (SIGTERM).
//!
//! Starting, killing and restarting the processes, free ports and tool
//! lookup live in `shoal-testkit` (shared with `bench/` and `jepsen/`);
//! [`Node`] adds the HTTP helpers on top of its `NodeProcess`.
//!
//! The binary is looked up in `SHOAL_BIN`, else next to the test executable
//! (`<target>/debug/shoal`); build it with `cargo build -p shoal`.

mod cli;
mod cluster;
pub mod cluster_support;
pub mod delivery_support;
pub mod hook;
mod http;
pub mod kafka;
mod load;
pub mod logs;
pub mod messaging_support;
mod node;
pub mod postgres;
pub mod procfs;
pub mod python;
mod sse;
pub mod tls;
pub mod ws;

pub use cli::{run_shoal, shoal_command, CliOutput};
pub use cluster::{members_of, Cluster, ClusterBuilder, Member, FORM_TIMEOUT};
pub use http::{
    assert_error, b64, encode_key, error_detail, error_matches, kv_value, metric_value, num,
    opt_num, text, unb64, Reply,
};
pub use load::{check_acked, Acked, Load};
pub use logs::{
    day_of, gzip, hits_of, messages, ndjson, now_nanos, rfc3339, DAY, HOUR, MINUTE,
    SEARCHABLE_TIMEOUT,
};
pub use node::{
    clock_offset_env, free_port, libfaketime, shoal_bin, tmpfs_root, Node, NodeBuilder, Settings,
};
pub use shoal_testkit::NodeProcess;
pub use sse::{changes, Change, SseEvent, WatchStream};

pub use reqwest::{Method, StatusCode};
pub use serde_json::{json, Value};

use std::future::Future;
use std::time::{Duration, Instant};

pub use shoal_testkit::eventually;

/// This package's directory (`tests/`) in the checkout under test, from the
/// environment cargo and nextest give the running test rather than the one
/// the test was compiled in: checkouts that share one target directory
/// reuse each other's compiled tests, and a path compiled in could name
/// another checkout.
pub fn package_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        std::path::PathBuf::from,
    )
}

/// Like [`eventually`], but `check` explains each miss (`Err(observation)`),
/// and the panic after `timeout` shows the last observation, so a failure
/// says what the cluster looked like rather than only what was awaited.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for: {what}\nlast seen: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
