//! Cluster failures with real nodes: leader kill and rejoin, pauses,
//! rolling and whole-cluster restarts, linearizable reads and watches on any
//! node across a leader change, and behaviour without a quorum.
//!
//! Every wait polls with a deadline; the deadlines are generous because
//! nextest runs these tests in parallel with each other on small machines.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_tests::cluster_support::*;
use shoal_tests::*;

/// Retries a `PUT` through node `i` until it is acknowledged (within `T`);
/// returns the revision.
async fn put_eventually(cluster: &Cluster, i: usize, key: &str, value: &[u8]) -> u64 {
    wait_for(T, &format!("PUT {key} acknowledged by node {i}"), || {
        try_put(cluster, i, key, value)
    })
    .await
}

// ----- failures ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_then_rejoin() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;

    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let key = format!("lk/{i:03}");
        let value = format!("before-{i}").into_bytes();
        put(&cluster, i % 3, &key, &value).await;
        acked.insert(key, value);
    }

    cluster.node_mut(leader).kill9();
    let survivors = others(&cluster, &[leader]);
    let killed_at = Instant::now();
    put_eventually(&cluster, survivors[0], "lk/failover", b"first").await;
    let failover = killed_at.elapsed();
    eprintln!("leader_kill_then_rejoin: failover (kill -9 of the leader to the first acknowledged write through a survivor): {failover:?}");
    acked.insert("lk/failover".to_string(), b"first".to_vec());
    let new_leader = cluster.wait_agreement(&survivors, T).await;
    assert_ne!(new_leader, leader);

    for i in 0..20 {
        let key = format!("lk/after-{i:03}");
        let value = format!("after-{i}").into_bytes();
        put(&cluster, survivors[i % 2], &key, &value).await;
        acked.insert(key, value);
    }

    // The old leader comes back as an ordinary member and catches up.
    cluster.node_mut(leader).restart_no_wait();
    cluster.node_mut(leader).wait_ready_within(T).await;
    cluster.wait_agreement(&[0, 1, 2], T).await;
    wait_stale_has(&cluster, leader, "lk/", &acked).await;
    let got = kv_map(&cluster, leader, "lk/", "stale")
        .await
        .expect("stale list");
    assert_eq!(
        got, acked,
        "the restarted node has exactly the acknowledged keys"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn follower_pause_and_resume() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let followers = others(&cluster, &[leader]);
    let (paused, other) = (followers[0], followers[1]);

    cluster.node_mut(paused).pause();
    let mut acked = BTreeMap::new();
    let mut last = String::new();
    let started = Instant::now();
    for i in 0..30 {
        let key = format!("pz/{i:03}");
        let value = format!("v{i}").into_bytes();
        let through = if i % 2 == 0 { leader } else { other };
        put(&cluster, through, &key, &value).await;
        acked.insert(key.clone(), value);
        last = key;
    }
    eprintln!(
        "follower_pause_and_resume: 30 writes with a paused follower took {:?}",
        started.elapsed()
    );

    cluster.node_mut(paused).resume();
    let want = acked[&last].clone();
    wait_for(
        T,
        "the resumed follower has the last key (stale read)",
        || async {
            let reply = cluster
                .node(paused)
                .try_get(&last, &[("consistency", "stale")], Duration::from_secs(5))
                .await?;
            if reply.status == StatusCode::OK && kv_value(&reply.body["kv"]) == want {
                Ok(())
            } else {
                Err(reply.describe())
            }
        },
    )
    .await;
    wait_stale_has(&cluster, paused, "pz/", &acked).await;
    cluster.wait_agreement(&[0, 1, 2], T).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_loses_nothing() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader().await;

    // The writer: unique keys, each retried on the next node until some node
    // acknowledges it; only acknowledged ones are recorded.
    let endpoints: Vec<String> = (0..3).map(|i| cluster.node(i).endpoint()).collect();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(1))
                .build()
                .expect("client");
            let mut failures = 0u64;
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("rr/{n:06}");
                let value = format!("value-{n}");
                let mut attempt = 0;
                while !stop.load(Ordering::Relaxed) {
                    let endpoint = &endpoints[(n + attempt) % endpoints.len()];
                    let answer = client
                        .put(format!("{endpoint}/v1/kv/{key}"))
                        .body(value.clone())
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    if matches!(&answer, Ok(r) if r.status() == StatusCode::OK) {
                        acked.lock().unwrap().push((key.clone(), value.clone()));
                        break;
                    }
                    failures += 1;
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
            }
            failures
        })
    };
    let acked_count = || acked.lock().unwrap().len();

    for i in 0..3 {
        // Some progress with all nodes up.
        let before = acked_count();
        eventually(T, "the writer makes progress", || async {
            (acked_count() >= before + 10).then_some(())
        })
        .await;

        let started = Instant::now();
        let was_leader = cluster.leader_index().await == Some(i);
        eprintln!("rolling restart: stopping node {i} (leader: {was_leader})");
        if i % 2 == 0 {
            cluster.node_mut(i).kill9();
            eprintln!("rolling restart: node {i} killed (kill -9)");
        } else {
            let status = cluster.node_mut(i).terminate(T).await;
            eprintln!("rolling restart: node {i} exited on SIGTERM with {status}");
        }
        // While it is down the other two keep accepting writes (electing a
        // new leader first if it was the leader).
        let rest = others(&cluster, &[i]);
        cluster.wait_agreement(&rest, T).await;
        let down = acked_count();
        eventually(T, "writes acknowledged while a node is down", || async {
            (acked_count() >= down + 10).then_some(())
        })
        .await;
        eprintln!("rolling restart: node {i} down for {:?}", started.elapsed());

        cluster.node_mut(i).restart_no_wait();
        cluster.node_mut(i).wait_ready_within(T).await;
        cluster.wait_agreement(&[0, 1, 2], T).await;
        eprintln!(
            "rolling restart: node {i} back and agreeing after {:?}",
            started.elapsed()
        );
    }
    let before = acked_count();
    eventually(
        T,
        "the writer makes progress after the last restart",
        || async { (acked_count() >= before + 10).then_some(()) },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let failures = writer.await.expect("writer task");
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "rolling restart: {} writes acknowledged, {failures} attempts failed",
        acked.len()
    );

    let expected: BTreeMap<String, Vec<u8>> = acked
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for i in 0..3 {
        let got = wait_for(T, &format!("a linearizable list on node {i}"), || async {
            kv_map(&cluster, i, "rr/", "linearizable").await
        })
        .await;
        let lost: Vec<&String> = expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            lost.is_empty(),
            "node {i} lost {} of {} acknowledged writes, e.g. {:?}",
            lost.len(),
            expected.len(),
            &lost[..lost.len().min(10)]
        );
    }
    // Spot checks with single linearizable GETs on every node.
    for (key, value) in expected.iter().step_by((expected.len() / 10).max(1)) {
        for i in 0..3 {
            let kv = cluster.node(i).get_kv(key).await;
            assert_eq!(&kv_value(&kv), value, "{key} on node {i}");
        }
    }
}

// ----- reads and watches on any node -------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn linearizable_read_on_another_node() {
    let cluster = Cluster::start(3, &[]).await;
    for round in 0..50 {
        let writer = round % 3;
        let value = format!("value-{round}");
        let rev = put(&cluster, writer, "lin/key", value.as_bytes()).await;
        for reader in others(&cluster, &[writer]) {
            let reply = cluster
                .node(reader)
                .try_get("lin/key", &[], Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("GET on node {reader}: {e}"));
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "round {round}, node {reader}: {}",
                reply.describe()
            );
            assert_eq!(
                String::from_utf8_lossy(&kv_value(&reply.body["kv"])),
                value,
                "round {round}: written on node {writer} (revision {rev}), read on node {reader}: {}",
                reply.describe()
            );
            assert_eq!(num(&reply.body, "/kv/mod_revision"), rev);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_across_leader_change() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let followers = others(&cluster, &[leader]);
    let (watcher, writer) = (followers[0], followers[1]);

    let start = put(&cluster, writer, "not-watched", b"x").await + 1;
    let mut watch = cluster
        .node(watcher)
        .watch(
            &[("prefix", "w/"), ("from_revision", &start.to_string())],
            None,
        )
        .await;

    // Every key is unique per attempt, so a write that timed out but was
    // applied anyway shows up as an attempted (not acknowledged) key.
    let mut attempted = BTreeSet::new();
    let mut acked: Vec<(u64, String)> = Vec::new();
    for i in 0..20 {
        let key = format!("w/{i:03}");
        attempted.insert(key.clone());
        acked.push((put(&cluster, writer, &key, b"before").await, key));
    }

    cluster.node_mut(leader).kill9();
    for i in 20..40 {
        let mut attempt = 0;
        let deadline = Instant::now() + T;
        loop {
            let key = format!("w/{i:03}.{attempt}");
            attempted.insert(key.clone());
            match try_put(&cluster, writer, &key, b"after").await {
                Ok(revision) => {
                    acked.push((revision, key));
                    break;
                }
                Err(last) => {
                    assert!(
                        Instant::now() < deadline,
                        "no write acknowledged within {T:?} after the leader was killed; last: {last}\n{}",
                        cluster.describe().await
                    );
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    let last = acked.iter().map(|(rev, _)| *rev).max().expect("writes");
    let mut delivered: Vec<(u64, String)> = changes(&watch.events_through(last, T).await)
        .into_iter()
        .map(|c| (c.revision, c.key))
        .collect();
    // Anything more that arrives shortly after must still be in order.
    while let Some((_, batch)) = watch.try_next_event(Duration::from_secs(1)).await {
        delivered.extend(changes(&[batch]).into_iter().map(|c| (c.revision, c.key)));
    }

    for pair in delivered.windows(2) {
        assert!(pair[0].0 < pair[1].0, "revisions not strictly increasing (duplicate or out of order): {pair:?} in {delivered:?}");
    }
    let delivered_set: BTreeSet<(u64, String)> = delivered.iter().cloned().collect();
    let missing: Vec<&(u64, String)> = acked
        .iter()
        .filter(|a| !delivered_set.contains(a))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes not delivered: {missing:?}\ndelivered: {delivered:?}"
    );
    let unknown: Vec<&(u64, String)> = delivered
        .iter()
        .filter(|(_, k)| !attempted.contains(k))
        .collect();
    assert!(
        unknown.is_empty(),
        "events for keys never written: {unknown:?}"
    );
    let extra = delivered.len() - acked.len();
    eprintln!("watch_across_leader_change: {} acknowledged, {} delivered ({extra} unacknowledged but applied)", acked.len(), delivered.len());
}

// ----- no quorum -----------------------------------------------------------

/// Kills two of three nodes (`kill_leader`: the leader and a follower, else
/// both followers) and checks that requests on the survivor fail fast with a
/// clear error.
async fn no_quorum(kill_leader: bool) {
    let mut cluster = Cluster::start(3, &["--request-timeout-ms", "2000"]).await;
    let leader = cluster.wait_leader().await;
    let followers = others(&cluster, &[leader]);
    let survivor = if kill_leader { followers[0] } else { leader };
    put(&cluster, survivor, "nq/before", b"kept").await;
    // Acknowledged once the leader applied it; the survivor must have it too
    // before the others die, or its stale read below could not show it.
    let kept = BTreeMap::from([("nq/before".to_string(), b"kept".to_vec())]);
    wait_stale_has(&cluster, survivor, "nq/", &kept).await;
    for i in others(&cluster, &[survivor]) {
        cluster.node_mut(i).kill9();
    }

    let expected: &[(u16, &[&str])] = &[(503, &["unavailable"]), (504, &["timeout"])];
    let limit = Duration::from_secs(6); // request timeout 2 s, plus slack for a loaded machine
    for round in 0..2 {
        let started = Instant::now();
        let reply = cluster
            .node(survivor)
            .try_put(&format!("nq/{round}"), b"v", Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("PUT without a quorum got no reply within 10 s: {e}"));
        let took = started.elapsed();
        eprintln!(
            "no quorum (survivor was {}): PUT answered {} in {took:?}",
            if kill_leader {
                "a follower"
            } else {
                "the leader"
            },
            reply.describe()
        );
        if let Err(problem) = error_matches(&reply, expected) {
            panic!(
                "PUT without a quorum, round {round}: {problem}\n{}",
                cluster.node(survivor).log_tail(30)
            );
        }
        assert!(took < limit, "PUT without a quorum took {took:?}");

        let started = Instant::now();
        let reply = cluster
            .node(survivor)
            .try_get("nq/before", &[], Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| {
                panic!("linearizable GET without a quorum got no reply within 10 s: {e}")
            });
        let took = started.elapsed();
        eprintln!(
            "no quorum: linearizable GET answered {} in {took:?}",
            reply.status
        );
        if let Err(problem) = error_matches(&reply, expected) {
            panic!("linearizable GET without a quorum, round {round}: {problem}");
        }
        assert!(
            took < limit,
            "linearizable GET without a quorum took {took:?}"
        );
    }

    // A stale read is local and still works.
    let reply = cluster
        .node(survivor)
        .try_get(
            "nq/before",
            &[("consistency", "stale")],
            Duration::from_secs(10),
        )
        .await
        .expect("stale GET");
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "stale GET without a quorum: {}",
        reply.describe()
    );
    assert_eq!(kv_value(&reply.body["kv"]), b"kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_quorum_gives_a_clear_error() {
    no_quorum(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_quorum_on_the_old_leader_gives_a_clear_error() {
    no_quorum(false).await;
}

// ----- restarts ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_restart_keeps_data() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let key = format!("wc/{i:03}");
        let value = format!("v{i}").into_bytes();
        put(&cluster, i % 3, &key, &value).await;
        acked.insert(key, value);
    }
    for i in 0..3 {
        cluster.node_mut(i).kill9();
    }
    // No node can be ready alone: restart all without waiting, then wait.
    for i in [2, 0, 1] {
        cluster.node_mut(i).restart_no_wait();
    }
    cluster.wait_formed().await;
    for i in 0..3 {
        let got = wait_for(T, &format!("a linearizable list on node {i}"), || async {
            kv_map(&cluster, i, "wc/", "linearizable").await
        })
        .await;
        assert_eq!(got, acked, "node {i} after the whole cluster restarted");
    }
    put(&cluster, 0, "wc/after", b"x").await;
}
