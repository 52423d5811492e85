//! Access control (`--acl`): requests without a valid token are refused,
//! each kind of route needs its resource and access, tokens are revoked on
//! every node, the bootstrap works once, and a node refuses to serve beyond
//! loopback without ACLs unless told to.

use std::time::Duration;

use base64::Engine;
use shoal_tests::python::run_python_with_env;
use shoal_tests::*;

/// Time for an ACL change to reach a node's copy.
const SPREAD: Duration = Duration::from_secs(10);

async fn acl_node() -> Node {
    Node::builder().args(&["--acl"]).otlp().start().await
}

async fn bootstrap(node: &Node) -> String {
    let reply = node
        .send(node.request(Method::POST, "/v1/acl/bootstrap"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    text(&reply.body, "/secret").to_string()
}

/// A node with ACLs on, bootstrapped: it and its management token.
async fn managed_node() -> (Node, String) {
    let node = acl_node().await;
    let admin = bootstrap(&node).await;
    (node, admin)
}

/// `method path` with `token` (if any) and a JSON body (if not null).
async fn call(node: &Node, token: Option<&str>, method: Method, path: &str, body: &Value) -> Reply {
    let mut request = node.request(method, path);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if !body.is_null() {
        request = request.json(body);
    }
    node.send(request).await
}

async fn put_policy(node: &Node, admin: &str, name: &str, rules: Value) {
    let reply = call(
        node,
        Some(admin),
        Method::PUT,
        &format!("/v1/acl/policies/{name}"),
        &json!({ "rules": rules }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
}

/// A token with these policies; waits until `node` accepts it.
async fn token_with(node: &Node, admin: &str, body: Value) -> (String, String) {
    let reply = call(node, Some(admin), Method::POST, "/v1/acl/tokens", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    let secret = text(&reply.body, "/secret").to_string();
    let accessor = text(&reply.body, "/accessor_id").to_string();
    wait_accepted(node, &secret).await;
    (accessor, secret)
}

async fn wait_accepted(node: &Node, secret: &str) {
    wait_for(SPREAD, "the new token to be accepted", || async {
        let reply = call(
            node,
            Some(secret),
            Method::GET,
            "/v1/acl/whoami",
            &Value::Null,
        )
        .await;
        if reply.status == StatusCode::OK {
            Ok(())
        } else {
            Err(reply.describe())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_token_are_refused_and_probes_stay_open() {
    let node = acl_node().await;
    for token in [None, Some("shoal_not-a-token")] {
        let reply = call(&node, token, Method::GET, "/v1/kv/app/x", &Value::Null).await;
        assert_error(&reply, 401, "unauthorized");
        assert_eq!(
            reply
                .headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or("")),
            Some("Bearer realm=\"shoal\""),
            "{}",
            reply.describe()
        );
    }
    for path in ["/health", "/ready", "/openapi.json"] {
        let reply = call(&node, None, Method::GET, path, &Value::Null).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.describe());
    }
    // The streaming routes and the ingest protocols are closed too.
    for (method, path) in [
        (Method::GET, "/v1/subscribe?pattern=orders.>"),
        (Method::GET, "/v1/watch?prefix="),
        (Method::GET, "/v1/logs/tail"),
        (Method::POST, "/_bulk"),
        (Method::GET, "/"),
        (Method::GET, "/metrics"),
    ] {
        let reply = call(&node, None, method.clone(), path, &Value::Null).await;
        assert_error(&reply, 401, "unauthorized");
    }
    let otlp = node
        .client()
        .post(format!("{}/v1/logs", node.otlp_http_endpoint()))
        .header("content-type", "application/json")
        .body(r#"{"resourceLogs":[]}"#)
        .send()
        .await
        .expect("OTLP/HTTP answers");
    assert_eq!(otlp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bootstrap_works_once_and_gives_a_management_token() {
    let node = acl_node().await;
    let admin = bootstrap(&node).await;
    let again = call(&node, None, Method::POST, "/v1/acl/bootstrap", &Value::Null).await;
    assert_error(&again, 409, "already_bootstrapped");
    // The node that made the token accepts it as soon as it answered.
    let me = call(
        &node,
        Some(&admin),
        Method::GET,
        "/v1/acl/whoami",
        &Value::Null,
    )
    .await;
    assert_eq!(me.body["acl"], true, "{}", me.describe());
    assert_eq!(me.body["token"]["policies"], json!(["management"]));
    // The stored token holds only the secret's hash.
    let stored = call(
        &node,
        Some(&admin),
        Method::GET,
        "/v1/kv?prefix=_shoal/acl/tokens/",
        &Value::Null,
    )
    .await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.describe());
    assert!(
        !stored.text.contains(&admin),
        "the secret is stored: {}",
        stored.text
    );
    let values: Vec<String> = stored.body["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| String::from_utf8_lossy(&unb64(text(kv, "/value"))).into_owned())
        .collect();
    assert!(
        values.iter().all(|value| !value.contains(&admin)),
        "{values:?}"
    );
}

/// One request of the matrix: who sends it, what, and the status expected.
struct Case {
    token: usize,
    method: Method,
    path: &'static str,
    body: Value,
    status: u16,
}

fn case(token: usize, method: Method, path: &'static str, body: Value, status: u16) -> Case {
    Case {
        token,
        method,
        path,
        body,
        status,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_route_needs_its_resource_and_access() {
    let (node, admin) = managed_node().await;
    put_policy(
        &node,
        &admin,
        "app-reader",
        json!([
            {"resource": "kv", "match": "app/", "access": "read"},
            {"resource": "topic", "match": "orders.>", "access": "read"},
            {"resource": "delivery", "match": "webhooks/", "access": "read"},
        ]),
    )
    .await;
    put_policy(
        &node,
        &admin,
        "app-writer",
        json!([
            {"resource": "kv", "match": "app/", "access": "write"},
            {"resource": "kv", "match": "app/secret/", "access": "deny"},
            {"resource": "topic", "match": "orders.>", "access": "write"},
            {"resource": "logs", "match": "app", "access": "write"},
            {"resource": "leases", "access": "write"},
        ]),
    )
    .await;
    put_policy(
        &node,
        &admin,
        "operator",
        json!([{"resource": "operator", "access": "read"}]),
    )
    .await;
    let role = call(
        &node,
        Some(&admin),
        Method::PUT,
        "/v1/acl/roles/writers",
        &json!({"policies": ["app-writer"]}),
    )
    .await;
    assert_eq!(role.status, StatusCode::OK, "{}", role.describe());
    let (reader_accessor, reader) =
        token_with(&node, &admin, json!({"policies": ["app-reader"]})).await;
    // The writer's rules come through its role.
    let (_, writer) = token_with(&node, &admin, json!({"roles": ["writers"]})).await;
    let (_, operator) = token_with(&node, &admin, json!({"policies": ["operator"]})).await;
    let webhook = call(
        &node,
        Some(&admin),
        Method::PUT,
        "/v1/webhooks/hook",
        &json!({"url": "http://127.0.0.1:9/in", "pattern": "orders.>", "secret": "whsec_c2VlbiBieSBtYW5hZ2VycyBvbmx5"}),
    )
    .await;
    assert_eq!(webhook.status, StatusCode::OK, "{}", webhook.describe());
    let seed = call(
        &node,
        Some(&admin),
        Method::PUT,
        "/v1/kv/app/x",
        &json!("v"),
    )
    .await;
    assert_eq!(seed.status, StatusCode::OK, "{}", seed.describe());

    let tokens = [
        admin.as_str(),
        reader.as_str(),
        writer.as_str(),
        operator.as_str(),
    ];
    let (admin, reader, writer, operator) = (0, 1, 2, 3);
    let none = Value::Null;
    let txn = |key: &str| json!({"success": [{"put": {"key": key, "value": b64(b"1")}}]});
    let publish_batch = json!({"messages": [
        {"topic": "orders.created", "data": "a"},
        {"topic": "billing.charged", "data": "b"},
    ]});
    let cases = [
        // KV: one key, a prefix, a listing, a transaction, history, a watch.
        case(reader, Method::GET, "/v1/kv/app/x", none.clone(), 200),
        case(reader, Method::PUT, "/v1/kv/app/x", json!("w"), 403),
        case(reader, Method::GET, "/v1/kv/other", none.clone(), 403),
        case(reader, Method::GET, "/v1/kv?prefix=app/", none.clone(), 200),
        case(reader, Method::GET, "/v1/kv?prefix=", none.clone(), 403),
        case(reader, Method::GET, "/v1/history/app/x", none.clone(), 200),
        case(
            reader,
            Method::GET,
            "/v1/watch/poll?prefix=app/&timeout_ms=1",
            none.clone(),
            200,
        ),
        case(
            reader,
            Method::GET,
            "/v1/watch/poll?prefix=ap&timeout_ms=1",
            none.clone(),
            403,
        ),
        case(writer, Method::PUT, "/v1/kv/app/y", json!("w"), 200),
        case(writer, Method::PUT, "/v1/kv/app/secret/k", json!("w"), 403),
        case(
            writer,
            Method::GET,
            "/v1/kv/app/secret/k",
            none.clone(),
            403,
        ),
        // A prefix delete of app/ would reach the denied app/secret/.
        case(
            writer,
            Method::DELETE,
            "/v1/kv/app/?prefix=true",
            none.clone(),
            403,
        ),
        case(writer, Method::POST, "/v1/txn", txn("app/t"), 200),
        case(writer, Method::POST, "/v1/txn", txn("other/t"), 403),
        case(reader, Method::POST, "/v1/txn", txn("app/t"), 403),
        case(
            writer,
            Method::POST,
            "/v1/leases",
            json!({"ttl_seconds": 10}),
            200,
        ),
        case(
            reader,
            Method::POST,
            "/v1/leases",
            json!({"ttl_seconds": 10}),
            403,
        ),
        // Messaging: one topic, a batch naming a forbidden topic, a subscription.
        case(
            writer,
            Method::POST,
            "/v1/topics/orders.created",
            json!({"a": 1}),
            202,
        ),
        case(
            writer,
            Method::POST,
            "/v1/topics/billing.charged",
            json!({"a": 1}),
            403,
        ),
        case(
            reader,
            Method::POST,
            "/v1/topics/orders.created",
            json!({"a": 1}),
            403,
        ),
        case(
            writer,
            Method::POST,
            "/v1/publish",
            publish_batch.clone(),
            403,
        ),
        case(admin, Method::POST, "/v1/publish", publish_batch, 202),
        // Logs: ingest into the allowed stream only; search needs read.
        case(
            writer,
            Method::POST,
            "/v1/logs/app",
            json!([{"message": "m"}]),
            200,
        ),
        case(
            writer,
            Method::POST,
            "/v1/logs/other",
            json!([{"message": "m"}]),
            403,
        ),
        // Reads of logs are narrowed to the streams the token may read.
        case(
            writer,
            Method::GET,
            "/v1/logs/search?q=m",
            none.clone(),
            200,
        ),
        case(
            writer,
            Method::GET,
            "/v1/logs/search?stream=other",
            none.clone(),
            403,
        ),
        case(reader, Method::GET, "/v1/logs/search", none.clone(), 403),
        // SQL: each table it reads needs its right.
        case(
            writer,
            Method::POST,
            "/v1/sql",
            json!({"query": "SELECT count(*) AS n FROM logs"}),
            200,
        ),
        case(
            reader,
            Method::POST,
            "/v1/sql",
            json!({"query": "SELECT count(*) AS n FROM logs"}),
            403,
        ),
        case(
            writer,
            Method::POST,
            "/v1/sql",
            json!({"query": "SELECT count(*) AS n FROM workflow_instances"}),
            403,
        ),
        case(
            admin,
            Method::POST,
            "/v1/sql",
            json!({"query": "SELECT count(*) AS n FROM workflow_instances"}),
            200,
        ),
        // Definitions and administration.
        case(reader, Method::GET, "/v1/webhooks/hook", none.clone(), 200),
        case(
            reader,
            Method::PUT,
            "/v1/webhooks/hook",
            json!({"url": "http://127.0.0.1:9/x"}),
            403,
        ),
        case(
            reader,
            Method::GET,
            "/v1/workflows/definitions",
            none.clone(),
            403,
        ),
        case(operator, Method::GET, "/v1/status", none.clone(), 200),
        case(operator, Method::GET, "/metrics", none.clone(), 200),
        case(reader, Method::GET, "/v1/status", none.clone(), 403),
        case(operator, Method::POST, "/v1/cluster/leave", json!({}), 403),
        case(
            operator,
            Method::POST,
            "/v1/compact",
            json!({"revision": 1}),
            403,
        ),
        case(operator, Method::GET, "/v1/acl/tokens", none.clone(), 403),
        case(
            writer,
            Method::POST,
            "/v1/acl/tokens",
            json!({"policies": ["management"]}),
            403,
        ),
        case(admin, Method::GET, "/v1/acl/tokens", none.clone(), 200),
    ];
    let mut wrong = Vec::new();
    for case in &cases {
        let reply = call(
            &node,
            Some(tokens[case.token]),
            case.method.clone(),
            case.path,
            &case.body,
        )
        .await;
        let expected_code = match case.status {
            403 => Some("permission_denied"),
            _ => None,
        };
        let code = reply.body["error"]["code"].as_str();
        if reply.status.as_u16() != case.status
            || (expected_code.is_some() && code != expected_code)
        {
            wrong.push(format!(
                "token {} {} {}: expected {}, got {}",
                case.token,
                case.method,
                case.path,
                case.status,
                reply.describe()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A webhook's signing secret is shown to tokens that may change it only.
    let as_reader = call(
        &node,
        Some(tokens[reader]),
        Method::GET,
        "/v1/webhooks/hook",
        &none,
    )
    .await;
    assert!(
        as_reader.body.get("secret").is_none(),
        "{}",
        as_reader.describe()
    );
    let listed = call(
        &node,
        Some(tokens[reader]),
        Method::GET,
        "/v1/webhooks",
        &none,
    )
    .await;
    assert!(!listed.text.contains("whsec_"), "{}", listed.describe());
    let as_admin = call(
        &node,
        Some(tokens[admin]),
        Method::GET,
        "/v1/webhooks/hook",
        &none,
    )
    .await;
    assert_eq!(
        as_admin.body["secret"],
        "whsec_c2VlbiBieSBtYW5hZ2VycyBvbmx5"
    );

    // A subscription over a stream route, the token in the query string.
    let url = format!(
        "/v1/subscribe?pattern=orders.>&access_token={}",
        tokens[reader]
    );
    let stream = node
        .client()
        .get(node.url(&url))
        .send()
        .await
        .expect("subscribe");
    assert_eq!(stream.status(), StatusCode::OK);
    let url = format!("/v1/subscribe?pattern=>&access_token={}", tokens[reader]);
    let refused = node.send(node.request(Method::GET, &url)).await;
    assert_error(&refused, 403, "permission_denied");

    // The audit trail has the changes and the refusals (reads and data
    // such as publishes are not in it), by accessor id, never by secret.
    let expected = [
        "PUT /v1/kv/app/y 200",
        "PUT /v1/kv/app/x 403",
        "POST /v1/acl/tokens 200",
        "PUT /v1/acl/roles/writers 200",
        "GET /v1/subscribe 403",
    ];
    let audit = wait_for(SEARCHABLE_TIMEOUT, "the audit records", || async {
        let reply = call(
            &node,
            Some(tokens[admin]),
            Method::GET,
            "/v1/logs/search?stream=audit&limit=10000",
            &none,
        )
        .await;
        let found = messages(&hits_of(&reply.body));
        match expected
            .iter()
            .find(|line| !found.iter().any(|m| m == *line))
        {
            None => Ok((reply, found)),
            Some(missing) => Err(format!("{missing:?} is not among {found:?}")),
        }
    })
    .await;
    let (reply, found) = audit;
    for line in ["GET /v1/kv/app/x 200", "POST /v1/topics/orders.created 202"] {
        assert!(
            !found.iter().any(|m| m == line),
            "{line} is audited: {found:?}"
        );
    }
    for secret in tokens {
        assert!(
            !reply.text.contains(secret),
            "a secret is in the audit trail"
        );
    }
    assert!(reply.text.contains(&reader_accessor), "{}", reply.text);
}

/// `GET path` with `token`.
async fn get(node: &Node, token: &str, path: &str) -> Reply {
    call(node, Some(token), Method::GET, path, &Value::Null).await
}

/// A token that may read some streams sees those and nothing else, in
/// every read of logs; a token that may read a topic may join a queue
/// group on it only with a `queue_group` rule.
#[tokio::test(flavor = "multi_thread")]
async fn log_reads_are_narrowed_to_readable_streams_and_queue_groups_need_a_rule() {
    let (node, admin) = managed_node().await;
    for stream in ["app-a", "app-b", "billing"] {
        let reply = call(
            &node,
            Some(&admin),
            Method::POST,
            &format!("/v1/logs/{stream}"),
            &json!([{"message": format!("from {stream}"), "service": "svc", "trace_id": "0af7651916cd43dd8448eb211c80319c"}]),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    }
    put_policy(
        &node,
        &admin,
        "app-logs",
        json!([
            {"resource": "logs", "match": "app-", "access": "read"},
            {"resource": "logs", "match": "app-b", "access": "deny"},
            {"resource": "topic", "match": "jobs.>", "access": "read"},
            {"resource": "queue_group", "match": "app-", "access": "read"},
        ]),
    )
    .await;
    let (_, token) = token_with(&node, &admin, json!({"policies": ["app-logs"]})).await;

    // Every read sees app-a only, once the records are searchable.
    let everything = wait_for(
        SEARCHABLE_TIMEOUT,
        "the three records searchable",
        || async {
            let reply = call(
                &node,
                Some(&admin),
                Method::GET,
                "/v1/logs/search?stream=app-a,app-b,billing",
                &Value::Null,
            )
            .await;
            match hits_of(&reply.body).len() {
                3 => Ok(()),
                n => Err(format!("{n} hits")),
            }
        },
    );
    everything.await;
    let hits = get(&node, &token, "/v1/logs/search").await;
    assert_eq!(
        messages(&hits_of(&hits.body)),
        ["from app-a"],
        "{}",
        hits.text
    );
    let sql = call(
        &node,
        Some(&token),
        Method::POST,
        "/v1/logs/sql",
        &json!({"query": "SELECT stream, count(*) AS n FROM logs GROUP BY stream"}),
    )
    .await;
    assert_eq!(sql.body["rows"], json!([["app-a", 1]]), "{}", sql.text);
    let trace = get(&node, &token, "/v1/traces/0af7651916cd43dd8448eb211c80319c").await;
    assert_eq!(
        trace.body["logs"].as_array().map(Vec::len),
        Some(1),
        "{}",
        trace.text
    );
    let streams = get(&node, &token, "/v1/logs/streams").await;
    let names: Vec<&str> = streams.body["streams"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["app-a"], "{}", streams.text);
    let counted = get(&node, &token, "/v1/logs/aggregate?top=service&since=1h").await;
    assert_eq!(counted.body["total"], json!(1), "{}", counted.text);
    // Naming a stream it may not read is refused, not emptied.
    for path in [
        "/v1/logs/search?stream=billing",
        "/v1/logs/search?stream=app-b",
    ] {
        assert_error(&get(&node, &token, path).await, 403, "permission_denied");
    }
    let refused = call(
        &node,
        Some(&token),
        Method::POST,
        "/v1/logs/sql",
        &json!({"query": "SELECT count(*) FROM logs WHERE stream = 'billing'"}),
    )
    .await;
    assert_error(&refused, 403, "permission_denied");

    // Queue groups: the topic rule alone does not let a token join one.
    let refused = get(
        &node,
        &token,
        "/v1/subscribe?pattern=jobs.>&queue=billing-workers",
    )
    .await;
    assert_error(&refused, 403, "permission_denied");
    let joined = node
        .client()
        .get(node.url("/v1/subscribe?pattern=jobs.>&queue=app-workers"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("subscribe");
    assert_eq!(joined.status(), StatusCode::OK);

    // A policy narrowed while the subscription is open ends it (within the
    // second the check takes), as a revoked token does.
    put_policy(
        &node,
        &admin,
        "app-logs",
        json!([{"resource": "logs", "match": "app-", "access": "read"}]),
    )
    .await;
    let ended = tokio::time::timeout(SPREAD, joined.bytes()).await;
    assert!(
        matches!(ended, Ok(Ok(_))),
        "the subscription stayed open after its topic rule went: {ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_clients_send_their_token_as_their_protocol_does() {
    let (node, admin) = managed_node().await;
    put_policy(
        &node,
        &admin,
        "shipper",
        json!([
            {"resource": "logs", "match": "es-", "access": "write"},
            {"resource": "logs", "match": "otel", "access": "write"},
            {"resource": "logs", "match": "traces", "access": "write"},
        ]),
    )
    .await;
    let (_, shipper) = token_with(&node, &admin, json!({"policies": ["shipper"]})).await;

    // The official Elasticsearch client with an API key (its id:key form).
    let api_key = base64::engine::general_purpose::STANDARD.encode(format!("shipper:{shipper}"));
    let output = run_python_with_env(
        "es_bulk.py",
        &[&node.endpoint(), "es-acl"],
        &[("ES_API_KEY", &api_key)],
    )
    .await;
    output.assert_success();
    let refused = run_python_with_env(
        "es_bulk.py",
        &[&node.endpoint(), "es-acl"],
        &[("ES_API_KEY", "wrong")],
    )
    .await;
    assert!(!refused.status.success(), "a wrong API key was accepted");
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    // A stream the key may not write fails per item, as Elasticsearch does.
    let bulk = node
        .send(
            node.request(Method::POST, "/_bulk")
                .header("authorization", format!("ApiKey {api_key}"))
                .header("content-type", "application/x-ndjson")
                .body("{\"index\":{\"_index\":\"es-ok\"}}\n{\"message\":\"a\"}\n{\"index\":{\"_index\":\"other\"}}\n{\"message\":\"b\"}\n"),
        )
        .await;
    assert_eq!(bulk.status, StatusCode::OK, "{}", bulk.describe());
    let statuses: Vec<u64> = bulk.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["index"]["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, vec![201, 403], "{}", bulk.describe());

    // The OpenTelemetry SDK with the token in OTEL_EXPORTER_OTLP_HEADERS.
    let header = format!("authorization=Bearer%20{shipper}");
    for target in [
        ["--http", &node.otlp_http_endpoint()],
        ["--grpc", &node.otlp_grpc_addr()],
    ] {
        let output = run_python_with_env(
            "otel_export.py",
            &target,
            &[("OTEL_EXPORTER_OTLP_HEADERS", &header)],
        )
        .await;
        output.assert_success();
        let without = run_python_with_env("otel_export.py", &target, &[]).await;
        assert!(
            !without.status.success(),
            "{target:?}: an export without a token succeeded"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_or_expired_token_is_refused_on_every_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("management-token");
    let management = "shoal_initial-management-secret-for-the-test";
    std::fs::write(&file, format!("{management}\n")).expect("write the token file");
    let file = file.display().to_string();
    let plan = shoal_testkit::ClusterPlan::new(3).expect("ports");
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::from_process(
                plan.node(i)
                    .args(&["--acl", "--initial-management-token-file", &file])
                    .spawn()
                    .expect("spawn"),
            )
        })
        .collect();
    for node in &mut nodes {
        node.wait_ready().await;
    }
    put_policy(
        &nodes[0],
        management,
        "reader",
        json!([{"resource": "kv", "match": "", "access": "read"}]),
    )
    .await;
    let (accessor, secret) =
        token_with(&nodes[0], management, json!({"policies": ["reader"]})).await;
    for node in &nodes {
        wait_accepted(node, &secret).await;
    }
    // A stream opened with the token before it is deleted.
    let mut watch = nodes[2]
        .client()
        .get(nodes[2].url("/v1/watch?prefix="))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("opening a watch");
    assert_eq!(watch.status(), StatusCode::OK);
    let deleted = call(
        &nodes[1],
        Some(management),
        Method::DELETE,
        &format!("/v1/acl/tokens/{accessor}"),
        &Value::Null,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.describe());
    for node in &nodes {
        wait_for(SPREAD, "the deleted token to be refused", || async {
            let reply = call(node, Some(&secret), Method::GET, "/v1/kv/a", &Value::Null).await;
            match reply.status.as_u16() {
                401 => Ok(()),
                _ => Err(reply.describe()),
            }
        })
        .await;
    }
    // The open stream ends too.
    let ended = tokio::time::timeout(SPREAD, async {
        while let Ok(Some(_)) = watch.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "a watch opened with the deleted token stays open"
    );

    // A token that expires works until then, on every node.
    let (_, brief) = token_with(
        &nodes[0],
        management,
        json!({"policies": ["reader"], "expires_in_secs": 2}),
    )
    .await;
    for node in &nodes {
        wait_for(SPREAD, "the expired token to be refused", || async {
            let reply = call(node, Some(&brief), Method::GET, "/v1/kv/a", &Value::Null).await;
            match (
                reply.status.as_u16(),
                reply.body["error"]["message"].as_str(),
            ) {
                (401, Some("the token expired")) => Ok(()),
                _ => Err(reply.describe()),
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_reachable_beyond_loopback_needs_acls_or_an_explicit_waiver() {
    let mut open = NodeProcess::builder()
        .listen_host("0.0.0.0")
        .args(&[
            "--advertise-rpc",
            "127.0.0.1:1",
            "--advertise-gossip",
            "127.0.0.1:1",
        ])
        .spawn()
        .expect("spawning shoal");
    let status = open
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("it exits");
    let log = open.log_tail(20);
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("--insecure-no-auth") && log.contains("--acl"),
        "{log}"
    );
    for waiver in [["--insecure-no-auth"], ["--acl"]] {
        let mut node = NodeProcess::builder()
            .listen_host("0.0.0.0")
            .args(&[
                "--advertise-rpc",
                "127.0.0.1:1",
                "--advertise-gossip",
                "127.0.0.1:1",
            ])
            .args(&waiver)
            .spawn()
            .expect("spawning shoal");
        node.wait_ready().await.expect("the node starts");
    }
}

/// The value of `field:` in `shoal acl` output.
fn field_of(output: &CliOutput, field: &str) -> String {
    output
        .lines()
        .iter()
        .find_map(|line| {
            line.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {field}: in {}", output.stdout_text()))
}

/// `shoal --endpoint ENDPOINT ARGS...` with `SHOAL_TOKEN` set to `token`.
async fn shoal_as(endpoint: &str, token: Option<&str>, args: &[&str]) -> CliOutput {
    let mut all = args.to_vec();
    all.extend(["--endpoint", endpoint]);
    let env: Vec<(&str, &str)> = token.map(|t| vec![("SHOAL_TOKEN", t)]).unwrap_or_default();
    run_shoal(&all, None, &env).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_bootstraps_and_manages_tokens() {
    let node = acl_node().await;
    let endpoint = node.endpoint();
    let bootstrap = shoal_as(&endpoint, None, &["acl", "bootstrap"]).await;
    bootstrap.assert_success();
    let admin = field_of(&bootstrap, "secret");
    shoal_as(&endpoint, None, &["acl", "bootstrap"])
        .await
        .assert_clean_failure();
    shoal_as(
        &endpoint,
        Some(&admin),
        &["acl", "policy", "create", "app", "--rule", "kv:app/:read"],
    )
    .await
    .assert_success();
    shoal_as(
        &endpoint,
        Some(&admin),
        &["acl", "role", "create", "apps", "--policy", "app"],
    )
    .await
    .assert_success();
    let created = shoal_as(
        &endpoint,
        Some(&admin),
        &[
            "acl",
            "token",
            "create",
            "--role",
            "apps",
            "--expires-in",
            "1h",
        ],
    )
    .await;
    created.assert_success();
    let (accessor, secret) = (
        field_of(&created, "accessor_id"),
        field_of(&created, "secret"),
    );
    let listed = shoal_as(&endpoint, Some(&admin), &["acl", "token", "ls"]).await;
    assert!(
        listed.stdout_text().contains(&accessor),
        "{}",
        listed.stdout_text()
    );
    assert!(!listed.stdout_text().contains(&secret), "ls shows a secret");
    shoal_as(&endpoint, Some(&admin), &["kv", "put", "app/x", "1"])
        .await
        .assert_success();
    let read = shoal_as(&endpoint, Some(&secret), &["kv", "get", "app/x"]).await;
    assert_eq!(read.stdout_text().trim(), "1");
    let refused = shoal_as(&endpoint, Some(&secret), &["kv", "put", "app/x", "2"]).await;
    refused.assert_clean_failure();
    assert!(
        refused.stderr.contains("permission_denied"),
        "{}",
        refused.stderr
    );
    let whoami = shoal_as(&endpoint, Some(&secret), &["acl", "whoami"]).await;
    assert!(
        whoami.stdout_text().contains(&accessor),
        "{}",
        whoami.stdout_text()
    );
    shoal_as(
        &endpoint,
        Some(&admin),
        &["acl", "token", "delete", &accessor],
    )
    .await
    .assert_success();
    let revoked = shoal_as(&endpoint, Some(&secret), &["kv", "get", "app/x"]).await;
    revoked.assert_clean_failure();
    assert!(
        revoked.stderr.contains("unauthorized"),
        "{}",
        revoked.stderr
    );
}

/// Membership changes the cluster makes by itself are in the audit trail,
/// by the accessor `cluster`.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_audits_the_membership_changes_it_makes_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("management-token");
    let management = "shoal_initial-management-secret-for-the-audit";
    std::fs::write(&file, format!("{management}\n")).expect("write the token file");
    let file = file.display().to_string();
    let plan = shoal_testkit::ClusterPlan::new(3).expect("ports");
    let args = [
        "--acl",
        "--initial-management-token-file",
        &file,
        "--dead-node-grace-secs",
        "2",
    ];
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::from_process(plan.node(i).args(&args).spawn().expect("spawn")))
        .collect();
    for node in &mut nodes {
        node.wait_ready().await;
    }
    let status = |i: usize| {
        call(
            &nodes[i],
            Some(management),
            Method::GET,
            "/v1/cluster",
            &Value::Null,
        )
    };
    let leader_id = wait_for(Duration::from_secs(30), "a leader", || async {
        opt_num(&status(0).await.body, "/leader").ok_or_else(|| "no leader yet".to_string())
    })
    .await;
    let mut ids = Vec::new();
    for node in &nodes {
        let reply = call(
            node,
            Some(management),
            Method::GET,
            "/v1/status",
            &Value::Null,
        )
        .await;
        ids.push(num(&reply.body, "/node_id"));
    }
    let leader = ids
        .iter()
        .position(|id| *id == leader_id)
        .expect("the leader is a node");
    let victim = (leader + 1) % 3;
    let victim_id = ids[victim];
    nodes[victim].kill9();
    let want = format!("membership: removed dead voter {victim_id}");
    let record = wait_for(Duration::from_secs(60), &want, || async {
        let reply = call(
            &nodes[leader],
            Some(management),
            Method::GET,
            "/v1/logs/search?stream=audit&q=membership&limit=100",
            &Value::Null,
        )
        .await;
        hits_of(&reply.body)
            .into_iter()
            .find(|hit| text(hit, "/message").starts_with(&want))
            .ok_or_else(|| reply.describe())
    })
    .await;
    let attributes = &record["attributes"];
    assert_eq!(attributes["accessor_id"], json!("cluster"), "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publishing_websocket_follows_its_tokens_policy_as_it_changes() {
    let (node, admin) = managed_node().await;
    let both = json!([
        {"resource": "topic", "match": "orders.>", "access": "write"},
        {"resource": "topic", "match": "metrics.>", "access": "write"},
    ]);
    put_policy(&node, &admin, "publisher", both).await;
    let (_, secret) = token_with(&node, &admin, json!({"policies": ["publisher"]})).await;
    let connect = |query: Vec<(&'static str, String)>| {
        let mut query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        query.push(("access_token", &secret));
        let url = node.ws_url("/v1/publish/ws", &query);
        async move { ws::ws_connect(&url).await.expect("publish socket") }
    };
    let mut fixed = connect(vec![("topic", "orders.created".to_string())]).await;
    let mut named = connect(Vec::new()).await;
    fixed.send_binary(b"before").await;
    named
        .send_text(&json!({"topic": "orders.created", "data": "before"}).to_string())
        .await;

    // The policy loses orders.>: the socket fixed on orders.created closes,
    // and the other refuses a frame for orders.created but not for metrics.
    put_policy(
        &node,
        &admin,
        "publisher",
        json!([{"resource": "topic", "match": "metrics.>", "access": "write"}]),
    )
    .await;
    let (code, reason) = fixed.expect_close(SPREAD).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("no longer publish"), "{reason}");
    // The socket checks the policy every second; past that, frames meet the new one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    named
        .send_text(&json!({"topic": "metrics.cpu", "data": 1}).to_string())
        .await;
    named
        .send_text(&json!({"topic": "orders.created", "data": "after"}).to_string())
        .await;
    let (code, reason) = named.expect_close(SPREAD).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("orders.created"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_may_name_only_a_password_key_its_token_may_read() {
    let (node, admin) = managed_node().await;
    put_policy(
        &node,
        &admin,
        "db-admin",
        json!([
            {"resource": "delivery", "match": "databases/", "access": "write"},
            {"resource": "kv", "match": "secrets/shop", "access": "read"},
        ]),
    )
    .await;
    let (_, token) = token_with(&node, &admin, json!({"policies": ["db-admin"]})).await;
    let database =
        |key: &str| json!({"url": "postgres://shoal@db.example.com/shop", "password_key": key});
    // The node would send another key's value to a server of the token's
    // choosing: refused, and nothing is stored.
    let reply = call(
        &node,
        Some(&token),
        Method::PUT,
        "/v1/databases/shop",
        &database("secrets/payments"),
    )
    .await;
    let error = assert_error(&reply, 403, "permission_denied");
    assert_eq!(error["error"]["resource"], "kv", "{error}");
    let reply = call(
        &node,
        Some(&admin),
        Method::GET,
        "/v1/databases/shop",
        &Value::Null,
    )
    .await;
    assert_error(&reply, 404, "not_found");
    let reply = call(
        &node,
        Some(&token),
        Method::PUT,
        "/v1/databases/shop",
        &database("secrets/shop"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
}
