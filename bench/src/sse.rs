//! A minimal Server-Sent Events parser: enough for Shoal's watch stream
//! (`event:`, `id:`, `data:` fields, `:` comment lines, blank-line dispatch).

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    id: Option<String>,
    data: Option<String>,
    /// Comment lines seen (Shoal sends `: keepalive` every 15 s).
    pub comments: u64,
}

impl SseParser {
    /// Feed a chunk of the body; complete events are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let mut line_end = end;
            if line_end > start && self.buf[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            let line = String::from_utf8_lossy(&self.buf[start..line_end]).into_owned();
            self.line(&line, out);
            start = end + 1;
        }
        self.buf.drain(..start);
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    id: self.id.clone(),
                    data,
                });
            }
            self.event.clear();
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "id" => self.id = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_chunks_and_comments() {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        parser.push(b": keepalive\n\nevent: change\nid: 7\nda", &mut out);
        assert!(out.is_empty());
        parser.push(b"ta: {\"revision\":7}\r\n\r\n", &mut out);
        assert_eq!(
            out,
            vec![SseEvent {
                event: "change".into(),
                id: Some("7".into()),
                data: "{\"revision\":7}".into()
            }]
        );
        assert_eq!(parser.comments, 1);
    }
}
