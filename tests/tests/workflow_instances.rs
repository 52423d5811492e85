//! Workflow instances on real nodes: every task kind to the DSL's
//! semantics (happy and error paths), events from topics applied once,
//! idempotent starts, timers firing once across `kill -9` of the leader,
//! operators' actions by id and by filter, a new version beside running
//! instances, lifecycle events across the death of the leader that
//! committed them, and hostile requests.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_tests::delivery_support::{next_message, subscribe};
use shoal_tests::hook::{summarize, Hook};
use shoal_tests::tls::TestCa;
use shoal_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// Publishes a definition whose first line is
/// `document: {dsl: '1.0.0', namespace: N, name: M, version: 'V'}`.
async fn define(node: &Node, yaml: &str) {
    let line = yaml
        .lines()
        .find(|l| l.starts_with("document:"))
        .expect("a document line");
    let field = |name: &str| {
        let start = line.find(&format!("{name}: ")).expect(name) + name.len() + 2;
        line[start..]
            .split([',', '}'])
            .next()
            .expect(name)
            .trim()
            .trim_matches('\'')
            .to_string()
    };
    let path = format!(
        "/v1/workflows/definitions/{}/{}/{}",
        field("namespace"),
        field(" name"),
        field("version"),
    );
    let reply = node
        .send(node.request(Method::PUT, &path).body(yaml.to_string()))
        .await;
    assert!(
        reply.status.is_success(),
        "publishing {path}: {}",
        reply.describe()
    );
}

async fn start(node: &Node, workflow: &str, id: &str, input: Value) -> Reply {
    node.post_json(
        &format!("/v1/workflows/{workflow}/instances"),
        &json!({"id": id, "input": input}),
    )
    .await
}

async fn instance(node: &Node, id: &str) -> Value {
    let reply = node
        .get_path(&format!("/v1/workflows/instances/{id}"))
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.describe());
    reply.body
}

/// Waits until the instance has this status; returns it.
async fn wait_status(node: &Node, id: &str, status: &str) -> Value {
    wait_for(WAIT, &format!("instance {id} {status}"), || async {
        let reply = node
            .get_path(&format!("/v1/workflows/instances/{id}"))
            .await;
        if reply.body["status"] == json!(status) {
            Ok(reply.body)
        } else {
            Err(reply.describe())
        }
    })
    .await
}

/// Publishes a CloudEvent (binary mode) on a topic.
async fn publish(node: &Node, topic: &str, kind: &str, id: &str, data: Value) {
    let path = format!("/v1/topics/{topic}");
    let reply = node.post_cloud_event(&path, kind, id, &data).await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.describe());
}

/// Publishes until the instance is past its listen (the node's intake
/// takes the event's type once its replica has the definition).
async fn deliver(node: &Node, id: &str, topic: &str, kind: &str, event_id: &str, data: Value) {
    wait_for(WAIT, &format!("{kind} applied to {id}"), || {
        let data = data.clone();
        async move {
            publish(node, topic, kind, event_id, data).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let found = instance(node, id).await;
            let applied = found["history"]
                .as_array()
                .is_some_and(|h| h.iter().any(|e| e["what"] == json!("event.applied")));
            if applied {
                Ok(())
            } else {
                Err(found.to_string())
            }
        }
    })
    .await
}

fn history(instance: &Value) -> Vec<String> {
    instance["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| e["what"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn count(instance: &Value, what: &str) -> usize {
    history(instance).iter().filter(|w| *w == what).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn data_tasks_run_to_the_spec() {
    let node = Node::start().await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: data, version: '1.0.0'}
input:
  from: '${ .order }'
output:
  as: '${ {total, lines: .count, tier, context: $context} }'
do:
  - sum:
      for: {each: line, in: '.lines', at: i}
      do:
        - add:
            set:
              total: '${ .total + $line.price * $line.qty }'
              count: '${ $i + 1 }'
              lines: '${ .lines }'
  - classify:
      switch:
        - big: {when: '.total >= 100', then: gold}
        - other: {then: plain}
  - gold:
      set: '${ . + {tier: "gold"} }'
      export: {as: '${ {tiered: true} }'}
      then: end
  - plain:
      set: '${ . + {tier: "plain"} }'
"#,
    )
    .await;
    let order = |qty: u64| json!({"order": {"total": 0, "lines": [{"price": 10, "qty": qty}, {"price": 5, "qty": 1}]}});
    assert_eq!(
        start(&node, "test/data", "big", order(10))
            .await
            .status
            .as_u16(),
        201
    );
    assert_eq!(
        start(&node, "test/data", "small", order(1))
            .await
            .status
            .as_u16(),
        201
    );
    let big = wait_status(&node, "big", "completed").await;
    assert_eq!(
        big["output"],
        json!({"total": 105, "lines": 2, "tier": "gold", "context": {"tiered": true}})
    );
    let small = wait_status(&node, "small", "completed").await;
    assert_eq!(
        small["output"],
        json!({"total": 15, "lines": 2, "tier": "plain", "context": {}})
    );

    // raise: an uncaught error faults the instance with the error and the
    // task that raised it; `if` skips a task.
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: raise, version: '1.0.0'}
use:
  errors:
    outOfStock: {type: 'https://shoal.dev/errors/out-of-stock', status: 409, title: Out of stock}
do:
  - check:
      if: '.qty > 5'
      raise: {error: outOfStock}
  - ok:
      set: {reserved: '${ .qty }'}
"#,
    )
    .await;
    start(&node, "test/raise", "raise-1", json!({"qty": 9})).await;
    start(&node, "test/raise", "raise-2", json!({"qty": 2})).await;
    let faulted = wait_status(&node, "raise-1", "faulted").await;
    assert_eq!(
        faulted["error"],
        json!({"type": "https://shoal.dev/errors/out-of-stock", "status": 409,
               "title": "Out of stock", "instance": "/do/0/check"})
    );
    let skipped = wait_status(&node, "raise-2", "completed").await;
    assert_eq!(skipped["output"], json!({"reserved": 2}));

    // fork: every branch's output in order; competing, the first to finish;
    // two branches' timers due at the same moment both fire.
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: fork, version: '1.0.0'}
do:
  - both:
      fork:
        branches:
          - a: {set: {branch: a}}
          - b: {set: {branch: b}}
  # Two timers of one instance due at the same moment: both fire.
  - twins:
      fork:
        branches:
          - left: {wait: {milliseconds: 300}}
          - right: {wait: {milliseconds: 300}}
  - race:
      fork:
        compete: true
        branches:
          - slow:
              do:
                - sleep: {wait: {minutes: 10}}
                - done: {set: '${ "slow" }'}
          - fast:
              do:
                - sleep: {wait: {milliseconds: 200}}
                - done: {set: '${ "fast" }'}
      output:
        as: '${ {winner: .} }'
"#,
    )
    .await;
    start(&node, "test/fork", "fork-1", json!({})).await;
    let forked = wait_status(&node, "fork-1", "completed").await;
    assert_eq!(forked["output"], json!({"winner": "fast"}));
    assert!(forked["waiting"].as_array().is_some_and(Vec::is_empty));
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_retried_with_idempotency_keys_and_failures_are_caught() {
    let node = Node::start().await;
    let hook = Hook::start().await;
    define(
        &node,
        &format!(
            r#"
document: {{dsl: '1.0.0', namespace: test, name: charge, version: '1.0.0'}}
do:
  - charge:
      try:
        - pay:
            call: http
            with:
              method: post
              endpoint: '{url}'
              headers: {{x-order: '${{ .order }}'}}
              body: '${{ {{amount: .amount}} }}'
              output: response
      catch:
        errors:
          with: {{type: 'https://serverlessworkflow.io/spec/1.0.0/errors/communication'}}
        as: failure
        retry:
          delay: {{milliseconds: 100}}
          backoff: {{exponential: {{}}}}
          limit: {{attempt: {{count: 2}}}}
        do:
          - refund:
              set: {{refunded: true, status: '${{ $failure.status }}'}}
  - result:
      set: '${{ {{status: (.statusCode // .status), refunded: (.refunded // false)}} }}'
"#,
            url = hook.url()
        ),
    )
    .await;

    // Two failures, then an answer: three requests, each attempt its own key.
    hook.fail_first(2, 503);
    start(
        &node,
        "test/charge",
        "pay-1",
        json!({"order": "o-1", "amount": 5}),
    )
    .await;
    let paid = wait_status(&node, "pay-1", "completed").await;
    assert_eq!(paid["output"], json!({"status": 200, "refunded": false}));
    let requests = hook.requests();
    assert_eq!(requests.len(), 3, "{}", summarize(&requests));
    let keys: Vec<&str> = requests
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        [
            "pay-1/do/0/charge/try/0/pay/0",
            "pay-1/do/0/charge/try/0/pay#1/0",
            "pay-1/do/0/charge/try/0/pay#2/0"
        ]
    );
    assert_eq!(requests[0].header("x-order"), Some("o-1"));
    assert_eq!(requests[0].json(), json!({"amount": 5}));

    // Failing past the retry limit: the catch's `do` compensates.
    hook.set_status(500);
    start(
        &node,
        "test/charge",
        "pay-2",
        json!({"order": "o-2", "amount": 7}),
    )
    .await;
    let refunded = wait_status(&node, "pay-2", "completed").await;
    assert_eq!(refunded["output"], json!({"status": 500, "refunded": true}));
    assert_eq!(count(&refunded, "call.failed"), 3);

    // An uncaught call failure faults the instance with a communication error.
    define(
        &node,
        &format!(
            r#"
document: {{dsl: '1.0.0', namespace: test, name: plain-call, version: '1.0.0'}}
do:
  - ship:
      call: http
      with: {{method: get, endpoint: '{url}'}}
"#,
            url = hook.url()
        ),
    )
    .await;
    start(&node, "test/plain-call", "ship-1", json!({})).await;
    let faulted = wait_status(&node, "ship-1", "faulted").await;
    assert_eq!(
        faulted["error"]["type"],
        json!("https://serverlessworkflow.io/spec/1.0.0/errors/communication")
    );
    assert_eq!(faulted["error"]["status"], json!(500));

    // Retry from the failed task once the receiver is back: the call is
    // made again with a new key and the instance completes.
    hook.set_status(200);
    let retried = node
        .post_json("/v1/workflows/instances/ship-1/retry", &json!({}))
        .await;
    assert_eq!(retried.status.as_u16(), 200, "{}", retried.describe());
    wait_status(&node, "ship-1", "completed").await;
    let last = hook.requests().last().cloned().expect("a request");
    assert_eq!(last.header("idempotency-key"), Some("ship-1/do/0/ship/1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn emit_listen_and_timeouts_connect_instances_through_topics() {
    let node = Node::start().await;
    // The payment service stand-in is another workflow: it listens for a
    // request and emits the answer the order listens for.
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: order, version: '1.0.0'}
do:
  - request:
      emit:
        event:
          with:
            type: test.payment.requested
            source: test
            data: '${ {order: .order, amount: .amount} }'
  - await:
      try:
        - paid:
            listen:
              to:
                one:
                  with: {type: test.payment.paid}
                  correlate:
                    order: {from: '${ .data.order }', expect: '${ .order }'}
            timeout: {after: {seconds: 2}}
      catch:
        errors:
          with: {type: 'https://serverlessworkflow.io/spec/1.0.0/errors/timeout'}
        do:
          - release:
              emit:
                event:
                  with: {type: test.stock.released, source: test, data: '${ {order: .order} }'}
          - cancelled:
              set: {status: cancelled}
              then: end
  - done:
      set: '${ {status: "paid", by: .[0].data.by} }'
"#,
    )
    .await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: payments, version: '1.0.0'}
do:
  - request:
      listen:
        to:
          one:
            with: {type: test.payment.requested}
            correlate:
              order: {from: '${ .data.order }', expect: '${ .order }'}
  - answer:
      emit:
        event:
          with:
            type: test.payment.paid
            source: test
            data: '${ {order: .[0].data.order, by: "card"} }'
"#,
    )
    .await;
    start(&node, "test/payments", "pay-o1", json!({"order": "o1"})).await;
    wait_status(&node, "pay-o1", "waiting").await;
    start(
        &node,
        "test/order",
        "o1",
        json!({"order": "o1", "amount": 3}),
    )
    .await;
    let paid = wait_status(&node, "o1", "completed").await;
    assert_eq!(paid["output"], json!({"status": "paid", "by": "card"}));
    wait_status(&node, "pay-o1", "completed").await;

    // No payment: the timeout fires, the catch releases the stock.
    start(
        &node,
        "test/order",
        "o2",
        json!({"order": "o2", "amount": 3}),
    )
    .await;
    let cancelled = wait_status(&node, "o2", "completed").await;
    assert_eq!(cancelled["output"], json!({"status": "cancelled"}));
    assert_eq!(count(&cancelled, "timer.fired"), 1);
    assert_eq!(count(&cancelled, "emitted"), 2, "{:?}", history(&cancelled));
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_applied_once_and_starts_are_idempotent() {
    let node = Node::start().await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: pair, version: '1.0.0'}
do:
  - both:
      listen:
        to:
          all:
            - with: {type: test.part}
            - with: {type: test.part}
  - ids:
      set: '${ map(.id) }'
"#,
    )
    .await;
    let first = start(&node, "test/pair", "p1", json!({"n": 1})).await;
    assert_eq!(first.status.as_u16(), 201, "{}", first.describe());
    let again = start(&node, "test/pair", "p1", json!({"n": 2})).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.describe());
    assert_eq!(
        again.body["input"],
        json!({"n": 1}),
        "the existing instance"
    );
    assert_eq!(again.body["created_ms"], first.body["created_ms"]);
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: other, version: '1.0.0'}
do:
  - x: {set: {x: 1}}
"#,
    )
    .await;
    assert_error(
        &start(&node, "test/other", "p1", json!({})).await,
        409,
        "id_taken",
    );

    wait_status(&node, "p1", "waiting").await;
    deliver(&node, "p1", "parts", "test.part", "e-1", json!({})).await;
    // The same event again (a redelivery) must not meet the second filter.
    for _ in 0..3 {
        publish(&node, "parts", "test.part", "e-1", json!({})).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = instance(&node, "p1").await;
    assert_eq!(waiting["status"], json!("waiting"), "{waiting}");
    assert_eq!(count(&waiting, "event.applied"), 1);
    publish(&node, "parts", "test.part", "e-2", json!({})).await;
    let done = wait_status(&node, "p1", "completed").await;
    assert_eq!(done["output"], json!(["e-1", "e-2"]));
    let metrics = node.client().get(node.url("/metrics")).send().await;
    let metrics = metrics.expect("metrics").text().await.expect("text");
    assert!(
        metrics.contains("shoal_workflow_events_total{result=\"duplicate\"}"),
        "duplicates are counted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timer_fires_once_when_the_leader_is_killed() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let other = (leader + 1) % 3;
    define(
        cluster.node(other),
        r#"
document: {dsl: '1.0.0', namespace: test, name: timer, version: '1.0.0'}
do:
  - pause: {wait: {seconds: 4}}
  - done: {set: {done: true}}
"#,
    )
    .await;
    let ids: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
    for id in &ids {
        let reply = start(cluster.node(other), "test/timer", id, json!({})).await;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.describe());
    }
    for id in &ids {
        let waiting = wait_status(cluster.node(other), id, "waiting").await;
        assert!(
            waiting["outcomes"]["/do/0/pause"].is_object(),
            "armed: {waiting}"
        );
    }
    cluster.node_mut(leader).kill9();
    let survivor = (0..3).find(|&i| i != leader).expect("a survivor");
    for id in &ids {
        let done = wait_status(cluster.node(survivor), id, "completed").await;
        assert_eq!(count(&done, "timer.fired"), 1, "{:?}", history(&done));
        assert_eq!(count(&done, "completed"), 1, "{:?}", history(&done));
        assert_eq!(done["output"], json!({"done": true}));
    }
    cluster.node_mut(leader).restart().await;
    cluster.wait_formed().await;
    for id in &ids {
        let seen = wait_status(cluster.node(leader), id, "completed").await;
        assert_eq!(count(&seen, "timer.fired"), 1, "the restarted node agrees");
    }
}

/// Clients starting instances of `test/quick` through any node that
/// answers, one after the other, until stopped; each client names its
/// instances `{prefix}{client}-{n}`.
struct Starters {
    stop: Arc<AtomicBool>,
    started: Arc<Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Starters {
    fn spawn(cluster: &Cluster, prefix: &str, clients: usize) -> Starters {
        let client = cluster.node(0).client().clone();
        let endpoints: Vec<String> = (0..3).map(|i| cluster.node(i).endpoint()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|k| {
                let (client, endpoints) = (client.clone(), endpoints.clone());
                let (stop, started) = (stop.clone(), started.clone());
                let prefix = format!("{prefix}{k}-");
                tokio::spawn(async move {
                    let (mut n, mut node) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("{prefix}{n:05}");
                        let reply = client
                            .post(format!(
                                "{}/v1/workflows/test/quick/instances",
                                endpoints[node]
                            ))
                            .json(&json!({"id": id, "input": {}}))
                            .timeout(Duration::from_secs(2))
                            .send()
                            .await;
                        match reply {
                            Ok(reply) if reply.status().is_success() => {
                                started.lock().expect("started").push(id);
                                n += 1;
                            }
                            // A node down or without a leader yet: another
                            // node, a bit later.
                            _ => {
                                node = (node + 1) % endpoints.len();
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Starters {
            stop,
            started,
            clients,
        }
    }

    fn ids(&self) -> BTreeSet<String> {
        self.started
            .lock()
            .expect("started")
            .iter()
            .cloned()
            .collect()
    }

    /// Waits until `more` instances more than now have started.
    async fn wait_more(&self, more: usize, what: &str) {
        let want = self.started.lock().expect("started").len() + more;
        wait_for(WAIT, what, || async {
            let n = self.started.lock().expect("started").len();
            (n >= want)
                .then_some(())
                .ok_or(format!("{n} of {want} started"))
        })
        .await;
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("a starting client");
        }
    }
}

/// The ids among `ids` that are in `status` on `node`.
async fn in_status(node: &Node, ids: &BTreeSet<String>, status: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut after = String::new();
    loop {
        let reply = node
            .get_path(&format!(
                "/v1/workflows/instances?status={status}&limit=1000&after={after}"
            ))
            .await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.describe());
        for instance in reply.body["instances"].as_array().expect("instances") {
            let id = instance["id"].as_str().expect("id");
            if ids.contains(id) {
                found.push(id.to_string());
            }
        }
        match reply.body["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => return found,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_started_while_a_new_leader_loads_them_are_all_driven() {
    // A new leader reads every instance, then follows changes from the
    // revision it read them at. Read in pages from successive snapshots, an
    // instance started between two pages that sorted before the second was
    // in neither page and older than the revision followed: never driven.
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    define(cluster.node(leader), QUICK).await;
    // Several pages of finished instances, all sorting after those started
    // during the leader changes.
    let finished = Starters::spawn(&cluster, "z", 8);
    finished.wait_more(2500, "2500 instances started").await;
    finished.stop().await;
    let starters = Starters::spawn(&cluster, "a", 4);
    for round in 0..3 {
        let leader = cluster.wait_leader().await;
        starters.wait_more(100, "starts going on").await;
        cluster.node_mut(leader).kill9();
        let new_leader = cluster.wait_leader().await;
        // Starts go on while the new leader loads the instances.
        starters
            .wait_more(200, "starts through the new leader")
            .await;
        let ids = starters.ids();
        let node = cluster.node(new_leader);
        wait_for(
            WAIT,
            &format!("round {round}: every started instance driven"),
            || async {
                let mut left = in_status(node, &ids, "pending").await;
                left.extend(in_status(node, &ids, "running").await);
                let stuck = format!("{} not driven: {left:?}", left.len());
                left.is_empty().then_some(()).ok_or(stuck)
            },
        )
        .await;
        cluster.node_mut(leader).restart().await;
        cluster.wait_formed().await;
    }
    starters.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_suspend_resume_cancel_and_retry_by_filter() {
    let node = Node::start().await;
    let hook = Hook::start().await;
    hook.set_status(500);
    define(
        &node,
        &format!(
            r#"
document: {{dsl: '1.0.0', namespace: ops, name: call, version: '1.0.0'}}
do:
  - call: {{call: http, with: {{method: post, endpoint: '{url}', body: '${{ . }}'}}}}
"#,
            url = hook.url()
        ),
    )
    .await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: ops, name: sleep, version: '1.0.0'}
do:
  - long: {wait: {minutes: 10}}
"#,
    )
    .await;
    for i in 0..3 {
        start(&node, "ops/call", &format!("c{i}"), json!({"i": i})).await;
    }
    for i in 0..3 {
        wait_status(&node, &format!("c{i}"), "faulted").await;
    }
    let faulted = node
        .get_path("/v1/workflows/instances?namespace=ops&status=faulted")
        .await;
    assert_eq!(faulted.body["instances"].as_array().map(Vec::len), Some(3));
    let big = node
        .get_path("/v1/workflows/instances?namespace=ops&where=.input.i%20%3E%3D%201")
        .await;
    let ids: BTreeSet<&str> = big.body["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| text(i, "/id"))
        .collect();
    assert_eq!(ids, BTreeSet::from(["c1", "c2"]), "the jq filter");

    hook.set_status(200);
    let retried = node
        .post_json(
            "/v1/workflows/ops/call/instances/retry?status=faulted",
            &json!({}),
        )
        .await;
    assert_eq!(retried.status.as_u16(), 200, "{}", retried.describe());
    assert_eq!(retried.body["changed"].as_array().map(Vec::len), Some(3));
    for i in 0..3 {
        wait_status(&node, &format!("c{i}"), "completed").await;
    }

    start(&node, "ops/sleep", "s1", json!({})).await;
    start(&node, "ops/sleep", "s2", json!({})).await;
    wait_status(&node, "s1", "waiting").await;
    let suspended = node
        .post_json("/v1/workflows/instances/s1/suspend", &json!({}))
        .await;
    assert_eq!(
        suspended.body["status"],
        json!("suspended"),
        "{}",
        suspended.describe()
    );
    assert_error(
        &node
            .post_json("/v1/workflows/instances/s1/suspend", &json!({}))
            .await,
        409,
        "wrong_status",
    );
    let resumed = node
        .post_json("/v1/workflows/instances/s1/resume", &json!({}))
        .await;
    assert_eq!(resumed.status.as_u16(), 200, "{}", resumed.describe());
    wait_status(&node, "s1", "waiting").await;
    let cancelled = node
        .post_json("/v1/workflows/ops/sleep/instances/cancel", &json!({}))
        .await;
    let changed: BTreeSet<&str> = cancelled.body["changed"]
        .as_array()
        .expect("changed")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(changed, BTreeSet::from(["s1", "s2"]));
    for id in ["s1", "s2"] {
        assert_eq!(instance(&node, id).await["status"], json!("cancelled"));
    }
    assert_error(
        &node
            .post_json("/v1/workflows/instances/s1/resume", &json!({}))
            .await,
        409,
        "wrong_status",
    );

    // shoal wf lists and acts too.
    let endpoint = node.endpoint();
    let listed = run_shoal(
        &[
            "wf",
            "--endpoint",
            &endpoint,
            "instances",
            "--workflow",
            "ops/sleep",
        ],
        None,
        &[],
    )
    .await;
    listed.assert_success();
    assert_eq!(listed.lines().len(), 2, "{}", listed.stdout_text());
    assert!(listed.stdout_text().contains("cancelled"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_handed_to_an_actor_and_overtaken_by_a_later_write_is_not_written_over_it() {
    // The runner hands an instance's actor the state it saw change; each
    // actor waits 3 s before it evaluates a handed state. The event's
    // arrival is handed over, and during the wait an operator suspends the
    // instance: the actor's write, based on the state before the suspend,
    // must lose to it, and the instance continue only once resumed.
    let node = Node::builder()
        .env("SHOAL_FAULT_WAKE_DELAY_MS", "3000")
        .start()
        .await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: overtaken, version: '1.0.0'}
do:
  - wait: {listen: {to: {one: {with: {type: test.go}}}}}
  - out: {set: {done: true}}
"#,
    )
    .await;
    start(&node, "test/overtaken", "o1", json!({})).await;
    wait_status(&node, "o1", "waiting").await;
    deliver(&node, "o1", "go", "test.go", "go-1", json!({})).await;
    let suspended = node
        .post_json("/v1/workflows/instances/o1/suspend", &json!({}))
        .await;
    assert_eq!(suspended.status.as_u16(), 200, "{}", suspended.describe());
    // The actor's write is refused, or (wrongly) taken over the suspend.
    let held = wait_for(WAIT, "the actor's write refused", || async {
        let text = node.get_path("/metrics").await.text;
        let refused = text
            .lines()
            .any(|l| l.starts_with("shoal_workflow_write_conflicts_total "));
        let held = instance(&node, "o1").await;
        if refused || held["status"] != json!("suspended") {
            Ok(held)
        } else {
            Err("no conflict counted yet".to_string())
        }
    })
    .await;
    assert_eq!(held["status"], json!("suspended"), "{held}");
    assert_eq!(count(&held, "completed"), 0, "{:?}", history(&held));
    let resumed = node
        .post_json("/v1/workflows/instances/o1/resume", &json!({}))
        .await;
    assert_eq!(resumed.status.as_u16(), 200, "{}", resumed.describe());
    let done = wait_status(&node, "o1", "completed").await;
    assert_eq!(done["output"], json!({"done": true}));
    assert_eq!(count(&done, "event.applied"), 1, "{:?}", history(&done));
    assert_eq!(count(&done, "completed"), 1, "{:?}", history(&done));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_leaves_running_instances_on_theirs() {
    let node = Node::start().await;
    let version = |v: &str, out: u64| {
        format!(
            r#"
document: {{dsl: '1.0.0', namespace: test, name: versioned, version: '{v}'}}
do:
  - wait: {{listen: {{to: {{one: {{with: {{type: test.go}}}}}}}}}}
  - out: {{set: {{version: {out}}}}}
"#
        )
    };
    define(&node, &version("1.0.0", 1)).await;
    start(&node, "test/versioned", "old", json!({})).await;
    wait_status(&node, "old", "waiting").await;
    define(&node, &version("1.10.0", 2)).await;
    define(&node, &version("1.9.0", 3)).await;
    let new = start(&node, "test/versioned", "new", json!({})).await;
    assert_eq!(
        new.body["version"],
        json!("1.10.0"),
        "the newest by semantic version"
    );
    wait_status(&node, "new", "waiting").await;
    deliver(&node, "old", "go", "test.go", "go-1", json!({})).await;
    assert_eq!(
        wait_status(&node, "old", "completed").await["output"],
        json!({"version": 1})
    );
    assert_eq!(
        wait_status(&node, "new", "completed").await["output"],
        json!({"version": 2})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_instance_requests_are_refused_and_runaway_expressions_fault() {
    let node = Node::start().await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: ok, version: '1.0.0'}
do:
  - x: {set: {x: 1}}
"#,
    )
    .await;
    let big = json!({"blob": "x".repeat(300 * 1024)});
    assert_error(
        &start(&node, "test/ok", "big", big).await,
        413,
        "payload_too_large",
    );
    assert_error(
        &start(&node, "test/ok", "bad id", json!({})).await,
        400,
        "bad_request",
    );
    assert_error(
        &start(&node, "test/ok", &"x".repeat(129), json!({})).await,
        400,
        "bad_request",
    );
    assert_error(
        &start(&node, "test/nothing", "a", json!({})).await,
        404,
        "not_found",
    );
    assert_error(
        &start(&node, "Test/ok", "a", json!({})).await,
        400,
        "invalid_definition",
    );
    let post = |path: &str, body: &str| {
        node.send(
            node.request(Method::POST, path)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    };
    for body in [
        "[]",
        "{",
        "{\"input\": 1, \"extra\": true}",
        "{\"version\": \"x\"}",
    ] {
        let reply = post("/v1/workflows/test/ok/instances", body).await;
        assert!(reply.status.as_u16() == 400, "{body}: {}", reply.describe());
    }
    for query in [
        "status=sleeping",
        "where=.[",
        "limit=0",
        "limit=5000",
        "min_age_ms=-1",
    ] {
        let reply = node
            .get_path(&format!("/v1/workflows/instances?{query}"))
            .await;
        assert_eq!(reply.status.as_u16(), 400, "{query}: {}", reply.describe());
        assert!(
            reply.body["error"]["code"].is_string(),
            "{query}: {}",
            reply.describe()
        );
    }
    assert_error(
        &node
            .post_json("/v1/workflows/instances/nope/cancel", &json!({}))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &node
            .post_json("/v1/workflows/instances/nope/explode", &json!({}))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &node.get_path("/v1/workflows/instances/nope").await,
        404,
        "not_found",
    );

    // An expression that never ends faults its instance; the node goes on.
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: runaway, version: '1.0.0'}
do:
  - spin: {set: {n: '${ last(range(1e15)) }'}}
"#,
    )
    .await;
    start(&node, "test/runaway", "spin", json!({})).await;
    let faulted = wait_status(&node, "spin", "faulted").await;
    assert_eq!(
        faulted["error"]["title"],
        json!("evaluation too long"),
        "{faulted}"
    );
    start(&node, "test/ok", "after", json!({})).await;
    wait_status(&node, "after", "completed").await;
    // A loop of tasks that never ends is cut off by the step limit.
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: loop, version: '1.0.0'}
do:
  - again: {set: {n: 1}, then: again}
"#,
    )
    .await;
    start(&node, "test/loop", "loop", json!({})).await;
    let looped = wait_status(&node, "loop", "faulted").await;
    assert_eq!(
        looped["error"]["title"],
        json!("too many steps"),
        "{looped}"
    );
}

/// The node's child processes (its workflow evaluators) and the CPU time
/// each has used, in clock ticks.
fn children_cpu(pid: u32) -> Vec<(u32, u64)> {
    let children = shoal_tests::procfs::child_pids(pid);
    children
        .into_iter()
        .filter_map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // Fields after the command's closing parenthesis: utime and
            // stime are the 12th and 13th.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let used =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((child, used))
        })
        .collect()
}

/// The evaluation limit counts the CPU an evaluator used, not the time
/// that passed: evaluators that are stopped (as in a paused machine, or
/// starved of CPU) past the limit while an instance's cheap expressions
/// wait on them must not fault it.
#[tokio::test(flavor = "multi_thread")]
async fn an_evaluator_stopped_past_the_time_limit_does_not_fault_its_instance() {
    let node = Node::start().await;
    let pid = node.pid().expect("the node runs");
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: ok, version: '1.0.0'}
do:
  - x: {set: {x: '${ 1 + 1 }'}}
"#,
    )
    .await;
    start(&node, "test/ok", "first", json!({})).await;
    wait_status(&node, "first", "completed").await;
    let evaluators: Vec<i32> = children_cpu(pid)
        .into_iter()
        .filter_map(|(child, _)| i32::try_from(child).ok())
        .collect();
    assert!(!evaluators.is_empty(), "the node has evaluators");
    for child in &evaluators {
        // SAFETY: kill only sends a signal to the node's own child.
        assert_eq!(unsafe { libc::kill(*child, libc::SIGSTOP) }, 0);
    }
    // Twice the limit, then they go on.
    let stopped = evaluators.clone();
    let resume = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        for child in stopped {
            // SAFETY: as above.
            unsafe { libc::kill(child, libc::SIGCONT) };
        }
    });
    let reply = start(&node, "test/ok", "stopped", json!({})).await;
    assert!(reply.status.is_success(), "{}", reply.describe());
    let _ = resume.await;
    let done = wait_status(&node, "stopped", "completed").await;
    assert_eq!(done["output"], json!({"x": 2}), "{done}");
    let metrics = node.get_path("/metrics").await.text;
    assert!(
        !metrics.contains("shoal_workflow_evaluators_killed_total 1"),
        "an evaluator was killed: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expressions_that_would_exhaust_or_crash_a_node_fault_only_their_instance() {
    let mut node = Node::start().await;
    let pid = node.pid().expect("the node runs");
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: ok, version: '1.0.0'}
do:
  - x: {set: {x: 1}}
"#,
    )
    .await;
    // Each of these would end the node's process if it ran there: the
    // stack overflows, or memory runs out (or, slower, time).
    for (name, code, titles) in [
        ("recurse", "def f: 1 + f; f", &["evaluation failed"][..]),
        (
            "explode",
            "[range(1e10)] | length",
            &["evaluation failed", "evaluation too long"][..],
        ),
    ] {
        define(
            &node,
            &format!(
                "document: {{dsl: '1.0.0', namespace: test, name: {name}, version: '1.0.0'}}\n\
                 do:\n  - boom: {{set: {{n: '${{ {code} }}'}}}}\n"
            ),
        )
        .await;
        start(&node, &format!("test/{name}"), name, json!({})).await;
        let faulted = wait_status(&node, name, "faulted").await;
        let title = faulted["error"]["title"].as_str().unwrap_or_default();
        assert!(titles.contains(&title), "{name}: {faulted}");
        assert!(
            faulted["error"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("evaluat")),
            "{name}: {faulted}"
        );
        assert!(node.is_running(), "the node survived {name}");
    }
    // A correlation that recurses without end fails the events it is
    // computed for, on the node that takes them; the instance waits on.
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: correlated, version: '1.0.0'}
do:
  - wait:
      listen:
        to:
          one:
            with: {type: poison}
            correlate:
              order: {from: '${ def f: 1 + f; f }', expect: 'x'}
"#,
    )
    .await;
    start(&node, "test/correlated", "correlated", json!({})).await;
    wait_status(&node, "correlated", "waiting").await;
    let sent = std::sync::atomic::AtomicU32::new(0);
    wait_for(WAIT, "a poison event counted as failed", || async {
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        publish(&node, "poison", "poison", &format!("poison-{n}"), json!({})).await;
        let text = node.get_path("/metrics").await.text;
        if text.contains("shoal_workflow_events_total{result=\"failed\"}") {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    assert!(node.is_running(), "the node survived the poison event");
    assert_eq!(
        instance(&node, "correlated").await["status"],
        json!("waiting")
    );
    // A list predicate past the limits is refused with 400.
    for (code, says) in [
        ("def f: 1 + f; f", "evaluator"),
        ("last(range(1e15))", "ms of CPU time"),
    ] {
        let reply = node
            .client()
            .get(node.url("/v1/workflows/instances"))
            .query(&[("where", code)])
            .send()
            .await
            .expect("the list answers");
        let reply = Reply::read(reply).await;
        assert_eq!(reply.status.as_u16(), 400, "{code}: {}", reply.describe());
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{code}: {}",
            reply.describe()
        );
    }
    // The node goes on, and nothing keeps running the runaway work.
    start(&node, "test/ok", "after", json!({})).await;
    wait_status(&node, "after", "completed").await;
    assert!(node.is_running());
    let before = children_cpu(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = children_cpu(pid);
    for (child, used) in after {
        let earlier = before
            .iter()
            .find(|(c, _)| *c == child)
            .map_or(0, |(_, u)| *u);
        assert!(
            used.saturating_sub(earlier) < 50,
            "evaluator {child} used {} ticks of CPU in 2 s while idle",
            used - earlier
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn history_is_bounded() {
    let node = Node::start().await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: many, version: '1.0.0'}
do:
  - each:
      for: {in: '[range(60)]'}
      do:
        - tick: {wait: {milliseconds: 1}}
"#,
    )
    .await;
    start(&node, "test/many", "m", json!({})).await;
    let done = wait_status(&node, "m", "completed").await;
    let kept = done["history"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(kept, 100, "at most 100 entries are kept");
    assert!(
        done["history_dropped"].as_u64().unwrap_or(0) >= 20,
        "{}",
        done["history_dropped"]
    );
    assert_eq!(count(&done, "completed"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_start_instances_once_per_tick_across_the_cluster() {
    let cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader().await;
    let node = cluster.node(1);
    define(
        node,
        r#"
document: {dsl: '1.0.0', namespace: sched, name: tick, version: '1.0.0'}
schedule:
  every: {seconds: 1}
do:
  - x: {set: {ticked: true}}
"#,
    )
    .await;
    define(
        node,
        r#"
document: {dsl: '1.0.0', namespace: sched, name: onevent, version: '1.0.0'}
schedule:
  on:
    one:
      with: {type: test.order.placed}
do:
  - x: {set: '${ {order: .[0].data.order} }'}
"#,
    )
    .await;
    let started = std::time::Instant::now();
    let ticks = wait_for(WAIT, "three scheduled instances", || async {
        let reply = node
            .get_path("/v1/workflows/instances?namespace=sched&name=tick&status=completed")
            .await;
        let found = reply.body["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if found.len() >= 3 {
            Ok(found)
        } else {
            Err(reply.describe())
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs() + 1;
    let all = node
        .get_path("/v1/workflows/instances?namespace=sched&name=tick")
        .await;
    let count = all.body["instances"].as_array().map(Vec::len).unwrap_or(0) as u64;
    assert!(
        count <= elapsed + 1,
        "{count} instances in {elapsed} s from a schedule of one per second: {}",
        all.describe()
    );
    assert!(ticks.iter().all(|i| text(i, "/id").starts_with("tick-")));

    // An event that meets schedule.on starts one instance, however often
    // it is delivered.
    wait_for(WAIT, "the event-started instance", || async {
        publish(
            node,
            "orders",
            "test.order.placed",
            "evt-1",
            json!({"order": "o-9"}),
        )
        .await;
        let reply = node.get_path("/v1/workflows/instances/onevent-evt-1").await;
        if reply.body["status"] == json!("completed") {
            Ok(())
        } else {
            Err(reply.describe())
        }
    })
    .await;
    publish(
        node,
        "orders",
        "test.order.placed",
        "evt-1",
        json!({"order": "o-9"}),
    )
    .await;
    let done = instance(node, "onevent-evt-1").await;
    assert_eq!(done["output"], json!({"order": "o-9"}));
    let listed = node
        .get_path("/v1/workflows/instances?namespace=sched&name=onevent")
        .await;
    assert_eq!(listed.body["instances"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn events_reach_instances_after_a_majority_was_killed_and_restarted() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let other = (leader + 1) % 3;
    define(
        cluster.node(other),
        r#"
document: {dsl: '1.0.0', namespace: test, name: after, version: '1.0.0'}
do:
  - pause: {wait: {milliseconds: 300}}
  - go:
      listen:
        to:
          one:
            with: {type: test.after.go}
            correlate: {id: {from: '${ .data.id }', expect: '${ .id }'}}
  - done: {set: '${ {id: .[0].data.id} }'}
"#,
    )
    .await;
    let ids: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
    for id in &ids {
        let reply = start(cluster.node(other), "test/after", id, json!({"id": id})).await;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.describe());
    }
    for id in &ids {
        wait_status(cluster.node(other), id, "waiting").await;
    }
    // A majority, the leader among them, is killed and comes back.
    cluster.node_mut(leader).kill9();
    cluster.node_mut(other).kill9();
    cluster.node_mut(leader).restart_no_wait();
    cluster.node_mut(other).restart_no_wait();
    cluster.wait_formed().await;
    for (n, id) in ids.iter().enumerate() {
        let node = cluster.node(n % 3);
        wait_for(WAIT, &format!("{id} completed"), || async {
            publish(
                node,
                "after",
                "test.after.go",
                &format!("go-{id}"),
                json!({"id": id}),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let found = instance(node, id).await;
            if found["status"] == json!("completed") {
                Ok(())
            } else {
                Err(found.to_string())
            }
        })
        .await;
    }
}

/// The receipt of a publish: what it reached on the node (`local`) and
/// how many peers it was sent to (`forwarded`).
async fn publish_receipt(node: &Node, kind: &str, id: &str, data: Value) -> (u64, u64) {
    let reply = node
        .post_cloud_event("/v1/topics/noise", kind, id, &data)
        .await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.describe());
    let count = |field: &str| {
        reply.body[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field}: {}", reply.describe()))
    };
    (count("local"), count("forwarded"))
}

#[tokio::test(flavor = "multi_thread")]
async fn each_node_takes_the_events_published_on_it_of_the_types_definitions_take() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    define(
        cluster.node((leader + 1) % 3),
        r#"
document: {dsl: '1.0.0', namespace: test, name: typed, version: '1.0.0'}
do:
  - go:
      listen:
        to:
          one:
            with: {type: test.typed.go}
            correlate: {id: {from: '${ .data.id }', expect: '${ .id }'}}
  - done: {set: '${ {id: .[0].data.id} }'}
"#,
    )
    .await;
    for n in 0..3 {
        let id = format!("t{n}");
        let reply = start(cluster.node(leader), "test/typed", &id, json!({"id": id})).await;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.describe());
        wait_status(cluster.node(leader), &id, "waiting").await;
    }
    for n in 0..3 {
        let node = cluster.node(n);
        // The type the definition takes: this node's intake takes it, and
        // no peer is sent it (nobody else subscribes to the topic).
        let what = format!("node {n}'s intake taking the type");
        wait_for(WAIT, &what, || async {
            match publish_receipt(
                node,
                "test.typed.go",
                &format!("nobody-{n}"),
                json!({"id": "nobody"}),
            )
            .await
            {
                (1, 0) => Ok(()),
                other => Err(format!("(local, forwarded) = {other:?}")),
            }
        })
        .await;
        // Another type: taken by no node, sent nowhere.
        let other = publish_receipt(
            node,
            "test.other",
            &format!("other-{n}"),
            json!({"id": format!("t{n}")}),
        )
        .await;
        assert_eq!(other, (0, 0), "node {n}");
        let id = format!("t{n}");
        let go =
            publish_receipt(node, "test.typed.go", &format!("go-{n}"), json!({"id": id})).await;
        assert_eq!(go, (1, 0), "node {n}");
        let done = wait_status(node, &id, "completed").await;
        assert_eq!(done["output"], json!({"id": id}));
        assert_eq!(count(&done, "event.applied"), 1, "{done}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn task_lifecycle_events_are_published_once_per_task_run() {
    let node = Node::start().await;
    let mut events = subscribe(&node, "workflows.test.steps.>").await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: steps, version: '1.0.0'}
do:
  - first: {set: {a: 1}}
  - pause: {wait: {milliseconds: 50}}
  - each:
      for: {in: '[1, 2]'}
      do:
        - step: {set: {b: 2}}
"#,
    )
    .await;
    start(&node, "test/steps", "s1", json!({})).await;
    wait_status(&node, "s1", "completed").await;
    let mut seen = Vec::new();
    // Collect until a quiet second: a repeat would show up in it.
    while let Some(message) = next_message(&mut events, Duration::from_secs(3)).await {
        let data: Value = message["data"].clone();
        seen.push((
            message["id"].as_str().unwrap_or("").to_string(),
            message["type"].as_str().unwrap_or("").to_string(),
            data["task"].as_str().unwrap_or("").to_string(),
        ));
    }
    let tasks: Vec<String> = seen
        .iter()
        .filter(|(_, kind, _)| kind.starts_with("io.serverlessworkflow.task."))
        .map(|(_, kind, task)| {
            let what = kind
                .trim_start_matches("io.serverlessworkflow.task.")
                .trim_end_matches(".v1");
            format!("{task} {what}")
        })
        .collect();
    assert_eq!(
        tasks,
        [
            "/do/0/first started",
            "/do/0/first completed",
            "/do/1/pause started",
            "/do/1/pause completed",
            "/do/2/each started",
            "/do/2/each/do/0/step[0] started",
            "/do/2/each/do/0/step[0] completed",
            "/do/2/each/do/0/step[1] started",
            "/do/2/each/do/0/step[1] completed",
            "/do/2/each completed",
        ],
        "{seen:?}"
    );
    let ids: BTreeSet<&str> = seen.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), seen.len(), "every event once: {seen:?}");
    let workflow: Vec<&str> = seen
        .iter()
        .filter(|(_, kind, _)| kind.starts_with("io.serverlessworkflow.workflow."))
        .map(|(_, kind, _)| kind.as_str())
        .collect();
    assert_eq!(
        workflow,
        [
            "io.serverlessworkflow.workflow.started.v1",
            "io.serverlessworkflow.workflow.completed.v1"
        ]
    );
    // Each task's duration, by its path (the two iterations together).
    let metrics = node.get_path("/metrics").await.text;
    for (task, runs) in [("/do/1/pause", 1), ("/do/2/each/do/0/step", 2)] {
        let line = format!(
            "shoal_workflow_task_duration_seconds_count{{workflow=\"test/steps/1.0.0\",task=\"{task}\"}} {runs}"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_events_a_killed_leader_committed_but_never_published_come_from_the_next() {
    // Every node waits 4 s between seeing a committed status change and
    // publishing its lifecycle event: the leader is killed in between.
    let mut cluster = Cluster::builder(3)
        .env("SHOAL_FAULT_LIFECYCLE_DELAY_MS", "4000")
        .start()
        .await;
    cluster.wait_formed().await;
    let leader = cluster.wait_leader().await;
    let other = (leader + 1) % 3;
    let node = cluster.node(other);
    define(node, NEVER_ENDING).await;
    for id in ["k1", "k2", "k3"] {
        start(node, "test/slow", id, json!({})).await;
        wait_status(node, id, "waiting").await;
    }
    let mut events = subscribe(node, "workflows.test.slow.*").await;
    for (id, action) in [("k1", "cancel"), ("k2", "cancel"), ("k3", "suspend")] {
        let reply = node
            .post_json(
                &format!("/v1/workflows/instances/{id}/{action}"),
                &json!({}),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.describe());
    }
    cluster.node_mut(leader).kill9();
    let node = cluster.node(other);
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        let Some(message) = next_message(&mut events, WAIT).await else {
            panic!("lifecycle events lost with the leader; seen: {seen:?}");
        };
        let id = message["id"].as_str().unwrap_or("").to_string();
        let kind = message["type"].as_str().unwrap_or("").to_string();
        let instance = message["data"]["instance"].as_str().unwrap_or("");
        let (what, _) = id
            .strip_prefix(&format!("{instance}/"))
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or_else(|| panic!("id {id} names instance, event, entry"));
        assert_eq!(kind, format!("io.serverlessworkflow.workflow.{what}.v1"));
        seen.insert(format!("{instance} {what}"));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["k1 cancelled", "k2 cancelled", "k3 suspended"].map(String::from))
    );
    // An event after the new leader took over is published once, by it.
    let resumed = node
        .post_json("/v1/workflows/instances/k3/resume", &json!({}))
        .await;
    assert_eq!(resumed.status.as_u16(), 200, "{}", resumed.describe());
    let mut after = Vec::new();
    while let Some(message) = next_message(&mut events, Duration::from_secs(8)).await {
        after.push(message["id"].as_str().unwrap_or("").to_string());
    }
    let resumed: Vec<&String> = after.iter().filter(|id| id.contains("/resumed/")).collect();
    assert_eq!(resumed.len(), 1, "{after:?}");
}

/// `test/quick`: completes in one step.
const QUICK: &str = r#"
document: {dsl: '1.0.0', namespace: test, name: quick, version: '1.0.0'}
do:
  - done: {set: {done: true}}
"#;

/// `test/slow`: waits for an event nobody sends.
const NEVER_ENDING: &str = r#"
document: {dsl: '1.0.0', namespace: test, name: slow, version: '1.0.0'}
do:
  - await:
      listen:
        to:
          one:
            with: {type: test.never}
"#;

/// `shoal serve` with this flag and value exits with an error naming the
/// flag.
async fn refused_at_start(flag_and_value: &[&str]) {
    let args: Vec<&str> = ["serve"].iter().chain(flag_and_value).copied().collect();
    let out = run_shoal(&args, None, &[]).await;
    out.assert_clean_failure();
    assert!(out.stderr.contains(flag_and_value[0]), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_instances_are_deleted_once_the_retention_has_passed() {
    refused_at_start(&["--workflow-retention", "soon"]).await;

    let node = Node::start_with(&["--workflow-retention", "2s"]).await;
    define(&node, QUICK).await;
    define(&node, NEVER_ENDING).await;
    start(&node, "test/slow", "waits", json!({})).await;
    wait_status(&node, "waits", "waiting").await;
    start(&node, "test/quick", "q1", json!({})).await;
    wait_status(&node, "q1", "completed").await;
    wait_for(WAIT, "q1 deleted", || async {
        let reply = node.get_path("/v1/workflows/instances/q1").await;
        if reply.status.as_u16() == 404 {
            Ok(())
        } else {
            Err(reply.describe())
        }
    })
    .await;
    // Unfinished instances stay, however old.
    let waiting = instance(&node, "waits").await;
    assert_eq!(waiting["status"], json!("waiting"), "{waiting}");
    wait_for(WAIT, "the deletion counted and the gauge at 0", || async {
        let text = node.get_path("/metrics").await.text;
        let deleted = text.contains("shoal_workflow_instances_deleted_total 1");
        let gauge = text.contains(
            "shoal_workflow_instances{workflow=\"test/quick/1.0.0\",status=\"completed\"} 0",
        );
        // Counted as they change: each status the instances went through
        // holds exactly those in it now.
        let waiting = text.contains(
            "shoal_workflow_instances{workflow=\"test/slow/1.0.0\",status=\"waiting\"} 1",
        );
        let passed = ["pending", "running"].iter().all(|status| {
            !text.lines().any(|line| {
                line.starts_with(&format!(
                    "shoal_workflow_instances{{workflow=\"test/quick/1.0.0\",status=\"{status}\"}}"
                )) && !line.ends_with(" 0")
            })
        });
        if deleted && gauge && waiting && passed {
            Ok(())
        } else {
            Err(text
                .lines()
                .filter(|l| l.starts_with("shoal_workflow_instances"))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    })
    .await;
}

/// Waiting instances have no actor; a timer that fell due while its
/// instance was suspended fires once after the resume.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_instances_hold_no_actor_and_a_timer_due_while_suspended_fires_on_resume() {
    let node = Node::start().await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: nap, version: '1.0.0'}
do:
  - nap: {wait: {seconds: 1}}
  - done: {set: {done: true}}
"#,
    )
    .await;
    define(
        &node,
        r#"
document: {dsl: '1.0.0', namespace: test, name: idle, version: '1.0.0'}
do:
  - await:
      listen:
        to:
          one:
            with: {type: test.never}
"#,
    )
    .await;
    for i in 0..20 {
        start(&node, "test/idle", &format!("idle-{i}"), json!({})).await;
    }
    for i in 0..20 {
        wait_status(&node, &format!("idle-{i}"), "waiting").await;
    }
    wait_for(WAIT, "no actor for waiting instances", || async {
        let text = node.get_path("/metrics").await.text;
        match text
            .lines()
            .find(|l| l.starts_with("shoal_workflow_actors "))
        {
            Some("shoal_workflow_actors 0") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    start(&node, "test/nap", "n1", json!({})).await;
    // Armed, then suspended before it is due.
    wait_status(&node, "n1", "waiting").await;
    let suspended = node
        .post_json("/v1/workflows/instances/n1/suspend", &json!({}))
        .await;
    assert_eq!(suspended.status.as_u16(), 200, "{}", suspended.describe());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = instance(&node, "n1").await;
    assert_eq!(held["status"], json!("suspended"), "{held}");
    assert_eq!(count(&held, "timer.fired"), 0, "{:?}", history(&held));
    let resumed = node
        .post_json("/v1/workflows/instances/n1/resume", &json!({}))
        .await;
    assert_eq!(resumed.status.as_u16(), 200, "{}", resumed.describe());
    let done = wait_status(&node, "n1", "completed").await;
    assert_eq!(count(&done, "timer.fired"), 1, "{:?}", history(&done));
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_past_the_bound_on_unfinished_instances_are_refused_until_some_finish() {
    refused_at_start(&["--workflow-max-unfinished", "0"]).await;

    let node = Node::start_with(&["--workflow-max-unfinished", "2"]).await;
    define(&node, NEVER_ENDING).await;
    for id in ["w1", "w2"] {
        let reply = start(&node, "test/slow", id, json!({})).await;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.describe());
    }
    // The count follows the replica: wait until the third start is refused.
    let refused = wait_for(WAIT, "a start past the bound refused", || async {
        let reply = start(&node, "test/slow", "w3", json!({})).await;
        match reply.status.as_u16() {
            429 => Ok(reply),
            _ => Err(reply.describe()),
        }
    })
    .await;
    // (A start that raced the count would have made w3: then this fails.)
    let body = assert_error(&refused, 429, "too_many_instances");
    assert_eq!(body["error"]["limit"], json!(2), "{body}");
    assert_error(
        &node.get_path("/v1/workflows/instances/w3").await,
        404,
        "not_found",
    );
    // Starting an existing instance again is still answered with it.
    let again = start(&node, "test/slow", "w1", json!({})).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.describe());
    assert_eq!(again.body["id"], json!("w1"));
    // A finished instance makes room.
    let cancelled = node
        .post_json("/v1/workflows/instances/w1/cancel", &json!({}))
        .await;
    assert_eq!(cancelled.status.as_u16(), 200, "{}", cancelled.describe());
    wait_for(WAIT, "a start after one finished", || async {
        let reply = start(&node, "test/slow", "w3", json!({})).await;
        match reply.status.as_u16() {
            201 => Ok(()),
            _ => Err(reply.describe()),
        }
    })
    .await;
    wait_status(&node, "w3", "waiting").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn https_calls_verify_the_certificate_against_the_trusted_cas() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = TestCa::new("shoal test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("writing the CA file");
    let signed = ca.server();
    let trusted = Hook::start_tls(&signed.certificate_pem, &signed.key_pem).await;
    let stranger = TestCa::new("a CA nobody trusts").server();
    let untrusted = Hook::start_tls(&stranger.certificate_pem, &stranger.key_pem).await;
    let node = Node::start_with(&["--outbound-ca-file", ca_file.to_str().expect("UTF-8")]).await;
    for (name, url) in [("trusted", trusted.url()), ("untrusted", untrusted.url())] {
        define(
            &node,
            &format!(
                "document: {{dsl: '1.0.0', namespace: tls, name: {name}, version: '1.0.0'}}\n\
                 do:\n  - pay: {{call: http, with: {{method: post, endpoint: '{url}', body: {{amount: 5}}}}}}\n"
            ),
        )
        .await;
    }
    start(&node, "tls/trusted", "secure-1", json!({})).await;
    wait_status(&node, "secure-1", "completed").await;
    let requests = trusted.requests();
    assert_eq!(requests.len(), 1, "{}", summarize(&requests));
    assert_eq!(
        requests[0].header("idempotency-key"),
        Some("secure-1/do/0/pay/0")
    );
    start(&node, "tls/untrusted", "forged-1", json!({})).await;
    let faulted = wait_status(&node, "forged-1", "faulted").await;
    assert_eq!(
        faulted["error"]["type"],
        json!("https://serverlessworkflow.io/spec/1.0.0/errors/communication"),
        "{faulted}"
    );
    assert!(
        untrusted.requests().is_empty(),
        "{}",
        summarize(&untrusted.requests())
    );
}
