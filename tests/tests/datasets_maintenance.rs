//! A dataset's compaction and retention on a running node: its
//! maintenance runs when the node starts and each minute after, merges a
//! day's small files into one without losing or repeating a row, and
//! deletes partitions past their age and the oldest files past the size.

use chrono::{Days, NaiveDate, Utc};
use shoal_tests::delivery_support::*;
use shoal_tests::*;

/// The stats of `GET /v1/datasets/orders/files`: files and partitions.
async fn files_and_days(node: &Node) -> (u64, Vec<String>) {
    let stats = node.get_path("/v1/datasets/orders/files").await.ok()["stats"].clone();
    let days = stats["partitions"]
        .as_array()
        .map(|days| {
            days.iter()
                .filter_map(|d| d.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (stats["files"].as_u64().unwrap_or(0), days)
}

async fn count(node: &Node) -> u64 {
    let reply = node
        .post_json(
            "/v1/sql",
            &json!({"query": "SELECT count(*) AS n, count(DISTINCT order_id) AS ids FROM orders"}),
        )
        .await
        .ok();
    let (n, ids) = (reply["rows"][0][0].as_u64(), reply["rows"][0][1].as_u64());
    assert_eq!(n, ids, "a row twice: {reply}");
    n.unwrap_or(0)
}

async fn wait_count(node: &Node, want: u64) {
    wait_for(T, &format!("{want} rows"), || async {
        match count(node).await {
            n if n == want => Ok(()),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
}

async fn wait_files(node: &Node, files: u64, days: &[NaiveDate]) {
    let days: Vec<String> = days.iter().map(|d| d.to_string()).collect();
    wait_for(T, &format!("{files} files on {days:?}"), || async {
        let seen = files_and_days(node).await;
        if seen == (files, days.clone()) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
}

fn order(id: u64, day: NaiveDate) -> Value {
    json!({"id": format!("o-{id}"), "total": id as f64, "placed": format!("{day}T12:00:00Z")})
}

async fn define(node: &Node, retention: Value) {
    let definition = json!({"columns": [
        {"name": "order_id", "type": "string", "from": "/data/id"},
        {"name": "total", "type": "float64", "from": "/data/total"}],
        "time": "/data/placed", "retention": retention});
    let reply = put_definition(node, "datasets", "orders", &definition).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_days_small_files_are_compacted_and_old_or_excess_files_deleted() {
    let mut node = Node::start().await;
    define(&node, json!({"max_age_days": 30})).await;
    put_route(
        &node,
        "orders-to-dataset",
        json!({"source": "orders.placed", "destinations": ["dataset:orders"]}),
    )
    .await;
    let today = Utc::now().date_naive();
    let yesterday = today - Days::new(1);
    let long_ago = today - Days::new(400);

    // Sixteen deliveries on one day, each its own file: each waits for the
    // one before to be written.
    publish_until(
        &node,
        "orders.placed",
        &order(0, today),
        "the route",
        |answer| answer["durable"] == 1,
    )
    .await;
    wait_count(&node, 1).await;
    for id in 1..16 {
        publish(&node, "orders.placed", &order(id, today)).await;
        wait_count(&node, id + 1).await;
    }
    publish(&node, "orders.placed", &order(16, yesterday)).await;
    wait_count(&node, 17).await;
    publish(&node, "orders.placed", &order(17, long_ago)).await;
    wait_count(&node, 18).await;
    wait_files(&node, 18, &[long_ago, yesterday, today]).await;

    // Maintenance runs as the node starts: today's files become one, the
    // partition past 30 days goes, every other row stays once.
    node.restart().await;
    wait_files(&node, 2, &[yesterday, today]).await;
    wait_count(&node, 17).await;
    let metrics = node.get_path("/metrics").await.text;
    assert_eq!(
        metric_value(
            &metrics,
            "shoal_dataset_files_compacted_total{dataset=\"orders\"}"
        ),
        Some(16.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "shoal_dataset_files_deleted_total{dataset=\"orders\"}"
        ),
        Some(17.0),
        "the 16 compacted files and the old partition's file"
    );

    // Past `max_bytes`, the oldest files go first: room for today's file
    // alone leaves yesterday's out.
    let today_dir = node
        .data_dir()
        .join("datasets")
        .join("orders")
        .join(format!("date={today}"));
    let today_bytes: u64 = std::fs::read_dir(&today_dir)
        .expect("today's partition")
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|meta| meta.len())
        .sum();
    define(&node, json!({"max_age_days": 30, "max_bytes": today_bytes})).await;
    node.restart().await;
    wait_files(&node, 1, &[today]).await;
    wait_count(&node, 16).await;
}
