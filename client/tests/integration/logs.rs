//! Log ingest and search.

use std::time::Duration;

use shoal_client::{BatcherOptions, LogRecord, SearchQuery};

use crate::common::{client_for, dev_node, eventually};

#[tokio::test]
async fn ingested_records_are_found_by_search() {
    let node = dev_node().await;
    let client = client_for([&node]);
    let token = format!("tok{:08x}", rand_token());
    let answer = client
        .ingest(
            "orders-service",
            &[
                LogRecord::new(format!("payment failed {token}"))
                    .level("error")
                    .service("orders")
                    .attr("user", "alice"),
                LogRecord::new("order 43 placed").level("info"),
            ],
        )
        .await
        .expect("ingest");
    assert_eq!((answer.accepted, answer.rejected), (2, 0));

    let hits = eventually(Duration::from_secs(15), "the record is searchable", || {
        let client = client.clone();
        let query = SearchQuery::new(token.clone())
            .stream("orders-service")
            .since("1h");
        async move {
            let found = client.search_logs(&query).await.expect("search");
            (!found.hits.is_empty()).then_some(found)
        }
    })
    .await;
    assert_eq!(hits.count, 1);
    let hit = &hits.hits[0];
    assert_eq!(hit.level, "error");
    assert_eq!(hit.service, "orders");
    assert_eq!(hit.attributes["user"], "alice");
    assert!(!hits.partial);

    // A bad record is refused on its own; the rest are kept.
    let answer = client
        .ingest_raw(
            "orders-service",
            b"{\"message\":\"ok\"}\nnot json\n".to_vec(),
            "application/x-ndjson",
        )
        .await
        .expect("ingest");
    assert_eq!((answer.accepted, answer.rejected), (1, 1));
    assert_eq!(answer.errors[0].index, 1);
}

#[tokio::test]
async fn the_batcher_sends_everything_it_was_given() {
    let node = dev_node().await;
    let client = client_for([&node]);
    let batcher = client.log_batcher(
        "batched",
        BatcherOptions {
            max_records: 40,
            max_delay: Duration::from_millis(200),
            ..BatcherOptions::default()
        },
    );
    for i in 0..100 {
        batcher
            .send(LogRecord::new(format!("record {i}")))
            .await
            .expect("send");
    }
    batcher.flush().await.expect("flush");
    let stats = batcher.close().await.expect("close");
    assert_eq!((stats.accepted, stats.rejected, stats.failed), (100, 0, 0));
}

fn rand_token() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    hasher.finish() as u32
}
