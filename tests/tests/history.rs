//! Per-key history and rollback.

use shoal_tests::*;

/// `(type, mod_revision, value)` of each history entry.
fn entries(body: &Value) -> Vec<(String, u64, Option<Vec<u8>>)> {
    body["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history array: {body}"))
        .iter()
        .map(|entry| {
            let kind = text(entry, "/type").to_string();
            let value = (kind == "put").then(|| kv_value(&entry["kv"]));
            (kind, num(entry, "/kv/mod_revision"), value)
        })
        .collect()
}

fn put(rev: u64, value: &[u8]) -> (String, u64, Option<Vec<u8>>) {
    ("put".to_string(), rev, Some(value.to_vec()))
}

fn del(rev: u64) -> (String, u64, Option<Vec<u8>>) {
    ("delete".to_string(), rev, None)
}

#[tokio::test(flavor = "multi_thread")]
async fn history_is_newest_first_and_includes_deletes() {
    let node = Node::start().await;
    let key = "h/key";
    let r1 = node.put_rev(key, b"v1").await;
    node.put("h/key/child", b"not this key").await;
    let r2 = node.put_rev(key, b"v2").await;
    node.put("h/ke", b"nor this").await;
    let r3 = num(&node.delete(key).await, "/revision");
    let r4 = node.put_rev(key, b"v3").await;
    node.put("h/other", b"x").await;

    let current = node.revision().await;
    let body = node.get_path("/v1/history/h/key").await.ok();
    assert_eq!(text(&body, "/key"), key);
    assert_eq!(num(&body, "/revision"), current);
    assert_eq!(
        num(&body, "/compact_revision"),
        0,
        "nothing compacted: {body}"
    );
    assert_eq!(
        entries(&body),
        vec![put(r4, b"v3"), del(r3), put(r2, b"v2"), put(r1, b"v1")]
    );
    let history = body["history"].as_array().expect("history");
    for entry in history {
        assert_eq!(text(entry, "/kv/key"), key);
    }
    // Metadata as of each write.
    assert_eq!(
        num(&history[0], "/kv/version"),
        1,
        "re-created key starts at version 1"
    );
    assert_eq!(num(&history[0], "/kv/create_revision"), r4);
    assert_eq!(num(&history[2], "/kv/version"), 2);
    assert_eq!(num(&history[2], "/kv/create_revision"), r1);
    assert_eq!(num(&history[3], "/kv/version"), 1);

    // A key whose last change is a delete still has a history.
    node.put("h/deleted", b"was here").await;
    let rd = num(&node.delete("h/deleted").await, "/revision");
    let body = node.get_path("/v1/history/h/deleted").await.ok();
    let got = entries(&body);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], del(rd));
    assert_eq!(got[1].2.as_deref(), Some(&b"was here"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn history_limit_and_before() {
    let node = Node::start().await;
    let mut revs = Vec::new();
    for i in 1..=6 {
        revs.push(node.put_rev("hl", format!("v{i}").as_bytes()).await);
    }

    let body = node.get_path("/v1/history/hl?limit=2").await.ok();
    assert_eq!(
        entries(&body),
        vec![put(revs[5], b"v6"), put(revs[4], b"v5")]
    );

    let path = format!("/v1/history/hl?before={}", revs[2]);
    let body = node.get_path(&path).await.ok();
    assert_eq!(
        entries(&body),
        vec![put(revs[1], b"v2"), put(revs[0], b"v1")]
    );

    let path = format!("/v1/history/hl?before={}&limit=1", revs[4]);
    let body = node.get_path(&path).await.ok();
    assert_eq!(entries(&body), vec![put(revs[3], b"v4")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_writes_the_old_value_as_a_new_revision() {
    let node = Node::start().await;
    let key = "rb/key";
    let r1 = node.put_rev(key, b"good").await;
    let r2 = node.put_rev(key, b"better").await;
    let unrelated = node.put_rev("rb/unrelated", b"x").await;
    let r3 = node.put_rev(key, b"broken").await;

    let reply = node
        .post_json("/v1/rollback/rb/key", &json!({"revision": r1}))
        .await;
    let body = reply.ok();
    let r4 = num(&body, "/revision");
    assert_eq!(r4, r3 + 1, "a rollback is a new write");
    assert_eq!(num(&body, "/kv/mod_revision"), r4);
    assert_eq!(num(&body, "/kv/create_revision"), r1);
    assert_eq!(num(&body, "/kv/version"), 4);

    let kv = node.get_kv(key).await;
    assert_eq!(kv_value(&kv), b"good");
    assert_eq!(num(&kv, "/mod_revision"), r4);

    // The value "at revision R" is the latest write at or before R.
    let body = node
        .post_json("/v1/rollback/rb/key", &json!({"revision": unrelated}))
        .await
        .ok();
    let r5 = num(&body, "/revision");
    assert_eq!(kv_value(&node.get_kv(key).await), b"better");

    let history = node.get_path("/v1/history/rb/key").await.ok();
    assert_eq!(
        entries(&history),
        vec![
            put(r5, b"better"),
            put(r4, b"good"),
            put(r3, b"broken"),
            put(r2, b"better"),
            put(r1, b"good"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_to_before_the_key_existed_deletes_it() {
    let node = Node::start().await;
    let before = node.put_rev("rbd/other", b"x").await;
    node.put("rbd/key", b"new").await;
    let reply = node
        .post_json("/v1/rollback/rbd/key", &json!({"revision": before}))
        .await;
    let body = reply.ok();
    assert_eq!(num(&body, "/revision"), before + 2);
    assert_eq!(node.get("rbd/key").await.0, StatusCode::NOT_FOUND);
    let history = node.get_path("/v1/history/rbd/key").await.ok();
    assert_eq!(entries(&history)[0], del(before + 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_a_deleted_key() {
    let node = Node::start().await;
    let r1 = node.put_rev("undo/key", b"precious").await;
    let rd = num(&node.delete("undo/key").await, "/revision");
    assert_eq!(node.get("undo/key").await.0, StatusCode::NOT_FOUND);

    let body = node
        .post_json("/v1/rollback/undo/key", &json!({"revision": r1}))
        .await
        .ok();
    let r = num(&body, "/revision");
    assert_eq!(r, rd + 1);
    assert_eq!(
        num(&body, "/kv/create_revision"),
        r,
        "a restored key starts a new life"
    );
    assert_eq!(num(&body, "/kv/version"), 1);
    let kv = node.get_kv("undo/key").await;
    assert_eq!(kv_value(&kv), b"precious");
    assert_eq!(num(&kv, "/mod_revision"), r);
}

#[tokio::test(flavor = "multi_thread")]
async fn rolled_back_key_has_no_lease() {
    let node = Node::start().await;
    let r1 = node.put_rev("rbl/key", b"plain").await;
    let lease = node.grant_lease(60).await;
    node.put_with(
        "rbl/key",
        b"leased",
        &[("lease", lease.to_string().as_str())],
    )
    .await
    .ok();
    assert_eq!(num(&node.get_kv("rbl/key").await, "/lease"), lease);

    let body = node
        .post_json("/v1/rollback/rbl/key", &json!({"revision": r1}))
        .await
        .ok();
    assert_eq!(num(&body, "/kv/lease"), 0, "{body}");
    let kv = node.get_kv("rbl/key").await;
    assert_eq!(kv_value(&kv), b"plain");
    assert_eq!(num(&kv, "/lease"), 0);
    let info = node.get_path(&format!("/v1/leases/{lease}")).await.ok();
    assert_eq!(info["keys"], json!([]), "the key left the lease: {info}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_to_a_future_revision_is_invalid() {
    let node = Node::start().await;
    let rev = node.put_rev("fut", b"v").await;
    let reply = node
        .post_json("/v1/rollback/fut", &json!({"revision": rev + 100}))
        .await;
    assert_error(&reply, 400, "invalid_revision");
    let reply = node
        .post_json("/v1/rollback/fut", &json!({"revision": -1}))
        .await;
    assert!(
        error_matches(&reply, &[(400, &["invalid_revision", "bad_request"])]).is_ok(),
        "negative rollback revision: {}",
        reply.describe()
    );
    assert_eq!(kv_value(&node.get_kv("fut").await), b"v");
    assert_eq!(node.revision().await, rev);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_key_has_no_history() {
    let node = Node::start().await;
    node.put("known", b"v").await;
    let reply = node.get_path("/v1/history/unknown").await;
    assert_error(&reply, 404, "key_not_found");
    let reply = node.get_path("/v1/history/know").await;
    assert_error(&reply, 404, "key_not_found");
    let reply = node
        .post_json("/v1/rollback/unknown", &json!({"revision": 1}))
        .await;
    assert_error(&reply, 404, "key_not_found");
}
