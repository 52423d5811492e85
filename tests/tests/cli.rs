//! The `shoal kv` command-line client.

use std::time::Duration;

use shoal_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// stdout must be exactly `value`, optionally followed by one newline.
#[track_caller]
fn assert_raw_output(out: &CliOutput, value: &[u8]) {
    let mut with_newline = value.to_vec();
    with_newline.push(b'\n');
    assert!(
        out.stdout == value || out.stdout == with_newline,
        "expected stdout {:?}, got {:?}",
        String::from_utf8_lossy(value),
        out.stdout_text()
    );
}

type StdoutLines = Lines<BufReader<ChildStdout>>;

/// The lines of a running command's stdout.
fn stdout_lines(child: &mut Child) -> StdoutLines {
    BufReader::new(child.stdout.take().expect("stdout is piped")).lines()
}

/// Reads the next `count` non-empty lines (10 s at most).
async fn read_lines(reader: &mut StdoutLines, count: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while lines.len() < count {
        match tokio::time::timeout_at(deadline, reader.next_line()).await {
            Err(_) => panic!(
                "timed out after {} of {count} lines: {lines:?}",
                lines.len()
            ),
            Ok(Ok(Some(line))) if line.trim().is_empty() => {}
            Ok(Ok(Some(line))) => lines.push(line),
            Ok(Ok(None)) => panic!("the command closed stdout after {lines:?}"),
            Ok(Err(e)) => panic!("reading stdout failed: {e}"),
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn put_then_get() {
    let node = Node::start().await;
    let out = node.run_cli(&["put", "greeting", "hello"]).await;
    out.assert_success();
    let kv = node.get_kv("greeting").await;
    assert_eq!(kv_value(&kv), b"hello");
    let rev = num(&kv, "/mod_revision");
    assert_eq!(out.stdout_text().trim(), format!("OK revision {rev}"));

    let out = node.run_cli(&["get", "greeting"]).await;
    out.assert_success();
    assert_raw_output(&out, b"hello");

    let out = node.run_cli(&["get", "greeting", "--stale"]).await;
    out.assert_success();
    assert_raw_output(&out, b"hello");

    // Keys with slashes and spaces go through unharmed.
    node.run_cli(&["put", "a/b c/d", "spaced"])
        .await
        .assert_success();
    assert_eq!(kv_value(&node.get_kv("a/b c/d").await), b"spaced");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_get_prints_base64() {
    let node = Node::start().await;
    let rev = node.put_rev("j/k", b"\x00binary\xff").await;
    let out = node.run_cli(&["--json", "get", "j/k"]).await;
    out.assert_success();
    let doc: Value = serde_json::from_str(out.stdout_text().trim())
        .unwrap_or_else(|e| panic!("--json get printed non-JSON ({e}): {}", out.stdout_text()));
    // Either the kv object itself or the API's {"revision", "kv"} reply.
    let kv = if doc.get("kv").is_some() {
        &doc["kv"]
    } else {
        &doc
    };
    assert_eq!(text(kv, "/key"), "j/k");
    assert_eq!(kv_value(kv), b"\x00binary\xff");
    assert_eq!(num(kv, "/mod_revision"), rev);
}

#[tokio::test(flavor = "multi_thread")]
async fn put_reads_the_value_from_stdin() {
    let node = Node::start().await;
    let out = node
        .run_cli_stdin(&["put", "stdin/text"], b"line one\nline two")
        .await;
    out.assert_success();
    assert!(
        out.stdout_text().starts_with("OK revision "),
        "{}",
        out.stdout_text()
    );
    assert_eq!(
        kv_value(&node.get_kv("stdin/text").await),
        b"line one\nline two"
    );

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    node.run_cli_stdin(&["put", "stdin/bin"], &all_bytes)
        .await
        .assert_success();
    assert_eq!(kv_value(&node.get_kv("stdin/bin").await), all_bytes);
    // get prints the raw bytes back.
    let out = node.run_cli(&["get", "stdin/bin"]).await;
    out.assert_success();
    assert_raw_output(&out, &all_bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn ls_prints_one_key_per_line() {
    let node = Node::start().await;
    for key in ["ls/b", "ls/a", "ls/c/d", "lsx", "other"] {
        node.put(key, b"v").await;
    }
    let out = node.run_cli(&["ls", "ls/"]).await;
    out.assert_success();
    assert_eq!(out.lines(), vec!["ls/a", "ls/b", "ls/c/d"]);

    let out = node.run_cli(&["ls"]).await;
    out.assert_success();
    assert_eq!(out.lines(), vec!["ls/a", "ls/b", "ls/c/d", "lsx", "other"]);

    let out = node.run_cli(&["ls", "nothing/"]).await;
    out.assert_success();
    assert!(out.lines().is_empty(), "{}", out.stdout_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn del_prints_the_count() {
    let node = Node::start().await;
    for key in ["d/1", "d/2", "d/3/x", "dd"] {
        node.put(key, b"v").await;
    }
    let out = node.run_cli(&["del", "dd"]).await;
    out.assert_success();
    assert_eq!(out.stdout_text().trim(), "deleted 1");

    let out = node.run_cli(&["del", "dd"]).await;
    out.assert_success();
    assert_eq!(out.stdout_text().trim(), "deleted 0");

    let out = node.run_cli(&["del", "d/", "--prefix"]).await;
    out.assert_success();
    assert_eq!(out.stdout_text().trim(), "deleted 3");
    assert!(node.list_all("").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn put_with_if_revision_and_lease() {
    let node = Node::start().await;
    node.run_cli(&["put", "lock", "me", "--if-revision", "0"])
        .await
        .assert_success();
    let out = node
        .run_cli(&["put", "lock", "you", "--if-revision", "0"])
        .await;
    out.assert_clean_failure();
    assert_eq!(kv_value(&node.get_kv("lock").await), b"me");

    let rev = num(&node.get_kv("lock").await, "/mod_revision").to_string();
    node.run_cli(&["put", "lock", "you", "--if-revision", &rev])
        .await
        .assert_success();
    assert_eq!(kv_value(&node.get_kv("lock").await), b"you");

    let lease = node.grant_lease(60).await;
    node.run_cli(&["put", "leased", "v", "--lease", &lease.to_string()])
        .await
        .assert_success();
    assert_eq!(num(&node.get_kv("leased").await, "/lease"), lease);

    node.run_cli(&["put", "x", "v", "--lease", "987654321"])
        .await
        .assert_clean_failure();
}

/// The numbers in `text` (maximal digit runs).
fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_and_rollback() {
    let node = Node::start().await;
    // Pad the revision numbers so they cannot be confused with small numbers.
    for i in 0..12 {
        node.put(&format!("pad/{i}"), b"p").await;
    }
    let r1 = node.put_rev("h", b"first").await;
    let r2 = node.put_rev("h", b"second").await;
    let r3 = node.put_rev("h", b"third").await;

    let out = node.run_cli(&["history", "h"]).await;
    out.assert_success();
    let found = numbers(&out.stdout_text());
    for rev in [r1, r2, r3] {
        assert!(
            found.contains(&rev),
            "history lacks revision {rev}:\n{}",
            out.stdout_text()
        );
    }
    assert!(out.lines().len() >= 3, "{}", out.stdout_text());

    let out = node.run_cli(&["history", "h", "--limit", "1"]).await;
    out.assert_success();
    let found = numbers(&out.stdout_text());
    assert!(found.contains(&r3), "{}", out.stdout_text());
    assert!(
        !found.contains(&r1),
        "--limit 1 shows only the newest:\n{}",
        out.stdout_text()
    );

    let out = node.run_cli(&["rollback", "h", &r1.to_string()]).await;
    out.assert_success();
    let kv = node.get_kv("h").await;
    assert_eq!(kv_value(&kv), b"first");
    assert_eq!(num(&kv, "/mod_revision"), r3 + 1);

    node.run_cli(&["history", "nope"])
        .await
        .assert_clean_failure();
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_json_prints_one_batch_per_line() {
    let node = Node::start().await;
    let r1 = node.put_rev("wj/a", b"1").await;
    node.put("other", b"x").await;
    let r2 = node.put_rev("wj/b", b"2").await;
    let r3 = num(&node.delete("wj/a").await, "/revision");

    let mut child = node.spawn_cli(&["--json", "watch", "wj/", "--prefix", "--from-revision", "1"]);
    let mut out = stdout_lines(&mut child);
    let lines = read_lines(&mut out, 3).await;
    let batches: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert_eq!(
        changes(&batches),
        vec![
            Change::put(r1, "wj/a", b"1"),
            Change::put(r2, "wj/b", b"2"),
            Change::delete(r3, "wj/a"),
        ]
    );

    // Live changes follow on the same stream.
    node.put("other", b"y").await;
    let r4 = node.put_rev("wj/c", b"3").await;
    let lines = read_lines(&mut out, 1).await;
    let batch: Value = serde_json::from_str(&lines[0]).expect("JSON batch");
    assert_eq!(changes(&[batch]), vec![Change::put(r4, "wj/c", b"3")]);

    child.kill().await.expect("kill watch");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_readable_lines() {
    let node = Node::start().await;
    let r1 = node.put_rev("wt", b"one").await;
    node.put("wt2", b"not watched").await;
    let r2 = node.put_rev("wt", b"two").await;
    let r3 = num(&node.delete("wt").await, "/revision");

    let mut child = node.spawn_cli(&["watch", "wt", "--from-revision", "1"]);
    let lines = read_lines(&mut stdout_lines(&mut child), 3).await;
    assert_eq!(lines[0].trim(), format!("PUT wt one (revision {r1})"));
    assert_eq!(lines[1].trim(), format!("PUT wt two (revision {r2})"));
    assert!(
        lines[2].starts_with("DEL") && lines[2].contains("wt") && numbers(&lines[2]).contains(&r3),
        "delete line: {:?}",
        lines[2]
    );
    child.kill().await.expect("kill watch");
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_from_environment() {
    let node = Node::start().await;
    node.put("envkey", b"from env").await;
    let endpoint = node.endpoint();
    let out = run_shoal(
        &["kv", "get", "envkey"],
        None,
        &[("SHOAL_ENDPOINT", &endpoint)],
    )
    .await;
    out.assert_success();
    assert_raw_output(&out, b"from env");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_readable_not_panics() {
    // Nothing listens on this port.
    let dead = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["kv", "--endpoint", dead.as_str(), "get", "k"],
        vec!["kv", "--endpoint", dead.as_str(), "put", "k", "v"],
        vec!["kv", "--endpoint", dead.as_str(), "ls"],
    ] {
        run_shoal(&args, None, &[]).await.assert_clean_failure();
    }
    run_shoal(&["kv", "--endpoint", "not a url", "get", "k"], None, &[])
        .await
        .assert_clean_failure();

    let node = Node::start().await;
    let out = node.run_cli(&["get", "missing"]).await;
    out.assert_clean_failure();
    assert!(
        out.stdout.is_empty(),
        "no value printed for a missing key: {}",
        out.stdout_text()
    );
    node.run_cli(&["get", "bad\u{1}key"])
        .await
        .assert_clean_failure();
    node.run_cli(&["rollback", "missing", "abc"])
        .await
        .assert_clean_failure();
}

/// A reader that stops early (`shoal kv ls | head`) ends the command quietly
/// with SIGPIPE, as Unix tools do, not with a panic about a broken pipe.
#[tokio::test(flavor = "multi_thread")]
async fn output_into_a_closed_pipe_ends_quietly() {
    let node = Node::start().await;
    // More than a pipe buffer (64 KiB) of key names.
    for i in 0..100 {
        let key = format!("pipe/{i:03}-{}", "k".repeat(900));
        node.put_rev(&key, b"v").await;
    }
    let output = tokio::process::Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; \"$0\" kv ls pipe/ --endpoint \"$1\" | head -c 100 >/dev/null",
        ])
        .arg(shoal_bin())
        .arg(node.endpoint())
        .output()
        .await
        .expect("running bash");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    // 141: killed by SIGPIPE (128 + 13), reported through pipefail.
    assert_eq!(output.status.code(), Some(141), "stderr: {stderr}");
}
