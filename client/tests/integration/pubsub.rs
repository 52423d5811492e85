//! Publish and subscribe.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use shoal_client::{Message, OutgoingMessage, PublishOptions, SubscribeOptions, Subscription};

use crate::common::{client_for, dev_node, within};

#[tokio::test]
async fn publish_subscribe_roundtrip() {
    let node = dev_node().await;
    let client = client_for([&node]);
    let mut subscription = client
        .subscribe("orders.*", &SubscribeOptions::default())
        .await
        .expect("subscribe");

    let options = PublishOptions {
        content_type: Some("text/plain".into()),
        headers: vec![("region".into(), "eu".into())],
        subject: Some("order-42".into()),
        ..PublishOptions::default()
    };
    let receipt = client
        .publish_with("orders.created", "hello", &options)
        .await
        .expect("publish");
    assert_eq!(receipt.local, 1);
    client
        .publish_json("orders.paid", &json!({"order": 42}))
        .await
        .expect("publish json");
    client
        .publish("other.topic", "not for us")
        .await
        .expect("publish");
    let batch = client
        .publish_batch(&[
            OutgoingMessage::bytes("orders.raw", [0u8, 159, 146, 150]),
            OutgoingMessage::text("orders.note", "a note").header("k", "v"),
            OutgoingMessage::json("orders.quoted", &"a JSON string").expect("json"),
        ])
        .await
        .expect("publish batch");
    assert_eq!(batch.ids.len(), 3);

    let first = next(&mut subscription).await;
    assert_eq!(first.id, receipt.id);
    assert_eq!(
        (first.topic.as_str(), first.text()),
        ("orders.created", Some("hello"))
    );
    assert_eq!(first.headers.get("region").map(String::as_str), Some("eu"));
    assert_eq!(first.subject.as_deref(), Some("order-42"));
    let second = next(&mut subscription).await;
    assert_eq!(
        second.json::<serde_json::Value>().expect("json"),
        json!({"order": 42})
    );
    let raw = next(&mut subscription).await;
    assert_eq!(raw.payload, [0u8, 159, 146, 150]);
    assert_eq!(raw.id, batch.ids[0]);
    let note = next(&mut subscription).await;
    assert_eq!(note.text(), Some("a note"));
    assert_eq!(note.headers.get("k").map(String::as_str), Some("v"));
    let quoted = next(&mut subscription).await;
    assert_eq!(quoted.json::<String>().expect("json"), "a JSON string");
}

#[tokio::test]
async fn queue_group_members_share_the_messages() {
    let node = dev_node().await;
    let client = client_for([&node]);
    let options = SubscribeOptions {
        queue: Some("workers".into()),
        ..SubscribeOptions::default()
    };
    let mut a = client
        .subscribe("jobs.>", &options)
        .await
        .expect("subscribe");
    let mut b = client
        .subscribe("jobs.>", &options)
        .await
        .expect("subscribe");
    for i in 0..20 {
        client
            .publish(&format!("jobs.run.{i}"), format!("{i}"))
            .await
            .expect("publish");
    }
    let mut seen = BTreeSet::new();
    while seen.len() < 20 {
        let message = within(Duration::from_secs(10), "job", async {
            tokio::select! {
                m = a.next() => m,
                m = b.next() => m,
            }
        })
        .await
        .expect("ended")
        .expect("error");
        assert!(seen.insert(message.id), "a job was delivered twice");
    }
}

#[tokio::test]
async fn a_bad_pattern_is_refused_up_front() {
    let node = dev_node().await;
    let client = client_for([&node]);
    let error = client
        .subscribe("orders..x", &SubscribeOptions::default())
        .await
        .expect_err("bad pattern");
    assert_eq!(error.status(), Some(400), "{error}");
}

async fn next(subscription: &mut Subscription) -> Message {
    within(Duration::from_secs(10), "message", subscription.next())
        .await
        .expect("subscription ended")
        .expect("subscription error")
}
