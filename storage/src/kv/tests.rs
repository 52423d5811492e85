//! Unit tests of the state machine rules; the HTTP-level behaviour is tested
//! in the workspace's integration tests against real processes.

use super::*;
use crate::{StorageError, Store};

fn put(key: &str, value: &str) -> Command {
    Command::Txn(Txn {
        compare: vec![],
        success: vec![TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }],
        failure: vec![],
    })
}

fn proposal(cmd: &Command) -> Proposal {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    Proposal {
        id,
        issued_at: 0,
        command: cmd.clone(),
    }
}

const AT: Position<'static> = Position {
    log_id: b"log-id",
    membership: None,
};

/// What applying one proposal in a batch of its own gave.
struct Applied {
    response: Response,
    changes: Option<ChangeBatch>,
}

fn apply_proposal(store: &Store, proposal: &Proposal) -> Applied {
    let mut batch = store.sm_batch().expect("batch");
    let response = batch.apply(proposal).expect("apply");
    batch.set_position(AT).expect("position");
    let mut changes = batch.commit().expect("commit");
    assert!(changes.len() <= 1, "one proposal, one revision at most");
    Applied {
        response,
        changes: changes.pop(),
    }
}

fn export(store: &Store) -> Vec<u8> {
    let mut data = Vec::new();
    store.sm_export(&mut data).expect("export");
    data
}

/// A damaged export (cut short, a wrong magic, an unknown column family, a
/// length past the data's end) is refused by the check that comes before an
/// import, which writes nothing.
#[test]
fn a_damaged_export_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    apply(&store, &put("k", "1"));
    let good = export(&store);
    apply(&store, &put("k", "2"));
    let mut huge_length = good.clone();
    // The first record's key length.
    huge_length[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
    let damaged = [
        good[..good.len() - 1].to_vec(),
        b"SHOALSMX".iter().chain(&good[8..]).copied().collect(),
        [good.clone(), vec![200]].concat(),
        huge_length,
    ];
    for data in damaged {
        assert!(matches!(
            store.sm_check_export(&data[..]),
            Err(StorageError::Corrupt { .. })
        ));
        assert_eq!(
            store.kv_get("k").expect("get").1.map(|kv| kv.value),
            Some(b"2".to_vec())
        );
    }
}

fn apply(store: &Store, cmd: &Command) -> Applied {
    apply_proposal(store, &proposal(cmd))
}

#[test]
fn a_retried_proposal_is_applied_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let p = proposal(&put("k", "v"));
    let first = apply_proposal(&store, &p);
    let again = apply_proposal(&store, &p);
    assert_eq!(
        first.response, again.response,
        "the retry answers with the first outcome"
    );
    assert!(again.changes.is_none(), "the retry changes nothing");
    assert_eq!(store.kv_get("k").expect("get").0.revision, 1);
    assert_eq!(store.applied_proposals(), 1, "a retry is not counted");
    // Once the window has moved past a proposal, a retry of it is refused,
    // never applied again, whether or not its id is still stored.
    for i in 0..PROPOSAL_ID_WINDOW {
        apply_proposal(
            &store,
            &Proposal {
                issued_at: i,
                ..proposal(&put("x", &i.to_string()))
            },
        );
    }
    let retried_late = apply_proposal(&store, &p);
    assert_eq!(
        retried_late.response,
        Response::Rejected(Rejection::ProposalExpired)
    );
    assert!(retried_late.changes.is_none());
    assert_eq!(
        store.kv_get("k").expect("get").1.expect("present").version,
        1
    );
    // A proposal issued within the window is applied.
    let fresh = Proposal {
        issued_at: store.applied_proposals(),
        ..proposal(&put("k", "w"))
    };
    assert!(apply_proposal(&store, &fresh).changes.is_some());
}

#[test]
fn revisions_versions_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    apply(&store, &put("a", "1"));
    apply(&store, &put("a", "2"));
    let del = Command::Txn(Txn {
        compare: vec![],
        success: vec![TxnOp::Delete {
            key: "a".into(),
            prefix: false,
        }],
        failure: vec![],
    });
    assert_eq!(apply(&store, &del).changes.map(|c| c.revision), Some(3));
    apply(&store, &put("a", "3"));
    let (counters, kv) = store.kv_get("a").expect("get");
    let kv = kv.expect("present");
    assert_eq!(
        (
            counters.revision,
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (4, 4, 4, 1)
    );
    let (_, history) = store.kv_history("a", None, 10).expect("history");
    let revs: Vec<u64> = history.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, vec![4, 3, 2, 1]);
    // Rollback to revision 1 writes "1" as revision 5.
    let rolled = apply(
        &store,
        &Command::Rollback {
            key: "a".into(),
            revision: 1,
        },
    );
    assert_eq!(rolled.changes.map(|c| c.revision), Some(5));
    assert_eq!(
        store.kv_get("a").expect("get").1.expect("present").value,
        b"1"
    );
}

#[test]
fn failed_lease_put_writes_nothing_and_compaction_drops_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let bad = Command::Txn(Txn {
        compare: vec![],
        success: vec![
            TxnOp::Put {
                key: "x".into(),
                value: b"1".to_vec(),
                lease: 0,
            },
            TxnOp::Put {
                key: "y".into(),
                value: b"1".to_vec(),
                lease: 42,
            },
        ],
        failure: vec![],
    });
    let applied = apply(&store, &bad);
    assert_eq!(
        applied.response,
        Response::Rejected(Rejection::LeaseNotFound(42))
    );
    assert!(store.kv_get("x").expect("get").1.is_none());
    for i in 0..10 {
        apply(&store, &put("k", &i.to_string()));
    }
    apply(&store, &Command::Compact { revision: 8 });
    let changes = store.kv_changes(1, &|_| true, 100, 100).expect("changes");
    assert_eq!(changes.counters.compact_revision, 8);
    assert_eq!(changes.batches.first().map(|b| b.revision), Some(8));
    let exported = export(&store);
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Store::open(other_dir.path()).expect("open");
    other.sm_import(&exported[..]).expect("import");
    assert_eq!(
        other.kv_get("k").expect("get"),
        store.kv_get("k").expect("get")
    );
}

/// Commands applied together in one batch answer and change exactly as they
/// would one by one: each sees the ones before it, a rejected one undoes
/// only itself, and a retry within the batch answers with the first outcome.
#[test]
fn a_batch_of_proposals_behaves_like_one_by_one() {
    let lease_put = |key: &str, lease: u64| {
        Command::Txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Put {
                key: key.into(),
                value: b"v".to_vec(),
                lease,
            }],
            failure: vec![],
        })
    };
    let cas = |key: &str, version: u64, value: &str| {
        Command::Txn(Txn {
            compare: vec![Compare {
                key: key.into(),
                target: CompareTarget::Version(version),
                op: CompareOp::Equal,
            }],
            success: vec![TxnOp::Put {
                key: key.into(),
                value: value.into(),
                lease: 0,
            }],
            failure: vec![TxnOp::Get { key: key.into() }],
        })
    };
    let commands = vec![
        put("a", "1"),
        cas("a", 1, "2"),
        cas("a", 1, "lost"),
        Command::LeaseGrant { ttl_seconds: 60 },
        Command::LeaseGrant { ttl_seconds: 60 },
        lease_put("b", 2),
        lease_put("c", 99),
        Command::Rollback {
            key: "a".into(),
            revision: 1,
        },
        Command::LeaseRevoke { id: 2 },
        put("a", "3"),
        Command::Compact { revision: 3 },
        put("d", "4"),
    ];
    let proposals: Vec<Proposal> = commands.iter().map(proposal).collect();

    let one_dir = tempfile::tempdir().expect("tempdir");
    let one_by_one = Store::open(one_dir.path()).expect("open");
    let mut expected = Vec::new();
    let mut expected_changes = Vec::new();
    for p in &proposals {
        let applied = apply_proposal(&one_by_one, p);
        expected.push(applied.response);
        expected_changes.extend(applied.changes);
    }

    let together_dir = tempfile::tempdir().expect("tempdir");
    let together = Store::open(together_dir.path()).expect("open");
    let mut batch = together.sm_batch().expect("batch");
    let mut answers = Vec::new();
    for p in &proposals {
        answers.push(batch.apply(p).expect("apply"));
    }
    // A retry of the second proposal in the same batch.
    let retry = batch.apply(&proposals[1]).expect("apply");
    batch.set_position(AT).expect("position");
    let changes = batch.commit().expect("commit");

    assert_eq!(answers, expected);
    assert_eq!(retry, expected[1], "a retry answers with the first outcome");
    assert_eq!(changes, expected_changes);
    assert_eq!(export(&together), export(&one_by_one));
}

/// Values are encoded as bytes; the bincode must stay what it was when they
/// were plain sequences, or stored data and peers of the version before
/// could not be read.
#[test]
fn value_bytes_encode_as_before() {
    #[derive(serde::Serialize)]
    struct Before {
        key: String,
        value: Vec<u8>,
        create_revision: u64,
        mod_revision: u64,
        version: u64,
        lease: u64,
    }
    let value: Vec<u8> = (0..=255u8).chain(0..40).collect();
    let kv = KeyValue {
        key: "k".into(),
        value: value.clone(),
        create_revision: 3,
        mod_revision: 300,
        version: 7,
        lease: 0,
    };
    let before = Before {
        key: "k".into(),
        value,
        create_revision: 3,
        mod_revision: 300,
        version: 7,
        lease: 0,
    };
    assert_eq!(
        shoal_codec::encode(&kv).expect("encode"),
        shoal_codec::encode(&before).expect("encode")
    );
    let decoded: KeyValue =
        shoal_codec::decode(&shoal_codec::encode(&before).expect("encode")).expect("decode");
    assert_eq!(decoded, kv);
}

/// The applier remembers the pairs it wrote; a snapshot that replaces the
/// state must make it forget them, or the next write would build on a
/// version the store no longer has.
#[test]
fn a_snapshot_replaces_what_the_applier_remembers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    apply(&store, &put("k", "1"));
    let snapshot = export(&store);
    apply(&store, &put("k", "2"));
    apply(&store, &put("k", "3"));
    store.sm_import(&snapshot[..]).expect("import");
    let after = apply(&store, &put("k", "again"));
    let Response::Txn { results, .. } = after.response else {
        panic!("a put answers with a txn result")
    };
    let Some(OpResult::Put {
        kv,
        prev: Some(prev),
    }) = results.first()
    else {
        panic!("a put with a previous version")
    };
    assert_eq!(
        (prev.version, prev.mod_revision),
        (1, 1),
        "the previous version is the snapshot's"
    );
    assert_eq!(kv.version, 2);
}

/// Every replica must reach the same state from the same log, however its
/// applier splits the log into runs: the proposal id window (which ids are
/// remembered, which retries are refused) and leases depend on the log
/// alone. Applies one log, with retries and late retries, in runs of 1, of
/// 7, of 61 and all at once, and compares the whole state byte for byte.
#[test]
fn the_same_log_in_different_runs_gives_identical_state() {
    let mut log: Vec<Proposal> = Vec::new();
    for i in 0..(PROPOSAL_ID_WINDOW * 3) {
        let issued_at = log.len().saturating_sub(5) as u64;
        let command = match i % 9 {
            0 => Command::LeaseGrant { ttl_seconds: 30 },
            1 => Command::LeaseKeepAlive { id: 1 + i / 9 },
            2 => Command::LeaseExpire {
                leases: vec![(i / 9, 0), (i / 9 + 1, 1)],
            },
            3 => Command::Txn(Txn {
                compare: vec![],
                success: vec![TxnOp::Delete {
                    key: format!("k{}", i % 13),
                    prefix: true,
                }],
                failure: vec![],
            }),
            4 => Command::Compact { revision: i / 3 },
            _ => put(&format!("k{}", i % 17), &i.to_string()),
        };
        log.push(Proposal {
            issued_at,
            ..proposal(&command)
        });
        // Retries: a recent one (applied once), and one from far back (its
        // id is pruned on some schedule; refused on every replica).
        if i % 11 == 0 && log.len() >= 3 {
            log.push(log[log.len() - 3].clone());
        }
        if i % 23 == 0 && log.len() > PROPOSAL_ID_WINDOW as usize + 2 {
            log.push(log[log.len() - PROPOSAL_ID_WINDOW as usize - 2].clone());
        }
    }
    let state_after = |run: usize| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut answers = Vec::new();
        for chunk in log.chunks(run) {
            let mut batch = store.sm_batch().expect("batch");
            for p in chunk {
                answers.push(batch.apply(p).expect("apply"));
            }
            batch.set_position(AT).expect("position");
            batch.commit().expect("commit");
        }
        let digest = store.sm_digest().expect("digest");
        (export(&store), digest.hash, answers)
    };
    let (one, one_digest, one_answers) = state_after(1);
    assert!(
        one_answers.contains(&Response::Rejected(Rejection::ProposalExpired)),
        "the log has late retries"
    );
    for run in [7, 61, log.len()] {
        let (data, digest, answers) = state_after(run);
        assert_eq!(answers, one_answers, "answers with runs of {run}");
        assert!(
            data == one,
            "state with runs of {run} differs from one by one"
        );
        assert_eq!(digest, one_digest, "digest with runs of {run}");
    }
}

#[test]
fn a_prefix_scan_reads_one_snapshot_however_long_it_takes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    // Issued now, so that none is refused as an expired retry.
    let put = |key: &str| {
        apply_proposal(
            &store,
            &Proposal {
                issued_at: store.applied_proposals(),
                ..proposal(&put(key, "v"))
            },
        )
    };
    for i in 0..3000 {
        put(&format!("p/m{i:04}"));
    }
    put("q/after-the-prefix");
    let before = store.counters().expect("counters").revision;
    // Writes land while the scan runs, each sorting before the scan's
    // position: none may be seen, and the revision reported must be the
    // one the keys seen were read at, so a watch from the next revision
    // brings every write the scan missed.
    let mut seen = Vec::new();
    let counters = store
        .kv_scan_prefix("p/", &mut |kv| {
            if seen.len() % 500 == 0 {
                put(&format!("p/a{}", seen.len()));
            }
            seen.push(kv.key);
        })
        .expect("scan");
    assert_eq!(seen.len(), 3000, "only the keys of the snapshot");
    assert!(seen.iter().all(|key| key.starts_with("p/m")), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in key order");
    assert_eq!(counters.revision, before, "the snapshot's revision");
    assert_eq!(store.counters().expect("counters").revision, before + 6);
}

/// Puts of `keys` with `value`, each issued now (none refused as a late
/// retry).
fn put_all(store: &Store, keys: impl IntoIterator<Item = String>, value: &str) {
    for key in keys {
        let issued_at = store.applied_proposals();
        apply_proposal(
            store,
            &Proposal {
                issued_at,
                ..proposal(&put(&key, value))
            },
        );
    }
}

/// An import written in many batches replaces every column family whole:
/// what the importing store had and the export does not (keys sorting
/// before and after the export's, their history, proposal ids, counters)
/// is gone, and the state is the exporter's byte for byte.
#[test]
fn an_import_in_many_batches_replaces_the_whole_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Store::open(&dir.path().join("source")).expect("open");
    put_all(&source, (0..300).map(|i| format!("m/{i:03}")), "exported");
    apply(&source, &Command::Compact { revision: 100 });
    let target = Store::open(&dir.path().join("target")).expect("open");
    put_all(
        &target,
        ["a/first".to_string(), "z/last".to_string()],
        "old",
    );
    put_all(&target, (0..50).map(|i| format!("m/{i:03}")), "old");
    apply(&target, &Command::Compact { revision: 20 });
    target
        .sm_import_in_batches(&export(&source)[..], 256)
        .expect("import");
    let (want, got) = (
        source.sm_digest().expect("digest"),
        target.sm_digest().expect("digest"),
    );
    assert_eq!((got.hex(), got.records), (want.hex(), want.records));
    assert!(target.kv_get("z/last").expect("get").1.is_none());
    assert_eq!(
        target.counters().expect("counters"),
        source.counters().expect("counters")
    );
    assert_eq!(target.applied_proposals(), source.applied_proposals());
}

/// An import is written in several batches, but a reader sees the state
/// before it or after it, never a mixture: 200 keys are all "old" or all
/// "new" in every read made while imports of either state run in batches
/// of a few records.
#[test]
fn readers_never_see_an_import_half_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = || (0..200).map(|i| format!("k/{i:03}"));
    let exports: Vec<Vec<u8>> = ["old", "new"]
        .iter()
        .map(|value| {
            let store = Store::open(&dir.path().join(value)).expect("open");
            put_all(&store, keys(), value);
            export(&store)
        })
        .collect();
    let store = Store::open(&dir.path().join("importing")).expect("open");
    store.sm_import(&exports[0][..]).expect("import");
    let importing = std::sync::atomic::AtomicBool::new(true);
    let reads = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while importing.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, kvs, _) = store.kv_range("k/", None, 1000).expect("range");
                let values: std::collections::BTreeSet<&[u8]> =
                    kvs.iter().map(|kv| kv.value.as_slice()).collect();
                assert!(
                    kvs.len() == 200 && values.len() == 1,
                    "{} keys, values {values:?}",
                    kvs.len()
                );
                reads += 1;
            }
            reads
        });
        for round in 0..40 {
            store
                .sm_import_in_batches(&exports[round % 2][..], 512)
                .expect("import");
        }
        importing.store(false, std::sync::atomic::Ordering::Relaxed);
        reader.join().expect("the reader")
    });
    assert!(reads > 0);
}

/// An export that says when it is first read (the import then holds the
/// readers' gate) and blocks there until told to go on.
struct HeldExport<'a> {
    data: &'a [u8],
    hold: Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>,
}

impl std::io::Read for HeldExport<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some((reading, release)) = self.hold.take() {
            let _ = reading.send(());
            let _ = release.recv();
        }
        self.data.read(out)
    }
}

/// While an import holds every other reader off, the counters answer at
/// once with the state being replaced, flagged as importing; afterwards
/// they are the imported state's. Read through the gate, they would wait
/// for the import to end (and the test would time out).
#[test]
fn counters_answer_while_an_import_holds_readers_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Store::open(&dir.path().join("source")).expect("open");
    put_all(&source, (0..30).map(|i| format!("k/{i:02}")), "new");
    let exported = export(&source);
    let store = Store::open(&dir.path().join("importing")).expect("open");
    put_all(&store, (0..5).map(|i| format!("k/{i:02}")), "old");
    let before = store.counters().expect("counters");
    assert_ne!(before, source.counters().expect("counters"));
    assert!(!store.importing_snapshot());

    let (release, held) = std::sync::mpsc::channel();
    let (reading, started) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let importer = scope.spawn(|| {
            store.sm_import(HeldExport {
                data: &exported,
                hold: Some((reading, held)),
            })
        });
        started.recv().expect("the import reads its data");
        assert!(store.importing_snapshot());
        let (answered, waiting) = std::sync::mpsc::channel();
        let store = &store;
        let reader = scope.spawn(move || {
            let _ = answered.send(store.counters_unless_importing());
        });
        let during = waiting.recv_timeout(std::time::Duration::from_secs(10));
        release.send(()).expect("the import waits");
        let during = during
            .expect("the counters waited for the import")
            .expect("counters");
        assert_eq!(during, (before, true));
        importer.join().expect("importer").expect("import");
        reader.join().expect("reader");
    });
    assert!(!store.importing_snapshot());
    assert_eq!(
        store.counters_unless_importing().expect("counters"),
        (source.counters().expect("counters"), false)
    );
}

/// This process's resident memory and its peak (`VmRSS`, `VmHWM`), bytes.
fn rss_and_peak() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// An import holds a bounded part of the state in memory, however large
/// the state: importing an export of about 600 MB (300 values of 1 MiB and
/// their history) from a file raises this process's resident memory by
/// less than half of it. An import in one write batch holds all of it.
#[test]
fn an_import_does_not_hold_the_state_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("export");
    let want = {
        let source = Store::open(&dir.path().join("source")).expect("open");
        let value = "v".repeat(1 << 20);
        put_all(&source, (0..300).map(|i| format!("big/{i:03}")), &value);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        source.sm_export(&mut out).expect("export");
        std::io::Write::flush(&mut out).expect("flush");
        source.sm_digest().expect("digest")
    };
    let exported = std::fs::metadata(&path).expect("metadata").len();
    let target = Store::open(&dir.path().join("target")).expect("open");
    // Reset the peak to the current resident memory (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let (before, _) = rss_and_peak();
    target
        .sm_import(std::fs::File::open(&path).expect("open the export"))
        .expect("import");
    let (_, peak) = rss_and_peak();
    let growth = peak.saturating_sub(before);
    eprintln!("import of {exported} bytes: peak RSS {growth} bytes above the start");
    assert!(
        growth < exported / 2,
        "the import raised the peak RSS by {growth} bytes for an export of {exported}"
    );
    assert_eq!(target.sm_digest().expect("digest").hash, want.hash);
}

/// A key's history finds its own event in a revision that changed several
/// keys, with its own value (the events are read in place, one copied).
#[test]
fn history_of_a_key_changed_with_others_in_one_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let put_op = |key: &str, value: &[u8]| TxnOp::Put {
        key: key.into(),
        value: value.to_vec(),
        lease: 0,
    };
    let txn = Command::Txn(Txn {
        compare: vec![],
        success: vec![
            put_op("x", &[1; 3000]),
            put_op("y", b"two"),
            put_op("z", b""),
        ],
        failure: vec![],
    });
    assert_eq!(apply(&store, &txn).changes.map(|c| c.revision), Some(1));
    for (key, value) in [
        ("x", vec![1; 3000]),
        ("y", b"two".to_vec()),
        ("z", Vec::new()),
    ] {
        let (_, history) = store.kv_history(key, None, 10).expect("history");
        let found: Vec<(&str, &[u8], u64)> = history
            .iter()
            .map(|e| (e.kv.key.as_str(), e.kv.value.as_slice(), e.kv.mod_revision))
            .collect();
        assert_eq!(found, vec![(key, value.as_slice(), 1)], "history of {key}");
    }
}
