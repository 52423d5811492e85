//! Key/value basics: put, get, delete, metadata, revisions and listing.

use std::time::Duration;

use shoal_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn put_get_delete_round_trip() {
    let node = Node::start().await;

    let put = node.put("greeting", b"hello").await;
    let rev = num(&put, "/revision");
    assert!(rev >= 1, "first revision must be positive: {put}");
    assert_eq!(text(&put, "/kv/key"), "greeting");
    assert_eq!(num(&put, "/kv/create_revision"), rev);
    assert_eq!(num(&put, "/kv/mod_revision"), rev);
    assert_eq!(num(&put, "/kv/version"), 1);
    assert_eq!(num(&put, "/kv/lease"), 0);
    assert!(
        put["kv"].get("value").is_none_or(Value::is_null),
        "a put reply's kv has no value: {put}"
    );
    assert!(put["prev_kv"].is_null(), "first put has no prev_kv: {put}");

    let (status, got) = node.get("greeting").await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(num(&got, "/revision"), rev);
    assert_eq!(text(&got, "/kv/key"), "greeting");
    assert_eq!(kv_value(&got["kv"]), b"hello");
    assert_eq!(num(&got, "/kv/mod_revision"), rev);

    let second = node.put("greeting", b"bonjour").await;
    assert_eq!(num(&second, "/revision"), rev + 1);
    assert_eq!(num(&second, "/prev_kv/mod_revision"), rev, "{second}");
    assert_eq!(num(&second, "/prev_kv/version"), 1, "{second}");
    if let Some(prev_value) = second["prev_kv"].get("value").and_then(Value::as_str) {
        assert_eq!(unb64(prev_value), b"hello", "prev_kv carries the old value");
    }
    assert_eq!(kv_value(&node.get_kv("greeting").await), b"bonjour");

    let deleted = node.delete("greeting").await;
    assert_eq!(num(&deleted, "/deleted"), 1);
    assert_eq!(num(&deleted, "/revision"), rev + 2);

    let reply = node.get_with("greeting", &[]).await;
    assert_error(&reply, 404, "key_not_found");
    let reply = node.get_with("never-written", &[]).await;
    assert_error(&reply, 404, "key_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_values_round_trip() {
    let node = Node::start().await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    node.put("bin/all", &all_bytes).await;
    assert_eq!(kv_value(&node.get_kv("bin/all").await), all_bytes);

    let reversed: Vec<u8> = (0..=255u8).rev().collect();
    node.put("bin/reversed", &reversed).await;
    assert_eq!(kv_value(&node.get_kv("bin/reversed").await), reversed);

    // Not valid UTF-8, and NUL bytes in the middle.
    let invalid_utf8 = b"\xff\xfe\x00\x00\xc3\x28\x00end".to_vec();
    node.put("bin/invalid-utf8", &invalid_utf8).await;
    assert_eq!(
        kv_value(&node.get_kv("bin/invalid-utf8").await),
        invalid_utf8
    );

    // The empty value is a value, not a missing key.
    node.put("bin/empty", b"").await;
    let kv = node.get_kv("bin/empty").await;
    assert_eq!(kv_value(&kv), b"");
    assert_eq!(num(&kv, "/version"), 1);

    // Listing returns the same bytes.
    let listed = node.list_all("bin/").await;
    let values: Vec<(String, Vec<u8>)> = listed
        .iter()
        .map(|kv| (text(kv, "/key").to_string(), kv_value(kv)))
        .collect();
    assert_eq!(
        values,
        vec![
            ("bin/all".to_string(), all_bytes),
            ("bin/empty".to_string(), Vec::new()),
            ("bin/invalid-utf8".to_string(), invalid_utf8),
            ("bin/reversed".to_string(), reversed),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_mib_value_round_trips() {
    let node = Node::start().await;
    // A pseudo-random 1 MiB value: exactly the default limit, so accepted.
    let mut state: u32 = 0x1234_5678;
    let value: Vec<u8> = (0..1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    let put = node.put("big", &value).await;
    let got = node.get_kv("big").await;
    assert_eq!(num(&got, "/mod_revision"), num(&put, "/revision"));
    let got_value = kv_value(&got);
    assert_eq!(got_value.len(), value.len());
    assert!(got_value == value, "the 1 MiB value came back different");
}

#[tokio::test(flavor = "multi_thread")]
async fn revisions_increase_by_one_per_write() {
    let node = Node::start().await;
    let start = node.revision().await;

    let mut expected = start;
    for i in 0..20u64 {
        let key = format!("rev/{}", i % 4);
        let reply = if i % 5 == 4 {
            node.delete_with(&key, &[]).await
        } else {
            node.put_with(&key, format!("v{i}").as_bytes(), &[]).await
        };
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
        if reply.body.get("deleted").and_then(Value::as_u64) == Some(0) {
            continue; // deleting nothing makes no revision
        }
        expected += 1;
        assert_eq!(
            num(&reply.body, "/revision"),
            expected,
            "write {i}: {}",
            reply.describe()
        );
        assert_eq!(
            reply.revision_header(),
            Some(expected),
            "header of write {i}"
        );
    }
    assert_eq!(node.revision().await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_mod_revision_and_version_semantics() {
    let node = Node::start().await;
    let key = "meta/key";

    let r1 = node.put_rev(key, b"one").await;
    let kv = node.get_kv(key).await;
    assert_eq!(
        (
            num(&kv, "/create_revision"),
            num(&kv, "/mod_revision"),
            num(&kv, "/version")
        ),
        (r1, r1, 1)
    );

    let r2 = node.put_rev(key, b"two").await;
    let r3 = node.put_rev(key, b"three").await;
    assert_eq!((r2, r3), (r1 + 1, r1 + 2));
    let kv = node.get_kv(key).await;
    assert_eq!(
        (
            num(&kv, "/create_revision"),
            num(&kv, "/mod_revision"),
            num(&kv, "/version")
        ),
        (r1, r3, 3)
    );
    assert_eq!(kv_value(&kv), b"three");

    // Writes to other keys do not touch this key's metadata.
    let r4 = node.put_rev("meta/other", b"x").await;
    let kv = node.get_kv(key).await;
    assert_eq!(num(&kv, "/mod_revision"), r3);
    assert_eq!(num(&kv, "/version"), 3);

    let deleted = node.delete(key).await;
    assert_eq!(num(&deleted, "/revision"), r4 + 1);

    // Re-created: a new life, version starts again at 1.
    let put = node.put(key, b"reborn").await;
    let r6 = num(&put, "/revision");
    assert_eq!(r6, r4 + 2);
    assert!(
        put["prev_kv"].is_null(),
        "re-creation has no prev_kv: {put}"
    );
    let kv = node.get_kv(key).await;
    assert_eq!(
        (
            num(&kv, "/create_revision"),
            num(&kv, "/mod_revision"),
            num(&kv, "/version")
        ),
        (r6, r6, 1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revision_header_on_reads_and_writes() {
    let node = Node::start().await;
    let r1 = node.put_rev("hdr/a", b"1").await;
    let reply = node.put_with("hdr/b", b"2", &[]).await;
    let r2 = num(&reply.body, "/revision");
    assert_eq!(reply.revision_header(), Some(r2));
    assert_eq!(r2, r1 + 1);

    // Reads report the current revision, not the key's mod_revision.
    let reply = node.get_with("hdr/a", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.revision_header(), Some(r2));
    assert_eq!(num(&reply.body, "/revision"), r2);
    assert_eq!(num(&reply.body, "/kv/mod_revision"), r1);

    let reply = node.get_with("hdr/a", &[("consistency", "stale")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.revision_header(), Some(r2));

    let reply = node.list(&[("prefix", "hdr/")]).await;
    assert_eq!(reply.revision_header(), Some(r2));
    assert_eq!(num(&reply.body, "/revision"), r2);

    let reply = node.delete_with("hdr/a", &[]).await;
    assert_eq!(reply.revision_header(), Some(r2 + 1));

    let reply = node
        .txn(&json!({"compare": [], "success": [{"get": {"key": "hdr/b"}}], "failure": []}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(reply.revision_header(), Some(r2 + 1));
}

/// 25 keys whose byte order differs from naive orders (case, length, UTF-8).
fn page_keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..18).map(|i| format!("page/k{i}")).collect();
    keys.extend(
        [
            "page/A", "page/a", "page/B", "page/_", "page/é", "page/z", "page/Z",
        ]
        .iter()
        .map(|k| k.to_string()),
    );
    assert_eq!(keys.len(), 25);
    keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn list_by_prefix_paginates_in_byte_order() {
    let node = Node::start().await;
    let keys = page_keys();
    // Write in reverse so insertion order is not the expected order.
    for key in keys.iter().rev() {
        node.put(key, format!("value of {key}").as_bytes()).await;
    }
    // Neighbours that must not show up.
    for key in ["page", "pagf/x", "pag", "other/page/k1"] {
        node.put(key, b"noise").await;
    }
    let revision = node.revision().await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut page_sizes = Vec::new();
    for _ in 0..3 {
        let mut query = vec![("prefix", "page/"), ("limit", "10")];
        if let Some(after) = &after {
            query.push(("after", after.as_str()));
        }
        let page = node.list(&query).await.body;
        assert_eq!(num(&page, "/revision"), revision);
        let kvs = page["kvs"].as_array().expect("kvs array");
        page_sizes.push(kvs.len());
        for kv in kvs {
            let key = text(kv, "/key").to_string();
            assert_eq!(kv_value(kv), format!("value of {key}").as_bytes());
            assert!(num(kv, "/mod_revision") >= 1);
            assert_eq!(num(kv, "/version"), 1);
            seen.push(key);
        }
        if page["more"] == json!(true) {
            let next = text(&page, "/next_after").to_string();
            assert_eq!(
                Some(&next),
                seen.last(),
                "next_after is the page's last key"
            );
            after = Some(next);
        } else {
            assert_eq!(page["more"], json!(false), "{page}");
            assert!(
                page["next_after"].is_null(),
                "last page has next_after null: {page}"
            );
            after = None;
        }
    }
    assert_eq!(page_sizes, vec![10, 10, 5]);
    assert!(after.is_none(), "the third page must be the last");
    assert_eq!(seen, keys, "every key exactly once, in byte order");

    // Without a limit (default 100) one page holds them all.
    let page = node.list(&[("prefix", "page/")]).await.body;
    let listed: Vec<&str> = page["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| text(kv, "/key"))
        .collect();
    assert_eq!(listed, keys);
    assert_eq!(page["more"], json!(false));

    // `after` a key that does not exist starts at the next key in byte order.
    let page = node
        .list(&[("prefix", "page/"), ("after", "page/k16~"), ("limit", "3")])
        .await
        .body;
    let listed: Vec<&str> = page["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| text(kv, "/key"))
        .collect();
    let start = keys
        .iter()
        .position(|k| k.as_str() > "page/k16~")
        .expect("a later key");
    let expected: Vec<&str> = keys[start..].iter().take(3).map(String::as_str).collect();
    assert_eq!(listed, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_all_keys_with_empty_prefix() {
    let node = Node::start().await;
    for key in ["b", "a/1", "c/x/y", "a"] {
        node.put(key, key.as_bytes()).await;
    }
    let all: Vec<String> = node.list(&[]).await.body["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| text(kv, "/key").to_string())
        .collect();
    assert_eq!(all, vec!["a", "a/1", "b", "c/x/y"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_keys_only_omits_values() {
    let node = Node::start().await;
    let r1 = node.put_rev("ko/a", b"alpha").await;
    let r2 = node.put_rev("ko/b", b"beta").await;
    let page = node
        .list(&[("prefix", "ko/"), ("keys_only", "true")])
        .await
        .body;
    let kvs = page["kvs"].as_array().expect("kvs");
    assert_eq!(kvs.len(), 2, "{page}");
    for (kv, (key, rev)) in kvs.iter().zip([("ko/a", r1), ("ko/b", r2)]) {
        assert_eq!(text(kv, "/key"), key);
        assert_eq!(num(kv, "/mod_revision"), rev);
        assert_eq!(num(kv, "/create_revision"), rev);
        assert_eq!(num(kv, "/version"), 1);
        assert!(kv.get("value").is_none(), "keys_only must omit value: {kv}");
    }
    // And without keys_only the values are there.
    let page = node.list(&[("prefix", "ko/")]).await.body;
    assert_eq!(kv_value(&page["kvs"][0]), b"alpha");
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_is_a_namespace_and_delete_prefix() {
    let node = Node::start().await;
    for key in ["prod/a", "prod/b", "prod/sub/c", "prod2/a", "prod", "pro"] {
        node.put(key, key.as_bytes()).await;
    }
    let keys_under = |prefix: &'static str| {
        let node = &node;
        async move {
            node.list_all(prefix)
                .await
                .iter()
                .map(|kv| text(kv, "/key").to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        keys_under("prod/").await,
        vec!["prod/a", "prod/b", "prod/sub/c"]
    );
    assert_eq!(keys_under("prod2/").await, vec!["prod2/a"]);
    assert_eq!(
        keys_under("prod").await,
        vec!["prod", "prod/a", "prod/b", "prod/sub/c", "prod2/a"]
    );

    let before = node.revision().await;
    let reply = node.delete_with("prod/", &[("prefix", "true")]).await;
    let body = reply.ok();
    assert_eq!(num(&body, "/deleted"), 3);
    assert_eq!(
        num(&body, "/revision"),
        before + 1,
        "a prefix delete is one revision"
    );
    assert_eq!(node.revision().await, before + 1);

    assert!(keys_under("prod/").await.is_empty());
    assert_eq!(keys_under("").await, vec!["pro", "prod", "prod2/a"]);
    for key in ["prod/a", "prod/b", "prod/sub/c"] {
        assert_eq!(
            node.get(key).await.0,
            StatusCode::NOT_FOUND,
            "{key} is deleted"
        );
    }

    // Without prefix=true, "prod" deletes only the key "prod".
    let body = node.delete("prod").await;
    assert_eq!(num(&body, "/deleted"), 1);
    assert_eq!(keys_under("").await, vec!["pro", "prod2/a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_of_missing_key_creates_no_revision() {
    let node = Node::start().await;
    let r1 = node.put_rev("present", b"x").await;

    let reply = node.delete_with("absent", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(num(&reply.body, "/deleted"), 0);
    assert_eq!(
        num(&reply.body, "/revision"),
        r1,
        "a no-op delete reports the current revision"
    );
    let reply = node.delete_with("nothing/", &[("prefix", "true")]).await;
    assert_eq!(num(&reply.body, "/deleted"), 0, "{}", reply.describe());

    assert_eq!(node.revision().await, r1);
    assert_eq!(node.put_rev("next", b"y").await, r1 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_reads_work() {
    let node = Node::start().await;
    let rev = node.put_rev("stale/key", b"value").await;

    // A stale read may lag, but on a single node it catches up quickly.
    let kv = eventually(
        Duration::from_secs(5),
        "stale read sees the write",
        || async {
            let reply = node
                .get_with("stale/key", &[("consistency", "stale")])
                .await;
            (reply.status == StatusCode::OK).then(|| reply.body["kv"].clone())
        },
    )
    .await;
    assert_eq!(kv_value(&kv), b"value");
    assert_eq!(num(&kv, "/mod_revision"), rev);

    let reply = node
        .get_with("stale/key", &[("consistency", "linearizable")])
        .await;
    assert_eq!(kv_value(&reply.ok()["kv"]), b"value");

    let page = node
        .list(&[("prefix", "stale/"), ("consistency", "stale")])
        .await
        .body;
    assert_eq!(page["kvs"].as_array().map(Vec::len), Some(1), "{page}");

    let reply = node
        .get_with("stale/missing", &[("consistency", "stale")])
        .await;
    assert_error(&reply, 404, "key_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_with_unusual_characters() {
    let node = Node::start().await;
    let keys = [
        "with space",
        "semi;colon",
        "q?mark",
        "hash#tag",
        "pct%20literal",
        "plus+sign",
        "ünïcødé/ключ/鍵",
        "a/b//c",
        "trailing/",
    ];
    for key in keys {
        node.put(key, key.as_bytes()).await;
    }
    for key in keys {
        let kv = node.get_kv(key).await;
        assert_eq!(text(&kv, "/key"), key);
        assert_eq!(kv_value(&kv), key.as_bytes());
    }
    let mut expected: Vec<&str> = keys.to_vec();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let listed: Vec<String> = node
        .list_all("")
        .await
        .iter()
        .map(|kv| text(kv, "/key").to_string())
        .collect();
    assert_eq!(listed, expected);

    // A key of exactly 1024 bytes is accepted.
    let long_key = "k".repeat(1024);
    node.put(&long_key, b"max").await;
    assert_eq!(kv_value(&node.get_kv(&long_key).await), b"max");
}
