//! Key/value operations.

use shoal_client::{
    Compare, CompareOp, DeleteOptions, EventType, HistoryOptions, ListOptions, PutOptions, Txn,
    TxnOp, TxnOpResult,
};

use crate::common::{client_for, dev_node};

#[tokio::test]
async fn kv_roundtrip_list_history_and_cas() {
    let node = dev_node().await;
    let client = client_for([&node]);

    assert_eq!(client.get("app/missing").await.expect("get"), None);

    let first = client
        .put("app/url", "https://pay.internal")
        .await
        .expect("put");
    assert_eq!(first.kv.version, 1);
    assert!(first.prev_kv.is_none());
    let kv = client
        .get("app/url")
        .await
        .expect("get")
        .expect("key exists");
    assert_eq!(kv.value_str(), Some("https://pay.internal"));
    assert_eq!(kv.mod_revision, first.revision);

    // Keys with spaces and non-ASCII survive the URL path.
    client
        .put("app/a key/ü", vec![0u8, 1, 2])
        .await
        .expect("put odd key");
    let odd = client
        .get("app/a key/ü")
        .await
        .expect("get")
        .expect("odd key");
    assert_eq!(odd.value, vec![0u8, 1, 2]);

    // Compare-and-set: the wrong revision fails and says what is there.
    let stale = PutOptions {
        if_revision: Some(first.revision + 100),
        ..PutOptions::default()
    };
    let error = client
        .put_with("app/url", "x", &stale)
        .await
        .expect_err("compare must fail");
    assert!(error.is_compare_failed(), "{error}");
    assert_eq!(error.status(), Some(409));
    assert_eq!(
        error.current_kv().map(|kv| kv.mod_revision),
        Some(first.revision)
    );
    let right = PutOptions {
        if_revision: Some(first.revision),
        ..PutOptions::default()
    };
    let second = client
        .put_with("app/url", "https://pay2.internal", &right)
        .await
        .expect("CAS put");
    assert_eq!(
        second.prev_kv.map(|kv| kv.mod_revision),
        Some(first.revision)
    );

    // Pagination over 5 keys, 2 per page.
    for i in 0..5 {
        client
            .put(&format!("page/{i}"), format!("v{i}"))
            .await
            .expect("put");
    }
    let mut options = ListOptions {
        limit: Some(2),
        ..ListOptions::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = client.list("page/", &options).await.expect("list");
        seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        match page.next_after {
            Some(after) if page.more => options.after = Some(after),
            _ => break,
        }
    }
    assert_eq!(seen, ["page/0", "page/1", "page/2", "page/3", "page/4"]);
    let (_, all) = client.list_all("page/").await.expect("list all");
    assert_eq!(all.len(), 5);
    assert_eq!(all[4].value_str(), Some("v4"));

    let history = client
        .history("app/url", &HistoryOptions::default())
        .await
        .expect("history");
    let revisions: Vec<u64> = history.events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revisions, [second.revision, first.revision]);
    assert!(history.events.iter().all(|e| e.kind == EventType::Put));

    let deleted = client.delete_prefix("page/").await.expect("delete prefix");
    assert_eq!(deleted.deleted, 5);
    let deleted = client
        .delete_with("app/url", &DeleteOptions::default())
        .await
        .expect("delete");
    assert_eq!(deleted.deleted, 1);
    assert_eq!(client.get("app/url").await.expect("get"), None);
}

#[tokio::test]
async fn txn_applies_one_branch_atomically() {
    let node = dev_node().await;
    let client = client_for([&node]);

    // Create-if-absent of two keys at once.
    let create = Txn::new()
        .when([Compare::mod_revision("lock/owner", CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put("lock/owner", "alice"),
            TxnOp::put("lock/since", "now"),
        ])
        .or_else([TxnOp::get("lock/owner")]);
    let won = client.txn(&create).await.expect("txn");
    assert!(won.succeeded);
    assert_eq!(won.results.len(), 2);
    assert!(matches!(won.results[0], TxnOpResult::Put { .. }));
    let owner = client.get("lock/owner").await.expect("get").expect("owner");
    let since = client.get("lock/since").await.expect("get").expect("since");
    assert_eq!(owner.mod_revision, since.mod_revision, "one revision");

    // The same transaction now takes the failure branch and reads the owner.
    let lost = client.txn(&create).await.expect("txn");
    assert!(!lost.succeeded);
    match &lost.results[..] {
        [TxnOpResult::Get { kv: Some(kv) }] => assert_eq!(kv.value_str(), Some("alice")),
        other => panic!("unexpected results {other:?}"),
    }

    // Value compare.
    let swap = Txn::new()
        .when([Compare::value("lock/owner", CompareOp::Equal, "alice")])
        .and_then([TxnOp::put("lock/owner", "bob"), TxnOp::delete("lock/since")]);
    assert!(client.txn(&swap).await.expect("txn").succeeded);
    let owner = client.get("lock/owner").await.expect("get").expect("owner");
    assert_eq!(owner.value_str(), Some("bob"));
    assert_eq!(client.get("lock/since").await.expect("get"), None);

    // A refused transaction is a typed API error.
    let bad = Txn::new().and_then([TxnOp::put("", "x")]);
    let error = client.txn(&bad).await.expect_err("empty key");
    assert_eq!(error.code(), Some("invalid_key"), "{error}");
}
