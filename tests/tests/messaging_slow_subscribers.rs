//! Messaging, slow subscribers: they lose messages or are disconnected,
//! and never slow the publisher; a queue member disconnected for being slow
//! stops taking its group's share.

use std::time::{Duration, Instant};

use shoal_tests::messaging_support::*;
use shoal_tests::procfs::rss_bytes;
use shoal_tests::ws::{Delivery, Subscriber};
use shoal_tests::*;

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

// ----- bugs found while writing these tests --------------------------------------

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

/// A node whose subscriber buffers may hold 16 MiB together, with a write
/// timeout far off: there the budget alone lets stalled subscribers go.
async fn node_with_a_16_mib_budget() -> Node {
    Node::start_with(&[
        "--subscriber-buffer-mb",
        "16",
        "--write-timeout-ms",
        "600000",
    ])
    .await
}

fn metric(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or(0.0)
}

/// Subscribers that stop reading cannot make the node hold more than
/// `--subscriber-buffer-mb` together: past it, those holding more than
/// their share are cut off and their buffers freed, while a subscriber
/// that keeps up loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_subscribers_are_cut_off_at_the_nodes_buffer_budget() {
    let node = node_with_a_16_mib_budget().await;
    let own = node.node_id().await;
    // Never read, with room for 65536 messages each and drop_oldest: only
    // the budget stops them holding everything published. Each has a topic
    // of its own: a message in several buffers is held (and counted) once.
    const STALLED: usize = 6;
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let pattern = format!("flood.{i}");
        let query = [("pattern", pattern.as_str()), ("buffer", "65536")];
        stalled.push(node.subscribe_ws(&query).await);
        node.wait_interest(own, &pattern, None, 1).await;
    }
    let mut reader = node
        .subscribe_sse(&[("pattern", "flood.>"), ("buffer", "65536")])
        .await;
    node.wait_interest(own, "flood.>", None, 1).await;
    let pid = node.pid().expect("the node runs");
    let rss_before = rss_bytes(pid);

    // 1000 messages of 64 KiB (64 MB, a sixth for each stalled subscriber),
    // read by `reader` as they come.
    let filler = "x".repeat(64 << 10);
    let mut received = Vec::new();
    for batch in 0..100 {
        let messages = (0..10)
            .map(|i| {
                let n = batch * 10 + i;
                entry(
                    &format!("f{n:04}"),
                    &format!("flood.{}", n % STALLED),
                    &filler,
                )
            })
            .collect();
        publish_batch(&node, messages).await;
        for envelope in reader.messages(10, T).await {
            received.push(text(&envelope, "/id").to_string());
        }
    }
    let want: Vec<String> = (0..1000).map(|n| format!("f{n:04}")).collect();
    assert_eq!(received, want, "the reader got every message, in order");

    let metrics = node.get_path("/metrics").await.text;
    let cut = metric(&metrics, "shoal_subscribers_cut_off_total");
    let held = metric(&metrics, "shoal_subscriber_buffer_bytes");
    assert!(cut >= 1.0, "no subscriber was cut off:\n{metrics}");
    assert!(
        held <= (16 << 20) as f64,
        "{held} bytes held in subscriber buffers, past the 16 MiB budget"
    );
    let grown = rss_bytes(pid).saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "the node grew by {} MiB while {STALLED} subscribers stalled",
        grown >> 20
    );

    // The ones cut off are closed with the reason; the rest lost their
    // oldest messages (counted) and still receive.
    let mut closed = 0u64;
    let mut still_open = Vec::new();
    for (i, subscriber) in stalled.iter_mut().enumerate() {
        let last = format!(
            "f{:04}",
            (0..1000).rev().find(|n| n % STALLED == i).unwrap_or(0)
        );
        loop {
            match subscriber.expect(T).await {
                Delivery::Closed(close) => {
                    let (code, reason) = close.expect("a close frame");
                    assert_eq!(code, 1008, "{reason}");
                    assert!(reason.contains("--subscriber-buffer-mb"), "{reason}");
                    closed += 1;
                    break;
                }
                Delivery::Message(envelope) if text(&envelope, "/id") == last => {
                    still_open.push(i);
                    break;
                }
                Delivery::Message(_) | Delivery::Dropped(_) => {}
                other => panic!("a stalled subscriber: {other:?}"),
            }
        }
    }
    assert_eq!(closed as f64, cut, "every cut-off subscriber was closed");
    // A cut-off subscriber's interest is gone; the others' stays.
    for i in 0..STALLED {
        let subscribers = u64::from(still_open.contains(&i));
        node.wait_interest(own, &format!("flood.{i}"), None, subscribers)
            .await;
    }
}

/// Subscribers of one topic share each message: the budget counts it once,
/// so twenty stalled subscribers holding the same messages are not cut off
/// for holding twenty times what the node holds.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_subscribers_of_one_topic_are_counted_once_in_the_budget() {
    let node = node_with_a_16_mib_budget().await;
    let own = node.node_id().await;
    let query = [("pattern", "shared.>"), ("buffer", "65536")];
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(node.subscribe_ws(&query).await);
    }
    node.wait_interest(own, "shared.>", None, 20).await;

    // 300 messages of 64 KiB: each buffer stops at its quarter of the
    // budget (4 MiB, dropping its oldest), and all of them hold the same
    // newest messages.
    let filler = "x".repeat(64 << 10);
    for batch in 0..30 {
        let messages = (0..10)
            .map(|i| entry(&format!("s{:04}", batch * 10 + i), "shared.data", &filler))
            .collect();
        publish_batch(&node, messages).await;
    }
    let metrics = node.get_path("/metrics").await.text;
    assert_eq!(
        metric(&metrics, "shoal_subscribers_cut_off_total"),
        0.0,
        "subscribers were cut off:\n{metrics}"
    );
    let held = metric(&metrics, "shoal_subscriber_buffer_bytes");
    assert!(
        held <= (16 << 20) as f64,
        "{held} bytes held in subscriber buffers, past the 16 MiB budget"
    );
    node.wait_interest(own, "shared.>", None, 20).await;
    drop(stalled);
}

/// A subscriber that stops reading altogether, over WebSocket or SSE,
/// fills its socket; after `--write-timeout-ms` with nothing taken the node
/// closes the connection and drops the subscription and its buffer, while
/// a subscriber that reads on gets every message. Over HTTP/2 the stalled
/// stream is stopped by flow control before its socket fills; it is let go
/// too.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_stops_reading_is_let_go_after_the_write_timeout() {
    let node = Node::start_with(&["--write-timeout-ms", "1000"]).await;
    let own = node.node_id().await;
    let _stalled_ws = node.subscribe_ws(&[("pattern", "stall.ws")]).await;
    node.wait_interest(own, "stall.ws", None, 1).await;
    let _stalled_sse = node.subscribe_sse(&[("pattern", "stall.sse")]).await;
    node.wait_interest(own, "stall.sse", None, 1).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an HTTP/2 client");
    let stalled_h2 = h2
        .get(node.url("/v1/subscribe?pattern=stall.h2"))
        .send()
        .await
        .expect("SSE over HTTP/2");
    assert_eq!(stalled_h2.version(), reqwest::Version::HTTP_2);
    node.wait_interest(own, "stall.h2", None, 1).await;
    let mut reader = node
        .subscribe_sse(&[("pattern", "stall.*"), ("buffer", "65536")])
        .await;
    node.wait_interest(own, "stall.*", None, 1).await;

    // 700 messages of 16 KiB to each stalled topic (11 MB each): more than
    // the sockets between the node and a client hold.
    let filler = "x".repeat(16 << 10);
    let topics = ["stall.ws", "stall.sse", "stall.h2"];
    let mut received = 0;
    for batch in 0..100 {
        let messages = (0..21)
            .map(|i| entry(&format!("s{batch:03}-{i:02}"), topics[i % 3], &filler))
            .collect();
        publish_batch(&node, messages).await;
        received += reader.messages(21, T).await.len();
    }
    assert_eq!(received, 2100, "the reading subscriber got every message");

    // The stalled subscribers are let go; the reader is not.
    for topic in topics {
        node.wait_interest(own, topic, None, 0).await;
    }
    node.wait_interest(own, "stall.*", None, 1).await;
    let metrics = node.get_path("/metrics").await.text;
    let timeouts = metric(&metrics, "shoal_api_write_timeouts_total{listener=\"api\"}");
    // Each stalled subscriber is let go by its socket's deadline or its
    // stream's (whichever fires first), and either counts.
    assert!(timeouts >= 3.0, "{timeouts} write timeouts:\n{metrics}");
    publish_batch(&node, vec![entry("after", "stall.ws", "still here")]).await;
    let last = reader.messages(1, T).await;
    assert_eq!(text(&last[0], "/id"), "after");
}

/// Waits until the node has `expected` (watch streams, log tail streams).
async fn wait_watch_and_tail_streams(node: &Node, expected: (f64, f64)) {
    wait_for(
        T,
        &format!("{expected:?} watch and tail streams"),
        || async {
            let metrics = node.get_path("/metrics").await.text;
            let open = (
                metric(&metrics, "shoal_watch_streams"),
                metric(&metrics, "shoal_log_tail_streams"),
            );
            if open == expected {
                Ok(())
            } else {
                Err(format!("(watch streams, tail streams) = {open:?}"))
            }
        },
    )
    .await;
}

/// A KV watch and a live log tail are streams too: over HTTP/2 a client
/// that stops reading them stalls only its stream (flow control), and
/// after `--write-timeout-ms` with nothing taken the node ends them and
/// lets their watcher and search loop go.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_and_a_log_tail_stalled_over_http2_are_let_go_after_the_write_timeout() {
    let node = Node::start_with(&["--write-timeout-ms", "1000"]).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an HTTP/2 client");
    let mut stalled = Vec::new();
    for path in ["/v1/watch?prefix=stall/", "/v1/logs/tail?stream=stall"] {
        let answer = h2.get(node.url(path)).send().await.expect(path);
        assert_eq!(answer.status().as_u16(), 200, "{path}");
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        stalled.push(answer);
    }
    wait_watch_and_tail_streams(&node, (1.0, 1.0)).await;

    // 12 MB of changes in 24 revisions (fewer than the watcher's buffer
    // holds, so it never falls behind) and 12 MB of log records: more than
    // an HTTP/2 stream's window and the node's buffers behind it.
    let value = vec![b'v'; 512 << 10];
    for i in 0..24 {
        node.put(&format!("stall/{i:02}"), &value).await;
    }
    let record = |i: usize| json!({"message": format!("{i:05} {}", "r".repeat(8 << 10))});
    for batch in 0..15 {
        let records: Vec<_> = (0..100).map(|i| record(batch * 100 + i)).collect();
        node.ingest_records("stall", &records).await;
    }

    wait_watch_and_tail_streams(&node, (0.0, 0.0)).await;
    drop(stalled);
}
