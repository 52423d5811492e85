//! Parsing of the log endpoints' input: ingest bodies (NDJSON, JSON, plain
//! text; compressed or not) and query parameters (times, durations, search
//! requests).

use std::collections::{BTreeMap, HashMap};

use axum::http::{header, HeaderMap, StatusCode};
use serde_json::Value;
use shoal_search::record::{self};
use shoal_search::{Cursor, KindFilter, Record, SearchOrder, SearchRequest};

use crate::api::error::{ApiError, ApiResult, ErrorCode};
use crate::api::extract::Params;

/// Records in one ingest request.
pub const MAX_RECORDS_PER_REQUEST: usize = 100_000;
/// Default page size of a search.
pub const DEFAULT_LIMIT: u64 = 100;

pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The body, gunzipped when it says so (bounded).
pub fn decompressed(headers: &HeaderMap, body: &[u8], max_bytes: usize) -> ApiResult<Vec<u8>> {
    match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        None | Some("") | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => crate::api::extract::inflate(flate2::read::GzDecoder::new(body), max_bytes),
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedEncoding,
            format!("content encoding {other:?}: send gzip or none"),
        )),
    }
}

pub type Parsed = (Vec<(usize, Record)>, Vec<(usize, String)>);

/// Records with their position in the body, and per-record errors.
pub fn parse_records(body: &[u8], plain: bool, service: &str) -> ApiResult<Parsed> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
    let mut records = Vec::new();
    let mut errors = Vec::new();
    if text.trim_start().starts_with('[') && !plain {
        let values: Vec<Value> = serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request(format!(
                "the body starts with '[' but is not a JSON array: {e}"
            ))
        })?;
        check_count(values.len())?;
        for (position, value) in values.into_iter().enumerate() {
            match record::log_from_json(value, service) {
                Ok(record) => records.push((position, record)),
                Err(e) => errors.push((position, e.to_string())),
            }
        }
    } else {
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        check_count(lines.len())?;
        for (position, line) in lines.into_iter().enumerate() {
            if plain {
                records.push((position, record::log_from_line(line, service)));
                continue;
            }
            let parsed = serde_json::from_str::<Value>(line)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|value| record::log_from_json(value, service).map_err(|e| e.to_string()));
            match parsed {
                Ok(record) => records.push((position, record)),
                Err(e) => errors.push((position, e)),
            }
        }
    }
    if records.is_empty() && errors.is_empty() {
        return Err(ApiError::bad_request("the body holds no records"));
    }
    Ok((records, errors))
}

pub fn check_count(count: usize) -> ApiResult<()> {
    if count > MAX_RECORDS_PER_REQUEST {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooManyRecords,
            format!("{count} records in one request; the limit is {MAX_RECORDS_PER_REQUEST}"),
        ));
    }
    Ok(())
}

/// A time: RFC 3339, Unix seconds/ms/ns, `now`, or a duration ago (`15m`, `2h`, `7d`).
pub fn parse_time(text: &str, now: i64) -> ApiResult<i64> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Ok(ago) = parse_duration(text) {
        if text.ends_with(|c: char| c.is_ascii_alphabetic()) {
            return Ok(now.saturating_sub(ago));
        }
    }
    record::parse_timestamp(&Value::String(text.to_string())).map_err(|e| {
        ApiError::bad_request(format!(
            "bad time {text:?}: {e}; use RFC 3339, epoch, or a duration ago like 15m"
        ))
    })
}

/// A duration in nanoseconds: a number with a unit (ns, us, ms, s, m, h, d);
/// a bare number is nanoseconds.
pub fn parse_duration(text: &str) -> ApiResult<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        ApiError::bad_request(format!(
            "bad duration {text:?}: use e.g. 250ms, 15m, 2h, 7d"
        ))
    };
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        _ => return Err(bad()),
    };
    let nanos = number * scale;
    if !nanos.is_finite() || !(0.0..=9.0e18).contains(&nanos) {
        return Err(bad());
    }
    Ok(nanos as i64)
}

/// The search filters shared by search, aggregate, tail and the CLI.
pub fn search_request(params: &Params, now: i64) -> ApiResult<SearchRequest> {
    let kind = match params.string("kind") {
        None | Some("log") | Some("logs") => KindFilter::Log,
        Some("span") | Some("spans") => KindFilter::Span,
        Some("any") => KindFilter::Any,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind must be log, span or any, got {other:?}"
            )))
        }
    };
    let order = match params.string("order") {
        None | Some("newest") | Some("desc") => SearchOrder::Newest,
        Some("oldest") | Some("asc") => SearchOrder::Oldest,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order must be newest or oldest, got {other:?}"
            )))
        }
    };
    let duration = |name: &str| -> ApiResult<Option<u64>> {
        params
            .string(name)
            .map(|text| parse_duration(text).map(|d| d as u64))
            .transpose()
    };
    let trace_ids = params
        .list("trace_id")
        .iter()
        .map(|id| {
            record::normalize_hex_id(id, "trace_id")
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let levels = params
        .list("level")
        .iter()
        .map(|l| record::normalize_level(l))
        .collect();
    let mut names = params.list("operation");
    names.extend(params.list("name"));
    Ok(SearchRequest {
        query: params.string("q").unwrap_or_default().to_string(),
        streams: params.list("stream"),
        kind,
        since: params
            .string("since")
            .map(|t| parse_time(t, now))
            .transpose()?,
        until: params
            .string("until")
            .map(|t| parse_time(t, now))
            .transpose()?,
        levels,
        services: params.list("service"),
        trace_ids,
        names,
        statuses: params.list("status"),
        min_duration: duration("min_duration")?,
        max_duration: duration("max_duration")?,
        order,
        limit: params.limit(DEFAULT_LIMIT, shoal_search::MAX_LIMIT as u64)?,
        after: params
            .string("cursor")
            .map(Cursor::decode)
            .transpose()
            .map_err(ApiError::from)?,
        seq_after: BTreeMap::new(),
    })
}

/// Query parameters, or the same names in a JSON object (POST).
pub fn params_of(params: Params, body: &[u8]) -> ApiResult<Params> {
    if body.is_empty() {
        return Ok(params);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request("the JSON body must be an object"));
    };
    let mut merged: HashMap<String, String> = HashMap::new();
    for (name, value) in map {
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(ApiError::bad_request(format!(
                        "{name}: list items must be strings, got {other}"
                    ))),
                })
                .collect::<ApiResult<Vec<_>>>()?
                .join(","),
            Value::Object(_) => {
                return Err(ApiError::bad_request(format!(
                    "{name} must not be an object"
                )))
            }
        };
        merged.insert(name, text);
    }
    Ok(params.merged(merged))
}
