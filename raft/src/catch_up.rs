//! A voter that lost its disk must not count towards a quorum it once
//! belonged to. Raft's election safety rests on every voter remembering its
//! vote and its log: a node that comes back with an empty data dir under the
//! same id would grant its vote to any candidate (its empty log is never more
//! up to date), and a candidate missing entries that were committed with the
//! lost copy could win, losing them.
//!
//! So a node whose Raft state starts empty under an id that is not new (the
//! node decides that; a made-up id never voted) is *catching up*: it grants no
//! vote except for cluster formation (a candidate whose log holds nothing but
//! the initial membership), until it has applied an entry committed by the
//! current leader in the leader's own term. Such a leader holds every entry
//! committed before (leader completeness), so from then on this node's log
//! holds them too. A marker file keeps the state across restarts, so a crash
//! while catching up does not end it. It still appends and acknowledges
//! entries meanwhile: what it acknowledges, it has on disk.
//!
//! Residual case (documented in docs/cluster.md): a deposed leader that still
//! reaches this node can let it finish catching up to an older term than the
//! cluster has reached.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::error::RaftError;
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::RaftMetrics;

use crate::{NodeAddr, NodeId, Raft};

const MARKER: &str = "raft-catching-up";

pub struct CatchUp {
    marker: PathBuf,
    active: AtomicBool,
}

impl CatchUp {
    /// `may_have_voted`: the node's Raft state (vote and log) is empty at
    /// start, under an id that may have been a voter's.
    pub fn open(data_dir: &Path, may_have_voted: bool) -> std::io::Result<CatchUp> {
        let marker = data_dir.join(MARKER);
        let active = may_have_voted || marker.exists();
        if active && !marker.exists() {
            std::fs::write(&marker, b"")?;
            shoal_durable::sync_dir(data_dir)?;
        }
        if active {
            tracing::info!("raft state is new: voting only for cluster formation until caught up with a leader");
        }
        Ok(CatchUp {
            marker,
            active: AtomicBool::new(active),
        })
    }

    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// End catching up once this node has applied an entry the current
    /// leader committed in its own term.
    pub fn update(&self, metrics: &RaftMetrics<NodeId, NodeAddr>) {
        if !self.active() {
            return;
        }
        let applied_in_leader_term = metrics
            .last_applied
            .is_some_and(|id| id.leader_id.term == metrics.current_term);
        if metrics.current_leader.is_some() && applied_in_leader_term {
            match std::fs::remove_file(&self.marker) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "cannot remove the catch-up marker; still catching up",
                    );
                    return;
                }
            }
            self.active.store(false, Ordering::Relaxed);
            tracing::info!(
                term = metrics.current_term,
                "caught up with the leader: voting normally"
            );
        }
    }

    /// Whether a vote may be granted to this candidate.
    pub fn may_vote_for(&self, request: &VoteRequest<NodeId>) -> bool {
        !self.active() || request.last_log_id.is_none_or(|id| id.index == 0)
    }
}

/// Answer a vote request, refusing it without asking Raft while this node
/// is catching up (see [`CatchUp`]).
pub async fn vote_unless_catching_up(
    raft: &Raft,
    catch_up: &CatchUp,
    request: VoteRequest<NodeId>,
) -> Result<VoteResponse<NodeId>, RaftError<NodeId>> {
    if catch_up.may_vote_for(&request) {
        return raft.vote(request).await;
    }
    tracing::info!(
        candidate = %request.vote,
        "refusing a vote while catching up after starting empty",
    );
    metrics::counter!("shoal_raft_votes_refused_catching_up_total").increment(1);
    let vote = raft.metrics().borrow().vote;
    Ok(VoteResponse::new(vote, None, false))
}
