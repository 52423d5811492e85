//! JSON shapes of the API shared by several endpoints. Values are base64 in
//! JSON.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use shoal_storage::kv::{ChangeBatch, Event, EventType, KeyValue};
use utoipa::ToSchema;

use super::error::ApiError;

/// A key and its metadata. `value` is present when a value is returned (GET,
/// list without `keys_only`, txn get results, put events) and omitted in write
/// results, `keys_only` listings, compare_failed `current`, and delete events.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = KeyValue, example = json!({
    "key": "prod/payments/url",
    "value": "aHR0cDovL3g=",
    "create_revision": 4,
    "mod_revision": 9,
    "version": 3,
    "lease": 0
}))]
pub struct KeyValueJson {
    /// UTF-8, 1..1024 bytes, no control characters; `/`-separated by convention.
    #[schema(min_length = 1, max_length = 1024)]
    pub key: String,
    /// The value bytes, base64 (standard alphabet, with padding). Optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, content_encoding = "base64")]
    pub value: Option<String>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write (for a delete event: the deletion's revision).
    pub mod_revision: u64,
    /// Number of writes since creation (1 after creation).
    pub version: u64,
    /// Lease id the key is attached to; 0 for none.
    pub lease: u64,
}

impl KeyValueJson {
    /// The key's metadata, with its value (base64) if `with_value`.
    pub fn new(kv: &KeyValue, with_value: bool) -> KeyValueJson {
        KeyValueJson {
            key: kv.key.clone(),
            value: with_value.then(|| STANDARD.encode(&kv.value)),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// The kind of a change.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = EventKind)]
pub enum EventKindJson {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Event, example = json!({
    "type": "put",
    "kv": {
        "key": "prod/payments/url",
        "value": "aHR0cDovL3g=",
        "create_revision": 4,
        "mod_revision": 9,
        "version": 3,
        "lease": 0
    }
}))]
pub struct EventJson {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: EventKindJson,
    /// For `put`: the key after the write, with `value`. For `delete`: the
    /// key's metadata, without `value`.
    pub kv: KeyValueJson,
}

impl From<&Event> for EventJson {
    fn from(event: &Event) -> EventJson {
        match event.kind {
            EventType::Put => EventJson {
                kind: EventKindJson::Put,
                kv: KeyValueJson::new(&event.kv, true),
            },
            EventType::Delete => EventJson {
                kind: EventKindJson::Delete,
                kv: KeyValueJson::new(&event.kv, false),
            },
        }
    }
}

/// All matching changes of one revision (a transaction can change several
/// keys in one revision).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = ChangeBatch)]
pub struct ChangeBatchJson {
    /// The revision of these changes.
    pub revision: u64,
    pub events: Vec<EventJson>,
}

impl From<&ChangeBatch> for ChangeBatchJson {
    fn from(batch: &ChangeBatch) -> ChangeBatchJson {
        ChangeBatchJson {
            revision: batch.revision,
            events: batch.events.iter().map(EventJson::from).collect(),
        }
    }
}

/// A write's revision and how many keys it deleted.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"revision": 11, "deleted": 1}))]
pub struct DeleteResponse {
    /// The deletion's revision, or the current revision if nothing was deleted.
    pub revision: u64,
    /// Number of keys deleted.
    pub deleted: u64,
}

/// One Server-Sent Event: its `event` name, `id` and `data` (a JSON document
/// as text, described by the route). Documents `text/event-stream` answers;
/// the streams themselves are written with axum's SSE events.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct SseEvent {
    /// The event's name (e.g. `change`, `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub event: Option<String>,
    /// The event's id (e.g. the revision of a change batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub id: Option<String>,
    /// The event's data: a JSON document as text, described by the route.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub data: Option<String>,
    /// Reconnection delay in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub retry: Option<u64>,
}

impl From<SseEvent> for axum::response::sse::Event {
    fn from(event: SseEvent) -> axum::response::sse::Event {
        let mut out = axum::response::sse::Event::default();
        if let Some(name) = event.event {
            out = out.event(name);
        }
        if let Some(id) = event.id {
            out = out.id(id);
        }
        if let Some(data) = event.data {
            out = out.data(data);
        }
        if let Some(retry) = event.retry {
            out = out.retry(std::time::Duration::from_millis(retry));
        }
        out
    }
}

/// The key's metadata as JSON, with its value (base64) if `with_value`.
pub fn kv_json(kv: &KeyValue, with_value: bool) -> Value {
    serde_json::to_value(KeyValueJson::new(kv, with_value)).unwrap_or(Value::Null)
}

pub fn decode_value(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    STANDARD
        .decode(text)
        .map_err(|e| ApiError::bad_request(format!("{field} is not valid base64: {e}")))
}
