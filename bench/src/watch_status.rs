//! The node's count of registered watches (`GET /v1/status`), and waiting
//! until a scenario's watches are all registered.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::watch::{chain, GroupStats};

async fn status(control: &reqwest::Client, api: &str) -> anyhow::Result<serde_json::Value> {
    let resp = control
        .get(format!("{api}/v1/status"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(chain(&e)))?;
    if !resp.status().is_success() {
        bail!("GET /v1/status: HTTP {}", resp.status());
    }
    Ok(resp.json().await?)
}

pub(super) async fn watchers(control: &reqwest::Client, api: &str) -> anyhow::Result<u64> {
    status(control, api).await?["watchers"]
        .as_u64()
        .context("/v1/status has no `watchers` number")
}

/// Poll `/v1/status` until it reports at least `want` watchers; progress to stderr every second.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the arguments
pub(super) async fn wait_registered(
    control: &reqwest::Client,
    api: &str,
    label: &str,
    want: u64,
    baseline: u64,
    total: usize,
    stats: &GroupStats,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let registered = watchers(control, api).await?;
        let connected = stats.connected.load(Ordering::Relaxed);
        let done = registered >= want;
        if done || last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "{label}: connected {connected}/{total} (node watchers {})",
                registered.saturating_sub(baseline)
            );
            last_print = Instant::now();
        }
        if done {
            return Ok(started.elapsed());
        }
        let failed = stats.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} {label} watches could not connect");
        }
        if started.elapsed() > limit {
            bail!(
                "{label}: only {connected}/{total} connected, {} registered, after {limit:?}",
                registered.saturating_sub(baseline)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
