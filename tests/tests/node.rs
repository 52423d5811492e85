//! Node endpoints, the command line surface and how settings are read.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use shoal_tests::*;

/// `/ready` is a readiness probe: once the node has caught up it stays
/// ready while writes are in flight (each is committed a moment before it
/// is applied), rather than dropping out of service under load.
#[tokio::test(flavor = "multi_thread")]
async fn ready_stays_ready_while_writes_are_in_flight() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let node = Node::start().await;
    let writing = std::sync::Arc::new(AtomicBool::new(true));
    let written = std::sync::Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (url, http) = (node.url(""), node.client().clone());
            let (writing, written) = (writing.clone(), written.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while writing.load(Ordering::Relaxed) {
                    let key = format!("{url}/v1/kv/ready/{w}-{i}");
                    let put = http.put(key).body("v").send().await.expect("PUT");
                    assert!(put.status().is_success(), "PUT answered {}", put.status());
                    i += 1;
                    written.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Probe until both 200 probes and 200 writes are done, however slow the
    // machine: the probes must overlap the writes.
    let mut not_ready = Vec::new();
    let mut probes = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while probes < 200 || written.load(Ordering::Relaxed) < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "{probes} probes and {} writes in 120 s",
            written.load(Ordering::Relaxed)
        );
        let reply = node.get_path("/ready").await;
        if reply.status != StatusCode::OK {
            not_ready.push(reply.text);
        }
        probes += 1;
    }
    writing.store(false, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let writes = written.load(Ordering::Relaxed);
    assert!(
        not_ready.is_empty(),
        "{} of {probes} probes said not ready during {writes} writes: {:?}",
        not_ready.len(),
        not_ready.first()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_ready_and_status() {
    let node = Node::start().await;
    let health = node.get_path("/health").await.ok();
    assert_eq!(health["status"], json!("ok"));
    let ready = node.get_path("/ready").await.ok();
    assert_eq!(ready["status"], json!("ready"));

    let rev = node.put_rev("s/k", b"v").await;
    let status = node.status().await;
    for field in [
        "node_id",
        "state",
        "term",
        "leader",
        "commit_index",
        "applied_index",
        "revision",
        "compact_revision",
        "snapshot_index",
        "first_log_index",
    ] {
        assert!(
            status.get(field).is_some(),
            "/v1/status lacks {field}: {status}"
        );
    }
    assert!(!status["node_id"].is_null(), "{status}");
    assert_eq!(
        status["state"],
        json!("Leader"),
        "a single node leads: {status}"
    );
    assert!(num(&status, "/term") >= 1);
    assert!(
        !status["leader"].is_null(),
        "a ready node knows its leader: {status}"
    );
    let commit = num(&status, "/commit_index");
    let applied = num(&status, "/applied_index");
    assert!(
        applied >= 1 && applied <= commit,
        "applied {applied}, commit {commit}"
    );
    assert_eq!(num(&status, "/revision"), rev);
    assert_eq!(
        num(&status, "/compact_revision"),
        0,
        "nothing compacted yet: {status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_prometheus_text() {
    let node = Node::start().await;
    node.put("m/k", b"v").await;
    node.get("m/k").await;

    let reply = node.get_path("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    let text = &reply.text;
    for name in [
        "shoal_http_requests_total",
        "shoal_raft_term",
        "shoal_raft_commit_index",
        "shoal_raft_applied_index",
        "shoal_raft_is_leader",
    ] {
        assert!(
            metric_value(text, name).is_some(),
            "metric {name} missing from:\n{text}"
        );
    }
    assert_eq!(metric_value(text, "shoal_raft_is_leader"), Some(1.0));
    assert!(metric_value(text, "shoal_raft_term").is_some_and(|t| t >= 1.0));
    assert!(metric_value(text, "shoal_raft_applied_index").is_some_and(|t| t >= 1.0));
    assert!(metric_value(text, "shoal_http_requests_total").is_some_and(|t| t >= 1.0));

    // Every sample line is `name[{labels}] value`.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap_or("");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "not a Prometheus sample line: {line:?}"
        );
        assert!(
            line.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'),
            "not a Prometheus sample line: {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_describes_the_api() {
    let node = Node::start().await;
    let doc = node.get_path("/openapi.json").await.ok();
    let version = text(&doc, "/openapi");
    assert!(
        version.starts_with("3.1"),
        "OpenAPI 3.1 expected, got {version}"
    );
    let paths = doc["paths"].as_object().expect("paths object");
    for path in [
        "/v1/kv/{key}",
        "/v1/kv",
        "/v1/txn",
        "/v1/watch",
        "/v1/watch/poll",
        "/v1/leases",
        "/v1/history/{key}",
        "/v1/status",
        "/v1/cluster/digest",
    ] {
        assert!(
            paths.contains_key(path),
            "openapi.json lacks {path}; has {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    let kv = &doc["paths"]["/v1/kv/{key}"];
    for method in ["get", "put", "delete"] {
        assert!(kv.get(method).is_some(), "/v1/kv/{{key}} lacks {method}");
    }
    // `shoal openapi` prints, without a node, the document nodes serve.
    let printed = std::process::Command::new(shoal_bin())
        .arg("openapi")
        .output()
        .expect("run shoal openapi");
    assert!(
        printed.status.success(),
        "shoal openapi failed: {printed:?}"
    );
    let printed: serde_json::Value =
        serde_json::from_slice(&printed.stdout).expect("shoal openapi prints JSON");
    assert_eq!(printed, doc, "shoal openapi differs from /openapi.json");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_starts_with_the_same_flags() {
    let node = Node::builder().subcommand("dev").start().await;
    let rev = node.put_rev("dev/k", b"v").await;
    assert_eq!(kv_value(&node.get_kv("dev/k").await), b"v");
    assert_eq!(node.revision().await, rev);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_address_from_environment() {
    let node = Node::builder().settings(Settings::ApiFromEnv).start().await;
    // `start` already waited for /ready on the SHOAL_API port.
    let rev = node.put_rev("env/k", b"v").await;
    assert_eq!(node.revision().await, rev);
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_from_a_config_file() {
    let mut node = Node::builder().settings(Settings::ConfigFile).start().await;
    node.put("cfg/k", b"v").await;
    // The data directory named in the file is the one used.
    let entries = std::fs::read_dir(node.data_dir())
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert!(
        entries > 0,
        "nothing written to the data_dir of the config file"
    );
    node.kill9();
    node.restart().await;
    assert_eq!(kv_value(&node.get_kv("cfg/k").await), b"v");
}

#[tokio::test(flavor = "multi_thread")]
async fn help_texts() {
    let out = run_shoal(&["--help"], None, &[]).await;
    out.assert_success();
    let help = out.stdout_text();
    for word in ["serve", "dev", "kv"] {
        assert!(
            help.contains(word),
            "`shoal --help` does not mention {word}:\n{help}"
        );
    }

    let out = run_shoal(&["serve", "--help"], None, &[]).await;
    out.assert_success();
    let help = out.stdout_text();
    for flag in [
        "--data-dir",
        "--api",
        "--rpc",
        "--gossip",
        "--config",
        "--snapshot-every",
        "--history-revisions",
        "--max-value-bytes",
        "--request-timeout-ms",
    ] {
        assert!(
            help.contains(flag),
            "`shoal serve --help` does not mention {flag}:\n{help}"
        );
    }

    let out = run_shoal(&["kv", "--help"], None, &[]).await;
    out.assert_success();
    let help = out.stdout_text();
    for word in [
        "put",
        "get",
        "del",
        "ls",
        "watch",
        "history",
        "rollback",
        "--endpoint",
        "--json",
    ] {
        assert!(
            help.contains(word),
            "`shoal kv --help` does not mention {word}:\n{help}"
        );
    }

    let out = run_shoal(&["no-such-command"], None, &[]).await;
    assert!(!out.status.success(), "an unknown subcommand must fail");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// `GET /v1/cluster/digest` reads the whole state, and a caller that gives
/// up cannot stop a digest that started: a node computes one at a time,
/// and requests that waited take the last result when nothing was applied
/// meanwhile. 16 requests at once cost one computation per state they
/// saw (`shoal_state_digests_total`), not one each.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_digests_of_one_state_are_computed_once() {
    let node = Node::start().await;
    let value = vec![b'd'; 64 << 10];
    for i in 0..64 {
        node.put(&format!("digest/{i:02}"), &value).await;
    }
    let computed = || async {
        let reply = node.get_path("/metrics").await;
        metric_value(&reply.text, "shoal_state_digests_total").unwrap_or(0.0)
    };
    // One computed before, so that the metric exists.
    assert_eq!(
        node.get_path("/v1/cluster/digest").await.status,
        StatusCode::OK
    );
    let before = computed().await;
    let replies: Vec<Reply> = stream::iter(0..16)
        .map(|_| node.get_path("/v1/cluster/digest"))
        .buffer_unordered(16)
        .collect()
        .await;
    let after = computed().await;
    assert!(before >= 1.0, "shoal_state_digests_total is missing or 0");
    let mut states = BTreeSet::new();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        states.insert((
            num(&reply.body, "/applied_index"),
            text(&reply.body, "/digest").to_string(),
        ));
    }
    // A state (applied position) has one digest.
    let positions: BTreeSet<u64> = states.iter().map(|(index, _)| *index).collect();
    assert_eq!(positions.len(), states.len(), "{states:?}");
    assert!(
        after - before <= states.len() as f64,
        "{} digests computed for {} request(s) that saw {} state(s)",
        after - before,
        replies.len(),
        states.len()
    );
}
