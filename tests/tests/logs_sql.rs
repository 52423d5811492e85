//! SQL over logs through the API: a query runs over the records of every
//! node, and one that joins the table with itself is refused before it can
//! take the node's memory.

use std::time::Duration;

use shoal_tests::procfs::{child_pids, command_line, rss_bytes};
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

/// The `shoal sql-worker` processes running under `pid`.
fn sql_workers(pid: u32) -> usize {
    child_pids(pid)
        .into_iter()
        .filter(|child| command_line(*child).iter().any(|arg| arg == "sql-worker"))
        .count()
}

/// Ingests `count` records of `bytes`-byte messages into `stream`, in
/// bodies under the body limit.
async fn ingest_big(node: &Node, stream: &str, count: usize, bytes: usize) {
    let filler = "y".repeat(bytes);
    for chunk in (0..count).collect::<Vec<_>>().chunks(200) {
        let body: String = chunk
            .iter()
            .map(|i| format!("{{\"message\": \"{i} {filler}\"}}\n"))
            .collect();
        let reply = node
            .send(
                node.request(Method::POST, &format!("/v1/logs/{stream}"))
                    .header("content-type", "application/x-ndjson")
                    .body(body),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    }
}

/// A node with `--request-timeout-ms`, holding 1000 records of 60 KB
/// messages, searchable.
async fn node_with_big_records(request_timeout_ms: &str) -> Node {
    let node = Node::start_with(&[
        "--logs-self",
        "false",
        "--request-timeout-ms",
        request_timeout_ms,
    ])
    .await;
    ingest_big(&node, "big", 1000, 60_000).await;
    wait_for(T, "the 1000 records searchable", || async {
        let reply = sql(&node, COUNT).await;
        match reply.body["rows"] == json!([[1000]]) {
            true => Ok(()),
            false => Err(reply.describe()),
        }
    })
    .await;
    node
}

const COUNT: &str = "SELECT count(*) AS n FROM logs";

/// Asks both SQL routes for `query` (they run queries in the same
/// workers) and expects a 400 with `code` from each; their messages.
async fn refused_by_both_routes(node: &Node, query: &str, code: &str) -> Vec<String> {
    let mut messages = Vec::new();
    for route in ["/v1/logs/sql", "/v1/sql"] {
        let reply = node.post_json(route, &json!({ "query": query })).await;
        if let Err(problem) = error_matches(&reply, &[(400, &[code])]) {
            panic!("{route}: {problem}");
        }
        messages.push(text(&reply.body, "/error/message").to_string());
    }
    messages
}

/// Queries run in worker processes with a memory limit and a time limit:
/// one that needs hundreds of gigabytes, or runs past the request's time,
/// is stopped, the node stays as it was, and the next query runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_past_the_memory_or_time_limit_is_stopped_and_the_node_is_unharmed() {
    // A minute for the memory case, so that on a loaded machine the worker
    // reaches its 2 GiB before its time runs out.
    let roomy = node_with_big_records("60000").await;
    let pid = roomy.pid().expect("the node runs");
    let rss_before = rss_bytes(pid);
    // A million rows of 240 KB each: far past the worker's 2 GiB.
    let huge = "SELECT a.message || b.message || a.message || b.message AS m \
                FROM logs a, logs b";
    // Both SQL routes run their queries in the same workers.
    refused_by_both_routes(&roomy, huge, "query_too_expensive").await;
    let grown = rss_bytes(pid).saturating_sub(rss_before);
    assert!(grown < 256 << 20, "the node grew by {} MiB", grown >> 20);
    assert_eq!(sql(&roomy, COUNT).await.body["rows"], json!([[1000]]));

    // A million regular-expression matches over 60 KB strings: far past
    // the 4 s the request has.
    let node = node_with_big_records("4000").await;
    let pid = node.pid().expect("the node runs");
    let slow = "SELECT count(*) AS n FROM logs a, logs b \
                WHERE regexp_like(a.message, b.message)";
    for message in refused_by_both_routes(&node, slow, "query_too_slow").await {
        assert!(message.contains("--request-timeout-ms"), "{message}");
    }

    wait_for(T, "no SQL worker left running", || async {
        match sql_workers(pid) {
            0 => Ok(()),
            n => Err(format!("{n} workers")),
        }
    })
    .await;
    assert_eq!(node.get_path("/health").await.status, StatusCode::OK);
    assert_eq!(sql(&node, COUNT).await.body["rows"], json!([[1000]]));
}
