//! Durable messaging, the Kafka bridge: produce, consume, and route to
//! Kafka, against a tansu broker per test (`shoal_tests::kafka`).

use std::time::{Duration, Instant};

use shoal_tests::delivery_support::*;
use shoal_tests::kafka::Kafka;
use shoal_tests::ws::Subscriber;
use shoal_tests::*;

/// `PUT /v1/bridges/{name}`, asserting 200.
async fn put_bridge(node: &Node, name: &str, body: Value) -> Value {
    let reply = put_definition(node, "bridges", name, &body).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "PUT bridge {name}: {}",
        reply.describe()
    );
    reply.body
}

// ----- Kafka ----------------------------------------------------------------

/// `POST /v1/kafka/{topic}` with a JSON payload; `(partition, offset)`.
async fn produce(node: &Node, topic: &str, query: &[(&str, &str)], payload: &Value) -> (u64, u64) {
    let request = node
        .request(Method::POST, &format!("/v1/kafka/{topic}"))
        .query(query)
        .header("content-type", "application/json")
        .body(payload.to_string());
    let reply = node.send(request).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "produce to {topic}: {}",
        reply.describe()
    );
    assert_eq!(reply.body["topic"], topic);
    (num(&reply.body, "/partition"), num(&reply.body, "/offset"))
}

/// Reads messages until one of each expected `data` arrived; returns them
/// by data, in the order of `want`.
async fn wait_messages(stream: &mut Subscriber, want: &[Value], timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut found: Vec<Option<Value>> = vec![None; want.len()];
    let mut others = Vec::new();
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = next_message(stream, left).await else {
            panic!("timed out after {timeout:?}; found {found:#?}; others {others:#?}");
        };
        match want.iter().position(|w| message["data"] == *w) {
            Some(i) if found[i].is_none() => found[i] = Some(message),
            _ => others.push(message),
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_produce_bridge_and_route() {
    let kafka = Kafka::start().await;
    let node = Node::start_with(&["--kafka-brokers", &kafka.brokers()]).await;
    let mut stream = subscribe(&node, "from-kafka.>").await;

    // Produced before the bridge exists: consumed from the earliest offset.
    let early = [json!({"n": 1}), json!({"n": 2})];
    let mut produced = vec![
        (
            produce(&node, "orders", &[("key", "k1")], &early[0]).await,
            Some("k1"),
        ),
        (
            produce(&node, "orders", &[("partition", "2")], &early[1]).await,
            None,
        ),
    ];
    assert_eq!(produced[1].0 .0, 2, "the requested partition");

    let bridge = put_bridge(
        &node,
        "orders-in",
        json!({"kafka_topic": "orders", "topic": "from-kafka.orders"}),
    )
    .await;
    assert_eq!(bridge["name"], "orders-in");
    let late = json!({"n": 3});
    produced.push((
        produce(&node, "orders", &[("key", "k3")], &late).await,
        Some("k3"),
    ));

    let want = [early[0].clone(), early[1].clone(), late];
    let messages = wait_messages(&mut stream, &want, T).await;
    for (message, ((partition, offset), key)) in messages.iter().zip(&produced) {
        assert_eq!(message["topic"], "from-kafka.orders", "{message}");
        assert_eq!(
            message["id"],
            format!("kafka-orders-{partition}-{offset}"),
            "{message}"
        );
        assert_eq!(message["source"], "kafka://orders");
        assert_eq!(message["datacontenttype"], "application/json");
        assert_eq!(header(message, "kafka-topic"), Some("orders"), "{message}");
        assert_eq!(
            header(message, "kafka-partition"),
            Some(partition.to_string().as_str())
        );
        assert_eq!(
            header(message, "kafka-offset"),
            Some(offset.to_string().as_str())
        );
        assert_eq!(header(message, "kafka-key"), *key, "{message}");
    }

    // A route to Kafka goes through the outbox; a bridge back proves it landed.
    put_route(
        &node,
        "to-kafka",
        json!({"source": "shop.*", "destinations": ["kafka:audit"]}),
    )
    .await;
    let sale = json!({"sku": "x-1", "qty": 2});
    let answer = publish_until(
        &node,
        "shop.sale",
        &sale,
        "the route to Kafka applied",
        |answer| answer["durable"] == 1,
    )
    .await;
    let id = text(&answer, "/id").to_string();
    wait_outbox(&node, "kafka:audit", (0, 0)).await;
    put_bridge(
        &node,
        "audit-in",
        json!({"kafka_topic": "audit", "topic": "from-kafka.audit"}),
    )
    .await;
    let back = wait_messages(&mut stream, std::slice::from_ref(&sale), T).await;
    let back = &back[0];
    assert_eq!(back["topic"], "from-kafka.audit", "{back}");
    assert_eq!(header(back, "kafka-topic"), Some("audit"), "{back}");
    assert_eq!(back["datacontenttype"], "application/json");
    // The CloudEvents Kafka binding carries the envelope there and back.
    assert_eq!(back["id"], id.as_str(), "{back}");
    assert_eq!(back["type"], "shoal.message", "{back}");

    let bridges = node.get_path("/v1/bridges").await.ok();
    assert_eq!(
        bridges["bridges"].as_array().map(Vec::len),
        Some(2),
        "{bridges}"
    );
}

/// With `--kafka-ca-file`, the bridge speaks TLS to the brokers and
/// verifies them: producing and consuming work through a TLS-only broker;
/// a node that does not trust the broker's CA, or speaks plain Kafka to
/// it, gets nothing through.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_over_tls_verifies_the_broker() {
    let ca = shoal_tests::tls::TestCa::new("kafka-test-ca");
    let kafka = Kafka::start_behind_tls(&ca.server()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("kafka-ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write the CA");
    let ca_file = ca_file.display().to_string();
    let node = Node::start_with(&[
        "--kafka-brokers",
        &kafka.brokers(),
        "--kafka-ca-file",
        &ca_file,
    ])
    .await;
    let mut stream = subscribe(&node, "secure.>").await;
    let payload = json!({"over": "tls"});
    let (partition, offset) = produce(&node, "secure", &[], &payload).await;
    put_bridge(
        &node,
        "secure-in",
        json!({"kafka_topic": "secure", "topic": "secure.in"}),
    )
    .await;
    let messages = wait_messages(&mut stream, &[payload], T).await;
    assert_eq!(
        messages[0]["id"],
        format!("kafka-secure-{partition}-{offset}"),
        "{}",
        messages[0]
    );

    // The system's roots do not include the test CA; plain Kafka is not TLS.
    let brokers = kafka.brokers();
    for args in [vec!["--kafka-tls"], vec![]] {
        let mut all = vec!["--kafka-brokers", brokers.as_str()];
        all.extend(args.iter().copied());
        let other = Node::start_with(&all).await;
        let reply = other
            .send(
                other
                    .request(Method::POST, "/v1/kafka/secure")
                    .header("content-type", "application/json")
                    .body("{}"),
            )
            .await;
        assert_error(&reply, 502, "kafka_unavailable");
    }
}
