//! Leases and the keeper.

use std::time::Duration;

use shoal_client::{LeaseStatus, PutOptions};

use crate::common::{client_for, dev_node, eventually, within};

#[tokio::test]
async fn keeper_keeps_a_key_alive_and_dropping_it_lets_the_key_expire() {
    let node = dev_node().await;
    let client = client_for([&node]);

    let keeper = client.lease_grant_kept(2).await.expect("grant");
    let options = PutOptions {
        lease: Some(keeper.id()),
        ..PutOptions::default()
    };
    client
        .put_with("svc/api/node-1", "10.0.0.5:8080", &options)
        .await
        .expect("put with lease");

    // Well past the TTL, the key is still there.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(client.get("svc/api/node-1").await.expect("get").is_some());
    assert_eq!(*keeper.status().borrow(), LeaseStatus::Alive);
    let info = client
        .lease_time_to_live(keeper.id())
        .await
        .expect("ttl")
        .expect("lease exists");
    assert_eq!(info.keys, ["svc/api/node-1"]);
    assert!(info.remaining_ms <= 2000);

    // Without renewals the lease expires and takes the key with it.
    let id = keeper.id();
    drop(keeper);
    eventually(
        Duration::from_secs(8),
        "the key expires with its lease",
        || async {
            client
                .get("svc/api/node-1")
                .await
                .expect("get")
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert_eq!(client.lease_time_to_live(id).await.expect("ttl"), None);
}

#[tokio::test]
async fn revoking_deletes_at_once_and_the_keeper_reports_loss() {
    let node = dev_node().await;
    let client = client_for([&node]);

    let keeper = client.lease_grant_kept(30).await.expect("grant");
    let options = PutOptions {
        lease: Some(keeper.id()),
        ..PutOptions::default()
    };
    client.put_with("eph/a", "1", &options).await.expect("put");
    let revoked = keeper.revoke().await.expect("revoke");
    assert_eq!(revoked.deleted, 1);
    assert_eq!(client.get("eph/a").await.expect("get"), None);

    // A keeper whose lease is revoked behind its back reports it lost.
    let keeper = client.lease_grant_kept(3).await.expect("grant");
    client.lease_revoke(keeper.id()).await.expect("revoke");
    let reason = within(Duration::from_secs(5), "keeper reports loss", keeper.lost()).await;
    assert!(reason.contains("lease_not_found"), "{reason}");

    let error = client.lease_keepalive(keeper.id()).await.expect_err("gone");
    assert!(error.is_not_found(), "{error}");
}
