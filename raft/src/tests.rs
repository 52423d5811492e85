//! Tests of how Shoal's Raft starts from stored state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{
    CommittedLeaderId, Config, Entry, EntryPayload, LogId, Membership, ServerState, Vote,
};
use shoal_codec::encode;
use shoal_storage::kv::ChangeBatch;
use shoal_storage::Store;

use crate::{ChangeSink, LogStore, NodeAddr, NodeId, Raft, StateMachine, TypeConfig};

struct NoSink;
impl ChangeSink for NoSink {
    fn changed(&self, _: &ChangeBatch) {}
    fn replaced(&self) {}
}

/// A network on which no peer ever answers (the real one lives in
/// `shoal-transport`, which depends on this crate).
struct NoPeers;

type Refused<T, E> = Result<T, RPCError<NodeId, NodeAddr, E>>;

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, NodeAddr, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "no peers in this test",
    )))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _: NodeId, _: &NodeAddr) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> Refused<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _: InstallSnapshotRequest<TypeConfig>,
        _: RPCOption,
    ) -> Refused<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _: VoteRequest<NodeId>,
        _: RPCOption,
    ) -> Refused<VoteResponse<NodeId>, RaftError<NodeId>> {
        Err(unreachable())
    }
}

/// A node that was leader (its stored vote is committed and names itself)
/// must not be leader again after a restart without winning an election in
/// a new term: its followers may hold entries its own log never got, and
/// leading in the old term would reuse their positions. Stored state: node 1
/// leader of term 3 in a three-voter cluster whose peers are unreachable.
#[tokio::test]
async fn a_restarted_leader_campaigns_in_a_new_term() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db")).expect("open");
    let nodes: BTreeMap<u64, NodeAddr> = (1..=3)
        .map(|id| {
            (
                id,
                NodeAddr {
                    rpc: "127.0.0.1:1".into(),
                    api: "127.0.0.1:1".into(),
                },
            )
        })
        .collect();
    let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
    let leader = CommittedLeaderId::new(3, 1);
    let entries: Vec<Entry<crate::TypeConfig>> = vec![
        Entry {
            log_id: LogId::default(),
            payload: EntryPayload::Membership(membership),
        },
        Entry {
            log_id: LogId::new(leader, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: LogId::new(leader, 2),
            payload: EntryPayload::Blank,
        },
    ];
    let written: Vec<(u64, Vec<u8>)> = entries
        .iter()
        .map(|e| (e.log_id.index, encode(e).expect("encode")))
        .collect();
    store.log_write(&written).expect("write");
    store.sync_wal().expect("sync");
    let mut log = LogStore::new(store.clone(), None).expect("log store");
    let writer_gone = log.writer_gone();
    log.save_vote(&Vote::new_committed(3, 1))
        .await
        .expect("vote");
    let sm = StateMachine::new(store, dir.path().join("snapshots"), Arc::new(NoSink))
        .expect("state machine");
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    }
    .validate()
    .expect("config");
    let raft = Raft::new(1, Arc::new(config), NoPeers, log, sm)
        .await
        .expect("raft");
    let mut metrics = raft.metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut states = Vec::new();
    loop {
        let now = metrics.borrow().clone();
        states.push((now.state, now.current_term));
        assert!(
            !(now.state == ServerState::Leader && now.current_term == 3),
            "the restarted leader led again in its old term: {states:?}"
        );
        if now.current_term > 3 {
            assert_ne!(
                now.state,
                ServerState::Leader,
                "no peer voted, yet it leads: {states:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no election in a new term: {states:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
    }
    raft.shutdown().await.expect("shutdown");
    drop(raft);
    writer_gone.wait().await;
}
