//! Read-index batching. Confirming leadership costs a heartbeat round to a
//! quorum; concurrent linearizable reads share rounds instead of each paying
//! for one. A read waits for a round that *starts after it arrived*, which is
//! what makes sharing safe: the round proves leadership at a moment after
//! the read began.

use std::sync::{Arc, Mutex};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::LogId;
use tokio::sync::oneshot;

use crate::{NodeAddr, NodeId, Raft};

/// The log id a linearizable read must wait for, or why leadership could not
/// be confirmed (`ForwardToLeader` names the leader to ask instead).
pub type ReadIndexResult =
    Result<Option<LogId<NodeId>>, RaftError<NodeId, CheckIsLeaderError<NodeId, NodeAddr>>>;

pub struct Linearizer {
    raft: Raft,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A driver task is running rounds.
    running: bool,
    /// Reads waiting for the next round to start.
    waiting: Vec<oneshot::Sender<ReadIndexResult>>,
}

impl Linearizer {
    pub fn new(raft: Raft) -> Arc<Linearizer> {
        Arc::new(Linearizer {
            raft,
            state: Mutex::new(State::default()),
        })
    }

    /// On the leader: the log id a linearizable read must see applied (the
    /// leader has applied it when this returns). Elsewhere: ForwardToLeader.
    pub async fn read_index(self: &Arc<Self>) -> ReadIndexResult {
        let (sender, receiver) = oneshot::channel();
        let start_driver = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.waiting.push(sender);
            !std::mem::replace(&mut state.running, true)
        };
        if start_driver {
            let this = self.clone();
            tokio::spawn(async move { this.drive().await });
        }
        match receiver.await {
            Ok(result) => result,
            // The driver only drops a sender if the runtime is shutting down.
            Err(_) => self.raft.ensure_linearizable().await,
        }
    }

    async fn drive(&self) {
        loop {
            let batch = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.waiting.is_empty() {
                    state.running = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            metrics::histogram!("shoal_read_index_batch_reads").record(batch.len() as f64);
            let result = self.raft.ensure_linearizable().await;
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
        }
    }
}
