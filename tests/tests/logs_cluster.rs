//! Logs and traces across a three-node cluster: each node keeps what it
//! received, and a search, aggregation, trace or stream listing on any node
//! asks all of them; a dead node makes the answer partial (and says which),
//! never an error. See `docs/logs.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_tests::*;

/// OTLP/JSON spans of one trace: a root on `service` and a child.
fn spans_body(service: &str, trace_id: &str, start: i64) -> String {
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [
            {"traceId": trace_id, "spanId": "1111111111111111", "name": "checkout", "kind": 2,
             "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 80_000_000).to_string(),
             "attributes": [{"key": "cart.size", "value": {"intValue": "3"}}]},
            {"traceId": trace_id, "spanId": "2222222222222222", "parentSpanId": "1111111111111111",
             "name": "reserve-stock", "kind": 3,
             "startTimeUnixNano": (start + 10_000_000).to_string(), "endTimeUnixNano": (start + 50_000_000).to_string()}
        ]}]
    }]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_traces_and_partial_answers_across_three_nodes() {
    let mut cluster = Cluster::builder(3).otlp().start().await;
    cluster.wait_formed().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(cluster.node_id(i).await);
    }
    let mut sorted_ids = ids.clone();
    sorted_ids.sort_unstable();

    // Different records on each node, some sharing timestamps across nodes.
    let base = now_nanos() - 10 * MINUTE;
    for (i, node) in cluster.nodes().iter().enumerate() {
        let records: Vec<Value> = (0..10u64)
            .map(|k| {
                let n = i as u64 * 10 + k;
                json!({"timestamp": base + (k % 4) as i64 * 1_000_000_000, "message": format!("spread record {n}"),
                       "level": if k % 2 == 0 { "info" } else { "error" }, "n": n})
            })
            .collect();
        node.ingest_records("spread", &records).await;
    }

    // A search on any node finds all 30, each tagged with the node that holds it.
    let hits = cluster.node(0).wait_hits(&[("stream", "spread")], 30).await;
    let answer = cluster
        .node(0)
        .search(&[("stream", "spread"), ("limit", "1000")])
        .await;
    assert_eq!(answer["partial"], false, "{answer}");
    assert_eq!(answer["nodes"]["asked"], 3, "{answer}");
    assert_eq!(answer["nodes"]["answered"], json!(sorted_ids), "{answer}");
    assert_eq!(answer["nodes"]["failed"], json!([]), "{answer}");
    for hit in &hits {
        let n = num(hit, "/attributes/n");
        assert_eq!(
            num(hit, "/node"),
            ids[(n / 10) as usize],
            "record {n} is held by the node that received it: {hit}"
        );
    }
    let key = |h: &Value| {
        (
            h["ts_nanos"].as_i64().unwrap(),
            num(h, "/node"),
            num(h, "/seq"),
        )
    };
    for pair in hits.windows(2) {
        assert!(
            key(&pair[0]) > key(&pair[1]),
            "merged out of order: {} then {}",
            pair[0],
            pair[1]
        );
    }
    cluster.node(2).wait_hits(&[("stream", "spread")], 30).await;

    // Pages across nodes: every record once, in the same order, whichever node asks.
    for (asker, page) in [(1, 4), (2, 7), (0, 29)] {
        let walked = cluster
            .node(asker)
            .search_pages(&[("stream", "spread")], page)
            .await;
        assert_eq!(
            messages(&walked),
            messages(&hits),
            "pages of {page} from node {asker}"
        );
        let walked = cluster
            .node(asker)
            .search_pages(&[("stream", "spread"), ("order", "oldest")], page)
            .await;
        let mut oldest = messages(&hits);
        oldest.reverse();
        assert_eq!(
            messages(&walked),
            oldest,
            "oldest first, pages of {page} from node {asker}"
        );
    }

    // Aggregations and streams add up over the nodes.
    let aggregate = cluster
        .node(1)
        .aggregate(&[("stream", "spread"), ("since", "1h"), ("top", "level")])
        .await;
    assert_eq!(aggregate["total"], 30, "{aggregate}");
    assert_eq!(
        aggregate["top"]["level"],
        json!([{"value": "error", "count": 15}, {"value": "info", "count": 15}])
    );
    assert_eq!(aggregate["partial"], false);
    let streams = cluster.node(0).get_path("/v1/logs/streams").await.ok();
    let spread = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "spread")
        .cloned()
        .expect("spread listed");
    assert_eq!(
        (
            spread["docs"].as_u64(),
            spread["nodes"].as_array().map(Vec::len)
        ),
        (Some(30), Some(3)),
        "{spread}"
    );

    // A trace whose spans went to node 1 (OTLP) and whose logs went to node 2.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let reply = cluster
        .node(1)
        .otlp_post(
            "/v1/traces",
            "application/json",
            spans_body("cart", trace_id, base),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    cluster
        .node(2)
        .ingest_records(
            "cart-logs",
            &[
                json!({"timestamp": base + 20_000_000, "message": "stock reserved", "trace_id": trace_id, "span_id": "2222222222222222"}),
                json!({"timestamp": base + 70_000_000, "message": "checkout done", "trace_id": trace_id}),
            ],
        )
        .await;
    let trace = wait_for(SEARCHABLE_TIMEOUT, "the whole trace on node 0", || async {
        let reply = cluster
            .node(0)
            .get_path(&format!("/v1/traces/{trace_id}"))
            .await;
        if reply.status != StatusCode::OK {
            return Err(reply.describe());
        }
        let (spans, logs) = (
            reply.body["spans"].as_array().map_or(0, Vec::len),
            reply.body["logs"].as_array().map_or(0, Vec::len),
        );
        if (spans, logs) == (2, 2) {
            Ok(reply.body)
        } else {
            Err(format!("{spans} spans, {logs} logs: {}", reply.text))
        }
    })
    .await;
    assert_eq!(trace["partial"], false);
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(
        messages(spans),
        vec!["checkout", "reserve-stock"],
        "oldest first"
    );
    assert!(spans.iter().all(|s| num(s, "/node") == ids[1]), "{spans:?}");
    let logs = trace["logs"].as_array().unwrap();
    assert_eq!(messages(logs), vec!["stock reserved", "checkout done"]);
    assert!(logs.iter().all(|l| num(l, "/node") == ids[2]), "{logs:?}");
    let jaeger = cluster
        .node(2)
        .get_path(&format!("/api/traces/{trace_id}"))
        .await
        .ok();
    assert_eq!(
        jaeger["data"][0]["spans"].as_array().map(Vec::len),
        Some(2),
        "{jaeger}"
    );
    let services = cluster.node(0).get_path("/api/services").await.ok();
    assert_eq!(services["data"], json!(["cart"]), "{services}");

    // Node 2 dies: answers on node 0 are partial, name it, and hold the rest.
    cluster.node_mut(2).kill9();
    let answer = wait_for(
        Duration::from_secs(30),
        "a partial answer naming node 2",
        || async {
            let reply = cluster
                .node(0)
                .search_reply(&[("stream", "spread"), ("limit", "1000")])
                .await;
            if reply.status != StatusCode::OK {
                return Err(reply.describe());
            }
            if reply.body["partial"] == true {
                Ok(reply.body)
            } else {
                Err(reply.text)
            }
        },
    )
    .await;
    assert_eq!(
        answer["nodes"]["failed"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    assert_eq!(answer["nodes"]["failed"][0]["node"], ids[2], "{answer}");
    assert!(
        answer["nodes"]["failed"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{answer}"
    );
    let mut alive = vec![ids[0], ids[1]];
    alive.sort_unstable();
    assert_eq!(answer["nodes"]["answered"], json!(alive), "{answer}");
    assert_eq!(answer["nodes"]["asked"], 3, "{answer}");
    let ns: BTreeSet<u64> = hits_of(&answer)
        .iter()
        .map(|h| num(h, "/attributes/n"))
        .collect();
    assert_eq!(ns, (0..20).collect(), "the records of nodes 0 and 1");

    let trace = cluster
        .node(0)
        .get_path(&format!("/v1/traces/{trace_id}"))
        .await
        .ok();
    assert_eq!(trace["partial"], true, "{trace}");
    assert_eq!(
        (
            trace["spans"].as_array().map(Vec::len),
            trace["logs"].as_array().map(Vec::len)
        ),
        (Some(2), Some(0)),
        "{trace}"
    );
    let aggregate = cluster
        .node(1)
        .aggregate(&[("stream", "spread"), ("since", "1h")])
        .await;
    assert_eq!(
        (aggregate["total"].as_u64(), aggregate["partial"].as_bool()),
        (Some(20), Some(true)),
        "{aggregate}"
    );
    let streams = cluster.node(0).get_path("/v1/logs/streams").await.ok();
    assert_eq!(streams["partial"], true, "{streams}");
    // Pages still walk everything that is reachable, once.
    let walked = cluster
        .node(1)
        .search_pages(&[("stream", "spread")], 6)
        .await;
    let counts = walked.iter().fold(BTreeMap::new(), |mut m, h| {
        *m.entry(num(h, "/attributes/n")).or_insert(0) += 1;
        m
    });
    assert_eq!(
        counts,
        (0..20u64).map(|n| (n, 1)).collect::<BTreeMap<u64, i32>>()
    );
}
