//! The replicated key/value state machine: its data model, the deterministic
//! application of commands, consistent reads and snapshot export/import.
//!
//! Every change to keys gets the next cluster-wide revision; a transaction
//! that changes several keys gets one revision for all of them.

mod apply;
mod cache;
mod read;
mod snapshot;

use serde::{Deserialize, Serialize};

pub use apply::{Position, SmBatch};
pub(crate) use cache::KvCache;
pub use read::{Changes, Counters, LeaseDetail};
pub use snapshot::{Digest, ExportPosition};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    /// As bytes, not as a sequence of numbers: the same bincode, encoded in
    /// one copy rather than byte by byte.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
    /// Writes since creation; 1 after creation, 0 in a delete event.
    pub version: u64,
    /// Lease the key is attached to; 0 for none.
    pub lease: u64,
}

impl KeyValue {
    /// The same metadata without the value (responses to writes need no copy of it).
    pub fn without_value(&self) -> KeyValue {
        KeyValue {
            value: Vec::new(),
            ..self.clone()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventType,
    pub kv: KeyValue,
}

/// All changes made by one revision, in the order they were made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBatch {
    pub revision: u64,
    pub events: Vec<Event>,
}

/// A lease. Its time is not replicated: the leader measures the TTL on its
/// own monotonic clock from when it sees a grant or keepalive, so no replica
/// depends on a wall clock (see the node's lease timers). `renewals` counts
/// grants and keepalives; an expiry names the count it saw, so a keepalive
/// applied in between wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: u64,
    pub ttl_seconds: u64,
    pub renewals: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a compare looks at, with the value to compare against. A missing key
/// has 0 for every revision target and an empty value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    ModRevision(u64),
    CreateRevision(u64),
    Version(u64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: u64,
    },
    Delete {
        key: String,
        prefix: bool,
    },
    Get {
        key: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// A replicated command. Nothing in it depends on a clock: applying it is
/// decided by the log alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Txn(Txn),
    LeaseGrant {
        ttl_seconds: u64,
    },
    LeaseKeepAlive {
        id: u64,
    },
    LeaseRevoke {
        id: u64,
    },
    /// Revoke the leases named, each only if it has not been renewed since
    /// the proposer saw it with that many renewals.
    LeaseExpire {
        leases: Vec<(u64, u64)>,
    },
    /// Write the value `key` had at `revision` as a new revision.
    Rollback {
        key: String,
        revision: u64,
    },
    /// Drop history older than `revision`.
    Compact {
        revision: u64,
    },
}

/// A command as proposed to Raft. The id makes a proposal idempotent: if a
/// node retries a proposal whose first attempt was committed after all (the
/// leader died after replicating it), the state machine applies it once and
/// answers the retry with the first outcome.
///
/// Ids are remembered for the last [`PROPOSAL_ID_WINDOW`] proposals applied,
/// counted by the state machine in log order, so every replica forgets the
/// same ids at the same point whatever its batching or clock. `issued_at` is
/// that count on the proposer's replica when the proposal was made; a
/// proposal that arrives after the window has moved past it (its first
/// attempt, if any, may be forgotten) is rejected on every replica alike,
/// never applied a second time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: [u8; 16],
    pub issued_at: u64,
    pub command: Command,
}

impl Proposal {
    /// About how many bytes the proposal takes encoded: its keys and values
    /// and a little for everything else. Raft entries and replication
    /// messages are bounded by it, not only by how many they hold.
    pub fn approx_bytes(&self) -> usize {
        const FIXED: usize = 16;
        let op = |op: &TxnOp| {
            FIXED
                + match op {
                    TxnOp::Put { key, value, .. } => key.len() + value.len(),
                    TxnOp::Delete { key, .. } | TxnOp::Get { key } => key.len(),
                }
        };
        let command = match &self.command {
            Command::Txn(txn) => {
                let compares: usize = txn
                    .compare
                    .iter()
                    .map(|compare| {
                        FIXED
                            + compare.key.len()
                            + match &compare.target {
                                CompareTarget::Value(value) => value.len(),
                                _ => 0,
                            }
                    })
                    .sum();
                compares
                    + txn
                        .success
                        .iter()
                        .chain(&txn.failure)
                        .map(op)
                        .sum::<usize>()
            }
            Command::LeaseExpire { leases } => leases.len() * FIXED,
            Command::Rollback { key, .. } => key.len(),
            Command::LeaseGrant { .. }
            | Command::LeaseKeepAlive { .. }
            | Command::LeaseRevoke { .. }
            | Command::Compact { .. } => 0,
        };
        2 * FIXED + command
    }
}

/// How many applied proposals' ids are remembered. Retries end long before
/// (they stop at the request timeout; at 15 000 writes/s the window is about
/// a minute), and it bounds the space ids take.
pub const PROPOSAL_ID_WINDOW: u64 = if cfg!(test) { 64 } else { 1 << 20 };
/// Forgotten ids are deleted in steps of this many proposals.
pub const PROPOSAL_ID_PRUNE_STEP: u64 = if cfg!(test) { 8 } else { 1024 };

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// The written key without its value, and the previous key (also without value).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
    },
    Get {
        kv: Option<KeyValue>,
    },
}

/// Why a command was applied as a no-op. These are part of the replicated
/// outcome: every replica rejects the same command the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    LeaseNotFound(u64),
    /// The key neither exists nor has retained history.
    KeyNotFound,
    Compacted {
        compact_revision: u64,
    },
    FutureRevision {
        revision: u64,
        current: u64,
    },
    /// The proposal is older than the id window: whether an earlier attempt
    /// of it was applied can no longer be told.
    ProposalExpired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Txn {
        succeeded: bool,
        revision: u64,
        results: Vec<OpResult>,
    },
    Lease(Lease),
    Revoked {
        revision: u64,
        deleted: u64,
    },
    Rollback {
        revision: u64,
        kv: Option<KeyValue>,
    },
    Compacted {
        compact_revision: u64,
    },
    Rejected(Rejection),
    /// Raft-internal entries (blank, membership) answer nothing.
    Empty,
}

/// Key of the per-key history index: key ++ 0x00 ++ revision. Keys never
/// contain NUL (validated at the API), so a prefix scan of `key ++ 0x00`
/// finds exactly that key's revisions.
fn key_rev(key: &str, revision: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 9);
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

fn lease_key(id: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 8);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Smallest byte string greater than every string starting with `prefix`,
/// or None when there is none (prefix empty or all 0xFF).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

const META_REVISION: &str = "revision";
const META_COMPACT_REVISION: &str = "compact_revision";
const META_NEXT_LEASE_ID: &str = "next_lease_id";
const META_LAST_APPLIED: &str = "last_applied";
const META_MEMBERSHIP: &str = "membership";
/// How many distinct proposals have been applied (the id window's clock).
const META_APPLIED_PROPOSALS: &str = "applied_proposals";

#[cfg(test)]
mod tests;
