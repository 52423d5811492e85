//! The typed configuration helper.

use std::time::Duration;

use serde::Deserialize;

use crate::common::{client_for, dev_node, within};

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Payments {
    url: String,
    timeout_ms: u64,
    #[serde(default)]
    retries: u32,
    db: Db,
    #[serde(default)]
    regions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Db {
    pool: u32,
}

#[tokio::test]
async fn config_reads_a_prefix_and_follows_changes() {
    let node = dev_node().await;
    let client = client_for([&node]);
    client
        .put("prod/payments/url", "https://pay.internal:8443")
        .await
        .expect("put");
    client
        .put("prod/payments/timeout_ms", "2500")
        .await
        .expect("put");
    client.put("prod/payments/db/pool", "8").await.expect("put");
    client.put("prod/other", "not ours").await.expect("put");

    let mut config = client
        .config::<Payments>("prod/payments/")
        .await
        .expect("read the configuration");
    assert_eq!(
        *config.get(),
        Payments {
            url: "https://pay.internal:8443".into(),
            timeout_ms: 2500,
            retries: 0,
            db: Db { pool: 8 },
            regions: vec![],
        }
    );
    let mut subscriber = config.subscribe();

    // A put yields a new value, to the handle and to every receiver.
    let put = client
        .put("prod/payments/timeout_ms", "3000")
        .await
        .expect("put");
    let value = within(Duration::from_secs(10), "new value", config.changed())
        .await
        .expect("changed")
        .clone();
    assert_eq!(value.timeout_ms, 3000);
    assert_eq!(config.revision(), put.revision);
    within(
        Duration::from_secs(10),
        "receiver sees it",
        subscriber.changed(),
    )
    .await
    .expect("receiver");
    assert_eq!(subscriber.borrow().timeout_ms, 3000);

    // JSON values and a transaction changing two keys at once: one new value.
    let txn = shoal_client::Txn::new().and_then([
        shoal_client::TxnOp::put("prod/payments/regions", r#"["eu","us"]"#),
        shoal_client::TxnOp::put("prod/payments/retries", "3"),
    ]);
    client.txn(&txn).await.expect("txn");
    let value = within(Duration::from_secs(10), "new value", config.changed())
        .await
        .expect("changed")
        .clone();
    assert_eq!((value.retries, value.regions.len()), (3, 2));

    // A change that does not fit the type is not applied and is reported.
    client
        .put("prod/payments/db/pool", "many")
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(config.get().db.pool, 8);
    assert!(config.last_error().is_some());
    client
        .put("prod/payments/db/pool", "16")
        .await
        .expect("put");
    let value = within(Duration::from_secs(10), "fixed value", config.changed())
        .await
        .expect("changed")
        .clone();
    assert_eq!(value.db.pool, 16);
    assert_eq!(config.last_error(), None);

    // Deleting a key with a default returns to the default.
    client
        .delete("prod/payments/retries")
        .await
        .expect("delete");
    let value = within(Duration::from_secs(10), "default again", config.changed())
        .await
        .expect("changed")
        .clone();
    assert_eq!(value.retries, 0);
}
