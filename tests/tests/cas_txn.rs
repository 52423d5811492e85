//! Compare-and-set writes and transactions.

use shoal_tests::*;

/// The `current` detail of a `compare_failed` error.
fn current(body: &Value) -> &Value {
    error_detail(body, "current")
        .unwrap_or_else(|| panic!("compare_failed without `current`: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn if_revision_zero_is_create_only() {
    let node = Node::start().await;

    let reply = node
        .put_with("cfg/leader", b"node-a", &[("if_revision", "0")])
        .await;
    let body = reply.ok();
    let r1 = num(&body, "/revision");
    assert_eq!(num(&body, "/kv/create_revision"), r1);
    assert_eq!(num(&body, "/kv/version"), 1);

    let reply = node
        .put_with("cfg/leader", b"node-b", &[("if_revision", "0")])
        .await;
    let body = assert_error(&reply, 409, "compare_failed");
    let current = current(&body);
    assert_eq!(text(current, "/key"), "cfg/leader");
    assert_eq!(num(current, "/mod_revision"), r1);
    assert_eq!(num(current, "/create_revision"), r1);
    assert_eq!(num(current, "/version"), 1);

    // The failed create changed nothing.
    assert_eq!(kv_value(&node.get_kv("cfg/leader").await), b"node-a");
    assert_eq!(node.revision().await, r1);

    // After a delete, create-only succeeds again.
    node.delete("cfg/leader").await;
    let reply = node
        .put_with("cfg/leader", b"node-c", &[("if_revision", "0")])
        .await;
    assert_eq!(num(&reply.ok(), "/revision"), r1 + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_with_current_and_stale_mod_revision() {
    let node = Node::start().await;
    let r1 = node.put_rev("cas/key", b"v1").await;

    let r1s = r1.to_string();
    let reply = node
        .put_with("cas/key", b"v2", &[("if_revision", &r1s)])
        .await;
    let body = reply.ok();
    let r2 = num(&body, "/revision");
    assert_eq!(r2, r1 + 1);
    assert_eq!(num(&body, "/kv/version"), 2);
    assert_eq!(num(&body, "/prev_kv/mod_revision"), r1);

    // r1 is stale now.
    let reply = node
        .put_with("cas/key", b"v3", &[("if_revision", &r1s)])
        .await;
    let body = assert_error(&reply, 409, "compare_failed");
    assert_eq!(num(current(&body), "/mod_revision"), r2);
    assert_eq!(num(current(&body), "/version"), 2);
    assert_eq!(kv_value(&node.get_kv("cas/key").await), b"v2");
    assert_eq!(node.revision().await, r2);

    // A compare on a key that does not exist: `current` is null.
    let reply = node
        .put_with("cas/missing", b"x", &[("if_revision", "5")])
        .await;
    let body = assert_error(&reply, 409, "compare_failed");
    assert!(
        current(&body).is_null(),
        "current of a missing key is null: {body}"
    );
    assert_eq!(node.get("cas/missing").await.0, StatusCode::NOT_FOUND);
    assert_eq!(node.revision().await, r2);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_with_if_revision() {
    let node = Node::start().await;
    let r1 = node.put_rev("del/key", b"v1").await;
    let r2 = node.put_rev("del/key", b"v2").await;

    let stale = r1.to_string();
    let reply = node
        .delete_with("del/key", &[("if_revision", &stale)])
        .await;
    let body = assert_error(&reply, 409, "compare_failed");
    assert_eq!(num(current(&body), "/mod_revision"), r2);
    assert_eq!(kv_value(&node.get_kv("del/key").await), b"v2");
    assert_eq!(node.revision().await, r2);

    let fresh = r2.to_string();
    let reply = node
        .delete_with("del/key", &[("if_revision", &fresh)])
        .await;
    let body = reply.ok();
    assert_eq!(num(&body, "/deleted"), 1);
    assert_eq!(num(&body, "/revision"), r2 + 1);
    assert_eq!(node.get("del/key").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_success_branch_runs_every_op_kind() {
    let node = Node::start().await;
    let ra = node.put_rev("t/a", b"1").await;
    node.put("t/b", b"to delete").await;
    node.put("t/c", b"read me").await;
    node.put("t/p/1", b"x").await;
    let rp2 = node.put_rev("t/p/2", b"y").await;

    let reply = node
        .txn(&json!({
            "compare": [{"key": "t/a", "target": "mod_revision", "op": "=", "value": ra}],
            "success": [
                {"put": {"key": "t/a", "value": b64(b"2"), "lease": 0}},
                {"delete": {"key": "t/b", "prefix": false}},
                {"get": {"key": "t/c"}},
                {"delete": {"key": "t/p/", "prefix": true}},
                {"get": {"key": "t/missing"}},
                {"put": {"key": "t/new", "value": b64(b"\x00\xff")}}
            ],
            "failure": [{"get": {"key": "t/a"}}]
        }))
        .await;
    let body = reply.ok();
    assert_eq!(body["succeeded"], json!(true), "{body}");
    let rev = num(&body, "/revision");
    assert_eq!(rev, rp2 + 1, "the whole transaction is one revision");

    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 6, "one result per operation: {body}");
    assert_eq!(text(&results[0], "/put/kv/key"), "t/a");
    assert_eq!(num(&results[0], "/put/kv/mod_revision"), rev);
    assert_eq!(num(&results[0], "/put/kv/version"), 2);
    assert_eq!(num(&results[1], "/delete/deleted"), 1);
    assert_eq!(kv_value(&results[2]["get"]["kv"]), b"read me");
    assert_eq!(text(&results[2], "/get/kv/key"), "t/c");
    assert_eq!(num(&results[3], "/delete/deleted"), 2);
    assert!(
        results[4]["get"]["kv"].is_null(),
        "get of a missing key: {body}"
    );
    assert_eq!(num(&results[5], "/put/kv/create_revision"), rev);

    assert_eq!(kv_value(&node.get_kv("t/a").await), b"2");
    assert_eq!(node.get("t/b").await.0, StatusCode::NOT_FOUND);
    assert_eq!(kv_value(&node.get_kv("t/new").await), b"\x00\xff");
    assert!(node.list_all("t/p/").await.is_empty());
    assert_eq!(node.revision().await, rev);
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_failure_branch_runs_when_a_compare_fails() {
    let node = Node::start().await;
    let ra = node.put_rev("f/a", b"old").await;
    node.put("f/a", b"newer").await;
    let r = node.put_rev("f/keep", b"keep").await;

    let reply = node
        .txn(&json!({
            "compare": [
                {"key": "f/keep", "target": "version", "op": "=", "value": 1},
                {"key": "f/a", "target": "mod_revision", "op": "=", "value": ra}
            ],
            "success": [{"put": {"key": "f/a", "value": b64(b"from success")}}],
            "failure": [
                {"get": {"key": "f/a"}},
                {"put": {"key": "f/conflicts", "value": b64(b"1")}}
            ]
        }))
        .await;
    let body = reply.ok();
    assert_eq!(body["succeeded"], json!(false), "{body}");
    assert_eq!(num(&body, "/revision"), r + 1);
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(kv_value(&results[0]["get"]["kv"]), b"newer");
    assert_eq!(num(&results[0], "/get/kv/version"), 2);
    assert_eq!(num(&results[1], "/put/kv/mod_revision"), r + 1);

    assert_eq!(kv_value(&node.get_kv("f/a").await), b"newer");
    assert_eq!(kv_value(&node.get_kv("f/conflicts").await), b"1");
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_compare_targets_and_operators() {
    let node = Node::start().await;
    // k: created at c, modified at m, version 3, value "abc".
    let c = node.put_rev("cmp/k", b"first").await;
    node.put("cmp/k", b"second").await;
    node.put("cmp/other", b"o").await;
    let m = node.put_rev("cmp/k", b"abc").await;
    assert!(m > c + 1);

    let cases: Vec<(Value, bool)> = vec![
        (
            json!({"key": "cmp/k", "target": "mod_revision", "op": "=", "value": m}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "mod_revision", "op": "=", "value": c}),
            false,
        ),
        (
            json!({"key": "cmp/k", "target": "mod_revision", "op": "!=", "value": c}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "mod_revision", "op": "!=", "value": m}),
            false,
        ),
        (
            json!({"key": "cmp/k", "target": "mod_revision", "op": "<", "value": m + 1}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "mod_revision", "op": "<", "value": m}),
            false,
        ),
        (
            json!({"key": "cmp/k", "target": "mod_revision", "op": ">", "value": m - 1}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "mod_revision", "op": ">", "value": m}),
            false,
        ),
        (
            json!({"key": "cmp/k", "target": "create_revision", "op": "=", "value": c}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "create_revision", "op": "=", "value": m}),
            false,
        ),
        (
            json!({"key": "cmp/k", "target": "create_revision", "op": "<", "value": m}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "create_revision", "op": ">", "value": c}),
            false,
        ),
        (
            json!({"key": "cmp/k", "target": "version", "op": "=", "value": 3}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "version", "op": "!=", "value": 3}),
            false,
        ),
        (
            json!({"key": "cmp/k", "target": "version", "op": ">", "value": 2}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "version", "op": "<", "value": 3}),
            false,
        ),
        (
            json!({"key": "cmp/k", "target": "value", "op": "=", "value": b64(b"abc")}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "value", "op": "=", "value": b64(b"abd")}),
            false,
        ),
        (
            json!({"key": "cmp/k", "target": "value", "op": "!=", "value": b64(b"first")}),
            true,
        ),
        (
            json!({"key": "cmp/k", "target": "value", "op": "!=", "value": b64(b"abc")}),
            false,
        ),
        // A missing key has 0 for every revision target.
        (
            json!({"key": "cmp/none", "target": "mod_revision", "op": "=", "value": 0}),
            true,
        ),
        (
            json!({"key": "cmp/none", "target": "create_revision", "op": "=", "value": 0}),
            true,
        ),
        (
            json!({"key": "cmp/none", "target": "version", "op": "=", "value": 0}),
            true,
        ),
        (
            json!({"key": "cmp/none", "target": "version", "op": ">", "value": 0}),
            false,
        ),
        (
            json!({"key": "cmp/none", "target": "mod_revision", "op": "<", "value": 1}),
            true,
        ),
    ];

    let before = node.revision().await;
    for (compare, holds) in &cases {
        let reply = node
            .txn(&json!({
                "compare": [compare],
                "success": [{"get": {"key": "cmp/k"}}],
                "failure": []
            }))
            .await;
        let body = reply.ok();
        assert_eq!(
            body["succeeded"],
            json!(holds),
            "compare {compare} should be {holds}: {body}"
        );
        if *holds {
            assert_eq!(kv_value(&body["results"][0]["get"]["kv"]), b"abc");
        } else {
            assert_eq!(body["results"], json!([]), "empty failure branch: {body}");
        }
    }
    // Read-only transactions create no revision.
    assert_eq!(node.revision().await, before);

    // All compares must hold: every true compare plus one false one fails.
    let all_true: Vec<Value> = cases
        .iter()
        .filter(|(_, h)| *h)
        .map(|(c, _)| c.clone())
        .collect();
    let reply = node
        .txn(&json!({"compare": all_true, "success": [{"get": {"key": "cmp/k"}}], "failure": []}))
        .await;
    assert_eq!(reply.ok()["succeeded"], json!(true));
    let mut one_false = all_true.clone();
    one_false.push(cases[1].0.clone());
    let reply = node
        .txn(&json!({"compare": one_false, "success": [{"get": {"key": "cmp/k"}}], "failure": []}))
        .await;
    assert_eq!(reply.ok()["succeeded"], json!(false));

    // No compares at all: success.
    let reply = node
        .txn(&json!({"compare": [], "success": [], "failure": [{"put": {"key": "cmp/x", "value": ""}}]}))
        .await;
    assert_eq!(reply.ok()["succeeded"], json!(true));
    assert_eq!(node.get("cmp/x").await.0, StatusCode::NOT_FOUND);
    assert_eq!(node.revision().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_txn_writes_nothing() {
    let node = Node::start().await;
    let r = node.put_rev("atom/guard", b"g").await;

    let reply = node
        .txn(&json!({
            "compare": [{"key": "atom/guard", "target": "value", "op": "=", "value": b64(b"not g")}],
            "success": [
                {"put": {"key": "atom/1", "value": b64(b"1")}},
                {"put": {"key": "atom/2", "value": b64(b"2")}},
                {"delete": {"key": "atom/guard"}}
            ],
            "failure": []
        }))
        .await;
    let body = reply.ok();
    assert_eq!(body["succeeded"], json!(false));
    assert_eq!(num(&body, "/revision"), r);
    assert_eq!(node.revision().await, r);
    let keys: Vec<String> = node
        .list_all("atom/")
        .await
        .iter()
        .map(|kv| text(kv, "/key").to_string())
        .collect();
    assert_eq!(keys, vec!["atom/guard"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_put_txn_is_one_revision() {
    let node = Node::start().await;
    node.put("multi/old", b"old").await;
    let before = node.revision().await;

    let puts: Vec<Value> = (0..5)
        .map(|i| json!({"put": {"key": format!("multi/{i}"), "value": b64(format!("v{i}").as_bytes())}}))
        .chain(std::iter::once(json!({"delete": {"key": "multi/old"}})))
        .collect();
    let reply = node
        .txn(&json!({"compare": [], "success": puts, "failure": []}))
        .await;
    let body = reply.ok();
    assert_eq!(body["succeeded"], json!(true));
    let rev = num(&body, "/revision");
    assert_eq!(rev, before + 1);
    assert_eq!(node.revision().await, before + 1);

    let kvs = node.list_all("multi/").await;
    assert_eq!(kvs.len(), 5, "{kvs:?}");
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(text(kv, "/key"), format!("multi/{i}"));
        assert_eq!(kv_value(kv), format!("v{i}").as_bytes());
        assert_eq!(num(kv, "/mod_revision"), rev);
        assert_eq!(num(kv, "/create_revision"), rev);
        assert_eq!(num(kv, "/version"), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_limits_at_the_boundary_are_accepted() {
    let node = Node::start().await;
    let compares: Vec<Value> = (0..128)
        .map(|i| json!({"key": format!("lim/{i}"), "target": "version", "op": "=", "value": 0}))
        .collect();
    let puts: Vec<Value> = (0..128)
        .map(|i| json!({"put": {"key": format!("lim/{i}"), "value": b64(b"x")}}))
        .collect();
    let reply = node
        .txn(&json!({"compare": compares, "success": puts, "failure": []}))
        .await;
    let body = reply.ok();
    assert_eq!(body["succeeded"], json!(true));
    assert_eq!(body["results"].as_array().map(Vec::len), Some(128));
    assert_eq!(node.list_all("lim/").await.len(), 128);
}
