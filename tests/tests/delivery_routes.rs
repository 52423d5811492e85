//! Durable messaging, routing rules: replicated through Raft, changes apply
//! on every node, and loops stop after eight hops.

use std::time::{Duration, Instant};

use shoal_tests::delivery_support::*;
use shoal_tests::ws::Subscriber;
use shoal_tests::*;

/// Reads messages until one whose `data` equals `last`; returns the ones
/// before it. Used with a sentinel published after the messages of interest
/// on the same node: messages between two nodes keep their order, so once
/// the sentinel arrived, everything published before it has too.
async fn messages_until(stream: &mut Subscriber, last: &Value) -> Vec<Value> {
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = next_message(stream, left).await else {
            panic!("no message with data {last} within {T:?}; got {seen:#?}");
        };
        if message["data"] == *last {
            return seen;
        }
        seen.push(message);
    }
}

/// Waits until node `publisher` of the cluster knows that node `subscriber`
/// subscribed to `pattern` (interest travels by gossip).
async fn wait_interest(cluster: &Cluster, publisher: usize, subscriber: usize, pattern: &str) {
    let owner = cluster.node_id(subscriber).await;
    cluster
        .node(publisher)
        .wait_interest(owner, pattern, None, 1)
        .await;
}

// ----- routing rules ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn routing_rule_changes_apply_on_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));

    put_route(
        a,
        "regional",
        json!({
            "source": "orders.*",
            "filter": {"json": {"pointer": "/region", "equals": "eu"}},
            "destinations": ["topic:audit.eu"],
        }),
    )
    .await;
    let mut audit = subscribe(b, "audit.*").await;
    wait_interest(&cluster, 2, 1, "audit.*").await;

    // Node C applies the rule: an eu order published there gets routed.
    let probe = json!({"region": "eu", "probe": 1});
    publish_until(
        c,
        "orders.created",
        &probe,
        "node C to apply the eu rule",
        |answer| answer["routed"] == 1,
    )
    .await;
    let eu = publish(c, "orders.created", &json!({"region": "eu", "n": 1})).await;
    let us = publish(c, "orders.created", &json!({"region": "us", "n": 2})).await;
    assert_eq!(num(&eu, "/routed"), 1, "{eu}");
    assert_eq!(num(&us, "/routed"), 0, "{us}");
    publish(c, "audit.eu", &json!({"sentinel": 1})).await;
    let got: Vec<Value> = messages_until(&mut audit, &json!({"sentinel": 1}))
        .await
        .into_iter()
        .filter(|m| m["data"].get("probe").is_none())
        .collect();
    assert_eq!(got.len(), 1, "only the eu order is routed: {got:#?}");
    let copy = &got[0];
    assert_eq!(copy["topic"], "audit.eu");
    assert_eq!(copy["data"], json!({"region": "eu", "n": 1}));
    assert_eq!(header(copy, "shoal-origin-id"), eu["id"].as_str(), "{copy}");
    assert_eq!(header(copy, "shoal-hops"), Some("1"), "{copy}");
    assert_ne!(copy["id"], eu["id"], "the copy has an id of its own");

    // The rule changes through node A; node C follows without a restart.
    put_route(
        a,
        "regional",
        json!({
            "source": "orders.*",
            "filter": {"json": {"pointer": "/region", "equals": "us"}},
            "destinations": ["topic:audit.us"],
        }),
    )
    .await;
    let probe = json!({"region": "us", "probe": 2});
    publish_until(
        c,
        "orders.created",
        &probe,
        "node C to apply the changed rule",
        |answer| answer["routed"] == 1,
    )
    .await;
    let eu = publish(c, "orders.created", &json!({"region": "eu", "n": 3})).await;
    let us = publish(c, "orders.created", &json!({"region": "us", "n": 4})).await;
    assert_eq!(num(&eu, "/routed"), 0, "{eu}");
    assert_eq!(num(&us, "/routed"), 1, "{us}");
    publish(c, "audit.eu", &json!({"sentinel": 2})).await;
    let got: Vec<Value> = messages_until(&mut audit, &json!({"sentinel": 2}))
        .await
        .into_iter()
        .filter(|m| m["data"].get("probe").is_none())
        .collect();
    assert_eq!(got.len(), 1, "only the us order is routed now: {got:#?}");
    assert_eq!(got[0]["topic"], "audit.us");
    assert_eq!(got[0]["data"], json!({"region": "us", "n": 4}));
    assert_eq!(header(&got[0], "shoal-origin-id"), us["id"].as_str());

    // The other nodes have the same rule (stored in Raft).
    let on_b = b.get_path("/v1/routes/regional").await.ok();
    assert_eq!(on_b["destinations"], json!(["topic:audit.us"]), "{on_b}");
    assert_eq!(on_b["filter"]["json"]["equals"], "us", "{on_b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_rule_loops_stop_after_eight_hops() {
    let node = Node::start().await;
    put_route(
        &node,
        "a-to-b",
        json!({"source": "loop.a", "destinations": ["topic:loop.b"]}),
    )
    .await;
    put_route(
        &node,
        "b-to-a",
        json!({"source": "loop.b", "destinations": ["topic:loop.a"]}),
    )
    .await;
    let mut stream = subscribe(&node, "loop.*").await;

    let probe = json!({"probe": true});
    publish_until(
        &node,
        "loop.a",
        &probe,
        "both loop rules applied",
        |answer| answer["routed"] == 8,
    )
    .await;
    let payload = json!({"final": true});
    let answer = publish(&node, "loop.a", &payload).await;
    assert_eq!(num(&answer, "/routed"), 8, "{answer}");
    let id = text(&answer, "/id").to_string();

    // The original and 8 copies, alternating topics, then nothing more.
    let mut chain = Vec::new();
    while let Some(message) = next_message(&mut stream, Duration::from_secs(1)).await {
        if message["data"] == payload {
            chain.push(message);
        }
    }
    assert_eq!(chain.len(), 9, "{chain:#?}");
    assert_eq!(chain[0]["id"], id.as_str());
    assert_eq!(header(&chain[0], "shoal-hops"), None);
    for (hops, message) in chain.iter().enumerate() {
        let topic = if hops % 2 == 0 { "loop.a" } else { "loop.b" };
        assert_eq!(message["topic"], topic, "hop {hops}: {message}");
        if hops > 0 {
            assert_eq!(
                header(message, "shoal-hops"),
                Some(hops.to_string().as_str()),
                "{message}"
            );
            // The first copy names the original; later ones name a message
            // of the chain (the original or the copy they were made from).
            let origin = header(message, "shoal-origin-id");
            assert!(
                origin == Some(id.as_str()) || origin == chain[hops - 1]["id"].as_str(),
                "hop {hops}: shoal-origin-id {origin:?}"
            );
        }
    }
    // The node is fine afterwards.
    assert_eq!(node.get_path("/ready").await.status, StatusCode::OK);
}
