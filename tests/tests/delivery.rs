//! The durable half of messaging: webhooks (retries, Standard Webhooks
//! signatures, dead letters and replay), the outbox across kill -9, routing
//! rules replicated through Raft, and the Kafka bridge (produce, consume,
//! route to Kafka). Webhooks are delivered to a real HTTP receiver
//! (`shoal_tests::hook`), Kafka is a tansu broker per test
//! (`shoal_tests::kafka`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine;
use shoal_tests::hook::{self, hook_url, Hook};
use shoal_tests::kafka::Kafka;
use shoal_tests::ws::{Delivery, Subscriber};
use shoal_tests::*;

/// Time limit of most waits.
const T: Duration = Duration::from_secs(15);

// ----- helpers ----------------------------------------------------------

/// `PUT /v1/{kind}/{name}` with a JSON body; the reply as is.
async fn put_definition(node: &Node, kind: &str, name: &str, body: &Value) -> Reply {
    node.send(
        node.request(Method::PUT, &format!("/v1/{kind}/{name}"))
            .json(body),
    )
    .await
}

/// `PUT /v1/webhooks/{name}`, asserting 200; the stored definition.
async fn put_webhook(node: &Node, name: &str, body: Value) -> Value {
    let reply = put_definition(node, "webhooks", name, &body).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "PUT webhook {name}: {}",
        reply.describe()
    );
    reply.body
}

/// `PUT /v1/routes/{name}`, asserting 200.
async fn put_route(node: &Node, name: &str, body: Value) -> Value {
    let reply = put_definition(node, "routes", name, &body).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "PUT route {name}: {}",
        reply.describe()
    );
    reply.body
}

/// `PUT /v1/bridges/{name}`, asserting 200.
async fn put_bridge(node: &Node, name: &str, body: Value) -> Value {
    let reply = put_definition(node, "bridges", name, &body).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "PUT bridge {name}: {}",
        reply.describe()
    );
    reply.body
}

/// `POST /v1/topics/{topic}` with a JSON payload, asserting 202; the answer.
async fn publish(node: &Node, topic: &str, payload: &Value) -> Value {
    let request = node
        .request(Method::POST, &format!("/v1/topics/{topic}"))
        .header("content-type", "application/json")
        .body(payload.to_string());
    let reply = node.send(request).await;
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "publish to {topic}: {}",
        reply.describe()
    );
    reply.body
}

/// Publishes `payload` every 100 ms until the answer satisfies `done` (a
/// configuration change has reached the node); returns that answer.
async fn publish_until(
    node: &Node,
    topic: &str,
    payload: &Value,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(T, what, || async {
        let answer = publish(node, topic, payload).await;
        if done(&answer) {
            Ok(answer)
        } else {
            Err(format!("publish answered {answer}"))
        }
    })
    .await
}

/// This node's `(pending, dead)` for a destination, if `/v1/outbox` lists it.
async fn outbox_counts(node: &Node, destination: &str) -> Option<(u64, u64)> {
    let body = node.get_path("/v1/outbox").await.ok();
    body["destinations"]
        .as_array()
        .unwrap_or_else(|| panic!("/v1/outbox without destinations: {body}"))
        .iter()
        .find(|d| d["destination"] == destination)
        .map(|d| (num(d, "/pending"), num(d, "/dead")))
}

/// Waits until the node's outbox shows `(pending, dead)` for the destination.
/// A destination that is not listed counts as empty: `/v1/outbox` lists
/// every configured webhook, but other destinations (`kafka:...`) only
/// while they hold entries.
async fn wait_outbox(node: &Node, destination: &str, want: (u64, u64)) {
    wait_for(
        T,
        &format!(
            "outbox of {} for {destination} = (pending, dead) {want:?}",
            node.label()
        ),
        || async {
            let counts = outbox_counts(node, destination).await;
            if counts.unwrap_or((0, 0)) == want {
                Ok(())
            } else {
                Err(format!("{counts:?}"))
            }
        },
    )
    .await
}

/// Waits until the node knows the webhook (its `/v1/outbox` lists every
/// configured webhook): its messaging configuration has caught up.
async fn wait_webhook_known(node: &Node, name: &str) {
    let destination = format!("webhook:{name}");
    wait_for(
        T,
        &format!("{} to know {destination}", node.label()),
        || async {
            match outbox_counts(node, &destination).await {
                Some(_) => Ok(()),
                None => Err(node.get_path("/v1/outbox").await.text),
            }
        },
    )
    .await
}

/// `GET /v1/webhooks/{name}/dead-letters` (with a query), asserting 200.
async fn dead_letters(node: &Node, name: &str, query: &str) -> Value {
    node.get_path(&format!("/v1/webhooks/{name}/dead-letters{query}"))
        .await
        .ok()
}

/// An open `GET /v1/subscribe` SSE stream, after its `subscribed` event.
async fn subscribe(node: &Node, pattern: &str) -> Subscriber {
    node.subscribe_sse(&[("pattern", pattern)]).await
}

/// The next message envelope of a subscription, `None` if none arrives
/// within `timeout`. Panics on `dropped` or `error` events.
async fn next_message(stream: &mut Subscriber, timeout: Duration) -> Option<Value> {
    stream.next(timeout).await.map(Delivery::envelope)
}

/// Reads messages until one whose `data` equals `last`; returns the ones
/// before it. Used with a sentinel published after the messages of interest
/// on the same node: messages between two nodes keep their order, so once
/// the sentinel arrived, everything published before it has too.
async fn messages_until(stream: &mut Subscriber, last: &Value) -> Vec<Value> {
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = next_message(stream, left).await else {
            panic!("no message with data {last} within {T:?}; got {seen:#?}");
        };
        if message["data"] == *last {
            return seen;
        }
        seen.push(message);
    }
}

/// Waits until node `publisher` of the cluster knows that node `subscriber`
/// subscribed to `pattern` (interest travels by gossip).
async fn wait_interest(cluster: &Cluster, publisher: usize, subscriber: usize, pattern: &str) {
    let owner = cluster.node_id(subscriber).await;
    cluster
        .node(publisher)
        .wait_interest(owner, pattern, None, 1)
        .await;
}

fn header<'a>(envelope: &'a Value, name: &str) -> Option<&'a str> {
    envelope["headers"][name].as_str()
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

// ----- routing rules ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn routing_rule_changes_apply_on_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));

    put_route(
        a,
        "regional",
        json!({
            "source": "orders.*",
            "filter": {"json": {"pointer": "/region", "equals": "eu"}},
            "destinations": ["topic:audit.eu"],
        }),
    )
    .await;
    let mut audit = subscribe(b, "audit.*").await;
    wait_interest(&cluster, 2, 1, "audit.*").await;

    // Node C applies the rule: an eu order published there gets routed.
    let probe = json!({"region": "eu", "probe": 1});
    publish_until(
        c,
        "orders.created",
        &probe,
        "node C to apply the eu rule",
        |answer| answer["routed"] == 1,
    )
    .await;
    let eu = publish(c, "orders.created", &json!({"region": "eu", "n": 1})).await;
    let us = publish(c, "orders.created", &json!({"region": "us", "n": 2})).await;
    assert_eq!(num(&eu, "/routed"), 1, "{eu}");
    assert_eq!(num(&us, "/routed"), 0, "{us}");
    publish(c, "audit.eu", &json!({"sentinel": 1})).await;
    let got: Vec<Value> = messages_until(&mut audit, &json!({"sentinel": 1}))
        .await
        .into_iter()
        .filter(|m| m["data"].get("probe").is_none())
        .collect();
    assert_eq!(got.len(), 1, "only the eu order is routed: {got:#?}");
    let copy = &got[0];
    assert_eq!(copy["topic"], "audit.eu");
    assert_eq!(copy["data"], json!({"region": "eu", "n": 1}));
    assert_eq!(header(copy, "shoal-origin-id"), eu["id"].as_str(), "{copy}");
    assert_eq!(header(copy, "shoal-hops"), Some("1"), "{copy}");
    assert_ne!(copy["id"], eu["id"], "the copy has an id of its own");

    // The rule changes through node A; node C follows without a restart.
    put_route(
        a,
        "regional",
        json!({
            "source": "orders.*",
            "filter": {"json": {"pointer": "/region", "equals": "us"}},
            "destinations": ["topic:audit.us"],
        }),
    )
    .await;
    let probe = json!({"region": "us", "probe": 2});
    publish_until(
        c,
        "orders.created",
        &probe,
        "node C to apply the changed rule",
        |answer| answer["routed"] == 1,
    )
    .await;
    let eu = publish(c, "orders.created", &json!({"region": "eu", "n": 3})).await;
    let us = publish(c, "orders.created", &json!({"region": "us", "n": 4})).await;
    assert_eq!(num(&eu, "/routed"), 0, "{eu}");
    assert_eq!(num(&us, "/routed"), 1, "{us}");
    publish(c, "audit.eu", &json!({"sentinel": 2})).await;
    let got: Vec<Value> = messages_until(&mut audit, &json!({"sentinel": 2}))
        .await
        .into_iter()
        .filter(|m| m["data"].get("probe").is_none())
        .collect();
    assert_eq!(got.len(), 1, "only the us order is routed now: {got:#?}");
    assert_eq!(got[0]["topic"], "audit.us");
    assert_eq!(got[0]["data"], json!({"region": "us", "n": 4}));
    assert_eq!(header(&got[0], "shoal-origin-id"), us["id"].as_str());

    // The other nodes have the same rule (stored in Raft).
    let on_b = b.get_path("/v1/routes/regional").await.ok();
    assert_eq!(on_b["destinations"], json!(["topic:audit.us"]), "{on_b}");
    assert_eq!(on_b["filter"]["json"]["equals"], "us", "{on_b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_rule_loops_stop_after_eight_hops() {
    let node = Node::start().await;
    put_route(
        &node,
        "a-to-b",
        json!({"source": "loop.a", "destinations": ["topic:loop.b"]}),
    )
    .await;
    put_route(
        &node,
        "b-to-a",
        json!({"source": "loop.b", "destinations": ["topic:loop.a"]}),
    )
    .await;
    let mut stream = subscribe(&node, "loop.*").await;

    let probe = json!({"probe": true});
    publish_until(
        &node,
        "loop.a",
        &probe,
        "both loop rules applied",
        |answer| answer["routed"] == 8,
    )
    .await;
    let payload = json!({"final": true});
    let answer = publish(&node, "loop.a", &payload).await;
    assert_eq!(num(&answer, "/routed"), 8, "{answer}");
    let id = text(&answer, "/id").to_string();

    // The original and 8 copies, alternating topics, then nothing more.
    let mut chain = Vec::new();
    while let Some(message) = next_message(&mut stream, Duration::from_secs(1)).await {
        if message["data"] == payload {
            chain.push(message);
        }
    }
    assert_eq!(chain.len(), 9, "{chain:#?}");
    assert_eq!(chain[0]["id"], id.as_str());
    assert_eq!(header(&chain[0], "shoal-hops"), None);
    for (hops, message) in chain.iter().enumerate() {
        let topic = if hops % 2 == 0 { "loop.a" } else { "loop.b" };
        assert_eq!(message["topic"], topic, "hop {hops}: {message}");
        if hops > 0 {
            assert_eq!(
                header(message, "shoal-hops"),
                Some(hops.to_string().as_str()),
                "{message}"
            );
            // The first copy names the original; later ones name a message
            // of the chain (the original or the copy they were made from).
            let origin = header(message, "shoal-origin-id");
            assert!(
                origin == Some(id.as_str()) || origin == chain[hops - 1]["id"].as_str(),
                "hop {hops}: shoal-origin-id {origin:?}"
            );
        }
    }
    // The node is fine afterwards.
    assert_eq!(node.get_path("/ready").await.status, StatusCode::OK);
}

// ----- Kafka ----------------------------------------------------------------

/// `POST /v1/kafka/{topic}` with a JSON payload; `(partition, offset)`.
async fn produce(node: &Node, topic: &str, query: &[(&str, &str)], payload: &Value) -> (u64, u64) {
    let request = node
        .request(Method::POST, &format!("/v1/kafka/{topic}"))
        .query(query)
        .header("content-type", "application/json")
        .body(payload.to_string());
    let reply = node.send(request).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "produce to {topic}: {}",
        reply.describe()
    );
    assert_eq!(reply.body["topic"], topic);
    (num(&reply.body, "/partition"), num(&reply.body, "/offset"))
}

/// Reads messages until one of each expected `data` arrived; returns them
/// by data, in the order of `want`.
async fn wait_messages(stream: &mut Subscriber, want: &[Value], timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut found: Vec<Option<Value>> = vec![None; want.len()];
    let mut others = Vec::new();
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = next_message(stream, left).await else {
            panic!("timed out after {timeout:?}; found {found:#?}; others {others:#?}");
        };
        match want.iter().position(|w| message["data"] == *w) {
            Some(i) if found[i].is_none() => found[i] = Some(message),
            _ => others.push(message),
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_produce_bridge_and_route() {
    let kafka = Kafka::start().await;
    let node = Node::start_with(&["--kafka-brokers", &kafka.brokers()]).await;
    let mut stream = subscribe(&node, "from-kafka.>").await;

    // Produced before the bridge exists: consumed from the earliest offset.
    let early = [json!({"n": 1}), json!({"n": 2})];
    let mut produced = vec![
        (
            produce(&node, "orders", &[("key", "k1")], &early[0]).await,
            Some("k1"),
        ),
        (
            produce(&node, "orders", &[("partition", "2")], &early[1]).await,
            None,
        ),
    ];
    assert_eq!(produced[1].0 .0, 2, "the requested partition");

    let bridge = put_bridge(
        &node,
        "orders-in",
        json!({"kafka_topic": "orders", "topic": "from-kafka.orders"}),
    )
    .await;
    assert_eq!(bridge["name"], "orders-in");
    let late = json!({"n": 3});
    produced.push((
        produce(&node, "orders", &[("key", "k3")], &late).await,
        Some("k3"),
    ));

    let want = [early[0].clone(), early[1].clone(), late];
    let messages = wait_messages(&mut stream, &want, T).await;
    for (message, ((partition, offset), key)) in messages.iter().zip(&produced) {
        assert_eq!(message["topic"], "from-kafka.orders", "{message}");
        assert_eq!(
            message["id"],
            format!("kafka-orders-{partition}-{offset}"),
            "{message}"
        );
        assert_eq!(message["source"], "kafka://orders");
        assert_eq!(message["datacontenttype"], "application/json");
        assert_eq!(header(message, "kafka-topic"), Some("orders"), "{message}");
        assert_eq!(
            header(message, "kafka-partition"),
            Some(partition.to_string().as_str())
        );
        assert_eq!(
            header(message, "kafka-offset"),
            Some(offset.to_string().as_str())
        );
        assert_eq!(header(message, "kafka-key"), *key, "{message}");
    }

    // A route to Kafka goes through the outbox; a bridge back proves it landed.
    put_route(
        &node,
        "to-kafka",
        json!({"source": "shop.*", "destinations": ["kafka:audit"]}),
    )
    .await;
    let sale = json!({"sku": "x-1", "qty": 2});
    let answer = publish_until(
        &node,
        "shop.sale",
        &sale,
        "the route to Kafka applied",
        |answer| answer["durable"] == 1,
    )
    .await;
    let id = text(&answer, "/id").to_string();
    wait_outbox(&node, "kafka:audit", (0, 0)).await;
    put_bridge(
        &node,
        "audit-in",
        json!({"kafka_topic": "audit", "topic": "from-kafka.audit"}),
    )
    .await;
    let back = wait_messages(&mut stream, std::slice::from_ref(&sale), T).await;
    let back = &back[0];
    assert_eq!(back["topic"], "from-kafka.audit", "{back}");
    assert_eq!(header(back, "kafka-topic"), Some("audit"), "{back}");
    assert_eq!(back["datacontenttype"], "application/json");
    assert_ne!(back["id"], id.as_str());

    let bridges = node.get_path("/v1/bridges").await.ok();
    assert_eq!(
        bridges["bridges"].as_array().map(Vec::len),
        Some(2),
        "{bridges}"
    );
}

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
