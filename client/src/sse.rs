//! A small incremental Server-Sent Events parser (just what Shoal sends:
//! `event`, `id`, `data` fields and `:` comments).

use futures::StreamExt;

use crate::error::{Error, Result};

/// A stream that hears nothing this long is taken for dead: the server
/// sends a keepalive every 15 s, so this only fires for a node that stopped
/// (paused, cut off) without closing the connection.
const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(40);

/// Longest line or event accepted; a bound so a broken peer cannot grow memory.
const MAX_EVENT_BYTES: usize = 64 << 20;

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|e| Error::decode("SSE line", e))?;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        if self.buffer.len() + self.current.data.len() > MAX_EVENT_BYTES {
            return Err(Error::decode("SSE stream", "event larger than 64 MiB"));
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_data && self.current.event.is_empty() {
                return None;
            }
            self.has_data = false;
            let mut event = std::mem::take(&mut self.current);
            if event.event.is_empty() {
                event.event = "message".into();
            }
            return Some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = value.to_string(),
            "id" => self.current.id = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// Reads the events of an SSE response one by one.
pub(crate) struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseParser,
    pending: std::collections::VecDeque<SseEvent>,
    endpoint: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response, endpoint: &str) -> SseReader {
        SseReader {
            body: response.bytes_stream().boxed(),
            parser: SseParser::default(),
            pending: Default::default(),
            endpoint: endpoint.to_string(),
        }
    }

    /// The next event; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            let next = tokio::time::timeout(IDLE_LIMIT, self.body.next())
                .await
                .map_err(|_| Error::Timeout {
                    endpoint: self.endpoint.clone(),
                    what: format!("nothing received for {} s", IDLE_LIMIT.as_secs()),
                })?;
            match next {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(Error::Transport {
                        endpoint: self.endpoint.clone(),
                        source,
                    })
                }
                Some(Ok(chunk)) => self.pending.extend(self.parser.feed(&chunk)?),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere() {
        let text = "event: subscribed\ndata: {}\n\n: keepalive\n\nevent: change\r\nid: 6\r\ndata: a\ndata: b\n\n";
        for split in 0..text.len() {
            let mut parser = SseParser::default();
            let mut events = parser.feed(&text.as_bytes()[..split]).unwrap_or_default();
            events.extend(parser.feed(&text.as_bytes()[split..]).unwrap_or_default());
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        event: "subscribed".into(),
                        id: None,
                        data: "{}".into()
                    },
                    SseEvent {
                        event: "change".into(),
                        id: Some("6".into()),
                        data: "a\nb".into()
                    },
                ],
                "split at {split}"
            );
        }
    }
}
