//! The API against its own descriptions: `/metrics` passes Prometheus's
//! lint (`promtool check metrics`: help text on every series, counter and
//! unit naming), and an API fuzzer driven by `/openapi.json` (schemathesis,
//! installed by `./scripts/setup`) finds no 5xx and no answer that differs
//! from the document in status, content type or body schema.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use shoal_testkit::setup_tool;
use shoal_tests::Node;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The fuzzer's time limit; a run takes about two minutes on 2 cores.
const FUZZ_TIMEOUT: Duration = Duration::from_secs(900);

/// Makes the node record something in every part that has metrics: KV
/// writes and reads, a watch, messaging, log ingest and search.
async fn exercise(node: &Node) {
    for (method, path, body) in [
        (Method::PUT, "/v1/kv/conformance/a", "1".to_string()),
        (Method::GET, "/v1/kv/conformance/a", String::new()),
        (
            Method::GET,
            "/v1/watch/poll?key=conformance/a&from_revision=1",
            String::new(),
        ),
        (
            Method::POST,
            "/v1/topics/conformance",
            "\"hello\"".to_string(),
        ),
        (
            Method::POST,
            "/v1/logs/conformance",
            json!({"message": "conformance check", "level": "info"}).to_string(),
        ),
        (Method::GET, "/v1/logs/search?q=conformance", String::new()),
    ] {
        let request = node
            .request(method.clone(), path)
            .header("content-type", "application/json")
            .body(body);
        let reply = node.send(request).await;
        assert!(
            reply.status.is_success(),
            "{method} {path}: {} {}",
            reply.status,
            reply.text
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_the_prometheus_lint() {
    let node = Node::start().await;
    exercise(&node).await;
    let metrics = node.get_path("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text);
    for series in [
        "shoal_http_requests_total",
        "shoal_raft_term",
        "shoal_logs_ingested_records_total",
    ] {
        assert!(
            metrics.text.contains(&format!("# HELP {series} ")),
            "no help text for {series}:\n{}",
            metrics.text
        );
    }

    let promtool =
        std::env::var_os("SHOAL_PROMTOOL").map_or_else(|| "promtool".into(), PathBuf::from);
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (./scripts/setup installs Debian's prometheus package, \
                 which has promtool; or set SHOAL_PROMTOOL)",
                promtool.display()
            )
        });
    let mut stdin = child.stdin.take().expect("promtool stdin is piped");
    stdin
        .write_all(metrics.text.as_bytes())
        .await
        .expect("writing to promtool");
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .expect("waiting for promtool");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_as_its_openapi_document_says_under_fuzzing() {
    let node = Node::start().await;
    exercise(&node).await;
    let schemathesis =
        setup_tool("SHOAL_SCHEMATHESIS", "pyenv/bin/schemathesis").expect("HOME is set");
    assert!(
        schemathesis.is_file(),
        "schemathesis not found at {}: run ./scripts/setup (it installs it into the test venv), \
         or set SHOAL_SCHEMATHESIS",
        schemathesis.display()
    );
    let schema = node.url("/openapi.json");
    let run = Command::new(&schemathesis)
        .args(["run", &schema])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "10",
            "--seed",
            "20261202",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            // `_bulk` takes NDJSON, which the fuzzer cannot generate; its
            // bad input is covered by logs_bad_input.rs. A long poll holds
            // a request open for a generated timeout_ms of up to 300 s.
            "--exclude-path-regex",
            "(_bulk$|^/v1/watch/poll$)",
        ])
        .env("NO_COLOR", "1")
        // It keeps a cache of examples in the working directory.
        .current_dir(node.dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(FUZZ_TIMEOUT, run)
        .await
        .expect("the API fuzzer did not finish in 15 minutes")
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the API fuzzer found answers that differ from /openapi.json ({}):\n{stdout}\n{}\n\
         node log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        node.log_tail(40)
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.contains("generated"))
        .unwrap_or("");
    eprintln!("API fuzzer: {}", summary.trim());
}
