//! SQL sinks: messages projected into tables of the embedded SQLite and of
//! a real PostgreSQL server, idempotently (by key, never replacing a newer
//! version), with refused rows as dead letters, sink definitions checked
//! against their table, and rows that wait out a database outage and a
//! node killed while it lasts.

use std::time::Duration;

use shoal_tests::delivery_support::*;
use shoal_tests::postgres::{self, PASSWORD};
use shoal_tests::*;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{PgPool, SqlitePool};

/// Long enough for a retry after an outage (the delays grow to 30 s).
const OUTAGE_T: Duration = Duration::from_secs(90);

/// `PUT /v1/{kind}/{name}` that must be refused with `status` and `code`;
/// the error message.
async fn refused(
    node: &Node,
    kind: &str,
    name: &str,
    body: Value,
    status: u16,
    code: &str,
) -> String {
    let reply = put_definition(node, kind, name, &body).await;
    let error = assert_error(&reply, status, code);
    text(&error, "/error/message").to_string()
}

async fn put_ok(node: &Node, kind: &str, name: &str, body: Value) -> Value {
    let reply = put_definition(node, kind, name, &body).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "PUT {kind}/{name}: {}",
        reply.describe()
    );
    reply.body
}

/// `POST /v1/publish` of a batch (one outbox write), asserting 202.
async fn publish_batch(node: &Node, messages: Vec<Value>) -> Value {
    let reply = node
        .post_json("/v1/publish", &json!({ "messages": messages }))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "publish: {}",
        reply.describe()
    );
    reply.body
}

/// Publishes a first order until the node's route to the sink is in
/// effect (the answer counts a durable delivery).
async fn wait_route(node: &Node, topic: &str, order: Value) {
    publish_until(node, topic, &order, "the route to the sink", |answer| {
        answer["durable"] == 1
    })
    .await;
}

/// `shoal_outbox_pending{destination}` on a node's /metrics.
async fn outbox_pending_metric(node: &Node, destination: &str) -> f64 {
    let text = node.get_path("/metrics").await.text;
    let prefix = format!("shoal_outbox_pending{{destination=\"{destination}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} line in /metrics:\n{text}"))
}

async fn sqlite_rows(pool: &SqlitePool) -> Vec<(i64, String, Option<f64>, Option<i64>)> {
    sqlx::query_as("SELECT id, status, total, v FROM orders ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("reading the orders table")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_projects_messages_into_the_embedded_sqlite_by_key_and_version() {
    let node = Node::start().await;
    // The table is made by the operator, with any SQLite client, in the
    // node's own file; STRICT makes SQLite refuse values of the wrong type.
    let file = node.data_dir().join("sql").join("local.sqlite");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let sqlite = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true),
    )
    .await
    .expect("opening the node's SQLite file");
    sqlx::query(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL, total REAL, \
         v INTEGER, event_id TEXT, customer TEXT) STRICT",
    )
    .execute(&sqlite)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE notes (id INTEGER, body TEXT)")
        .execute(&sqlite)
        .await
        .unwrap();

    let sink = json!({
        "database": "local", "table": "orders", "key": ["id"],
        "columns": {"id": "/data/id", "status": "/data/status", "total": "/data/total",
                    "v": "/data/v", "event_id": "/id", "customer": "/data/customer/name"},
        "version_column": "v"
    });
    // Definitions that do not fit their table are refused, naming why.
    let with = |field: &str, value: Value| {
        let mut changed = sink.clone();
        changed[field] = value;
        changed
    };
    let message = refused(
        &node,
        "sinks",
        "orders",
        with("table", json!("nope")),
        400,
        "sink_mismatch",
    )
    .await;
    assert!(message.contains("does not exist"), "{message}");
    let mut extra = sink.clone();
    extra["columns"]["colour"] = json!("/data/colour");
    let message = refused(&node, "sinks", "orders", extra, 400, "sink_mismatch").await;
    assert!(message.contains("no column colour"), "{message}");
    let message = refused(
        &node, "sinks", "notes",
        json!({"database": "local", "table": "notes", "key": ["id"], "columns": {"id": "/data/id", "body": "/data"}}),
        400, "sink_mismatch",
    )
    .await;
    assert!(message.contains("unique index"), "{message}");
    let message = refused(
        &node,
        "sinks",
        "orders",
        with("database", json!("shop")),
        400,
        "sink_mismatch",
    )
    .await;
    assert!(message.contains("not defined"), "{message}");
    // Versions in a text column would compare as text ("10" before "9").
    let message = refused(
        &node,
        "sinks",
        "orders",
        with("version_column", json!("status")),
        400,
        "sink_mismatch",
    )
    .await;
    assert!(message.contains("version column status"), "{message}");
    refused(
        &node,
        "sinks",
        "orders",
        with("table", json!("orders; DROP TABLE orders")),
        400,
        "bad_request",
    )
    .await;
    refused(
        &node,
        "sinks",
        "orders",
        with("key", json!(["v"])),
        400,
        "bad_request",
    )
    .await;
    refused(
        &node,
        "routes",
        "r",
        json!({"source": "orders.>", "destinations": ["sql:a/b"]}),
        400,
        "bad_request",
    )
    .await;
    assert_eq!(node.get_path("/v1/sinks").await.ok()["sinks"], json!([]));

    let stored = put_ok(&node, "sinks", "orders", sink.clone()).await;
    assert_eq!(stored["mode"], "upsert");
    assert_eq!(node.get_path("/v1/sinks/orders").await.ok(), stored);
    put_ok(
        &node,
        "routes",
        "orders-to-sql",
        json!({"source": "orders.>", "destinations": ["sql:orders"]}),
    )
    .await;
    wait_route(
        &node,
        "orders.created",
        json!({"id": 100, "status": "new", "total": 1, "v": 1}),
    )
    .await;

    // One batch: two orders, a newer version of the first, a row the table
    // refuses (status NULL), and the same message twice (a redelivery).
    let order = |id: i64, status: Value, v: i64| {
        json!({"topic": "orders.updated",
               "data": {"id": id, "status": status, "total": 10.5 * id as f64, "v": v,
                        "customer": {"name": format!("c{id}")}}})
    };
    let mut again = order(2, json!("new"), 1);
    again["id"] = json!("order-2-v1");
    publish_batch(
        &node,
        vec![
            order(1, json!("new"), 1),
            again.clone(),
            order(1, json!("shipped"), 3),
            order(3, Value::Null, 1),
            again,
        ],
    )
    .await;
    wait_outbox(&node, "sql:orders", (0, 1)).await;
    // An older version, delivered after the newer one, changes nothing.
    publish(
        &node,
        "orders.updated",
        &json!({"id": 1, "status": "paid", "total": 10.5, "v": 2}),
    )
    .await;
    wait_outbox(&node, "sql:orders", (0, 1)).await;

    assert_eq!(
        sqlite_rows(&sqlite).await,
        vec![
            (1, "shipped".to_string(), Some(10.5), Some(3)),
            (2, "new".to_string(), Some(21.0), Some(1)),
            (100, "new".to_string(), Some(1.0), Some(1)),
        ]
    );
    let (event_id, customer): (String, String) =
        sqlx::query_as("SELECT event_id, customer FROM orders WHERE id = 2")
            .fetch_one(&sqlite)
            .await
            .unwrap();
    assert_eq!((event_id.as_str(), customer.as_str()), ("order-2-v1", "c2"));

    // The refused row is a dead letter with the database's reason.
    let letters = node.get_path("/v1/sinks/orders/dead-letters").await.ok();
    let letters = letters["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["message"]["data"]["id"], 3);
    let reason = text(&letters[0], "/last_error");
    assert!(reason.contains("NOT NULL"), "{reason}");
    // Replayed, it is refused again (the table did not change).
    let replayed = node
        .post_json("/v1/sinks/orders/dead-letters/replay", &Value::Null)
        .await
        .ok();
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    wait_outbox(&node, "sql:orders", (0, 1)).await;

    // A value of the wrong type for its column, and a column dropped from
    // the table after the sink was defined: each row a dead letter with
    // the database's reason, the rows beside them written.
    publish(
        &node,
        "orders.updated",
        &json!({"id": 4, "status": "new", "total": "four", "v": 1}),
    )
    .await;
    wait_outbox(&node, "sql:orders", (0, 2)).await;
    sqlx::query("ALTER TABLE orders DROP COLUMN customer")
        .execute(&sqlite)
        .await
        .expect("dropping a column");
    publish(
        &node,
        "orders.updated",
        &json!({"id": 5, "status": "new", "total": 5, "v": 1}),
    )
    .await;
    wait_outbox(&node, "sql:orders", (0, 3)).await;
    let letters = node.get_path("/v1/sinks/orders/dead-letters").await.ok();
    let reason_of = |id: i64| {
        letters["dead_letters"]
            .as_array()
            .and_then(|all| all.iter().find(|l| l["message"]["data"]["id"] == id))
            .map(|l| text(l, "/last_error").to_string())
            .unwrap_or_else(|| panic!("no dead letter for {id}: {letters}"))
    };
    let wrong_type = reason_of(4);
    assert!(wrong_type.contains("total"), "{wrong_type}");
    let dropped = reason_of(5);
    assert!(dropped.contains("customer"), "{dropped}");

    // Deleting the sink drops its outbox.
    let deleted = node
        .send(node.request(Method::DELETE, "/v1/sinks/orders"))
        .await
        .ok();
    assert_eq!(deleted["deleted"], "orders");
    wait_outbox(&node, "sql:orders", (0, 0)).await;
}

async fn pg_orders(pool: &PgPool) -> Vec<(i64, String, String, i64, String, String)> {
    sqlx::query_as(
        "SELECT id, customer, total::text, version, status, meta::text FROM orders ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("reading the orders table")
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_reach_postgres_through_an_outage_and_a_node_killed_while_it_lasts() {
    let mut pg = postgres::start().await;
    let client = postgres::client(&pg).await;
    sqlx::query(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2), \
         status text, updated_at timestamptz, version bigint, meta jsonb)",
    )
    .execute(&client)
    .await
    .unwrap();

    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_formed().await;
    let node = cluster.node(0);
    node.put("secrets/shop-db", PASSWORD.as_bytes()).await;

    let url = pg.url();
    let with_password = url.replace("shoal@", "shoal:hunter2@");
    let message = refused(
        node,
        "databases",
        "shop",
        json!({"url": with_password}),
        400,
        "bad_request",
    )
    .await;
    assert!(message.contains("password_key"), "{message}");
    refused(
        node,
        "databases",
        "local",
        json!({"url": url}),
        400,
        "bad_request",
    )
    .await;
    // A wrong password is found when the sink is checked.
    node.put("secrets/wrong", b"not-the-password").await;
    put_ok(
        node,
        "databases",
        "shop",
        json!({"url": url, "password_key": "secrets/wrong"}),
    )
    .await;
    let sink = json!({
        "database": "shop", "table": "orders", "key": ["id"],
        "columns": {"id": "/data/id", "customer": "/data/customer", "total": "/data/total",
                    "status": "/data/status", "updated_at": "/time", "version": "/data/version",
                    "meta": "/data/meta"},
        "version_column": "version"
    });
    // The embedded SQLite of a three-node cluster would split the rows.
    let mut local = sink.clone();
    local["database"] = json!("local");
    local["table"] = json!("orders");
    let message = refused(node, "sinks", "orders", local, 400, "sink_mismatch").await;
    assert!(message.contains("per_node"), "{message}");
    let message = refused(
        node,
        "sinks",
        "orders",
        sink.clone(),
        424,
        "database_unavailable",
    )
    .await;
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    put_ok(
        node,
        "databases",
        "shop",
        json!({"url": url, "password_key": "secrets/shop-db"}),
    )
    .await;
    put_ok(node, "sinks", "orders", sink).await;
    put_ok(
        node,
        "routes",
        "orders-to-pg",
        json!({"source": "orders.>", "destinations": ["sql:orders"]}),
    )
    .await;

    let order = |id: i64, status: &str, version: i64| {
        json!({"id": id, "customer": format!("c{}", id % 7), "total": format!("{}.25", id),
               "status": status, "version": version, "meta": {"lines": id % 3, "gift": id % 2 == 0}})
    };
    for i in 0..3 {
        wait_route(
            cluster.node(i),
            "orders.created",
            order(1000 + i as i64, "new", 1),
        )
        .await;
    }
    let batch = |ids: std::ops::Range<i64>, status: &str, version: i64| -> Vec<Value> {
        ids.map(|id| json!({"topic": "orders.created", "data": order(id, status, version)}))
            .collect()
    };
    for i in 0..3 {
        publish_batch(
            cluster.node(i),
            batch(i as i64 * 10..i as i64 * 10 + 10, "new", 1),
        )
        .await;
    }
    wait_for(T, "33 rows in PostgreSQL", || async {
        let rows = pg_orders(&client).await.len();
        if rows == 33 {
            Ok(())
        } else {
            Err(format!("{rows} rows"))
        }
    })
    .await;

    // The database goes away; every node keeps taking orders and updates.
    pg.crash().await;
    for i in 0..3 {
        let base = i as i64 * 10;
        publish_batch(cluster.node(i), batch(base..base + 10, "paid", 2)).await;
        publish_batch(cluster.node(i), batch(100 + base..110 + base, "new", 1)).await;
    }
    wait_for(OUTAGE_T, "node 1's rows to wait in its outbox", || async {
        match outbox_counts(cluster.node(1), "sql:orders").await {
            Some((20, 0)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A node killed while its rows wait loses none of them.
    cluster.node_mut(1).kill9();
    cluster.node_mut(1).restart().await;
    assert_eq!(
        outbox_counts(cluster.node(1), "sql:orders").await,
        Some((20, 0))
    );
    // /metrics shows the lag too (counted again after the restart).
    assert_eq!(
        outbox_pending_metric(cluster.node(1), "sql:orders").await,
        20.0
    );

    pg.restart().await.expect("restarting PostgreSQL");
    let drained = |i: usize| {
        let node = cluster.node(i);
        wait_for(OUTAGE_T, "the outbox to empty", move || async move {
            match outbox_counts(node, "sql:orders").await {
                Some((0, 0)) | None => Ok(()),
                other => Err(format!("node {i}: {other:?}")),
            }
        })
    };
    for i in 0..3 {
        drained(i).await;
    }
    assert_eq!(
        outbox_pending_metric(cluster.node(1), "sql:orders").await,
        0.0
    );
    // Older versions, written after the newer rows, change nothing.
    publish_batch(cluster.node(2), batch(0..5, "stale", 0)).await;
    drained(2).await;
    let client = postgres::client(&pg).await;
    let rows = pg_orders(&client).await;
    assert_eq!(rows.len(), 63, "{rows:?}");
    for (id, customer, total, version, status, meta) in rows {
        let (want_status, want_version) = match id {
            0..=29 => ("paid", 2),
            _ => ("new", 1),
        };
        assert_eq!(
            (status.as_str(), version),
            (want_status, want_version),
            "order {id}"
        );
        assert_eq!(customer, format!("c{}", id % 7));
        assert_eq!(total, format!("{id}.25"));
        let meta: Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(
            meta,
            json!({"lines": id % 3, "gift": id % 2 == 0}),
            "order {id}"
        );
    }
    let stamped: (i64,) =
        sqlx::query_as("SELECT count(*) FROM orders WHERE updated_at > now() - interval '1 hour'")
            .fetch_one(&client)
            .await
            .unwrap();
    assert_eq!(stamped.0, 63, "every row has the message's time");
}

/// A node's embedded SQLite file, opened read-only.
async fn node_sqlite(node: &Node) -> SqlitePool {
    SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(node.data_dir().join("sql").join("local.sqlite"))
            .read_only(true),
    )
    .await
    .expect("opening the node's SQLite file")
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_run_once_on_every_node_and_a_changed_or_failing_one_is_refused() {
    let cluster = Cluster::start(3, &[]).await;
    let (first, third) = (cluster.node(0), cluster.node(2));
    let events = json!({"version": 1, "description": "events",
        "sql": "CREATE TABLE events (id TEXT PRIMARY KEY, note TEXT, v INTEGER)"});
    put_ok(first, "databases", "local", json!({"migrations": [events]})).await;
    // The same again runs nothing (the table exists: it would fail if it ran).
    put_ok(first, "databases", "local", json!({"migrations": [events]})).await;

    let mut changed = events.clone();
    changed["sql"] = json!("CREATE TABLE events (id TEXT PRIMARY KEY)");
    let message = refused(
        first,
        "databases",
        "local",
        json!({"migrations": [changed]}),
        400,
        "migration_failed",
    )
    .await;
    assert!(message.contains("modified"), "{message}");
    let broken = json!({"version": 2, "sql": "CREATE TABLE broken ("});
    let message = refused(
        first,
        "databases",
        "local",
        json!({"migrations": [events, broken]}),
        400,
        "migration_failed",
    )
    .await;
    assert!(message.contains("migration 2"), "{message}");
    // Migrations may not reach files beyond the node's own database (a
    // transaction would stop ATTACH, so the SQL ends it first).
    let stolen = std::env::temp_dir().join(format!("shoal-attached-{}.db", std::process::id()));
    for sql in [
        format!(
            "COMMIT; ATTACH DATABASE '{}' AS other; CREATE TABLE other.t (a); BEGIN",
            stolen.display()
        ),
        format!("COMMIT; VACUUM INTO '{}'; BEGIN", stolen.display()),
    ] {
        let attach = json!({"version": 2, "sql": sql});
        refused(
            first,
            "databases",
            "local",
            json!({"migrations": [events, attach]}),
            400,
            "migration_failed",
        )
        .await;
        assert!(!stolen.exists(), "{sql} made {}", stolen.display());
    }
    // What failed was not stored.
    let stored = first.get_path("/v1/databases/local").await;
    assert_eq!(
        stored.body["migrations"],
        json!([events]),
        "{}",
        stored.describe()
    );
    let bad = [
        (json!({"url": "postgres://u@h/db"}), "migrations only"),
        (
            json!({"migrations": [{"version": 0, "sql": "SELECT 1"}]}),
            "greater than 0",
        ),
        (
            json!({"migrations": [{"version": 1, "sql": " "}]}),
            "no SQL",
        ),
        (
            json!({"migrations": [{"version": 1, "sql": "SELECT 1"}, {"version": 1, "sql": "SELECT 2"}]}),
            "twice",
        ),
    ];
    for (body, needle) in bad {
        let message = refused(first, "databases", "local", body, 400, "bad_request").await;
        assert!(message.contains(needle), "{message} lacks {needle}");
    }

    // The third node has not written its database yet: the sink's first
    // row there runs the migration in its own file, then lands in the table.
    put_ok(first, "sinks", "events", json!({
        "database": "local", "table": "events", "key": ["id"], "per_node": true,
        "columns": {"id": "/data/id", "note": "/data/note", "v": "/data/v"}, "version_column": "v"
    })).await;
    put_ok(
        first,
        "routes",
        "events",
        json!({"source": "events", "destinations": ["sql:events"]}),
    )
    .await;
    wait_route(
        third,
        "events",
        json!({"id": "e-1", "note": "from the third node", "v": 1}),
    )
    .await;
    let file = third.data_dir().join("sql").join("local.sqlite");
    let rows = wait_for(OUTAGE_T, "the row in the third node's table", || async {
        if !file.exists() {
            return Err("no SQLite file yet".to_string());
        }
        let sqlite = node_sqlite(third).await;
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, note FROM events")
            .fetch_all(&sqlite)
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            Err("no rows".to_string())
        } else {
            Ok(rows)
        }
    })
    .await;
    let sqlite = node_sqlite(third).await;
    assert_eq!(
        rows,
        vec![("e-1".to_string(), "from the third node".to_string())]
    );
    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations")
        .fetch_all(&sqlite)
        .await
        .expect("_sqlx_migrations");
    assert_eq!(applied, vec![(1, true)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_over_tls_is_verified_against_its_sslrootcert() {
    let ca = shoal_tests::tls::TestCa::new("postgres-test-ca");
    let certificate = ca.server();
    let pg = postgres::Postgres::start_tls(&certificate.certificate_pem, &certificate.key_pem)
        .await
        .unwrap_or_else(|e| panic!("starting PostgreSQL with TLS: {e:#}"));
    let files = tempfile::tempdir().expect("a temporary directory");
    let trusted = files.path().join("ca.pem");
    std::fs::write(&trusted, &ca.pem).expect("writing the CA");
    let stranger = files.path().join("other-ca.pem");
    std::fs::write(&stranger, shoal_tests::tls::TestCa::new("another-ca").pem)
        .expect("writing the other CA");
    let node = Node::start().await;
    node.put("secrets/pg", PASSWORD.as_bytes()).await;
    let url = |root: &std::path::Path| {
        format!(
            "postgres://shoal@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg.port,
            root.display()
        )
    };
    let migrations = json!([{"version": 1, "description": "orders",
        "sql": "CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL)"}]);

    // A server whose certificate the CA file does not vouch for is not
    // talked to: nothing is stored, and no migration ran.
    let message = refused(
        &node,
        "databases",
        "shop",
        json!({"url": url(&stranger), "password_key": "secrets/pg", "migrations": migrations}),
        424,
        "database_unavailable",
    )
    .await;
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    // This test's own connections are plain, and named.
    let client = PgPool::connect(&format!("{}&application_name=the-test", pg.client_url()))
        .await
        .expect("connecting to PostgreSQL");
    let (tables,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_tables WHERE tablename = 'orders'")
            .fetch_one(&client)
            .await
            .expect("pg_tables");
    assert_eq!(tables, 0);

    put_ok(
        &node,
        "databases",
        "shop",
        json!({"url": url(&trusted), "password_key": "secrets/pg", "migrations": migrations}),
    )
    .await;
    put_ok(
        &node,
        "sinks",
        "orders",
        json!({"database": "shop", "table": "orders", "key": ["id"],
        "columns": {"id": "/data/id", "status": "/data/status"}}),
    )
    .await;
    put_ok(
        &node,
        "routes",
        "orders",
        json!({"source": "orders.>", "destinations": ["sql:orders"]}),
    )
    .await;
    wait_route(&node, "orders.created", json!({"id": 1, "status": "new"})).await;
    wait_for(OUTAGE_T, "the row in PostgreSQL", || async {
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, status FROM orders")
            .fetch_all(&client)
            .await
            .map_err(|e| e.to_string())?;
        if rows == vec![(1, "new".to_string())] {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    })
    .await;
    // A migration that does not end is stopped (statement_timeout) before
    // the request times out, and refused.
    let endless = json!([migrations[0], {"version": 2, "sql": "SELECT pg_sleep(600)"}]);
    let message = refused(
        &node,
        "databases",
        "shop",
        json!({"url": url(&trusted), "password_key": "secrets/pg", "migrations": endless}),
        400,
        "migration_failed",
    )
    .await;
    assert!(message.contains("ran past"), "{message}");
    // Every connection of the node's is encrypted.
    let (encrypted, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.backend_type = 'client backend' AND a.application_name <> 'the-test'",
    )
    .fetch_one(&client)
    .await
    .expect("pg_stat_ssl");
    assert!(
        encrypted >= 1 && plain == 0,
        "{encrypted} encrypted, {plain} plain"
    );
}
