//! Hostile and malformed input: every case gets its 4xx error in the JSON
//! error shape, and the node neither crashes nor changes its data.

use shoal_tests::*;

/// One hostile request and the answers it may get: `(status, allowed codes)`.
struct Case {
    name: &'static str,
    method: Method,
    /// Path and query, already URL-encoded.
    path: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    expect: Vec<(u16, &'static [&'static str])>,
}

fn case(
    name: &'static str,
    method: Method,
    path: impl Into<String>,
    expect: Vec<(u16, &'static [&'static str])>,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        body: Vec::new(),
        content_type: None,
        expect,
    }
}

fn with_body(mut case: Case, content_type: &'static str, body: impl Into<Vec<u8>>) -> Case {
    case.content_type = Some(content_type);
    case.body = body.into();
    case
}

fn json_case(
    name: &'static str,
    path: &str,
    body: Value,
    expect: Vec<(u16, &'static [&'static str])>,
) -> Case {
    with_body(
        case(name, Method::POST, path, expect),
        "application/json",
        body.to_string(),
    )
}

const BAD_REQUEST: (u16, &[&str]) = (400, &["bad_request"]);
const BAD_REVISION: (u16, &[&str]) = (400, &["invalid_revision", "bad_request"]);
const INVALID_KEY: (u16, &[&str]) = (400, &["invalid_key"]);
const NOT_FOUND: (u16, &[&str]) = (404, &["not_found"]);
const NO_LEASE: (u16, &[&str]) = (404, &["lease_not_found"]);
const METHOD: (u16, &[&str]) = (405, &["method_not_allowed"]);

fn txn_put(key: &str) -> Value {
    json!({"put": {"key": key, "value": b64(b"v")}})
}

fn cases() -> Vec<Case> {
    let long_key = "k".repeat(1025);
    // 513 two-byte characters: under 1024 characters but over 1024 bytes.
    let long_utf8_key = "é".repeat(513);
    let too_big_value = vec![b'v'; 1024 * 1024 + 1];
    let too_many_ops: Vec<Value> = (0..129).map(|i| txn_put(&format!("many/{i}"))).collect();
    let too_many_compares: Vec<Value> = (0..129)
        .map(|i| json!({"key": format!("c/{i}"), "target": "version", "op": "=", "value": 0}))
        .collect();

    vec![
        // ----- keys
        case(
            "empty key (PUT)",
            Method::PUT,
            "/v1/kv/",
            vec![INVALID_KEY, NOT_FOUND],
        ),
        case(
            "empty key (GET)",
            Method::GET,
            "/v1/kv/",
            vec![INVALID_KEY, NOT_FOUND],
        ),
        case(
            "empty key (DELETE)",
            Method::DELETE,
            "/v1/kv/",
            vec![INVALID_KEY, NOT_FOUND],
        ),
        with_body(
            case(
                "key over 1024 bytes",
                Method::PUT,
                format!("/v1/kv/{long_key}"),
                vec![(413, &["key_too_large"])],
            ),
            "application/octet-stream",
            "v",
        ),
        with_body(
            case(
                "key over 1024 bytes in UTF-8",
                Method::PUT,
                format!("/v1/kv/{}", encode_key(&long_utf8_key)),
                vec![(413, &["key_too_large"])],
            ),
            "application/octet-stream",
            "v",
        ),
        case(
            "key with %01",
            Method::PUT,
            "/v1/kv/bad%01key",
            vec![INVALID_KEY],
        ),
        case(
            "key with NUL",
            Method::PUT,
            "/v1/kv/bad%00key",
            vec![INVALID_KEY],
        ),
        case(
            "key with newline",
            Method::PUT,
            "/v1/kv/bad%0Akey",
            vec![INVALID_KEY],
        ),
        case(
            "key with DEL (0x7f)",
            Method::PUT,
            "/v1/kv/bad%7Fkey",
            vec![INVALID_KEY],
        ),
        case(
            "key not UTF-8",
            Method::PUT,
            "/v1/kv/bad%FF%FEkey",
            vec![INVALID_KEY],
        ),
        case(
            "GET key with %01",
            Method::GET,
            "/v1/kv/bad%01key",
            vec![INVALID_KEY],
        ),
        case(
            "DELETE key with %01",
            Method::DELETE,
            "/v1/kv/bad%01key",
            vec![INVALID_KEY],
        ),
        // ----- values
        with_body(
            case(
                "value over 1 MiB",
                Method::PUT,
                "/v1/kv/big",
                vec![(413, &["value_too_large", "payload_too_large"])],
            ),
            "application/octet-stream",
            too_big_value,
        ),
        // ----- query parameters
        case(
            "if_revision=abc",
            Method::PUT,
            "/v1/kv/q?if_revision=abc",
            vec![BAD_REVISION],
        ),
        case(
            "if_revision=-1",
            Method::PUT,
            "/v1/kv/q?if_revision=-1",
            vec![BAD_REVISION],
        ),
        case(
            "if_revision=1.5",
            Method::PUT,
            "/v1/kv/q?if_revision=1.5",
            vec![BAD_REVISION],
        ),
        case(
            "if_revision beyond u64",
            Method::PUT,
            "/v1/kv/q?if_revision=18446744073709551616",
            vec![BAD_REVISION],
        ),
        case(
            "if_revision=abc on DELETE",
            Method::DELETE,
            "/v1/kv/q?if_revision=abc",
            vec![BAD_REVISION],
        ),
        case(
            "if_revision with prefix=true",
            Method::DELETE,
            "/v1/kv/q?prefix=true&if_revision=1",
            vec![BAD_REQUEST, BAD_REVISION],
        ),
        case(
            "lease=abc",
            Method::PUT,
            "/v1/kv/q?lease=abc",
            vec![BAD_REQUEST],
        ),
        case(
            "unknown lease on put",
            Method::PUT,
            "/v1/kv/q?lease=987654321",
            vec![NO_LEASE],
        ),
        case(
            "prefix=maybe",
            Method::DELETE,
            "/v1/kv/q?prefix=maybe",
            vec![BAD_REQUEST],
        ),
        case(
            "consistency=bogus",
            Method::GET,
            "/v1/kv/q?consistency=bogus",
            vec![BAD_REQUEST],
        ),
        case(
            "watch from_revision=x",
            Method::GET,
            "/v1/watch?prefix=a&from_revision=x",
            vec![BAD_REVISION],
        ),
        case(
            "watch from_revision=-5",
            Method::GET,
            "/v1/watch?prefix=a&from_revision=-5",
            vec![BAD_REVISION],
        ),
        case(
            "poll from_revision=x",
            Method::GET,
            "/v1/watch/poll?prefix=a&from_revision=x",
            vec![BAD_REVISION],
        ),
        case(
            "poll timeout_ms=abc",
            Method::GET,
            "/v1/watch/poll?prefix=a&from_revision=1&timeout_ms=abc",
            vec![BAD_REQUEST],
        ),
        case(
            "poll limit=abc",
            Method::GET,
            "/v1/watch/poll?prefix=a&from_revision=1&limit=abc",
            vec![BAD_REQUEST],
        ),
        case(
            "list limit=0",
            Method::GET,
            "/v1/kv?limit=0",
            vec![BAD_REQUEST],
        ),
        case(
            "list limit=100000",
            Method::GET,
            "/v1/kv?limit=100000",
            vec![BAD_REQUEST],
        ),
        case(
            "list limit=-3",
            Method::GET,
            "/v1/kv?limit=-3",
            vec![BAD_REQUEST],
        ),
        case(
            "list limit=abc",
            Method::GET,
            "/v1/kv?limit=abc",
            vec![BAD_REQUEST],
        ),
        case(
            "list keys_only=maybe",
            Method::GET,
            "/v1/kv?keys_only=maybe",
            vec![BAD_REQUEST],
        ),
        case(
            "history limit=abc",
            Method::GET,
            "/v1/history/q?limit=abc",
            vec![BAD_REQUEST],
        ),
        case(
            "history before=abc",
            Method::GET,
            "/v1/history/q?before=abc",
            vec![BAD_REVISION],
        ),
        // ----- transactions
        with_body(
            case(
                "txn malformed JSON",
                Method::POST,
                "/v1/txn",
                vec![BAD_REQUEST],
            ),
            "application/json",
            r#"{"compare": [, "success": []"#,
        ),
        with_body(
            case("txn empty body", Method::POST, "/v1/txn", vec![BAD_REQUEST]),
            "application/json",
            "",
        ),
        with_body(
            case(
                "txn non-JSON body",
                Method::POST,
                "/v1/txn",
                vec![
                    BAD_REQUEST,
                    (415, &["bad_request", "unsupported_media_type"]),
                ],
            ),
            "text/plain",
            "put a=b please",
        ),
        json_case(
            "txn body is an array",
            "/v1/txn",
            json!([]),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn compare not a list",
            "/v1/txn",
            json!({"compare": "x", "success": [], "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn bad base64 in put",
            "/v1/txn",
            json!({"compare": [], "success": [{"put": {"key": "a", "value": "!!not base64!!"}}], "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn bad base64 in compare",
            "/v1/txn",
            json!({"compare": [{"key": "a", "target": "value", "op": "=", "value": "%%%"}], "success": [], "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn unknown operation",
            "/v1/txn",
            json!({"compare": [], "success": [{"frobnicate": {"key": "a"}}], "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn operation with two kinds",
            "/v1/txn",
            json!({"compare": [], "success": [{"put": {"key": "a", "value": "YQ=="}, "get": {"key": "a"}}], "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn unknown compare target",
            "/v1/txn",
            json!({"compare": [{"key": "a", "target": "color", "op": "=", "value": 1}], "success": [], "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn unknown compare op",
            "/v1/txn",
            json!({"compare": [{"key": "a", "target": "version", "op": "~=", "value": 1}], "success": [], "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn < on a value compare",
            "/v1/txn",
            json!({"compare": [{"key": "a", "target": "value", "op": "<", "value": "YQ=="}], "success": [], "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn revision compare with a string",
            "/v1/txn",
            json!({"compare": [{"key": "a", "target": "mod_revision", "op": "=", "value": "five"}], "success": [], "failure": []}),
            vec![BAD_REQUEST, BAD_REVISION],
        ),
        json_case(
            "txn put without a key",
            "/v1/txn",
            json!({"compare": [], "success": [{"put": {"value": "YQ=="}}], "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn put with empty key",
            "/v1/txn",
            json!({"compare": [], "success": [txn_put("")], "failure": []}),
            vec![INVALID_KEY],
        ),
        json_case(
            "txn put with control-char key",
            "/v1/txn",
            json!({"compare": [], "success": [txn_put("a\u{1}b")], "failure": []}),
            vec![INVALID_KEY],
        ),
        json_case(
            "txn put with over-long key",
            "/v1/txn",
            json!({"compare": [], "success": [txn_put(&"k".repeat(1025))], "failure": []}),
            vec![(413, &["key_too_large"])],
        ),
        json_case(
            "txn with 129 operations",
            "/v1/txn",
            json!({"compare": [], "success": too_many_ops, "failure": []}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn with 129 failure operations",
            "/v1/txn",
            json!({"compare": [], "success": [], "failure": too_many_ops}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "txn with 129 compares",
            "/v1/txn",
            json!({"compare": too_many_compares, "success": [], "failure": []}),
            vec![BAD_REQUEST],
        ),
        // ----- leases
        json_case(
            "lease ttl 0",
            "/v1/leases",
            json!({"ttl_seconds": 0}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "lease ttl -1",
            "/v1/leases",
            json!({"ttl_seconds": -1}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "lease ttl 86401",
            "/v1/leases",
            json!({"ttl_seconds": 86401}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "lease ttl huge",
            "/v1/leases",
            json!({"ttl_seconds": 1e30}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "lease ttl u64::MAX",
            "/v1/leases",
            json!({"ttl_seconds": u64::MAX}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "lease ttl string",
            "/v1/leases",
            json!({"ttl_seconds": "10"}),
            vec![BAD_REQUEST],
        ),
        json_case(
            "lease ttl missing",
            "/v1/leases",
            json!({}),
            vec![BAD_REQUEST],
        ),
        case(
            "keepalive unknown lease",
            Method::POST,
            "/v1/leases/987654321/keepalive",
            vec![NO_LEASE],
        ),
        case(
            "keepalive non-numeric lease",
            Method::POST,
            "/v1/leases/abc/keepalive",
            vec![BAD_REQUEST, NO_LEASE, NOT_FOUND],
        ),
        case(
            "GET unknown lease",
            Method::GET,
            "/v1/leases/987654321",
            vec![NO_LEASE],
        ),
        case(
            "revoke unknown lease",
            Method::DELETE,
            "/v1/leases/987654321",
            vec![NO_LEASE],
        ),
        // ----- rollback and compaction
        json_case(
            "rollback malformed",
            "/v1/rollback/q",
            json!({"rev": 1}),
            vec![BAD_REQUEST, BAD_REVISION],
        ),
        json_case(
            "rollback revision string",
            "/v1/rollback/q",
            json!({"revision": "abc"}),
            vec![BAD_REQUEST, BAD_REVISION],
        ),
        with_body(
            case(
                "rollback not JSON",
                Method::POST,
                "/v1/rollback/q",
                vec![BAD_REQUEST],
            ),
            "application/json",
            "{{{",
        ),
        json_case(
            "compact to the future",
            "/v1/compact",
            json!({"revision": 1_000_000}),
            vec![(400, &["invalid_revision"])],
        ),
        json_case(
            "compact negative",
            "/v1/compact",
            json!({"revision": -1}),
            vec![BAD_REVISION],
        ),
        // ----- routes and methods
        case("unknown route", Method::GET, "/v1/nope", vec![NOT_FOUND]),
        case(
            "unknown top-level route",
            Method::GET,
            "/nope",
            vec![NOT_FOUND],
        ),
        case(
            "unknown route under /v1/leases",
            Method::GET,
            "/v1/leases/1/frob",
            vec![NOT_FOUND],
        ),
        case(
            "POST on /v1/status",
            Method::POST,
            "/v1/status",
            vec![METHOD],
        ),
        case("POST on /health", Method::POST, "/health", vec![METHOD]),
        case("PATCH on a key", Method::PATCH, "/v1/kv/q", vec![METHOD]),
        case("PUT on the list route", Method::PUT, "/v1/kv", vec![METHOD]),
        case("GET on /v1/txn", Method::GET, "/v1/txn", vec![METHOD]),
        case(
            "DELETE on /v1/watch",
            Method::DELETE,
            "/v1/watch",
            vec![METHOD],
        ),
        case(
            "PUT on /v1/compact",
            Method::PUT,
            "/v1/compact",
            vec![METHOD],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_rejected_and_the_node_survives() {
    let node = Node::start().await;
    node.put("q", b"original").await;
    let revision = node.revision().await;

    let mut failures = Vec::new();
    for case in cases() {
        let mut request = node
            .request(case.method.clone(), &case.path)
            .body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        let reply = match request.send().await {
            Ok(response) => Reply::read(response).await,
            Err(e) => {
                failures.push(format!("{}: request failed: {e}", case.name));
                continue;
            }
        };
        if let Err(problem) = error_matches(&reply, &case.expect) {
            failures.push(format!(
                "{} ({} {}): {problem}",
                case.name,
                case.method,
                short(&case.path)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile requests were not answered as specified:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );

    // Nothing crashed, nothing was written.
    let health = node.get_path("/health").await.ok();
    assert_eq!(health["status"], json!("ok"));
    assert_eq!(
        node.revision().await,
        revision,
        "rejected requests must not write"
    );
    let keys: Vec<String> = node
        .list_all("")
        .await
        .iter()
        .map(|kv| text(kv, "/key").to_string())
        .collect();
    assert_eq!(keys, vec!["q"]);
    assert_eq!(kv_value(&node.get_kv("q").await), b"original");
    assert_eq!(node.put_rev("after", b"fine").await, revision + 1);
    assert_eq!(kv_value(&node.get_kv("after").await), b"fine");
}

fn short(path: &str) -> String {
    if path.chars().count() > 80 {
        format!("{}...", path.chars().take(80).collect::<String>())
    } else {
        path.to_string()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_at_the_boundary_are_accepted() {
    let node = Node::start().await;
    // Keys: exactly 1024 bytes, also in multi-byte UTF-8.
    node.put(&"k".repeat(1024), b"v").await;
    node.put(&"é".repeat(512), b"v").await;
    assert_eq!(node.list_all("").await.len(), 2);

    // Leases: the smallest and the largest TTL.
    for ttl in [1, 86400] {
        let body = node
            .post_json("/v1/leases", &json!({"ttl_seconds": ttl}))
            .await
            .ok();
        assert_eq!(num(&body, "/ttl_seconds"), ttl);
    }

    // List page sizes 1 and 1000.
    for limit in ["1", "1000"] {
        let page = node.list(&[("limit", limit)]).await.body;
        assert!(page["kvs"].as_array().is_some_and(|kvs| !kvs.is_empty()));
    }
}
