//! Names that clients choose must not grow a node without end: log streams
//! are capped (`--logs-max-streams`), and topics past the first thousand
//! share one metric label value.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_tests::*;

const T: Duration = Duration::from_secs(30);

async fn ingest(node: &Node, stream: &str) -> Reply {
    node.send(
        node.request(Method::POST, &format!("/v1/logs/{stream}"))
            .header("content-type", "application/x-ndjson")
            .body(format!("{{\"message\": \"into {stream}\"}}\n")),
    )
    .await
}

/// The user streams the node lists (its own `shoal` stream left out).
async fn listed_streams(node: &Node) -> BTreeSet<String> {
    let streams = node.get_path("/v1/logs/streams").await.ok();
    streams["streams"]
        .as_array()
        .map(|streams| {
            streams
                .iter()
                .filter_map(|s| s["name"].as_str())
                .filter(|name| *name != "shoal")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn log_streams_past_the_cap_are_refused_across_restarts() {
    let mut node = Node::start_with(&["--logs-max-streams", "3"]).await;
    for stream in ["s1", "s2", "s3"] {
        let reply = ingest(&node, stream).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    }
    let refused = ingest(&node, "s4").await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.describe()
    );
    assert_eq!(refused.body["error"]["code"], json!("too_many_streams"));
    assert_eq!(ingest(&node, "s1").await.status, StatusCode::OK);

    // _bulk: the new index fails as an item, the known one is stored.
    let bulk = node
        .send(
            node.request(Method::POST, "/_bulk")
                .header("content-type", "application/x-ndjson")
                .body(
                    "{\"index\":{\"_index\":\"s5\"}}\n{\"message\":\"a\"}\n\
                     {\"index\":{\"_index\":\"s2\"}}\n{\"message\":\"b\"}\n",
                ),
        )
        .await;
    assert_eq!(bulk.status, StatusCode::OK, "{}", bulk.describe());
    assert_eq!(bulk.body["errors"], json!(true));
    let items = bulk.body["items"].as_array().expect("items");
    assert_eq!(items[0]["index"]["status"], json!(400), "{}", bulk.text);
    assert_eq!(
        items[0]["index"]["error"]["type"],
        json!("validation_exception")
    );
    assert_eq!(items[1]["index"]["status"], json!(201), "{}", bulk.text);

    let want = names(&["s1", "s2", "s3"]);
    wait_for(T, "the three streams listed", || async {
        let listed = listed_streams(&node).await;
        if listed == want {
            Ok(())
        } else {
            Err(format!("{listed:?}"))
        }
    })
    .await;

    // The cap is counted from what is on disk after a restart.
    node.kill9();
    node.restart().await;
    assert_eq!(
        ingest(&node, "s6").await.status,
        StatusCode::BAD_REQUEST,
        "a fourth stream after the restart"
    );
    assert_eq!(ingest(&node, "s3").await.status, StatusCode::OK);
    assert_eq!(listed_streams(&node).await, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_past_a_thousand_share_one_metric_label() {
    let node = Node::start().await;
    for batch in 0..12 {
        let messages: Vec<Value> = (0..100)
            .map(|i| json!({"topic": format!("t{batch}-{i}"), "data": "x"}))
            .collect();
        let reply = node
            .post_json("/v1/publish", &json!({ "messages": messages }))
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.describe());
    }
    let metrics = node.get_path("/metrics").await.text;
    let topics: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("shoal_messages_published_total{topic=\""))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(topics.len(), 1001, "1000 topics and _other: {topics:?}");
    assert!(topics.contains("_other"));
    let other: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("shoal_messages_published_total{topic=\"_other\"} "))
        .and_then(|value| value.parse().ok())
        .expect("the _other sample");
    let labelled = topics.iter().filter(|t| t.starts_with('t')).count();
    assert_eq!(
        other,
        (1200 - labelled) as f64,
        "one message for each topic past the first thousand"
    );
}
