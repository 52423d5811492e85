//! Crash safety: acknowledged writes survive SIGKILL, with and without
//! snapshots and log purging.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use shoal_tests::*;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill9() {
    let mut node = Node::start().await;

    // 200 puts, 8 at a time; each acknowledged before we record it.
    let acked: Vec<(String, Vec<u8>, u64)> = stream::iter(0..200)
        .map(|i| {
            let node = &node;
            async move {
                let key = format!("dur/{i:03}");
                let value = format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes();
                let rev = node.put_rev(&key, &value).await;
                (key, value, rev)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let lease = node.grant_lease(600).await;
    node.put_with("dur-lease/key", b"leased", &[("lease", &lease.to_string())])
        .await
        .ok();
    let before = node.status().await;
    let revision = num(&before, "/revision");

    node.kill9();
    node.restart().await;

    let after = node.status().await;
    assert_eq!(
        num(&after, "/revision"),
        revision,
        "revision after restart: {after}"
    );

    let listed = node.list_all("dur/").await;
    assert_eq!(listed.len(), 200);
    let mut expected = acked.clone();
    expected.sort();
    for (kv, (key, value, rev)) in listed.iter().zip(&expected) {
        assert_eq!(text(kv, "/key"), key);
        assert_eq!(&kv_value(kv), value, "value of {key}");
        assert_eq!(num(kv, "/mod_revision"), *rev, "mod_revision of {key}");
        assert_eq!(num(kv, "/version"), 1);
    }
    for (key, value, rev) in expected.iter().step_by(37) {
        let kv = node.get_kv(key).await;
        assert_eq!(&kv_value(&kv), value);
        assert_eq!(num(&kv, "/mod_revision"), *rev);
    }

    // The lease survived with its key.
    let info = node.get_path(&format!("/v1/leases/{lease}")).await.ok();
    assert_eq!(num(&info, "/ttl_seconds"), 600);
    assert_eq!(info["keys"], json!(["dur-lease/key"]));
    assert_eq!(num(&node.get_kv("dur-lease/key").await, "/lease"), lease);
    assert_eq!(node.keepalive(lease).await.status, StatusCode::OK);

    // A watch from revision 1 replays every put.
    let mut watch = node
        .watch(&[("prefix", "dur/"), ("from_revision", "1")], None)
        .await;
    let max_rev = acked.iter().map(|(_, _, rev)| *rev).max().expect("writes");
    let batches = watch.events_through(max_rev, T).await;
    let mut by_revision = acked.clone();
    by_revision.sort_by_key(|(_, _, rev)| *rev);
    let want: Vec<Change> = by_revision
        .iter()
        .map(|(key, value, rev)| Change::put(*rev, key, value))
        .collect();
    assert_eq!(changes(&batches), want);

    // New writes continue from the old revision.
    assert_eq!(node.put_rev("dur-after", b"x").await, revision + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_survive_repeated_crashes() {
    let mut node = Node::start().await;
    let mut expected = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            let key = format!("rc/{round}/{i:02}");
            let rev = node.put_rev(&key, key.as_bytes()).await;
            expected.push((key, rev));
        }
        node.kill9();
        node.restart().await;
        let listed = node.list_all("rc/").await;
        let got: Vec<(String, u64)> = listed
            .iter()
            .map(|kv| (text(kv, "/key").to_string(), num(kv, "/mod_revision")))
            .collect();
        assert_eq!(got, expected, "after crash {round}");
    }
}

/// Every key/value object plus the store revision and a few histories.
async fn full_state(node: &Node) -> (u64, Vec<Value>, Vec<Value>) {
    let revision = node.revision().await;
    let kvs = node.list_all("").await;
    let mut histories = Vec::new();
    for key in ["snap/000", "snap/007", "snap/042", "snap/099"] {
        histories.push(node.get_path(&format!("/v1/history/{key}")).await.body);
    }
    (revision, kvs, histories)
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_and_log_purge_survive_kill9() {
    let mut node = Node::start_with(&["--snapshot-every", "20"]).await;

    // 300 changes: puts over 100 keys, overwrites, and deletes.
    let mut changes_made = 0;
    let mut i = 0u64;
    while changes_made < 300 {
        let key = format!("snap/{:03}", i % 100);
        if i % 7 == 6 {
            let body = node.delete(&key).await;
            changes_made += num(&body, "/deleted");
        } else {
            node.put(&key, format!("v{i}").as_bytes()).await;
            changes_made += 1;
        }
        i += 1;
    }

    let status = eventually(T, "a snapshot and a purged log", || async {
        let status = node.status().await;
        let snapshot = opt_num(&status, "/snapshot_index").unwrap_or(0);
        let first_log = opt_num(&status, "/first_log_index").unwrap_or(0);
        (snapshot > 0 && first_log > 1).then_some(status)
    })
    .await;
    assert!(
        num(&status, "/snapshot_index") <= num(&status, "/applied_index"),
        "{status}"
    );

    let before = full_state(&node).await;
    assert!(!before.1.is_empty());

    node.kill9();
    node.restart().await;

    let after = full_state(&node).await;
    assert_eq!(after.0, before.0, "revision after restart");
    assert_eq!(
        after.1.len(),
        before.1.len(),
        "number of keys after restart"
    );
    assert_eq!(
        after.1, before.1,
        "every key, value and revision after restart"
    );
    assert_eq!(after.2, before.2, "histories after restart");

    let restarted = node.status().await;
    assert!(num(&restarted, "/snapshot_index") > 0, "{restarted}");
    assert_eq!(node.put_rev("snap/after", b"x").await, before.0 + 1);
}

/// A snapshot is made durable; the entries it holds were applied to the
/// state machine without an fsync. A power cut right after a snapshot (no
/// write since, so no log fsync that would have carried the applied
/// entries to the disk) left the state machine behind its snapshot, and the
/// node refused to start ("snapshot_last_log_id <= committed" in openraft's
/// state check), restarted and panicked again, forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_power_cut_right_after_a_snapshot_loses_nothing() {
    let mut node = Node::builder()
        .args(&["--snapshot-every", "10"])
        .env("SHOAL_FAULT_LOSE_UNSYNCED", "1")
        .start()
        .await;
    // Writes one at a time until a snapshot holds the last of them (one
    // follows every 10th entry, shortly after its apply).
    let mut written = 0;
    let status = 'writes: loop {
        assert!(written < 40, "no snapshot of the last write in 40 writes");
        node.put(
            &format!("cut/{written:02}"),
            format!("v{written}").as_bytes(),
        )
        .await;
        written += 1;
        for _ in 0..20 {
            let status = node.status().await;
            let snapshot = opt_num(&status, "/snapshot_index").unwrap_or(0);
            if snapshot > 0 && snapshot == num(&status, "/applied_index") {
                break 'writes status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let before = node.list_all("cut/").await;
    assert_eq!(before.len(), written, "{status}");

    node.kill9();
    node.restart().await;

    assert_eq!(
        node.list_all("cut/").await,
        before,
        "the keys after the power cut"
    );
    let restarted = node.status().await;
    assert!(
        num(&restarted, "/applied_index") >= num(&status, "/snapshot_index"),
        "before: {status}\nafter: {restarted}"
    );
}

/// A follower that was down while the leader snapshotted and purged its log
/// catches up by installing a snapshot of a state far larger than one
/// transfer chunk (openraft's default gives the install of the last chunk
/// 200 ms, which a large snapshot does not meet: the follower then never
/// caught up).
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_catches_up_from_a_large_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "50"]).await;
    let leader = cluster.wait_leader().await;
    let follower = (leader + 1) % 3;
    cluster.node_mut(follower).kill9();
    // About 24 MiB of state, in 400 writes of 60 KiB.
    let value = "x".repeat(60 * 1024);
    for i in 0..400 {
        cluster
            .node(leader)
            .put(&format!("big/{i:04}"), value.as_bytes())
            .await;
    }
    let status = wait_for(
        Duration::from_secs(60),
        "a snapshot and a purged log",
        || async {
            let status = cluster.node(leader).status().await;
            let first_log = opt_num(&status, "/first_log_index").unwrap_or(0);
            if first_log > 100 {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    assert!(num(&status, "/snapshot_index") > 100, "{status}");
    cluster.node_mut(follower).restart().await;
    let up: Vec<usize> = (0..3).collect();
    cluster
        .wait_same_applied_digest(&up, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the follower did not catch up: {e}\nthe follower's log:\n{}\nthe leader's log:\n{}",
                cluster.node(follower).log_tail(300),
                cluster.node(leader).log_tail(100)
            )
        });
}

/// While a follower installs a snapshot from the leader, its reads wait
/// for the install, but its status and metrics answer at once and say so,
/// and it is not ready. The install is held 8 s by a fault hook, and more
/// local reads than the node runs at once are waiting on it: status read
/// through the gate, or behind those reads, would not answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_installing_a_snapshot_answers_status_and_is_not_ready() {
    let mut builder = Cluster::builder(3).args(&["--snapshot-every", "20"]);
    for i in 0..3 {
        builder = builder.node_env(i, "SHOAL_FAULT_SNAPSHOT_IMPORT_DELAY_MS", "8000");
    }
    let mut cluster = builder.start().await;
    cluster.wait_formed().await;
    let leader = cluster.wait_leader().await;
    let follower = (leader + 1) % 3;
    let left_at = num(&cluster.node(follower).status().await, "/applied_index");
    cluster.node_mut(follower).kill9();
    for i in 0..100 {
        cluster
            .node(leader)
            .put(&format!("inst/{i:03}"), b"v")
            .await;
    }
    wait_for(T, "the leader's log purged past the follower", || async {
        let status = cluster.node(leader).status().await;
        let first_log = opt_num(&status, "/first_log_index").unwrap_or(0);
        if first_log > left_at + 1 {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;

    cluster.node_mut(follower).restart_no_wait();
    let node = cluster.node(follower);
    let quick = Duration::from_secs(2);
    wait_for(
        Duration::from_secs(60),
        "the follower installing",
        || async {
            let reply = node.try_request(Method::GET, "/v1/status", quick).await?;
            if reply.body["installing_snapshot"] == true {
                Ok(())
            } else {
                Err(reply.text)
            }
        },
    )
    .await;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reads: Vec<_> = (0..cores * 4 + 4)
        .map(|i| {
            let request = node.request(
                Method::GET,
                &format!("/v1/kv/inst/{:03}?consistency=stale", i % 100),
            );
            tokio::spawn(request.send())
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = node
        .try_request(Method::GET, "/v1/status", quick)
        .await
        .unwrap_or_else(|e| panic!("no status while installing: {e}"));
    assert_eq!(status.status, StatusCode::OK, "{}", status.text);
    assert_eq!(status.body["installing_snapshot"], true, "{}", status.text);
    let metrics = node
        .try_request(Method::GET, "/metrics", quick)
        .await
        .unwrap_or_else(|e| panic!("no metrics while installing: {e}"));
    assert!(
        metrics.text.contains("shoal_snapshot_installing 1"),
        "{}",
        metrics.text
    );
    let ready = node
        .try_request(Method::GET, "/ready", quick)
        .await
        .unwrap_or_else(|e| panic!("no readiness while installing: {e}"));
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text
    );
    assert!(
        ready.text.contains("installing a snapshot"),
        "{}",
        ready.text
    );

    for read in reads {
        let _ = read.await;
    }
    let all: Vec<usize> = (0..3).collect();
    cluster
        .wait_same_applied_digest(&all, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("the follower did not catch up: {e}"));
    let node = cluster.node(follower);
    let status = node.status().await;
    assert_eq!(status["installing_snapshot"], false, "{status}");
    assert_eq!(kv_value(&node.get_kv("inst/099").await), b"v");
    wait_for(T, "the follower ready again", || async {
        let reply = node.try_request(Method::GET, "/ready", quick).await?;
        if reply.status == StatusCode::OK {
            Ok(())
        } else {
            Err(reply.text)
        }
    })
    .await;
}

/// Concurrent writes of large values make Raft entries of bounded size,
/// and replication messages are bounded by bytes too: 96 writes of 1000
/// KiB at once, half of them through a follower, are all acknowledged and
/// every replica ends with the same state. With entries bounded by count
/// alone (256 proposals), such a burst made entries and messages of tens
/// of megabytes, past the 64 MiB a node-to-node message may carry, and
/// replication stopped.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_large_writes_are_replicated() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let follower = (leader + 1) % 3;
    let value = vec![b'c'; 1000 << 10];
    let replies: Vec<Reply> = stream::iter(0..96)
        .map(|i| {
            let node = cluster.node(if i % 2 == 0 { leader } else { follower });
            let value = &value;
            async move { node.put_with(&format!("burst/{i:03}"), value, &[]).await }
        })
        .buffer_unordered(96)
        .collect()
        .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    }
    let all: Vec<usize> = (0..3).collect();
    cluster
        .wait_same_applied_digest(&all, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("replicas differ: {e}"));
}

/// A snapshot is built, kept and sent as a file, never as one buffer in
/// memory: a node holding about 600 MiB of values (and their history)
/// builds snapshots of all of it, and its peak resident memory stays
/// below the values' size. A snapshot built in memory needs the whole
/// state once, and once more to be written.
#[tokio::test(flavor = "multi_thread")]
async fn building_a_snapshot_does_not_hold_the_state_in_memory() {
    const VALUES: usize = 600;
    const VALUE_BYTES: usize = 1000 << 10;
    let node = Node::start_with(&["--snapshot-every", "100"]).await;
    let pid = node.pid().expect("the node's pid");
    let value = vec![b's'; VALUE_BYTES];
    for i in 0..VALUES {
        let reply = node.put_with(&format!("big/{i:04}"), &value, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    }
    let last = num(&node.status().await, "/last_log_index");
    // Building a snapshot of a gigabyte takes a debug build seconds.
    let wait = Duration::from_secs(120);
    let status = eventually(wait, "a snapshot of two thirds of the values", || async {
        let status = node.status().await;
        (opt_num(&status, "/snapshot_index").unwrap_or(0) + 200 > last).then_some(status)
    })
    .await;
    let peak = shoal_tests::procfs::peak_rss_bytes(pid);
    let values = (VALUES * VALUE_BYTES) as u64;
    eprintln!("peak RSS {peak} bytes, values {values} bytes");
    assert!(
        peak > 0 && peak < values,
        "peak RSS {peak} bytes with {values} bytes of values: {status}"
    );
}
