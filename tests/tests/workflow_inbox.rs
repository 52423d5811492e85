//! The workflow event inbox on real nodes: an event sent there before any
//! instance listens is kept in Raft through the loss of the leader and a
//! crash of the whole cluster, and taken once by the instance that later
//! listens for it; an event a killed leader stored but never offered is
//! offered by the next; one applied is gone with the write that applied
//! it; every instance listening when it arrives takes it; one nobody takes
//! is deleted after its retention; waiting events are offered in the
//! order they were accepted; an event a schedule starts on starts its
//! instance; bad input is refused. Messages published on topics or
//! bridged from Kafka reach the inbox through a routing rule to
//! `workflows:inbox`, through the outbox, across an outage of the cluster.

use std::time::Duration;

use shoal_client::PublishOptions;
use shoal_tests::delivery_support::{put_definition, wait_outbox};
use shoal_tests::kafka::Kafka;
use shoal_tests::*;

const WAIT: Duration = Duration::from_secs(60);

const PAID: &str = r#"
document: {dsl: '1.0.0', namespace: inbox, name: paid, version: '1.0.0'}
do:
  - paid:
      listen:
        to:
          one:
            with: {type: test.paid}
            correlate: {order: {from: '${ .data.order }', expect: '${ .order }'}}
  - done: {set: '${ {order: .[0].data.order, amount: .[0].data.amount} }'}
"#;

async fn define(node: &Node, path: &str, yaml: &str) {
    let reply = node
        .send(node.request(Method::PUT, path).body(yaml.to_string()))
        .await;
    assert!(reply.status.is_success(), "{path}: {}", reply.describe());
}

/// Sends `test.paid` for an order to the inbox through the client SDK.
async fn send_paid(node: &Node, event_id: &str, order: &str) -> shoal_client::WorkflowEventReceipt {
    let options = PublishOptions {
        content_type: Some("application/json".into()),
        id: Some(event_id.into()),
        kind: Some("test.paid".into()),
        ..PublishOptions::default()
    };
    let data = json!({"order": order, "amount": 42}).to_string();
    node.api()
        .send_workflow_event("payments", data, &options)
        .await
        .unwrap_or_else(|e| panic!("sending {event_id}: {e}"))
}

/// Sends a JSON event of this type and id to the inbox over HTTP,
/// asserting 202 (stored).
async fn send_event(node: &Node, topic: &str, kind: &str, id: &str, data: Value) {
    let path = format!("/v1/workflows/events/{topic}");
    let reply = node.post_cloud_event(&path, kind, id, &data).await;
    assert_eq!(reply.status.as_u16(), 202, "{id}: {}", reply.describe());
}

/// Starts an instance, trying again while the cluster has no leader.
async fn start(node: &Node, workflow: &str, id: &str, input: Value) {
    wait_for(WAIT, &format!("starting {id}"), || {
        let input = input.clone();
        async move {
            let reply = node
                .post_json(
                    &format!("/v1/workflows/{workflow}/instances"),
                    &json!({"id": id, "input": input}),
                )
                .await;
            match reply.status.as_u16() {
                200 | 201 => Ok(()),
                _ => Err(reply.describe()),
            }
        }
    })
    .await;
}

async fn wait_status(node: &Node, id: &str, status: &str) -> Value {
    wait_for(WAIT, &format!("instance {id} {status}"), || async {
        let reply = node
            .get_path(&format!("/v1/workflows/instances/{id}"))
            .await;
        if reply.body["status"] == json!(status) {
            Ok(reply.body)
        } else {
            Err(reply.describe())
        }
    })
    .await
}

fn applied(instance: &Value) -> usize {
    instance["history"]
        .as_array()
        .map(|h| h.iter().filter(|e| e["what"] == "event.applied").count())
        .unwrap_or(0)
}

/// The ids of the events waiting in the inbox.
async fn waiting(node: &Node) -> Vec<String> {
    match try_waiting(node).await {
        Ok(ids) => ids,
        Err(reply) => panic!("{reply}"),
    }
}

/// As `waiting`, for polling loops: a reply other than 200 (a node
/// still electing after a restart answers 503) is an error to retry.
async fn try_waiting(node: &Node) -> Result<Vec<String>, String> {
    let reply = node.get_path("/v1/workflows/events").await;
    if reply.status.as_u16() != 200 {
        return Err(reply.describe());
    }
    Ok(reply.body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["event"]["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default())
}

async fn wait_inbox_empty(node: &Node) {
    wait_for(WAIT, "an empty inbox", || async {
        let ids = try_waiting(node).await?;
        if ids.is_empty() {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
}

async fn completed_once(node: &Node, id: &str, order: &str) {
    let done = wait_status(node, id, "completed").await;
    assert_eq!(applied(&done), 1, "{done}");
    assert_eq!(done["output"], json!({"order": order, "amount": 42}));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inbox_event_outlives_the_leader_and_a_crash_of_the_whole_cluster() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let other = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    define(
        cluster.node(other),
        "/v1/workflows/definitions/inbox/paid/1.0.0",
        PAID,
    )
    .await;

    // Sent before any instance listens, on a follower; the same id again
    // changes nothing.
    let first = send_paid(cluster.node(other), "pay-a1", "a1").await;
    assert!(!first.duplicate, "{first:?}");
    assert_eq!(first.topic, "payments");
    let again = send_paid(cluster.node(third), "pay-a1", "a1").await;
    assert!(again.duplicate, "{again:?}");
    assert_eq!(waiting(cluster.node(third)).await, vec!["pay-a1"]);

    // The leader dies; the instance that listens for the event starts
    // later, through another node, and takes it once.
    cluster.node_mut(leader).kill9();
    start(
        cluster.node(other),
        "inbox/paid",
        "a1",
        json!({"order": "a1"}),
    )
    .await;
    completed_once(cluster.node(third), "a1", "a1").await;
    wait_inbox_empty(cluster.node(third)).await;
    cluster.node_mut(leader).restart().await;
    cluster.wait_formed().await;

    // Every node is killed right after the answer, and the instance starts
    // once they are back.
    send_paid(cluster.node(leader), "pay-a2", "a2").await;
    for i in 0..3 {
        cluster.node_mut(i).kill9();
    }
    for i in 0..3 {
        cluster.node_mut(i).restart_no_wait();
    }
    cluster.wait_formed().await;
    wait_waiting(cluster.node(other), &["pay-a2"]).await;
    start(
        cluster.node(third),
        "inbox/paid",
        "a2",
        json!({"order": "a2"}),
    )
    .await;
    completed_once(cluster.node(other), "a2", "a2").await;
    wait_inbox_empty(cluster.node(leader)).await;

    // Every replica agrees, and a1 took its event only once.
    for i in 0..3 {
        completed_once(cluster.node(i), "a1", "a1").await;
        completed_once(cluster.node(i), "a2", "a2").await;
    }

    // An event is gone with the write that applied it: the leader killed
    // right after leaves nothing for a later instance of the same order.
    let leader = cluster.wait_leader().await;
    let other = (leader + 1) % 3;
    start(
        cluster.node(other),
        "inbox/paid",
        "c1",
        json!({"order": "c"}),
    )
    .await;
    wait_status(cluster.node(other), "c1", "waiting").await;
    send_paid(cluster.node(other), "pay-c", "c").await;
    completed_once(cluster.node(other), "c1", "c").await;
    cluster.node_mut(leader).kill9();
    start(
        cluster.node(other),
        "inbox/paid",
        "c2",
        json!({"order": "c"}),
    )
    .await;
    wait_status(cluster.node(other), "c2", "waiting").await;
    // A new leader offers every waiting event within a second or so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = wait_status(cluster.node(other), "c2", "waiting").await;
    assert_eq!(applied(&later), 0, "{later}");
    assert!(waiting(cluster.node(other)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_events_a_killed_leader_never_offered_are_offered_by_the_next() {
    // Every node waits 4 s between seeing an event arrive in the inbox and
    // offering it: the leader is killed in between, with the instances
    // already listening.
    let mut cluster = Cluster::builder(3)
        .env("SHOAL_FAULT_INBOX_DELAY_MS", "4000")
        .start()
        .await;
    cluster.wait_formed().await;
    let leader = cluster.wait_leader().await;
    let other = (leader + 1) % 3;
    let node = cluster.node(other);
    define(node, "/v1/workflows/definitions/inbox/paid/1.0.0", PAID).await;
    let orders = ["b1", "b2", "b3"];
    for order in orders {
        start(node, "inbox/paid", order, json!({"order": order})).await;
        wait_status(node, order, "waiting").await;
    }
    for order in orders {
        send_paid(node, &format!("pay-{order}"), order).await;
    }
    cluster.node_mut(leader).kill9();
    let node = cluster.node(other);
    for order in orders {
        completed_once(node, order, order).await;
    }
    wait_inbox_empty(node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_events_expire_start_scheduled_instances_and_refuse_bad_input() {
    let node = Node::start_with(&[
        "--workflow-event-retention",
        "2s",
        "--max-value-bytes",
        "4096",
    ])
    .await;
    define(&node, "/v1/workflows/definitions/inbox/paid/1.0.0", PAID).await;

    // Nobody takes it: deleted once retention has passed, and an instance
    // that listens afterwards waits.
    send_paid(&node, "pay-late", "late").await;
    assert_eq!(waiting(&node).await, vec!["pay-late"]);
    wait_inbox_empty(&node).await;
    start(&node, "inbox/paid", "late", json!({"order": "late"})).await;
    wait_status(&node, "late", "waiting").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = wait_status(&node, "late", "waiting").await;
    assert_eq!(applied(&still), 0, "{still}");
    // An instance that listens takes the next one at once.
    send_paid(&node, "pay-late-2", "late").await;
    completed_once(&node, "late", "late").await;
    wait_inbox_empty(&node).await;
    let metrics = node
        .client()
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for line in [
        "shoal_workflow_inbox_events_total{result=\"expired\"} 1",
        "shoal_workflow_inbox_events_total{result=\"taken\"} 1",
        "shoal_workflow_inbox_waiting 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in /metrics");
    }

    // Waiting events that may go to one instance are offered in the order
    // they were accepted (their ids sort the other way).
    define(
        &node,
        "/v1/workflows/definitions/inbox/first/1.0.0",
        r#"
document: {dsl: '1.0.0', namespace: inbox, name: first, version: '1.0.0'}
do:
  - go: {listen: {to: {one: {with: {type: test.order}}}}}
  - done: {set: '${ .[0].data }'}
"#,
    )
    .await;
    for n in (1..=5).rev() {
        send_event(
            &node,
            "orders",
            "test.order",
            &format!("ord-{n}"),
            json!({"n": n}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start(&node, "inbox/first", "first", json!({})).await;
    let first = wait_status(&node, "first", "completed").await;
    assert_eq!(first["output"], json!({"n": 5}), "{first}");
    wait_inbox_empty(&node).await;

    // Every instance listening when it arrives takes it, then it is gone.
    define(
        &node,
        "/v1/workflows/definitions/inbox/all/1.0.0",
        r#"
document: {dsl: '1.0.0', namespace: inbox, name: all, version: '1.0.0'}
do:
  - go: {listen: {to: {one: {with: {type: test.all}}}}}
"#,
    )
    .await;
    for id in ["m1", "m2", "m3"] {
        start(&node, "inbox/all", id, json!({})).await;
        wait_status(&node, id, "waiting").await;
    }
    send_event(&node, "all", "test.all", "all-1", json!({})).await;
    for id in ["m1", "m2", "m3"] {
        let done = wait_status(&node, id, "completed").await;
        assert_eq!(applied(&done), 1, "{done}");
    }
    wait_inbox_empty(&node).await;

    // A schedule that starts on the event starts its instance.
    define(
        &node,
        "/v1/workflows/definitions/inbox/placed/1.0.0",
        r#"
document: {dsl: '1.0.0', namespace: inbox, name: placed, version: '1.0.0'}
schedule:
  on:
    one:
      with: {type: test.placed}
do:
  - x: {set: '${ {order: .[0].data.order} }'}
"#,
    )
    .await;
    send_event(
        &node,
        "orders",
        "test.placed",
        "placed-1",
        json!({"order": "p1"}),
    )
    .await;
    let started = wait_status(&node, "placed-placed-1", "completed").await;
    assert_eq!(started["output"], json!({"order": "p1"}));
    wait_inbox_empty(&node).await;

    // Bad input.
    let post = |path: &str, id: &str, body: Vec<u8>| {
        node.request(Method::POST, path)
            .header("ce-id", id)
            .header("ce-type", "test.paid")
            .body(body)
    };
    let cases = [
        (
            "/v1/workflows/events/a..b",
            "x",
            vec![b'1'],
            400,
            "invalid_topic",
        ),
        (
            "/v1/workflows/events/a.*",
            "x",
            vec![b'1'],
            400,
            "invalid_topic",
        ),
        (
            "/v1/workflows/events/ok",
            &*"i".repeat(300),
            vec![b'1'],
            400,
            "bad_request",
        ),
        (
            "/v1/workflows/events/ok",
            "big",
            vec![b'x'; 5000],
            413,
            "payload_too_large",
        ),
    ];
    for (path, id, body, status, code) in cases {
        let reply = node.send(post(path, id, body)).await;
        assert_error(&reply, status, code);
    }
    for path in [
        "/v1/workflows/events?limit=0",
        "/v1/workflows/events?limit=1001",
        "/v1/workflows/events?limit=x",
    ] {
        assert_error(&node.get_path(path).await, 400, "bad_request");
    }
    assert!(waiting(&node).await.is_empty(), "nothing bad was stored");
    let health = node.get_path("/health").await;
    assert_eq!(health.status.as_u16(), 200, "{}", health.describe());
}

/// Puts the routing rule that sends `payments.>` to the inbox.
async fn route_payments_to_the_inbox(node: &Node) {
    let reply = put_definition(
        node,
        "routes",
        "to-workflows",
        &json!({"source": "payments.>", "destinations": ["workflows:inbox"]}),
    )
    .await;
    assert!(reply.status.is_success(), "{}", reply.describe());
}

/// Publishes `test.paid` for an order on a topic; the receipt.
async fn publish_paid(node: &Node, event_id: &str, order: &str) -> Value {
    let body = json!({"order": order, "amount": 42}).to_string();
    let reply = node
        .publish_with(
            "payments.http",
            body.as_bytes(),
            &[
                ("content-type", "application/json"),
                ("ce-type", "test.paid"),
                ("ce-id", event_id),
            ],
        )
        .await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.describe());
    reply.body
}

async fn wait_waiting(node: &Node, want: &[&str]) {
    wait_for(WAIT, &format!("{want:?} in the inbox"), || async {
        let ids = try_waiting(node).await?;
        if ids == want {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_to_the_inbox_keeps_events_through_an_outage_of_the_cluster() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let publisher = (leader + 1) % 3;
    route_payments_to_the_inbox(cluster.node(leader)).await;

    // Published before any definition exists (a topic alone would drop
    // it); the same id is sent until the publisher applies the rule.
    wait_for(WAIT, "the rule applied on the publisher", || async {
        let receipt = publish_paid(cluster.node(publisher), "pay-r1", "r1").await;
        if receipt["durable"] == json!(1) {
            Ok(())
        } else {
            Err(receipt.to_string())
        }
    })
    .await;
    wait_waiting(cluster.node(leader), &["pay-r1"]).await;
    // Every send of pay-r1 delivered (the loop may have sent it more than
    // once), so the outbox below holds pay-r2 alone.
    wait_outbox(cluster.node(publisher), "workflows:inbox", (0, 0)).await;

    // Without a quorum the message waits in the publisher's outbox, and
    // survives the publisher's kill -9 and a restart of every node.
    for i in [leader, (leader + 2) % 3] {
        cluster.node_mut(i).kill9();
    }
    let receipt = publish_paid(cluster.node(publisher), "pay-r2", "r2").await;
    assert_eq!(receipt["durable"], json!(1), "{receipt}");
    wait_outbox(cluster.node(publisher), "workflows:inbox", (1, 0)).await;
    cluster.node_mut(publisher).kill9();
    for i in 0..3 {
        cluster.node_mut(i).restart_no_wait();
    }
    cluster.wait_formed().await;
    wait_waiting(cluster.node(leader), &["pay-r1", "pay-r2"]).await;
    wait_outbox(cluster.node(publisher), "workflows:inbox", (0, 0)).await;

    define(
        cluster.node(leader),
        "/v1/workflows/definitions/inbox/paid/1.0.0",
        PAID,
    )
    .await;
    for order in ["r1", "r2"] {
        start(
            cluster.node(publisher),
            "inbox/paid",
            order,
            json!({"order": order}),
        )
        .await;
    }
    for i in 0..3 {
        completed_once(cluster.node(i), "r1", "r1").await;
        completed_once(cluster.node(i), "r2", "r2").await;
    }
    wait_inbox_empty(cluster.node(publisher)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_bridge_reaches_the_inbox_through_a_route() {
    let kafka = Kafka::start().await;
    let node = Node::start_with(&[
        "--kafka-brokers",
        &kafka.brokers(),
        "--max-value-bytes",
        "4096",
    ])
    .await;
    route_payments_to_the_inbox(&node).await;
    let bridge = put_definition(
        &node,
        "bridges",
        "payments-in",
        &json!({"kafka_topic": "payments", "topic": "payments.kafka"}),
    )
    .await;
    assert!(bridge.status.is_success(), "{}", bridge.describe());

    // Another system produces the payment before anything listens for it.
    let produced = node
        .send(
            node.request(Method::POST, "/v1/kafka/payments")
                .query(&[("partition", "0")])
                .header("content-type", "application/json")
                .body(json!({"order": "k1", "amount": 42}).to_string()),
        )
        .await;
    assert_eq!(produced.status.as_u16(), 200, "{}", produced.describe());
    let offset = produced.body["offset"].as_u64().expect("offset");
    let id = format!("kafka-payments-0-{offset}");
    wait_waiting(&node, &[id.as_str()]).await;
    define(
        &node,
        "/v1/workflows/definitions/inbox/kpaid/1.0.0",
        &PAID
            .replace("name: paid", "name: kpaid")
            .replace("test.paid", "shoal.kafka.record"),
    )
    .await;
    start(&node, "inbox/kpaid", "k1", json!({"order": "k1"})).await;
    completed_once(&node, "k1", "k1").await;
    wait_inbox_empty(&node).await;

    // A message too large for the inbox is a dead letter at once.
    let big = json!({"order": "big", "pad": "x".repeat(5000)}).to_string();
    let reply = node
        .publish_with(
            "payments.big",
            big.as_bytes(),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.describe());
    wait_outbox(&node, "workflows:inbox", (0, 1)).await;
    assert!(waiting(&node).await.is_empty());

    // Only the inbox is a workflows destination.
    let bad = put_definition(
        &node,
        "routes",
        "bad",
        &json!({"source": "payments.>", "destinations": ["workflows:other"]}),
    )
    .await;
    assert_eq!(bad.status.as_u16(), 400, "{}", bad.describe());
}
