//! Everything that runs a definition's jq, behind a process boundary.
//!
//! jaq cannot be interrupted: an endless loop spins its thread forever, an
//! exploding expression allocates until the process dies, and unbounded
//! recursion (`def f: 1 + f; f`) overflows the stack, which aborts the
//! whole process. A definition is replicated, so in the node's own process
//! one such expression would take down every node in turn. The node
//! therefore hands each piece of work to an evaluator process (`serve`
//! reading [`Request`]s from stdin and answering [`Response`]s on stdout,
//! each a frame: a little-endian `u32` length, then JSON). The node bounds
//! the evaluator's time by killing it and its memory by a resource limit;
//! a dead evaluator costs one piece of work, never the node.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::expr;
use crate::run::{evaluate, event_matches, Applied, Env, Evaluation, EventFilter, Instance};

/// Largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// Most definition documents an evaluator keeps.
const MAX_DOCUMENTS: usize = 1024;

/// A definition's document as its evaluations refer to it: sent to an
/// evaluator once, then named by its id (a hash of its JSON).
#[derive(Debug)]
pub struct Document {
    pub id: u64,
    pub json: String,
}

impl Document {
    pub fn new(document: &Value) -> Document {
        let json = document.to_string();
        let mut hasher = std::hash::DefaultHasher::new();
        json.hash(&mut hasher);
        Document {
            id: hasher.finish(),
            json,
        }
    }
}

/// A piece of work for the evaluator.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Evaluate an instance against its definition's document (sent along
    /// when this evaluator may not have it yet).
    Evaluate {
        document_id: u64,
        document: Option<String>,
        instance: Instance,
        now_ms: u64,
        secrets: Value,
    },
    /// Apply an event to an instance (`Instance::apply_event`).
    ApplyEvent {
        instance: Instance,
        event: Value,
        now_ms: u64,
    },
    /// Whether the event meets each filter.
    Matches {
        filters: Vec<EventFilter>,
        event: Value,
    },
    /// Every program on every input: answers by input, then by program.
    Jq {
        programs: Vec<String>,
        inputs: Vec<Value>,
    },
}

/// The evaluator's answer to one [`Request`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Evaluated(Evaluation),
    Applied {
        instance: Box<Instance>,
        applied: Applied,
    },
    Matches(Vec<bool>),
    Jq(Vec<Vec<Result<Value, String>>>),
    /// The evaluation named a document this evaluator does not have:
    /// send it again with the document.
    UnknownDocument,
    /// The work panicked (a bug, not the definition's doing).
    Panicked(String),
}

/// The documents an evaluator was given, by id.
#[derive(Default)]
pub struct Documents(HashMap<u64, Value>);

/// Does one piece of work.
pub fn handle(documents: &mut Documents, request: Request) -> Response {
    match request {
        Request::Evaluate {
            document_id,
            document,
            instance,
            now_ms,
            secrets,
        } => {
            if let Some(json) = document {
                let Ok(value) = serde_json::from_str(&json) else {
                    return Response::Panicked("the document sent is not JSON".to_string());
                };
                if documents.0.len() >= MAX_DOCUMENTS {
                    documents.0.clear();
                }
                documents.0.insert(document_id, value);
            }
            let Some(document) = documents.0.get(&document_id) else {
                return Response::UnknownDocument;
            };
            Response::Evaluated(evaluate(
                document,
                &instance,
                &Env {
                    now_ms,
                    secrets: &secrets,
                },
            ))
        }
        Request::ApplyEvent {
            mut instance,
            event,
            now_ms,
        } => {
            let applied = instance.apply_event(&event, now_ms, event_matches);
            Response::Applied {
                instance: Box::new(instance),
                applied,
            }
        }
        Request::Matches { filters, event } => Response::Matches(
            filters
                .iter()
                .map(|filter| event_matches(filter, &event))
                .collect(),
        ),
        Request::Jq { programs, inputs } => Response::Jq(
            inputs
                .iter()
                .map(|input| {
                    programs
                        .iter()
                        .map(|code| expr::evaluate(code, input, &[]))
                        .collect()
                })
                .collect(),
        ),
    }
}

/// Reads one frame; `None` at the end of the input.
pub fn read_frame(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes; the limit is {MAX_FRAME_BYTES}"),
        ));
    }
    let mut body = vec![0u8; length];
    input.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Encodes a value as one frame.
pub fn frame(value: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; 4];
    serde_json::to_writer(&mut bytes, value)?;
    let length = bytes.len() - 4;
    if length > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes; the limit is {MAX_FRAME_BYTES}"),
        ));
    }
    bytes[..4].copy_from_slice(&(length as u32).to_le_bytes());
    Ok(bytes)
}

/// The evaluator's loop: a response for every request, until the input
/// ends.
pub fn serve(mut input: impl Read, mut output: impl Write) -> io::Result<()> {
    let mut documents = Documents::default();
    while let Some(body) = read_frame(&mut input)? {
        let request: Request = serde_json::from_slice(&body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let response = panic::catch_unwind(AssertUnwindSafe(|| handle(&mut documents, request)))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                Response::Panicked(message)
            });
        output.write_all(&frame(&response)?)?;
        output.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_request_is_answered_in_order_until_the_input_ends() {
        let mut input = Vec::new();
        for code in [". + 1", "error(\"no\")"] {
            let request = Request::Jq {
                programs: vec![code.to_string()],
                inputs: vec![json!(1), json!(2)],
            };
            input.extend(frame(&request).expect("frame"));
        }
        let mut output = Vec::new();
        serve(&input[..], &mut output).expect("served");
        let mut reader = &output[..];
        let mut answers = Vec::new();
        while let Some(body) = read_frame(&mut reader).expect("frame") {
            match serde_json::from_slice(&body).expect("response") {
                Response::Jq(answers_by_input) => answers.push(answers_by_input),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0], vec![vec![Ok(json!(2))], vec![Ok(json!(3))]]);
        assert!(answers[1][0][0].as_ref().is_err_and(|e| e.contains("no")));
    }

    #[test]
    fn a_document_is_sent_once_then_named_by_its_id() {
        let definition = crate::parse(
            br#"{"document": {"dsl": "1.0.0", "namespace": "t", "name": "t", "version": "1.0.0"},
                 "do": [{"x": {"set": {"a": 1}}}]}"#,
        )
        .expect("a definition");
        let document = Document::new(&definition.document);
        let instance = Instance::new("i".into(), &definition, json!({}), 0);
        let request = |sent: Option<String>| Request::Evaluate {
            document_id: document.id,
            document: sent,
            instance: instance.clone(),
            now_ms: 0,
            secrets: json!({}),
        };
        let mut documents = Documents::default();
        assert!(matches!(
            handle(&mut documents, request(None)),
            Response::UnknownDocument
        ));
        for sent in [Some(document.json.clone()), None] {
            match handle(&mut documents, request(sent)) {
                Response::Evaluated(evaluation) => {
                    assert_eq!(
                        evaluation.result,
                        crate::run::Evaluated::Completed(json!({"a": 1}))
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_frame_past_the_limit_is_refused_unread() {
        let length = (MAX_FRAME_BYTES as u32 + 1).to_le_bytes();
        let error = read_frame(&mut &length[..]).expect_err("too large");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
