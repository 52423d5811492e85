//! Messaging, pub/sub half: publishing over HTTP and WebSocket, SSE and
//! WebSocket subscribers, wildcards, queue groups across the cluster, slow
//! subscribers, malformed input, trace context, the `shoal pub`/`shoal sub`
//! commands, and interest gossip.
//!
//! Interest of a new subscriber reaches other nodes by gossip, so every
//! cross-node test first waits until the publishing node's `/v1/topics`
//! shows the subscriber's pattern. A local subscription is registered when
//! its stream opens (the SSE `subscribed` event, the WebSocket handshake),
//! so single-node tests publish right away.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use shoal_tests::ws::{interest_in, Delivery, Frame, Subscriber};
use shoal_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// Time limit for messages to arrive.
const T: Duration = Duration::from_secs(10);
/// A bounded check that nothing more arrives (duplicates, stray messages).
const QUIET: Duration = Duration::from_millis(300);

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// ----- helpers -------------------------------------------------------------

/// A `/v1/publish` entry with an explicit id and text data.
fn entry(id: &str, topic: &str, data: &str) -> Value {
    json!({"id": id, "topic": topic, "data": data})
}

/// `POST /v1/publish`, asserting 202; returns the receipt.
async fn publish_batch(node: &Node, messages: Vec<Value>) -> Value {
    let count = messages.len();
    let reply = node.publish_batch(&json!({ "messages": messages })).await;
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "batch of {count}: {}",
        reply.describe()
    );
    let ids = reply.body["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("batch receipt without ids: {}", reply.body));
    assert_eq!(ids.len(), count, "one id per message: {}", reply.body);
    reply.body
}

fn ids_of(envelopes: &[Value]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| text(e, "/id").to_string())
        .collect()
}

fn data_of(envelopes: &[Value]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| text(e, "/data").to_string())
        .collect()
}

/// `00-<32 lowercase hex>-<16 lowercase hex>-<2 hex>`, trace and span not zero.
fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && parts[1].chars().any(|c| c != '0')
        && hex(parts[2], 16)
        && parts[2].chars().any(|c| c != '0')
        && hex(parts[3], 2)
}

type StdoutLines = Lines<BufReader<ChildStdout>>;

/// Starts `shoal sub ARGS --endpoint URL`; returns the child and its stdout lines.
fn spawn_sub(node: &Node, args: &[&str]) -> (Child, StdoutLines) {
    let endpoint = node.endpoint();
    let mut all = vec!["sub"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--endpoint", &endpoint]);
    let mut child = shoal_command(&all)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run shoal sub: {e}"));
    let lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    (child, lines)
}

/// The next non-empty stdout line of a running command (within `T`).
async fn next_line(lines: &mut StdoutLines, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => panic!("{what}: no line within {T:?}"),
            Ok(Ok(Some(line))) if line.trim().is_empty() => {}
            Ok(Ok(Some(line))) => return line,
            Ok(Ok(None)) => panic!("{what}: stdout closed"),
            Ok(Err(e)) => panic!("{what}: reading stdout failed: {e}"),
        }
    }
}

/// `shoal pub ARGS --endpoint URL` (with optional stdin), asserting success.
async fn shoal_pub(node: &Node, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    let endpoint = node.endpoint();
    let mut all = vec!["pub"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--endpoint", &endpoint]);
    let out = run_shoal(&all, stdin, &[]).await;
    out.assert_success();
    out
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

// ----- 4. slow subscribers ------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn slow_subscribers_lose_messages_or_are_disconnected_and_never_slow_the_publisher() {
    let node = Node::start().await;
    let own = node.node_id().await;
    let drop_query = [("pattern", "slow.>"), ("buffer", "10")];
    let cut_query = [
        ("pattern", "slow.>"),
        ("buffer", "10"),
        ("overflow", "disconnect"),
    ];
    let mut sse_drop = node.subscribe_sse(&drop_query).await;
    let mut ws_drop = node
        .subscribe_ws(&[drop_query.as_slice(), &[("format", "raw")]].concat())
        .await;
    let mut sse_cut = node.subscribe_sse(&cut_query).await;
    let mut ws_cut = node.subscribe_ws(&cut_query).await;
    node.wait_interest(own, "slow.>", None, 4).await;

    // 1000 messages of 16 KiB (16 MB: more than the sockets can hold) while
    // no subscriber reads. Publishing does not wait for them: if it did,
    // this would never finish.
    let total = 1000usize;
    let filler = "x".repeat(16 << 10);
    let started = Instant::now();
    for batch in 0..10 {
        let messages = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                entry(
                    &format!("slow-{n:04}"),
                    "slow.data",
                    &format!("{n:04}{filler}"),
                )
            })
            .collect();
        publish_batch(&node, messages).await;
    }
    eprintln!("published {total} messages in {:?}", started.elapsed());

    // drop_oldest: the newest messages arrive, in order, and every message
    // was either delivered or counted as dropped.
    let mut delivered = Vec::new();
    let mut dropped = 0;
    let mut dropped_reports = 0;
    while delivered.last().map(String::as_str) != Some("0999") {
        match sse_drop.expect(T).await {
            Delivery::Message(envelope) => {
                delivered.push(text(&envelope, "/data")[..4].to_string())
            }
            Delivery::Dropped(n) => {
                assert!(n > 0, "a dropped report of 0");
                dropped += n as usize;
                dropped_reports += 1;
            }
            other => panic!(
                "SSE drop_oldest subscriber: {other:?} after {} messages",
                delivered.len()
            ),
        }
    }
    assert!(
        dropped > 0,
        "SSE: nothing was dropped ({} delivered)",
        delivered.len()
    );
    assert_eq!(
        delivered.len() + dropped,
        total,
        "SSE: delivered + dropped ({dropped_reports} reports)"
    );
    let mut sorted = delivered.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        delivered, sorted,
        "SSE: delivered in order, without repeats"
    );

    let mut delivered = Vec::new();
    let mut dropped = 0;
    while delivered.last().map(String::as_str) != Some("0999") {
        match ws_drop.expect(T).await {
            Delivery::Payload(data) => {
                delivered.push(String::from_utf8_lossy(&data[..4]).into_owned())
            }
            Delivery::Dropped(n) => dropped += n as usize,
            other => panic!(
                "WebSocket drop_oldest subscriber: {other:?} after {} messages",
                delivered.len()
            ),
        }
    }
    assert!(
        dropped > 0,
        "WebSocket: nothing was dropped ({} delivered)",
        delivered.len()
    );
    assert_eq!(
        delivered.len() + dropped,
        total,
        "WebSocket: delivered + dropped"
    );
    let mut sorted = delivered.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        delivered, sorted,
        "WebSocket: delivered in order, without repeats"
    );

    // disconnect: the SSE stream ends with a slow_consumer error event...
    let mut before_error = 0;
    let error = loop {
        match sse_cut.expect(T).await {
            Delivery::Message(_) => before_error += 1,
            Delivery::Error(error) => break error,
            other => panic!("SSE disconnect subscriber: {other:?} after {before_error} messages"),
        }
    };
    assert_eq!(error["error"]["code"], "slow_consumer", "{error}");
    assert!(
        before_error < total,
        "SSE disconnect subscriber got all {total} messages"
    );
    assert!(
        matches!(sse_cut.expect(T).await, Delivery::Ended(_)),
        "the SSE stream ends after the error event"
    );
    // ...and the WebSocket is closed with 1008 (policy violation).
    let (code, reason) = match close_frame(&mut ws_cut, T).await {
        Some(close) => close,
        None => panic!("the WebSocket disconnect subscriber was not closed"),
    };
    assert_eq!(code, 1008, "close reason {reason:?}");

    // The disconnected ones are unsubscribed; the others still receive.
    node.wait_interest(own, "slow.>", None, 2).await;
    let receipt = node.publish("slow.after", b"after").await;
    assert_eq!(receipt["local"], 2, "{receipt}");
    assert_eq!(sse_drop.expect(T).await.envelope()["data"], "after");
    assert_eq!(
        ws_drop.expect(T).await,
        Delivery::Payload(b"after".to_vec())
    );
}

/// Skips messages and drop reports until the subscriber's close frame;
/// `None` if nothing closes it within `timeout`.
async fn close_frame(subscriber: &mut Subscriber, timeout: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match subscriber.next(left).await? {
            Delivery::Message(_) | Delivery::Payload(_) | Delivery::Dropped(_) => {}
            Delivery::Closed(close) => return close,
            other => panic!("{}: {other:?} instead of a close frame", subscriber.label),
        }
    }
}

// ----- 5. WebSocket publishing ------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn websocket_publishing_stream_feeds_a_raw_websocket_subscriber_in_order() {
    let node = Node::start().await;
    let mut raw = node
        .subscribe_ws(&[("pattern", "stream.bin"), ("format", "raw")])
        .await;
    let mut envelopes = node.subscribe_sse(&[("pattern", "stream.*")]).await;

    let payloads: Vec<Vec<u8>> = (0..500u32)
        .map(|i| {
            let mut payload = i.to_be_bytes().to_vec();
            payload.extend(std::iter::repeat_n((i % 256) as u8, (i % 37) as usize));
            payload.push(0xff);
            payload
        })
        .collect();
    let mut publisher = node
        .publish_ws(&[
            ("topic", "stream.bin"),
            ("content_type", "application/x-test"),
        ])
        .await;
    for (i, payload) in payloads.iter().enumerate() {
        publisher.feed_binary(payload).await;
        if i % 50 == 49 {
            publisher.flush().await;
        }
    }
    publisher.flush().await;
    // A text frame is a payload too.
    publisher.send_text("as text").await;

    assert_eq!(
        raw.payloads(payloads.len(), T).await,
        payloads,
        "raw subscriber"
    );
    assert_eq!(raw.expect(T).await, Delivery::Payload(b"as text".to_vec()));
    let got = envelopes.messages(payloads.len() + 1, T).await;
    for (envelope, payload) in got.iter().zip(&payloads) {
        assert_eq!(envelope["topic"], "stream.bin", "{envelope}");
        assert_eq!(
            envelope["datacontenttype"], "application/x-test",
            "{envelope}"
        );
        assert_eq!(
            unb64(text(envelope, "/data_base64")),
            *payload,
            "{envelope}"
        );
        assert!(
            envelope["traceparent"]
                .as_str()
                .is_some_and(is_valid_traceparent),
            "a trace is started: {envelope}"
        );
    }
    assert_eq!(got[payloads.len()]["data"], "as text");
    let distinct: BTreeSet<String> = ids_of(&got).into_iter().collect();
    assert_eq!(distinct.len(), got.len(), "every message has its own id");
    publisher.close().await;

    // Without ?topic=, each text frame is a JSON object like a batch entry.
    let mut publisher = node.publish_ws(&[]).await;
    publisher
        .send_text(
            &json!({"topic": "stream.bin", "data_base64": b64(b"\x00json\xff"), "id": "ws-json-1"})
                .to_string(),
        )
        .await;
    publisher
        .send_text(
            &json!({"topic": "stream.other", "data": {"k": 1}, "headers": {"h": "v"}}).to_string(),
        )
        .await;
    assert_eq!(
        raw.expect(T).await,
        Delivery::Payload(b"\x00json\xff".to_vec())
    );
    let first = envelopes.expect(T).await.envelope();
    assert_eq!(first["id"], "ws-json-1", "{first}");
    let second = envelopes.expect(T).await.envelope();
    assert_eq!(second["topic"], "stream.other", "{second}");
    assert_eq!(second["data"], json!({"k": 1}), "{second}");
    assert_eq!(second["datacontenttype"], "application/json", "{second}");
    assert_eq!(second["headers"], json!({"h": "v"}), "{second}");
    publisher.close().await;
    raw.assert_quiet(QUIET).await;
}

// ----- 6. malformed input ------------------------------------------------------

/// One malformed request of the table.
enum Bad {
    /// `POST /v1/topics/{path}` with a body and headers.
    Publish(&'static str, Vec<u8>, Vec<(&'static str, String)>),
    /// `POST /v1/publish` with a raw body.
    Batch(String),
    /// `POST /v1/publish` with a `traceparent` header.
    BatchTraced(Value, &'static str),
    /// `GET /v1/subscribe?...`.
    Subscribe(Vec<(&'static str, String)>),
    /// WebSocket handshake to `/v1/subscribe/ws?...`.
    SubscribeWs(Vec<(&'static str, String)>),
    /// WebSocket handshake to `/v1/publish/ws?...`.
    PublishWs(Vec<(&'static str, String)>),
}

fn q(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn as_query<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn batch_of(messages: Value) -> String {
    json!({ "messages": messages }).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_precise_errors_and_the_node_keeps_working() {
    let node = Node::start_with(&["--max-message-bytes", "1000"]).await;
    // Sees everything published on the node: nothing from a refused request may arrive.
    let mut everything = node.subscribe_sse(&[("pattern", ">")]).await;

    let long = "a".repeat(257);
    let long_pattern = format!("{}.>", "a".repeat(255));
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"topic": "ok.many", "data": i.to_string()}))
        .collect();
    let many_headers: Vec<(&'static str, String)> = (0..65)
        .map(|i| -> (&'static str, String) {
            (
                Box::leak(format!("ce-h{i}").into_boxed_str()),
                "v".to_string(),
            )
        })
        .collect();
    let plain = |headers: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut all = vec![("content-type", "text/plain".to_string())];
        all.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
        all
    };

    // (what, request, status, code, index of the bad batch entry)
    let rows: Vec<(&str, Bad, u16, &str, Option<u64>)> = vec![
        (
            "empty token",
            Bad::Publish("a..b", b"x".to_vec(), plain(&[])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "leading dot",
            Bad::Publish(".a", b"x".to_vec(), plain(&[])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "trailing dot",
            Bad::Publish("a.", b"x".to_vec(), plain(&[])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "* in a topic",
            Bad::Publish("a.*", b"x".to_vec(), plain(&[])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "> in a topic",
            Bad::Publish("a.%3E", b"x".to_vec(), plain(&[])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "space in a topic",
            Bad::Publish("a%20b", b"x".to_vec(), plain(&[])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "tab in a topic",
            Bad::Publish("a%09b", b"x".to_vec(), plain(&[])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "topic over 256 bytes",
            Bad::Publish(long.clone().leak(), b"x".to_vec(), plain(&[])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "payload over the limit",
            Bad::Publish("ok.big", vec![b'x'; 1001], plain(&[])),
            413,
            "payload_too_large",
            None,
        ),
        (
            "traceparent not W3C",
            Bad::Publish("ok.t", b"x".to_vec(), plain(&[("traceparent", "nonsense")])),
            400,
            "bad_request",
            None,
        ),
        (
            "traceparent with a short trace id",
            Bad::Publish(
                "ok.t",
                b"x".to_vec(),
                plain(&[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                )]),
            ),
            400,
            "bad_request",
            None,
        ),
        (
            "traceparent with non-hex digits",
            Bad::Publish(
                "ok.t",
                b"x".to_vec(),
                plain(&[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
                )]),
            ),
            400,
            "bad_request",
            None,
        ),
        (
            "empty ce-id",
            Bad::Publish("ok.t", b"x".to_vec(), plain(&[("ce-id", "")])),
            400,
            "bad_request",
            None,
        ),
        (
            "ce-source over 256 bytes",
            Bad::Publish(
                "ok.t",
                b"x".to_vec(),
                plain(&[("ce-source", &"s".repeat(257))]),
            ),
            400,
            "bad_request",
            None,
        ),
        (
            "ce- header value over 4096 bytes",
            Bad::Publish(
                "ok.t",
                b"x".to_vec(),
                plain(&[("ce-big", &"v".repeat(4097))]),
            ),
            400,
            "bad_request",
            None,
        ),
        (
            "65 ce- headers",
            Bad::Publish("ok.t", b"x".to_vec(), many_headers),
            400,
            "bad_request",
            None,
        ),
        (
            "batch: not JSON",
            Bad::Batch("{not json".into()),
            400,
            "bad_request",
            None,
        ),
        (
            "batch: an array",
            Bad::Batch("[]".into()),
            400,
            "bad_request",
            None,
        ),
        (
            "batch: no messages field",
            Bad::Batch("{}".into()),
            400,
            "bad_request",
            None,
        ),
        (
            "batch: empty",
            Bad::Batch(batch_of(json!([]))),
            400,
            "bad_request",
            None,
        ),
        (
            "batch: 1001 messages",
            Bad::Batch(batch_of(json!(too_many))),
            400,
            "bad_request",
            None,
        ),
        (
            "batch: bad topic in the second entry",
            Bad::Batch(batch_of(
                json!([{"topic": "ok.first", "data": "1"}, {"topic": "a..b", "data": "2"}]),
            )),
            400,
            "invalid_topic",
            Some(1),
        ),
        (
            "batch: wildcard topic",
            Bad::Batch(batch_of(json!([{"topic": "ok.>", "data": "1"}]))),
            400,
            "invalid_topic",
            Some(0),
        ),
        (
            "batch: data and data_base64",
            Bad::Batch(batch_of(
                json!([{"topic": "ok.x", "data": "1", "data_base64": "MQ=="}]),
            )),
            400,
            "bad_request",
            Some(0),
        ),
        (
            "batch: bad base64",
            Bad::Batch(batch_of(
                json!([{"topic": "ok.x"}, {"topic": "ok.x", "data_base64": "!!!"}]),
            )),
            400,
            "bad_request",
            Some(1),
        ),
        (
            "batch: header value not a string",
            Bad::Batch(batch_of(json!([{"topic": "ok.x", "headers": {"n": 1}}]))),
            400,
            "bad_request",
            Some(0),
        ),
        (
            "batch: entry over the limit",
            Bad::Batch(batch_of(
                json!([{"topic": "ok.x", "data": "1"}, {"topic": "ok.x", "data": "x".repeat(1001)}]),
            )),
            413,
            "payload_too_large",
            Some(1),
        ),
        (
            "batch: entry traceparent not W3C",
            Bad::Batch(batch_of(
                json!([{"topic": "ok.x", "traceparent": "00-00-00-00"}]),
            )),
            400,
            "bad_request",
            Some(0),
        ),
        (
            "batch: id with a line break",
            Bad::Batch(batch_of(json!([{"topic": "ok.x", "id": "a\nb"}]))),
            400,
            "bad_request",
            Some(0),
        ),
        (
            "batch: unknown field",
            Bad::Batch(batch_of(json!([{"topic": "ok.x", "colour": "red"}]))),
            400,
            "bad_request",
            None,
        ),
        (
            "batch: entry without a topic",
            Bad::Batch(batch_of(json!([{"data": "x"}]))),
            400,
            "bad_request",
            None,
        ),
        (
            "batch: traceparent header not W3C",
            Bad::BatchTraced(
                json!({"messages": [{"topic": "ok.x", "data": "1"}]}),
                "garbage",
            ),
            400,
            "bad_request",
            Some(0),
        ),
        (
            "subscribe: no pattern",
            Bad::Subscribe(q(&[])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe: empty token",
            Bad::Subscribe(q(&[("pattern", "a..b")])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "subscribe: > not last",
            Bad::Subscribe(q(&[("pattern", "a.>.b")])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "subscribe: * inside a token",
            Bad::Subscribe(q(&[("pattern", "a.b*")])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "subscribe: whitespace",
            Bad::Subscribe(q(&[("pattern", "a b")])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "subscribe: pattern over 256 bytes",
            Bad::Subscribe(q(&[("pattern", &long_pattern)])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "subscribe: buffer 0",
            Bad::Subscribe(q(&[("pattern", "a"), ("buffer", "0")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe: buffer too big",
            Bad::Subscribe(q(&[("pattern", "a"), ("buffer", "65537")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe: buffer negative",
            Bad::Subscribe(q(&[("pattern", "a"), ("buffer", "-1")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe: buffer not a number",
            Bad::Subscribe(q(&[("pattern", "a"), ("buffer", "ten")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe: unknown overflow",
            Bad::Subscribe(q(&[("pattern", "a"), ("overflow", "block")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe: queue with a space",
            Bad::Subscribe(q(&[("pattern", "a"), ("queue", "my group")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe: queue with a slash",
            Bad::Subscribe(q(&[("pattern", "a"), ("queue", "a/b")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe: empty queue",
            Bad::Subscribe(q(&[("pattern", "a"), ("queue", "")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe/ws: unknown format",
            Bad::SubscribeWs(q(&[("pattern", "a"), ("format", "xml")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe/ws: bad pattern",
            Bad::SubscribeWs(q(&[("pattern", "a..b")])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "subscribe/ws: no pattern",
            Bad::SubscribeWs(q(&[])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe/ws: buffer 0",
            Bad::SubscribeWs(q(&[("pattern", "a"), ("buffer", "0")])),
            400,
            "bad_request",
            None,
        ),
        (
            "subscribe/ws: unknown overflow",
            Bad::SubscribeWs(q(&[("pattern", "a"), ("overflow", "x")])),
            400,
            "bad_request",
            None,
        ),
        (
            "publish/ws: bad topic",
            Bad::PublishWs(q(&[("topic", "a..b")])),
            400,
            "invalid_topic",
            None,
        ),
        (
            "publish/ws: wildcard topic",
            Bad::PublishWs(q(&[("topic", "a.*")])),
            400,
            "invalid_topic",
            None,
        ),
    ];

    let mut failures = Vec::new();
    for (what, request, status, code, index) in rows {
        let reply = match request {
            Bad::Publish(path, body, headers) => {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                node.publish_with(path, &body, &headers).await
            }
            Bad::Batch(body) => {
                let request = node
                    .request(Method::POST, "/v1/publish")
                    .header("content-type", "application/json")
                    .body(body);
                node.send(request).await
            }
            Bad::BatchTraced(body, traceparent) => {
                let request = node
                    .request(Method::POST, "/v1/publish")
                    .header("traceparent", traceparent)
                    .json(&body);
                node.send(request).await
            }
            Bad::Subscribe(query) => node.subscribe_reply(&as_query(&query)).await,
            Bad::SubscribeWs(query) | Bad::PublishWs(query) => {
                let path = if what.starts_with("subscribe/ws") {
                    "/v1/subscribe/ws"
                } else {
                    "/v1/publish/ws"
                };
                match shoal_tests::ws::ws_connect(&node.ws_url(path, &as_query(&query))).await {
                    Ok(ws) => {
                        drop(ws);
                        failures.push(format!("{what}: the WebSocket handshake succeeded"));
                        continue;
                    }
                    Err(rejected) => {
                        let got = (
                            rejected.status.as_u16(),
                            rejected.code().map(str::to_string),
                        );
                        if got != (status, Some(code.to_string())) {
                            failures.push(format!(
                                "{what}: expected {status} {code}, got {}",
                                rejected.describe()
                            ));
                        }
                        continue;
                    }
                }
            }
        };
        if let Err(problem) = error_matches(&reply, &[(status, &[code])]) {
            failures.push(format!("{what}: {problem}"));
            continue;
        }
        if let Some(index) = index {
            let got = error_detail(&reply.body, "index").and_then(Value::as_u64);
            let message = reply
                .body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            if got != Some(index) || !message.contains(&format!("messages[{index}]")) {
                failures.push(format!(
                    "{what}: expected index {index} named in the error, got {}",
                    reply.describe()
                ));
            }
        }
    }

    // Bad frames on a publishing WebSocket close it with 1008 and a reason.
    let frames: Vec<(&str, Vec<(&str, &str)>, Frame)> = vec![
        (
            "binary frame without ?topic=",
            vec![],
            Frame::Binary(b"x".to_vec()),
        ),
        (
            "text frame that is not JSON",
            vec![],
            Frame::Text("{oops".into()),
        ),
        (
            "JSON frame with a bad topic",
            vec![],
            Frame::Text(json!({"topic": "a..b", "data": "x"}).to_string()),
        ),
        (
            "JSON frame without a topic",
            vec![],
            Frame::Text(json!({"data": "x"}).to_string()),
        ),
        (
            "JSON frame with a control character in its id",
            vec![],
            Frame::Text(json!({"topic": "ok.x", "id": "a\nb"}).to_string()),
        ),
        (
            "JSON frame over the limit",
            vec![],
            Frame::Text(json!({"topic": "ok.x", "data": "x".repeat(1001)}).to_string()),
        ),
        (
            "binary frame over the limit",
            vec![("topic", "ok.big")],
            Frame::Binary(vec![b'x'; 1001]),
        ),
    ];
    for (what, query, frame) in frames {
        let mut publisher = node.publish_ws(&query).await;
        match frame {
            Frame::Binary(data) => publisher.send_binary(&data).await,
            Frame::Text(text) => publisher.send_text(&text).await,
            _ => unreachable!(),
        }
        match publisher.next_frame(T).await {
            Some(Frame::Close(Some((1008, reason)))) if !reason.is_empty() => {}
            other => failures.push(format!(
                "publish/ws {what}: expected close 1008 with a reason, got {other:?}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing from the refused requests was published (batches are all or
    // nothing): the next message the subscriber sees is this one.
    let at_limit = "y".repeat(1000);
    let receipt = node.publish("ok.at-limit", at_limit.as_bytes()).await;
    let envelope = everything.expect(T).await.envelope();
    assert_eq!(
        envelope["id"], receipt["id"],
        "refused requests published {envelope}"
    );
    assert_eq!(envelope["data"], at_limit.as_str());

    // The limits themselves are accepted.
    let longest = "a".repeat(256);
    node.publish(&longest, b"256-byte topic").await;
    assert_eq!(
        everything.expect(T).await.envelope()["topic"],
        longest.as_str()
    );
    let mut at_pattern = node
        .subscribe_sse(&[
            ("pattern", &longest),
            ("buffer", "65536"),
            ("queue", "Group_1.a-b"),
        ])
        .await;
    node.publish(&longest, b"again").await;
    assert_eq!(at_pattern.expect(T).await.envelope()["data"], "again");
    assert_eq!(everything.expect(T).await.envelope()["data"], "again");
    everything.assert_quiet(QUIET).await;
    let ready = node.get_path("/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.describe());
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

// ----- 8. command line --------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn shoal_sub_prints_what_shoal_pub_publishes() {
    let node = Node::start().await;
    let own = node.node_id().await;
    let (_plain_child, mut plain) = spawn_sub(&node, &["cli.>"]);
    let (_json_child, mut as_json) = spawn_sub(&node, &["cli.*", "--json"]);
    let (_worker_a, mut worker_a) = spawn_sub(&node, &["work.*", "--queue", "cli-workers"]);
    let (_worker_b, mut worker_b) = spawn_sub(&node, &["work.*", "--queue", "cli-workers"]);
    node.wait_interest(own, "cli.>", None, 1).await;
    node.wait_interest(own, "cli.*", None, 1).await;
    node.wait_interest(own, "work.*", Some("cli-workers"), 2)
        .await;

    // An argument.
    let out = shoal_pub(&node, &["cli.hello", "hello world"], None).await;
    assert!(
        out.stdout_text().contains("published"),
        "{}",
        out.stdout_text()
    );
    assert_eq!(
        next_line(&mut plain, "shoal sub cli.>").await,
        "cli.hello hello world"
    );
    let envelope: Value = serde_json::from_str(&next_line(&mut as_json, "shoal sub --json").await)
        .expect("JSON line");
    assert_eq!(envelope["topic"], "cli.hello", "{envelope}");
    assert_eq!(envelope["data"], "hello world", "{envelope}");
    assert_eq!(envelope["datacontenttype"], "text/plain", "{envelope}");

    // Standard input.
    shoal_pub(&node, &["cli.stdin"], Some(b"from standard input")).await;
    assert_eq!(
        next_line(&mut plain, "shoal sub cli.>").await,
        "cli.stdin from standard input"
    );
    let envelope: Value = serde_json::from_str(&next_line(&mut as_json, "shoal sub --json").await)
        .expect("JSON line");
    assert_eq!(envelope["data"], "from standard input", "{envelope}");

    // Content type and headers.
    shoal_pub(
        &node,
        &[
            "cli.json",
            r#"{"n":1}"#,
            "--content-type",
            "application/json",
            "--header",
            "tenant=acme",
            "--header",
            "region=eu",
        ],
        None,
    )
    .await;
    assert_eq!(
        next_line(&mut plain, "shoal sub cli.>").await,
        r#"cli.json {"n":1}"#
    );
    let envelope: Value = serde_json::from_str(&next_line(&mut as_json, "shoal sub --json").await)
        .expect("JSON line");
    assert_eq!(envelope["data"], json!({"n": 1}), "{envelope}");
    assert_eq!(
        envelope["datacontenttype"], "application/json",
        "{envelope}"
    );
    assert_eq!(
        envelope["headers"],
        json!({"tenant": "acme", "region": "eu"}),
        "{envelope}"
    );

    // Deeper topics reach `cli.>` only.
    shoal_pub(&node, &["cli.deep.topic", "deep"], None).await;
    assert_eq!(
        next_line(&mut plain, "shoal sub cli.>").await,
        "cli.deep.topic deep"
    );

    // --queue: each message is printed by one of the two members.
    let jobs: Vec<Value> = (0..20)
        .map(|i| entry(&format!("w{i:02}"), "work.item", &format!("w{i:02}")))
        .collect();
    publish_batch(&node, jobs).await;
    let mut printed = Vec::new();
    let deadline = Instant::now() + T;
    while printed.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "queue members printed {printed:?}"
        );
        for lines in [&mut worker_a, &mut worker_b] {
            if let Ok(line) =
                tokio::time::timeout(Duration::from_millis(20), lines.next_line()).await
            {
                let line = line.expect("reading stdout").expect("shoal sub ended");
                printed.push(line);
            }
        }
    }
    let distinct: BTreeSet<&String> = printed.iter().collect();
    assert_eq!(distinct.len(), 20, "each job printed once: {printed:?}");
    assert!(
        printed.iter().all(|l| l.starts_with("work.item w")),
        "{printed:?}"
    );

    // Refusals are explained, without a panic.
    let out = run_shoal(
        &["pub", "cli.*", "x", "--endpoint", &node.endpoint()],
        None,
        &[],
    )
    .await;
    out.assert_clean_failure();
    assert!(out.stderr.contains("invalid_topic"), "{}", out.stderr);
    let out = run_shoal(
        &["sub", "cli..x", "--endpoint", &node.endpoint()],
        None,
        &[],
    )
    .await;
    out.assert_clean_failure();
    assert!(out.stderr.contains("invalid_topic"), "{}", out.stderr);
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

/// A subscriber disconnected by `overflow=disconnect` leaves the router at
/// once. (It used to stay until its stream task ended, which can take for
/// ever with a client that does not read, and meanwhile it was still
/// announced and still chosen for its queue group's share, which was lost.)
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_member_disconnected_for_being_slow_stops_taking_messages() {
    let node = Node::start().await;
    let own = node.node_id().await;
    // Never read: its socket fills, then its buffer, then it is disconnected.
    let _stuck = node
        .subscribe_sse(&[
            ("pattern", "q.*"),
            ("queue", "g"),
            ("buffer", "100"),
            ("overflow", "disconnect"),
        ])
        .await;
    let _live = node
        .subscribe_ws(&[("pattern", "q.*"), ("queue", "g"), ("buffer", "65536")])
        .await;
    node.wait_interest(own, "q.*", Some("g"), 2).await;

    // About 8 MB for each member: more than the stuck member's socket holds.
    let filler = "x".repeat(16 << 10);
    for batch in 0..10 {
        let messages = (0..100)
            .map(|i| entry(&format!("fill-{batch}-{i}"), "q.fill", &filler))
            .collect();
        publish_batch(&node, messages).await;
    }
    // The stuck member has been disconnected: the group is the live member alone.
    let messages = (0..100)
        .map(|i| entry(&format!("after-{i}"), "q.after", "after"))
        .collect();
    let receipt = publish_batch(&node, messages).await;
    assert_eq!(
        receipt["local"], 100,
        "every message after the disconnect goes to the remaining member: {receipt}"
    );
    node.wait_interest(own, "q.*", Some("g"), 1).await;
}

/// A control frame holds at most 125 bytes, so a long error (serde's list of
/// expected fields, an echoed topic) must be cut to fit the close frame's
/// reason; it used to break the close handshake (a protocol error, not 1008).
#[tokio::test(flavor = "multi_thread")]
async fn publishing_socket_close_reasons_fit_in_a_close_frame() {
    let node = Node::start().await;
    let long_topic = format!("{}..b", "a".repeat(200));
    for frame in [
        json!({"topic": "ok.x", "colour": 1}).to_string(),
        json!({"topic": long_topic, "data": "x"}).to_string(),
    ] {
        let mut publisher = node.publish_ws(&[]).await;
        publisher.send_text(&frame).await;
        match publisher.next_frame(T).await {
            Some(Frame::Close(Some((1008, reason)))) => {
                assert!(!reason.is_empty() && reason.len() <= 123, "{reason:?}")
            }
            other => panic!("frame {frame}: expected close 1008, got {other:?}"),
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
