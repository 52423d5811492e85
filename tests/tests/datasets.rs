//! Datasets: messages appended to Parquet files per day partition, read
//! back by independent readers (pyarrow, DuckDB) and by `POST /v1/sql`
//! across three nodes, one of them down, joined with the built-in tables
//! `logs` and `workflow_instances`, many queries at once; rows that
//! survive `kill -9` exactly once; bad definitions and bad queries
//! refused.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_tests::delivery_support::*;
use shoal_tests::python::run_python;
use shoal_tests::*;

fn orders_dataset() -> Value {
    json!({"columns": [
        {"name": "order_id", "type": "string", "from": "/data/id"},
        {"name": "customer_id", "type": "string", "from": "/data/customer"},
        {"name": "total", "type": "float64", "from": "/data/total"},
        {"name": "items", "type": "int64", "from": "/data/items"}],
        "time": "/data/placed"})
}

/// Defines dataset `name` and a route `{name}-to-dataset` from `topic` to it.
async fn define_dataset(node: &Node, name: &str, definition: &Value, topic: &str) {
    let reply = put_definition(node, "datasets", name, definition).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    put_route(
        node,
        &format!("{name}-to-dataset"),
        json!({"source": topic, "destinations": [format!("dataset:{name}")]}),
    )
    .await;
}

/// Defines the dataset `orders` and a route from `orders.placed` to it.
async fn define(node: &Node) {
    define_dataset(node, "orders", &orders_dataset(), "orders.placed").await;
}

/// Publishes `message(i)` for `i` in `0..count` on `topic` (the first until
/// the route takes it); what was sent.
async fn publish_routed(
    node: &Node,
    topic: &str,
    count: u64,
    message: impl Fn(u64) -> Value,
) -> Vec<Value> {
    let first = message(0);
    publish_until(node, topic, &first, "the route", |answer| {
        answer["durable"] == 1
    })
    .await;
    let mut sent = vec![first];
    for i in 1..count {
        let next = message(i);
        publish(node, topic, &next).await;
        sent.push(next);
    }
    sent
}

fn order(i: u64, node: u64) -> Value {
    json!({"id": format!("o-{node}-{i}"), "customer": format!("c{}", i % 7),
           "total": (i % 50) as f64 + 0.5, "items": i % 4 + 1,
           "placed": format!("2026-12-0{}T{:02}:00:00Z", 1 + i % 3, i % 24)})
}

/// Publishes orders `0..count` of node `n` on `node` (the first until the
/// route takes it); what was sent.
async fn publish_orders(node: &Node, n: u64, count: u64) -> Vec<Value> {
    publish_routed(node, "orders.placed", count, |i| order(i, n)).await
}

/// `POST /v1/sql` with a JSON body.
async fn sql(node: &Node, query: &str) -> Reply {
    node.post_json("/v1/sql", &json!({ "query": query })).await
}

/// `SELECT count(*)` until it says `want`; the answer.
async fn wait_count(node: &Node, want: u64) -> Value {
    wait_for(T, &format!("{want} rows in the dataset"), || async {
        let reply = sql(node, "SELECT count(*) AS n FROM orders").await;
        if reply.status != StatusCode::OK {
            return Err(reply.describe());
        }
        match reply.body["rows"][0][0].as_u64() {
            Some(n) if n == want => Ok(reply.body),
            _ => Err(reply.body.to_string()),
        }
    })
    .await
}

/// What pyarrow and DuckDB read from a dataset directory.
async fn read_independently(dir: &std::path::Path, query: &str) -> Value {
    let out = run_python("read_dataset.py", &[&dir.display().to_string(), query]).await;
    out.assert_success();
    serde_json::from_slice(&out.stdout).expect("the reader's JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dataset_is_parquet_that_other_engines_read_and_its_rows_survive_kill_9() {
    let mut node = Node::start().await;
    define(&node).await;
    publish_orders(&node, 1, 120).await;
    // A value that does not fit its column, and a message without a time.
    publish(
        &node,
        "orders.placed",
        &json!({"id": "bad-1", "total": "lots", "placed": "2026-12-01"}),
    )
    .await;
    publish(&node, "orders.placed", &json!({"id": "bad-2", "total": 1})).await;
    wait_count(&node, 120).await;

    let dead = wait_for(T, "two dead letters", || async {
        let reply = node.get_path("/v1/datasets/orders/dead-letters").await;
        let letters = reply.body["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if letters.len() == 2 {
            Ok(letters)
        } else {
            Err(reply.describe())
        }
    })
    .await;
    let reasons: Vec<&str> = dead.iter().map(|d| text(d, "/last_error")).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("column total: \"lots\" is not a valid float64")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("time /data/placed")),
        "{reasons:?}"
    );

    // The files, read by pyarrow and DuckDB, hold exactly the rows sent.
    let files = node.get_path("/v1/datasets/orders/files").await.ok();
    assert_eq!(
        files["stats"]["partitions"],
        json!(["2026-12-01", "2026-12-02", "2026-12-03"])
    );
    let dir = std::path::PathBuf::from(text(&files, "/directory"));
    let read = read_independently(
        &dir,
        "SELECT date, count(*) AS n, sum(total) AS revenue FROM dataset GROUP BY date ORDER BY date",
    )
    .await;
    let mut rows = read["pyarrow"].as_array().expect("rows").clone();
    rows.sort_by(|a, b| text(a, "/order_id").cmp(text(b, "/order_id")));
    assert_eq!(rows.len(), 120);
    let mut expected: Vec<Value> = (0..120).map(|i| order(i, 1)).collect();
    expected.sort_by(|a, b| text(a, "/id").cmp(text(b, "/id")));
    for (row, sent) in rows.iter().zip(&expected) {
        assert_eq!(row["order_id"], sent["id"]);
        assert_eq!(row["customer_id"], sent["customer"]);
        assert_eq!(row["total"], sent["total"]);
        assert_eq!(row["items"], sent["items"]);
        assert_eq!(
            row["date"].as_str(),
            sent["placed"].as_str().map(|p| &p[..10])
        );
    }
    // Shoal's SQL and DuckDB agree on the daily figures.
    let ours = sql(
        &node,
        "SELECT CAST(date AS VARCHAR) AS date, count(*) AS n, sum(total) AS revenue FROM orders GROUP BY date ORDER BY date",
    )
    .await
    .ok();
    let duck = read["duckdb"].as_array().expect("duckdb rows");
    assert_eq!(ours["rows"].as_array().map(Vec::len), Some(duck.len()));
    for (mine, theirs) in ours["rows"].as_array().unwrap().iter().zip(duck) {
        assert_eq!(mine[0].as_str(), theirs["date"].as_str());
        assert_eq!(mine[1].as_u64(), theirs["n"].as_u64());
        let (a, b) = (
            mine[2].as_f64().unwrap(),
            theirs["revenue"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-6, "{a} != {b}");
    }

    // Other formats.
    for (format, media) in [
        ("csv", "text/csv"),
        ("parquet", "application/vnd.apache.parquet"),
        ("arrow", "application/vnd.apache.arrow.file"),
    ] {
        let reply = node
            .post_json(
                "/v1/sql",
                &json!({"query": "SELECT order_id FROM orders", "format": format}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{format}: {}",
            reply.describe()
        );
        assert_eq!(
            reply
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(media)
        );
        if format == "csv" {
            assert_eq!(reply.text.lines().count(), 121, "a header and 120 rows");
        }
    }

    // Published, then killed before the batch's linger ends: after the
    // restart every row is there exactly once.
    for i in 120..400 {
        publish(&node, "orders.placed", &order(i, 1)).await;
    }
    node.kill9();
    node.restart().await;
    wait_count(&node, 400).await;
    let distinct = sql(
        &node,
        "SELECT count(DISTINCT _id) AS n, count(DISTINCT order_id) AS o FROM orders",
    )
    .await
    .ok();
    assert_eq!(distinct["rows"][0], json!([400, 400]));

    // `shoal sql`: a table on the terminal, CSV into a file.
    let endpoint = node.endpoint();
    let out = run_shoal(
        &[
            "sql",
            "SELECT count(*) AS n FROM orders",
            "--endpoint",
            &endpoint,
        ],
        None,
        &[],
    )
    .await;
    out.assert_success();
    assert_eq!(out.lines(), vec!["n", "400"]);
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    let path = file.path().display().to_string();
    let query = "SELECT order_id FROM orders ORDER BY order_id LIMIT 2";
    let args = [
        "sql",
        query,
        "--format",
        "csv",
        "--output",
        &path,
        "--endpoint",
        &endpoint,
    ];
    run_shoal(&args, None, &[]).await.assert_success();
    assert_eq!(
        std::fs::read_to_string(file.path()).expect("the CSV"),
        "order_id\no-1-0\no-1-1\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_reads_every_nodes_files_and_says_when_a_node_is_missing() {
    let mut cluster = Cluster::start(3, &[]).await;
    define(cluster.node(0)).await;
    let mut sent: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for n in 0..3u64 {
        let node = cluster.node(n as usize);
        sent.insert(n, publish_orders(node, n, 50).await);
        // Five log records per node that name one of its orders each.
        let records: Vec<Value> = (0..5)
            .map(|i| json!({"message": format!("o-{n}-{i}"), "service": "checkout"}))
            .collect();
        node.ingest_records("app", &records).await;
    }
    let total = |nodes: &[u64]| -> f64 {
        nodes
            .iter()
            .flat_map(|n| sent[n].iter())
            .map(|o| o["total"].as_f64().unwrap())
            .sum()
    };
    wait_count(cluster.node(1), 150).await;
    let query = "SELECT count(*) AS n, sum(total) AS revenue FROM orders WHERE items >= 1";
    let all = sql(cluster.node(1), query).await.ok();
    assert_eq!(all["rows"][0][0], 150);
    assert!((all["rows"][0][1].as_f64().unwrap() - total(&[0, 1, 2])).abs() < 1e-6);
    assert_eq!(all["partial"], false);
    assert_eq!(all["nodes"]["answered"].as_array().map(Vec::len), Some(3));
    // Queries asked on every node at once, more than a node runs at a
    // time: each holds its node's query slot while it waits for the other
    // nodes' scans, so a scan waiting for a slot that queries hold would
    // stall them all until the request timeout. With count(DISTINCT x),
    // every node sends x of each of its rows.
    let distinct = "SELECT count(*) AS n, count(DISTINCT customer_id) AS customers FROM orders";
    let asks = (0..12).map(|i| sql(cluster.node(i % 3), distinct));
    for reply in futures::future::join_all(asks).await {
        assert_eq!(
            reply.body["rows"][0],
            json!([150, 7]),
            "{}",
            reply.describe()
        );
    }
    // A subquery reads the whole table, not each node's rows: order o-0-3
    // is on node 0 only, and its customer (c3) ordered 7 times on each node.
    let same_customer = "SELECT count(*) AS n FROM orders WHERE customer_id IN \
                         (SELECT customer_id FROM orders WHERE order_id = 'o-0-3')";
    let reply = sql(cluster.node(1), same_customer).await.ok();
    assert_eq!(reply["rows"][0], json!([21]));
    // A part bigger than an RPC frame's chunk (16 MiB) crosses in chunks:
    // 500 notes of 64 KiB of random text (about 24 MiB compressed) on node
    // 0, asked on node 1; count(DISTINCT note), so node 0 sends them all.
    let notes = json!({"columns": [{"name": "note", "type": "string", "from": "/data/note"}]});
    define_dataset(cluster.node(0), "notes", &notes, "notes.added").await;
    let note = |i: u64| {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let text: String = (0..65_536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ALPHABET[(state % 64) as usize] as char
            })
            .collect();
        json!({ "note": text })
    };
    publish_routed(cluster.node(0), "notes.added", 500, note).await;
    let big = "SELECT count(*) AS n, count(DISTINCT note) AS notes, sum(length(note)) AS chars \
               FROM notes";
    wait_for(T, "500 notes of 64 KiB from node 0", || async {
        let reply = sql(cluster.node(1), big).await;
        match (reply.status, &reply.body["rows"][0]) {
            (StatusCode::OK, rows) if *rows == json!([500, 500, 500 * 65_536]) => Ok(()),
            _ => Err(reply.describe()),
        }
    })
    .await;
    // Orders joined with every node's log records.
    let joined = "SELECT count(*) AS n FROM orders o JOIN logs l ON l.message = o.order_id \
                  WHERE l.service = 'checkout'";
    wait_for(T, "every node's records in the join", || async {
        let reply = sql(cluster.node(1), joined).await;
        match reply.body["rows"][0][0].as_u64() {
            Some(15) => Ok(()),
            _ => Err(reply.describe()),
        }
    })
    .await;

    // Node 2 down: its rows are missing, and the answer says so.
    cluster.node_mut(2).kill9();
    let partial = wait_for(T, "a partial answer", || async {
        let reply = sql(cluster.node(0), query).await;
        if reply.status == StatusCode::OK && reply.body["partial"] == true {
            Ok(reply.body)
        } else {
            Err(reply.describe())
        }
    })
    .await;
    assert_eq!(partial["rows"][0][0], 100);
    assert!((partial["rows"][0][1].as_f64().unwrap() - total(&[0, 1])).abs() < 1e-6);
    assert_eq!(partial["nodes"]["failed"].as_array().map(Vec::len), Some(1));
    // Asked by `Accept`, CSV says the same in a header.
    let csv = cluster
        .node(0)
        .send(
            cluster
                .node(0)
                .request(Method::POST, "/v1/sql")
                .header("accept", "text/csv")
                .json(&json!({ "query": query })),
        )
        .await;
    assert_eq!(csv.status, StatusCode::OK, "{}", csv.describe());
    let header = |name: &str| {
        csv.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("content-type").as_deref(), Some("text/csv"));
    assert_eq!(header("x-shoal-partial").as_deref(), Some("true"));
    let mut lines = csv.text.lines();
    assert_eq!(lines.next(), Some("n,revenue"), "{}", csv.text);
    let row = lines.next().unwrap_or_default();
    assert!(row.starts_with("100,"), "{}", csv.text);
    let partial = sql(cluster.node(0), joined).await.ok();
    assert_eq!(partial["rows"][0][0], 10, "{partial}");
    assert_eq!(partial["partial"], true, "{partial}");
    assert_eq!(
        partial["nodes"]["failed"].as_array().map(Vec::len),
        Some(1),
        "{partial}"
    );
}

/// Each node's part of a dataset is bounded by the asking node's
/// `--sql-max-rows-per-node` and `--sql-max-part-mb`, which travel with the
/// scan: a peer past either refuses its part, and the query is refused with
/// `too_many_rows` naming that peer (not answered partial without its rows).
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_past_the_asking_nodes_row_or_byte_limit_refuses_the_query() {
    for (flag, value) in [
        ("--sql-max-rows-per-node", "0"),
        ("--sql-max-part-mb", "0"),
        ("--sql-max-part-mb", "1025"),
    ] {
        let out = run_shoal(&["serve", flag, value], None, &[]).await;
        out.assert_clean_failure();
        assert!(out.stderr.contains(flag), "{flag} {value}: {}", out.stderr);
    }

    let mut cluster = Cluster::builder(3)
        .node_args(1, &["--sql-max-rows-per-node", "100"])
        .node_args(2, &["--sql-max-part-mb", "1"])
        .start()
        .await;
    cluster.wait_formed().await;
    define(cluster.node(0)).await;
    publish_orders(cluster.node(0), 0, 150).await;
    publish_orders(cluster.node(1), 1, 10).await;
    wait_count(cluster.node(0), 160).await;
    let node0 = cluster.node_id(0).await;

    // Not split: node 0 would send its 150 rows to node 1.
    let rows = "SELECT order_id, total FROM orders";
    let refused = sql(cluster.node(1), rows).await;
    let refused = assert_error(&refused, 400, "too_many_rows");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("node {node0}: ")) && message.contains("more than 100 rows"),
        "{message}"
    );
    // Node 0's own limit (the default) is the one when it is asked.
    let answered = sql(cluster.node(0), rows).await.ok();
    assert_eq!(
        answered["rows"].as_array().map(Vec::len),
        Some(160),
        "{answered}"
    );
    assert_eq!(answered["partial"], false, "{answered}");
    // Narrowed by WHERE (orders 0, 4, 8, ... of each node), node 0 sends
    // 38 rows.
    let narrowed = sql(
        cluster.node(1),
        "SELECT order_id FROM orders WHERE items = 1",
    )
    .await
    .ok();
    assert_eq!(
        narrowed["rows"].as_array().map(Vec::len),
        Some(41),
        "{narrowed}"
    );
    // Aggregated on each node, node 0 sends its 7 groups.
    let grouped = "SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id";
    let grouped = sql(cluster.node(1), grouped).await.ok();
    let counted: u64 = grouped["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|row| row[1].as_u64()).sum())
        .unwrap_or_default();
    assert_eq!(counted, 160, "{grouped}");

    // 200 messages of 16 KiB of random hex on node 0: about 1.6 MiB of
    // Arrow IPC after ZSTD, past node 2's 1 MiB.
    let blobs = json!({"columns": [{"name": "blob", "type": "string", "from": "/data/blob"}]});
    define_dataset(cluster.node(0), "blobs", &blobs, "blobs.put").await;
    let blob = |_| {
        let hex: String = (0..8192)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        json!({ "blob": hex })
    };
    publish_routed(cluster.node(0), "blobs.put", 200, blob).await;
    let count = "SELECT count(*) AS n FROM blobs";
    wait_for(T, "200 blobs in the dataset", || async {
        let reply = sql(cluster.node(0), count).await.ok();
        match reply["rows"][0][0].as_u64() {
            Some(200) => Ok(()),
            _ => Err(reply.to_string()),
        }
    })
    .await;
    let refused = sql(cluster.node(2), "SELECT blob FROM blobs").await;
    let refused = assert_error(&refused, 400, "too_many_rows");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("node {node0}: "))
            && message.contains("bytes of Arrow IPC, more than 1048576"),
        "{message}"
    );
    // The same rows counted on each node cross as one small group.
    let counted = sql(cluster.node(2), count).await.ok();
    assert_eq!(counted["rows"][0][0], 200, "{counted}");
    // Node 0's own rows never cross: asked there, the query is answered.
    let answered = sql(cluster.node(0), "SELECT blob FROM blobs").await.ok();
    assert_eq!(
        answered["rows"].as_array().map(Vec::len),
        Some(200),
        "{answered}"
    );
}

/// A workflow whose instances complete at once, and one whose instances wait.
const CONFIRM: &str = "document: {dsl: '1.0.0', namespace: shop, name: confirm, version: '1.0.0'}
do:
  - confirm:
      set: '${ . + {confirmed: true} }'
";
const HOLD: &str = "document: {dsl: '1.0.0', namespace: shop, name: hold, version: '1.0.0'}
do:
  - sleep: {wait: {minutes: 10}}
";

#[tokio::test(flavor = "multi_thread")]
async fn sql_joins_a_dataset_with_workflow_instances_and_logs() {
    let node = Node::start().await;
    define(&node).await;
    for (name, yaml) in [("confirm", CONFIRM), ("hold", HOLD)] {
        let reply = node
            .send(
                node.request(
                    Method::PUT,
                    &format!("/v1/workflows/definitions/shop/{name}/1.0.0"),
                )
                .body(yaml),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.describe());
    }
    publish_orders(&node, 1, 6).await;
    wait_count(&node, 6).await;
    // Orders 0-3 are confirmed, 4 waits, 5 has no instance.
    for i in 0..5u64 {
        let workflow = if i < 4 { "confirm" } else { "hold" };
        let reply = node
            .post_json(
                &format!("/v1/workflows/shop/{workflow}/instances"),
                &json!({"id": format!("o-1-{i}"), "input": {"order": i}}),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.describe());
    }
    let by_status = wait_for(T, "the instances to settle", || async {
        let reply = sql(
            &node,
            "SELECT status, count(*) AS n FROM workflow_instances GROUP BY status ORDER BY status",
        )
        .await;
        if reply.body["rows"] == json!([["completed", 4], ["waiting", 1]]) {
            Ok(reply.body)
        } else {
            Err(reply.describe())
        }
    })
    .await;
    assert_eq!(by_status["partial"], false);
    let joined = sql(
        &node,
        "SELECT o.order_id, i.name, i.status, i.output IS NOT NULL AS done \
         FROM orders o LEFT JOIN workflow_instances i ON o.order_id = i.id ORDER BY o.order_id",
    )
    .await
    .ok();
    assert_eq!(
        joined["rows"],
        json!([
            ["o-1-0", "confirm", "completed", true],
            ["o-1-1", "confirm", "completed", true],
            ["o-1-2", "confirm", "completed", true],
            ["o-1-3", "confirm", "completed", true],
            ["o-1-4", "hold", "waiting", false],
            ["o-1-5", null, null, false],
        ]),
        "{joined}"
    );
    // An inner join's condition on the dataset alone runs on the nodes
    // too (and picks the day partition to read); the answer is the same.
    let inner = sql(
        &node,
        "SELECT o.order_id, i.status FROM orders o JOIN workflow_instances i ON o.order_id = i.id \
         WHERE o.date = '2026-12-02' AND i.status = 'completed' ORDER BY o.order_id",
    )
    .await
    .ok();
    assert_eq!(inner["rows"], json!([["o-1-1", "completed"]]), "{inner}");
    // Timestamp strings compare with `_time` (orders are placed on
    // 2026-12-01 to 03, by i % 3).
    let recent = sql(
        &node,
        "SELECT count(*) AS n FROM orders WHERE _time >= '2026-12-02' AND _time < '2026-12-03T00:00:00Z'",
    )
    .await
    .ok();
    assert_eq!(recent["rows"][0][0], 2, "{recent}");
    let relative = sql(
        &node,
        "SELECT count(*) AS n FROM orders WHERE _time > now() - interval '36500 days' \
         UNION ALL SELECT count(*) AS n FROM orders WHERE _time BETWEEN now() AND now() + interval '1 day'",
    )
    .await
    .ok();
    assert_eq!(relative["rows"], json!([[6], [0]]), "{relative}");
    // Files of other days are not read; the counts stay right.
    for (query, want) in [
        (
            "SELECT count(*) AS n FROM orders WHERE date = '2026-12-01'",
            2,
        ),
        (
            "SELECT count(*) AS n FROM orders WHERE date > '2026-12-01' AND date <= '2026-12-02'",
            2,
        ),
        (
            "SELECT count(*) AS n FROM orders WHERE date BETWEEN '2026-12-03' AND '2026-12-31'",
            2,
        ),
        (
            "SELECT count(*) AS n FROM orders WHERE date < '2026-12-01'",
            0,
        ),
    ] {
        let answer = sql(&node, query).await.ok();
        assert_eq!(answer["rows"][0][0], want, "{query}: {answer}");
    }

    // Logs: `now()` and the conditions pushed down to the index.
    node.ingest_records(
        "app",
        &[
            json!({"message": "o-1-0", "service": "payments", "level": "info"}),
            json!({"message": "o-1-1", "service": "payments", "level": "info"}),
            json!({"message": "o-1-2", "service": "payments", "level": "error"}),
            json!({"message": "o-1-9", "service": "shipping", "level": "info"}),
        ],
    )
    .await;
    let levels = wait_for(T, "the records in SQL", || async {
        let reply = sql(
            &node,
            "SELECT level, count(*) AS n FROM logs WHERE ts > now() - interval '1 hour' \
             AND service = 'payments' GROUP BY level ORDER BY level",
        )
        .await;
        if reply.body["rows"] == json!([["error", 1], ["info", 2]]) {
            Ok(reply.body)
        } else {
            Err(reply.describe())
        }
    })
    .await;
    assert_eq!(levels["nodes"]["asked"], 1, "{levels}");
    assert_eq!(levels["partial"], false, "{levels}");
    let old = sql(
        &node,
        "SELECT count(*) AS n FROM logs WHERE ts < now() - interval '1 day'",
    )
    .await
    .ok();
    assert_eq!(old["rows"][0][0], 0, "{old}");
    // A CSV answer of a query over all three tables.
    let reply = node
        .post_json(
            "/v1/sql",
            &json!({"format": "csv", "query":
                "SELECT i.status, count(*) AS n FROM logs l \
                 JOIN workflow_instances i ON l.message = i.id \
                 JOIN orders o ON o.order_id = i.id GROUP BY i.status"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(
        reply.text,
        "status,n\ncompleted,3\n",
        "{}",
        reply.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_datasets_and_bad_queries_are_refused_with_the_reason() {
    let node = Node::start().await;
    define(&node).await;
    let with = |columns: Value| json!({ "columns": columns });
    for (body, reason) in [
        (
            with(json!([{"name": "_id", "type": "string", "from": "/id"}])),
            "reserved",
        ),
        (
            with(json!([{"name": "a", "type": "decimal", "from": "/id"}])),
            "unknown variant",
        ),
        (
            with(json!([{"name": "a", "type": "string", "from": "id"}])),
            "JSON Pointer",
        ),
        (
            with(json!([{"name": "a b", "type": "string", "from": "/id"}])),
            "column",
        ),
        (with(json!([])), "1 to 64 columns"),
        (
            json!({"columns": [{"name": "a", "type": "string", "from": "/id"}], "retention": {"max_bytes": 0}}),
            "at least 1",
        ),
        (json!("orders"), "must be an object"),
    ] {
        let reply = put_definition(&node, "datasets", "other", &body).await;
        let error = assert_error(&reply, 400, "bad_request");
        assert!(
            text(&error, "/error/message").contains(reason),
            "{body}: {}",
            reply.describe()
        );
    }
    // The built-in tables' names are taken.
    let reply = put_definition(&node, "datasets", "logs", &orders_dataset()).await;
    let error = assert_error(&reply, 400, "bad_request");
    assert!(
        text(&error, "/error/message").contains("built-in table"),
        "{}",
        reply.describe()
    );
    // A column keeps its type.
    let mut changed = orders_dataset();
    changed["columns"][2]["type"] = json!("string");
    let reply = put_definition(&node, "datasets", "orders", &changed).await;
    let error = assert_error(&reply, 400, "bad_request");
    assert!(
        text(&error, "/error/message").contains("cannot become string"),
        "{}",
        reply.describe()
    );

    let long = format!(
        "SELECT * FROM orders WHERE order_id = '{}'",
        "x".repeat(9000)
    );
    for (query, code, reason) in [
        (
            "SELECT * FROM nowhere",
            "invalid_query",
            "no table is named",
        ),
        ("DROP TABLE orders", "invalid_query", "only SELECT"),
        ("SELECT 1; SELECT 2", "invalid_query", "exactly one"),
        ("SELECT nope FROM orders", "invalid_query", "nope"),
        (
            "SELECT * FROM logs WHERE ts > now() - interval '1 fortnight'",
            "invalid_query",
            "invalid interval",
        ),
        (
            "SELECT * FROM workflow_instances w JOIN nowhere n ON w.id = n.id",
            "invalid_query",
            "no table is named \"nowhere\"",
        ),
        (long.as_str(), "invalid_query", "the limit is 8192"),
    ] {
        let reply = sql(&node, query).await;
        let error = assert_error(&reply, 400, code);
        assert!(
            text(&error, "/error/message").contains(reason),
            "{query}: {}",
            reply.describe()
        );
    }
    let reply = node
        .post_json(
            "/v1/sql",
            &json!({"query": "SELECT 1 FROM orders", "format": "xml"}),
        )
        .await;
    assert_error(&reply, 400, "bad_request");
    let reply = node.post_json("/v1/sql", &json!({"sql": "SELECT 1"})).await;
    assert_error(&reply, 400, "bad_request");
    // Reports: the query, schedule, topic and keep_runs are checked.
    for (body, reason) in [
        (
            json!({"query": "SELECT * FROM nowhere"}),
            "no table is named",
        ),
        (
            json!({"query": "SELECT * FROM orders", "schedule": "every day"}),
            "schedule",
        ),
        (
            json!({"query": "SELECT * FROM orders", "topic": "a..b"}),
            "topic",
        ),
        (
            json!({"query": "SELECT * FROM orders", "keep_runs": 0}),
            "keep_runs",
        ),
        (json!({"query": "", "file": "csv"}), "query must be"),
        (
            json!({"query": "SELECT * FROM orders", "file": "xlsx"}),
            "unknown variant",
        ),
    ] {
        let reply = put_definition(&node, "reports", "r", &body).await;
        let error = assert_error(&reply, 400, "bad_request");
        assert!(
            text(&error, "/error/message").contains(reason),
            "{body}: {}",
            reply.describe()
        );
    }
    let reply = node
        .post_json("/v1/reports/missing/run", &json!(null))
        .await;
    assert_error(&reply, 404, "not_found");
    // An empty dataset answers with no rows.
    let empty = sql(&node, "SELECT order_id FROM orders").await.ok();
    assert_eq!(empty["rows"], json!([]));
    // A result past 1,000,000 rows: 1,001 orders joined with themselves.
    publish_orders(&node, 0, 1).await;
    for chunk in 0..2u64 {
        let messages = (1..=500)
            .map(|i| json!({"topic": "orders.placed", "data": order(chunk * 500 + i, 0)}))
            .collect();
        shoal_tests::messaging_support::publish_batch(&node, messages).await;
    }
    wait_count(&node, 1001).await;
    let reply = sql(&node, "SELECT a.order_id FROM orders a, orders b").await;
    let error = assert_error(&reply, 400, "too_many_rows");
    assert!(
        text(&error, "/error/message").contains("more than 1000000 rows"),
        "{}",
        reply.describe()
    );
}

/// Daily figures computed here from what was sent: orders, revenue,
/// unique customers, per day.
fn daily_sales(orders: &[Value]) -> BTreeMap<String, (u64, f64, usize)> {
    sales_by(orders, |placed| placed[..10].to_string())
}

/// Rows of (bucket, orders, revenue, average order, unique customers)
/// equal to `expected`, in its order.
#[track_caller]
fn assert_sales(rows: &Value, expected: &BTreeMap<String, (u64, f64, usize)>, query: &str) {
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), expected.len(), "{query}: {rows:?}");
    for (row, (key, (n, revenue, customers))) in rows.iter().zip(expected) {
        assert_eq!(row[0].as_str(), Some(key.as_str()), "{query}: {row}");
        assert_eq!(row[1].as_u64(), Some(*n), "{query}: {row}");
        assert!(
            (row[2].as_f64().unwrap() - revenue).abs() < 1e-6,
            "{query}: {row}"
        );
        assert!(
            (row[3].as_f64().unwrap() - revenue / *n as f64).abs() < 1e-6,
            "{query}: {row}"
        );
        assert_eq!(row[4].as_u64(), Some(*customers as u64), "{query}: {row}");
    }
}

/// Figures computed here from what was sent: orders, revenue, unique
/// customers, per `bucket` of the order's time (RFC 3339, UTC).
fn sales_by(orders: &[Value], bucket: fn(&str) -> String) -> BTreeMap<String, (u64, f64, usize)> {
    let mut buckets: BTreeMap<String, (u64, f64, std::collections::BTreeSet<String>)> =
        BTreeMap::new();
    for order in orders {
        let entry = buckets.entry(bucket(text(order, "/placed"))).or_default();
        entry.0 += 1;
        entry.1 += order["total"].as_f64().unwrap();
        entry.2.insert(text(order, "/customer").to_string());
    }
    buckets
        .into_iter()
        .map(|(key, (n, revenue, customers))| (key, (n, revenue, customers.len())))
        .collect()
}

/// The succeeded runs of `each-minute` that its schedule started.
async fn scheduled_runs(node: &Node) -> Vec<Value> {
    let reply = node.get_path("/v1/reports/each-minute/runs").await;
    reply.body["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["trigger"] == "schedule" && r["status"] == "succeeded")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_runs_once_per_tick_across_a_leader_change_and_its_numbers_are_right() {
    let mut cluster = Cluster::start(3, &[]).await;
    define(cluster.node(0)).await;
    // A generated data set, spread over the nodes.
    let mut sent = Vec::new();
    for n in 0..3u64 {
        let node = cluster.node(n as usize);
        let orders = publish_routed(node, "orders.placed", 40, |i| {
            if i == 0 {
                return order(0, n);
            }
            let mut o = order(i * 7 + n, n);
            o["id"] = json!(format!("o-{n}-{i}"));
            o
        })
        .await;
        sent.extend(orders);
    }
    wait_count(cluster.node(0), sent.len() as u64).await;

    let query = "SELECT CAST(date AS VARCHAR) AS day, count(*) AS orders, sum(total) AS revenue, \
                 avg(total) AS average, count(DISTINCT customer_id) AS customers \
                 FROM orders GROUP BY date ORDER BY date";
    let definition = json!({"query": query, "file": "csv", "topic": "reports.daily"});
    let reply = put_definition(cluster.node(1), "reports", "daily-sales", &definition).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    let mut published = subscribe(cluster.node(2), "reports.daily").await;
    let run = cluster
        .node(2)
        .post_json("/v1/reports/daily-sales/run", &json!(null))
        .await
        .ok();
    assert_eq!(run["status"], "succeeded", "{run}");
    let expected = daily_sales(&sent);
    assert_sales(&run["result"]["rows"], &expected, query);
    let file = std::fs::read_to_string(text(&run, "/file")).expect("the CSV file");
    assert_eq!(file.lines().count(), expected.len() + 1);
    // The commerce example's other time buckets: hour, ISO week, month.
    let buckets: [(&str, fn(&str) -> String); 3] = [
        ("strftime(_time, '%Y-%m-%d %H:00')", |placed| {
            format!("{} {}:00", &placed[..10], &placed[11..13])
        }),
        ("strftime(_time, '%G-W%V')", |placed| {
            chrono::NaiveDate::parse_from_str(&placed[..10], "%Y-%m-%d")
                .expect("a date")
                .format("%G-W%V")
                .to_string()
        }),
        ("strftime(_time, '%Y-%m')", |placed| placed[..7].to_string()),
    ];
    for (bucket_sql, bucket) in buckets {
        let query = format!(
            "SELECT {bucket_sql} AS bucket, count(*) AS orders, sum(total) AS revenue, \
             avg(total) AS average, count(DISTINCT customer_id) AS customers \
             FROM orders GROUP BY bucket ORDER BY bucket"
        );
        let answer = sql(cluster.node(1), &query).await.ok();
        assert_sales(&answer["rows"], &sales_by(&sent, bucket), &query);
    }
    // The run's message on its topic carries the same rows.
    let message = next_message(&mut published, T)
        .await
        .expect("the report's message");
    assert_eq!(message["type"], "shoal.report.run.v1", "{message}");
    let data = &message["data"];
    assert_eq!(data["report"], "daily-sales", "{message}");
    assert_eq!(data["run"], run["id"], "{message}");
    assert_eq!(data["rows"], json!(expected.len()), "{message}");
    assert_eq!(data["result"], run["result"]["rows"], "{message}");

    // A Parquet file, as another engine reads it.
    let parquet = json!({"query": query, "file": "parquet"});
    let reply = put_definition(cluster.node(0), "reports", "daily-parquet", &parquet).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    let run = cluster
        .node(0)
        .post_json("/v1/reports/daily-parquet/run", &json!(null))
        .await
        .ok();
    assert_eq!(run["status"], "succeeded", "{run}");
    let path = text(&run, "/file");
    assert!(path.ends_with(".parquet"), "{run}");
    let out = run_python("read_parquet.py", &[path]).await;
    out.assert_success();
    let read: Value = serde_json::from_slice(&out.stdout).expect("the reader's JSON");
    assert_eq!(
        read["columns"],
        json!(["day", "orders", "revenue", "average", "customers"])
    );
    assert_eq!(read["rows"], run["result"]["rows"], "{read}");

    // Scheduled every minute: one run per tick, also after the leader that
    // ran one is killed.
    let scheduled = json!({"query": query, "schedule": "* * * * *"});
    let reply = put_definition(cluster.node(0), "reports", "each-minute", &scheduled).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    let first = wait_for(Duration::from_secs(150), "a scheduled run", || async {
        let runs = scheduled_runs(cluster.node(0)).await;
        runs.first().cloned().ok_or_else(|| "none yet".to_string())
    })
    .await;
    let ran_on = cluster
        .index_of(num(&first, "/node_id"))
        .expect("the node that ran it");
    cluster.node_mut(ran_on).kill9();
    let asked = (ran_on + 1) % 3;
    let runs = wait_for(
        Duration::from_secs(150),
        "a run after the leader change",
        || async {
            let runs = scheduled_runs(cluster.node(asked)).await;
            if runs
                .iter()
                .any(|r| num(r, "/node_id") != num(&first, "/node_id"))
            {
                Ok(runs)
            } else {
                Err(format!("{runs:?}"))
            }
        },
    )
    .await;
    let minutes: Vec<u64> = runs
        .iter()
        .map(|r| num(r, "/started_ms") / 60_000)
        .collect();
    let distinct: std::collections::BTreeSet<u64> = minutes.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        minutes.len(),
        "two runs in one minute: {runs:?}"
    );
}
