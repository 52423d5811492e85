//! SQL over logs through the API: a query runs over the records of every
//! node, and one that joins the table with itself is refused before it can
//! take the node's memory.

use std::time::Duration;

use shoal_tests::*;

const T: Duration = Duration::from_secs(30);

async fn sql(node: &Node, query: &str) -> Reply {
    node.post_json("/v1/logs/sql", &json!({ "query": query }))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_answers_and_a_self_cross_join_is_refused() {
    let node = Node::start_with(&["--logs-self", "false"]).await;
    let body: String = (0..1100)
        .map(|i| {
            let level = ["info", "warn", "error"][i % 3];
            format!("{{\"level\": \"{level}\", \"service\": \"api\", \"message\": \"m{i}\"}}\n")
        })
        .collect();
    let reply = node
        .send(
            node.request(Method::POST, "/v1/logs/app")
                .header("content-type", "application/x-ndjson")
                .body(body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());

    let counts = "SELECT level, count(*) AS n FROM logs WHERE service = 'api' \
                  GROUP BY level ORDER BY level";
    let answer = wait_for(T, "all 1100 records counted", || async {
        let reply = sql(&node, counts).await;
        let rows = reply.body["rows"].clone();
        if rows == json!([["error", 366], ["info", 367], ["warn", 367]]) {
            Ok(reply)
        } else {
            Err(reply.describe())
        }
    })
    .await;
    assert_eq!(
        answer.body["columns"],
        json!(["level", "n"]),
        "{}",
        answer.text
    );

    for query in [
        "SELECT count(*) FROM logs a CROSS JOIN logs b",
        "SELECT a.message FROM logs a JOIN logs b ON a.level = b.level",
        "WITH x AS (SELECT * FROM logs) SELECT count(*) FROM x, x AS y",
    ] {
        let refused = sql(&node, query).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            refused.describe()
        );
        assert_eq!(
            refused.body["error"]["code"],
            json!("too_many_rows"),
            "{query}"
        );
    }
    assert_eq!(node.get_path("/health").await.status, StatusCode::OK);
    assert_eq!(sql(&node, counts).await.body["rows"], answer.body["rows"]);
}
