//! Helpers for the logs and traces API: ingest, search (waiting until
//! records are searchable, following cursors), live tail, OTLP/HTTP posts.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::http::Reply;
use crate::node::{open_event_stream, Node};
use crate::sse::WatchStream;
use crate::wait_for;

/// How long records may take to become searchable (the commit interval is
/// one second by default; a loaded test machine needs more).
pub const SEARCHABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Records as NDJSON, one JSON value per line.
pub fn ndjson(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// The `hits` array of a search answer.
#[track_caller]
pub fn hits_of(answer: &Value) -> Vec<Value> {
    answer["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("search answer without a hits array: {answer}"))
        .clone()
}

/// The `message` of each hit, in order.
pub fn messages(hits: &[Value]) -> Vec<String> {
    hits.iter()
        .map(|h| {
            h["message"]
                .as_str()
                .unwrap_or_else(|| panic!("hit without a message: {h}"))
                .to_string()
        })
        .collect()
}

/// `(key, value)` pairs as owned strings, for building queries.
fn owned(query: &[(&str, &str)]) -> Vec<(String, String)> {
    query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Node {
    /// `POST /v1/logs/{stream}` with a body and content type, as is.
    pub async fn ingest_raw(
        &self,
        stream: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let request = self
            .request(Method::POST, &format!("/v1/logs/{stream}"))
            .header("content-type", content_type)
            .body(body);
        self.send(request).await
    }

    /// Ingests records as NDJSON, asserting 200 with every record accepted.
    /// Returns the answer.
    pub async fn ingest_records(&self, stream: &str, records: &[Value]) -> Value {
        let reply = self
            .ingest_raw(stream, "application/x-ndjson", ndjson(records))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "ingest into {stream}: {}",
            reply.describe()
        );
        assert_eq!(
            reply.body["accepted"].as_u64(),
            Some(records.len() as u64),
            "ingest into {stream}: not every record was accepted: {}",
            reply.describe()
        );
        assert_eq!(
            reply.body["rejected"].as_u64(),
            Some(0),
            "ingest into {stream}: {}",
            reply.describe()
        );
        reply.body
    }

    /// `GET /v1/logs/search` with query parameters, as is.
    pub async fn search_reply(&self, query: &[(&str, &str)]) -> Reply {
        self.send(self.request(Method::GET, "/v1/logs/search").query(query))
            .await
    }

    /// `GET /v1/logs/search`, asserting 200; returns the answer.
    pub async fn search(&self, query: &[(&str, &str)]) -> Value {
        let reply = self.search_reply(query).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "search {query:?}: {}",
            reply.describe()
        );
        reply.body
    }

    /// Polls a search (with `limit=10000` unless the query sets a limit)
    /// until it finds exactly `count` hits; returns them. Fails with the
    /// last answer if that does not happen within [`SEARCHABLE_TIMEOUT`]
    /// (more hits than expected never turn into fewer, so an excess fails
    /// too, after the timeout).
    pub async fn wait_hits(&self, query: &[(&str, &str)], count: usize) -> Vec<Value> {
        let mut query = owned(query);
        if !query.iter().any(|(k, _)| k == "limit") {
            query.push(("limit".into(), "10000".into()));
        }
        let what = format!("{count} hits for {query:?} on {}", self.label());
        wait_for(SEARCHABLE_TIMEOUT, &what, || {
            let query = query.clone();
            async move {
                let query: Vec<(&str, &str)> = query
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let answer = self.search(&query).await;
                let hits = hits_of(&answer);
                if hits.len() == count {
                    Ok(hits)
                } else {
                    Err(format!("{} hits: {:?}", hits.len(), messages(&hits)))
                }
            }
        })
        .await
    }

    /// Every hit of a search, page by page (`limit=page`), following
    /// `next_cursor` until a page comes back without one. Checks that each
    /// page's `count` is its number of hits and that `next_cursor` is set
    /// exactly when the page is full.
    pub async fn search_pages(&self, query: &[(&str, &str)], page: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100_000 {
            let mut q = owned(query);
            q.push(("limit".into(), page.to_string()));
            if let Some(cursor) = &cursor {
                q.push(("cursor".into(), cursor.clone()));
            }
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let answer = self.search(&q).await;
            let hits = hits_of(&answer);
            assert_eq!(
                answer["count"].as_u64(),
                Some(hits.len() as u64),
                "count differs from hits: {answer}"
            );
            assert!(
                hits.len() <= page,
                "a page of {page} holds {} hits",
                hits.len()
            );
            all.extend(hits.iter().cloned());
            match answer["next_cursor"].as_str() {
                Some(next) => {
                    assert_eq!(
                        hits.len(),
                        page,
                        "next_cursor on a page that is not full: {answer}"
                    );
                    cursor = Some(next.to_string());
                }
                None => {
                    assert!(
                        answer["next_cursor"].is_null(),
                        "next_cursor is neither a string nor null: {answer}"
                    );
                    assert!(
                        hits.len() < page,
                        "a full page without next_cursor: {answer}"
                    );
                    return all;
                }
            }
        }
        panic!("search_pages: pagination did not end");
    }

    /// `GET /v1/logs/aggregate`, asserting 200.
    pub async fn aggregate(&self, query: &[(&str, &str)]) -> Value {
        let reply = self
            .send(self.request(Method::GET, "/v1/logs/aggregate").query(query))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "aggregate {query:?}: {}",
            reply.describe()
        );
        reply.body
    }

    /// Opens `GET /v1/logs/tail` (SSE), asserting 200 and `text/event-stream`.
    pub async fn logs_tail(&self, query: &[(&str, &str)]) -> WatchStream {
        let request = self
            .client()
            .get(self.url("/v1/logs/tail"))
            .query(query)
            .header("accept", "text/event-stream");
        open_event_stream(request, &format!("logs tail {query:?}")).await
    }

    /// `POST PATH` on the node's OTLP/HTTP receiver (see
    /// [`crate::NodeBuilder::otlp`]) with a content type and body.
    pub async fn otlp_post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let url = format!("{}{path}", self.otlp_http_endpoint());
        let request = self
            .client()
            .post(url)
            .timeout(crate::node::REQUEST_TIMEOUT)
            .header("content-type", content_type)
            .body(body);
        self.send(request).await
    }
}

/// Now, in Unix nanoseconds.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is before 1970")
        .as_nanos() as i64
}

/// Nanoseconds per minute, hour and day.
pub const MINUTE: i64 = 60_000_000_000;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// RFC 3339 text (UTC) of a Unix-nanosecond time: nine fraction digits,
/// or none for a whole second (as the API writes whole seconds).
pub fn rfc3339(nanos: i64) -> String {
    let format = if nanos.rem_euclid(1_000_000_000) == 0 {
        chrono::SecondsFormat::Secs
    } else {
        chrono::SecondsFormat::Nanos
    };
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(format, true)
}

/// The UTC day number (days since the epoch) of a Unix-nanosecond time.
pub fn day_of(nanos: i64) -> i64 {
    nanos.div_euclid(DAY)
}

/// Gzip-compresses bytes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}
