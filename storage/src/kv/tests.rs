//! Unit tests of the state machine rules; the HTTP-level behaviour is tested
//! in the workspace's integration tests against real processes.

use super::*;
use crate::Store;

fn put(key: &str, value: &str) -> Command {
    Command::Txn(Txn {
        compare: vec![],
        success: vec![TxnOp::Put { key: key.into(), value: value.into(), lease: 0 }],
        failure: vec![],
    })
}

fn proposal(cmd: &Command) -> Proposal {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    Proposal { id, at_ms: 1_000_000, command: cmd.clone() }
}

const AT: Option<Position<'static>> = Some(Position { log_id: b"log-id", membership: None });

fn apply(store: &Store, cmd: &Command) -> Applied {
    store.sm_apply(Some(&proposal(cmd)), AT).expect("apply")
}

#[test]
fn a_retried_proposal_is_applied_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let p = proposal(&put("k", "v"));
    let first = store.sm_apply(Some(&p), AT).expect("apply");
    let again = store.sm_apply(Some(&p), AT).expect("apply");
    assert_eq!(first.response, again.response, "the retry answers with the first outcome");
    assert!(again.changes.is_none(), "the retry changes nothing");
    assert_eq!(store.kv_get("k").expect("get").0.revision, 1);
    // Ids older than the retention are forgotten as later proposals arrive.
    let later = Proposal { at_ms: p.at_ms + PROPOSAL_ID_RETENTION_MS + 1, ..proposal(&put("x", "1")) };
    store.sm_apply(Some(&later), AT).expect("apply");
    let retried_late = store.sm_apply(Some(&p), AT).expect("apply");
    assert!(retried_late.changes.is_some(), "a forgotten id is a new proposal");
}

#[test]
fn revisions_versions_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    apply(&store, &put("a", "1"));
    apply(&store, &put("a", "2"));
    let del = Command::Txn(Txn {
        compare: vec![],
        success: vec![TxnOp::Delete { key: "a".into(), prefix: false }],
        failure: vec![],
    });
    assert_eq!(apply(&store, &del).changes.map(|c| c.revision), Some(3));
    apply(&store, &put("a", "3"));
    let (counters, kv) = store.kv_get("a").expect("get");
    let kv = kv.expect("present");
    assert_eq!((counters.revision, kv.create_revision, kv.mod_revision, kv.version), (4, 4, 4, 1));
    let (_, history) = store.kv_history("a", None, 10).expect("history");
    let revs: Vec<u64> = history.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, vec![4, 3, 2, 1]);
    // Rollback to revision 1 writes "1" as revision 5.
    let rolled = apply(&store, &Command::Rollback { key: "a".into(), revision: 1 });
    assert_eq!(rolled.changes.map(|c| c.revision), Some(5));
    assert_eq!(store.kv_get("a").expect("get").1.expect("present").value, b"1");
}

#[test]
fn failed_lease_put_writes_nothing_and_compaction_drops_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let bad = Command::Txn(Txn {
        compare: vec![],
        success: vec![
            TxnOp::Put { key: "x".into(), value: b"1".to_vec(), lease: 0 },
            TxnOp::Put { key: "y".into(), value: b"1".to_vec(), lease: 42 },
        ],
        failure: vec![],
    });
    let applied = apply(&store, &bad);
    assert_eq!(applied.response, Response::Rejected(Rejection::LeaseNotFound(42)));
    assert!(store.kv_get("x").expect("get").1.is_none());
    for i in 0..10 {
        apply(&store, &put("k", &i.to_string()));
    }
    apply(&store, &Command::Compact { revision: 8 });
    let changes = store.kv_changes(1, &|_| true, 100, 100).expect("changes");
    assert_eq!(changes.counters.compact_revision, 8);
    assert_eq!(changes.batches.first().map(|b| b.revision), Some(8));
    let exported = store.sm_export().expect("export");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Store::open(other_dir.path()).expect("open");
    other.sm_import(&exported.data).expect("import");
    assert_eq!(other.kv_get("k").expect("get"), store.kv_get("k").expect("get"));
}
