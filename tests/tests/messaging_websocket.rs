//! Messaging, publishing over a WebSocket: the publishing stream feeds a raw
//! WebSocket subscriber in order, and its close reasons fit in a close frame.

use std::collections::BTreeSet;

use shoal_tests::messaging_support::*;
use shoal_tests::ws::{Delivery, Frame};
use shoal_tests::*;

// ----- 5. WebSocket publishing ------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn websocket_publishing_stream_feeds_a_raw_websocket_subscriber_in_order() {
    let node = Node::start().await;
    let mut raw = node
        .subscribe_ws(&[("pattern", "stream.bin"), ("format", "raw")])
        .await;
    // A second raw subscriber: the two share each payload's bytes.
    let mut second_raw = node
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
    assert_eq!(
        second_raw.payloads(payloads.len(), T).await,
        payloads,
        "second raw subscriber"
    );
    assert_eq!(
        second_raw.expect(T).await,
        Delivery::Payload(b"as text".to_vec())
    );
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

// ----- bugs found while writing these tests --------------------------------------

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

/// A subscriber's socket carries the node's messages; what the client may
/// send on it is small (pings, a close). A large frame ends the socket
/// before the node buffers it, and other subscribers are untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_sending_a_large_frame_is_cut_off() {
    let node = Node::start().await;
    let mut other = node.subscribe_ws(&[("pattern", "big.>")]).await;
    let mut abuser = node
        .try_subscribe_ws(&[("pattern", "big.>")])
        .await
        .unwrap_or_else(|r| panic!("refused: {}", r.describe()));
    // The node may close the connection while the frame is still being
    // sent (under load the client sees the reset); either way it must end.
    let _ = abuser.try_send_binary(&vec![7u8; 1 << 20]).await;
    match abuser.next_frame(T).await {
        Some(Frame::Close(_) | Frame::Ended(_)) => {}
        other => panic!("expected the socket to end, got {other:?}"),
    }
    node.publish("big.one", b"1").await;
    let delivered = other.messages(1, T).await;
    assert_eq!(delivered[0]["topic"], "big.one", "{delivered:?}");
}
