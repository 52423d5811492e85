//! Helpers shared by the cluster tests (`tests/cluster_*.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

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

/// `PUT` through node `i`, asserting 200; returns the revision.
pub async fn put(cluster: &Cluster, i: usize, key: &str, value: &[u8]) -> u64 {
    let reply = cluster
        .node(i)
        .try_put(key, value, WRITE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("PUT {key} on node {i}: no reply: {e}"));
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "PUT {key} on node {i}: {}\n{}",
        reply.describe(),
        cluster.describe().await
    );
    num(&reply.body, "/revision")
}

/// Every key/value under `prefix` on node `i` as a key → value map, read with
/// `consistency` (`stale` or `linearizable`); `Err` if the node does not
/// answer 200.
pub async fn kv_map(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
    consistency: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut map = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!(
            "/v1/kv?prefix={}&limit=1000&consistency={consistency}",
            encode_key(prefix)
        );
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", encode_key(after)));
        }
        let reply = cluster
            .node(i)
            .try_request(Method::GET, &path, Duration::from_secs(10))
            .await?;
        if reply.status != StatusCode::OK {
            return Err(format!("list on node {i}: {}", reply.describe()));
        }
        for kv in reply.body["kvs"].as_array().ok_or("kvs is not an array")? {
            map.insert(text(kv, "/key").to_string(), kv_value(kv));
        }
        if reply.body["more"] != Value::Bool(true) {
            return Ok(map);
        }
        after = Some(text(&reply.body, "/next_after").to_string());
    }
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
