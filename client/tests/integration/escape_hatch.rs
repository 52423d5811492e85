//! The escape hatch for endpoints without a typed call (`request_json`,
//! `request_events`) and the raw envelope of received messages.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use shoal_client::{Method, PublishOptions, SubscribeOptions};

use crate::common::{client_for, dev_node, within};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn request_json_reaches_any_endpoint() {
    let node = dev_node().await;
    let client = client_for([&node]);
    client.put("hatch/a b", "1").await.expect("put");

    let status = client
        .request_json(Method::GET, "/v1/status", &[], None)
        .await
        .expect("status");
    assert!(
        status["revision"].as_u64().is_some_and(|r| r >= 1),
        "{status}"
    );

    // Query parameters are percent-encoded.
    let listed = client
        .request_json(Method::GET, "/v1/kv", &[("prefix", "hatch/a b")], None)
        .await
        .expect("list");
    assert_eq!(listed["kvs"][0]["key"], "hatch/a b", "{listed}");

    let lease = client
        .request_json(
            Method::POST,
            "/v1/leases",
            &[],
            Some(&json!({"ttl_seconds": 30})),
        )
        .await
        .expect("grant");
    assert_eq!(lease["ttl_seconds"], 30, "{lease}");

    // Errors are the usual typed errors.
    let error = client
        .request_json(Method::GET, "/v1/leases/not-a-number", &[], None)
        .await
        .expect_err("a bad lease id is refused");
    assert_eq!(error.status(), Some(400), "{error}");
}

#[tokio::test]
async fn request_events_and_envelopes() {
    let node = dev_node().await;
    let client = client_for([&node]);

    let mut events = client
        .request_events("/v1/subscribe", &[("pattern", "hatch.*")])
        .await
        .expect("open the stream");
    let first = within(T, "subscribed", events.next())
        .await
        .expect("read")
        .expect("an event");
    assert_eq!(first.event, "subscribed", "{first:?}");

    let mut typed = client
        .subscribe("hatch.*", &SubscribeOptions::default())
        .await
        .expect("subscribe");
    let options = PublishOptions {
        content_type: Some("text/plain".into()),
        ..PublishOptions::default()
    };
    client
        .publish_with("hatch.x", "hi", &options)
        .await
        .expect("publish");

    let raw = loop {
        let event = within(T, "a message", events.next())
            .await
            .expect("read")
            .expect("an event");
        if event.event == "message" {
            break event;
        }
    };
    let raw: Value = serde_json::from_str(&raw.data).expect("JSON envelope");
    assert_eq!(
        (raw["topic"].as_str(), raw["data"].as_str()),
        (Some("hatch.x"), Some("hi"))
    );

    let message = within(T, "a typed message", typed.next())
        .await
        .expect("a message")
        .expect("no error");
    let envelope: Value = serde_json::from_str(message.envelope()).expect("JSON envelope");
    assert_eq!(envelope, raw, "the envelope is kept as the node sent it");
    assert!(envelope.get("specversion").is_some(), "{envelope}");
}
