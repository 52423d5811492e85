//! Where log records live: the write-ahead log across `kill -9` (every
//! acknowledged record comes back exactly once), retention by age and by
//! size, and the caps that turn overload into 429s. See `docs/logs.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_tests::*;

/// `n` of every hit, counted: a record seen twice has count 2.
fn counts_of(hits: &[Value]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for hit in hits {
        *counts.entry(num(hit, "/attributes/n")).or_insert(0) += 1;
    }
    counts
}

/// Records `first..first + count` of a batch, each with its number `n`.
fn numbered(first: u64, count: u64, label: &str) -> Vec<Value> {
    (first..first + count)
        .map(|n| json!({"message": format!("{label} {n}"), "n": n}))
        .collect()
}

/// One search of everything in `stream` (no waiting): the hits.
async fn everything(node: &Node, stream: &str) -> Vec<Value> {
    hits_of(&node.search(&[("stream", stream), ("limit", "10000")]).await)
}

#[track_caller]
fn assert_exactly(hits: &[Value], want: impl IntoIterator<Item = u64>, what: &str) {
    let counts = counts_of(hits);
    let want: BTreeSet<u64> = want.into_iter().collect();
    let duplicated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{what}: records found more than once (n, times): {duplicated:?}"
    );
    let got: BTreeSet<u64> = counts.keys().copied().collect();
    let missing: Vec<&u64> = want.difference(&got).collect();
    let extra: Vec<&u64> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, unexpected {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_records_survive_kill9_exactly_once() {
    // Nothing is committed for a minute: every record must come from the WAL.
    let mut node = Node::start_with(&["--logs-commit-ms", "60000"]).await;
    for batch in 0..20 {
        node.ingest_records("durable", &numbered(batch * 10, 10, "durable"))
            .await;
    }
    let before = everything(&node, "durable").await;
    assert!(
        before.is_empty(),
        "records are searchable before any commit: {}",
        before.len()
    );

    node.kill9();
    node.restart().await;
    // Replayed and committed before the node is ready.
    let hits = everything(&node, "durable").await;
    assert_exactly(&hits, 0..200, "after kill -9 before any commit");

    // Committed at start; a second kill -9 must not replay them again.
    node.kill9();
    node.restart().await;
    assert_exactly(
        &everything(&node, "durable").await,
        0..200,
        "after a second kill -9",
    );

    // Now with the normal commit interval: records committed by the timer,
    // whose WAL entries are still on disk, are not indexed twice either.
    let args = node.args_mut();
    let at = args
        .iter()
        .position(|a| a == "--logs-commit-ms")
        .expect("--logs-commit-ms");
    args.drain(at..at + 2);
    node.restart().await;
    for batch in 20..25 {
        node.ingest_records("durable", &numbered(batch * 10, 10, "durable"))
            .await;
    }
    node.wait_hits(&[("stream", "durable")], 250).await;
    node.kill9();
    node.restart().await;
    assert_exactly(
        &everything(&node, "durable").await,
        0..250,
        "after kill -9 after a commit",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_more_days_than_open_writers_survives_kill9() {
    // One batch over 12 days, its days interleaved: the indexer keeps 8
    // writers open, so it closes (and commits) some in the middle of the
    // batch, and those partitions get more of the batch's records after.
    let mut node =
        Node::start_with(&["--logs-commit-ms", "60000", "--logs-retention-days", "30"]).await;
    let now = now_nanos();
    let records: Vec<Value> = (0..240u64)
        .map(|n| {
            let at = now - (n % 12) as i64 * DAY - n as i64 * 1_000_000;
            json!({"timestamp": at, "message": format!("spread {n}"), "n": n})
        })
        .collect();
    let answer = node
        .ingest_raw("spread", "application/x-ndjson", ndjson(&records))
        .await
        .ok();
    assert_eq!(answer["accepted"].as_u64(), Some(240), "{answer}");
    node.kill9();
    node.restart().await;
    assert_exactly(
        &everything(&node, "spread").await,
        0..240,
        "after kill -9 with writers closed mid-batch",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_partition_is_set_aside_and_new_records_are_kept() {
    let mut node = Node::start().await;
    node.ingest_records("mend", &numbered(0, 10, "mend")).await;
    node.wait_hits(&[("stream", "mend")], 10).await;
    node.kill9();
    // Damage the partition's meta.json, as a bad disk or a bad hand would.
    let stream_dir = node.data_dir().join("search").join("indexes").join("mend");
    let day_dirs: Vec<_> = std::fs::read_dir(&stream_dir)
        .expect("the stream's directory")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert_eq!(day_dirs.len(), 1, "{day_dirs:?}");
    std::fs::write(day_dirs[0].join("meta.json"), b"{ not json").expect("damage");
    node.restart().await;
    // New records of the same stream and day are indexed, not dropped.
    node.ingest_records("mend", &numbered(10, 10, "mend")).await;
    let hits = wait_for(
        Duration::from_secs(30),
        "records 10-19 searchable",
        || async {
            let hits = everything(&node, "mend").await;
            let counts = counts_of(&hits);
            match (10..20).all(|n| counts.contains_key(&n)) {
                true => Ok(hits),
                false => Err(format!("{counts:?}")),
            }
        },
    )
    .await;
    // The first ten come back too when the WAL still held them (it is
    // removed a commit after theirs), each once.
    match counts_of(&hits).contains_key(&0) {
        true => assert_exactly(&hits, 0..20, "after the damage"),
        false => assert_exactly(&hits, 10..20, "after the damage"),
    }
    let set_aside: Vec<String> = std::fs::read_dir(&stream_dir)
        .expect("the stream's directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .to_string()
        })
        .filter(|name| name.contains(".set-aside-"))
        .collect();
    assert_eq!(
        set_aside.len(),
        1,
        "the damaged partition is kept aside: {set_aside:?}"
    );
    let metrics = node.get_path("/metrics").await;
    assert!(
        metrics
            .text
            .contains("shoal_logs_partitions_set_aside_total 1"),
        "{}",
        metrics.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_ingest_keeps_every_acknowledged_batch_whole() {
    let mut node = Node::start_with(&["--logs-commit-ms", "300"]).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let (client, url) = (reqwest::Client::new(), node.url("/v1/logs/racing"));
    let writer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            // Batches go one after another; the one in flight at the kill
            // may or may not be stored, but then whole.
            for batch in 0..10_000u64 {
                let body = ndjson(&numbered(batch * 25, 25, "racing"));
                let sent = client
                    .post(&url)
                    .body(body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == StatusCode::OK => {
                        acked.store(batch as usize + 1, Ordering::SeqCst);
                    }
                    _ => return batch,
                }
            }
            10_000
        })
    };
    eventually(Duration::from_secs(30), "40 acknowledged batches", || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::SeqCst) >= 40).then_some(()) }
    })
    .await;
    node.signal(libc::SIGKILL);
    let stopped_at = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the writer stops once the node is gone")
        .expect("writer task");
    let acked = acked.load(Ordering::SeqCst) as u64;
    assert_eq!(
        stopped_at, acked,
        "the writer stopped at the first unacknowledged batch"
    );
    node.restart().await;
    let hits = everything(&node, "racing").await;
    let counts = counts_of(&hits);
    assert!(counts.values().all(|c| *c == 1), "duplicates after replay");
    let batches: BTreeMap<u64, usize> = counts.keys().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n / 25).or_insert(0) += 1;
        m
    });
    for batch in 0..acked {
        assert_eq!(
            batches.get(&batch),
            Some(&25),
            "acknowledged batch {batch} is not whole: {batches:?}"
        );
    }
    // Only the batch in flight may be there beyond the acknowledged ones, and whole.
    let beyond: Vec<(&u64, &usize)> = batches.iter().filter(|(b, _)| **b >= acked).collect();
    assert!(
        beyond.is_empty() || beyond == vec![(&acked, &25)],
        "unacknowledged batches found: {beyond:?} (acknowledged: {acked})"
    );
}

/// `(partitions, docs, bytes)` of a stream in `/v1/logs/streams`, if listed.
async fn stream_info(node: &Node, name: &str) -> Option<(u64, u64, u64)> {
    let answer = node.get_path("/v1/logs/streams").await.ok();
    answer["streams"]
        .as_array()
        .expect("streams array")
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| (num(s, "/partitions"), num(s, "/docs"), num(s, "/bytes")))
}

/// Replaces the value after `flag` in the node's arguments (adding both if absent).
fn set_flag(node: &mut Node, flag: &str, value: &str) {
    let args = node.args_mut();
    match args.iter().position(|a| a == flag) {
        Some(at) => args[at + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_refuses_old_records_and_drops_expired_days() {
    let mut node = Node::start_with(&[
        "--logs-retention-days",
        "3",
        "--logs-stream-retention",
        "short=1",
    ])
    .await;
    let now = now_nanos();
    let two_days_ago = now - 2 * DAY;
    let mut records: Vec<Value> = (0..5u64)
        .map(|n| json!({"timestamp": two_days_ago + n as i64 * 1_000_000, "message": format!("old {n}"), "n": n}))
        .collect();
    records.extend((5..8u64).map(
        |n| json!({"timestamp": now - n as i64 * 1_000_000, "message": format!("new {n}"), "n": n}),
    ));
    records.push(json!({"timestamp": now - 4 * DAY, "message": "too old", "n": 8}));
    records.push(json!({"timestamp": now + 2 * DAY, "message": "too far ahead", "n": 9}));
    let answer = node
        .ingest_raw("kept", "application/x-ndjson", ndjson(&records))
        .await
        .ok();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(8), Some(2)),
        "{answer}"
    );
    assert_eq!(answer["errors"][0]["index"], 8, "{answer}");
    assert!(
        text(&answer, "/errors/0/error").contains("retention"),
        "{answer}"
    );
    assert_eq!(answer["errors"][1]["index"], 9, "{answer}");
    assert!(
        text(&answer, "/errors/1/error").contains("future"),
        "{answer}"
    );

    // A stream with its own, shorter retention.
    let answer = node
        .ingest_raw(
            "short",
            "application/x-ndjson",
            ndjson(&[
                json!({"timestamp": two_days_ago, "message": "short old"}),
                json!({"message": "short new"}),
            ]),
        )
        .await
        .ok();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{answer}"
    );
    assert_eq!(answer["errors"][0]["index"], 0, "{answer}");

    let hits = node.wait_hits(&[("stream", "kept")], 8).await;
    assert_exactly(&hits, 0..8, "before the restart");
    node.wait_hits(&[("stream", "short")], 1).await;
    assert_eq!(
        stream_info(&node, "kept").await.map(|(p, d, _)| (p, d)),
        Some((2, 8))
    );

    // One day of retention from now on: the day two days ago goes at start.
    set_flag(&mut node, "--logs-retention-days", "1");
    node.restart().await;
    let hits = everything(&node, "kept").await;
    assert_exactly(&hits, 5..8, "after the restart with one day of retention");
    assert_eq!(
        stream_info(&node, "kept").await.map(|(p, d, _)| (p, d)),
        Some((1, 3))
    );
    let old = node.search(&[("stream", "kept"), ("until", "36h")]).await;
    assert!(hits_of(&old).is_empty(), "{old}");
    let answer = node
        .ingest_raw(
            "kept",
            "application/x-ndjson",
            ndjson(&[
                json!({"timestamp": two_days_ago, "message": "old again", "n": 20}),
                json!({"message": "fresh", "n": 21}),
            ]),
        )
        .await
        .ok();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{answer}"
    );
    assert_exactly(
        &node.wait_hits(&[("stream", "kept")], 4).await,
        [5, 6, 7, 21],
        "after ingesting again",
    );
}

/// A deterministic stream of words that do not compress (nor repeat much).
fn noise(seed: u64, words: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(words * 9);
    for _ in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{:08x} ", x as u32));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn size_retention_drops_the_oldest_days_but_never_the_newest() {
    let mut node = Node::start().await;
    let now = now_nanos();
    // Yesterday: a small day. Today: a day bigger than the 1 MiB limit on its own.
    for (first, count, ts) in [
        (0u64, 300u64, now - DAY),
        (1000, 600, now - 1_000_000_000),
        (1600, 600, now - 1_000_000_000),
    ] {
        let records: Vec<Value> = (first..first + count)
            .map(|n| json!({"timestamp": ts - n as i64, "message": noise(n, if n < 1000 { 40 } else { 80 }), "n": n}))
            .collect();
        node.ingest_records("sized", &records).await;
    }
    node.wait_hits(&[("stream", "sized")], 1500).await;
    let (partitions, _, bytes) =
        eventually(SEARCHABLE_TIMEOUT, "both partitions measured", || async {
            stream_info(&node, "sized")
                .await
                .filter(|(p, _, b)| *p == 2 && *b > 0)
        })
        .await;
    assert_eq!(partitions, 2);

    set_flag(&mut node, "--logs-retention-mb", "1");
    node.restart().await;
    let hits = everything(&node, "sized").await;
    assert_exactly(
        &hits,
        (1000..2200).collect::<Vec<_>>(),
        "after size retention",
    );
    let (partitions, docs, after) = stream_info(&node, "sized")
        .await
        .expect("the stream is still listed");
    assert_eq!((partitions, docs), (1, 1200));
    assert!(
        after > 1 << 20,
        "today's partition ({after} bytes of {bytes}) is over the limit, and kept"
    );
}

/// Batches of about 200 KB (200 records of 1 KB).
fn big_batch(batch: u64) -> String {
    let records: Vec<Value> = (0..200u64)
        .map(|i| json!({"message": format!("capped {}", noise(batch * 1000 + i, 110)), "n": batch * 200 + i}))
        .collect();
    ndjson(&records)
}

/// Ingests ~200 KB batches until one is refused with 429; returns how many
/// were acknowledged. Checks the 429's shape.
async fn fill_until_busy(node: &Node, stream: &str) -> u64 {
    for batch in 0..200u64 {
        let reply = node
            .ingest_raw(stream, "application/x-ndjson", big_batch(batch))
            .await;
        match reply.status.as_u16() {
            200 => assert_eq!(reply.body["accepted"], 200, "{}", reply.describe()),
            429 => {
                assert_error(&reply, 429, "busy");
                assert_eq!(
                    reply
                        .headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()),
                    Some("1"),
                    "429 without Retry-After: {:?}",
                    reply.headers
                );
                assert!(
                    batch >= 1,
                    "the very first batch was refused: {}",
                    reply.describe()
                );
                return batch;
            }
            _ => panic!("batch {batch}: {}", reply.describe()),
        }
    }
    panic!("200 batches of 200 KB were all accepted past a 1 MiB cap");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_cap_answers_429_and_keeps_what_was_acknowledged() {
    let node = Node::start_with(&["--logs-disk-max-mb", "1"]).await;
    let acked = fill_until_busy(&node, "capped").await;
    assert!(
        acked <= 10,
        "{acked} batches of 200 KB fit under a 1 MiB disk cap"
    );

    // The Elasticsearch path refuses the whole request, as shippers expect.
    let bulk = "{\"index\":{\"_index\":\"capped\"}}\n{\"message\":\"via bulk\"}\n";
    let reply = node
        .send(
            node.request(Method::POST, "/_bulk")
                .header("content-type", "application/x-ndjson")
                .body(bulk),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.describe()
    );
    assert_eq!(
        reply.body["error"]["type"],
        "es_rejected_execution_exception",
        "{}",
        reply.describe()
    );
    assert_eq!(reply.body["status"], 429, "{}", reply.describe());
    assert!(
        reply.headers.get("retry-after").is_some(),
        "{:?}",
        reply.headers
    );

    // The node is healthy, searches work, and everything acknowledged is there.
    let health = node.get_path("/health").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.describe());
    let hits = node
        .wait_hits(&[("stream", "capped")], (acked * 200) as usize)
        .await;
    assert_exactly(&hits, 0..acked * 200, "acknowledged before the cap");
    // The disk does not shrink by itself: still busy.
    let reply = node
        .ingest_raw("capped", "application/x-ndjson", big_batch(999))
        .await;
    assert_error(&reply, 429, "busy");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wal_cap_answers_429_until_committed_segments_are_removed() {
    let node = Node::start_with(&["--logs-wal-max-mb", "1"]).await;
    let acked = fill_until_busy(&node, "walcap").await;
    // Once the indexer has committed, the WAL shrinks and ingest works
    // again. The batch retried is the one numbered `acked` (a refused batch
    // is not stored).
    wait_for(
        Duration::from_secs(30),
        "ingest accepted again after the WAL cap",
        || async {
            let reply = node
                .ingest_raw("walcap", "application/x-ndjson", big_batch(acked))
                .await;
            match reply.status.as_u16() {
                200 => Ok(()),
                429 => Err(reply.describe()),
                _ => panic!("{}", reply.describe()),
            }
        },
    )
    .await;
    let hits = node
        .wait_hits(&[("stream", "walcap")], ((acked + 1) * 200) as usize)
        .await;
    assert_exactly(&hits, 0..(acked + 1) * 200, "acknowledged records");
}

/// Copy the directory tree `from` to `to`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in std::fs::read_dir(from)
        .unwrap_or_else(|e| panic!("reading {}: {e}", from.display()))
        .flatten()
    {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
    }
}

/// The fixture's two day partitions of the stream `legacy`, written by a
/// build whose term dictionaries were FSTs (see tests/fixtures/logs-format1).
fn format1_fixture() -> std::path::PathBuf {
    package_dir().join("fixtures/logs-format1/legacy")
}

/// All 30 fixture records, found with several kinds of query, each with
/// the record sequence number it had before the rebuild.
async fn assert_fixture_searchable(node: &Node, what: &str) {
    let all = [
        ("stream", "legacy"),
        ("since", "2024-05-01T00:00:00Z"),
        ("limit", "100"),
    ];
    let hits = hits_of(&node.search(&all).await);
    let mut numbers = BTreeSet::new();
    for hit in &hits {
        let message = text(hit, "/message");
        let n: u64 = message
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: {hit}"));
        // The old build gave record n the sequence number n + 5 (its own
        // log records took 1 to 4); the rebuild must keep them.
        assert_eq!(num(hit, "/seq"), n + 5, "{what}: sequence number of {hit}");
        numbers.insert(n);
    }
    assert_eq!(
        numbers,
        (0..30).collect::<BTreeSet<u64>>(),
        "{what}: every record once ({} hits)",
        hits.len()
    );

    let query = |q: &'static str| {
        [
            ("stream", "legacy"),
            ("since", "2024-05-01T00:00:00Z"),
            ("q", q),
        ]
    };
    let count = |answer: &Value| hits_of(answer).len();
    assert_eq!(
        count(&node.search(&query("\"payment declined\"")).await),
        6,
        "{what}: phrase"
    );
    assert_eq!(
        count(
            &node
                .search(&query("service:payments AND level:error"))
                .await
        ),
        5,
        "{what}: fields"
    );
    assert_eq!(
        count(&node.search(&query("attributes.order.id:o-7")).await),
        1,
        "{what}: attribute"
    );
    let trace = node
        .search(&query("trace_id:00000000000000000000000000000013"))
        .await;
    assert_eq!(
        hits_of(&trace)
            .iter()
            .map(|h| text(h, "/message"))
            .collect::<Vec<_>>(),
        ["legacy record 19 ok"],
        "{what}: trace id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_of_the_earlier_format_are_rebuilt() {
    let mut node = Node::start_with(&["--logs-retention-days", "36500"]).await;
    node.terminate(Duration::from_secs(30)).await;
    let legacy = node.data_dir().join("search/indexes/legacy");
    copy_tree(&format1_fixture(), &legacy);
    node.restart().await;
    assert_fixture_searchable(&node, "after the rebuild").await;
    for day in ["2024-05-01", "2024-05-02"] {
        assert!(
            legacy.join(day).join("shoal-format").exists(),
            "{day} has no format file"
        );
        assert!(
            !legacy.join(format!("{day}.upgrading")).exists(),
            "{day}: the old partition is left behind"
        );
    }

    // Rebuilt once: a restart finds the same records, no more.
    node.restart().await;
    assert_fixture_searchable(&node, "after a restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_rebuild_starts_over() {
    let mut node = Node::start_with(&["--logs-retention-days", "36500"]).await;
    node.terminate(Duration::from_secs(30)).await;
    // As left by a crash during the rebuild of both days: the old partitions
    // moved aside; for 2024-05-01 a half-written new one, for 2024-05-02
    // none yet.
    let legacy = node.data_dir().join("search/indexes/legacy");
    for day in ["2024-05-01", "2024-05-02"] {
        copy_tree(
            &format1_fixture().join(day),
            &legacy.join(format!("{day}.upgrading")),
        );
    }
    copy_tree(
        &format1_fixture().join("2024-05-02"),
        &legacy.join("2024-05-01"),
    );
    std::fs::write(legacy.join("2024-05-01/shoal-format"), "2").expect("writing the format file");
    node.restart().await;
    assert_fixture_searchable(&node, "after the interrupted rebuild").await;
}
