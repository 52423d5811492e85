//! JSON shapes of the API. Values are base64 in JSON.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use shoal_storage::kv::{ChangeBatch, Event, EventType, KeyValue};

use super::error::ApiError;

pub fn kv_json(kv: &KeyValue, with_value: bool) -> Value {
    let mut out = json!({
        "key": kv.key,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    });
    if with_value {
        out["value"] = json!(STANDARD.encode(&kv.value));
    }
    out
}

pub fn event_json(event: &Event) -> Value {
    match event.kind {
        EventType::Put => json!({"type": "put", "kv": kv_json(&event.kv, true)}),
        EventType::Delete => json!({"type": "delete", "kv": kv_json(&event.kv, false)}),
    }
}

pub fn batch_json(batch: &ChangeBatch) -> Value {
    json!({"revision": batch.revision, "events": batch.events.iter().map(event_json).collect::<Vec<_>>()})
}

pub fn decode_value(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    STANDARD
        .decode(text)
        .map_err(|e| ApiError::bad_request(format!("{field} is not valid base64: {e}")))
}
