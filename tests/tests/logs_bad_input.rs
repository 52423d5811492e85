//! Malformed requests to the logs and traces endpoints (own API ingest,
//! search, aggregate, tail, traces, Jaeger, Elasticsearch `_bulk`, OTLP/HTTP):
//! each gets its 4xx with a JSON error (`error.code`, `error.message`, and
//! `error.type` for the Elasticsearch ones), `_bulk` items fail one by one,
//! and the node stays up. See `docs/logs.md`.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_tests::*;

/// Where a hostile request goes.
#[derive(Clone, Copy, PartialEq)]
enum Port {
    Api,
    OtlpHttp,
}

struct Bad {
    name: &'static str,
    port: Port,
    method: Method,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// An Elasticsearch-shaped error: also `error.type` (= the code).
    es: bool,
}

fn bad(
    name: &'static str,
    method: Method,
    path: impl Into<String>,
    status: u16,
    code: &'static str,
) -> Bad {
    Bad {
        name,
        port: Port::Api,
        method,
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
        status,
        code,
        es: false,
    }
}

impl Bad {
    fn body(mut self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Bad {
        self.headers.push(("content-type", content_type));
        self.body = body.into();
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Bad {
        self.headers.push((name, value));
        self
    }

    fn otlp(mut self) -> Bad {
        self.port = Port::OtlpHttp;
        self
    }

    fn es(mut self) -> Bad {
        self.es = true;
        self
    }
}

fn get(name: &'static str, path: impl Into<String>, status: u16, code: &'static str) -> Bad {
    bad(name, Method::GET, path, status, code)
}

fn post(name: &'static str, path: impl Into<String>, status: u16, code: &'static str) -> Bad {
    bad(name, Method::POST, path, status, code)
}

/// A gzip header followed by bytes that are not deflate data.
const BROKEN_GZIP: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01,
];

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_json_errors_and_the_node_stays_up() {
    let node = Node::builder()
        .otlp()
        .args(&["--logs-max-body-mb", "1"])
        .start()
        .await;
    let long_stream = "a".repeat(65);
    let over_limit = vec![b'x'; (1 << 20) + 1024];
    let bomb = gzip(&"y".repeat(3 << 20).into_bytes());
    let many_lines = "a\n".repeat(100_001);
    let long_query = format!("q={}", "a".repeat(5000));
    let unknown_trace = "0123456789abcdef0123456789abcdef";
    let record = br#"{"message":"x"}"#.to_vec();
    let cases = vec![
        // Ingest through the own API.
        post("upper-case stream", "/v1/logs/Bad", 400, "invalid_stream")
            .body("application/json", record.clone()),
        post(
            "stream starting with _",
            "/v1/logs/_x",
            400,
            "invalid_stream",
        )
        .body("application/json", record.clone()),
        post(
            "stream of 65 bytes",
            format!("/v1/logs/{long_stream}"),
            400,
            "invalid_stream",
        )
        .body("application/json", record.clone()),
        post(
            "stream with a space",
            "/v1/logs/a%20b",
            400,
            "invalid_stream",
        )
        .body("application/json", record.clone()),
        post("empty body", "/v1/logs/ok", 400, "bad_request"),
        post("blank lines only", "/v1/logs/ok", 400, "bad_request")
            .body("application/x-ndjson", "\n  \n\n"),
        post("broken array", "/v1/logs/ok", 400, "bad_request").body("application/json", "[1,2"),
        post("not UTF-8", "/v1/logs/ok", 400, "bad_request").body(
            "application/x-ndjson",
            b"{\"message\":\"\xff\xfe\"}\n".to_vec(),
        ),
        post(
            "gzip header, garbage body",
            "/v1/logs/ok",
            400,
            "bad_request",
        )
        .body("application/x-ndjson", BROKEN_GZIP)
        .header("content-encoding", "gzip"),
        post(
            "unsupported encoding",
            "/v1/logs/ok",
            415,
            "unsupported_encoding",
        )
        .body("application/x-ndjson", record.clone())
        .header("content-encoding", "br"),
        post(
            "body over --logs-max-body-mb",
            "/v1/logs/ok",
            413,
            "payload_too_large",
        )
        .body("text/plain", over_limit.clone()),
        post(
            "gzip body inflating past the limit",
            "/v1/logs/ok",
            413,
            "payload_too_large",
        )
        .body("text/plain", bomb.clone())
        .header("content-encoding", "gzip"),
        post(
            "over 100000 records",
            "/v1/logs/ok",
            413,
            "too_many_records",
        )
        .body("text/plain", many_lines),
        // Search.
        get(
            "bad kind",
            "/v1/logs/search?kind=metric",
            400,
            "bad_request",
        ),
        get(
            "bad order",
            "/v1/logs/search?order=sideways",
            400,
            "bad_request",
        ),
        get("limit 0", "/v1/logs/search?limit=0", 400, "bad_request"),
        get(
            "limit 10001",
            "/v1/logs/search?limit=10001",
            400,
            "bad_request",
        ),
        get(
            "limit not a number",
            "/v1/logs/search?limit=ten",
            400,
            "bad_request",
        ),
        get(
            "bad cursor",
            "/v1/logs/search?cursor=zz",
            400,
            "invalid_query",
        ),
        get(
            "cursor with too many parts",
            "/v1/logs/search?cursor=1-2-3-4",
            400,
            "invalid_query",
        ),
        get(
            "unparseable query",
            "/v1/logs/search?q=message%3A%28",
            400,
            "invalid_query",
        ),
        get(
            "unknown field",
            "/v1/logs/search?q=nosuchfield%3Ax",
            400,
            "invalid_query",
        ),
        get(
            "only a negation",
            "/v1/logs/search?q=NOT%20x",
            400,
            "invalid_query",
        ),
        get(
            "query over 4096 bytes",
            format!("/v1/logs/search?{long_query}"),
            400,
            "invalid_query",
        ),
        get(
            "since after until",
            "/v1/logs/search?since=1h&until=2h",
            400,
            "invalid_query",
        ),
        get(
            "since equals until",
            "/v1/logs/search?since=1700000000&until=1700000000",
            400,
            "invalid_query",
        ),
        get(
            "bad duration",
            "/v1/logs/search?since=5x",
            400,
            "bad_request",
        ),
        get(
            "bad time",
            "/v1/logs/search?until=tomorrow",
            400,
            "bad_request",
        ),
        get(
            "bad stream filter",
            "/v1/logs/search?stream=Bad",
            400,
            "invalid_stream",
        ),
        get(
            "bad trace id filter",
            "/v1/logs/search?trace_id=xyz",
            400,
            "bad_request",
        ),
        get(
            "bad min_duration",
            "/v1/logs/search?kind=span&min_duration=fast",
            400,
            "bad_request",
        ),
        post(
            "search body not an object",
            "/v1/logs/search",
            400,
            "bad_request",
        )
        .body("application/json", "[1]"),
        post(
            "search body not JSON",
            "/v1/logs/search",
            400,
            "bad_request",
        )
        .body("application/json", "{bad"),
        post(
            "search body with an object value",
            "/v1/logs/search",
            400,
            "bad_request",
        )
        .body("application/json", r#"{"q":{"a":1}}"#),
        // Aggregations.
        get(
            "too many buckets",
            "/v1/logs/aggregate?interval=1ms",
            400,
            "invalid_query",
        ),
        get(
            "interval 0",
            "/v1/logs/aggregate?interval=0",
            400,
            "invalid_query",
        ),
        get(
            "bad interval",
            "/v1/logs/aggregate?interval=soon",
            400,
            "bad_request",
        ),
        get(
            "unknown top field",
            "/v1/logs/aggregate?top=message",
            400,
            "invalid_query",
        ),
        get(
            "bad top_n",
            "/v1/logs/aggregate?top=level&top_n=-1",
            400,
            "bad_request",
        ),
        // Tail, traces, Jaeger.
        get(
            "tail with a bad kind",
            "/v1/logs/tail?kind=metric",
            400,
            "bad_request",
        ),
        get(
            "tail with a bad query",
            "/v1/logs/tail?q=message%3A%28",
            400,
            "invalid_query",
        ),
        get(
            "tail with a bad backlog",
            "/v1/logs/tail?backlog=many",
            400,
            "bad_request",
        ),
        get("trace id not hex", "/v1/traces/zzz", 400, "bad_request"),
        get(
            "trace id too long",
            format!("/v1/traces/{unknown_trace}00"),
            400,
            "bad_request",
        ),
        get(
            "unknown trace",
            format!("/v1/traces/{unknown_trace}"),
            404,
            "trace_not_found",
        ),
        get(
            "jaeger: trace id not hex",
            "/api/traces/zzz",
            400,
            "bad_request",
        ),
        get(
            "jaeger: unknown trace",
            format!("/api/traces/{unknown_trace}"),
            404,
            "trace_not_found",
        ),
        get(
            "jaeger: operations without a service",
            "/api/operations",
            400,
            "bad_request",
        ),
        get(
            "jaeger: start not a number",
            "/api/traces?service=x&start=yesterday",
            400,
            "bad_request",
        ),
        get(
            "jaeger: tags not JSON",
            "/api/traces?service=x&tags=oops",
            400,
            "bad_request",
        ),
        get(
            "jaeger: tag key with a colon",
            "/api/traces?service=x&tags=%7B%22a%3Ab%22%3A%221%22%7D",
            400,
            "bad_request",
        ),
        get(
            "jaeger: bad lookback",
            "/api/traces?service=x&lookback=ages",
            400,
            "bad_request",
        ),
        // Elasticsearch _bulk: request-level errors in Elasticsearch's shape.
        post(
            "bulk: malformed action line",
            "/_bulk",
            400,
            "illegal_argument_exception",
        )
        .body("application/x-ndjson", "{not json\n{}\n")
        .es(),
        post(
            "bulk: two actions on one line",
            "/_bulk",
            400,
            "illegal_argument_exception",
        )
        .body("application/x-ndjson", "{\"index\":{},\"create\":{}}\n{}\n")
        .es(),
        post(
            "bulk: unknown action",
            "/_bulk",
            400,
            "illegal_argument_exception",
        )
        .body(
            "application/x-ndjson",
            "{\"upsert\":{\"_index\":\"x\"}}\n{}\n",
        )
        .es(),
        post(
            "bulk: action without a source line",
            "/_bulk",
            400,
            "illegal_argument_exception",
        )
        .body("application/x-ndjson", "{\"index\":{\"_index\":\"x\"}}\n")
        .es(),
        post(
            "bulk: empty body",
            "/_bulk",
            400,
            "action_request_validation_exception",
        )
        .es(),
        post("bulk: not UTF-8", "/_bulk", 400, "parse_exception")
            .body("application/x-ndjson", b"{\"index\":{}}\n\xff\n".to_vec())
            .es(),
        post(
            "bulk: gzip header, garbage body",
            "/logs/_bulk",
            400,
            "bad_request",
        )
        .body("application/x-ndjson", BROKEN_GZIP)
        .header("content-encoding", "gzip")
        .es(),
        post(
            "bulk: unsupported encoding",
            "/logs/_bulk",
            415,
            "unsupported_encoding",
        )
        .body("application/x-ndjson", "{\"index\":{}}\n{}\n")
        .header("content-encoding", "br")
        .es(),
        post(
            "bulk: body over the limit",
            "/_bulk",
            413,
            "payload_too_large",
        )
        .body("application/x-ndjson", over_limit.clone())
        .es(),
        // OTLP/HTTP.
        post(
            "otlp: unsupported content type",
            "/v1/logs",
            415,
            "unsupported_media_type",
        )
        .body("text/plain", "hello")
        .otlp(),
        post("otlp: garbage protobuf", "/v1/logs", 400, "bad_request")
            .body("application/x-protobuf", "garbage!!")
            .otlp(),
        post(
            "otlp: garbage protobuf spans",
            "/v1/traces",
            400,
            "bad_request",
        )
        .body("application/x-protobuf", "garbage!!")
        .otlp(),
        post("otlp: invalid JSON", "/v1/logs", 400, "bad_request")
            .body("application/json", "{\"resourceLogs\": [")
            .otlp(),
        post(
            "otlp: JSON of the wrong shape",
            "/v1/traces",
            400,
            "bad_request",
        )
        .body("application/json", "{\"resourceSpans\": 5}")
        .otlp(),
        post("otlp: gzip garbage", "/v1/logs", 400, "bad_request")
            .body("application/x-protobuf", BROKEN_GZIP)
            .header("content-encoding", "gzip")
            .otlp(),
        post(
            "otlp: unsupported encoding",
            "/v1/logs",
            415,
            "unsupported_encoding",
        )
        .body("application/x-protobuf", "")
        .header("content-encoding", "br")
        .otlp(),
        post(
            "otlp: body over the limit",
            "/v1/logs",
            413,
            "payload_too_large",
        )
        .body("application/x-protobuf", over_limit.clone())
        .otlp(),
        post("otlp: unknown path", "/v1/metrics", 404, "not_found")
            .body("application/x-protobuf", "")
            .otlp(),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let base = match case.port {
            Port::Api => node.endpoint(),
            Port::OtlpHttp => node.otlp_http_endpoint(),
        };
        let mut request = node
            .client()
            .request(case.method.clone(), format!("{base}{}", case.path))
            .timeout(Duration::from_secs(15))
            .body(case.body.clone());
        for (name, value) in &case.headers {
            request = request.header(*name, *value);
        }
        let reply = match node.try_send(request).await {
            Ok(reply) => reply,
            Err(e) => {
                failures.push(format!("{}: no answer: {e}", case.name));
                continue;
            }
        };
        let mut problems = Vec::new();
        if reply.status.as_u16() != case.status {
            problems.push(format!(
                "status {} instead of {}",
                reply.status, case.status
            ));
        }
        if reply.body["error"]["code"] != case.code {
            problems.push(format!(
                "code {} instead of {}",
                reply.body["error"]["code"], case.code
            ));
        }
        if reply.body["error"]["message"]
            .as_str()
            .is_none_or(|m| m.is_empty())
        {
            problems.push("no error.message".to_string());
        }
        if case.es && reply.body["error"]["type"] != case.code {
            problems.push(format!(
                "error.type {} instead of {}",
                reply.body["error"]["type"], case.code
            ));
        }
        if case.status == 429 && reply.headers.get("retry-after").is_none() {
            problems.push("no Retry-After".to_string());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} (got {})",
                case.name,
                problems.join(", "),
                reply.describe()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Per-item failures in _bulk: delete and update are refused one by one,
    // bad index names too; the rest of the request is stored.
    let body = concat!(
        "{\"delete\":{\"_index\":\"bulkbad\",\"_id\":\"1\"}}\n",
        "{\"update\":{\"_index\":\"bulkbad\",\"_id\":\"1\"}}\n",
        "{\"doc\":{\"message\":\"x\"}}\n",
        "{\"index\":{\"_index\":\"Bad\"}}\n",
        "{\"message\":\"bad index\"}\n",
        "{\"index\":{}}\n",
        "{\"message\":\"no index\"}\n",
        "{\"create\":{\"_index\":\"bulkbad\",\"_id\":\"7\"}}\n",
        "{\"message\":\"bulk survivor\"}\n",
        "{\"index\":{\"_index\":\"bulkbad\"}}\n",
        "not a document\n",
    );
    let request = node
        .request(Method::POST, "/_bulk")
        .header("content-type", "application/x-ndjson")
        .body(body);
    let answer = node.send(request).await.ok();
    assert_eq!(answer["errors"], true, "{answer}");
    let items = answer["items"].as_array().expect("items");
    let summary: Vec<(String, u64, String)> = items
        .iter()
        .map(|item| {
            let (op, inner) = item.as_object().unwrap().iter().next().unwrap();
            (
                op.clone(),
                num(inner, "/status"),
                inner["error"]["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want = [
        ("delete", 400, "action_request_validation_exception"),
        ("update", 400, "action_request_validation_exception"),
        ("index", 400, "invalid_index_name_exception"),
        ("index", 400, "action_request_validation_exception"),
        ("create", 201, ""),
        ("index", 400, "document_parsing_exception"),
    ];
    let want: Vec<(String, u64, String)> = want
        .iter()
        .map(|(o, s, t)| (o.to_string(), *s, t.to_string()))
        .collect();
    assert_eq!(summary, want, "{answer}");
    assert_eq!(items[4]["create"]["_id"], "7");
    assert_eq!(items[4]["create"]["_index"], "bulkbad");
    assert!(items
        .iter()
        .filter(|i| i.as_object().unwrap().values().next().unwrap()["status"] == 400)
        .all(|i| {
            i.as_object().unwrap().values().next().unwrap()["error"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        }));

    // Times at the ends of i64 are answered like any other window (before,
    // start=i64::MAX overflowed and dropped the connection).
    for path in [
        "/api/traces?service=x&start=9223372036854775807",
        "/api/traces?service=x&end=-9223372036854775808",
        "/api/traces?service=x&start=-9223372036854775808&end=9223372036854775807",
        "/v1/logs/aggregate?since=9223372036854775000&until=9223372036854775807&interval=1s",
    ] {
        let reply = node.get_path(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.describe());
    }

    // The node is still up and works.
    let health = node.get_path("/health").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.describe());
    node.ingest_records("ok", &[json!({"message": "still fine"})])
        .await;
    let hits = node.wait_hits(&[("stream", "ok,bulkbad")], 2).await;
    let got: BTreeSet<String> = messages(&hits).into_iter().collect();
    assert_eq!(
        got,
        BTreeSet::from(["still fine".to_string(), "bulk survivor".to_string()])
    );
}
