//! HTTP-level helpers: replies, error checks, base64 and JSON accessors.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

/// Standard base64 with padding, as the API uses for values in JSON.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64, panicking with the offending text if it is invalid.
pub fn unb64(text: &str) -> Vec<u8> {
    STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not valid base64 ({e}): {text:?}"))
}

/// Percent-encodes a key for use in a URL path: unreserved characters and `/`
/// stay as they are, every other byte is `%XX`.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &byte in key.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A fully read HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body parsed as JSON, or `Value::Null` if it was empty or not JSON.
    pub body: Value,
    /// The body as text (lossy), for messages and non-JSON endpoints.
    pub text: String,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        Reply::try_read(response)
            .await
            .unwrap_or_else(|e| panic!("reading the body of a {status} response failed: {e}"))
    }

    /// Like [`Reply::read`], returning an error if the body cannot be read
    /// (the connection broke or the request timed out).
    pub async fn try_read(response: reqwest::Response) -> Result<Reply, reqwest::Error> {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            headers,
            body,
            text,
        })
    }

    /// The `X-Shoal-Revision` header as a number, if present.
    pub fn revision_header(&self) -> Option<u64> {
        let value = self.headers.get("x-shoal-revision")?;
        let value = value.to_str().expect("X-Shoal-Revision is not ASCII");
        Some(
            value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("X-Shoal-Revision is not a number: {value:?}")),
        )
    }

    /// Asserts a 200 response and returns its JSON body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected 200, got {} with body {}",
            self.status,
            self.text
        );
        self.body
    }

    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        let mut text = self.text.clone();
        if text.len() > 500 {
            text.truncate(500);
            text.push_str("...");
        }
        format!("{} {}", self.status, text)
    }
}

/// Checks that `reply` is an error response with this status and error code:
/// a JSON body `{"error": {"code": CODE, "message": "<non-empty>"}}`.
/// Returns the body.
#[track_caller]
pub fn assert_error(reply: &Reply, status: u16, code: &str) -> Value {
    if let Err(problem) = error_matches(reply, &[(status, &[code])]) {
        panic!("{problem}");
    }
    reply.body.clone()
}

/// Checks that `reply` is a well-formed error matching one of `expected`
/// (a status and the codes allowed with it). `Err` describes the mismatch.
pub fn error_matches(reply: &Reply, expected: &[(u16, &[&str])]) -> Result<(), String> {
    let want = expected
        .iter()
        .map(|(status, codes)| format!("{status} {}", codes.join("|")))
        .collect::<Vec<_>>()
        .join(" or ");
    let status = reply.status.as_u16();
    let code = reply.body.pointer("/error/code").and_then(Value::as_str);
    let message = reply.body.pointer("/error/message").and_then(Value::as_str);
    let Some(code) = code else {
        return Err(format!(
            "expected {want}; body has no error.code: {}",
            reply.describe()
        ));
    };
    if message.is_none_or(|m| m.trim().is_empty()) {
        return Err(format!(
            "expected {want}; error.message is missing or empty: {}",
            reply.describe()
        ));
    }
    let content_type = reply
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.contains("json") {
        return Err(format!(
            "expected {want}; error has content-type {content_type:?}, not JSON: {}",
            reply.describe()
        ));
    }
    let matched = expected
        .iter()
        .any(|(s, codes)| *s == status && codes.contains(&code));
    if matched {
        Ok(())
    } else {
        Err(format!("expected {want}; got {}", reply.describe()))
    }
}

/// A detail field of an error body (`current`, `compact_revision`). The spec
/// says "the body also has"; this accepts it at the top level of the body or
/// inside the `error` object.
pub fn error_detail<'a>(body: &'a Value, field: &str) -> Option<&'a Value> {
    body.get(field)
        .or_else(|| body.get("error").and_then(|e| e.get(field)))
}

/// The unsigned number at a JSON pointer (e.g. `"/kv/mod_revision"`).
#[track_caller]
pub fn num(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("expected an unsigned number at {pointer} in {value}"))
}

/// Like [`num`], but `None` when the field is absent or null.
#[track_caller]
pub fn opt_num(value: &Value, pointer: &str) -> Option<u64> {
    match value.pointer(pointer) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .unwrap_or_else(|| panic!("expected an unsigned number at {pointer} in {value}")),
        ),
    }
}

/// The string at a JSON pointer.
#[track_caller]
pub fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected a string at {pointer} in {value}"))
}

/// The decoded `value` of a key/value object.
#[track_caller]
pub fn kv_value(kv: &Value) -> Vec<u8> {
    unb64(text(kv, "/value"))
}

/// The value of the first sample of a metric in Prometheus text: `name`
/// alone matches any labels, `name{labels}` those labels; absent: `None`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
}
