//! What peers say to each other: one [`Request`] and one [`Reply`] per
//! exchange, encoded with `shoal_codec` inside a `wire` frame. Changing these enums changes the wire schema: bump
//! `WIRE_VERSION` with them.

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
    /// The scanned rows (Arrow IPC), or why the scan was refused.
    DatasetScan(Result<serde_bytes::ByteBuf, RemoteError>),
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
