//! Helpers shared by the messaging tests (`tests/messaging_*.rs`).

use std::time::Duration;

use crate::{json, text, Node, StatusCode, Value};

/// Time limit for messages to arrive.
pub const T: Duration = Duration::from_secs(10);

/// A bounded check that nothing more arrives (duplicates, stray messages).
pub const QUIET: Duration = Duration::from_millis(300);

/// A `/v1/publish` entry with an explicit id and text data.
pub fn entry(id: &str, topic: &str, data: &str) -> Value {
    json!({"id": id, "topic": topic, "data": data})
}

/// `POST /v1/publish`, asserting 202; returns the receipt.
pub async fn publish_batch(node: &Node, messages: Vec<Value>) -> Value {
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

pub fn ids_of(envelopes: &[Value]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| text(e, "/id").to_string())
        .collect()
}

/// `00-<32 lowercase hex>-<16 lowercase hex>-<2 hex>`, trace and span not zero.
pub fn is_valid_traceparent(value: &str) -> bool {
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
