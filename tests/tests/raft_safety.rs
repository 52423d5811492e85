//! Raft safety under crashes: a restarted leader must win a new election
//! before it leads again (DESIGN.md, "Raft specifics"), replicas stay
//! identical (`/v1/cluster/digest`), acknowledged writes survive crashes and
//! power cuts, a voter that lost its data is not counted as a voter, a watch
//! on a lagging follower does not start in the past, and a lease kept alive
//! across a leader change is not expired early.
//!
//! The faults come from debug-build switches of the node:
//! `SHOAL_FAULT_LOG_SYNC_DELAY_MS=N` (the Raft log writer sleeps N ms before
//! every fsync) and `SHOAL_FAULT_LOSE_UNSYNCED=1` (`kill -9` loses what was
//! not fsynced, as a power cut would), and from libfaketime for a wall clock
//! that is off. Waits poll with deadlines; the few fixed sleeps pace the
//! scenario (how long a load runs, when the other nodes come back) and are
//! never what a test asserts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use shoal_tests::*;

/// Convergence deadline: formation, elections, catch-up.
const T: Duration = Duration::from_secs(30);
const SYNC_DELAY: &str = "SHOAL_FAULT_LOG_SYNC_DELAY_MS";
const LOSE_UNSYNCED: &str = "SHOAL_FAULT_LOSE_UNSYNCED";
/// How long the write load runs before a crash.
const LOAD_TIME: Duration = Duration::from_secs(3);
/// Every node of a three-node cluster.
const ALL: [usize; 3] = [0, 1, 2];

// ----- helpers -------------------------------------------------------------

fn endpoints(cluster: &Cluster, indices: &[usize]) -> Vec<String> {
    indices
        .iter()
        .map(|&i| cluster.node(i).endpoint())
        .collect()
}

/// A cluster builder with node 0 as the first leader (ids 1, 2, 3) and
/// nodes 1 and 2 on tmpfs when there is one (their fsyncs cost nothing).
fn numbered_with_fast_followers() -> ClusterBuilder {
    let builder = Cluster::builder(3).numbered();
    match tmpfs_root() {
        Some(root) => builder.node_temp_root(1, &root).node_temp_root(2, &root),
        None => {
            eprintln!("no tmpfs at /dev/shm: the followers' data stays on disk");
            builder
        }
    }
}

/// The highest term the nodes `indices` report (each must answer).
async fn current_term(cluster: &Cluster, indices: &[usize]) -> u64 {
    let mut term = 0;
    for &i in indices {
        let status = wait_for(T, &format!("/v1/status of node {i}"), || async {
            cluster
                .status(i)
                .await
                .ok_or_else(|| "no answer".to_string())
        })
        .await;
        term = term.max(num(&status, "/term"));
    }
    term
}

/// What the nodes said about leadership while the cluster recovered.
#[derive(Default)]
struct Leadership {
    /// Reports of state `Leader` in a term not above the term before the
    /// crash: leadership resumed without an election.
    stale_claims: Vec<String>,
    /// Every distinct (node, state, term) reported, in order.
    seen: Vec<(usize, String, u64)>,
}

impl Leadership {
    /// Adds a problem naming every stale claim, if there were any; `when`
    /// (e.g. "round 2: ") says which restart they followed.
    fn report_stale_claims(&self, when: &str, problems: &mut Vec<String>) {
        if !self.stale_claims.is_empty() {
            problems.push(format!(
                "(a) {when}leadership resumed without an election: {}",
                self.stale_claims.join("; ")
            ));
        }
    }

    /// Waits until all nodes agree on one leader, prints what was seen, and
    /// adds to `problems` (prefixed by `when`, e.g. "round 2: ") every
    /// breach of (a): a stale leadership claim, no agreement within `T`, or
    /// an agreed term not above `old_term`. True if they agreed in a newer
    /// term.
    async fn agree_in_a_new_term(
        &mut self,
        cluster: &Cluster,
        old_term: u64,
        since: Instant,
        when: &str,
        problems: &mut Vec<String>,
    ) -> bool {
        let agreed = self
            .until_agreement(cluster, &ALL, old_term, since, T)
            .await;
        eprintln!(
            "{when}agreement after {:?}: {agreed:?}; states seen after the restart \
             (node, state, term): {:?}",
            since.elapsed(),
            self.seen
        );
        self.report_stale_claims(when, problems);
        match agreed {
            Err(e) => problems.push(format!("(a) {when}{e}")),
            Ok((leader, term)) if term <= old_term => problems.push(format!(
                "(a) {when}node {leader} leads in term {term}, not above the term before the \
                 restart ({old_term})"
            )),
            Ok(_) => return true,
        }
        false
    }

    /// Asks every running node for `/v1/status` once (concurrently) and
    /// records what they report; returns the answers by index.
    async fn observe(
        &mut self,
        cluster: &Cluster,
        old_term: u64,
        since: Instant,
    ) -> Vec<Option<Value>> {
        let statuses = join_all((0..cluster.len()).map(|i| cluster.status(i))).await;
        for (i, status) in statuses.iter().enumerate() {
            let Some(status) = status else { continue };
            let state = status["state"].as_str().unwrap_or("?").to_string();
            let term = status["term"].as_u64().unwrap_or(0);
            if !self
                .seen
                .iter()
                .any(|(n, s, t)| *n == i && *s == state && *t == term)
            {
                self.seen.push((i, state.clone(), term));
            }
            if state == "Leader" && term <= old_term {
                self.stale_claims.push(format!(
                    "{:?} after the restart node {i} reported state Leader in term {term} \
                     (the term before the crash was {old_term})",
                    since.elapsed()
                ));
            }
        }
        statuses
    }

    /// Polls every 20 ms until the nodes `indices` all answer, name the same
    /// leader in the same term, and that leader (one of them) says it is
    /// Leader; returns its index and term. `Err` after `timeout`.
    async fn until_agreement(
        &mut self,
        cluster: &Cluster,
        indices: &[usize],
        old_term: u64,
        since: Instant,
        timeout: Duration,
    ) -> Result<(usize, u64), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.observe(cluster, old_term, since).await;
            match agreement(cluster, indices, &statuses) {
                Ok(agreed) => return Ok(agreed),
                Err(last) if Instant::now() >= deadline => {
                    return Err(format!(
                        "no agreement on a leader after {timeout:?}: {last}"
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

fn agreement(
    cluster: &Cluster,
    indices: &[usize],
    statuses: &[Option<Value>],
) -> Result<(usize, u64), String> {
    let mut agreed: Option<(u64, u64)> = None;
    for &i in indices {
        let status = statuses[i]
            .as_ref()
            .ok_or(format!("node {i} does not answer"))?;
        let leader = status["leader"]
            .as_u64()
            .ok_or(format!("node {i} knows no leader: {status}"))?;
        let term = num(status, "/term");
        match agreed {
            None => agreed = Some((leader, term)),
            Some(other) if other != (leader, term) => {
                return Err(format!(
                    "node {i} says leader {leader} in term {term}, another node {other:?}"
                ));
            }
            Some(_) => {}
        }
    }
    let (leader, term) = agreed.ok_or("no nodes")?;
    let index = cluster
        .index_of(leader)
        .filter(|i| indices.contains(i))
        .ok_or(format!("the leader {leader} is not one of {indices:?}"))?;
    match &statuses[index] {
        Some(status) if status["state"] == "Leader" => Ok((index, term)),
        other => Err(format!(
            "node {index} is named leader but reports {other:?}"
        )),
    }
}

/// The end-of-test checks shared by the crash tests: (b) once the nodes
/// `indices` are at the same applied index, their digests, revisions and
/// record counts are equal; (c) every acknowledged write is on each of them
/// (read locally) with its acknowledged value and mod_revision. Problems are
/// appended to `problems`.
async fn check_replicas(
    cluster: &Cluster,
    indices: &[usize],
    prefix: &str,
    acked: &[Acked],
    problems: &mut Vec<String>,
) {
    match cluster.wait_same_applied_digest(indices, T).await {
        Err(e) => problems.push(format!(
            "(b) no common applied_index in /v1/cluster/digest: {e}"
        )),
        Ok(digests) => {
            let fields = |d: &Value| {
                (
                    d["digest"].as_str().unwrap_or("").to_string(),
                    num(d, "/revision"),
                    num(d, "/records"),
                    num(d, "/applied_term"),
                )
            };
            let distinct: BTreeSet<_> = digests.iter().map(fields).collect();
            if distinct.len() != 1 {
                problems.push(format!(
                    "(b) the replicas differ at applied_index {}: {}",
                    num(&digests[0], "/applied_index"),
                    digests
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join(" / ")
                ));
            }
        }
    }
    // Retried until every node has them (a node may still be catching up
    // if the digests could not be compared), then reported.
    let deadline = Instant::now() + T;
    let mut pending: Vec<usize> = indices.to_vec();
    let mut last: Vec<String> = Vec::new();
    loop {
        last.clear();
        let mut still = Vec::new();
        for &i in &pending {
            let result = match cluster.stale_kvs(i, prefix).await {
                Ok(kvs) => check_acked(&kvs, acked),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                last.push(format!("(c) node {i}: {e}"));
                still.push(i);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    problems.extend(last);
}

/// Panics with every problem and the cluster's state, if there are any.
async fn report(cluster: &Cluster, test: &str, problems: &[String]) {
    if !problems.is_empty() {
        panic!(
            "{test}: {} problem(s):\n  {}\ncluster now:\n{}",
            problems.len(),
            problems.join("\n  "),
            cluster.describe().await
        );
    }
}

/// Node `i`'s own store revision (`/v1/status`, answered locally).
async fn local_revision(cluster: &Cluster, i: usize) -> Option<u64> {
    cluster.status(i).await.and_then(|s| s["revision"].as_u64())
}

/// Writes through every node until `count` more writes are acknowledged;
/// returns them.
async fn more_writes(cluster: &Cluster, prefix: &str, count: usize) -> Vec<Acked> {
    more_writes_through(cluster, &ALL, prefix, count).await
}

/// Writes through the nodes `indices` until `count` more writes are
/// acknowledged; returns them.
async fn more_writes_through(
    cluster: &Cluster,
    indices: &[usize],
    prefix: &str,
    count: usize,
) -> Vec<Acked> {
    let load = Load::start(endpoints(cluster, indices), 8, prefix);
    load.wait_progress(count, T).await;
    load.stop().await
}

// ----- 1. a restarted leader must win an election ---------------------------

/// The reproduction of the fork: the leader's fsync is slower than its
/// followers' (20 ms; followers on tmpfs), so followers hold entries its own
/// log has not written; all three are killed mid-load and the old leader
/// comes back first. It must campaign in a new term: resuming leadership in
/// its old term would reuse (term, index) positions that the followers hold
/// with other entries, and the replicas would differ for ever.
/// Once the nodes agree on a leader: more writes, then every acknowledged
/// write and the replicas' digests checked.
async fn check_after_agreement(
    cluster: &Cluster,
    acked: Vec<Acked>,
    prefix: &str,
    problems: &mut Vec<String>,
) {
    cluster.wait_agreement(&ALL, T).await;
    let mut all = acked;
    all.extend(more_writes(cluster, &format!("{prefix}-after/"), 100).await);
    check_replicas(cluster, &ALL, prefix, &all, problems).await;
}

/// Kill -9 every node while `load` is writing (after it made progress), then
/// stop it; returns the writes acknowledged and the term before the crash.
async fn kill_all_under_load(cluster: &mut Cluster, load: Load, what: &str) -> (Vec<Acked>, u64) {
    load.wait_progress(20, T).await;
    let old_term = current_term(cluster, &ALL).await;
    for i in ALL {
        cluster.node_mut(i).kill9();
    }
    let acked = load.stop().await;
    eprintln!(
        "{} writes acknowledged before the {what} (term {old_term})",
        acked.len()
    );
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the {what}"
    );
    (acked, old_term)
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_leader_needs_an_election() {
    let mut cluster = numbered_with_fast_followers()
        .node_env(0, SYNC_DELAY, "20")
        .start()
        .await;
    let leader = cluster.wait_formed().await;
    assert_eq!(
        leader,
        0,
        "precondition: node 0 (id 1, the slow fsync) forms the cluster and leads first\n{}",
        cluster.describe().await
    );

    let load = Load::start(vec![cluster.node(0).endpoint()], 48, "rl/");
    tokio::time::sleep(LOAD_TIME).await;
    // Writes are flowing at the moment of the crash.
    let (acked, old_term) = kill_all_under_load(&mut cluster, load, "crash").await;

    // The old leader first, alone for 300 ms, then the others.
    let since = Instant::now();
    let mut leadership = Leadership::default();
    cluster.node_mut(0).restart_no_wait();
    while since.elapsed() < Duration::from_millis(300) {
        leadership.observe(&cluster, old_term, since).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.node_mut(1).restart_no_wait();
    cluster.node_mut(2).restart_no_wait();

    let mut problems = Vec::new();
    if leadership
        .agree_in_a_new_term(&cluster, old_term, since, "", &mut problems)
        .await
    {
        check_after_agreement(&cluster, acked, "rl", &mut problems).await;
    }
    report(&cluster, "restarted_leader_needs_an_election", &problems).await;
}

// ----- 2. fast restarts of the leader ---------------------------------------

/// The leader is killed and started again at once, well within the
/// followers' election timeout (2 s here), three times under write load.
/// Each time, the restarted node may lead again only in a newer term.
#[tokio::test(flavor = "multi_thread")]
async fn fast_restart_of_leader() {
    let mut builder = Cluster::builder(3)
        .numbered()
        .args(&["--election-timeout-ms", "2000"])
        .env(SYNC_DELAY, "20");
    if let Some(root) = tmpfs_root() {
        for i in ALL {
            builder = builder.node_temp_root(i, &root);
        }
    }
    let mut cluster = builder.start().await;
    cluster.wait_formed().await;

    let load = Load::start(endpoints(&cluster, &ALL), 16, "fr/");
    let mut problems = Vec::new();
    for round in 0..3 {
        load.wait_progress(100, T).await;
        let leader = cluster.wait_leader().await;
        let old_term = current_term(&cluster, &ALL).await;
        cluster.node_mut(leader).kill9();
        cluster.node_mut(leader).restart_no_wait();
        let since = Instant::now();
        eprintln!("round {round}: restarted node {leader} (term {old_term})");
        let when = format!("round {round}: ");
        if !Leadership::default()
            .agree_in_a_new_term(&cluster, old_term, since, &when, &mut problems)
            .await
        {
            break;
        }
    }
    if problems.is_empty() {
        load.wait_progress(100, T).await;
    }
    let acked = load.stop().await;
    eprintln!("{} writes acknowledged", acked.len());
    check_replicas(&cluster, &ALL, "fr/", &acked, &mut problems).await;
    report(&cluster, "fast_restart_of_leader", &problems).await;
}

// ----- 3. power cut of the whole cluster -----------------------------------

/// Every node loses what it had not fsynced (the first leader's fsync also
/// 20 ms slow), all are killed under write load and started again together:
/// every acknowledged write survives, and the replicas are identical.
#[tokio::test(flavor = "multi_thread")]
async fn power_cut_whole_cluster() {
    let mut cluster = numbered_with_fast_followers()
        .env(LOSE_UNSYNCED, "1")
        .node_env(0, SYNC_DELAY, "20")
        .start()
        .await;
    cluster.wait_formed().await;

    let load = Load::start(endpoints(&cluster, &ALL), 32, "pc/");
    tokio::time::sleep(LOAD_TIME).await;
    let (acked, old_term) = kill_all_under_load(&mut cluster, load, "power cut").await;

    let since = Instant::now();
    for i in ALL {
        cluster.node_mut(i).restart_no_wait();
    }
    let mut problems = Vec::new();
    if Leadership::default()
        .agree_in_a_new_term(&cluster, old_term, since, "", &mut problems)
        .await
    {
        check_after_agreement(&cluster, acked, "pc", &mut problems).await;
    }
    report(&cluster, "power_cut_whole_cluster", &problems).await;
}

// ----- 4. a voter that lost its data ----------------------------------------

/// A voter whose data directory is wiped comes back under the same id
/// (`--node-id`). With an empty log it must not count as a voter: it has
/// forgotten the entries it acknowledged and the vote it gave. The node
/// may refuse to start (exit with an error), or take part as a learner or
/// as a voter that withholds its vote until it has caught up; what it must
/// not do is vote as if it still held what it acknowledged. (Demotion by
/// the leader alone is not enough: here there is no leader to demote it.)
///
/// Node 2 is paused while node 0 (the leader) and node 1 acknowledge writes;
/// nodes 0 and 1 are killed, node 1's data is wiped, node 2 continues and
/// node 1 comes back empty. With node 0 down, node 2 (missing those writes)
/// can only become leader by the empty node's vote, which would lose them:
/// no leader may emerge among nodes 1 and 2 (watched for 3 s after node 1
/// answers, many election timeouts). Then node 0 comes back: every
/// acknowledged write is on every running node and the replicas agree.
#[tokio::test(flavor = "multi_thread")]
async fn empty_data_dir_voter_is_refused() {
    const WINDOW: Duration = Duration::from_secs(3);
    let (a, b, c) = (0, 1, 2);
    let mut cluster = Cluster::builder(3).numbered().start().await;
    let leader = cluster.wait_formed().await;
    assert_eq!(
        leader,
        a,
        "precondition: node 0 (id 1) forms the cluster and leads first\n{}",
        cluster.describe().await
    );
    let mut acked = more_writes(&cluster, "ed/", 50).await;
    let b_id = cluster.node_id(b).await;

    // Writes that only nodes 0 and 1 hold.
    cluster.node_mut(c).pause();
    let load = Load::start(vec![cluster.node(a).endpoint()], 16, "ed/lag-");
    load.wait_progress(200, T).await;
    let lagging = load.stop().await;
    let newest = lagging.iter().map(|w| w.revision).max().expect("writes");
    acked.extend(lagging);

    cluster.node_mut(a).kill9();
    cluster.node_mut(b).kill9();
    cluster.node_mut(b).wipe_data_dir();
    cluster.node_mut(c).resume();
    cluster.node_mut(b).restart_no_wait();
    let restarted = Instant::now();

    // Node 0 is down: nobody may lead.
    let mut seen: Vec<(usize, String, u64)> = Vec::new();
    let mut b_answered: Option<Instant> = None;
    let mut b_exit = None;
    while b_answered.is_none_or(|at| at.elapsed() < WINDOW) {
        if b_exit.is_none() && !cluster.node_mut(b).is_running() {
            b_exit = cluster.node(b).last_exit();
            b_answered.get_or_insert_with(Instant::now);
        }
        for i in [b, c] {
            let Some(status) = cluster.status(i).await else {
                continue;
            };
            if i == b {
                b_answered.get_or_insert_with(Instant::now);
            }
            let state = status["state"].as_str().unwrap_or("?").to_string();
            let term = status["term"].as_u64().unwrap_or(0);
            if !seen
                .iter()
                .any(|(n, s, t)| *n == i && *s == state && *t == term)
            {
                seen.push((i, state.clone(), term));
            }
            assert!(
                state != "Leader",
                "node {i} became leader in term {term} {:?} after node 1 (id {b_id}) came back with an \
                 empty data directory, while node 0, the only other holder of the writes acknowledged \
                 up to revision {newest}, was down: the wiped node voted with an empty log \
                 (states seen: {seen:?})\n{}",
                restarted.elapsed(),
                cluster.describe().await
            );
        }
        assert!(
            restarted.elapsed() < T,
            "node 1 neither answered /v1/status nor exited within {T:?} of its restart\n{}",
            cluster.node(b).log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("while node 0 was down (node, state, term): {seen:?}");
    match b_exit {
        Some(status) => {
            assert!(
                !status.success(),
                "node 1 exited with success after coming back empty; a refusal is an error exit\n{}",
                cluster.node(b).log_tail(30)
            );
            eprintln!(
                "node 1 refused to start ({status}); its log:\n{}",
                cluster.node(b).log_tail(15)
            );
        }
        None => eprintln!("node 1 kept running"),
    }

    // Node 0 comes back; the running nodes agree and hold every write.
    cluster.node_mut(a).restart_no_wait();
    let running: Vec<usize> = ALL
        .iter()
        .copied()
        .filter(|&i| i != b || b_exit.is_none())
        .collect();
    let leader = cluster.wait_agreement(&running, T).await;
    if let Some(members) = cluster.members(leader).await {
        let listed: Vec<&Value> = members.iter().map(|m| &m.raw).collect();
        eprintln!("members once node 0 is back: {listed:?}");
    }
    let mut problems = Vec::new();
    let after = more_writes_through(&cluster, &running, "ed/after-", 20).await;
    acked.extend(after);
    check_replicas(&cluster, &running, "ed/", &acked, &mut problems).await;
    report(&cluster, "empty_data_dir_voter_is_refused", &problems).await;
}

// ----- 5. a watch on a lagging follower -------------------------------------

/// A watch opened without `from_revision` starts at a linearizable
/// revision: on a follower that is behind, it must not start before
/// revisions the cluster had acknowledged when the watch was opened (else
/// it delivers those old changes as if they were new). The follower lags
/// because it was paused (SIGSTOP) during 2000 writes; the watch is opened
/// right after it continues. Checked for the SSE stream and for long-poll.
#[tokio::test(flavor = "multi_thread")]
async fn watch_without_start_revision_is_not_stale() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let follower = *ALL.iter().find(|&&i| i != leader).expect("a follower");
    let leader_url = vec![cluster.node(leader).endpoint()];

    // SSE.
    cluster.node_mut(follower).pause();
    let load = Load::start(leader_url.clone(), 16, "wl/");
    load.wait_progress(2000, T).await;
    let acked = load.stop().await;
    let before = acked.iter().map(|a| a.revision).max().expect("writes");
    cluster.node_mut(follower).resume();
    // The follower's own revision, asked beside the watch: whether it still
    // lagged when the watch was opened (reported, not asserted).
    let (mut watch, lag) = tokio::join!(
        cluster.node(follower).watch(&[("prefix", "wl/")], None),
        local_revision(&cluster, follower)
    );
    eprintln!("SSE: acknowledged through revision {before}; the follower's own revision beside the watch: {lag:?}");
    let marker = num(
        &cluster.node(leader).put("wl/marker", b"m").await,
        "/revision",
    );
    let batches = watch.events_through(marker, T).await;
    let early: Vec<u64> = batches
        .iter()
        .map(|b| num(b, "/revision"))
        .filter(|&r| r <= before)
        .collect();
    assert!(
        early.is_empty(),
        "a watch opened on node {follower} (lagging) after revision {before} was acknowledged \
         delivered {} changes at or before it (first at revision {}): it started at the \
         follower's stale revision",
        early.len(),
        early[0]
    );
    assert_eq!(
        changes(&batches),
        vec![Change::put(marker, "wl/marker", b"m")],
        "the watch delivers exactly the change made after it was opened"
    );
    drop(watch);

    // Long-poll.
    cluster.node_mut(follower).pause();
    let load = Load::start(leader_url, 16, "wp/");
    load.wait_progress(2000, T).await;
    let acked = load.stop().await;
    let before = acked.iter().map(|a| a.revision).max().expect("writes");
    cluster.node_mut(follower).resume();
    let (reply, marker, lag) = tokio::join!(
        cluster
            .node(follower)
            .poll(&[("prefix", "wp/"), ("timeout_ms", "5000")]),
        async {
            // Made after the poll was sent; it may or may not be in the reply.
            tokio::time::sleep(Duration::from_millis(200)).await;
            num(
                &cluster.node(leader).put("wp/marker", b"m").await,
                "/revision",
            )
        },
        local_revision(&cluster, follower)
    );
    eprintln!("poll: acknowledged through revision {before}; the follower's own revision beside the poll: {lag:?}");
    let body = reply.ok();
    let revisions: Vec<u64> = body["batches"]
        .as_array()
        .expect("batches array")
        .iter()
        .map(|b| num(b, "/revision"))
        .collect();
    let next = num(&body, "/next_revision");
    assert!(
        revisions.iter().all(|&r| r > before) && next > before,
        "a long-poll opened on node {follower} (lagging) after revision {before} was \
         acknowledged returned batches at {revisions:?} with next_revision {next} \
         (marker written at {marker}): it started at the follower's stale revision"
    );
}

// ----- 6. a lease across a leader change -------------------------------------

const LEASE_TTL: Duration = Duration::from_secs(5);
/// Allowance for the node's wall clock against the test's.
const CLOCK_SLACK: Duration = Duration::from_millis(200);

/// Keeps a lease alive through one node and checks its key after each
/// keepalive.
struct Keeper {
    via: usize,
    lease: u64,
    key: String,
    /// When the newest acknowledged keepalive (or the grant) was sent.
    last_ok: Instant,
    failed: usize,
    /// The longest time a read was answered after `last_ok`.
    longest_gap: Duration,
    /// Reads that found the key gone less than a TTL after `last_ok`.
    early: Vec<String>,
}

impl Keeper {
    /// A keepalive through the node, then a linearizable read of the key
    /// there. The keepalive's expiry is computed by the leader after it
    /// received the request, so the key cannot go before `sent + TTL`.
    async fn step(&mut self, cluster: &Cluster) {
        let node = cluster.node(self.via);
        let sent = Instant::now();
        let path = format!("/v1/leases/{}/keepalive", self.lease);
        let keepalive = node
            .try_request(Method::POST, &path, Duration::from_secs(2))
            .await;
        if matches!(&keepalive, Ok(r) if r.status == StatusCode::OK) {
            self.last_ok = sent;
        } else {
            self.failed += 1;
        }
        let read = node.try_get(&self.key, &[], Duration::from_secs(2)).await;
        let answered = Instant::now();
        let since_ok = answered.duration_since(self.last_ok);
        self.longest_gap = self.longest_gap.max(since_ok);
        if matches!(&read, Ok(r) if r.status == StatusCode::NOT_FOUND)
            && since_ok + CLOCK_SLACK < LEASE_TTL
        {
            self.early.push(format!(
                "{} was gone {since_ok:?} after the sending of an acknowledged keepalive (TTL {LEASE_TTL:?})",
                self.key
            ));
        }
    }
}

/// A lease kept alive through one node survives the leader's `kill -9`:
/// the new leader does not expire it while keepalives continue within the
/// TTL (5 s, one every 300 ms). A read that finds the key gone less than a
/// TTL after the sending of an acknowledged keepalive is an early expiry.
/// Once the keepalives stop, the new leader does expire it.
///
/// The two voters that can become the next leader run with their wall
/// clocks two minutes ahead (libfaketime): a lease's time must not depend
/// on whose wall clock stamped its last keepalive. The keepalives go
/// through a fourth node, a learner with the true time, which never leads.
#[tokio::test(flavor = "multi_thread")]
async fn lease_survives_leader_change() {
    const EVERY: Duration = Duration::from_millis(300);
    let mut cluster = Cluster::builder(3)
        .numbered()
        .node_clock_offset(1, 120)
        .node_clock_offset(2, 120)
        .start()
        .await;
    let leader = cluster.wait_formed().await;
    assert_eq!(
        leader,
        0,
        "precondition: node 0 (id 1, true time) forms the cluster and leads first\n{}",
        cluster.describe().await
    );
    let rest = [1, 2];
    let via = cluster.add_node(&[]);
    cluster.node_mut(via).wait_ready_within(T).await;
    let via_id = cluster.node_id(via).await;
    wait_for(T, "the fourth node listed as a learner", || async {
        let members = cluster.members(leader).await.ok_or("no /v1/cluster")?;
        match members.iter().find(|m| m.node_id == via_id) {
            Some(m) if m.raft_role == "learner" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let granted = Instant::now();
    let lease = cluster.node(via).grant_lease(LEASE_TTL.as_secs()).await;
    let key = "ls/key".to_string();
    cluster
        .node(via)
        .put_with(&key, b"held", &[("lease", &lease.to_string())])
        .await
        .ok();
    let mut keeper = Keeper {
        via,
        lease,
        key: key.clone(),
        last_ok: granted,
        failed: 0,
        longest_gap: Duration::ZERO,
        early: Vec::new(),
    };
    for _ in 0..5 {
        keeper.step(&cluster).await;
        tokio::time::sleep(EVERY).await;
    }

    cluster.node_mut(leader).kill9();
    let killed = Instant::now();
    // Keepalives go on while the other two elect a leader, then for two TTLs.
    let mut elected: Option<Instant> = None;
    while elected.is_none_or(|at| at.elapsed() < 2 * LEASE_TTL) {
        keeper.step(&cluster).await;
        if elected.is_none() {
            if let Some(new_leader) = cluster.leader_index().await {
                if rest.contains(&new_leader) {
                    eprintln!(
                        "node {new_leader} leads {:?} after the kill",
                        killed.elapsed()
                    );
                    elected = Some(Instant::now());
                }
            }
        }
        assert!(
            killed.elapsed() < T,
            "no new leader within {T:?} of the kill\n{}",
            cluster.describe().await
        );
        tokio::time::sleep(EVERY).await;
    }
    eprintln!(
        "{} keepalives failed; the longest time from an acknowledged keepalive to a read was {:?}",
        keeper.failed, keeper.longest_gap
    );
    assert!(
        keeper.early.is_empty(),
        "the lease expired early across the leader change: {:?}",
        keeper.early
    );
    assert!(
        keeper.longest_gap + CLOCK_SLACK < LEASE_TTL,
        "keepalives failed for {:?}, about the TTL {LEASE_TTL:?} or longer: the failover took too long to judge expiry",
        keeper.longest_gap
    );
    let kv = cluster.node(via).get_kv(&key).await;
    assert_eq!(
        num(&kv, "/lease"),
        lease,
        "the key is still attached to the lease: {kv}"
    );
    let info = cluster
        .node(via)
        .get_path(&format!("/v1/leases/{lease}"))
        .await
        .ok();
    assert!(
        num(&info, "/remaining_ms") > 0,
        "the lease has time left: {info}"
    );

    // Without keepalives the new leader expires it, not before the TTL.
    eventually(
        LEASE_TTL + T,
        "the key deleted once the keepalives stopped",
        || async {
            let reply = cluster
                .node(via)
                .try_get(&key, &[], Duration::from_secs(2))
                .await
                .ok()?;
            (reply.status == StatusCode::NOT_FOUND).then_some(())
        },
    )
    .await;
    let after = keeper.last_ok.elapsed();
    assert!(
        after + CLOCK_SLACK >= LEASE_TTL,
        "the key went {after:?} after the last acknowledged keepalive, before the TTL {LEASE_TTL:?}"
    );
}
