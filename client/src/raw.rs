//! An escape hatch for endpoints this crate does not model (node status,
//! cluster membership, log aggregations, SQL, tail and traces): the same
//! endpoints, failover and errors as every other call, with JSON in and out.

use reqwest::Method;
use serde_json::Value;

use crate::client::{query, Client, Request, Retry};
use crate::error::Result;
use crate::sse::SseReader;

/// One Server-Sent Event of a [`RawEvents`] stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The event name (`message` when the server gave none).
    pub event: String,
    /// Its data lines, joined with `\n`.
    pub data: String,
}

/// The events of a Server-Sent Events endpoint, as the server sends them.
/// Unlike a watch or a subscription it does not reconnect: `Ok(None)` means
/// the server ended the stream.
pub struct RawEvents {
    reader: SseReader,
}

impl std::fmt::Debug for RawEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEvents").finish_non_exhaustive()
    }
}

impl RawEvents {
    /// The next event; `Ok(None)` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<RawEvent>> {
        Ok(self.reader.next().await?.map(|e| RawEvent {
            event: e.event,
            data: e.data,
        }))
    }
}

fn path_with_query(path: &str, params: &[(&str, &str)]) -> String {
    let params: Vec<(&str, Option<String>)> = params
        .iter()
        .map(|(name, value)| (*name, Some(value.to_string())))
        .collect();
    format!("{path}{}", query(&params))
}

impl Client {
    /// Sends a request to an endpoint this crate has no method for and
    /// returns its JSON answer. `path` starts with `/` (e.g. `/v1/status`);
    /// `params` become the (percent-encoded) query string. A `GET` fails
    /// over like any read; other methods move on to the next endpoint only
    /// when the connection was refused. Errors are the usual [`crate::Error`]s.
    pub async fn request_json(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let retry = if method == Method::GET {
            Retry::Idempotent
        } else {
            Retry::Once
        };
        let mut request = Request::new(method, path_with_query(path, params), retry);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.call_json(request, "answer").await
    }

    /// Like [`Client::request_json`] for an answer that is not JSON (CSV,
    /// Parquet, Arrow): its bytes and the headers it came with.
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>)> {
        let mut request = Request::new(method, path_with_query(path, params), Retry::Once);
        if let Some(body) = body {
            request = request.json(body);
        }
        let (response, index) = self.send_from(&request, self.current_index()).await?;
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| crate::Error::Transport {
                endpoint: self.endpoints()[index].clone(),
                source,
            })?;
        Ok((headers, bytes.to_vec()))
    }

    /// Opens a Server-Sent Events endpoint this crate has no method for
    /// (e.g. `/v1/logs/tail`) and returns its events as they come.
    pub async fn request_events(&self, path: &str, params: &[(&str, &str)]) -> Result<RawEvents> {
        let request = Request::get(path_with_query(path, params));
        let (response, index) = self.open_stream(&request, self.current_index()).await?;
        Ok(RawEvents {
            reader: SseReader::new(response, &self.endpoints()[index]),
        })
    }
}
