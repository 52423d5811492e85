//! Cluster membership with real nodes: formation by gossip, joining as a
//! learner and promotion to voter, dead-node removal and replacement, the
//! cluster secret, and leaving (the `shoal cluster` commands, SIGTERM).
//!
//! Every wait polls with a deadline; the deadlines are generous because
//! nextest runs these tests in parallel with each other on small machines.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use shoal_tests::cluster_support::*;
use shoal_tests::*;

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
