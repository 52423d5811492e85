//! Clusters of real nodes: formation by gossip, joining, failover, pauses,
//! rolling restarts, dead-node replacement, linearizable reads and watches on
//! any node, the cluster secret, behaviour without a quorum, and leaving.
//!
//! Every wait polls with a deadline; the deadlines are generous because
//! nextest runs these tests in parallel with each other on small machines.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_tests::*;

/// Convergence deadline: formation, failover, catch-up, membership changes.
const T: Duration = Duration::from_secs(30);
/// Client time limit of one write while the cluster may be failing over
/// (the node itself retries until its request timeout, 10 s by default).
const WRITE_TIMEOUT: Duration = Duration::from_secs(12);

// ----- helpers -------------------------------------------------------------

/// Node indices other than `except`, in order.
fn others(cluster: &Cluster, except: &[usize]) -> Vec<usize> {
    (0..cluster.len()).filter(|i| !except.contains(i)).collect()
}

/// `PUT` through node `i`, asserting 200; returns the revision.
async fn put(cluster: &Cluster, i: usize, key: &str, value: &[u8]) -> u64 {
    let reply = cluster
        .node(i)
        .try_put(key, value, WRITE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("PUT {key} on node {i}: no reply: {e}"));
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "PUT {key} on node {i}: {}\n{}",
        reply.describe(),
        cluster.describe().await
    );
    num(&reply.body, "/revision")
}

/// Retries a `PUT` through node `i` until it is acknowledged (within `T`);
/// returns the revision.
async fn put_eventually(cluster: &Cluster, i: usize, key: &str, value: &[u8]) -> u64 {
    wait_for(
        T,
        &format!("PUT {key} acknowledged by node {i}"),
        || async {
            match cluster.node(i).try_put(key, value, WRITE_TIMEOUT).await {
                Ok(reply) if reply.status == StatusCode::OK => Ok(num(&reply.body, "/revision")),
                Ok(reply) => Err(reply.describe()),
                Err(e) => Err(e),
            }
        },
    )
    .await
}

/// Every key/value under `prefix` on node `i` as a key → value map, read with
/// `consistency` (`stale` or `linearizable`); `Err` if the node does not
/// answer 200.
async fn kv_map(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
    consistency: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut map = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!(
            "/v1/kv?prefix={}&limit=1000&consistency={consistency}",
            encode_key(prefix)
        );
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", encode_key(after)));
        }
        let reply = cluster
            .node(i)
            .try_request(Method::GET, &path, Duration::from_secs(10))
            .await?;
        if reply.status != StatusCode::OK {
            return Err(format!("list on node {i}: {}", reply.describe()));
        }
        for kv in reply.body["kvs"].as_array().ok_or("kvs is not an array")? {
            map.insert(text(kv, "/key").to_string(), kv_value(kv));
        }
        if reply.body["more"] != Value::Bool(true) {
            return Ok(map);
        }
        after = Some(text(&reply.body, "/next_after").to_string());
    }
}

/// Waits until node `i`'s `stale` view of `prefix` contains every expected
/// key with its value.
async fn wait_stale_has(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
    expected: &BTreeMap<String, Vec<u8>>,
) {
    wait_for(
        T,
        &format!(
            "node {i} has all {} keys under {prefix} (stale read)",
            expected.len()
        ),
        || async {
            let got = kv_map(cluster, i, prefix, "stale").await?;
            let missing: Vec<&String> = expected
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} keys missing or different, e.g. {:?}; node has {} keys",
                    missing.len(),
                    expected.len(),
                    &missing[..missing.len().min(5)],
                    got.len()
                ))
            }
        },
    )
    .await
}

/// The members listed by the current leader (asking whichever running node
/// says it leads).
async fn leader_members(cluster: &Cluster) -> Result<Vec<Member>, String> {
    let leader = cluster
        .leader_index()
        .await
        .ok_or("no node says it is the leader")?;
    cluster
        .members(leader)
        .await
        .ok_or_else(|| format!("the leader (node {leader}) did not answer /v1/cluster"))
}

fn roles(members: &[Member]) -> Vec<(u64, String, String)> {
    members
        .iter()
        .map(|m| (m.node_id, m.raft_role.clone(), m.gossip_state.clone()))
        .collect()
}

fn voter_ids(members: &[Member]) -> BTreeSet<u64> {
    members
        .iter()
        .filter(|m| m.is_voter())
        .map(|m| m.node_id)
        .collect()
}

fn role_of(members: &[Member], id: u64) -> Option<String> {
    members
        .iter()
        .find(|m| m.node_id == id)
        .map(|m| m.raft_role.clone())
}

// ----- formation -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn formation_in_random_order() {
    let started = Instant::now();
    let mut cluster = Cluster::builder(3).random_order().start().await;
    let leader = cluster.wait_formed().await;
    eprintln!("formed in {:?}; leader is node {leader}", started.elapsed());

    let mut ids = BTreeSet::new();
    for i in 0..3 {
        ids.insert(cluster.node_id(i).await);
    }
    assert_eq!(ids.len(), 3, "three distinct node ids: {ids:?}");
    let leader_id = cluster.node_id(leader).await;

    // One cluster: the same leader and term everywhere, one node leading.
    wait_for(T, "the same leader and term on all nodes", || async {
        let mut seen = Vec::new();
        for i in 0..3 {
            let status = cluster
                .status(i)
                .await
                .ok_or(format!("node {i}: no status"))?;
            seen.push((
                i,
                status["state"].as_str().unwrap_or("").to_string(),
                status["leader"].as_u64(),
                status["term"].as_u64(),
            ));
        }
        let leaders: BTreeSet<_> = seen.iter().map(|s| s.2).collect();
        let terms: BTreeSet<_> = seen.iter().map(|s| s.3).collect();
        let leading = seen.iter().filter(|s| s.1 == "Leader").count();
        let following = seen.iter().filter(|s| s.1 == "Follower").count();
        if leaders == BTreeSet::from([Some(leader_id)])
            && terms.len() == 1
            && leading == 1
            && following == 2
        {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;

    // Every node lists the same three voters, one of them the leader.
    for i in 0..3 {
        wait_for(T, &format!("node {i} lists the 3 voters"), || async {
            let view = cluster
                .view(i)
                .await
                .ok_or(format!("node {i}: no /v1/cluster"))?;
            let members = members_of(&view);
            let raft: Vec<&Member> = members.iter().filter(|m| m.is_raft_member()).collect();
            let voters = voter_ids(&members);
            let leaders: Vec<u64> = members
                .iter()
                .filter(|m| m.raft_role == "leader")
                .map(|m| m.node_id)
                .collect();
            let ok = voters == ids
                && raft.len() == 3
                && leaders == vec![leader_id]
                && view["leader"].as_u64() == Some(leader_id)
                && view["node_id"].as_u64() == Some(cluster.node_id(i).await)
                && members.iter().all(|m| m.gossip_state == "alive");
            if ok {
                Ok(())
            } else {
                Err(format!("{view}"))
            }
        })
        .await;
    }

    // And it works as one store: a write on one node is read on the others.
    let rev = put(&cluster, 2, "formed", b"yes").await;
    for i in 0..3 {
        let kv = cluster.node(i).get_kv("formed").await;
        assert_eq!(kv_value(&kv), b"yes");
        assert_eq!(num(&kv, "/mod_revision"), rev);
    }
}

// ----- joining -------------------------------------------------------------

/// A 3-node cluster with `--snapshot-every 20` (and `extra`) gets 100 keys,
/// then a 4th node joins with seeds only. Returns the cluster, the joiner's
/// index and the keys.
async fn fourth_node_joins(extra: &[&str]) -> (Cluster, usize, BTreeMap<String, Vec<u8>>) {
    let mut args = vec!["--snapshot-every", "20"];
    args.extend_from_slice(extra);
    let mut cluster = Cluster::start(3, &args).await;
    let leader = cluster.wait_leader().await;

    let mut keys = BTreeMap::new();
    for i in 0..100 {
        let key = format!("snap/{i:03}");
        let value = format!("value-{i}").into_bytes();
        put(&cluster, i % 3, &key, &value).await;
        keys.insert(key, value);
    }
    // The leader has snapshotted and purged its log, so the joiner cannot be
    // caught up by replaying the log from the start.
    wait_for(T, "a snapshot and a purged log on the leader", || async {
        let status = cluster.status(leader).await.ok_or("no status")?;
        let snapshot = opt_num(&status, "/snapshot_index").unwrap_or(0);
        let first_log = opt_num(&status, "/first_log_index").unwrap_or(0);
        if snapshot > 0 && first_log > 1 {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;

    let joiner = cluster.add_node(&[]);
    cluster.node_mut(joiner).wait_ready_within(T).await;
    (cluster, joiner, keys)
}

#[tokio::test(flavor = "multi_thread")]
async fn fourth_node_joins_as_learner_and_catches_up_by_snapshot() {
    let (cluster, joiner, keys) = fourth_node_joins(&[]).await;
    let joiner_id = cluster.node_id(joiner).await;
    let original: BTreeSet<u64> = {
        let mut ids = BTreeSet::new();
        for i in 0..3 {
            ids.insert(cluster.node_id(i).await);
        }
        ids
    };

    // With the default --voters 3 it stays a learner next to the 3 voters.
    wait_for(T, "the joiner listed as a learner", || async {
        let members = leader_members(&cluster).await?;
        if role_of(&members, joiner_id).as_deref() == Some("learner")
            && voter_ids(&members) == original
        {
            Ok(())
        } else {
            Err(format!("{:?}", roles(&members)))
        }
    })
    .await;

    wait_stale_has(&cluster, joiner, "snap/", &keys).await;
    let got = kv_map(&cluster, joiner, "snap/", "stale")
        .await
        .expect("stale list");
    assert_eq!(got, keys, "the joiner has exactly the 100 keys");

    // It got there by a snapshot: its own log starts after the purged part.
    let status = cluster.status(joiner).await.expect("joiner status");
    assert!(
        opt_num(&status, "/snapshot_index").unwrap_or(0) > 0,
        "the joiner installed no snapshot: {status}"
    );
    assert_eq!(status["state"], "Learner", "{status}");

    // A write through the learner is forwarded, and the learner sees it.
    put(&cluster, joiner, "snap/through-learner", b"ok").await;
    let kv = cluster.node(joiner).get_kv("snap/through-learner").await;
    assert_eq!(kv_value(&kv), b"ok");

    // Still a learner once caught up.
    let members = leader_members(&cluster).await.expect("members");
    assert_eq!(
        role_of(&members, joiner_id).as_deref(),
        Some("learner"),
        "{:?}",
        roles(&members)
    );
    assert_eq!(voter_ids(&members), original);
}

#[tokio::test(flavor = "multi_thread")]
async fn fourth_node_is_promoted_to_voter_with_voters_5() {
    let (cluster, joiner, keys) = fourth_node_joins(&["--voters", "5"]).await;
    let joiner_id = cluster.node_id(joiner).await;

    wait_for(T, "the joiner promoted to voter (4 voters)", || async {
        let members = leader_members(&cluster).await?;
        let voters = voter_ids(&members);
        if voters.len() == 4 && voters.contains(&joiner_id) {
            Ok(())
        } else {
            Err(format!("{:?}", roles(&members)))
        }
    })
    .await;
    wait_stale_has(&cluster, joiner, "snap/", &keys).await;

    // Every node agrees on the 4 voters.
    for i in 0..4 {
        wait_for(T, &format!("node {i} lists 4 voters"), || async {
            let members = cluster.members(i).await.ok_or("no /v1/cluster")?;
            if voter_ids(&members).len() == 4 {
                Ok(())
            } else {
                Err(format!("{:?}", roles(&members)))
            }
        })
        .await;
    }
    put(&cluster, joiner, "snap/through-new-voter", b"ok").await;
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

#[tokio::test(flavor = "multi_thread")]
async fn dead_node_is_removed_and_replaced() {
    let mut cluster = Cluster::start(3, &["--dead-node-grace-secs", "3"]).await;
    let leader = cluster.wait_leader().await;
    for i in 0..10 {
        put(&cluster, i % 3, &format!("dn/{i}"), b"x").await;
    }
    let learner = cluster.add_node(&[]);
    cluster.node_mut(learner).wait_ready_within(T).await;
    let learner_id = cluster.node_id(learner).await;
    wait_for(T, "the joiner listed as a learner", || async {
        let members = leader_members(&cluster).await?;
        if role_of(&members, learner_id).as_deref() == Some("learner") {
            Ok(())
        } else {
            Err(format!("{:?}", roles(&members)))
        }
    })
    .await;

    let victim = others(&cluster, &[leader, learner])[0];
    let victim_id = cluster.node_id(victim).await;
    let survivor = others(&cluster, &[leader, learner, victim])[0];
    let want: BTreeSet<u64> = [
        cluster.node_id(leader).await,
        cluster.node_id(survivor).await,
        learner_id,
    ]
    .into();
    cluster.node_mut(victim).kill9();
    let killed_at = Instant::now();

    wait_for(
        Duration::from_secs(40),
        "the dead voter removed and the learner promoted",
        || async {
            let members = leader_members(&cluster).await?;
            let victim_role = role_of(&members, victim_id);
            let removed = matches!(victim_role.as_deref(), None | Some("none") | Some(""));
            if removed && voter_ids(&members) == want {
                Ok(())
            } else {
                Err(format!("{:?}", roles(&members)))
            }
        },
    )
    .await;
    eprintln!(
        "dead_node_is_removed_and_replaced: replaced {:?} after the kill (grace 3 s)",
        killed_at.elapsed()
    );

    for i in [leader, survivor, learner] {
        put(&cluster, i, &format!("dn/after-{i}"), b"y").await;
        let kv = cluster.node(learner).get_kv(&format!("dn/after-{i}")).await;
        assert_eq!(kv_value(&kv), b"y");
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
            match cluster
                .node(writer)
                .try_put(&key, b"after", WRITE_TIMEOUT)
                .await
            {
                Ok(reply) if reply.status == StatusCode::OK => {
                    acked.push((num(&reply.body, "/revision"), key));
                    break;
                }
                answer => {
                    assert!(
                        Instant::now() < deadline,
                        "no write acknowledged within {T:?} after the leader was killed; last: {:?}\n{}",
                        answer.map(|r| r.describe()),
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

// ----- security ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn wrong_cluster_secret_is_rejected() {
    let mut cluster = Cluster::start(3, &["--cluster-secret", "right"]).await;
    cluster.wait_leader().await;

    let wrong = cluster.add_node_with(&["--cluster-secret", "wrong"], &[], false);
    let none = cluster.add_node_with(&[], &[], false);
    // Control: the right secret, given through the environment, does join.
    let right = cluster.add_node_with(&[], &[("SHOAL_CLUSTER_SECRET", "right")], false);
    let wrong_id = cluster.node_id(wrong).await;
    let none_id = cluster.node_id(none).await;
    let right_id = cluster.node_id(right).await;

    let outsiders = [
        (wrong, wrong_id, "wrong secret"),
        (none, none_id, "no secret"),
    ];
    let watch_until = Instant::now() + Duration::from_secs(8);
    let mut right_joined = false;
    let mut listed_by_gossip = BTreeSet::new();
    while Instant::now() < watch_until {
        if let Ok(members) = leader_members(&cluster).await {
            for (_, id, what) in outsiders {
                if let Some(member) = members.iter().find(|m| m.node_id == id) {
                    listed_by_gossip.insert(what);
                    assert!(
                        !member.is_raft_member(),
                        "the node with {what} became a Raft member: {:?}",
                        roles(&members)
                    );
                }
            }
            right_joined |= members
                .iter()
                .any(|m| m.node_id == right_id && m.is_raft_member());
        }
        for (i, _, what) in outsiders {
            assert!(
                cluster.node_mut(i).is_running(),
                "the node with {what} exited"
            );
            assert!(!cluster.is_ready(i).await, "the node with {what} is ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !listed_by_gossip.is_empty() {
        eprintln!("note: the leader's /v1/cluster listed the nodes with {listed_by_gossip:?} (not as Raft members)");
    }

    wait_for(
        T,
        "the node with the right secret joins as a learner",
        || async {
            let members = leader_members(&cluster).await?;
            if role_of(&members, right_id).as_deref() == Some("learner") {
                Ok(())
            } else {
                Err(format!("{:?}", roles(&members)))
            }
        },
    )
    .await;
    eprintln!("wrong_cluster_secret_is_rejected: the right-secret joiner was a member within the 8 s window: {right_joined}");
    cluster.node_mut(right).wait_ready_within(T).await;
    put(&cluster, right, "secret/ok", b"yes").await;

    // Still outside after all that.
    let members = leader_members(&cluster).await.expect("members");
    for (i, id, what) in outsiders {
        let role = role_of(&members, id);
        assert!(
            !matches!(role.as_deref(), Some("leader" | "voter" | "learner")),
            "the node with {what} is a member: {:?}",
            roles(&members)
        );
        assert!(!cluster.is_ready(i).await, "the node with {what} is ready");
    }
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

// ----- leaving -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn cli_cluster_status_and_leave() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let leaver = others(&cluster, &[leader])[0];
    let mut ids = BTreeMap::new();
    for i in 0..3 {
        ids.insert(cluster.node_id(i).await, i);
    }
    let leader_id = cluster.node_id(leader).await;

    let endpoint = cluster.node(leaver).endpoint();
    let out = run_shoal(&["cluster", "--endpoint", &endpoint, "status"], None, &[]).await;
    out.assert_success();
    let lines = out.lines();
    let header = lines
        .iter()
        .position(|l| l.starts_with("NODE"))
        .unwrap_or_else(|| panic!("no header line starting with NODE:\n{}", out.stdout_text()));
    let rows = &lines[header + 1..];
    assert_eq!(rows.len(), 3, "three rows:\n{}", out.stdout_text());
    let mut listed = BTreeSet::new();
    for row in rows {
        let columns: Vec<&str> = row.split_whitespace().collect();
        let id: u64 = columns[0]
            .parse()
            .unwrap_or_else(|_| panic!("row does not start with a node id: {row:?}"));
        assert!(ids.contains_key(&id), "unknown node id in {row:?}");
        let want_role = if id == leader_id { "leader" } else { "voter" };
        assert!(
            columns.contains(&want_role),
            "{row:?} should say {want_role}"
        );
        assert!(
            row.contains(&cluster.node(ids[&id]).endpoint()["http://".len()..]),
            "{row:?} lacks the API address"
        );
        listed.insert(id);
    }
    assert_eq!(listed.len(), 3, "{}", out.stdout_text());

    let leaver_id = cluster.node_id(leaver).await;
    let out = run_shoal(&["cluster", "--endpoint", &endpoint, "leave"], None, &[]).await;
    out.assert_success();
    assert!(
        out.stdout_text()
            .contains(&format!("node {leaver_id} left the cluster")),
        "leave printed: {}",
        out.stdout_text()
    );
    let status = cluster.node_mut(leaver).wait_exit(T).await;
    assert!(
        status.success(),
        "the node that left exited with {status}\n{}",
        cluster.node(leaver).log_tail(30)
    );

    let remaining = others(&cluster, &[leaver]);
    for &i in &remaining {
        wait_for(T, &format!("node {i} lists 2 voters"), || async {
            let members = cluster.members(i).await.ok_or("no /v1/cluster")?;
            let voters = voter_ids(&members);
            let leaver_role = role_of(&members, leaver_id);
            if voters.len() == 2
                && !voters.contains(&leaver_id)
                && !matches!(leaver_role.as_deref(), Some("learner"))
            {
                Ok(())
            } else {
                Err(format!("{:?}", roles(&members)))
            }
        })
        .await;
    }
    cluster.wait_agreement(&remaining, T).await;
    put(&cluster, remaining[1], "after-leave", b"ok").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leave_on_terminate() {
    let mut cluster = Cluster::start(3, &["--leave-on-terminate"]).await;
    let leader = cluster.wait_leader().await;
    let leaver = others(&cluster, &[leader])[0];
    let leaver_id = cluster.node_id(leaver).await;

    let status = cluster.node_mut(leaver).terminate(T).await;
    assert!(
        status.success(),
        "SIGTERM with --leave-on-terminate: exit {status}\n{}",
        cluster.node(leaver).log_tail(30)
    );

    // It left Raft (not merely died): the two others are the voters well
    // before --dead-node-grace-secs (30 s) could have removed it.
    let remaining = others(&cluster, &[leaver]);
    let started = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "2 voters after the SIGTERM",
        || async {
            let members = leader_members(&cluster).await?;
            let voters = voter_ids(&members);
            if voters.len() == 2 && !voters.contains(&leaver_id) {
                Ok(())
            } else {
                Err(format!("{:?}", roles(&members)))
            }
        },
    )
    .await;
    eprintln!(
        "leave_on_terminate: membership showed 2 voters {:?} after exit",
        started.elapsed()
    );
    put(&cluster, remaining[0], "after-terminate", b"ok").await;
}

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
