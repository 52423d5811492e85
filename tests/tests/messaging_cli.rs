//! Messaging from the command line: `shoal sub` prints what `shoal pub`
//! publishes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_tests::messaging_support::*;
use shoal_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

type StdoutLines = Lines<BufReader<ChildStdout>>;

/// Starts `shoal sub ARGS --endpoint URL`; returns the child and its stdout lines.
fn spawn_sub(node: &Node, args: &[&str]) -> (Child, StdoutLines) {
    let endpoint = node.endpoint();
    let mut all = vec!["sub"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--endpoint", &endpoint]);
    let mut child = shoal_command(&all)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run shoal sub: {e}"));
    let lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    (child, lines)
}

/// The next non-empty stdout line of a running command (within `T`).
async fn next_line(lines: &mut StdoutLines, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => panic!("{what}: no line within {T:?}"),
            Ok(Ok(Some(line))) if line.trim().is_empty() => {}
            Ok(Ok(Some(line))) => return line,
            Ok(Ok(None)) => panic!("{what}: stdout closed"),
            Ok(Err(e)) => panic!("{what}: reading stdout failed: {e}"),
        }
    }
}

/// `shoal pub ARGS --endpoint URL` (with optional stdin), asserting success.
async fn shoal_pub(node: &Node, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    let endpoint = node.endpoint();
    let mut all = vec!["pub"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--endpoint", &endpoint]);
    let out = run_shoal(&all, stdin, &[]).await;
    out.assert_success();
    out
}

// ----- 8. command line --------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn shoal_sub_prints_what_shoal_pub_publishes() {
    let node = Node::start().await;
    let own = node.node_id().await;
    let (_plain_child, mut plain) = spawn_sub(&node, &["cli.>"]);
    let (_json_child, mut as_json) = spawn_sub(&node, &["cli.*", "--json"]);
    let (_worker_a, mut worker_a) = spawn_sub(&node, &["work.*", "--queue", "cli-workers"]);
    let (_worker_b, mut worker_b) = spawn_sub(&node, &["work.*", "--queue", "cli-workers"]);
    node.wait_interest(own, "cli.>", None, 1).await;
    node.wait_interest(own, "cli.*", None, 1).await;
    node.wait_interest(own, "work.*", Some("cli-workers"), 2)
        .await;

    // An argument.
    let out = shoal_pub(&node, &["cli.hello", "hello world"], None).await;
    assert!(
        out.stdout_text().contains("published"),
        "{}",
        out.stdout_text()
    );
    assert_eq!(
        next_line(&mut plain, "shoal sub cli.>").await,
        "cli.hello hello world"
    );
    let envelope: Value = serde_json::from_str(&next_line(&mut as_json, "shoal sub --json").await)
        .expect("JSON line");
    assert_eq!(envelope["topic"], "cli.hello", "{envelope}");
    assert_eq!(envelope["data"], "hello world", "{envelope}");
    assert_eq!(envelope["datacontenttype"], "text/plain", "{envelope}");

    // Standard input.
    shoal_pub(&node, &["cli.stdin"], Some(b"from standard input")).await;
    assert_eq!(
        next_line(&mut plain, "shoal sub cli.>").await,
        "cli.stdin from standard input"
    );
    let envelope: Value = serde_json::from_str(&next_line(&mut as_json, "shoal sub --json").await)
        .expect("JSON line");
    assert_eq!(envelope["data"], "from standard input", "{envelope}");

    // A JSON object or array goes as JSON unless told otherwise; anything
    // else (here, JSON cut short) as text.
    for (message, data, content_type) in [
        (r#"{"m":2}"#, json!({"m": 2}), "application/json"),
        ("[1, 2]", json!([1, 2]), "application/json"),
        (r#"{"m":"#, json!(r#"{"m":"#), "text/plain"),
    ] {
        shoal_pub(&node, &["cli.guess", message], None).await;
        next_line(&mut plain, "shoal sub cli.>").await;
        let envelope: Value =
            serde_json::from_str(&next_line(&mut as_json, "shoal sub --json").await)
                .expect("JSON line");
        assert_eq!(envelope["data"], data, "{envelope}");
        assert_eq!(envelope["datacontenttype"], content_type, "{envelope}");
    }

    // Content type and headers.
    shoal_pub(
        &node,
        &[
            "cli.json",
            r#"{"n":1}"#,
            "--content-type",
            "application/json",
            "--header",
            "tenant=acme",
            "--header",
            "region=eu",
        ],
        None,
    )
    .await;
    assert_eq!(
        next_line(&mut plain, "shoal sub cli.>").await,
        r#"cli.json {"n":1}"#
    );
    let envelope: Value = serde_json::from_str(&next_line(&mut as_json, "shoal sub --json").await)
        .expect("JSON line");
    assert_eq!(envelope["data"], json!({"n": 1}), "{envelope}");
    assert_eq!(
        envelope["datacontenttype"], "application/json",
        "{envelope}"
    );
    assert_eq!(
        envelope["headers"],
        json!({"tenant": "acme", "region": "eu"}),
        "{envelope}"
    );

    // Deeper topics reach `cli.>` only.
    shoal_pub(&node, &["cli.deep.topic", "deep"], None).await;
    assert_eq!(
        next_line(&mut plain, "shoal sub cli.>").await,
        "cli.deep.topic deep"
    );

    // --queue: each message is printed by one of the two members.
    let jobs: Vec<Value> = (0..20)
        .map(|i| entry(&format!("w{i:02}"), "work.item", &format!("w{i:02}")))
        .collect();
    publish_batch(&node, jobs).await;
    let mut printed = Vec::new();
    let deadline = Instant::now() + T;
    while printed.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "queue members printed {printed:?}"
        );
        for lines in [&mut worker_a, &mut worker_b] {
            if let Ok(line) =
                tokio::time::timeout(Duration::from_millis(20), lines.next_line()).await
            {
                let line = line.expect("reading stdout").expect("shoal sub ended");
                printed.push(line);
            }
        }
    }
    let distinct: BTreeSet<&String> = printed.iter().collect();
    assert_eq!(distinct.len(), 20, "each job printed once: {printed:?}");
    assert!(
        printed.iter().all(|l| l.starts_with("work.item w")),
        "{printed:?}"
    );

    // Refusals are explained, without a panic.
    let out = run_shoal(
        &["pub", "cli.*", "x", "--endpoint", &node.endpoint()],
        None,
        &[],
    )
    .await;
    out.assert_clean_failure();
    assert!(out.stderr.contains("invalid_topic"), "{}", out.stderr);
    let out = run_shoal(
        &["sub", "cli..x", "--endpoint", &node.endpoint()],
        None,
        &[],
    )
    .await;
    out.assert_clean_failure();
    assert!(out.stderr.contains("invalid_topic"), "{}", out.stderr);
}
