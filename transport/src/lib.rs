//! Node-to-node transport for Shoal: one authenticated TCP listener per node
//! carries everything peers say to each other. It owns the framing and the
//! handshake (mutual TLS when configured, then the cluster secret: `wire`),
//! the typed protocol (`protocol`:
//! Raft RPCs, writes and read-index forwarded to the leader, membership
//! removal, search fan-out, message frames), the server loop
//! ([`serve_rpc`]), a pooled client ([`Forwarder`]) and openraft's network
//! over it ([`RpcNetwork`]). What a request *means* is decided by the
//! callers: Raft's own types come from `shoal-raft`, search's from
//! `shoal-search`, and the node plugs its handlers in through
//! [`PeerServices`]. It must not depend on the node (`shoal`), on HTTP, or on
//! the messaging crate: a frame of pub/sub messages travels as opaque bytes
//! because its schema is private to `shoal-actors`' router.

mod client;
mod metric_help;
mod network;
mod pool;
mod protocol;
mod server;
mod wire;

pub use client::{ForwardError, Forwarder};
pub use metric_help::describe_metrics;
pub use network::RpcNetwork;
pub use protocol::{RemoteError, RemoteErrorKind, SearchAnswer, SearchCall, WriteResult};
pub use server::{
    serve_rpc, DatasetScanHandler, MessageInbox, PeerServices, RemoveHandler, SearchHandler,
};
pub use wire::{PeerAuth, PeerTls};
