//! Shipping logs and traces the way real clients do: the official
//! OpenTelemetry Python SDK over OTLP/HTTP (plain and gzip) and OTLP/gRPC,
//! hand-written OTLP/JSON, the official Elasticsearch Python client, and
//! `shoal logs ingest` following files across rotation and restarts; read
//! back through search, `/v1/traces`, the Jaeger API and `shoal logs`.
//! The Python clients come from `./scripts/setup` (see `tests/py/`).

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use shoal_tests::python::run_python;
use shoal_tests::*;

/// The last stdout line of a script, as JSON, asserting it succeeded.
fn script_result(output: &CliOutput, what: &str) -> Value {
    output.assert_success();
    let lines = output.lines();
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("{what}: no output; stderr: {}", output.stderr));
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{what}: last line is not JSON ({e}): {last}"))
}

/// The ids `tests/py/otel_export.py` created.
struct Exported {
    trace_id: String,
    root_span_id: String,
    child_span_id: String,
}

async fn otel_export(args: &[&str]) -> Exported {
    let output = run_python("otel_export.py", args).await;
    let result = script_result(&output, "otel_export.py");
    assert_eq!(
        (
            result["spans_exported"].as_u64(),
            result["logs_exported"].as_u64()
        ),
        (Some(2), Some(3)),
        "{result}"
    );
    let id = |name: &str, len: usize| {
        let id = text(&result, &format!("/{name}")).to_string();
        assert_eq!(id.len(), len, "{name}: {result}");
        id
    };
    Exported {
        trace_id: id("trace_id", 32),
        root_span_id: id("root_span_id", 16),
        child_span_id: id("child_span_id", 16),
    }
}

#[track_caller]
fn one_with<'a>(hits: &'a [Value], message: &str) -> &'a Value {
    let found: Vec<&Value> = hits.iter().filter(|h| h["message"] == message).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one record {message:?} in {hits:?}"
    );
    found[0]
}

/// The Jaeger API's `data` array.
async fn jaeger(node: &Node, path: &str) -> Vec<Value> {
    let answer = node.get_path(path).await.ok();
    answer["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: no data array: {answer}"))
        .clone()
}

/// Everything the SDK sent is stored, searchable and assembled into traces.
async fn check_otel_export(node: &Node, service: &str, exported: &Exported) {
    let trace_id = exported.trace_id.as_str();
    // Log records, in the stream named after service.name.
    let logs = node.wait_hits(&[("stream", service)], 3).await;
    for hit in &logs {
        assert_eq!(
            (hit["service"].as_str(), hit["kind"].as_str()),
            (Some(service), Some("log")),
            "{hit}"
        );
        assert_eq!(
            hit["attributes"]["resource"]["service.name"], service,
            "{hit}"
        );
        assert_eq!(
            hit["attributes"]["resource"]["deployment.environment"], "test",
            "{hit}"
        );
    }
    let placed = one_with(&logs, "order 42 placed");
    assert_eq!(placed["level"], "info", "{placed}");
    assert_eq!(placed["trace_id"], trace_id, "{placed}");
    assert_eq!(placed["span_id"], exported.root_span_id, "{placed}");
    assert_eq!(placed["attributes"]["user"], "alice", "{placed}");
    let declined = one_with(&logs, "card declined");
    assert_eq!(declined["level"], "error", "{declined}");
    assert_eq!(declined["trace_id"], trace_id, "{declined}");
    assert_eq!(declined["span_id"], exported.child_span_id, "{declined}");
    let outside = one_with(&logs, "outside any span");
    assert_eq!(outside["level"], "warn", "{outside}");
    assert!(outside.get("trace_id").is_none(), "{outside}");

    // Spans: kind=span, by service.
    let spans = node
        .wait_hits(&[("kind", "span"), ("service", service)], 2)
        .await;
    let root = one_with(&spans, "handle-order");
    assert_eq!(
        (root["stream"].as_str(), root["trace_id"].as_str()),
        (Some("traces"), Some(trace_id)),
        "{root}"
    );
    assert_eq!(root["span_id"], exported.root_span_id, "{root}");
    assert_eq!(root["span"]["kind"], "server", "{root}");
    assert_eq!(root["span"]["status"], "error", "{root}");
    assert_eq!(root["span"]["status_message"], "payment declined", "{root}");
    assert_eq!(root["span"]["parent_span_id"], "", "{root}");
    assert_eq!(root["attributes"]["order.id"], 42, "{root}");
    assert_eq!(root["level"], "error", "{root}");
    let child = one_with(&spans, "charge-card");
    assert_eq!(child["span"]["kind"], "client", "{child}");
    assert_eq!(
        child["span"]["parent_span_id"], exported.root_span_id,
        "{child}"
    );
    assert_eq!(child["span"]["status"], "unset", "{child}");
    assert_eq!(child["attributes"]["card.kind"], "visa", "{child}");
    let (root_start, root_end) = (
        root["ts_nanos"].as_i64().unwrap(),
        root["ts_nanos"].as_i64().unwrap() + root["span"]["duration_nanos"].as_i64().unwrap(),
    );
    let child_start = child["ts_nanos"].as_i64().unwrap();
    assert!(
        root_start <= child_start && child_start <= root_end,
        "the child starts within the root: {root} {child}"
    );
    let errors = node
        .wait_hits(
            &[("kind", "span"), ("service", service), ("status", "error")],
            1,
        )
        .await;
    assert_eq!(errors[0]["message"], "handle-order");

    // The whole trace: both spans and the two records inside them.
    let answer = node.get_path(&format!("/v1/traces/{trace_id}")).await.ok();
    assert_eq!(answer["trace_id"], trace_id);
    assert_eq!(answer["partial"], false, "{answer}");
    let names: BTreeSet<String> = messages(&hits_of(&json!({"hits": answer["spans"]})))
        .into_iter()
        .collect();
    assert_eq!(
        names,
        ["charge-card", "handle-order"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let records: BTreeSet<String> = messages(&hits_of(&json!({"hits": answer["logs"]})))
        .into_iter()
        .collect();
    assert_eq!(
        records,
        ["card declined", "order 42 placed"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    // The Jaeger API.
    let services = jaeger(node, "/api/services").await;
    assert!(services.contains(&json!(service)), "{services:?}");
    let operations = jaeger(node, &format!("/api/services/{service}/operations")).await;
    assert_eq!(
        operations,
        vec![json!("charge-card"), json!("handle-order")]
    );
    let operations = jaeger(node, &format!("/api/operations?service={service}")).await;
    assert_eq!(operations.len(), 2, "{operations:?}");
    assert!(
        operations.iter().all(|o| o["name"].is_string()),
        "{operations:?}"
    );
    let traces = jaeger(node, &format!("/api/traces/{trace_id}")).await;
    assert_eq!(traces.len(), 1, "{traces:?}");
    let trace = &traces[0];
    assert_eq!(trace["traceID"], trace_id);
    let spans = trace["spans"].as_array().expect("spans");
    let operation_names: BTreeSet<&str> = spans
        .iter()
        .map(|s| s["operationName"].as_str().unwrap())
        .collect();
    assert_eq!(
        operation_names,
        BTreeSet::from(["charge-card", "handle-order"])
    );
    let jaeger_root = spans
        .iter()
        .find(|s| s["operationName"] == "handle-order")
        .unwrap();
    let process = &trace["processes"][text(jaeger_root, "/processID")];
    assert_eq!(process["serviceName"], service, "{trace}");
    let tags = jaeger_root["tags"].as_array().unwrap();
    assert!(
        tags.contains(&json!({"key": "order.id", "type": "int64", "value": 42})),
        "{tags:?}"
    );
    assert!(
        tags.contains(&json!({"key": "error", "type": "bool", "value": true})),
        "{tags:?}"
    );
    let jaeger_child = spans
        .iter()
        .find(|s| s["operationName"] == "charge-card")
        .unwrap();
    assert_eq!(
        jaeger_child["references"],
        json!([{"refType": "CHILD_OF", "traceID": trace_id, "spanID": exported.root_span_id}])
    );
    assert_eq!(
        jaeger_root["duration"],
        root["span"]["duration_nanos"].as_u64().unwrap() / 1000
    );

    // Trace search with tags, operation and duration.
    let found = |query: String| async move {
        let traces = jaeger(node, &format!("/api/traces?service={service}{query}")).await;
        traces
            .iter()
            .map(|t| t["traceID"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let only = vec![trace_id.to_string()];
    assert_eq!(found(String::new()).await, only);
    assert_eq!(
        found("&tags=%7B%22order.id%22%3A%2242%22%7D".into()).await,
        only,
        "tags order.id=42"
    );
    assert_eq!(
        found("&tags=%7B%22order.id%22%3A%2243%22%7D".into()).await,
        Vec::<String>::new(),
        "tags order.id=43"
    );
    assert_eq!(found("&operation=charge-card".into()).await, only);
    assert_eq!(
        found("&operation=no-such-operation".into()).await,
        Vec::<String>::new()
    );
    assert_eq!(found("&minDuration=1h".into()).await, Vec::<String>::new());
    assert_eq!(found("&maxDuration=1h&limit=5".into()).await, only);
}

#[tokio::test(flavor = "multi_thread")]
async fn opentelemetry_sdk_over_otlp_http() {
    let node = Node::builder().otlp().start().await;
    let endpoint = node.otlp_http_endpoint();
    let exported = otel_export(&["--http", &endpoint, "--service", "otel-http"]).await;
    check_otel_export(&node, "otel-http", &exported).await;

    // `shoal logs trace` shows the same trace.
    let output = run_shoal(
        &[
            "logs",
            "trace",
            &exported.trace_id,
            "--endpoint",
            &node.endpoint(),
        ],
        None,
        &[],
    )
    .await;
    output.assert_success();
    let lines = output.lines();
    assert_eq!(lines.len(), 4, "two spans and two records: {lines:?}");
    assert!(
        lines[0].contains("span") && lines[1].contains("span"),
        "spans first: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("card declined")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn opentelemetry_sdk_over_otlp_http_with_gzip() {
    let node = Node::builder().otlp().start().await;
    let endpoint = node.otlp_http_endpoint();
    let exported = otel_export(&["--http", &endpoint, "--gzip", "--service", "otel-gzip"]).await;
    check_otel_export(&node, "otel-gzip", &exported).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn opentelemetry_sdk_over_otlp_grpc() {
    let node = Node::builder().otlp().start().await;
    let addr = node.otlp_grpc_addr();
    let exported = otel_export(&["--grpc", &addr, "--service", "otel-grpc"]).await;
    check_otel_export(&node, "otel-grpc", &exported).await;
    // And with gzip over gRPC, a second trace.
    let second = otel_export(&["--grpc", &addr, "--gzip", "--service", "otel-grpc"]).await;
    assert_ne!(second.trace_id, exported.trace_id);
    node.wait_hits(&[("stream", "otel-grpc")], 6).await;
    node.wait_hits(&[("kind", "span"), ("trace_id", &second.trace_id)], 2)
        .await;
    let answer = node
        .get_path(&format!("/v1/traces/{}", second.trace_id))
        .await
        .ok();
    assert_eq!(
        (
            answer["spans"].as_array().map(Vec::len),
            answer["logs"].as_array().map(Vec::len)
        ),
        (Some(2), Some(2)),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_json_with_numeric_times_hex_ids_and_partial_success() {
    let node = Node::builder().otlp().start().await;
    let t1 = now_nanos() - 5 * MINUTE;
    let t1 = t1 - t1 % 1_000_000_000 + 123_456_789;
    let t2 = t1 + 1_000_000;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = json!({"resourceLogs": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "Json Svc"}}]},
            "scopeLogs": [{"scope": {"name": "hand"}, "logRecords": [
                {"timeUnixNano": t1, "severityNumber": 17, "body": {"stringValue": "json number time"},
                 "traceId": trace_id.to_uppercase(), "spanId": "00f067aa0ba902b7",
                 "attributes": [{"key": "k", "value": {"intValue": "5"}}, {"key": "ok", "value": {"boolValue": true}}]},
                {"timeUnixNano": t2.to_string(), "severityText": "WARN",
                 "body": {"kvlistValue": {"values": [{"key": "a", "value": {"stringValue": "b"}}]}}},
                {"timeUnixNano": t2.to_string(), "body": {"stringValue": "short trace id"}, "traceId": "abcdef"}
            ]}]
        },
        {
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "other"}},
                {"key": "shoal.stream", "value": {"stringValue": "custom-stream"}}
            ]},
            "scopeLogs": [{"logRecords": [
                {"observedTimeUnixNano": t2.to_string(), "body": {"stringValue": "observed time only"}, "severityNumber": 5}
            ]}]
        }
    ]});
    let reply = node
        .otlp_post("/v1/logs", "application/json", body.to_string())
        .await;
    let answer = reply.ok();
    let rejected = &answer["partialSuccess"]["rejectedLogRecords"];
    assert!(rejected == &json!(1) || rejected == &json!("1"), "{answer}");
    assert!(
        text(&answer, "/partialSuccess/errorMessage").contains("trace_id"),
        "{answer}"
    );

    let hits = node.wait_hits(&[("stream", "json-svc")], 2).await;
    let first = one_with(&hits, "json number time");
    assert_eq!(first["ts_nanos"].as_i64(), Some(t1), "{first}");
    assert_eq!(
        (first["level"].as_str(), first["service"].as_str()),
        (Some("error"), Some("Json Svc")),
        "{first}"
    );
    assert_eq!(
        (first["trace_id"].as_str(), first["span_id"].as_str()),
        (Some(trace_id), Some("00f067aa0ba902b7")),
        "{first}"
    );
    assert_eq!(first["attributes"]["k"], 5, "{first}");
    assert_eq!(first["attributes"]["ok"], true, "{first}");
    assert_eq!(
        first["attributes"]["resource"],
        json!({"service.name": "Json Svc"}),
        "{first}"
    );
    let second = one_with(&hits, "{\"a\":\"b\"}");
    assert_eq!(
        (second["ts_nanos"].as_i64(), second["level"].as_str()),
        (Some(t2), Some("warn")),
        "{second}"
    );
    let custom = node.wait_hits(&[("stream", "custom-stream")], 1).await;
    assert_eq!(custom[0]["message"], "observed time only");
    assert_eq!(
        (custom[0]["ts_nanos"].as_i64(), custom[0]["level"].as_str()),
        (Some(t2), Some("debug")),
        "{}",
        custom[0]
    );
    assert_eq!(custom[0]["service"], "other");
    // The trace id finds the log record through /v1/traces too.
    let trace = node.get_path(&format!("/v1/traces/{trace_id}")).await.ok();
    assert_eq!(
        messages(&hits_of(&json!({"hits": trace["logs"]}))),
        vec!["json number time"]
    );
    assert_eq!(trace["spans"], json!([]));

    // Protobuf answers a complete success with an empty body object; JSON with {}.
    let reply = node
        .otlp_post(
            "/v1/logs",
            "application/json",
            json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "no resource"}}]}]}]}).to_string(),
        )
        .await;
    assert_eq!(reply.ok(), json!({}));
    let unknown = node.wait_hits(&[("stream", "unknown_service")], 1).await;
    assert_eq!(
        (
            unknown[0]["message"].as_str(),
            unknown[0]["service"].as_str()
        ),
        (Some("no resource"), Some("unknown_service"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_python_client_bulk() {
    let node = Node::start().await;
    let output = run_python("es_bulk.py", &[&node.endpoint(), "es-logs"]).await;
    output.assert_success();
    let lines: Vec<Value> = output
        .lines()
        .iter()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("es_bulk.py printed a non-JSON line ({e}): {l}"))
        })
        .collect();
    let ops: Vec<&str> = lines
        .iter()
        .map(|l| l["op"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ops,
        vec!["info", "bulk", "bulk_error"],
        "{lines:?}\nstderr: {}",
        output.stderr
    );
    assert_eq!(lines[0]["version"], "8.15.0");
    assert_eq!(lines[0]["tagline"], "You Know, for Search");
    assert_eq!(lines[0]["ping"], true);
    assert_eq!(lines[1]["success"], 3, "{}", lines[1]);
    assert_eq!(lines[1]["errors"], json!([]), "{}", lines[1]);
    let errors = lines[2]["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "only the bad document fails: {errors:?}");
    let item = &errors[0]["index"];
    assert_eq!(
        (item["_id"].as_str(), item["status"].as_u64()),
        (Some("es-bad"), Some(400)),
        "{item}"
    );
    assert_eq!(
        item["error"]["type"], "document_parsing_exception",
        "{item}"
    );
    assert!(text(item, "/error/reason").contains("yesterday"), "{item}");

    let hits = node.wait_hits(&[("stream", "es-logs")], 4).await;
    let names: BTreeSet<String> = messages(&hits).into_iter().collect();
    assert_eq!(
        names,
        ["es doc one", "es doc two", "es doc three", "es doc four"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let one = one_with(&hits, "es doc one");
    assert_eq!(
        (one["level"].as_str(), one["service"].as_str()),
        (Some("warn"), Some("es-logs")),
        "{one}"
    );
    assert_eq!(one["attributes"], json!({"user": "bob"}), "{one}");
    let two = one_with(&hits, "es doc two");
    assert_eq!(two["service"], "es-app", "{two}");
    for hit in &hits {
        let age = now_nanos() - hit["ts_nanos"].as_i64().unwrap();
        assert!((0..5 * MINUTE).contains(&age), "{hit}");
    }
}

// ----- shoal logs -----------------------------------------------------------

fn append(path: &Path, lines: std::ops::RangeInclusive<u32>) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log file");
    let text: String = lines.map(|n| format!("follow line {n:04}\n")).collect();
    file.write_all(text.as_bytes()).expect("append");
}

/// Waits until the follower's state file says it has read `path` to its end.
async fn wait_position_at_end(state: &Path, path: &Path) {
    let what = format!(
        "{} to point at the end of {}",
        state.display(),
        path.display()
    );
    wait_for(Duration::from_secs(20), &what, || async {
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(state).map_err(|e| e.to_string())?;
        let positions: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        let at = positions
            .as_object()
            .and_then(|m| m.values().next())
            .cloned()
            .unwrap_or(Value::Null);
        if at["inode"].as_u64() == Some(meta.ino()) && at["offset"].as_u64() == Some(meta.len()) {
            Ok(())
        } else {
            Err(format!(
                "{text} (file inode {} size {})",
                meta.ino(),
                meta.len()
            ))
        }
    })
    .await
}

/// Every record of the stream once all acknowledged ones are searchable:
/// a marker record ingested now becomes searchable in the same commit as
/// (or after) everything acknowledged before it. The marker is left out.
async fn settled(node: &Node, stream: &str) -> Vec<String> {
    node.ingest_records(stream, &[json!({"message": "settle marker"})])
        .await;
    eventually(SEARCHABLE_TIMEOUT, "the settle marker", || async {
        let answer = node
            .search(&[("stream", stream), ("q", "\"settle marker\"")])
            .await;
        (!hits_of(&answer).is_empty()).then_some(())
    })
    .await;
    let answer = node
        .search(&[("stream", stream), ("limit", "10000"), ("order", "oldest")])
        .await;
    messages(&hits_of(&answer))
        .into_iter()
        .filter(|m| m != "settle marker")
        .collect()
}

fn expected_lines(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| format!("follow line {n:04}")).collect()
}

/// Starts `shoal logs ingest --follow` (stderr to a file in `dir`).
fn start_follower(node: &Node, dir: &Path, state: &Path, log: &Path) -> tokio::process::Child {
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("follower.stderr"))
        .expect("stderr file");
    let args = [
        "logs",
        "ingest",
        "--endpoint",
        &node.endpoint(),
        "--stream",
        "follow",
        "--follow",
        "--state-file",
        state.to_str().unwrap(),
        log.to_str().unwrap(),
    ];
    shoal_command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("start shoal logs ingest --follow")
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_logs_ingest_search_and_json_output() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut text = String::new();
    for n in 0..30 {
        if n % 3 == 0 {
            text.push_str(&format!("cli plain line {n}\n"));
        } else {
            text.push_str(&format!(
                "{}\n",
                json!({"level": "error", "message": format!("cli json line {n}"), "n": n})
            ));
        }
    }
    std::fs::write(&file, text).unwrap();
    let endpoint = node.endpoint();
    let output = run_shoal(
        &[
            "logs",
            "ingest",
            "--endpoint",
            &endpoint,
            "--stream",
            "cli-file",
            file.to_str().unwrap(),
        ],
        None,
        &[],
    )
    .await;
    output.assert_success();
    assert!(
        output.stderr.contains("30 lines sent to cli-file") && output.stderr.contains("done"),
        "progress: {}",
        output.stderr
    );
    let hits = node.wait_hits(&[("stream", "cli-file")], 30).await;
    let json_lines: Vec<&Value> = hits.iter().filter(|h| h["level"] == "error").collect();
    assert_eq!(json_lines.len(), 20, "{hits:?}");
    assert!(json_lines
        .iter()
        .all(|h| h["message"].as_str().unwrap().starts_with("cli json line")));
    let plain: BTreeSet<String> = hits
        .iter()
        .filter(|h| h["level"] == "info")
        .map(|h| h["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        plain,
        (0..30)
            .step_by(3)
            .map(|n| format!("cli plain line {n}"))
            .collect()
    );

    // Readable output: one line per record, newest first.
    let search = |extra: &[&str]| {
        let mut args = vec![
            "logs",
            "search",
            "json",
            "--since",
            "1h",
            "--stream",
            "cli-file",
            "--endpoint",
            endpoint.as_str(),
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = run_shoal(&args, None, &[]).await;
            output.assert_success();
            output.lines()
        }
    };
    let lines = search(&[]).await;
    assert_eq!(lines.len(), 20, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("ERROR") && l.contains("cli-file") && l.contains("cli json line")),
        "{lines:?}"
    );
    assert!(
        lines[0].contains("cli json line 29"),
        "newest first: {lines:?}"
    );
    // --json: one hit object per line; --oldest and --limit (paged by the CLI).
    let lines = search(&["--json", "--oldest", "--limit", "7"]).await;
    let ns: Vec<u64> = lines
        .iter()
        .map(|l| {
            num(
                &serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")),
                "/attributes/n",
            )
        })
        .collect();
    assert_eq!(ns, vec![1, 2, 4, 5, 7, 8, 10]);
    // A query that matches nothing prints nothing and succeeds.
    assert!(search(&["--level", "debug"]).await.is_empty());
    // `shoal logs streams` lists it.
    let output = run_shoal(&["logs", "streams", "--endpoint", &endpoint], None, &[]).await;
    output.assert_success();
    let row = output
        .lines()
        .into_iter()
        .find(|l| l.starts_with("cli-file "))
        .unwrap_or_else(|| panic!("{}", output.stdout_text()));
    assert!(row.split_whitespace().nth(1) == Some("30"), "{row}");
    // A bad query is a clean failure.
    run_shoal(
        &["logs", "search", "message:(", "--endpoint", &endpoint],
        None,
        &[],
    )
    .await
    .assert_clean_failure();
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_logs_ingest_follows_rotation_and_restarts_without_loss_or_repeats() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("positions.json");
    append(&log, 1..=20);
    let mut follower = start_follower(&node, dir.path(), &state, &log);
    node.wait_hits(&[("stream", "follow")], 20).await;

    // Rotation by rename: the old file keeps its name .1, a new file starts.
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&log, 21..=30);
    node.wait_hits(&[("stream", "follow")], 30).await;

    // Rotation by copy and truncate (the new content is shorter than what was read).
    std::fs::copy(&log, dir.path().join("app.log.2")).unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append(&log, 31..=35);
    node.wait_hits(&[("stream", "follow")], 35).await;
    append(&log, 36..=45);
    node.wait_hits(&[("stream", "follow")], 45).await;
    wait_position_at_end(&state, &log).await;

    // Killed; meanwhile the file grows and is rotated again.
    follower.kill().await.expect("kill the follower");
    append(&log, 46..=55);
    std::fs::rename(&log, dir.path().join("app.log.3")).unwrap();
    append(&log, 56..=60);
    let mut follower = start_follower(&node, dir.path(), &state, &log);
    node.wait_hits(&[("stream", "follow")], 60).await;
    wait_position_at_end(&state, &log).await;
    follower.kill().await.expect("kill the follower");

    let got = settled(&node, "follow").await;
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        expected_lines(1..=60),
        "every line exactly once (follower stderr: {})",
        std::fs::read_to_string(dir.path().join("follower.stderr")).unwrap_or_default()
    );
    assert_eq!(
        got,
        expected_lines(1..=60),
        "in the order they were written"
    );
}
