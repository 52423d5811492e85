//! `--advertise-api/-rpc/-gossip`: what a node tells its peers and clients
//! when it listens on every interface (as in a container), and the refusal
//! to start when a peer-facing listener is on 0.0.0.0 with nothing to
//! advertise. Leaving a cluster whose only voter is the node is refused.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use shoal_testkit::{ClusterPlan, NodeProcess};

const T: Duration = Duration::from_secs(60);

async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_facing_listener_on_every_interface_needs_an_advertised_address() {
    for (flag, args) in [
        ("--advertise-rpc", vec!["--advertise-gossip", "127.0.0.1:1"]),
        ("--advertise-gossip", vec!["--advertise-rpc", "127.0.0.1:1"]),
    ] {
        let mut node = NodeProcess::builder()
            .listen_host("0.0.0.0")
            .args(&args)
            .spawn()
            .expect("spawning shoal");
        let status = node.wait_exit(T).await.expect("the node exits");
        assert!(!status.success(), "started without {flag}");
        let log = node.log_tail(20);
        assert!(
            log.contains(flag),
            "the refusal does not name {flag}:\n{log}"
        );
    }
    let mut bad = NodeProcess::builder()
        .args(&["--advertise-rpc", "no-port-here"])
        .spawn()
        .expect("spawning shoal");
    assert!(!bad.wait_exit(T).await.expect("the node exits").success());
    assert!(
        bad.log_tail(20).contains("is not HOST:PORT"),
        "{}",
        bad.log_tail(20)
    );
}

/// Three nodes listen on 0.0.0.0 and advertise `localhost:PORT` (a name,
/// resolved by peers when they connect): the cluster forms, lists the
/// advertised addresses, and a write sent to a follower reaches the leader
/// through the advertised RPC address.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_on_every_interface_form_a_cluster_through_advertised_names() {
    let plan = ClusterPlan::new(3).expect("ports");
    let mut nodes = Vec::new();
    for (i, ports) in plan.ports.iter().enumerate() {
        let node = plan
            .node(i)
            .listen_host("0.0.0.0")
            // The API on every interface without ACLs: the test network is trusted.
            .args(&[
                "--insecure-no-auth",
                "--advertise-api",
                &format!("localhost:{}", ports.api),
                "--advertise-rpc",
                &format!("localhost:{}", ports.rpc),
                "--advertise-gossip",
                &format!("127.0.0.1:{}", ports.gossip),
            ])
            .spawn()
            .expect("spawning shoal");
        nodes.push(node);
    }
    for node in &mut nodes {
        node.wait_ready().await.expect("node ready");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http");
    let want: Vec<(String, String)> = plan
        .ports
        .iter()
        .map(|p| {
            (
                format!("localhost:{}", p.api),
                format!("localhost:{}", p.rpc),
            )
        })
        .collect();
    let deadline = tokio::time::Instant::now() + T;
    let (leader, view) = loop {
        let (_, view) = get(&http, &nodes[0].url("/v1/cluster")).await;
        let mut seen: Vec<(String, String)> = view["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| matches!(m["raft_role"].as_str(), Some("leader" | "voter")))
            .map(|m| {
                let text = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                (text("api"), text("rpc"))
            })
            .collect();
        seen.sort();
        let mut expected = want.clone();
        expected.sort();
        if seen == expected && view["leader"].as_u64().is_some() {
            break (view["leader"].as_u64().unwrap_or_default(), view);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cluster of the advertised addresses: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let follower = view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["node_id"].as_u64() != Some(leader))
        .and_then(|m| m["api"].as_str())
        .and_then(|api| {
            nodes
                .iter()
                .position(|n| api.ends_with(&format!(":{}", n.ports().api)))
        })
        .expect("a follower");
    let put = http
        .put(nodes[follower].url("/v1/kv/advertised"))
        .body("through the leader")
        .send()
        .await
        .expect("PUT on a follower");
    assert_eq!(
        put.status(),
        StatusCode::OK,
        "{}",
        put.text().await.unwrap_or_default()
    );
    let (status, status_body) = get(&http, &nodes[follower].url("/v1/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        status_body["rpc"],
        json!(format!("localhost:{}", plan.ports[follower].rpc)),
        "/v1/status shows the advertised RPC address"
    );
    for node in &nodes {
        let (status, got) = get(&http, &node.url("/v1/kv/advertised")).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(
            got["kv"]["value"],
            json!("dGhyb3VnaCB0aGUgbGVhZGVy"),
            "{got}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_only_voter_cannot_leave() {
    let node = NodeProcess::dev().await.expect("dev node");
    let http = reqwest::Client::new();
    let response = http
        .post(node.url("/v1/cluster/leave"))
        .json(&json!({}))
        .send()
        .await
        .expect("POST /v1/cluster/leave");
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "last_voter", "{body}");
    let (status, _) = get(&http, &node.url("/v1/kv/still-here")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the node kept serving");
}
