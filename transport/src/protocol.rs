//! What peers say to each other: one [`Request`] and one [`Reply`] per
//! exchange, each encoded with `shoal_codec` inside a `wire` frame (a
//! dataset scan's reply in several: [`send_reply`]). Changing these enums
//! changes the wire schema: bump `WIRE_VERSION` with them.

use openraft::error::{ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use shoal_raft::{MembershipError, NodeAddr, NodeId, ReadIndexResult, Replication, TypeConfig};
use shoal_search::{AggregateRequest, Aggregation, Hit, SearchRequest, StreamInfo};
use shoal_storage::kv::{Proposal, Response};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::wire;

#[derive(Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Replicate proposals as one log entry (sent to the leader).
    ClientWrite(Vec<Proposal>),
    /// Confirm leadership and return the log id a linearizable read must wait for.
    ReadIndex,
    /// The leader's replication progress per member.
    Replication,
    /// Remove a node from the membership (sent to the leader).
    RemoveNode(NodeId),
    /// A frame of pub/sub messages for this node's router. Opaque here: its
    /// schema is private to `shoal-actors`' router, which encodes and
    /// decodes it.
    Messages(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A log search or aggregation for this node's engine.
    Search(SearchCall),
    /// A scan of this node's dataset files for a SQL query. Opaque here:
    /// its schema is private to the node, which encodes and decodes it.
    DatasetScan(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Request {
    /// Whether running the request twice is harmless: reads, Raft's own
    /// messages, membership removal, and writes (deduplicated by proposal
    /// id). Not a frame of messages: topics are at most once.
    pub(crate) fn may_run_twice(&self) -> bool {
        !matches!(self, Request::Messages(_))
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    ClientWrite(WriteResult),
    ReadIndex(ReadIndexResult),
    Replication(Option<Replication>),
    RemoveNode(Result<(), MembershipError>),
    /// How many local deliveries the frame made, or why it was refused.
    Messages(Result<usize, RemoteError>),
    Search(Result<SearchAnswer, RemoteError>),
    /// The scanned rows (Arrow IPC), or why the scan was refused. A part
    /// bigger than [`REPLY_CHUNK_BYTES`] comes as [`Reply::DatasetScanChunk`]s
    /// and this (the last chunk): frames stay small however big the part.
    DatasetScan(Result<serde_bytes::ByteBuf, RemoteError>),
    /// A leading piece of a dataset scan's rows.
    DatasetScanChunk(serde_bytes::ByteBuf),
}

/// Bytes of a dataset part per frame.
pub(crate) const REPLY_CHUNK_BYTES: usize = 16 << 20;
/// Most bytes of a dataset part a node takes from a peer (the node refuses
/// to send bigger parts: `shoal_datasets::ipc::MAX_PART_BYTES`).
pub(crate) const MAX_SCAN_REPLY_BYTES: usize = 1 << 30;

/// Sends `reply`, a dataset scan's rows in chunks of `chunk_bytes`.
pub(crate) async fn send_reply(
    stream: &mut (impl AsyncWrite + Unpin),
    reply: Reply,
    chunk_bytes: usize,
) -> std::io::Result<()> {
    let rows = match reply {
        Reply::DatasetScan(Ok(rows)) if rows.len() > chunk_bytes => rows.into_vec(),
        reply => return wire::send(stream, &reply).await,
    };
    let mut chunks = rows.chunks(chunk_bytes).peekable();
    while let Some(chunk) = chunks.next() {
        let chunk = serde_bytes::ByteBuf::from(chunk);
        let reply = if chunks.peek().is_some() {
            Reply::DatasetScanChunk(chunk)
        } else {
            Reply::DatasetScan(Ok(chunk))
        };
        wire::send(stream, &reply).await?;
    }
    Ok(())
}

/// Reads a reply, joining a dataset scan's chunks (at most `max_bytes`).
pub(crate) async fn receive_reply(
    stream: &mut (impl AsyncRead + Unpin),
    max_bytes: usize,
) -> std::io::Result<Reply> {
    let mut joined: Vec<u8> = Vec::new();
    loop {
        let (chunk, last) = match wire::receive::<Reply>(stream).await? {
            Reply::DatasetScanChunk(chunk) => (chunk, false),
            Reply::DatasetScan(Ok(chunk)) if !joined.is_empty() => (chunk, true),
            reply if joined.is_empty() => return Ok(reply),
            _ => {
                return Err(std::io::Error::other(
                    "a dataset part's chunks ended without their last",
                ))
            }
        };
        if joined.len() + chunk.len() > max_bytes {
            return Err(std::io::Error::other(format!(
                "a dataset part of more than {max_bytes} bytes"
            )));
        }
        joined.extend_from_slice(&chunk);
        if last {
            return Ok(Reply::DatasetScan(Ok(serde_bytes::ByteBuf::from(joined))));
        }
    }
}

/// One response per proposal, in order.
pub type WriteResult = Result<Vec<Response>, RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>>;

/// What one node asks another's log engine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SearchCall {
    Search(SearchRequest),
    Aggregate(AggregateRequest),
    Streams,
    /// Every matching record, at most this many (for SQL).
    Scan(SearchRequest, usize),
    /// The highest record seq that is searchable on the node (tail start).
    Position,
}

/// A log engine's answer to a [`SearchCall`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SearchAnswer {
    Hits(Vec<Hit>),
    Aggregation(Aggregation),
    Streams(Vec<StreamInfo>),
    Position(u64),
}

/// A peer could not do what it was asked. Its text is the peer's own error
/// message, shown as it is.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct RemoteError {
    pub kind: RemoteErrorKind,
    pub message: String,
}

/// The broad reason a peer refused a request, for callers that react to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteErrorKind {
    /// The request (or something it names) is not valid.
    Invalid,
    /// The request is valid but needs more than the peer allows (rows,
    /// bytes): it would need narrowing.
    TooLarge,
    /// The request is valid but needs more memory than the peer gives it.
    OverBudget,
    /// The peer is at a capacity limit: retry later.
    Busy,
    /// The peer failed to carry it out.
    Internal,
}

impl RemoteError {
    pub fn new(kind: RemoteErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use shoal_search::{Kind, Record};

    use super::*;

    fn part(reply: Reply) -> Vec<u8> {
        match reply {
            Reply::DatasetScan(Ok(rows)) => rows.into_vec(),
            _ => panic!("not a dataset part"),
        }
    }

    /// A part bigger than a chunk crosses in several frames and arrives
    /// whole; smaller parts and other replies cross as one frame.
    #[tokio::test]
    async fn a_dataset_part_crosses_in_chunks_and_arrives_whole() {
        let rows: Vec<u8> = (0..100u8).collect();
        for chunk_bytes in [7, 50, 99, 100, 1000] {
            let (mut near, mut far) = tokio::io::duplex(1 << 16);
            let reply = Reply::DatasetScan(Ok(serde_bytes::ByteBuf::from(rows.clone())));
            send_reply(&mut near, reply, chunk_bytes)
                .await
                .expect("send");
            send_reply(&mut near, Reply::Replication(None), chunk_bytes)
                .await
                .expect("send");
            let back = receive_reply(&mut far, 1000).await.expect("receive");
            assert_eq!(part(back), rows, "chunks of {chunk_bytes} bytes");
            // The stream is at the next reply: nothing of the part is left.
            let next = receive_reply(&mut far, 1000).await.expect("receive");
            assert!(matches!(next, Reply::Replication(None)));
        }
    }

    #[tokio::test]
    async fn a_dataset_part_past_the_limit_or_cut_short_is_an_error() {
        let rows = serde_bytes::ByteBuf::from(vec![1u8; 100]);
        let (mut near, mut far) = tokio::io::duplex(1 << 16);
        send_reply(&mut near, Reply::DatasetScan(Ok(rows)), 10)
            .await
            .expect("send");
        let Err(error) = receive_reply(&mut far, 99).await else {
            panic!("a part past the limit was taken");
        };
        assert!(error.to_string().contains("more than 99 bytes"), "{error}");
        // Chunks followed by anything but the last chunk.
        let (mut near, mut far) = tokio::io::duplex(1 << 16);
        let chunk = Reply::DatasetScanChunk(serde_bytes::ByteBuf::from(vec![1u8; 10]));
        wire::send(&mut near, &chunk).await.expect("send");
        let refused = Reply::DatasetScan(Err(RemoteError::new(RemoteErrorKind::Busy, "x")));
        wire::send(&mut near, &refused).await.expect("send");
        let Err(error) = receive_reply(&mut far, 1000).await else {
            panic!("a part cut short was taken");
        };
        assert!(error.to_string().contains("without their last"), "{error}");
    }

    /// Search's types travel in the binary codec, which supports less of
    /// serde than JSON does: every variant must round-trip.
    #[test]
    fn search_calls_and_answers_round_trip_in_the_codec() {
        let request = SearchRequest {
            query: "error".into(),
            streams: vec!["app".into()],
            seq_after: BTreeMap::from([(2, 9)]),
            limit: 10,
            ..Default::default()
        };
        let calls = vec![
            SearchCall::Search(request.clone()),
            SearchCall::Aggregate(AggregateRequest {
                filter: request.clone(),
                interval: Some(1_000),
                top: vec!["service".into()],
                top_n: 5,
            }),
            SearchCall::Streams,
            SearchCall::Scan(request, 100),
            SearchCall::Position,
        ];
        for call in calls {
            let bytes = shoal_codec::encode(&call).expect("encode");
            let back: SearchCall = shoal_codec::decode(&bytes).expect("decode");
            assert_eq!(format!("{back:?}"), format!("{call:?}"));
        }
        let hit = Hit {
            node: 1,
            stream: "app".into(),
            seq: 3,
            record: Record {
                kind: Kind::Log,
                ts_nanos: 5,
                level: "info".into(),
                service: "svc".into(),
                message: "hello".into(),
                trace_id: String::new(),
                span_id: String::new(),
                attributes: "{}".into(),
                span: None,
            },
        };
        let answers = vec![
            SearchAnswer::Hits(vec![hit]),
            SearchAnswer::Aggregation(Aggregation {
                total: 4,
                histogram: BTreeMap::from([(0, 4)]),
                top: BTreeMap::from([("service".into(), HashMap::from([("svc".into(), 4)]))]),
            }),
            SearchAnswer::Streams(vec![StreamInfo::default()]),
            SearchAnswer::Position(8),
        ];
        for answer in answers {
            let reply: Result<SearchAnswer, RemoteError> = Ok(answer);
            let bytes = shoal_codec::encode(&reply).expect("encode");
            let back: Result<SearchAnswer, RemoteError> =
                shoal_codec::decode(&bytes).expect("decode");
            assert_eq!(format!("{back:?}"), format!("{reply:?}"));
        }
        let refused: Result<SearchAnswer, RemoteError> =
            Err(RemoteError::new(RemoteErrorKind::Busy, "full"));
        let bytes = shoal_codec::encode(&refused).expect("encode");
        let back: Result<SearchAnswer, RemoteError> = shoal_codec::decode(&bytes).expect("decode");
        assert_eq!(back.expect_err("refused").to_string(), "full");
    }
}
