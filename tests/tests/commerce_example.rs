//! The order saga of `examples/commerce/`: its `run.sh` end to end with the
//! tables in SQLite and in a real PostgreSQL, orders, payments and
//! shipments arriving from Kafka through bridges and landing in the
//! tables, and the payment timeout
//! firing once when the leader is killed while it waits. The inventory,
//! payment and shipping stand-ins are `examples/commerce/services.py`; the
//! tables' migrations, sinks and routes come from `tables.py`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_tests::delivery_support::put_definition;
use shoal_tests::kafka::Kafka;
use shoal_tests::*;

const WAIT: Duration = Duration::from_secs(90);

fn example(file: &str) -> PathBuf {
    package_dir().join("../examples/commerce").join(file)
}

/// The saga with a payment window of `window` instead of 30 minutes.
fn saga(window: &str) -> String {
    std::fs::read_to_string(example("order.yaml"))
        .expect("examples/commerce/order.yaml")
        .replace("after: PT30M", &format!("after: {window}"))
}

/// The stand-in services, answering on `endpoint`; killed when dropped.
struct Services(Child);

impl Services {
    async fn start(node: &Node) -> Services {
        let child = Command::new("python3")
            .arg(example("services.py"))
            .arg(node.endpoint())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 examples/commerce/services.py");
        Services(child)
    }

    /// Waits until `node` knows of the services' subscriptions: a topic is
    /// at most once, and a node forwards a message only to the
    /// subscriptions it has learned of by gossip.
    async fn wait_known(node: &Node) {
        wait_for(WAIT, "the subscriptions, known to the node", || async {
            let topics = node.get_path("/v1/topics").await;
            let text = topics.body.to_string();
            if ["inventory", "payment", "shipping"]
                .iter()
                .all(|group| text.contains(group))
            {
                Ok(())
            } else {
                Err(topics.describe())
            }
        })
        .await;
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn publish_saga(node: &Node, window: &str) {
    let reply = node
        .send(
            node.request(
                Method::PUT,
                "/v1/workflows/definitions/commerce/order/1.0.0",
            )
            .body(saga(window)),
        )
        .await;
    assert!(reply.status.is_success(), "{}", reply.describe());
}

async fn wait_final(node: &Node, id: &str) -> Value {
    wait_for(WAIT, &format!("order {id} finished"), || async {
        let reply = node
            .get_path(&format!("/v1/workflows/instances/{id}"))
            .await;
        match reply.body["status"].as_str() {
            Some("completed" | "faulted" | "cancelled") => Ok(reply.body),
            _ => Err(reply.describe()),
        }
    })
    .await
}

/// `run.sh` with `args` and `envs`; its output, after checking that it
/// succeeded and printed one final state and one row set per outcome.
async fn run_sh(args: &[&str], envs: &[(&str, &str)]) -> String {
    let output = tokio::process::Command::new("bash")
        .arg(example("run.sh"))
        .args(args)
        .env("SHOAL_BIN", shoal_bin())
        .env("PAYMENT_WINDOW", "PT3S")
        .env_remove("SHOAL_ENDPOINT")
        .envs(envs.iter().copied())
        .output()
        .await
        .expect("run.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "run.sh failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("all orders ended where they should"),
        "{stdout}"
    );
    assert!(!stdout.contains("WRONG"), "{stdout}");
    for line in [
        "happy            completed",
        "payment-fails    cancelled: payment failed",
        "payment-timeout  cancelled: payment timeout",
        "shipment-fails   cancelled: shipment failed",
        "out-of-stock     cancelled: out of stock",
        "completed  items=1 payment=paid shipment=delivered",
        "cancelled  items=1 payment=failed shipment=-",
        "cancelled  items=1 payment=- shipment=-",
        "cancelled  items=1 payment=refunded shipment=failed",
        "completed  items=0 payment=paid shipment=delivered",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The happy order (20) and the one placed by an event (5), by two
    // customers, completed today.
    let sales = stdout
        .lines()
        .find(|l| l.starts_with("20") && l.contains("25.00"))
        .unwrap_or_else(|| panic!("no sales line in:\n{stdout}"));
    let columns: Vec<&str> = sales.split_whitespace().collect();
    assert_eq!(columns[1..], ["2", "25.00", "12.50", "2"], "{sales}");
    // The saved report over the dataset `orders` finds the same figures.
    let report = stdout
        .lines()
        .skip_while(|l| !l.starts_with("report sales-per-day"))
        .find(|l| l.starts_with("20") && l.contains('\t'))
        .unwrap_or_else(|| panic!("no report line in:\n{stdout}"));
    let columns: Vec<&str> = report.split('\t').collect();
    assert_eq!(columns[1..], ["2", "25.00", "12.50", "2"], "{report}");
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn run_sh_places_one_order_per_outcome_and_checks_them() {
    let stdout = run_sh(&[], &[]).await;
    assert!(stdout.contains("rows in the tables (sqlite)"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_sh_keeps_the_tables_in_postgresql_with_one_flag() {
    let postgres = shoal_tests::postgres::start().await;
    let stdout = run_sh(
        &["--postgres", &postgres.url()],
        &[("PGPASSWORD", shoal_tests::postgres::PASSWORD)],
    )
    .await;
    assert!(stdout.contains("rows in the tables (postgres)"), "{stdout}");
    // Read independently of run.sh: the migration is recorded as sqlx
    // records it, and the rows are PostgreSQL's types.
    let client = shoal_tests::postgres::client(&postgres).await;
    let (version, success): (i64, bool) =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations")
            .fetch_one(&client)
            .await
            .expect("_sqlx_migrations");
    assert_eq!((version, success), (1, true));
    let (completed, revenue): (i64, String) = sqlx::query_as(
        "SELECT count(*), sum(total_amount)::text FROM orders WHERE status = 'completed'",
    )
    .fetch_one(&client)
    .await
    .expect("orders");
    assert_eq!((completed, revenue.as_str()), (2, "25.00"));
}

/// Produces a JSON record to a Kafka topic through the node, with
/// CloudEvents headers (`ce-type`, ...); its offset in partition 0.
async fn produce(node: &Node, topic: &str, headers: &[(&str, &str)], body: Value) -> u64 {
    let mut request = node
        .request(Method::POST, &format!("/v1/kafka/{topic}"))
        .query(&[("partition", "0")])
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let produced = node.send(request.body(body.to_string())).await;
    assert_eq!(produced.status.as_u16(), 200, "{}", produced.describe());
    produced.body["offset"].as_u64().expect("offset")
}

/// An order's rows: status, customer, total, items, payment status and
/// method, shipment status and tracking number.
type OrderRows = (String, String, f64, i64, String, String, String, String);

async fn order_rows(sqlite: &sqlx::SqlitePool, order: &str) -> OrderRows {
    wait_for(WAIT, &format!("order {order}'s rows"), || async {
        let row: Option<OrderRows> = sqlx::query_as(
            "SELECT o.status, o.customer_id, CAST(o.total_amount AS REAL), \
               (SELECT count(*) FROM order_items i WHERE i.order_id = o.id), \
               (SELECT p.status FROM payments p WHERE p.order_id = o.id), \
               (SELECT p.payment_method FROM payments p WHERE p.order_id = o.id), \
               (SELECT s.status FROM shipments s WHERE s.order_id = o.id), \
               (SELECT s.tracking_number FROM shipments s WHERE s.order_id = o.id) \
             FROM orders o WHERE o.id = ?1",
        )
        .bind(order)
        .fetch_optional(sqlite)
        .await
        .map_err(|e| e.to_string())?;
        match row {
            Some(row) if row.6 == "delivered" && row.0 == "completed" => Ok(row),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_payments_and_shipments_from_kafka_drive_the_saga_into_the_tables() {
    let kafka = Kafka::start().await;
    let node = Node::start_with(&["--kafka-brokers", &kafka.brokers()]).await;
    publish_saga(&node, "PT30M").await;
    let _services = Services::start(&node).await;
    Services::wait_known(&node).await;
    let tables = Command::new("python3")
        .arg(example("tables.py"))
        .args(["setup", &node.endpoint()])
        .output()
        .expect("python3 examples/commerce/tables.py");
    assert!(tables.status.success(), "{tables:?}");
    // Orders start the saga from their topic; payments and shipments
    // answer it through the workflow event inbox. The bridges are defined
    // before their Kafka topics exist.
    for (name, definition) in [
        (
            "bridges",
            json!({"kafka_topic": "orders", "topic": "commerce.orders.kafka"}),
        ),
        (
            "bridges",
            json!({"kafka_topic": "payments", "topic": "commerce.payments.kafka"}),
        ),
        (
            "bridges",
            json!({"kafka_topic": "shipments", "topic": "commerce.shipments.kafka"}),
        ),
        (
            "routes",
            json!({"source": "commerce.payments.kafka", "destinations": ["workflows:inbox"]}),
        ),
        (
            "routes",
            json!({"source": "commerce.shipments.kafka", "destinations": ["workflows:inbox"]}),
        ),
    ] {
        let topic = definition["kafka_topic"]
            .as_str()
            .or(definition["source"].as_str());
        let reply = put_definition(
            &node,
            name,
            &topic.unwrap_or_default().replace('.', "-"),
            &definition,
        )
        .await;
        assert!(reply.status.is_success(), "{}", reply.describe());
    }

    // Another system produces an order to Kafka; the stand-in services
    // answer for it.
    let offset = produce(
        &node,
        "orders",
        &[],
        json!({"order": "k-1", "customer": "c-k",
        "items": [{"product": "p-1", "quantity": 1, "price": 9}], "total": 9, "scenario": "happy"}),
    )
    .await;
    let done = wait_final(&node, &format!("order-kafka-orders-0-{offset}")).await;
    assert_eq!(
        done["output"],
        json!({"order": "k-1", "status": "completed", "tracking": "TRK-k-1"}),
        "{done}"
    );

    // A second order is paid and shipped by other systems through Kafka:
    // CloudEvents headers give the records their types, and the order's
    // own id (`ce-id`) names its instance.
    produce(&node, "orders", &[("ce-id", "k-2"), ("ce-type", "commerce.order.placed")],
        json!({"order": "k-2", "customer": "c-x", "items": [{"product": "p-2", "quantity": 3, "price": 4}],
               "total": 12, "scenario": "external"})).await;
    produce(
        &node,
        "payments",
        &[("ce-id", "paid-k-2"), ("ce-type", "commerce.payment.paid")],
        json!({"order": "k-2", "payment": "pay-k-2", "amount": 12, "method": "bank-transfer",
               "at": "2026-12-05T10:00:00Z"}),
    )
    .await;
    let shipped = json!({"order": "k-2", "shipment": "shp-k-2", "tracking": "KAFKA-TRK-2",
        "carrier": "kafka-post", "at": "2026-12-05T11:00:00Z"});
    produce(
        &node,
        "shipments",
        &[
            ("ce-id", "shipped-k-2"),
            ("ce-type", "commerce.shipment.shipped"),
        ],
        shipped.clone(),
    )
    .await;
    let mut delivered = shipped;
    delivered["at"] = json!("2026-12-06T09:00:00Z");
    produce(
        &node,
        "shipments",
        &[
            ("ce-id", "delivered-k-2"),
            ("ce-type", "commerce.shipment.delivered"),
        ],
        delivered,
    )
    .await;
    let done = wait_final(&node, "order-k-2").await;
    assert_eq!(
        done["output"],
        json!({"order": "k-2", "status": "completed", "tracking": "KAFKA-TRK-2"}),
        "{done}"
    );

    // Both orders are in the tables, projected from the saga's events.
    let sqlite = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(node.data_dir().join("sql/local.sqlite"))
            .read_only(true),
    )
    .await
    .expect("the node's SQLite file");
    let row =
        |status: &str, customer: &str, total: f64, items: i64, method: &str, tracking: &str| {
            (
                status.to_string(),
                customer.to_string(),
                total,
                items,
                "paid".to_string(),
                method.to_string(),
                "delivered".to_string(),
                tracking.to_string(),
            )
        };
    assert_eq!(
        order_rows(&sqlite, "k-1").await,
        row("completed", "c-k", 9.0, 1, "card", "TRK-k-1")
    );
    assert_eq!(
        order_rows(&sqlite, "k-2").await,
        row("completed", "c-x", 12.0, 1, "bank-transfer", "KAFKA-TRK-2")
    );
    let (ship_date, delivery_date): (String, String) =
        sqlx::query_as("SELECT ship_date, delivery_date FROM shipments WHERE order_id = 'k-2'")
            .fetch_one(&sqlite)
            .await
            .expect("the shipment");
    assert_eq!(
        (ship_date.as_str(), delivery_date.as_str()),
        ("2026-12-05T11:00:00Z", "2026-12-06T09:00:00Z")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_payment_timeout_fires_once_when_the_leader_is_killed() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let follower = (leader + 1) % 3;
    publish_saga(cluster.node(follower), "PT4S").await;
    let services = Services::start(cluster.node(follower)).await;
    for i in 0..3 {
        Services::wait_known(cluster.node(i)).await;
    }
    let start = cluster
        .node(follower)
        .post_json(
            "/v1/workflows/commerce/order/instances",
            &json!({"id": "late", "input": {"order": "late", "items": [], "total": 3,
                    "scenario": "payment-timeout"}}),
        )
        .await;
    assert_eq!(start.status.as_u16(), 201, "{}", start.describe());
    // Waiting for the payment, its timeout armed.
    wait_for(WAIT, "the payment wait", || async {
        let reply = cluster
            .node(follower)
            .get_path("/v1/workflows/instances/late")
            .await;
        let armed = reply.body["outcomes"]
            .as_object()
            .is_some_and(|o| o.keys().any(|k| k.ends_with("/timeout")));
        if armed && reply.body["status"] == json!("waiting") {
            Ok(())
        } else {
            Err(reply.describe())
        }
    })
    .await;
    cluster.node_mut(leader).kill9();
    let done = wait_final(cluster.node(follower), "late").await;
    assert_eq!(
        done["output"],
        json!({"order": "late", "status": "cancelled", "reason": "payment timeout"}),
        "{done}"
    );
    let history: Vec<&str> = done["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|e| e["what"].as_str())
        .collect();
    assert_eq!(
        history.iter().filter(|w| **w == "timer.fired").count(),
        1,
        "{history:?}"
    );
    drop(services);
}
