//! Durable messaging, malformed definitions: bad webhooks, routes and
//! bridges are rejected with precise errors.

use base64::Engine;
use shoal_tests::delivery_support::*;
use shoal_tests::*;

// ----- malformed definitions ---------------------------------------------

/// One bad request: (what, method, path, body, status, error code).
type Case = (
    &'static str,
    Method,
    String,
    Option<String>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread")]
async fn malformed_definitions_are_rejected() {
    let node = Node::start().await;
    let url = "http://127.0.0.1:9/hook";
    let short_key = base64::engine::general_purpose::STANDARD.encode([7u8; 8]);
    let long_name = "n".repeat(129);
    let too_many: Vec<String> = (0..17).map(|i| format!("topic:t.{i}")).collect();

    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // webhooks
        ("ftp url", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": "ftp://x/hook"}).to_string()), 400, "bad_request"),
        ("url not a url", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": "not a url"}).to_string()), 400, "bad_request"),
        ("url not a string", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": 5}).to_string()), 400, "bad_request"),
        ("no url", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"pattern": "a.*"}).to_string()), 400, "bad_request"),
        ("bad pattern", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "pattern": "orders.*x"}).to_string()), 400, "bad_request"),
        ("> not last", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "pattern": "a.>.b"}).to_string()), 400, "bad_request"),
        ("empty pattern", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "pattern": ""}).to_string()), 400, "bad_request"),
        ("secret without whsec_", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "secret": "abc"}).to_string()), 400, "bad_request"),
        ("secret not base64", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "secret": "whsec_!!!"}).to_string()), 400, "bad_request"),
        ("secret too short", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "secret": format!("whsec_{short_key}")}).to_string()), 400, "bad_request"),
        ("empty schedule", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "retry_schedule_ms": []}).to_string()), 400, "bad_request"),
        ("schedule too long", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "retry_schedule_ms": vec![0; 33]}).to_string()), 400, "bad_request"),
        ("negative delay", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "retry_schedule_ms": [-1]}).to_string()), 400, "bad_request"),
        ("timeout too small", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "timeout_ms": 10}).to_string()), 400, "bad_request"),
        ("unknown field", Method::PUT, "/v1/webhooks/w".into(), Some(json!({"url": url, "colour": "red"}).to_string()), 400, "bad_request"),
        ("array body", Method::PUT, "/v1/webhooks/w".into(), Some("[1, 2]".into()), 400, "bad_request"),
        ("not JSON", Method::PUT, "/v1/webhooks/w".into(), Some("{url".into()), 400, "bad_request"),
        ("empty body", Method::PUT, "/v1/webhooks/w".into(), Some(String::new()), 400, "bad_request"),
        ("name with a space", Method::PUT, "/v1/webhooks/a%20b".into(), Some(json!({"url": url}).to_string()), 400, "bad_request"),
        ("name with a slash", Method::PUT, "/v1/webhooks/a%2Fb".into(), Some(json!({"url": url}).to_string()), 400, "bad_request"),
        ("name not ASCII", Method::PUT, "/v1/webhooks/%C3%A9".into(), Some(json!({"url": url}).to_string()), 400, "bad_request"),
        ("name too long", Method::PUT, format!("/v1/webhooks/{long_name}"), Some(json!({"url": url}).to_string()), 400, "bad_request"),
        ("bad name (GET)", Method::GET, "/v1/webhooks/a%20b".into(), None, 400, "bad_request"),
        ("bad scope", Method::GET, "/v1/webhooks/w/dead-letters?scope=everywhere".into(), None, 400, "bad_request"),
        ("bad limit", Method::GET, "/v1/webhooks/w/dead-letters?limit=0".into(), None, 400, "bad_request"),
        ("replay: unknown field", Method::POST, "/v1/webhooks/w/dead-letters/replay".into(), Some(json!({"all": true}).to_string()), 400, "bad_request"),
        ("replay: only not a list", Method::POST, "/v1/webhooks/w/dead-letters/replay".into(), Some(json!({"only": "x"}).to_string()), 400, "bad_request"),
        ("replay: not JSON", Method::POST, "/v1/webhooks/w/dead-letters/replay".into(), Some("only".into()), 400, "bad_request"),
        // routes
        ("no destinations", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": []}).to_string()), 400, "bad_request"),
        ("destinations missing", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*"}).to_string()), 400, "bad_request"),
        ("17 destinations", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": too_many}).to_string()), 400, "bad_request"),
        ("unknown destination kind", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": ["queue:x"]}).to_string()), 400, "bad_request"),
        ("destination without kind", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": ["audit"]}).to_string()), 400, "bad_request"),
        ("wildcard topic destination", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": ["topic:a.*"]}).to_string()), 400, "bad_request"),
        ("empty topic destination", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": ["topic:"]}).to_string()), 400, "bad_request"),
        ("bad webhook destination", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": ["webhook:a/b"]}).to_string()), 400, "bad_request"),
        ("bad kafka destination", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": ["kafka:a topic"]}).to_string()), 400, "bad_request"),
        ("destination not a string", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": [1]}).to_string()), 400, "bad_request"),
        ("bad source", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a..b", "destinations": ["topic:x"]}).to_string()), 400, "bad_request"),
        ("pointer without /", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "filter": {"json": {"pointer": "region", "equals": "eu"}}, "destinations": ["topic:x"]}).to_string()), 400, "bad_request"),
        ("unknown filter", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "filter": {"regex": "x"}, "destinations": ["topic:x"]}).to_string()), 400, "bad_request"),
        ("header filter without equals", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "filter": {"header": {"name": "x"}}, "destinations": ["topic:x"]}).to_string()), 400, "bad_request"),
        ("unknown route field", Method::PUT, "/v1/routes/r".into(), Some(json!({"source": "a.*", "destinations": ["topic:x"], "enabled": true}).to_string()), 400, "bad_request"),
        ("bad route name", Method::PUT, "/v1/routes/r%3Fx".into(), Some(json!({"source": "a.*", "destinations": ["topic:x"]}).to_string()), 400, "bad_request"),
        // bridges
        ("bad kafka topic", Method::PUT, "/v1/bridges/k".into(), Some(json!({"kafka_topic": "a topic", "topic": "x"}).to_string()), 400, "bad_request"),
        ("kafka topic ..", Method::PUT, "/v1/bridges/k".into(), Some(json!({"kafka_topic": "..", "topic": "x"}).to_string()), 400, "bad_request"),
        ("wildcard bridge topic", Method::PUT, "/v1/bridges/k".into(), Some(json!({"kafka_topic": "orders", "topic": "x.*"}).to_string()), 400, "bad_request"),
        ("bridge without topic", Method::PUT, "/v1/bridges/k".into(), Some(json!({"kafka_topic": "orders"}).to_string()), 400, "bad_request"),
        ("unknown bridge field", Method::PUT, "/v1/bridges/k".into(), Some(json!({"kafka_topic": "orders", "topic": "x", "group": "g"}).to_string()), 400, "bad_request"),
        // missing definitions
        ("GET missing webhook", Method::GET, "/v1/webhooks/nope".into(), None, 404, "not_found"),
        ("DELETE missing webhook", Method::DELETE, "/v1/webhooks/nope".into(), None, 404, "not_found"),
        ("GET missing route", Method::GET, "/v1/routes/nope".into(), None, 404, "not_found"),
        ("DELETE missing route", Method::DELETE, "/v1/routes/nope".into(), None, 404, "not_found"),
        ("GET missing bridge", Method::GET, "/v1/bridges/nope".into(), None, 404, "not_found"),
        ("DELETE missing bridge", Method::DELETE, "/v1/bridges/nope".into(), None, 404, "not_found"),
        // the messaging configuration's keys are written only through its endpoints
        ("kv put under _shoal/", Method::PUT, "/v1/kv/_shoal/webhooks/w".into(), Some("{}".into()), 400, "reserved_key"),
        ("kv delete under _shoal/", Method::DELETE, "/v1/kv/_shoal/routes/r".into(), None, 400, "reserved_key"),
        ("kv prefix delete covering _shoal/", Method::DELETE, "/v1/kv/_sh?prefix=true".into(), None, 400, "reserved_key"),
        ("txn put under _shoal/", Method::POST, "/v1/txn".into(), Some(json!({"success": [{"put": {"key": "_shoal/bridges/b", "value": "e30="}}]}).to_string()), 400, "reserved_key"),
        ("rollback under _shoal/", Method::POST, "/v1/rollback/_shoal/webhooks/w".into(), Some(json!({"revision": 1}).to_string()), 400, "reserved_key"),
        // Kafka without --kafka-brokers
        ("produce without brokers", Method::POST, "/v1/kafka/orders".into(), Some("x".into()), 400, "kafka_not_configured"),
    ];

    let mut failures = Vec::new();
    for (what, method, path, body, status, code) in &cases {
        let mut request = node.request(method.clone(), path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.clone());
        }
        let reply = node.send(request).await;
        if let Err(problem) = error_matches(&reply, &[(*status, &[*code])]) {
            failures.push(format!("{what} ({method} {path}): {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing was stored, and the node still answers.
    for kind in ["webhooks", "routes", "bridges"] {
        let listed = node.get_path(&format!("/v1/{kind}")).await.ok();
        assert_eq!(listed[kind], json!([]), "{kind}: {listed}");
    }
    let good = put_webhook(&node, "w", json!({"url": url})).await;
    assert_eq!(
        good["retry_schedule_ms"].as_array().map(Vec::len),
        Some(8),
        "default schedule: {good}"
    );
}
