//! Durable messaging, webhooks: retries, Standard Webhooks signatures, dead
//! letters gathered from every node and replayed, the outbox across kill -9,
//! and a webhook defined on one node serving messages published on another.
//! Webhooks are delivered to a real HTTP receiver (`shoal_tests::hook`).

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use shoal_tests::delivery_support::*;
use shoal_tests::hook::{self, hook_url, Hook};
use shoal_tests::tls::TestCa;
use shoal_tests::*;

/// `GET /v1/webhooks/{name}/dead-letters` (with a query), asserting 200.
async fn dead_letters(node: &Node, name: &str, query: &str) -> Value {
    node.get_path(&format!("/v1/webhooks/{name}/dead-letters{query}"))
        .await
        .ok()
}

// ----- webhooks -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn webhook_is_retried_until_it_answers_2xx_with_valid_signatures() {
    let node = Node::start().await;
    let hook = Hook::start().await;
    hook.fail_first(2, 500);

    let stored = put_webhook(
        &node,
        "orders-hook",
        json!({"url": hook.url(), "pattern": "orders.*", "retry_schedule_ms": [0, 200, 200, 200]}),
    )
    .await;
    let secret = text(&stored, "/secret").to_string();
    assert!(secret.starts_with("whsec_"), "generated secret: {stored}");
    assert_eq!(stored["url"], hook.url());
    assert_eq!(stored["retry_schedule_ms"], json!([0, 200, 200, 200]));
    assert_eq!(node.get_path("/v1/webhooks/orders-hook").await.ok(), stored);
    let listed = node.get_path("/v1/webhooks").await.ok();
    assert_eq!(listed["webhooks"], json!([stored]), "list: {listed}");
    wait_webhook_known(&node, "orders-hook").await;

    let payload = json!({"order": 17, "items": ["a", "b"]});
    let answer = publish(&node, "orders.created", &payload).await;
    assert_eq!(num(&answer, "/durable"), 1, "publish answer: {answer}");
    let id = text(&answer, "/id").to_string();

    let requests = hook.wait_requests(3, T).await;
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![500, 500, 200],
        "{}",
        hook::summarize(&requests)
    );
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook");
        assert_eq!(
            request.webhook_id(),
            id,
            "every attempt carries the message id"
        );
        request
            .verify(&secret)
            .unwrap_or_else(|e| panic!("bad signature: {e}\n{request:?}"));
        assert!(
            request
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "content-type: {request:?}"
        );
        let envelope = request.json();
        assert_eq!(envelope["specversion"], "1.0");
        assert_eq!(envelope["id"], id.as_str());
        assert_eq!(envelope["topic"], "orders.created");
        assert_eq!(envelope["datacontenttype"], "application/json");
        assert_eq!(envelope["data"], payload, "envelope: {envelope}");
    }
    // The retries waited for the schedule (200 ms before attempts 2 and 3).
    for pair in requests.windows(2) {
        let gap = pair[1].received - pair[0].received;
        assert!(
            gap >= Duration::from_millis(150),
            "retry after {gap:?}, schedule says 200 ms"
        );
    }

    wait_outbox(&node, "webhook:orders-hook", (0, 0)).await;
    // Delivered once it succeeded: no further attempt.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hook.requests().len(),
        3,
        "{}",
        hook::summarize(&hook.requests())
    );
    let dead = dead_letters(&node, "orders-hook", "").await;
    assert_eq!(dead["dead_letters"], json!([]), "{dead}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_gathered_from_every_node_and_replayed() {
    let cluster = Cluster::start(3, &[]).await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let hook = Hook::start().await;
    hook.set_status(500);

    put_webhook(
        a,
        "payments",
        json!({"url": hook.url(), "pattern": "pay.>", "retry_schedule_ms": [0, 100, 100]}),
    )
    .await;
    wait_webhook_known(b, "payments").await;

    let payload = json!({"amount": 42});
    let answer = publish(b, "pay.eu.card", &payload).await;
    assert_eq!(num(&answer, "/durable"), 1, "{answer}");
    let id = text(&answer, "/id").to_string();

    // Asked on node A, which holds nothing itself: the dead letter comes from B.
    let b_id = cluster.node_id(1).await;
    let letter = wait_for(
        T,
        "the message among the dead letters, asked on node A",
        || async {
            let body = dead_letters(a, "payments", "").await;
            match body["dead_letters"].as_array().map(Vec::as_slice) {
                Some([letter]) => Ok((letter.clone(), body)),
                _ => Err(body.to_string()),
            }
        },
    )
    .await;
    let (letter, body) = letter;
    assert_eq!(body["webhook"], "payments");
    assert_eq!(body["unreachable"], json!([]), "{body}");
    assert_eq!(num(&letter, "/node_id"), b_id, "{letter}");
    assert_eq!(letter["id"], id.as_str());
    assert_eq!(letter["topic"], "pay.eu.card");
    assert_eq!(num(&letter, "/attempts"), 3, "{letter}");
    let last_error = text(&letter, "/last_error");
    assert!(last_error.contains("500"), "last_error: {last_error}");
    assert_eq!(letter["message"]["id"], id.as_str());
    assert_eq!(letter["message"]["data"], payload);
    let seq = num(&letter, "/seq");

    // Three attempts, all refused, no more after the schedule ran out.
    let requests = hook.requests();
    assert_eq!(requests.len(), 3, "{}", hook::summarize(&requests));
    assert!(requests.iter().all(|r| r.webhook_id() == id));
    // Node A alone has none; node B's own view and outbox show it.
    let local = dead_letters(a, "payments", "?scope=local").await;
    assert_eq!(local["dead_letters"], json!([]), "{local}");
    let on_b = dead_letters(b, "payments", "?scope=local").await;
    assert_eq!(
        on_b["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{on_b}"
    );
    assert_eq!(outbox_counts(b, "webhook:payments").await, Some((0, 1)));
    assert_eq!(outbox_counts(a, "webhook:payments").await, Some((0, 0)));

    // The receiver recovers; a replay asked on node C puts it back on B.
    hook.set_status(200);
    let replay = c
        .post_json(
            "/v1/webhooks/payments/dead-letters/replay",
            &json!({"only": [{"node_id": b_id, "seq": seq}]}),
        )
        .await
        .ok();
    assert_eq!(num(&replay, "/replayed"), 1, "{replay}");
    assert_eq!(replay["unreachable"], json!([]), "{replay}");

    let requests = hook
        .wait_until(T, "the replayed message delivered", |r| {
            r.iter().any(|r| r.status == 200)
        })
        .await;
    let delivered: Vec<_> = requests.iter().filter(|r| r.status == 200).collect();
    assert_eq!(delivered[0].webhook_id(), id);
    assert_eq!(delivered[0].json()["data"], payload);
    wait_outbox(b, "webhook:payments", (0, 0)).await;
    let after = dead_letters(a, "payments", "").await;
    assert_eq!(after["dead_letters"], json!([]), "{after}");

    // Nothing left to replay.
    let again = a
        .send(a.request(Method::POST, "/v1/webhooks/payments/dead-letters/replay"))
        .await
        .ok();
    assert_eq!(num(&again, "/replayed"), 0, "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_webhook_messages_survive_kill9() {
    let mut node = Node::start().await;
    // The receiver is down: nothing listens on its port yet.
    let port = free_port();
    let mut schedule = vec![0u64];
    schedule.extend(std::iter::repeat_n(300, 30));
    put_webhook(
        &node,
        "audit",
        json!({"url": hook_url(port), "pattern": "events.>", "retry_schedule_ms": schedule, "timeout_ms": 1000}),
    )
    .await;
    wait_webhook_known(&node, "audit").await;

    let mut ids = Vec::new();
    for i in 0..20 {
        let answer = publish(&node, &format!("events.n{}", i % 3), &json!({"i": i})).await;
        assert_eq!(num(&answer, "/durable"), 1, "message {i}: {answer}");
        ids.push(text(&answer, "/id").to_string());
    }
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        20,
        "ids are distinct"
    );
    assert_eq!(outbox_counts(&node, "webhook:audit").await, Some((20, 0)));

    // Down for longer than a retry step: the oldest message is due at once
    // when the node is back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    node.kill9();
    let hook = Hook::start_on(port).await;
    node.restart().await;

    let want: BTreeSet<String> = ids.iter().cloned().collect();
    hook.wait_until(
        T,
        "all 20 acknowledged messages delivered after the restart",
        |requests| {
            let delivered: BTreeSet<String> = requests
                .iter()
                .filter(|r| r.status == 200)
                .map(|r| r.webhook_id().to_string())
                .collect();
            delivered.is_superset(&want)
        },
    )
    .await;
    wait_outbox(&node, "webhook:audit", (0, 0)).await;

    // Delivered in the order they were published (one deliverer per
    // destination drains its list oldest first), each with its payload.
    let mut first_seen: Vec<String> = Vec::new();
    for request in hook.requests() {
        let id = request.webhook_id().to_string();
        if !first_seen.contains(&id) {
            let i = ids
                .iter()
                .position(|x| *x == id)
                .expect("an id that was published");
            assert_eq!(
                request.json()["data"],
                json!({"i": i}),
                "payload of message {i}"
            );
            first_seen.push(id);
        }
    }
    assert_eq!(first_seen, ids, "delivery order");
}

/// After a restart, deliverers must not run before the messaging
/// configuration is loaded: one that looked its webhook up too early took it
/// for deleted and dropped every acknowledged message of its outbox. A few
/// MB of other configuration (webhooks with huge URLs) make the load slow
/// enough to show it (this lost all five messages before `load_config` was
/// awaited at startup).
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_resume_only_after_the_configuration_is_loaded() {
    let mut node = Node::start().await;
    let filler = format!("http://127.0.0.1:9/{}", "x".repeat(900_000));
    for i in 0..3 {
        put_webhook(&node, &format!("filler-{i}"), json!({"url": filler})).await;
    }
    let port = free_port();
    let mut schedule = vec![0u64];
    schedule.extend(std::iter::repeat_n(100, 20));
    put_webhook(
        &node,
        "slow-config",
        json!({"url": hook_url(port), "pattern": "jobs.*", "retry_schedule_ms": schedule, "timeout_ms": 1000}),
    )
    .await;
    wait_webhook_known(&node, "slow-config").await;
    let mut ids = BTreeSet::new();
    for i in 0..5 {
        let answer = publish(&node, "jobs.done", &json!({"job": i})).await;
        assert_eq!(num(&answer, "/durable"), 1, "{answer}");
        ids.insert(text(&answer, "/id").to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.kill9();
    let hook = Hook::start_on(port).await;
    node.restart().await;

    // Published as soon as the node answers (checked below).
    let early = publish(&node, "jobs.done", &json!({"job": 5})).await;

    let delivered = |requests: &[hook::Request]| -> BTreeSet<String> {
        requests
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.webhook_id().to_string())
            .collect()
    };
    hook.wait_until(
        T,
        "the 5 messages acknowledged before the crash delivered",
        |requests| delivered(requests).is_superset(&ids),
    )
    .await;
    // The node answered only once it knew its webhooks: that publish went
    // to the outbox too.
    assert_eq!(
        num(&early, "/durable"),
        1,
        "publish right after the restart: {early}"
    );
    let early_id = text(&early, "/id").to_string();
    hook.wait_until(
        T,
        "the message published after the restart delivered",
        |requests| delivered(requests).contains(&early_id),
    )
    .await;
    wait_outbox(&node, "webhook:slow-config", (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_defined_on_one_node_serves_messages_published_on_another() {
    let cluster = Cluster::start(3, &[]).await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let hook = Hook::start().await;
    let key: [u8; 32] = rand::random();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );

    let stored = put_webhook(
        a,
        "shipping",
        json!({"url": hook.url(), "pattern": "ship.*", "secret": secret, "retry_schedule_ms": [0, 200], "timeout_ms": 2000}),
    )
    .await;
    assert_eq!(
        stored["secret"],
        secret.as_str(),
        "the given secret is kept"
    );
    assert_eq!(stored["name"], "shipping");
    // Replicated: every node answers with the same definition.
    assert_eq!(c.get_path("/v1/webhooks/shipping").await.ok(), stored);
    let listed = b.get_path("/v1/webhooks").await.ok();
    assert_eq!(listed["webhooks"], json!([stored]));
    wait_webhook_known(c, "shipping").await;

    let payload = json!({"parcel": "p-1"});
    let answer = publish(c, "ship.sent", &payload).await;
    assert_eq!(num(&answer, "/durable"), 1, "{answer}");
    let id = text(&answer, "/id").to_string();
    let requests = hook.wait_requests(1, T).await;
    assert_eq!(requests[0].webhook_id(), id);
    assert_eq!(requests[0].status, 200);
    requests[0]
        .verify(&secret)
        .unwrap_or_else(|e| panic!("signature with the given secret: {e}"));
    assert_eq!(requests[0].json()["data"], payload);
    // A topic the pattern does not match is not delivered.
    let other = publish(c, "ship.eu.sent", &payload).await;
    assert_eq!(num(&other, "/durable"), 0, "{other}");
    wait_outbox(c, "webhook:shipping", (0, 0)).await;

    // Deleted through node B: node C stops writing to its outbox.
    let deleted = b
        .send(b.request(Method::DELETE, "/v1/webhooks/shipping"))
        .await
        .ok();
    assert_eq!(deleted["deleted"], "shipping");
    assert_error(&a.get_path("/v1/webhooks/shipping").await, 404, "not_found");
    publish_until(
        c,
        "ship.sent",
        &payload,
        "node C to forget the deleted webhook",
        |answer| answer["durable"] == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hook.requests().len(),
        1,
        "{}",
        hook::summarize(&hook.requests())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_webhooks_are_delivered_only_to_certificates_that_verify() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = TestCa::new("shoal test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("writing the CA file");
    let ca_path = ca_file.to_str().expect("a UTF-8 path");
    let signed = ca.server();
    let trusted = Hook::start_tls(&signed.certificate_pem, &signed.key_pem).await;
    let stranger = TestCa::new("a CA nobody trusts").server();
    let untrusted = Hook::start_tls(&stranger.certificate_pem, &stranger.key_pem).await;

    let node = Node::start_with(&["--outbound-ca-file", ca_path]).await;
    let stored = put_webhook(
        &node,
        "secure",
        json!({"url": trusted.url(), "pattern": "secure.*"}),
    )
    .await;
    let secret = text(&stored, "/secret").to_string();
    put_webhook(
        &node,
        "forged",
        json!({"url": untrusted.url(), "pattern": "forged.*", "retry_schedule_ms": [0, 100]}),
    )
    .await;
    wait_webhook_known(&node, "secure").await;
    wait_webhook_known(&node, "forged").await;

    let payload = json!({"order": 1});
    publish(&node, "secure.created", &payload).await;
    publish(&node, "forged.created", &json!({"order": 2})).await;
    let requests = trusted.wait_requests(1, T).await;
    assert!(trusted.url().starts_with("https://"), "{}", trusted.url());
    assert_eq!(requests[0].json()["data"], payload);
    requests[0]
        .verify(&secret)
        .unwrap_or_else(|e| panic!("bad signature: {e}"));
    // A certificate from another CA: every attempt fails in the handshake,
    // so nothing reaches the receiver and the message is a dead letter.
    wait_for(
        T,
        "the forged-certificate message dead-lettered",
        || async {
            let body = dead_letters(&node, "forged", "").await;
            match body["dead_letters"].as_array().map(Vec::len) {
                Some(1) => Ok(()),
                _ => Err(body.to_string()),
            }
        },
    )
    .await;
    assert!(
        untrusted.requests().is_empty(),
        "{}",
        hook::summarize(&untrusted.requests())
    );

    // A CA file that is missing or holds no certificate stops the start
    // before the node creates its data dir.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("writing a file");
    let data_dir = dir.path().join("data");
    let data_dir_arg = data_dir.to_str().expect("a UTF-8 path");
    for path in ["/nonexistent/ca.pem", empty.to_str().expect("a UTF-8 path")] {
        let out = run_shoal(
            &[
                "serve",
                "--data-dir",
                data_dir_arg,
                "--outbound-ca-file",
                path,
            ],
            None,
            &[],
        )
        .await;
        out.assert_clean_failure();
        assert!(
            out.stderr.contains("--outbound-ca-file"),
            "{path}: {}",
            out.stderr
        );
        assert!(
            !data_dir.exists(),
            "{path}: the refused start created {data_dir:?}"
        );
    }
}
