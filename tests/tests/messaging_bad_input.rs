//! Messaging, malformed input: every malformed publish, subscribe and
//! WebSocket request gets a precise error, and the node keeps working.

use shoal_tests::messaging_support::*;
use shoal_tests::ws::Frame;
use shoal_tests::*;

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
