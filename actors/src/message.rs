//! A message and its CloudEvents-style JSON envelope.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::queue::{BudgetCharge, BufferBudget};

/// A message as it travels between nodes and into outboxes. The envelope
/// attributes follow CloudEvents (id, source, type, time, subject);
/// `traceparent` is the W3C trace context carried from the publisher.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub topic: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339 time the message was published.
    pub time: String,
    pub subject: Option<String>,
    pub content_type: String,
    pub traceparent: Option<String>,
    /// Free-form headers (CloudEvents extension attributes), in order.
    pub headers: Vec<(String, String)>,
    /// Bytes, not a sequence of numbers: bincode then copies them whole.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Message {
    /// About the memory the message takes: its payload, its strings and
    /// a fixed allowance for the rest.
    pub fn approx_bytes(&self) -> u64 {
        let strings = [&self.id, &self.topic, &self.source, &self.kind, &self.time]
            .iter()
            .map(|s| s.len())
            .sum::<usize>()
            + self.subject.as_ref().map_or(0, String::len)
            + self.content_type.len()
            + self.traceparent.as_ref().map_or(0, String::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        (self.data.len() + strings + 256) as u64
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// True when the payload is declared as JSON.
    pub fn is_json(&self) -> bool {
        let essence = self.content_type.split(';').next().unwrap_or("").trim();
        essence == "application/json" || essence.ends_with("+json")
    }

    /// The payload parsed as JSON, if it is declared and well-formed JSON.
    pub fn json_data(&self) -> Option<Value> {
        if self.is_json() {
            serde_json::from_slice(&self.data).ok()
        } else {
            None
        }
    }

    /// The CloudEvents structured-mode JSON of this message. JSON payloads
    /// are embedded as `data`, UTF-8 text as a string, anything else as
    /// `data_base64`.
    pub fn envelope(&self) -> Value {
        let mut event = Map::new();
        event.insert("specversion".into(), json!("1.0"));
        event.insert("id".into(), json!(self.id));
        event.insert("topic".into(), json!(self.topic));
        event.insert("source".into(), json!(self.source));
        event.insert("type".into(), json!(self.kind));
        event.insert("time".into(), json!(self.time));
        if let Some(subject) = &self.subject {
            event.insert("subject".into(), json!(subject));
        }
        event.insert("datacontenttype".into(), json!(self.content_type));
        if let Some(traceparent) = &self.traceparent {
            event.insert("traceparent".into(), json!(traceparent));
        }
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        event.insert("headers".into(), Value::Object(headers));
        match (self.json_data(), std::str::from_utf8(&self.data)) {
            (Some(value), _) => {
                event.insert("data".into(), value);
            }
            (None, Ok(text)) => {
                event.insert("data".into(), json!(text));
            }
            (None, Err(_)) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(&self.data);
                event.insert("data_base64".into(), json!(encoded));
            }
        }
        Value::Object(event)
    }
}

/// A message shared by every subscriber it is delivered to; its JSON
/// envelope, and its payload as shared bytes for raw frames, are made
/// once, by the first subscriber that needs them.
pub struct Shared {
    pub message: Message,
    rendered: OnceLock<String>,
    payload: OnceLock<Bytes>,
    /// Its bytes in the node's subscriber buffer budget, once it is queued.
    charge: OnceLock<BudgetCharge>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(message: Message) -> Shared {
        Shared {
            message,
            rendered: OnceLock::new(),
            payload: OnceLock::new(),
            charge: OnceLock::new(),
        }
    }

    /// Charge the message to `budget` (the first time only: every queue
    /// holding it shares it); given back when the last holder drops it.
    pub fn charge_to(&self, budget: &Arc<BufferBudget>) {
        self.charge
            .get_or_init(|| BudgetCharge::new(budget, self.approx_bytes()));
    }

    /// The message's bytes plus the envelope it renders once for
    /// subscribers (about as large again as its payload). Raw subscribers
    /// share one copy of the payload instead; a message that has both
    /// kinds of subscribers holds one payload more than this says.
    pub fn approx_bytes(&self) -> u64 {
        self.message.approx_bytes() + self.message.data.len() as u64
    }

    pub fn envelope_json(&self) -> &str {
        self.rendered
            .get_or_init(|| self.message.envelope().to_string())
    }

    /// The payload as bytes every raw frame of it shares (copied once, not
    /// once per subscriber).
    pub fn payload_bytes(&self) -> Bytes {
        self.payload
            .get_or_init(|| Bytes::copy_from_slice(&self.message.data))
            .clone()
    }
}

/// Current time as RFC 3339 with milliseconds, UTC.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_millis() as u64)
}

/// Milliseconds since the epoch as RFC 3339 UTC (civil-from-days, Howard Hinnant).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// A new random message id: 32 hex digits.
pub fn new_id() -> String {
    let mut id = String::with_capacity(32);
    push_hex(&mut id, &rand::random::<[u8; 16]>());
    id
}

/// A new W3C traceparent (a fresh trace and span, sampled).
pub fn new_traceparent() -> String {
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    push_hex(&mut traceparent, &rand::random::<[u8; 16]>());
    traceparent.push('-');
    push_hex(&mut traceparent, &rand::random::<[u8; 8]>());
    traceparent.push_str("-01");
    traceparent
}

/// Lower-case hex, without `format!` (this runs for every published message).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_share_one_copy_of_the_payload() {
        let shared = Shared::new(Message {
            data: vec![7; 4096],
            ..Message::default()
        });
        let first = shared.payload_bytes();
        let second = shared.payload_bytes();
        assert_eq!(&first[..], &shared.message.data[..]);
        assert_eq!(
            first.as_ptr(),
            second.as_ptr(),
            "the payload was copied again"
        );
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn envelope_embeds_json_text_or_base64() {
        let mut message = Message {
            content_type: "application/json".into(),
            data: br#"{"a":1}"#.to_vec(),
            ..Default::default()
        };
        assert_eq!(message.envelope()["data"], json!({"a": 1}));
        message.content_type = "text/plain".into();
        assert_eq!(message.envelope()["data"], json!(r#"{"a":1}"#));
        message.data = vec![0xff, 0x00];
        assert_eq!(message.envelope()["data_base64"], json!("/wA="));
    }
}
