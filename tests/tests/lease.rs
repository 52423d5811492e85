//! Leases: grant, attach, expiry, keepalive, revoke.

use std::time::{Duration, Instant};

use shoal_tests::*;

const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);

async fn lease_info(node: &Node, lease: u64) -> Reply {
    node.get_path(&format!("/v1/leases/{lease}")).await
}

fn sorted_keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of keys: {value}"))
        .iter()
        .map(|k| k.as_str().expect("key string").to_string())
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_attach_and_inspect() {
    let node = Node::start().await;
    let body = node
        .post_json("/v1/leases", &json!({"ttl_seconds": 30}))
        .await
        .ok();
    let lease = num(&body, "/id");
    assert!(
        lease > 0,
        "lease ids are non-zero (0 means no lease): {body}"
    );
    assert_eq!(num(&body, "/ttl_seconds"), 30);

    let info = lease_info(&node, lease).await.ok();
    assert_eq!(num(&info, "/id"), lease);
    assert_eq!(num(&info, "/ttl_seconds"), 30);
    let remaining = num(&info, "/remaining_ms");
    assert!(
        remaining > 0 && remaining <= 30_000,
        "remaining_ms {remaining}"
    );
    assert_eq!(sorted_keys(&info["keys"]), Vec::<String>::new());

    let id = lease.to_string();
    let put = node
        .put_with("svc/a", b"10.0.0.1", &[("lease", &id)])
        .await
        .ok();
    assert_eq!(num(&put, "/kv/lease"), lease);
    node.put_with("svc/b", b"10.0.0.2", &[("lease", &id)])
        .await
        .ok();
    // A txn put can attach to the lease too.
    let reply = node
        .txn(&json!({"compare": [], "success": [
            {"put": {"key": "svc/c", "value": b64(b"10.0.0.3"), "lease": lease}}
        ], "failure": []}))
        .await;
    assert_eq!(num(&reply.ok(), "/results/0/put/kv/lease"), lease);
    node.put("svc/plain", b"no lease").await;

    assert_eq!(num(&node.get_kv("svc/a").await, "/lease"), lease);
    assert_eq!(num(&node.get_kv("svc/plain").await, "/lease"), 0);

    let info = lease_info(&node, lease).await.ok();
    assert_eq!(sorted_keys(&info["keys"]), vec!["svc/a", "svc/b", "svc/c"]);

    // Re-putting a key without a lease detaches it.
    node.put("svc/b", b"10.0.0.2").await;
    assert_eq!(num(&node.get_kv("svc/b").await, "/lease"), 0);
    let info = lease_info(&node, lease).await.ok();
    assert_eq!(sorted_keys(&info["keys"]), vec!["svc/a", "svc/c"]);

    let other = node.grant_lease(60).await;
    assert_ne!(other, lease);
    let list = node.get_path("/v1/leases").await.ok();
    let leases = list["leases"].as_array().expect("leases array");
    let mut ids: Vec<u64> = leases.iter().map(|l| num(l, "/id")).collect();
    ids.sort();
    let mut expected = vec![lease, other];
    expected.sort();
    assert_eq!(ids, expected);
    for entry in leases {
        let ttl = num(entry, "/ttl_seconds");
        assert!(ttl == 30 || ttl == 60);
        assert!(num(entry, "/remaining_ms") <= ttl * 1000);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_vanish_after_ttl() {
    let node = Node::start().await;
    let granted_at = Instant::now();
    let lease = node.grant_lease(2).await;
    let id = lease.to_string();
    node.put_with("eph/a", b"a", &[("lease", &id)]).await.ok();
    node.put_with("eph/b", b"b", &[("lease", &id)]).await.ok();
    node.put("eph/stays", b"s").await;

    // Present right after the puts (the TTL is 2 s, far more than a request).
    let present = node.list_all("eph/").await.len();
    assert_eq!(present, 3, "keys are present before the lease expires");

    eventually(
        EXPIRY_DEADLINE,
        "leased keys deleted after the TTL",
        || async {
            let keys: Vec<String> = node
                .list_all("eph/")
                .await
                .iter()
                .map(|kv| text(kv, "/key").to_string())
                .collect();
            (keys == vec!["eph/stays"]).then_some(())
        },
    )
    .await;
    // The server started the TTL after we sent the grant, so the keys cannot
    // have gone earlier than 2 s after that (less a little clock slack).
    assert!(
        granted_at.elapsed() >= Duration::from_millis(1900),
        "keys vanished {:?} after the grant, before the 2 s TTL",
        granted_at.elapsed()
    );
    assert_error(&node.get_with("eph/a", &[]).await, 404, "key_not_found");

    eventually(EXPIRY_DEADLINE, "expired lease is gone", || async {
        (lease_info(&node, lease).await.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_error(&lease_info(&node, lease).await, 404, "lease_not_found");
    assert_error(&node.keepalive(lease).await, 404, "lease_not_found");
    let reply = node.put_with("eph/late", b"x", &[("lease", &id)]).await;
    assert_error(&reply, 404, "lease_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_keeps_keys_alive() {
    let node = Node::start().await;
    let lease = node.grant_lease(1).await;
    node.put_with("hb/worker", b"alive", &[("lease", &lease.to_string())])
        .await
        .ok();

    // 3 s of keepalives every 300 ms: three times the TTL.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let body = node.keepalive(lease).await.ok();
        assert_eq!(num(&body, "/id"), lease);
        assert_eq!(num(&body, "/ttl_seconds"), 1);
        let (status, got) = node.get("hb/worker").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "key expired despite keepalives after {:?}: {got}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let kv = node.get_kv("hb/worker").await;
    assert_eq!(kv_value(&kv), b"alive");
    assert_eq!(
        num(&kv, "/version"),
        1,
        "keepalive does not rewrite the key"
    );
    let remaining = num(&lease_info(&node, lease).await.ok(), "/remaining_ms");
    assert!(
        remaining <= 1000,
        "remaining_ms {remaining} exceeds the TTL"
    );

    // Once the keepalives stop, the key goes.
    eventually(
        EXPIRY_DEADLINE,
        "key deleted once keepalives stop",
        || async { (node.get("hb/worker").await.0 == StatusCode::NOT_FOUND).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_deletes_keys() {
    let node = Node::start().await;
    let lease = node.grant_lease(60).await;
    let id = lease.to_string();
    node.put_with("rv/1", b"1", &[("lease", &id)]).await.ok();
    let r = num(
        &node.put_with("rv/2", b"2", &[("lease", &id)]).await.ok(),
        "/revision",
    );
    node.put("rv/3", b"3").await;

    let reply = node
        .send(node.request(Method::DELETE, &format!("/v1/leases/{lease}")))
        .await;
    let body = reply.ok();
    assert_eq!(num(&body, "/deleted"), 2);
    assert_eq!(
        num(&body, "/revision"),
        r + 2,
        "revoke deletes the keys in one revision"
    );

    let keys: Vec<String> = node
        .list_all("rv/")
        .await
        .iter()
        .map(|kv| text(kv, "/key").to_string())
        .collect();
    assert_eq!(keys, vec!["rv/3"]);
    assert_error(&lease_info(&node, lease).await, 404, "lease_not_found");
    assert_error(&node.keepalive(lease).await, 404, "lease_not_found");
    let reply = node
        .send(node.request(Method::DELETE, &format!("/v1/leases/{lease}")))
        .await;
    assert_error(&reply, 404, "lease_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn put_with_unknown_lease_is_rejected() {
    let node = Node::start().await;
    let before = node.revision().await;
    let reply = node
        .put_with("ul/key", b"v", &[("lease", "987654321")])
        .await;
    assert_error(&reply, 404, "lease_not_found");
    let reply = node
        .txn(&json!({"compare": [], "success": [
            {"put": {"key": "ul/txn", "value": b64(b"v"), "lease": 987654321u64}}
        ], "failure": []}))
        .await;
    assert_error(&reply, 404, "lease_not_found");
    assert_eq!(node.get("ul/key").await.0, StatusCode::NOT_FOUND);
    assert_eq!(node.get("ul/txn").await.0, StatusCode::NOT_FOUND);
    assert_eq!(node.revision().await, before);
    assert_error(&node.keepalive(987654321).await, 404, "lease_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_sees_deletes_of_expired_lease_keys() {
    let node = Node::start().await;
    let lease = node.grant_lease(2).await;
    let id = lease.to_string();
    let r1 = num(
        &node.put_with("lw/a", b"a", &[("lease", &id)]).await.ok(),
        "/revision",
    );
    let r2 = num(
        &node.put_with("lw/b", b"b", &[("lease", &id)]).await.ok(),
        "/revision",
    );
    assert_eq!(r2, r1 + 1);

    let from = r1.to_string();
    let mut watch = node
        .watch(&[("prefix", "lw/"), ("from_revision", &from)], None)
        .await;
    let batches = watch.events_through(r2, Duration::from_secs(5)).await;
    assert_eq!(
        changes(&batches),
        vec![Change::put(r1, "lw/a", b"a"), Change::put(r2, "lw/b", b"b")]
    );

    // The expiry: one revision deleting both keys.
    let (rev, batch) = watch.next_event(EXPIRY_DEADLINE).await;
    assert_eq!(rev, r2 + 1, "expiry is the next revision: {batch}");
    let mut got = changes(&[batch]);
    got.sort();
    assert_eq!(
        got,
        vec![Change::delete(rev, "lw/a"), Change::delete(rev, "lw/b")]
    );
    assert_eq!(node.revision().await, rev);
}
