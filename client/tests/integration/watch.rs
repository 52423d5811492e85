//! Watches: order, exactly-once delivery across restarts and failover,
//! and the compacted error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shoal_client::{Client, Error, EventType, WatchOptions, WatchStream};
use tokio::task::JoinHandle;

use crate::common::{client_for, dev_node, within};

/// Writes `prefix{n}` for n = 0.. until stopped, retrying each write until
/// it is acknowledged; returns the revision of the last acknowledged write.
fn writer(client: Client, prefix: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match client.put(&format!("{prefix}{n}"), n.to_string()).await {
                Ok(put) => {
                    last = put.revision;
                    n += 1;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        last
    })
}

/// Reads batches until revision `last`, checking that revisions come in
/// order, each once, and with no gap from `first`.
async fn read_through(stream: &mut WatchStream, first: u64, last: u64) {
    let mut expected = first;
    while expected <= last {
        let batch = within(Duration::from_secs(30), "next watch batch", stream.next())
            .await
            .expect("the watch stream ended")
            .expect("watch error");
        assert_eq!(
            batch.revision, expected,
            "revision out of order, repeated or missing"
        );
        assert!(batch.events.iter().all(|e| e.kind == EventType::Put));
        expected += 1;
    }
}

#[tokio::test]
async fn watch_resumes_without_gaps_or_duplicates_across_a_node_restart() {
    let mut node = dev_node().await;
    let client = client_for([&node]);
    let mut stream = client
        .watch(WatchOptions::prefix("restart/"))
        .await
        .expect("watch");
    let first = stream.start_revision();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(client.clone(), "restart/", stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.restart().await.expect("restart the node");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let last = writes.await.expect("writer");
    assert!(last > first + 10, "too few writes: {first}..{last}");

    read_through(&mut stream, first, last).await;
    assert!(stream.reconnects() >= 1, "the watch never reconnected");
}

#[tokio::test]
async fn watch_fails_over_to_another_node_of_a_cluster() {
    let mut nodes = shoal_testkit::start_cluster(3, &[])
        .await
        .expect("start a 3-node cluster");
    let client = client_for(&nodes);
    let mut stream = client
        .watch(WatchOptions::prefix("failover/"))
        .await
        .expect("watch");
    let first = stream.start_revision();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(client.clone(), "failover/", stop.clone());
    // Some events on the first connection, so it is known where it is.
    let batch = within(Duration::from_secs(10), "first event", stream.next())
        .await
        .expect("stream ended")
        .expect("watch error");
    assert_eq!(batch.revision, first);
    let endpoint = stream.connected_endpoint().expect("connected");
    let victim = nodes
        .iter()
        .position(|n| n.api_url() == endpoint)
        .expect("the watch is connected to a node of the cluster");
    nodes[victim].kill9();

    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let last = within(Duration::from_secs(30), "writer stops", writes)
        .await
        .expect("writer");
    assert!(last > first + 10, "too few writes: {first}..{last}");

    read_through(&mut stream, first + 1, last).await;
    let now = stream.connected_endpoint().expect("connected again");
    assert_ne!(now, endpoint, "still on the killed node");
    assert!(stream.reconnects() >= 1);
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_a_typed_error() {
    let node = dev_node().await;
    let client = client_for([&node]);
    for i in 0..5 {
        client.put("compact/k", format!("{i}")).await.expect("put");
    }
    let revision = client.put("compact/k", "last").await.expect("put").revision;
    client.compact(revision).await.expect("compact");

    let mut stream = client
        .watch(WatchOptions::prefix("compact/").from_revision(1))
        .await
        .expect("watch");
    let item = within(Duration::from_secs(10), "compacted error", stream.next())
        .await
        .expect("an error item");
    match item {
        Err(Error::Compacted {
            requested,
            compact_revision,
            ..
        }) => {
            assert_eq!(requested, 1);
            assert_eq!(compact_revision, revision);
        }
        other => panic!("expected a compacted error, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "the stream ends after it");

    // From the compaction point on, the history is there.
    let mut stream = client
        .watch(WatchOptions::key("compact/k").from_revision(revision))
        .await
        .expect("watch");
    let batch = within(Duration::from_secs(10), "event", stream.next())
        .await
        .expect("event")
        .expect("no error");
    assert_eq!(batch.revision, revision);
    assert_eq!(batch.events[0].kv.value_str(), Some("last"));
}
