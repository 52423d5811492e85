//! Workflow definitions (CNCF Serverless Workflow DSL 1.0) through the HTTP
//! API and `shoal wf`: publishing YAML and JSON, immutable versions,
//! idempotent publishing, listing and deleting, hostile documents, and
//! definitions surviving the loss of the whole cluster.

use std::time::Duration;

use shoal_tests::*;

/// The order saga's definition, as a user writes it.
const ORDER: &str = r#"
document:
  dsl: '1.0.0'
  namespace: commerce
  name: order
  version: '1.0.0'
  title: Order saga
use:
  errors:
    paymentTimeout:
      type: https://shoal.dev/errors/payment-timeout
      status: 408
do:
  - reserveStock:
      emit:
        event:
          with:
            type: commerce.stock.reserve
            source: https://shoal.dev/workflows/order
            data: '${ { order: .order } }'
  - awaitPayment:
      try:
        - paid:
            listen:
              to:
                one:
                  with:
                    type: commerce.payment.paid
            timeout:
              after: PT30M
      catch:
        errors:
          with:
            type: https://serverlessworkflow.io/spec/1.0.0/errors/timeout
        do:
          - releaseStock:
              emit:
                event:
                  with:
                    type: commerce.stock.release
                    source: https://shoal.dev/workflows/order
          - cancelled:
              set:
                status: cancelled
              then: end
  - ship:
      call: http
      with:
        method: post
        endpoint: http://127.0.0.1:9/ship
        body: ${ . }
  - done:
      set:
        status: completed
"#;

fn path(namespace: &str, name: &str, version: &str) -> String {
    format!("/v1/workflows/definitions/{namespace}/{name}/{version}")
}

async fn publish(node: &Node, path: &str, body: &str, content_type: &str) -> Reply {
    node.send(
        node.request(Method::PUT, path)
            .header("content-type", content_type)
            .body(body.to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_are_published_read_listed_and_deleted() {
    let node = Node::start().await;
    let order = path("commerce", "order", "1.0.0");

    let created = publish(&node, &order, ORDER, "application/yaml").await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.describe());
    assert_eq!(created.body["created"], json!(true));
    let revision = created.body["revision"].as_u64().expect("revision");

    // The same document again (as JSON this time) changes nothing.
    let stored = node.get_path(&order).await.ok();
    let document = stored["document"].clone();
    assert_eq!(document["document"]["title"], json!("Order saga"));
    assert_eq!(stored["revision"], json!(revision));
    let again = publish(&node, &order, &document.to_string(), "application/json").await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.describe());
    assert_eq!(again.body["created"], json!(false));
    assert_eq!(again.body["revision"], json!(revision));

    // A changed document under the same version is refused; a new version
    // is stored beside the old one.
    let changed = ORDER.replace("Order saga", "Order saga, changed");
    let conflict = publish(&node, &order, &changed, "application/yaml").await;
    assert_error(&conflict, 409, "version_exists");
    let next = changed.replace("version: '1.0.0'", "version: '1.1.0'");
    let v11 = publish(
        &node,
        &path("commerce", "order", "1.1.0"),
        &next,
        "application/yaml",
    )
    .await;
    assert_eq!(v11.status.as_u16(), 201, "{}", v11.describe());
    assert_eq!(
        node.get_path(&order).await.ok()["document"]["document"]["title"],
        json!("Order saga"),
        "the old version is unchanged"
    );

    // Listing, by namespace and name.
    let other = ORDER
        .replace("namespace: commerce", "namespace: logistics")
        .replace("name: order", "name: shipment");
    let shipment = path("logistics", "shipment", "1.0.0");
    assert_eq!(
        publish(&node, &shipment, &other, "text/yaml")
            .await
            .status
            .as_u16(),
        201
    );
    let ids = |list: Value| -> Vec<String> {
        list["definitions"]
            .as_array()
            .expect("definitions")
            .iter()
            .map(|d| {
                format!(
                    "{}/{}/{}",
                    text(d, "/namespace"),
                    text(d, "/name"),
                    text(d, "/version")
                )
            })
            .collect()
    };
    let all = node.get_path("/v1/workflows/definitions").await.ok();
    assert_eq!(
        ids(all),
        [
            "commerce/order/1.0.0",
            "commerce/order/1.1.0",
            "logistics/shipment/1.0.0"
        ]
    );
    let commerce = node
        .get_path("/v1/workflows/definitions?namespace=commerce&name=order")
        .await
        .ok();
    assert_eq!(
        ids(commerce),
        ["commerce/order/1.0.0", "commerce/order/1.1.0"]
    );

    // Deleting.
    let deleted = node.send(node.request(Method::DELETE, &order)).await.ok();
    assert_eq!(deleted["deleted"], json!("commerce/order/1.0.0"));
    assert_error(&node.get_path(&order).await, 404, "not_found");
    assert_error(
        &node.send(node.request(Method::DELETE, &order)).await,
        404,
        "not_found",
    );
    // The KV API cannot reach the stored definitions.
    let through_kv = node
        .send(
            node.request(
                Method::PUT,
                "/v1/kv/_shoal/workflows/definitions/commerce/order/1.1.0",
            )
            .body("{}"),
        )
        .await;
    assert_error(&through_kv, 400, "reserved_key");
}

/// One refused publish: (what, path, body, status, code, JSON Pointer the
/// error must name, if any).
type Case = (
    &'static str,
    String,
    String,
    u16,
    &'static str,
    Option<&'static str>,
);

#[tokio::test(flavor = "multi_thread")]
async fn hostile_definitions_are_refused_with_the_path_of_the_problem() {
    let node = Node::start().await;
    let order = path("commerce", "order", "1.0.0");
    let with_task =
        |task: &str| ORDER.replace("  - done:\n      set:\n        status: completed\n", task);
    let bomb = {
        let mut yaml = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (i, prev) in ('b'..='i').zip('a'..='h') {
            yaml.push_str(&format!("{i}: &{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        yaml
    };
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("a run task", order.clone(), with_task("  - shell:\n      run:\n        shell:\n          command: rm -rf /\n"), 400, "unsupported_construct", Some("/do/3/shell")),
        ("call grpc", order.clone(), with_task("  - rpc:\n      call: grpc\n      with:\n        service: x\n"), 400, "unsupported_construct", Some("/do/3/rpc/call")),
        ("dangling then", order.clone(), with_task("  - done:\n      set:\n        status: completed\n      then: nowhere\n"), 400, "invalid_definition", Some("/do/3/done/then")),
        ("unknown task field", order.clone(), with_task("  - done:\n      set:\n        status: completed\n      colour: red\n"), 400, "invalid_definition", None),
        ("old DSL", order.clone(), ORDER.replace("dsl: '1.0.0'", "dsl: '0.8'"), 400, "unsupported_construct", Some("/document/dsl")),
        ("no do", order.clone(), "document:\n  dsl: '1.0.0'\n  namespace: commerce\n  name: order\n  version: '1.0.0'\n".into(), 400, "invalid_definition", None),
        ("unknown jq function", order.clone(), ORDER.replace("body: ${ . }", "body: ${ nosuch(.) }"), 400, "invalid_definition", Some("/do/2/ship/with/body")),
        ("jq syntax error", order.clone(), ORDER.replace("body: ${ . }", "body: ${ .[ }"), 400, "invalid_definition", Some("/do/2/ship/with/body")),
        ("YAML syntax", order.clone(), "document: [\n".into(), 400, "invalid_definition", None),
        ("not a document", order.clone(), "[1, 2, 3]".into(), 400, "invalid_definition", None),
        ("empty body", order.clone(), String::new(), 400, "invalid_definition", None),
        ("path names another version", path("commerce", "order", "2.0.0"), ORDER.into(), 400, "bad_request", None),
        ("upper-case namespace in the path", path("Commerce", "order", "1.0.0"), ORDER.into(), 400, "invalid_definition", None),
        ("version not semantic", path("commerce", "order", "v1"), ORDER.into(), 400, "invalid_definition", None),
        ("a namespace the routes use", path("instances", "order", "1.0.0"), ORDER.replace("namespace: commerce", "namespace: instances"), 400, "invalid_definition", Some("/document/namespace")),
        ("the namespace of the event inbox", path("events", "order", "1.0.0"), ORDER.replace("namespace: commerce", "namespace: events"), 400, "invalid_definition", Some("/document/namespace")),
        ("over 256 KiB", order.clone(), format!("{ORDER}\n# {}\n", "x".repeat(300 * 1024)), 413, "payload_too_large", None),
        ("alias bomb", order.clone(), bomb, 400, "invalid_definition", None),
    ];
    let mut failures = Vec::new();
    for (what, path, body, status, code, pointer) in &cases {
        let reply = publish(&node, path, body, "application/yaml").await;
        if let Err(problem) = error_matches(&reply, &[(*status, &[*code])]) {
            failures.push(format!("{what}: {problem}"));
        } else if let Some(pointer) = pointer {
            if reply.body["error"]["path"] != json!(pointer) {
                failures.push(format!(
                    "{what}: error.path is not {pointer}: {}",
                    reply.describe()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Nothing was stored, and the node is fine.
    let list = node.get_path("/v1/workflows/definitions").await.ok();
    assert_eq!(list["definitions"], json!([]));
    assert_eq!(
        publish(&node, &order, ORDER, "application/yaml")
            .await
            .status
            .as_u16(),
        201
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_definition_survives_the_whole_cluster_being_killed() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader().await;
    let order = path("commerce", "order", "1.0.0");
    // Published through a node, whichever is the leader.
    let created = publish(cluster.node(1), &order, ORDER, "application/yaml").await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.describe());
    for i in 0..3 {
        cluster.node_mut(i).kill9();
    }
    for i in [2, 0, 1] {
        cluster.node_mut(i).restart_no_wait();
    }
    cluster.wait_formed().await;
    for i in 0..3 {
        let stored = wait_for(
            Duration::from_secs(30),
            &format!("the definition on node {i}"),
            || async {
                let reply = cluster.node(i).get_path(&order).await;
                if reply.status.as_u16() == 200 {
                    Ok(reply.body)
                } else {
                    Err(reply.describe())
                }
            },
        )
        .await;
        assert_eq!(
            stored["document"]["document"]["title"],
            json!("Order saga"),
            "node {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_wf_applies_lists_gets_and_deletes() {
    let node = Node::start().await;
    let endpoint = node.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("order.yaml");
    std::fs::write(&file, ORDER).expect("write the definition");
    let file = file.to_str().expect("path");
    let wf = |args: &'static [&'static str], extra: Vec<String>| {
        let endpoint = endpoint.clone();
        async move {
            let mut all: Vec<String> = vec!["wf".into(), "--endpoint".into(), endpoint];
            all.extend(args.iter().map(|a| a.to_string()));
            all.extend(extra);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            run_shoal(&all, None, &[]).await
        }
    };
    let out = wf(&["apply"], vec![file.into()]).await;
    out.assert_success();
    assert!(
        out.stdout_text()
            .starts_with("published commerce/order/1.0.0"),
        "{}",
        out.stdout_text()
    );
    let out = wf(&["apply"], vec![file.into()]).await;
    out.assert_success();
    assert!(
        out.stdout_text()
            .starts_with("unchanged commerce/order/1.0.0"),
        "{}",
        out.stdout_text()
    );
    let out = wf(&["ls", "--namespace", "commerce"], vec![]).await;
    out.assert_success();
    assert_eq!(out.lines().len(), 1, "{}", out.stdout_text());
    assert!(
        out.lines()[0].starts_with("commerce/order/1.0.0")
            && out.lines()[0].ends_with("Order saga")
    );
    let out = wf(&["get", "commerce/order/1.0.0"], vec![]).await;
    out.assert_success();
    let printed: Value = serde_json::from_str(&out.stdout_text()).unwrap_or(Value::Null);
    assert_eq!(
        printed["document"]["name"],
        json!("order"),
        "{}",
        out.stdout_text()
    );
    // A mistake is reported from the file, with its path, before anything is sent.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, ORDER.replace("call: http", "call: grpc")).expect("write");
    let out = wf(&["apply"], vec![bad.to_str().expect("path").into()]).await;
    out.assert_clean_failure();
    assert!(out.stderr.contains("/do/2/ship"), "{}", out.stderr);
    let out = wf(&["delete", "commerce/order/1.0.0"], vec![]).await;
    out.assert_success();
    assert!(
        out.stdout_text()
            .starts_with("deleted commerce/order/1.0.0"),
        "{}",
        out.stdout_text()
    );
    let out = wf(&["get", "commerce/order/1.0.0"], vec![]).await;
    out.assert_clean_failure();
    assert!(
        out.stderr.contains("not_found") || out.stderr.contains("does not exist"),
        "{}",
        out.stderr
    );
}
