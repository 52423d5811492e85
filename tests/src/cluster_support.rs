//! Helpers shared by the cluster tests (`tests/cluster_*.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_client::Consistency;

use crate::*;

/// Convergence deadline: formation, failover, catch-up, membership changes.
pub const T: Duration = Duration::from_secs(30);

/// Client time limit of one write while the cluster may be failing over
/// (the node itself retries until its request timeout, 10 s by default).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(12);

/// Node indices other than `except`, in order.
pub fn others(cluster: &Cluster, except: &[usize]) -> Vec<usize> {
    (0..cluster.len()).filter(|i| !except.contains(i)).collect()
}

/// `PUT` through node `i` (and only node `i`) within [`WRITE_TIMEOUT`];
/// returns the revision, or `Err` describing the error or the silence.
pub async fn try_put(cluster: &Cluster, i: usize, key: &str, value: &[u8]) -> Result<u64, String> {
    match tokio::time::timeout(WRITE_TIMEOUT, cluster.node(i).api().put(key, value)).await {
        Ok(Ok(answer)) => Ok(answer.revision),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no reply within {WRITE_TIMEOUT:?}")),
    }
}

/// `PUT` through node `i` (and only node `i`), asserting success; returns
/// the revision.
pub async fn put(cluster: &Cluster, i: usize, key: &str, value: &[u8]) -> u64 {
    match try_put(cluster, i, key, value).await {
        Ok(revision) => revision,
        Err(e) => panic!("PUT {key} on node {i}: {e}\n{}", cluster.describe().await),
    }
}

/// Every key/value under `prefix` on node `i` as a key → value map, read with
/// `consistency` (`stale` or `linearizable`); `Err` if the node does not
/// answer.
pub async fn kv_map(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
    consistency: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let consistency = match consistency {
        "stale" => Consistency::Stale,
        "linearizable" => Consistency::Linearizable,
        other => panic!("kv_map: unknown consistency {other:?}"),
    };
    let kvs = cluster.list_kvs(i, prefix, consistency).await?;
    Ok(kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
}

/// Waits until node `i`'s `stale` view of `prefix` contains every expected
/// key with its value.
pub async fn wait_stale_has(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
    expected: &BTreeMap<String, Vec<u8>>,
) {
    wait_for(
        T,
        &format!(
            "node {i} has all {} keys under {prefix} (stale read)",
            expected.len()
        ),
        || async {
            let got = kv_map(cluster, i, prefix, "stale").await?;
            let missing: Vec<&String> = expected
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} keys missing or different, e.g. {:?}; node has {} keys",
                    missing.len(),
                    expected.len(),
                    &missing[..missing.len().min(5)],
                    got.len()
                ))
            }
        },
    )
    .await
}
