//! What is indexed: log records and spans, and how loosely shaped JSON from
//! applications and shippers (Shoal's own API, Elasticsearch `_bulk`
//! documents) becomes one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::SearchError;

/// Largest message (log body or span name) kept, in bytes; longer ones are cut.
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Largest JSON attributes object per record, in bytes.
pub const MAX_ATTRIBUTES_BYTES: usize = 64 << 10;
/// Stream names: 1..=64 of `[a-z0-9._-]`, not starting with `.` or `_`.
pub const MAX_STREAM_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Log,
    Span,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Span => "span",
        }
    }
}

/// The span-only part of a record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanInfo {
    pub parent_span_id: String,
    /// server, client, producer, consumer, internal or unspecified.
    pub span_kind: String,
    pub duration_nanos: u64,
    /// unset, ok or error.
    pub status: String,
    pub status_message: String,
    /// Span events as a JSON array (stored, not indexed).
    pub events: String,
}

/// One log record or span, as stored in the WAL and indexed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kind: Kind,
    /// Unix time in nanoseconds (a span's start).
    pub ts_nanos: i64,
    /// trace, debug, info, warn, error or fatal (lowercase; free text is kept as given).
    pub level: String,
    pub service: String,
    /// Log body, or span name.
    pub message: String,
    /// Lowercase hex, or empty.
    pub trace_id: String,
    pub span_id: String,
    /// A JSON object, as text.
    pub attributes: String,
    pub span: Option<SpanInfo>,
}

/// Check a stream name.
pub fn validate_stream(name: &str) -> Result<(), SearchError> {
    let bad = |why: &str| {
        Err(SearchError::InvalidStream(format!(
            "stream name {name:?} {why}"
        )))
    };
    if name.is_empty() || name.len() > MAX_STREAM_BYTES {
        return bad(&format!("must be 1 to {MAX_STREAM_BYTES} bytes"));
    }
    if name.starts_with('.') || name.starts_with('_') || name.starts_with('-') {
        return bad("must not start with '.', '_' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may hold only a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

/// Map free-form severities (`WARNING`, `Err`, syslog numbers...) to the six levels.
pub fn normalize_level(raw: &str) -> String {
    let lower = raw.trim().to_ascii_lowercase();
    let level = match lower.as_str() {
        "trace" | "finest" | "verbose" => "trace",
        "debug" | "fine" | "finer" | "dbg" | "7" => "debug",
        "info" | "information" | "informational" | "notice" | "5" | "6" | "" => "info",
        "warn" | "warning" | "4" => "warn",
        "error" | "err" | "severe" | "3" => "error",
        "fatal" | "critical" | "crit" | "alert" | "emerg" | "emergency" | "panic" | "0" | "1"
        | "2" => "fatal",
        _ => return truncate(lower, 32),
    };
    level.to_string()
}

/// Cut a string to at most `max` bytes on a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Why a log record, a timestamp or an id was refused. The text says what
/// and is what the client gets back as the record's rejection reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRecord(String);

/// Lowercase hex id of 1..=32 hex digits, or an error.
pub fn normalize_hex_id(raw: &str, what: &str) -> Result<String, InvalidRecord> {
    let id = raw.trim().to_ascii_lowercase();
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(InvalidRecord(format!(
            "{what} must be 1 to 32 hex digits, got {raw:?}"
        )));
    }
    Ok(id)
}

/// Parse a timestamp: RFC 3339 text, or a number of seconds, milliseconds,
/// microseconds or nanoseconds since the epoch (told apart by magnitude).
pub fn parse_timestamp(value: &Value) -> Result<i64, InvalidRecord> {
    match value {
        Value::String(text) => {
            // Integers first: through f64, nanoseconds would lose their last digits.
            if let Ok(int) = text.parse::<i64>() {
                return epoch_int_to_nanos(int);
            }
            if let Ok(number) = text.parse::<f64>() {
                return epoch_number_to_nanos(number);
            }
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| InvalidRecord(format!("timestamp {text:?} is not RFC 3339: {e}")))?
                .timestamp_nanos_opt()
                .ok_or_else(|| InvalidRecord(format!("timestamp {text:?} is out of range")))
        }
        Value::Number(number) => match number.as_i64() {
            Some(int) => epoch_int_to_nanos(int),
            None => number.as_f64().map_or(
                Err(InvalidRecord("timestamp is not a number".into())),
                epoch_number_to_nanos,
            ),
        },
        other => Err(InvalidRecord(format!(
            "timestamp must be a string or a number, got {other}"
        ))),
    }
}

fn epoch_int_to_nanos(value: i64) -> Result<i64, InvalidRecord> {
    let abs = value.unsigned_abs();
    let nanos = if abs < 100_000_000_000 {
        value.checked_mul(1_000_000_000)
    } else if abs < 100_000_000_000_000 {
        value.checked_mul(1_000_000)
    } else if abs < 100_000_000_000_000_000 {
        value.checked_mul(1_000)
    } else {
        Some(value)
    };
    nanos
        .filter(|n| *n > 0)
        .ok_or_else(|| InvalidRecord(format!("timestamp {value} is out of range")))
}

fn epoch_number_to_nanos(value: f64) -> Result<i64, InvalidRecord> {
    if !value.is_finite() || value <= 0.0 {
        return Err(InvalidRecord(format!("timestamp {value} is out of range")));
    }
    if value.fract() == 0.0 && value < 9.2e18 {
        return epoch_int_to_nanos(value as i64);
    }
    // Fractional: seconds (or milliseconds) with a fraction.
    let nanos = if value < 1e11 {
        value * 1e9
    } else {
        value * 1e6
    };
    if nanos >= 9.2e18 {
        return Err(InvalidRecord(format!("timestamp {value} is out of range")));
    }
    Ok(nanos as i64)
}

/// Now, in Unix nanoseconds.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// RFC 3339 text of a Unix-nanosecond time, UTC, with nanoseconds.
pub fn format_nanos(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Field names read from a JSON document, first match wins. Everything else
/// in the document becomes an attribute.
const TIMESTAMP_FIELDS: &[&str] = &["timestamp", "@timestamp", "ts", "time", "date"];
const LEVEL_FIELDS: &[&str] = &[
    "level",
    "severity",
    "log.level",
    "severity_text",
    "loglevel",
    "lvl",
];
const SERVICE_FIELDS: &[&str] = &["service", "service.name", "app", "application"];
const MESSAGE_FIELDS: &[&str] = &["message", "msg", "body", "log", "text"];
const TRACE_FIELDS: &[&str] = &["trace_id", "traceId", "trace.id", "traceid"];
const SPAN_FIELDS: &[&str] = &["span_id", "spanId", "span.id", "spanid"];

fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// Take the first present scalar field (dotted names are also looked up
/// nested, as ECS documents write `{"log": {"level": "info"}}`); objects and
/// arrays stay attributes.
fn take_field(doc: &mut Map<String, Value>, names: &[&str]) -> Option<Value> {
    for name in names {
        if doc.get(*name).is_some_and(is_scalar) {
            return doc.remove(*name);
        }
        if let Some((outer, inner)) = name.split_once('.') {
            if let Some(Value::Object(nested)) = doc.get_mut(outer) {
                if nested.get(inner).is_some_and(is_scalar) {
                    let value = nested.remove(inner);
                    if nested.is_empty() {
                        doc.remove(outer);
                    }
                    return value;
                }
            }
        }
    }
    None
}

fn as_text(value: Value) -> String {
    match value {
        Value::String(text) => text,
        other => other.to_string(),
    }
}

/// Build a log record from a JSON object. `default_service` is used when the
/// document names none; a missing timestamp means "now".
pub fn log_from_json(value: Value, default_service: &str) -> Result<Record, InvalidRecord> {
    let Value::Object(mut doc) = value else {
        return Err(InvalidRecord("a record must be a JSON object".into()));
    };
    let ts_nanos = match take_field(&mut doc, TIMESTAMP_FIELDS) {
        Some(value) => parse_timestamp(&value)?,
        None => now_nanos(),
    };
    let level = take_field(&mut doc, LEVEL_FIELDS)
        .map(as_text)
        .unwrap_or_default();
    let service = take_field(&mut doc, SERVICE_FIELDS)
        .map(as_text)
        .unwrap_or_else(|| default_service.to_string());
    let message = take_field(&mut doc, MESSAGE_FIELDS)
        .map(as_text)
        .unwrap_or_default();
    let trace_id = match take_field(&mut doc, TRACE_FIELDS) {
        Some(value) => normalize_hex_id(&as_text(value), "trace_id")?,
        None => String::new(),
    };
    let span_id = match take_field(&mut doc, SPAN_FIELDS) {
        Some(value) => normalize_hex_id(&as_text(value), "span_id")?,
        None => String::new(),
    };
    // Explicit attributes merge with the remaining top-level fields.
    let mut attributes = match doc.remove("attributes") {
        Some(Value::Object(map)) => map,
        Some(Value::Null) | None => Map::new(),
        Some(other) => {
            return Err(InvalidRecord(format!(
                "attributes must be a JSON object, got {other}"
            )))
        }
    };
    attributes.extend(doc);
    let attributes = Value::Object(attributes).to_string();
    if attributes.len() > MAX_ATTRIBUTES_BYTES {
        return Err(InvalidRecord(format!(
            "attributes are {} bytes; the limit is {MAX_ATTRIBUTES_BYTES}",
            attributes.len()
        )));
    }
    Ok(Record {
        kind: Kind::Log,
        ts_nanos,
        level: normalize_level(&level),
        service: truncate(service, 256),
        message: truncate(message, MAX_MESSAGE_BYTES),
        trace_id,
        span_id,
        attributes,
        span: None,
    })
}

/// A plain log record for the unit tests.
#[cfg(test)]
pub(crate) fn test_log(ts_nanos: i64, message: &str) -> Record {
    Record {
        ts_nanos,
        ..log_from_line(message, "svc")
    }
}

/// Build a log record from a plain text line.
pub fn log_from_line(line: &str, service: &str) -> Record {
    Record {
        kind: Kind::Log,
        ts_nanos: now_nanos(),
        level: "info".into(),
        service: service.to_string(),
        message: truncate(line.to_string(), MAX_MESSAGE_BYTES),
        trace_id: String::new(),
        span_id: String::new(),
        attributes: "{}".into(),
        span: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_of_every_shape() {
        let expected = 1_700_000_000_000_000_000;
        for value in [
            json!(1_700_000_000),
            json!(1_700_000_000_000i64),
            json!(1_700_000_000_000_000i64),
            json!(1_700_000_000_000_000_000i64),
            json!("2023-11-14T22:13:20Z"),
            json!("2023-11-14T23:13:20+01:00"),
            json!("1700000000000"),
            json!("1700000000000000000"),
        ] {
            assert_eq!(parse_timestamp(&value), Ok(expected), "{value}");
        }
        for value in [
            json!("1700000000123456789"),
            json!(1_700_000_000_123_456_789i64),
        ] {
            assert_eq!(
                parse_timestamp(&value),
                Ok(1_700_000_000_123_456_789),
                "{value}"
            );
        }
        assert_eq!(
            parse_timestamp(&json!(1_700_000_000.5)),
            Ok(expected + 500_000_000)
        );
        assert_eq!(
            parse_timestamp(&json!("1700000000.5")),
            Ok(expected + 500_000_000)
        );
        assert!(parse_timestamp(&json!("yesterday")).is_err());
        assert!(parse_timestamp(&json!(-5)).is_err());
        assert!(parse_timestamp(&json!(true)).is_err());
    }

    #[test]
    fn loose_documents_become_records() {
        let record = log_from_json(
            json!({"@timestamp": "2023-11-14T22:13:20Z", "log": {"level": "WARNING"}, "message": "disk low",
                   "service": {"name": "api"}, "trace.id": "ABCDEF", "host": "h1", "attributes": {"free": 3}}),
            "default",
        )
        .unwrap();
        assert_eq!(record.level, "warn");
        assert_eq!(record.message, "disk low");
        assert_eq!(record.service, "api");
        assert_eq!(record.trace_id, "abcdef");
        let attributes: Value = serde_json::from_str(&record.attributes).unwrap();
        assert_eq!(attributes, json!({"free": 3, "host": "h1"}));
        assert!(log_from_json(json!([1]), "x").is_err());
        assert!(log_from_json(json!({"trace_id": "xyz"}), "x").is_err());
        assert!(log_from_json(json!({"attributes": 5}), "x").is_err());
    }

    #[test]
    fn stream_names() {
        for good in ["orders-service", "a", "app.v2_x"] {
            assert!(validate_stream(good).is_ok(), "{good}");
        }
        for bad in ["", "Orders", "_x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_stream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn levels() {
        assert_eq!(normalize_level("WARNING"), "warn");
        assert_eq!(normalize_level("Err"), "error");
        assert_eq!(normalize_level(""), "info");
        assert_eq!(normalize_level("Custom"), "custom");
    }
}
