//! Space limits: past the store quota (`--quota-backend-mb`) or under the
//! free-disk reserve (`--min-free-disk-mb`) of any live node, writes that add
//! data are refused with 507 while reads, deletes and compaction go on; the
//! node stays up, keeps every acknowledged write, and takes writes again
//! once space is freed. A disk filled to its last byte stops the node's
//! Raft, and the node waits in place (answering 507) instead of exiting,
//! then restarts itself once there is room. The Raft log entries a node
//! keeps in memory are bounded by bytes, whatever the size of the values.

use std::path::Path;
use std::time::Duration;

use shoal_tests::*;

const T: Duration = Duration::from_secs(30);
/// Values are random bytes (compression gives nothing back) of this size.
const VALUE_BYTES: usize = 64 << 10;

fn random_value() -> Vec<u8> {
    (0..VALUE_BYTES).map(|_| rand::random::<u8>()).collect()
}

/// Puts values under `prefix` through `node` until one is refused (at
/// most `max` puts): the acknowledged keys with their values, and the
/// refusal.
async fn fill_until_refused(
    node: &Node,
    prefix: &str,
    max: usize,
) -> (Vec<(String, Vec<u8>)>, Reply) {
    let mut acked = Vec::new();
    for i in 0..max {
        let key = format!("{prefix}{i:05}");
        let value = random_value();
        let reply = node.put_with(&key, &value, &[]).await;
        if reply.status != StatusCode::OK {
            return (acked, reply);
        }
        acked.push((key, value));
    }
    panic!("{max} puts of {VALUE_BYTES} bytes were all taken");
}

/// Puts `key` through `node` until the node refuses it (an alarm takes a
/// check or two to be raised and to reach every node); the refusal.
async fn put_until_refused(node: &Node, key: &str) -> Reply {
    wait_for(T, &format!("a put of {key} refused"), || async {
        let reply = node.put_with(key, &random_value(), &[]).await;
        match reply.status {
            StatusCode::OK => Err("taken".to_string()),
            _ => Ok(reply),
        }
    })
    .await
}

fn assert_refused(reply: &Reply, code: &str, alarm: &str) {
    assert_eq!(
        reply.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        reply.describe()
    );
    assert_eq!(reply.body["error"]["code"], json!(code), "{}", reply.text);
    assert_eq!(reply.body["error"]["alarm"], json!(alarm), "{}", reply.text);
}

async fn assert_values(node: &Node, acked: &[(String, Vec<u8>)]) {
    for (key, value) in acked {
        let kv = node.get_kv(key).await;
        assert!(&kv_value(&kv) == value, "value of {key} changed");
    }
}

/// The alarms `/v1/cluster` shows for each member, by node id.
async fn alarms_by_node(node: &Node) -> Vec<(u64, Value)> {
    let view = node.get_path("/v1/cluster").await.ok();
    view["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| (num(m, "/node_id"), m["alarms"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// `POST /v1/logs/disk` with one NDJSON record.
async fn ingest(node: &Node, body: &'static str) -> Reply {
    node.send(
        node.request(Method::POST, "/v1/logs/disk")
            .header("content-type", "application/x-ndjson")
            .body(body),
    )
    .await
}

async fn metrics_text(node: &Node) -> String {
    node.get_path("/metrics").await.text
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_refuses_growth_until_deletes_and_compaction_free_space() {
    let mut node = Node::start_with(&["--quota-backend-mb", "2"]).await;
    let (acked, refused) = fill_until_refused(&node, "q/", 4000).await;
    assert_refused(&refused, "quota_exceeded", "quota");
    assert!(acked.len() >= 10, "only {} puts were taken", acked.len());

    // Everything acknowledged reads back; what adds data is refused.
    assert_values(&node, &acked).await;
    let txn_put = node
        .txn(&json!({"success": [{"put": {"key": "q/txn", "value": b64(b"x")}}]}))
        .await;
    assert_refused(&txn_put, "quota_exceeded", "quota");
    let lease = node
        .post_json("/v1/leases", &json!({"ttl_seconds": 60}))
        .await;
    assert_refused(&lease, "quota_exceeded", "quota");
    let shown: Vec<Value> = alarms_by_node(&node)
        .await
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(shown, vec![json!(["quota"])], "the alarm in /v1/cluster");
    let metrics = metrics_text(&node).await;
    assert!(
        metrics.contains("shoal_space_alarm{alarm=\"quota\"} 1"),
        "{metrics}"
    );

    // Deletes (one plain, the rest in a transaction) and compaction go.
    let (first, rest) = acked.split_first().expect("puts were taken");
    node.delete(&first.0).await;
    let deletes: Vec<Value> = rest
        .iter()
        .map(|(key, _)| json!({"delete": {"key": key, "prefix": false}}))
        .collect();
    for chunk in deletes.chunks(100) {
        let reply = node.txn(&json!({"success": chunk})).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    }
    let revision = node.revision().await;
    let compacted = node
        .post_json("/v1/compact", &json!({"revision": revision}))
        .await;
    assert_eq!(compacted.status, StatusCode::OK, "{}", compacted.describe());

    // The node gives the space back and clears the alarm by itself.
    let after = wait_for(T, "a put taken again after compaction", || async {
        let reply = node.put_with("q/after", b"fits again", &[]).await;
        match reply.status {
            StatusCode::OK => Ok(num(&reply.body, "/revision")),
            _ => Err(reply.describe()),
        }
    })
    .await;
    let shown: Vec<Value> = alarms_by_node(&node)
        .await
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(shown, vec![json!([])], "no alarm in /v1/cluster");

    // Nothing acknowledged is lost across kill -9.
    node.kill9();
    node.restart().await;
    let kv = node.get_kv("q/after").await;
    assert_eq!(num(&kv, "/mod_revision"), after);
    assert_eq!(node.list_all("q/").await.len(), 1, "only q/after is left");
}

/// One node's alarm holds the whole cluster's writes: the other nodes
/// must not send it entries it has no room for.
#[tokio::test(flavor = "multi_thread")]
async fn one_nodes_quota_alarm_refuses_writes_on_every_node() {
    let cluster = Cluster::builder(3)
        .node_args(2, &["--quota-backend-mb", "2"])
        .start()
        .await;
    cluster.wait_leader().await;
    let small = cluster.node_id(2).await;
    let (acked, refused) = fill_until_refused(cluster.node(0), "c/", 4000).await;
    assert_refused(&refused, "quota_exceeded", "quota");
    for i in 0..3 {
        let node = cluster.node(i);
        // Each node learns of the alarm from gossip within a check or two.
        let reply = put_until_refused(node, "c/more").await;
        assert_refused(&reply, "quota_exceeded", "quota");
        assert_values(node, &acked[acked.len() - 3..]).await;
        for (id, alarms) in alarms_by_node(node).await {
            let want = if id == small {
                json!(["quota"])
            } else {
                json!([])
            };
            assert_eq!(alarms, want, "alarms of node {id} as node {i} sees them");
        }
    }
    // Deletes go through any node.
    let reply = cluster.node(1).delete_with(&acked[0].0, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
}

/// A tmpfs of `megabytes` mounted on a new directory; unmounted on drop.
struct SmallFilesystem {
    dir: tempfile::TempDir,
}

impl SmallFilesystem {
    fn mount(megabytes: u64) -> SmallFilesystem {
        let dir = tempfile::Builder::new()
            .prefix("shoal-small-fs-")
            .tempdir()
            .expect("temporary directory");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {megabytes} MiB tmpfs failed (the test needs root)"
        );
        SmallFilesystem { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes())
            .expect("path without NUL");
        // SAFETY: statvfs writes only into the struct it is given.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        stat.f_bavail * stat.f_frsize
    }

    /// Writes a file of zeros that leaves about `left` bytes free.
    fn fill_leaving(&self, name: &str, left: u64) {
        let size = self.free_bytes().saturating_sub(left);
        let file = std::fs::File::create(self.path().join(name)).expect("create the filler");
        file.set_len(0).expect("truncate");
        let mut file = std::io::BufWriter::new(file);
        let block = vec![0u8; 1 << 20];
        let mut written = 0;
        while written < size {
            let n = (size - written).min(block.len() as u64) as usize;
            std::io::Write::write_all(&mut file, &block[..n]).expect("write the filler");
            written += n as u64;
        }
        std::io::Write::flush(&mut file).expect("flush the filler");
    }
}

impl SmallFilesystem {
    /// Writes a file of zeros until the file system has no byte left.
    fn fill_completely(&self, name: &str) {
        let mut file = std::fs::File::create(self.path().join(name)).expect("create the filler");
        let block = vec![0u8; 64 << 10];
        loop {
            match std::io::Write::write(&mut file, &block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("writing the filler: {e}"),
            }
        }
        assert_eq!(self.free_bytes(), 0, "the filler left room");
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A node on a tmpfs of `megabytes` with `--min-free-disk-mb`, holding
/// twenty acknowledged keys (`d/00`..`d/19`); None (the test skipped) unless
/// root, which mounting needs. CI runs as root, as for the jepsen run.
async fn node_on_small_filesystem(
    megabytes: u64,
    min_free_mb: &str,
) -> Option<(SmallFilesystem, Node, Vec<(String, Vec<u8>)>)> {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPING: mounting a small tmpfs needs root");
        return None;
    }
    let fs = SmallFilesystem::mount(megabytes);
    let node = Node::builder()
        .temp_root(fs.path())
        .args(&["--min-free-disk-mb", min_free_mb])
        .start()
        .await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("d/{i:02}");
        let value = random_value();
        node.put(&key, &value).await;
        acked.push((key, value));
    }
    Some((fs, node, acked))
}

#[tokio::test(flavor = "multi_thread")]
async fn nearly_full_disk_refuses_writes_and_the_node_stays_up() {
    let Some((fs, mut node, acked)) = node_on_small_filesystem(192, "48").await else {
        return;
    };
    assert_eq!(
        ingest(&node, "{\"message\": \"before\"}\n").await.status,
        StatusCode::OK
    );

    // Something else takes the disk down to 16 MiB free.
    fs.fill_leaving("filler", 16 << 20);
    let refused = put_until_refused(&node, "d/late").await;
    assert_refused(&refused, "insufficient_storage", "disk");
    let logs = ingest(&node, "{\"message\": \"while full\"}\n").await;
    assert_eq!(
        logs.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        logs.describe()
    );
    assert_eq!(logs.body["error"]["code"], json!("insufficient_storage"));

    // The node answers, reads work, deletes free space.
    assert_eq!(node.get_path("/health").await.status, StatusCode::OK);
    assert_values(&node, &acked).await;
    let (deleted, kept) = acked.split_at(5);
    for (key, _) in deleted {
        node.delete(key).await;
    }
    // More time with the disk this full changes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        node.is_running(),
        "the node exited with its disk nearly full"
    );
    assert_values(&node, kept).await;

    // Space comes back: writes are taken again.
    std::fs::remove_file(fs.path().join("filler")).expect("remove the filler");
    wait_for(T, "a put taken once space is back", || async {
        let reply = node.put_with("d/back", b"room again", &[]).await;
        match reply.status {
            StatusCode::OK => Ok(()),
            _ => Err(reply.describe()),
        }
    })
    .await;
    assert_eq!(
        ingest(&node, "{\"message\": \"after\"}\n").await.status,
        StatusCode::OK
    );

    node.kill9();
    node.restart().await;
    assert_values(&node, kept).await;
    for (key, _) in deleted {
        assert_eq!(node.get(key).await.0, StatusCode::NOT_FOUND, "{key}");
    }
    assert_eq!(kv_value(&node.get_kv("d/back").await), b"room again");
}

/// Takes a node that is waiting for disk space: reads 503, writes 507,
/// `/health` 200 (the process lives), not ready.
async fn wait_for_stand_in(node: &Node) {
    wait_for(
        T,
        "the node answering 507 as it waits for space",
        || async {
            let reply = node
                .try_request(Method::PUT, "/v1/kv/while-full", Duration::from_secs(5))
                .await?;
            if reply.status != StatusCode::INSUFFICIENT_STORAGE
                || reply.body["error"]["message"]
                    .as_str()
                    .is_none_or(|m| !m.contains("restarts by itself"))
            {
                return Err(reply.describe());
            }
            Ok(())
        },
    )
    .await;
    let refused = node.put_with("d/full", b"no room", &[]).await;
    assert_refused(&refused, "insufficient_storage", "disk");
    assert_eq!(
        node.get_path("/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(node.get_path("/health").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_full_to_the_last_byte_stops_the_node_in_place_until_space_returns() {
    let Some((fs, mut node, mut kept)) = node_on_small_filesystem(128, "8").await else {
        return;
    };
    let pid = node.pid();

    // Something else takes every byte. Deletes still pass the disk alarm
    // and need room in the Raft log: one of them fails on ENOSPC, which
    // stops the node's Raft.
    fs.fill_completely("filler");
    // The first deletes are of acknowledged keys (a failed one may or may
    // not have happened: it is checked no further), the rest of absent ones.
    let mut deleted = Vec::new();
    let mut failed = false;
    let absent = "x".repeat(1000);
    for i in 0..10_000 {
        let acked = kept.len() > 15;
        let key = match kept.pop() {
            Some((key, _)) if acked => key,
            Some(entry) => {
                kept.push(entry);
                format!("gone/{absent}{i}")
            }
            None => unreachable!("twenty keys were written"),
        };
        let reply = node
            .try_request(Method::DELETE, &format!("/v1/kv/{key}"), T)
            .await;
        if !matches!(&reply, Ok(reply) if reply.status == StatusCode::OK) {
            failed = true;
            break;
        }
        if acked {
            deleted.push(key);
        }
    }
    assert!(failed, "10 000 deletes were taken on a full disk");
    wait_for_stand_in(&node).await;
    assert_eq!(node.pid(), pid, "the node is not the same process");

    // Space comes back: the node restarts in place and has every
    // acknowledged write, and none of the acknowledged deletes.
    std::fs::remove_file(fs.path().join("filler")).expect("remove the filler");
    node.wait_ready().await;
    assert_eq!(node.pid(), pid, "the node is not the same process");
    assert_values(&node, &kept).await;
    for key in &deleted {
        assert_eq!(node.get(key).await.0, StatusCode::NOT_FOUND, "{key}");
    }
    node.put("d/back", b"room again").await;

    // A node started on a full disk waits too, instead of exiting.
    node.kill9();
    fs.fill_completely("filler");
    node.restart_no_wait();
    wait_for(T, "a put refused on a full disk", || async {
        let reply = node
            .try_request(
                Method::PUT,
                "/v1/kv/d/after-restart",
                Duration::from_secs(5),
            )
            .await?;
        match reply.status {
            StatusCode::INSUFFICIENT_STORAGE => Ok(()),
            _ => Err(reply.describe()),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(node.is_running(), "the node exited on a full disk");
    std::fs::remove_file(fs.path().join("filler")).expect("remove the filler");
    node.wait_ready().await;
    assert_values(&node, &kept).await;
    assert_eq!(kv_value(&node.get_kv("d/back").await), b"room again");
}

/// Every node keeps at most 16 MiB of written Raft log entries in memory
/// (`shoal_raft_log_tail_bytes`), not a fixed number of them: 40 puts of
/// 1000 KiB leave 15-16 MiB there on each node, where a bound by count
/// alone (2048 entries) kept all 40 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn the_raft_log_kept_in_memory_is_bounded_by_bytes() {
    const BOUND: f64 = (16 << 20) as f64;
    let cluster = Cluster::start(3, &[]).await;
    let value = vec![b'v'; 1000 << 10];
    for i in 0..40 {
        let node = cluster.node(i % 3);
        let reply = node.put_with(&format!("tail/{i:02}"), &value, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    }
    for (i, node) in cluster.nodes().iter().enumerate() {
        // A follower writes the last entries a moment after the leader.
        wait_for(T, &format!("node {i}'s tail within the bound"), || async {
            let text = metrics_text(node).await;
            match metric_value(&text, "shoal_raft_log_tail_bytes") {
                Some(bytes) if bytes > BOUND / 2.0 && bytes <= BOUND => Ok(bytes),
                other => Err(format!("shoal_raft_log_tail_bytes {other:?}")),
            }
        })
        .await;
    }
}
