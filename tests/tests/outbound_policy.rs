//! The outbound-request policy: webhooks and workflow calls may not reach
//! loopback, link-local (cloud metadata), private or other non-public
//! addresses unless the operator allows them (`--outbound-allow`), checked
//! when a URL is defined, after DNS when a request connects, and on every
//! redirect; and failures tell no more than "could not connect".
//!
//! Test nodes allow loopback by default (their receivers listen there), so
//! these tests start theirs with `SHOAL_OUTBOUND_ALLOW` set.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use shoal_tests::delivery_support::{publish, put_definition, put_webhook, wait_webhook_known, T};
use shoal_tests::hook::{summarize, Hook};
use shoal_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A node whose outbound policy allows exactly `allow` ("" for nothing).
async fn node_allowing(subcommand: &str, allow: &str) -> Node {
    Node::builder()
        .subcommand(subcommand)
        .env("SHOAL_OUTBOUND_ALLOW", allow)
        .start()
        .await
}

/// The machine's host name, which the tests use as a DNS name that
/// resolves to a non-public address (loopback on Debian, 127.0.1.1 or
/// 127.0.0.1; the container's private address in a container).
async fn host_name_of_this_machine() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("reading the host name")
        .trim()
        .to_string();
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 80))
        .await
        .unwrap_or_else(|e| panic!("this test needs the host name {name:?} to resolve: {e}"))
        .collect();
    assert!(
        addresses.iter().all(|a| match a.ip() {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        }),
        "this test needs the host name {name:?} to resolve to loopback or private addresses only, as it does on Debian and in containers; it resolves to {addresses:?}"
    );
    name
}

fn webhook(url: &str) -> Value {
    json!({"url": url, "pattern": "outbound.>", "retry_schedule_ms": [0]})
}

async fn put_workflow(node: &Node, name: &str, endpoint_yaml: &str) -> Reply {
    let yaml = format!(
        "document: {{dsl: '1.0.0', namespace: outbound, name: {name}, version: '1.0.0'}}\n\
         do:\n  - c:\n      call: http\n      with:\n        method: post\n        endpoint: {endpoint_yaml}\n"
    );
    node.send(
        node.request(
            Method::PUT,
            &format!("/v1/workflows/definitions/outbound/{name}/1.0.0"),
        )
        .body(yaml),
    )
    .await
}

fn assert_refused(reply: &Reply, what: &str) {
    assert_eq!(reply.status.as_u16(), 400, "{what}: {}", reply.describe());
    assert_eq!(
        reply.body["error"]["code"],
        "destination_refused",
        "{what}: {}",
        reply.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn urls_of_internal_addresses_are_refused_when_defined() {
    let node = node_allowing("serve", "").await;
    let host = host_name_of_this_machine().await;
    let refused = [
        "http://127.0.0.1:9/hook",
        "http://127.1/",
        "http://2130706433/",
        "http://localhost:9/",
        "http://api.localhost/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.0.1/",
        "http://0.0.0.0:9/",
        "http://[::1]:9/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        &format!("http://{host}:9/hook"),
    ];
    for url in refused {
        let reply = put_definition(&node, "webhooks", "w", &webhook(url)).await;
        assert_refused(&reply, url);
        let text = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains("--outbound-allow"), "{url}: {text}");
    }
    let missing = node.get_path("/v1/webhooks/w").await;
    assert_eq!(missing.status.as_u16(), 404, "{}", missing.describe());

    // Public addresses, and names that do not resolve (this machine is
    // offline: they are checked again when a request connects), pass.
    for url in ["http://93.184.215.14/hook", "https://hooks.example.com/in"] {
        put_webhook(&node, "public", webhook(url)).await;
    }

    // A workflow's literal endpoint, as a string or as `uri`.
    let reply = put_workflow(&node, "metadata", "'http://169.254.169.254/latest/'").await;
    assert_refused(&reply, "a call to the metadata address");
    assert_eq!(reply.body["error"]["path"], "/do/0/c/with/endpoint");
    let reply = put_workflow(&node, "loopback", "{uri: 'http://[::1]:9/x'}").await;
    assert_refused(&reply, "a call to ::1");
    assert_eq!(reply.body["error"]["path"], "/do/0/c/with/endpoint/uri");
    // An endpoint computed at run time is checked when it is called.
    let reply = put_workflow(&node, "computed", "'${ .url }'").await;
    assert!(reply.status.is_success(), "{}", reply.describe());
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_allow_networks_and_dev_allows_loopback() {
    let flagged = Node::builder()
        .env("SHOAL_OUTBOUND_ALLOW", "")
        .args(&[
            "--outbound-allow",
            "127.0.0.1",
            "--outbound-allow",
            "10.0.0.0/8",
        ])
        .start()
        .await;
    put_webhook(&flagged, "one", webhook("http://127.0.0.1:9/hook")).await;
    put_webhook(&flagged, "ten", webhook("http://10.20.30.40/hook")).await;
    for url in ["http://127.0.0.2:9/hook", "http://192.168.0.1/"] {
        let reply = put_definition(&flagged, "webhooks", "w", &webhook(url)).await;
        assert_refused(&reply, url);
    }

    let dev = node_allowing("dev", "").await;
    let hook = Hook::start().await;
    put_webhook(&dev, "local", webhook(&hook.url())).await;
    wait_webhook_known(&dev, "local").await;
    publish(&dev, "outbound.dev", &json!({"n": 1})).await;
    hook.wait_requests(1, T).await;
    let reply = put_definition(&dev, "webhooks", "w", &webhook("http://10.0.0.1/")).await;
    assert_refused(&reply, "a private address on shoal dev");

    let out = run_shoal(&["serve", "--outbound-allow", "not a host!"], None, &[]).await;
    out.assert_clean_failure();
    assert!(out.stderr.contains("--outbound-allow"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_computed_at_run_time_are_checked_after_dns() {
    let node = node_allowing("serve", "").await;
    let host = host_name_of_this_machine().await;
    let hook = Hook::start().await;
    let reply = put_workflow(&node, "computed", "'${ .url }'").await;
    assert!(reply.status.is_success(), "{}", reply.describe());
    let targets = [
        ("by-address", hook.url()),
        ("by-name", format!("http://{host}:{}/hook", hook.port())),
    ];
    for (id, url) in &targets {
        let reply = node
            .post_json(
                "/v1/workflows/outbound/computed/instances",
                &json!({"id": id, "input": {"url": url}}),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.describe());
    }
    for (id, url) in &targets {
        let faulted = wait_for(T, &format!("instance {id} faulted"), || async {
            let reply = node
                .get_path(&format!("/v1/workflows/instances/{id}"))
                .await;
            match reply.body["status"].as_str() {
                Some("faulted") => Ok(reply.body),
                _ => Err(reply.describe()),
            }
        })
        .await;
        let error = &faulted["error"];
        assert_eq!(
            error["type"], "https://serverlessworkflow.io/spec/1.0.0/errors/communication",
            "{url}: {faulted}"
        );
        assert_eq!(error["status"], 403, "{url}: {faulted}");
        let detail = error["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("loopback address"), "{url}: {detail}");
    }
    let requests = hook.requests();
    assert!(requests.is_empty(), "{}", summarize(&requests));
}

/// An HTTP server that answers every request with a 307 to `location`
/// (after reading it whole, so the answer is not cut by a reset).
async fn redirector(location: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the redirector");
    let port = listener.local_addr().expect("local_addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

/// A port on 127.0.0.2 that counts the connections made to it.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.2:0")
        .await
        .expect("binding 127.0.0.2");
    let port = listener.local_addr().expect("local_addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, count)
}

/// The one dead letter of a webhook, once it is there.
async fn dead_letter(node: &Node, name: &str) -> Value {
    wait_for(T, &format!("a dead letter of {name}"), || async {
        let body = node
            .get_path(&format!("/v1/webhooks/{name}/dead-letters"))
            .await
            .ok();
        match body["dead_letters"].as_array().map(Vec::as_slice) {
            Some([letter]) => Ok(letter.clone()),
            _ => Err(body.to_string()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_checked_and_failures_tell_no_detail() {
    // 127.0.0.1 is allowed, the rest of loopback is not.
    let node = node_allowing("serve", "127.0.0.1/32").await;
    let (hidden_port, hidden_hits) = counting_listener().await;
    let hook = Hook::start().await;
    let to_hidden = redirector(format!("http://127.0.0.2:{hidden_port}/admin")).await;
    let to_hook = redirector(hook.url()).await;
    let closed = free_port();
    put_webhook(
        &node,
        "to-hidden",
        webhook(&format!("http://127.0.0.1:{to_hidden}/")),
    )
    .await;
    put_webhook(
        &node,
        "to-hook",
        webhook(&format!("http://127.0.0.1:{to_hook}/")),
    )
    .await;
    put_webhook(
        &node,
        "closed",
        webhook(&format!("http://127.0.0.1:{closed}/")),
    )
    .await;
    for name in ["to-hidden", "to-hook", "closed"] {
        wait_webhook_known(&node, name).await;
    }
    publish(&node, "outbound.redirect", &json!({"n": 1})).await;

    // A redirect to an allowed address is followed ...
    let delivered = hook.wait_requests(1, T).await;
    assert_eq!(delivered.len(), 1, "{}", summarize(&delivered));
    // ... one to a refused address is not, and says why.
    let letter = dead_letter(&node, "to-hidden").await;
    let error = letter["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("127.0.0.2") && error.contains("loopback address"),
        "{letter}"
    );
    assert_eq!(hidden_hits.load(Ordering::SeqCst), 0);

    // A closed port: "could not connect", nothing from the layers below
    // ("Connection refused", "tcp connect error") that would tell a
    // closed port from a filtered one.
    let letter = dead_letter(&node, "closed").await;
    assert_eq!(
        letter["last_error"],
        json!(format!(
            "POST http://127.0.0.1:{closed}/: could not connect"
        )),
        "{letter}"
    );
}
