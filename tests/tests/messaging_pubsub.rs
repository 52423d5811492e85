//! Messaging, pub/sub: a message published on one node reaches SSE and
//! WebSocket subscribers on the others, wildcards, queue groups across the
//! cluster, interest gossip, trace context, message ids that cannot be SSE
//! ids, and the per-topic metrics.
//!
//! Interest of a new subscriber reaches other nodes by gossip, so every
//! cross-node test first waits until the publishing node's `/v1/topics`
//! shows the subscriber's pattern. A local subscription is registered when
//! its stream opens (the SSE `subscribed` event, the WebSocket handshake),
//! so single-node tests publish right away.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use shoal_tests::messaging_support::*;
use shoal_tests::ws::{interest_in, Delivery, Subscriber};
use shoal_tests::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn data_of(envelopes: &[Value]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| text(e, "/data").to_string())
        .collect()
}

// ----- 1. across nodes, SSE and WebSocket ----------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn published_on_one_node_reaches_sse_and_websocket_subscribers_on_others() {
    let cluster = Cluster::start(3, &[]).await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let (id_b, id_c) = (cluster.node_id(1).await, cluster.node_id(2).await);

    let mut on_b = b.subscribe_sse(&[("pattern", "orders.*")]).await;
    let mut on_c = c.subscribe_ws(&[("pattern", "orders.>")]).await;
    a.wait_interest(id_b, "orders.*", None, 1).await;
    a.wait_interest(id_c, "orders.>", None, 1).await;

    // One message with every envelope attribute set by CloudEvents headers.
    let payload = json!({"order": 42, "items": ["a", "b"]});
    let reply = a
        .publish_with(
            "orders.created",
            payload.to_string().as_bytes(),
            &[
                ("content-type", "application/json"),
                ("ce-id", "order-42"),
                ("ce-source", "/shop/eu"),
                ("ce-type", "com.example.order.created"),
                ("ce-subject", "order/42"),
                ("ce-time", "2024-02-29T12:34:56.789Z"),
                ("ce-tenant", "acme"),
                ("ce-region", "eu-west"),
                ("traceparent", TRACEPARENT),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.describe());
    assert_eq!(reply.body["id"], "order-42", "{}", reply.body);
    assert_eq!(reply.body["topic"], "orders.created", "{}", reply.body);
    assert_eq!(
        reply.body["local"], 0,
        "no subscriber on the publishing node: {}",
        reply.body
    );
    assert_eq!(
        reply.body["forwarded"], 2,
        "one copy to each of the two other nodes: {}",
        reply.body
    );
    assert_eq!(reply.body["durable"], 0, "{}", reply.body);

    for (name, subscriber) in [
        ("SSE on node 1", &mut on_b),
        ("WebSocket on node 2", &mut on_c),
    ] {
        let envelope = subscriber.expect(T).await.envelope();
        let expected = json!({
            "specversion": "1.0",
            "id": "order-42",
            "topic": "orders.created",
            "source": "/shop/eu",
            "type": "com.example.order.created",
            "subject": "order/42",
            "time": "2024-02-29T12:34:56.789Z",
            "datacontenttype": "application/json",
            "traceparent": TRACEPARENT,
            "headers": {"tenant": "acme", "region": "eu-west"},
            "data": payload,
        });
        assert_eq!(envelope, expected, "{name}: the envelope");
    }

    // Defaults: a generated id, the node as source, a time, the content
    // type; binary data travels as data_base64.
    let receipt = a
        .publish_with(
            "orders.binary",
            &[0xff, 0x00, 0x01],
            &[("content-type", "application/octet-stream")],
        )
        .await;
    assert_eq!(
        receipt.status,
        StatusCode::ACCEPTED,
        "{}",
        receipt.describe()
    );
    let id = text(&receipt.body, "/id").to_string();
    for subscriber in [&mut on_b, &mut on_c] {
        let envelope = subscriber.expect(T).await.envelope();
        assert_eq!(envelope["id"], id.as_str(), "{envelope}");
        assert_eq!(envelope["data_base64"], "/wAB", "{envelope}");
        assert!(
            envelope.get("data").is_none(),
            "binary data is not in data: {envelope}"
        );
        assert_eq!(
            envelope["datacontenttype"], "application/octet-stream",
            "{envelope}"
        );
        assert_eq!(envelope["type"], "shoal.message", "{envelope}");
        assert!(
            text(&envelope, "/source").starts_with("shoal://node/"),
            "{envelope}"
        );
        assert!(text(&envelope, "/time").ends_with('Z'), "{envelope}");
        assert!(envelope.get("subject").is_none(), "{envelope}");
        assert_eq!(envelope["headers"], json!({}), "{envelope}");
    }

    // Order is kept for one publisher: 200 messages one after the other.
    let sent: Vec<String> = (0..200).map(|i| format!("seq-{i:03}")).collect();
    for data in &sent {
        let reply = a
            .publish_with(
                "orders.sequenced",
                data.as_bytes(),
                &[("content-type", "text/plain")],
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.describe());
    }
    assert_eq!(
        data_of(&on_b.messages(200, T).await),
        sent,
        "SSE subscriber on node 1: order"
    );
    assert_eq!(
        data_of(&on_c.messages(200, T).await),
        sent,
        "WebSocket subscriber on node 2: order"
    );
    on_b.assert_quiet(QUIET).await;
    on_c.assert_quiet(QUIET).await;
}

// ----- 2. wildcards ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn wildcard_and_exact_subscribers_get_exactly_the_matching_messages() {
    let node = Node::start().await;
    let mut subscribers: Vec<(&str, Subscriber)> = Vec::new();
    for (i, pattern) in ["orders.*", "orders.>", "orders.created", "*.created", ">"]
        .into_iter()
        .enumerate()
    {
        // Both transports, alternately.
        let subscriber = if i % 2 == 0 {
            node.subscribe_sse(&[("pattern", pattern)]).await
        } else {
            node.subscribe_ws(&[("pattern", pattern)]).await
        };
        subscribers.push((pattern, subscriber));
    }

    // The last message (orders.created) matches every pattern, so reading
    // through it shows everything each subscriber got.
    let topics = [
        ("m01", "orders.created"),
        ("m02", "orders.eu.created"),
        ("m03", "orders"),
        ("m04", "ordersx.created"),
        ("m05", "orders.updated"),
        ("m06", "payments.created"),
        ("m07", "orders.created.late"),
        ("m08", "other.thing"),
        ("m09", "orders.eu"),
        ("m10", "orders.created"),
    ];
    let messages = topics
        .iter()
        .map(|(id, topic)| entry(id, topic, id))
        .collect();
    let receipt = publish_batch(&node, messages).await;
    // 5+2+1+2+3+2+2+1+3+5 deliveries into local queues.
    assert_eq!(receipt["local"], 26, "{receipt}");
    assert_eq!(receipt["forwarded"], 0, "{receipt}");

    let expected: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("orders.*", vec!["m01", "m05", "m09", "m10"]),
        ("orders.>", vec!["m01", "m02", "m05", "m07", "m09", "m10"]),
        ("orders.created", vec!["m01", "m10"]),
        ("*.created", vec!["m01", "m04", "m06", "m10"]),
        (
            ">",
            vec![
                "m01", "m02", "m03", "m04", "m05", "m06", "m07", "m08", "m09", "m10",
            ],
        ),
    ]);
    for (pattern, subscriber) in &mut subscribers {
        let got = subscriber.messages_through("m10", T).await;
        assert_eq!(
            ids_of(&got),
            expected[*pattern],
            "subscriber of {pattern:?}"
        );
        for envelope in &got {
            let id = text(envelope, "/id");
            let topic = topics.iter().find(|(i, _)| *i == id).expect("known id").1;
            assert_eq!(envelope["topic"], topic, "{pattern}: {envelope}");
            assert_eq!(envelope["data"], id, "{pattern}: {envelope}");
            assert_eq!(
                envelope["datacontenttype"], "text/plain",
                "{pattern}: {envelope}"
            );
        }
        subscriber.assert_quiet(QUIET).await;
    }
}

// ----- 3. queue groups -------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn queue_group_members_across_the_cluster_share_the_messages() {
    let cluster = Cluster::start(3, &[]).await;
    let ids = [
        cluster.node_id(0).await,
        cluster.node_id(1).await,
        cluster.node_id(2).await,
    ];
    let group = [("pattern", "jobs.*"), ("queue", "workers")];
    let mut members = vec![
        cluster.node(0).subscribe_sse(&group).await,
        cluster.node(1).subscribe_ws(&group).await,
        cluster.node(2).subscribe_sse(&group).await,
    ];
    let mut plain = cluster
        .node(1)
        .subscribe_sse(&[("pattern", "jobs.>")])
        .await;

    let a = cluster.node(0);
    a.wait_interest(ids[0], "jobs.*", Some("workers"), 1).await;
    a.wait_interest(ids[1], "jobs.*", Some("workers"), 1).await;
    a.wait_interest(ids[2], "jobs.*", Some("workers"), 1).await;
    a.wait_interest(ids[1], "jobs.>", None, 1).await;

    let sent: Vec<String> = (0..300).map(|i| format!("job-{i:03}")).collect();
    for chunk in sent.chunks(100) {
        let messages = chunk.iter().map(|id| entry(id, "jobs.run", id)).collect();
        publish_batch(a, messages).await;
    }

    // The plain subscriber gets every message, in order.
    assert_eq!(
        ids_of(&plain.messages(300, T).await),
        sent,
        "plain subscriber"
    );

    // Each message reaches exactly one member of the group.
    let mut got: Vec<Vec<String>> = vec![Vec::new(); members.len()];
    let deadline = Instant::now() + T;
    while got.iter().map(Vec::len).sum::<usize>() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "the group got {} of {} messages within {T:?} (per member: {:?})",
            got.iter().map(Vec::len).sum::<usize>(),
            sent.len(),
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for (member, subscriber) in members.iter_mut().enumerate() {
            match subscriber.next(Duration::from_millis(20)).await {
                None => {}
                Some(Delivery::Message(envelope)) => {
                    got[member].push(text(&envelope, "/id").to_string())
                }
                Some(other) => panic!("member on node {member}: {other:?}"),
            }
        }
    }
    for subscriber in &mut members {
        subscriber.assert_quiet(QUIET).await;
    }
    plain.assert_quiet(QUIET).await;

    let all: Vec<&String> = got.iter().flatten().collect();
    let distinct: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "a message reached two members");
    assert_eq!(
        distinct,
        sent.iter().collect(),
        "every message reached a member"
    );
    let shares: Vec<usize> = got.iter().map(Vec::len).collect();
    for (member, share) in shares.iter().enumerate() {
        assert!(
            *share > 0 && *share < sent.len(),
            "member on node {member} got {share} of {} (shares {shares:?})",
            sent.len()
        );
    }
    // Each member sees its share in publish order.
    for (member, ids) in got.iter().enumerate() {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(*ids, sorted, "member on node {member}: order");
    }
}

// ----- 7. trace context ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn traceparent_travels_unchanged_across_nodes_and_is_started_when_absent() {
    let cluster = Cluster::start(3, &[]).await;
    let (a, b) = (cluster.node(0), cluster.node(1));
    let id_b = cluster.node_id(1).await;
    let mut on_b = b.subscribe_ws(&[("pattern", "trace.>")]).await;
    a.wait_interest(id_b, "trace.>", None, 1).await;

    // Supplied on a single publish: unchanged on the other node.
    let reply = a
        .publish_with(
            "trace.one",
            b"1",
            &[("content-type", "text/plain"), ("traceparent", TRACEPARENT)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.describe());
    assert_eq!(on_b.expect(T).await.envelope()["traceparent"], TRACEPARENT);

    // A batch: the request's traceparent for entries without their own,
    // an entry's own one otherwise.
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let request = a
        .request(Method::POST, "/v1/publish")
        .header("traceparent", TRACEPARENT)
        .json(&json!({"messages": [
            {"topic": "trace.batch", "data": "inherits"},
            {"topic": "trace.batch", "data": "own", "traceparent": own},
        ]}));
    let reply = a.send(request).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.describe());
    let got = on_b.messages(2, T).await;
    assert_eq!(got[0]["traceparent"], TRACEPARENT, "{}", got[0]);
    assert_eq!(got[1]["traceparent"], own, "{}", got[1]);

    // Invalid ones are refused.
    for bad in [
        "",
        "nonsense",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
    ] {
        let reply = a
            .publish_with(
                "trace.bad",
                b"x",
                &[("content-type", "text/plain"), ("traceparent", bad)],
            )
            .await;
        assert_error(&reply, 400, "bad_request");
    }

    // Absent: a valid new trace per message.
    let mut traces = BTreeSet::new();
    for data in ["a", "b", "c"] {
        a.publish("trace.none", data.as_bytes()).await;
        let envelope = on_b.expect(T).await.envelope();
        assert_eq!(
            envelope["data"], data,
            "the refused publishes arrived: {envelope}"
        );
        let traceparent = text(&envelope, "/traceparent");
        assert!(
            is_valid_traceparent(traceparent),
            "generated traceparent {traceparent:?}"
        );
        traces.insert(traceparent[3..35].to_string());
    }
    assert_eq!(
        traces.len(),
        3,
        "each message starts its own trace: {traces:?}"
    );
    let reply = a
        .publish_batch(&json!({"messages": [{"topic": "trace.none", "data": "d"}]}))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.describe());
    let envelope = on_b.expect(T).await.envelope();
    assert!(
        envelope["traceparent"]
            .as_str()
            .is_some_and(is_valid_traceparent),
        "batch entry without a trace: {envelope}"
    );
    on_b.assert_quiet(QUIET).await;
}

// ----- 9. interest gossip ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn interest_leaves_other_nodes_when_the_subscriber_disconnects() {
    let cluster = Cluster::start(3, &[]).await;
    let b = cluster.node(1);
    let id_b = cluster.node_id(1).await;
    let others = [cluster.node(0), cluster.node(2)];

    let sse = b.subscribe_sse(&[("pattern", "gone.sse")]).await;
    let polite = b.subscribe_ws(&[("pattern", "gone.ws.>")]).await;
    let abrupt = b
        .subscribe_ws(&[("pattern", "gone.*"), ("queue", "leavers")])
        .await;
    let stays = b.subscribe_sse(&[("pattern", "stays.here")]).await;
    for node in others {
        node.wait_interest(id_b, "gone.sse", None, 1).await;
        node.wait_interest(id_b, "gone.ws.>", None, 1).await;
        node.wait_interest(id_b, "gone.*", Some("leavers"), 1).await;
        node.wait_interest(id_b, "stays.here", None, 1).await;
    }
    let topics = cluster.node(0).topics().await;
    assert_eq!(topics["node_id"], cluster.node_id(0).await, "{topics}");

    // A WebSocket closed with a close handshake.
    polite.close().await;
    for node in others {
        node.wait_interest(id_b, "gone.ws.>", None, 0).await;
    }
    // A WebSocket dropped without one.
    drop(abrupt);
    for node in others {
        node.wait_interest(id_b, "gone.*", Some("leavers"), 0).await;
    }
    // An SSE stream whose connection is dropped.
    sse.close().await;
    for node in others {
        node.wait_interest(id_b, "gone.sse", None, 0).await;
    }

    // The other subscription is still announced, and nothing is forwarded
    // for the patterns that are gone.
    for node in others {
        let topics = node.topics().await;
        assert_eq!(
            interest_in(&topics, id_b, "stays.here", None),
            Some(1),
            "{topics}"
        );
    }
    let receipt = cluster.node(0).publish("gone.sse", b"nobody").await;
    assert_eq!(receipt["forwarded"], 0, "{receipt}");
    drop(stays);
}

// ----- bugs found while writing these tests --------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn message_ids_that_cannot_be_sse_ids_do_not_break_sse_subscribers() {
    let node = Node::start().await;
    let mut sse = node.subscribe_sse(&[("pattern", "ids.>")]).await;
    let mut ws = node.subscribe_ws(&[("pattern", "ids.>")]).await;
    for bad in ["line\nbreak", "carriage\rreturn", "nul\u{0}byte"] {
        // Refused, or delivered without breaking the SSE stream: either way
        // the next message reaches both subscribers.
        let reply = node
            .publish_batch(&json!({"messages": [{"topic": "ids.bad", "id": bad, "data": "x"}]}))
            .await;
        let accepted = reply.status == StatusCode::ACCEPTED;
        if !accepted {
            assert_error(&reply, 400, "bad_request");
        }
        let receipt = node
            .publish("ids.next", bad.escape_debug().to_string().as_bytes())
            .await;
        for subscriber in [&mut sse, &mut ws] {
            if accepted {
                let envelope = subscriber.expect(T).await.envelope();
                assert_eq!(envelope["id"], bad, "{envelope}");
            }
            let envelope = subscriber.expect(T).await.envelope();
            assert_eq!(
                envelope["id"], receipt["id"],
                "{}: after id {bad:?}: {envelope}",
                subscriber.label
            );
        }
    }
}

/// `/metrics` counts per topic what was published and delivered.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_messages_per_topic() {
    let node = Node::start().await;
    let _subscriber = node.subscribe_sse(&[("pattern", "metered.*")]).await;
    for _ in 0..3 {
        node.publish("metered.a", b"x").await;
    }
    let metrics = node.get_path("/metrics").await;
    let text = metrics.text.clone();
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{topic=\"metered.a\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} line in /metrics:\n{text}"))
    };
    assert_eq!(value("shoal_messages_published_total"), 3.0);
    assert_eq!(value("shoal_messages_delivered_total"), 3.0);
    assert!(text.contains("shoal_subscribers 1"), "{text}");
}
