//! Watch: SSE streams, resumption, long-polling and compaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_tests::*;

const T: Duration = Duration::from_secs(10);

/// Applies single-key writes, returning the changes they make.
async fn write_all(node: &Node, ops: &[(&str, Option<&[u8]>)]) -> Vec<Change> {
    let mut out = Vec::new();
    for (key, value) in ops {
        match value {
            Some(value) => out.push(Change::put(node.put_rev(key, value).await, key, value)),
            None => {
                let body = node.delete(key).await;
                assert_eq!(num(&body, "/deleted"), 1, "delete {key}: {body}");
                out.push(Change::delete(num(&body, "/revision"), key));
            }
        }
    }
    out
}

fn batches_of(reply: &Reply) -> Vec<Value> {
    reply.body["batches"]
        .as_array()
        .unwrap_or_else(|| panic!("poll reply without batches: {}", reply.describe()))
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_from_past_revision_replays_exactly_the_changes() {
    let node = Node::start().await;
    // Before the watch's start revision: must not be delivered.
    node.put("w/old", b"too old").await;

    let expected = write_all(
        &node,
        &[
            ("w/a", Some(b"1")),
            ("w/b", Some(b"2")),
            ("w/a", Some(b"3")),
            ("w/b", None),
            ("w/c", Some(b"\x00\x01\xfe\xff")),
            ("w/old", None),
            ("w/b", Some(b"again")),
            ("w/c", Some(b"")),
        ],
    )
    .await;
    let first = expected[0].revision;
    let last = expected.last().expect("changes").revision;
    assert_eq!(last, first + 7, "one revision per write");

    let from = first.to_string();
    let mut watch = node
        .watch(&[("prefix", "w/"), ("from_revision", &from)], None)
        .await;
    let batches = watch.events_through(last, T).await;
    assert_eq!(
        changes(&batches),
        expected,
        "exactly the changes since {first}, in order"
    );

    // Live changes follow, with nothing repeated in between.
    let live = node.put_rev("w/live", b"now").await;
    let (id, batch) = watch.next_event(T).await;
    assert_eq!(id, live);
    assert_eq!(changes(&[batch]), vec![Change::put(live, "w/live", b"now")]);

    // A delete event carries the key and the delete's revision.
    let del = num(&node.delete("w/a").await, "/revision");
    let (_, batch) = watch.next_event(T).await;
    assert_eq!(changes(&[batch]), vec![Change::delete(del, "w/a")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_without_from_revision_sees_only_new_changes() {
    let node = Node::start().await;
    node.put("n/before", b"old").await;
    let mut watch = node.watch(&[("prefix", "n/")], None).await;
    let rev = node.put_rev("n/after", b"new").await;
    let (id, batch) = watch.next_event(T).await;
    assert_eq!(
        id, rev,
        "the first event is the first change after the watch began: {batch}"
    );
    assert_eq!(changes(&[batch]), vec![Change::put(rev, "n/after", b"new")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_watch_skips_other_keys() {
    let node = Node::start().await;
    let start = node.revision().await + 1;
    let mut expected = Vec::new();
    for (key, value) in [
        ("app/a", "1"),
        ("apple", "x"),
        ("other/app/a", "x"),
        ("app/b", "2"),
        ("ap", "x"),
        ("app", "x"),
        ("app/a", "3"),
    ] {
        let rev = node.put_rev(key, value.as_bytes()).await;
        if key.starts_with("app/") {
            expected.push(Change::put(rev, key, value.as_bytes()));
        }
    }
    let from = start.to_string();
    let mut watch = node
        .watch(&[("prefix", "app/"), ("from_revision", &from)], None)
        .await;
    let last = expected.last().expect("changes").revision;
    let batches = watch.events_through(last, T).await;
    assert_eq!(changes(&batches), expected);

    // A non-matching write, then a matching one: only the latter arrives.
    node.put("apps", b"x").await;
    let rev = node.put_rev("app/z", b"z").await;
    let (id, batch) = watch.next_event(T).await;
    assert_eq!(id, rev);
    assert_eq!(changes(&[batch]), vec![Change::put(rev, "app/z", b"z")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn single_key_watch_is_exact() {
    let node = Node::start().await;
    let start = node.revision().await + 1;
    let r1 = node.put_rev("cfg", b"1").await;
    node.put("cfg2", b"prefix sibling").await;
    node.put("cfg/child", b"child").await;
    let r2 = node.put_rev("cfg", b"2").await;
    let r3 = num(&node.delete("cfg").await, "/revision");
    node.put("cfg/child", b"child 2").await;

    let from = start.to_string();
    let mut watch = node
        .watch(&[("key", "cfg"), ("from_revision", &from)], None)
        .await;
    let batches = watch.events_through(r3, T).await;
    assert_eq!(
        changes(&batches),
        vec![
            Change::put(r1, "cfg", b"1"),
            Change::put(r2, "cfg", b"2"),
            Change::delete(r3, "cfg"),
        ]
    );
    node.put("cfgx", b"no").await;
    let r4 = node.put_rev("cfg", b"3").await;
    let (id, _) = watch.next_event(T).await;
    assert_eq!(id, r4);
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_and_prefix_delete_arrive_as_single_batches() {
    let node = Node::start().await;
    let r0 = node.put_rev("tx/gone", b"bye").await;
    let reply = node
        .txn(&json!({"compare": [], "success": [
            {"put": {"key": "tx/1", "value": b64(b"one")}},
            {"put": {"key": "tx/2", "value": b64(b"two")}},
            {"put": {"key": "tx/3", "value": b64(b"three")}},
            {"delete": {"key": "tx/gone"}},
            {"put": {"key": "elsewhere", "value": b64(b"not watched")}}
        ], "failure": []}))
        .await;
    let rt = num(&reply.ok(), "/revision");
    let del = node.delete_with("tx/", &[("prefix", "true")]).await.ok();
    let rd = num(&del, "/revision");
    assert_eq!(num(&del, "/deleted"), 3);

    let from = (r0 + 1).to_string();
    let mut watch = node
        .watch(&[("prefix", "tx/"), ("from_revision", &from)], None)
        .await;

    let (id, batch) = watch.next_event(T).await;
    assert_eq!(id, rt);
    // The spec does not fix the order of events inside a batch.
    let mut got = changes(&[batch]);
    got.sort();
    let mut want = vec![
        Change::put(rt, "tx/1", b"one"),
        Change::put(rt, "tx/2", b"two"),
        Change::put(rt, "tx/3", b"three"),
        Change::delete(rt, "tx/gone"),
    ];
    want.sort();
    assert_eq!(
        got, want,
        "the transaction is one batch with one event per matching key"
    );

    let (id, batch) = watch.next_event(T).await;
    assert_eq!(id, rd);
    let mut got = changes(&[batch]);
    got.sort();
    assert_eq!(
        got,
        vec![
            Change::delete(rd, "tx/1"),
            Change::delete(rd, "tx/2"),
            Change::delete(rd, "tx/3")
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_with_last_event_id() {
    let node = Node::start().await;
    let start = node.revision().await + 1;
    let mut expected = Vec::new();
    for i in 0..5 {
        let key = format!("res/{i}");
        expected.push(Change::put(
            node.put_rev(&key, b"first").await,
            &key,
            b"first",
        ));
    }

    let from = start.to_string();
    let query = [("prefix", "res/"), ("from_revision", from.as_str())];
    let mut watch = node.watch(&query, None).await;
    let mut seen = Vec::new();
    let mut last_id = 0;
    for _ in 0..3 {
        let (id, batch) = watch.next_event(T).await;
        last_id = id;
        seen.push(batch);
    }
    assert_eq!(changes(&seen), expected[..3].to_vec());
    drop(watch); // the connection goes away

    for i in 0..3 {
        let key = format!("res/{i}");
        expected.push(Change::put(
            node.put_rev(&key, b"second").await,
            &key,
            b"second",
        ));
    }
    let last = expected.last().expect("changes").revision;

    // Same query (from_revision = start), but Last-Event-ID wins.
    let mut watch = node.watch(&query, Some(last_id)).await;
    let rest = watch.events_through(last, T).await;
    assert_eq!(
        changes(&rest),
        expected[3..].to_vec(),
        "exactly the changes after {last_id}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_returns_existing_history_at_once() {
    let node = Node::start().await;
    let start = node.revision().await + 1;
    let expected = write_all(
        &node,
        &[
            ("lp/a", Some(b"1")),
            ("lp/b", Some(b"2")),
            ("lp/a", None),
            ("lp/c", Some(b"3")),
        ],
    )
    .await;
    let last = expected.last().expect("changes").revision;

    let mut from = start;
    let mut batches = Vec::new();
    while from <= last {
        let from_text = from.to_string();
        let asked = Instant::now();
        let reply = node
            .poll(&[
                ("prefix", "lp/"),
                ("from_revision", &from_text),
                ("timeout_ms", "15000"),
            ])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
        let got = batches_of(&reply);
        assert!(
            !got.is_empty(),
            "history exists, so the poll must not come back empty"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(7),
            "with history available the poll must not wait for its 15 s timeout"
        );
        let next = num(&reply.body, "/next_revision");
        assert_eq!(next, num(got.last().expect("batch"), "/revision") + 1);
        assert!(
            reply.revision_header().is_some(),
            "poll carries X-Shoal-Revision"
        );
        batches.extend(got);
        from = next;
    }
    assert_eq!(changes(&batches), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_waits_for_a_new_change() {
    let node = Arc::new(Node::start().await);
    node.put("wait/old", b"old").await;
    let from = node.revision().await + 1;

    let writer = {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            node.put_rev("wait/new", b"fresh").await
        })
    };
    let from_text = from.to_string();
    let reply = node
        .poll(&[
            ("prefix", "wait/"),
            ("from_revision", &from_text),
            ("timeout_ms", "10000"),
        ])
        .await;
    let rev = writer.await.expect("writer task");
    let body = reply.ok();
    let batches = body["batches"].as_array().expect("batches").clone();
    assert_eq!(
        changes(&batches),
        vec![Change::put(rev, "wait/new", b"fresh")]
    );
    assert_eq!(num(&body, "/next_revision"), rev + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_times_out_with_no_batches() {
    let node = Node::start().await;
    node.put("quiet/a", b"a").await;
    let from = node.revision().await + 1;
    let from_text = from.to_string();
    let asked = Instant::now();
    let reply = node
        .poll(&[
            ("prefix", "quiet/"),
            ("from_revision", &from_text),
            ("timeout_ms", "300"),
        ])
        .await;
    let waited = asked.elapsed();
    let body = reply.ok();
    assert_eq!(body["batches"], json!([]), "{body}");
    assert_eq!(
        num(&body, "/next_revision"),
        from,
        "nothing happened, resume where we were"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "an empty poll returns after its timeout, not before (took {waited:?})"
    );

    // Writes elsewhere do not wake a prefix poll with batches for other keys.
    node.put("loud/x", b"x").await;
    let reply = node
        .poll(&[
            ("prefix", "quiet/"),
            ("from_revision", &from_text),
            ("timeout_ms", "300"),
        ])
        .await;
    let body = reply.ok();
    assert_eq!(body["batches"], json!([]), "{body}");
    assert!(num(&body, "/next_revision") >= from);
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_chaining_delivers_every_change_once() {
    let node = Arc::new(Node::start().await);
    let start = node.revision().await + 1;

    let mut writer = {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..40u32 {
                let key = format!("chain/{}", i % 6);
                if i % 5 == 4 {
                    let body = node.delete(&key).await;
                    if num(&body, "/deleted") == 1 {
                        done.push(Change::delete(num(&body, "/revision"), &key));
                    }
                } else {
                    let value = format!("v{i}");
                    let rev = node.put_rev(&key, value.as_bytes()).await;
                    done.push(Change::put(rev, &key, value.as_bytes()));
                }
                // Unrelated writes interleaved.
                if i % 3 == 0 {
                    node.put("unrelated", b"x").await;
                }
            }
            done
        })
    };

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut from = start;
    let mut collected = Vec::new();
    let mut expected: Option<Vec<Change>> = None;
    loop {
        if let Some(expected) = &expected {
            let last = expected.last().expect("changes").revision;
            if collected.last().map(|c: &Change| c.revision) >= Some(last) {
                break;
            }
        } else if writer.is_finished() {
            expected = Some((&mut writer).await.expect("writer task"));
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "chained polling did not catch up: {collected:?}"
        );
        let from_text = from.to_string();
        let reply = node
            .poll(&[
                ("prefix", "chain/"),
                ("from_revision", &from_text),
                ("timeout_ms", "500"),
                ("limit", "7"),
            ])
            .await;
        let body = reply.ok();
        let batches = body["batches"].as_array().expect("batches").clone();
        assert!(
            batches.len() <= 7,
            "limit=7 exceeded: {} batches",
            batches.len()
        );
        let next = num(&body, "/next_revision");
        if let Some(last) = batches.last() {
            assert!(
                num(&batches[0], "/revision") >= from,
                "batch before from_revision"
            );
            // Past the last batch; revisions after it that touched no
            // watched key may be skipped too. (Whether a change was missed
            // is what the final comparison checks.)
            assert!(
                next > num(last, "/revision"),
                "next_revision {next} not past the last batch"
            );
        } else {
            assert!(next >= from, "next_revision went backwards");
        }
        collected.extend(changes(&batches));
        from = next;
    }
    assert_eq!(
        collected,
        expected.expect("writer result"),
        "every change exactly once, in order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compacted_history_gives_410() {
    let node = Node::start_with(&["--history-revisions", "5"]).await;
    for i in 0..30 {
        node.put(&format!("c/{}", i % 4), format!("v{i}").as_bytes())
            .await;
    }
    let current = node.revision().await;
    let target = current - 2;
    let reply = node
        .post_json("/v1/compact", &json!({"revision": target}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    let status = node.status().await;
    assert_eq!(num(&status, "/compact_revision"), target, "{status}");

    let reply = node
        .watch_reply(&[("prefix", "c/"), ("from_revision", "1")])
        .await;
    let body = assert_error(&reply, 410, "compacted");
    let compact = error_detail(&body, "compact_revision")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("410 without compact_revision: {body}"));
    assert_eq!(compact, target);

    let reply = node
        .poll(&[
            ("prefix", "c/"),
            ("from_revision", "1"),
            ("timeout_ms", "100"),
        ])
        .await;
    let body = assert_error(&reply, 410, "compacted");
    assert_eq!(
        error_detail(&body, "compact_revision").and_then(Value::as_u64),
        Some(target)
    );

    let reply = node
        .post_json("/v1/rollback/c/0", &json!({"revision": 1}))
        .await;
    assert_error(&reply, 410, "compacted");

    // The boundary: the compaction revision itself is retained, the one
    // before it is not. Every revision here changed a c/ key.
    let below = (target - 1).to_string();
    let reply = node
        .poll(&[
            ("prefix", "c/"),
            ("from_revision", &below),
            ("timeout_ms", "100"),
        ])
        .await;
    assert_error(&reply, 410, "compacted");
    let at = target.to_string();
    let reply = node
        .poll(&[
            ("prefix", "c/"),
            ("from_revision", &at),
            ("timeout_ms", "100"),
        ])
        .await;
    let batches = batches_of(&reply);
    assert_eq!(
        num(&batches[0], "/revision"),
        target,
        "{}",
        reply.describe()
    );
    let history = node.get_path("/v1/history/c/0").await.ok();
    assert_eq!(num(&history, "/compact_revision"), target);
    for entry in history["history"].as_array().expect("history") {
        assert!(
            num(entry, "/kv/mod_revision") >= target,
            "compacted entry listed: {history}"
        );
    }

    // The recovery the spec describes: re-list, then watch from its revision + 1.
    let listed = node.list(&[("prefix", "c/")]).await.body;
    let relist_rev = num(&listed, "/revision");
    assert_eq!(relist_rev, current);
    let from = (relist_rev + 1).to_string();
    let mut watch = node
        .watch(&[("prefix", "c/"), ("from_revision", &from)], None)
        .await;
    let rev = node.put_rev("c/new", b"after compaction").await;
    let (id, _) = watch.next_event(T).await;
    assert_eq!(id, rev);

    // The newest revision is still in the history.
    let newest = current.to_string();
    let reply = node
        .poll(&[
            ("prefix", "c/"),
            ("from_revision", &newest),
            ("timeout_ms", "100"),
        ])
        .await;
    let batches = batches_of(&reply);
    assert_eq!(
        num(&batches[0], "/revision"),
        current,
        "{}",
        reply.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn automatic_compaction_keeps_recent_history() {
    let node = Node::start_with(&["--history-revisions", "5"]).await;
    for i in 0..30 {
        node.put(&format!("auto/{}", i % 3), format!("v{i}").as_bytes())
            .await;
    }
    let current = node.revision().await;
    let compact = eventually(T, "automatic compaction", || async {
        let compact = num(&node.status().await, "/compact_revision");
        (compact + 10 >= current).then_some(compact)
    })
    .await;
    assert!(
        compact < current,
        "compaction must keep the newest revisions"
    );

    let reply = node
        .watch_reply(&[("prefix", "auto/"), ("from_revision", "1")])
        .await;
    assert_error(&reply, 410, "compacted");

    // The last revisions are kept: polling from current - 2 works.
    let from = (current - 2).to_string();
    let reply = node
        .poll(&[
            ("prefix", "auto/"),
            ("from_revision", &from),
            ("timeout_ms", "100"),
        ])
        .await;
    let batches = batches_of(&reply);
    assert_eq!(
        num(&batches[0], "/revision"),
        current - 2,
        "{}",
        reply.describe()
    );
}
