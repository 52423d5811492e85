//! `shoal db` and `shoal sink` against a real node: a migrations directory
//! laid out as the sqlx CLI lays it out (the commerce example's), a sink
//! defined from a file, its rows and dead letters, a replay.

use shoal_tests::delivery_support::*;
use shoal_tests::*;

async fn shoal(node: &Node, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    let endpoint = node.endpoint();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--endpoint", &endpoint]);
    run_shoal(&all, stdin, &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_db_and_shoal_sink_define_what_the_sinks_write() {
    let node = Node::start().await;
    let migrations = package_dir()
        .join("../examples/commerce/migrations/sqlite")
        .display()
        .to_string();
    let out = shoal(
        &node,
        &["db", "apply", "local", "--migrations", &migrations],
        None,
    )
    .await;
    out.assert_success();
    assert!(
        out.stdout_text()
            .contains("database local defined (1 migrations"),
        "{}",
        out.stdout_text()
    );
    let out = shoal(&node, &["db", "ls"], None).await;
    out.assert_success();
    assert_eq!(out.lines(), vec!["local  local  1 migrations"]);

    // A file not named as sqlx names migrations is refused before anything
    // is sent; so is a migration the database refuses.
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("first.sql"), "CREATE TABLE x (id INTEGER)").unwrap();
    let bad = dir.path().display().to_string();
    let out = shoal(&node, &["db", "apply", "local", "--migrations", &bad], None).await;
    out.assert_clean_failure();
    assert!(
        out.stderr.contains("<VERSION>_<DESCRIPTION>.sql"),
        "{}",
        out.stderr
    );
    std::fs::remove_file(dir.path().join("first.sql")).unwrap();
    std::fs::write(dir.path().join("0001_tables.sql"), "CREATE TABLE (").unwrap();
    let out = shoal(&node, &["db", "apply", "local", "--migrations", &bad], None).await;
    out.assert_clean_failure();
    assert!(out.stderr.contains("migration_failed"), "{}", out.stderr);

    // A sink from standard input, into a table the migrations made.
    let sink = json!({"database": "local", "table": "payments", "key": ["id"],
        "columns": {"id": "/data/id", "order_id": "/data/order", "amount": "/data/amount",
                    "status": "/data/status", "version": "/data/version"},
        "version_column": "version"});
    let out = shoal(
        &node,
        &["sink", "apply", "payments", "-"],
        Some(sink.to_string().as_bytes()),
    )
    .await;
    out.assert_success();
    assert_eq!(out.lines(), vec!["sink payments defined: local.payments"]);
    let out = shoal(&node, &["sink", "ls"], None).await;
    out.assert_success();
    assert_eq!(out.lines(), vec!["payments  local.payments  key (id)"]);
    put_route(
        &node,
        "payments",
        json!({"source": "payments.>", "destinations": ["sql:payments"]}),
    )
    .await;
    // One row the table refuses (no amount: NOT NULL), one it takes.
    publish_until(
        &node,
        "payments.failed",
        &json!({"id": "p-1", "order": "o-1", "status": "failed", "version": 1}),
        "the route to the sink",
        |answer| answer["durable"] == 1,
    )
    .await;
    wait_outbox(&node, "sql:payments", (0, 1)).await;
    let out = shoal(&node, &["sink", "dead-letters", "payments"], None).await;
    out.assert_success();
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("NOT NULL constraint failed: payments.amount"),
        "{lines:?}"
    );
    // Replayed as it is, it is refused again: a dead letter once more.
    let out = shoal(&node, &["sink", "replay", "payments"], None).await;
    out.assert_success();
    assert_eq!(
        out.lines(),
        vec!["1 dead letters of sink payments sent again"]
    );
    wait_outbox(&node, "sql:payments", (0, 1)).await;

    let out = shoal(&node, &["sink", "rm", "payments"], None).await;
    out.assert_success();
    assert!(shoal(&node, &["sink", "ls"], None).await.lines().is_empty());
    let out = shoal(&node, &["sink", "get", "payments"], None).await;
    out.assert_clean_failure();
    assert!(out.stderr.contains("not_found"), "{}", out.stderr);
}
