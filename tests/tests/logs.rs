//! Logs and traces on one node through Shoal's own API: ingest formats and
//! per-record errors, search syntax and filters, ordering and cursor
//! pagination, aggregations, live tail and the node's own logs. Malformed
//! requests are in `logs_bad_input.rs`. See `docs/logs.md`.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_tests::*;

/// The node id from `/v1/status`.
async fn node_id(node: &Node) -> u64 {
    num(&node.status().await, "/node_id")
}

/// Now rounded down to a whole second, so that `ts` strings have no fraction.
fn whole_second_now() -> i64 {
    now_nanos() / 1_000_000_000 * 1_000_000_000
}

/// The hit with this message; panics if there is not exactly one.
#[track_caller]
fn hit_with<'a>(hits: &'a [Value], message: &str) -> &'a Value {
    let found: Vec<&Value> = hits.iter().filter(|h| h["message"] == message).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one hit {message:?} in {:?}",
        messages(hits)
    );
    found[0]
}

fn strs(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_accepts_ndjson_arrays_text_and_gzip_and_reports_bad_records_one_by_one() {
    let node = Node::start().await;
    let id = node_id(&node).await;
    let t0 = whole_second_now() - 10 * MINUTE;

    // NDJSON: two good records around four bad ones (and a blank line,
    // which is not a record and does not count as a position).
    let body = format!(
        "{}\n{{not json\n{}\n\n{}\n{}\n{}\n",
        json!({"timestamp": t0, "level": "info", "service": "checkout", "message": "order placed",
               "attributes": {"user": "alice"}, "trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736",
               "span_id": "00F067AA0BA902B7"}),
        json!({"timestamp": "yesterday", "message": "bad time"}),
        json!({"trace_id": "xyz", "message": "bad trace"}),
        json!({"attributes": 5, "message": "bad attributes"}),
        json!({"@timestamp": rfc3339(t0 + MINUTE), "severity": "ERROR", "app": "payments",
               "msg": "payment failed", "user": "bob", "http": {"status": 502}}),
    );
    let reply = node
        .ingest_raw("orders", "application/x-ndjson", body)
        .await;
    let answer = reply.ok();
    assert_eq!(answer["stream"], "orders", "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["rejected"], 4, "{answer}");
    let errors = answer["errors"].as_array().expect("errors array");
    let indexes: Vec<u64> = errors.iter().map(|e| num(e, "/index")).collect();
    assert_eq!(indexes, vec![1, 2, 3, 4], "{answer}");
    for (error, needle) in errors.iter().zip([
        "not JSON",
        "RFC 3339",
        "trace_id",
        "attributes must be a JSON object",
    ]) {
        assert!(
            text(error, "/error").contains(needle),
            "error {error} should mention {needle:?}"
        );
    }

    // A JSON array: a number in the middle is refused, the objects stored.
    let array = json!([
        {"ts": t0 + 2 * MINUTE, "message": "array one", "level": "WARNING"},
        7,
        {"time": (t0 + 3 * MINUTE) / 1_000_000, "message": "array two", "lvl": "dbg"},
        // Nanoseconds as a string keep every digit.
        {"date": (t0 + 4 * MINUTE + 123_456_789).to_string(), "message": "array three"},
    ]);
    let answer = node
        .ingest_raw("orders", "application/json", array.to_string())
        .await
        .ok();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(3), Some(1)),
        "{answer}"
    );
    assert_eq!(answer["errors"][0]["index"], 1, "{answer}");
    assert!(
        text(&answer, "/errors/0/error").contains("JSON object"),
        "{answer}"
    );

    // Plain text: one record per non-empty line, even if a line looks like JSON.
    let answer = node
        .ingest_raw(
            "orders",
            "text/plain; charset=utf-8",
            "plain line one\n{\"message\": \"plain two\"}\n\nplain line three\n",
        )
        .await
        .ok();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(3), Some(0)),
        "{answer}"
    );

    // Gzip-compressed NDJSON.
    let compressed = gzip(
        ndjson(&[
            json!({"message": "gzip one"}),
            json!({"message": "gzip two"}),
        ])
        .as_bytes(),
    );
    let request = node
        .request(Method::POST, "/v1/logs/orders")
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(compressed);
    let answer = node.send(request).await.ok();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(2), Some(0)),
        "{answer}"
    );

    // Everything accepted is searchable, exactly as ingested.
    let hits = node.wait_hits(&[("stream", "orders")], 10).await;
    let got: BTreeSet<String> = messages(&hits).into_iter().collect();
    let want: BTreeSet<String> = strs(&[
        "order placed",
        "payment failed",
        "array one",
        "array two",
        "array three",
        "plain line one",
        "{\"message\": \"plain two\"}",
        "plain line three",
        "gzip one",
        "gzip two",
    ])
    .into_iter()
    .collect();
    assert_eq!(got, want);
    let seqs: BTreeSet<u64> = hits.iter().map(|h| num(h, "/seq")).collect();
    assert_eq!(seqs.len(), 10, "seqs are unique per node: {hits:?}");
    for hit in &hits {
        assert_eq!(num(hit, "/node"), id, "{hit}");
        assert_eq!(hit["stream"], "orders", "{hit}");
        assert_eq!(hit["kind"], "log", "{hit}");
        assert!(
            hit.get("span").is_none(),
            "a log record has no span part: {hit}"
        );
    }

    let placed = hit_with(&hits, "order placed");
    assert_eq!(placed["ts_nanos"].as_i64(), Some(t0), "{placed}");
    assert_eq!(placed["ts"], rfc3339(t0), "{placed}");
    assert_eq!(placed["level"], "info");
    assert_eq!(placed["service"], "checkout");
    assert_eq!(placed["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(placed["span_id"], "00f067aa0ba902b7");
    assert_eq!(placed["attributes"], json!({"user": "alice"}));

    let failed = hit_with(&hits, "payment failed");
    assert_eq!(failed["ts_nanos"].as_i64(), Some(t0 + MINUTE), "{failed}");
    assert_eq!(failed["level"], "error");
    assert_eq!(failed["service"], "payments");
    assert_eq!(
        failed["attributes"],
        json!({"user": "bob", "http": {"status": 502}})
    );
    assert!(
        failed.get("trace_id").is_none(),
        "no trace id was given: {failed}"
    );

    let one = hit_with(&hits, "array one");
    assert_eq!(
        (one["level"].as_str(), one["ts_nanos"].as_i64()),
        (Some("warn"), Some(t0 + 2 * MINUTE))
    );
    assert_eq!(
        one["service"], "orders",
        "the stream is the default service: {one}"
    );
    let two = hit_with(&hits, "array two");
    assert_eq!(
        (two["level"].as_str(), two["ts_nanos"].as_i64()),
        (Some("debug"), Some(t0 + 3 * MINUTE))
    );
    let three = hit_with(&hits, "array three");
    assert_eq!(
        three["ts_nanos"].as_i64(),
        Some(t0 + 4 * MINUTE + 123_456_789),
        "{three}"
    );
    assert_eq!(
        three["ts"],
        rfc3339(t0 + 4 * MINUTE + 123_456_789),
        "{three}"
    );

    for message in [
        "plain line one",
        "{\"message\": \"plain two\"}",
        "plain line three",
        "gzip one",
    ] {
        let hit = hit_with(&hits, message);
        assert_eq!(
            (hit["level"].as_str(), hit["service"].as_str()),
            (Some("info"), Some("orders")),
            "{hit}"
        );
        assert_eq!(hit["attributes"], json!({}), "{hit}");
        // Stamped on arrival: within the last few minutes.
        let age = now_nanos() - hit["ts_nanos"].as_i64().unwrap();
        assert!((0..5 * MINUTE).contains(&age), "{hit}");
    }
}

/// Six records in `shop` and one in `audit` at known times in the past hour.
struct Shop {
    base: i64,
}

impl Shop {
    async fn ingest(node: &Node) -> Shop {
        let base = whole_second_now();
        let at = |minutes: i64| base - minutes * MINUTE;
        node.ingest_records(
            "shop",
            &[
                json!({"timestamp": at(50), "level": "info", "service": "web", "message": "user alice logged in",
                       "attributes": {"user": "alice"}}),
                json!({"timestamp": at(40), "level": "error", "service": "payments", "message": "payment failed for order 7",
                       "attributes": {"user": "bob", "order": 7, "http.status": 502}}),
                json!({"timestamp": at(30), "level": "warn", "service": "payments", "message": "payment retry scheduled",
                       "attributes": {"user": "alice"}}),
                json!({"timestamp": at(20), "level": "error", "service": "web", "message": "failed to render payment page",
                       "attributes": {"http": {"status": 502}}}),
                json!({"timestamp": at(10), "level": "info", "service": "web", "message": "order shipped",
                       "attributes": {"user": "carol"}}),
                json!({"timestamp": at(5), "level": "debug", "service": "worker", "message": "cache warm"}),
            ],
        )
        .await;
        node.ingest_records(
            "audit",
            &[json!({"timestamp": at(15), "level": "info", "service": "auditor", "message": "payment audit trail"})],
        )
        .await;
        node.wait_hits(&[("stream", "shop,audit")], 7).await;
        Shop { base }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn search_syntax_filters_time_ranges_order_and_kinds() {
    let node = Node::builder().otlp().start().await;
    let shop = Shop::ingest(&node).await;
    let base = shop.base;

    // (query parameters, expected messages newest first)
    let r1 = "user alice logged in";
    let r2 = "payment failed for order 7";
    let r3 = "payment retry scheduled";
    let r4 = "failed to render payment page";
    let r5 = "order shipped";
    let r6 = "cache warm";
    let audit = "payment audit trail";
    let since_45m = rfc3339(base - 45 * MINUTE);
    let until_15m = rfc3339(base - 15 * MINUTE);
    let since_epoch_s = ((base - 25 * MINUTE) / 1_000_000_000).to_string();
    let until_epoch_ms = ((base - 7 * MINUTE) / 1_000_000).to_string();
    let cases: Vec<(Vec<(&str, &str)>, Vec<&str>)> = vec![
        (vec![("q", "payment")], vec![audit, r4, r3, r2]),
        (vec![("q", "PAYMENT")], vec![audit, r4, r3, r2]),
        (vec![("q", "\"payment failed\"")], vec![r2]),
        (vec![("q", "payment failed")], vec![r4, r2]),
        (vec![("q", "payment AND failed")], vec![r4, r2]),
        (vec![("q", "payment -retry")], vec![audit, r4, r2]),
        (vec![("q", "payment NOT retry")], vec![audit, r4, r2]),
        (vec![("q", "payment AND NOT retry")], vec![audit, r4, r2]),
        (
            vec![("q", "payment AND NOT retry AND NOT audit")],
            vec![r4, r2],
        ),
        (vec![("q", "order OR cache")], vec![r6, r5, r2]),
        (
            vec![("q", "(order OR cache) AND NOT shipped")],
            vec![r6, r2],
        ),
        (vec![("q", "level:error")], vec![r4, r2]),
        (vec![("q", "service:web")], vec![r5, r4, r1]),
        (vec![("q", "service:payments AND retry")], vec![r3]),
        (vec![("q", "attributes.user:alice")], vec![r3, r1]),
        (vec![("q", "attributes.order:7")], vec![r2]),
        // A dotted key and a nested object are the same path.
        (vec![("q", "attributes.http.status:502")], vec![r4, r2]),
        (vec![("level", "error,warn")], vec![r4, r3, r2]),
        (vec![("level", "ERROR")], vec![r4, r2]),
        (vec![("service", "payments")], vec![r3, r2]),
        (vec![("level", "error"), ("service", "web")], vec![r4]),
        (vec![("q", "payment"), ("stream", "audit")], vec![audit]),
        // until is exclusive: the audit record sits exactly on it.
        (
            vec![("since", since_45m.as_str()), ("until", until_15m.as_str())],
            vec![r4, r3, r2],
        ),
        (vec![("since", "35m")], vec![r6, r5, audit, r4, r3]),
        (
            vec![
                ("since", since_epoch_s.as_str()),
                ("until", until_epoch_ms.as_str()),
            ],
            vec![r5, audit, r4],
        ),
        (
            vec![("order", "oldest")],
            vec![r1, r2, r3, r4, audit, r5, r6],
        ),
        (
            vec![("order", "newest")],
            vec![r6, r5, audit, r4, r3, r2, r1],
        ),
        (vec![("order", "oldest"), ("limit", "2")], vec![r1, r2]),
        (vec![("limit", "3")], vec![r6, r5, audit]),
        (vec![("q", "nothing-matches-this")], vec![]),
    ];
    for (query, want) in &cases {
        let mut query = query.clone();
        if !query.iter().any(|(k, _)| *k == "stream") {
            query.push(("stream", "shop,audit"));
        }
        let answer = node.search(&query).await;
        let got = messages(&hits_of(&answer));
        assert_eq!(got, *want, "search {query:?}");
        assert_eq!(
            answer["count"].as_u64(),
            Some(want.len() as u64),
            "{query:?}: {answer}"
        );
        assert_eq!(answer["partial"], false, "{answer}");
    }

    // The same filters as a JSON body (POST), lists as arrays.
    let answer = node
        .post_json(
            "/v1/logs/search",
            &json!({"q": "payment", "stream": ["shop", "audit"], "level": ["error"], "limit": 10}),
        )
        .await
        .ok();
    assert_eq!(messages(&hits_of(&answer)), vec![r4, r2], "{answer}");

    // Spans are apart from log records: kind=log (the default), span, any.
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let span_start = base - 20 * MINUTE + 1_000_000_000;
    let spans = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": "eee19b7ec3c1b174", "name": "render payment page", "kind": 2,
            "startTimeUnixNano": span_start.to_string(), "endTimeUnixNano": (span_start + 250_000_000).to_string(),
            "status": {"code": 2, "message": "template missing"}
        }]}]
    }]});
    let reply = node
        .otlp_post("/v1/traces", "application/json", spans.to_string())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    node.wait_hits(&[("stream", "traces"), ("kind", "span")], 1)
        .await;
    let all_streams = [("stream", "shop,audit,traces"), ("q", "payment")];
    let logs = node.search(&all_streams).await;
    assert_eq!(
        messages(&hits_of(&logs)),
        vec![audit, r4, r3, r2],
        "kind=log is the default"
    );
    let mut query = all_streams.to_vec();
    query.push(("kind", "span"));
    let spans = hits_of(&node.search(&query).await);
    assert_eq!(messages(&spans), vec!["render payment page"]);
    let span = &spans[0];
    assert_eq!(
        (
            span["kind"].as_str(),
            span["stream"].as_str(),
            span["service"].as_str()
        ),
        (Some("span"), Some("traces"), Some("web"))
    );
    assert_eq!(span["trace_id"], trace_id);
    assert_eq!(span["span"]["status"], "error", "{span}");
    assert_eq!(span["span"]["status_message"], "template missing", "{span}");
    assert_eq!(span["span"]["duration_nanos"], 250_000_000, "{span}");
    assert_eq!(span["span"]["kind"], "server", "{span}");
    assert_eq!(
        span["level"], "error",
        "an error span has level error: {span}"
    );
    query.pop();
    query.push(("kind", "any"));
    let any = hits_of(&node.search(&query).await);
    assert_eq!(
        messages(&any),
        vec![audit, "render payment page", r4, r3, r2]
    );
    // Span filters.
    for (extra, want) in [
        (vec![("min_duration", "200ms")], 1),
        (vec![("min_duration", "300ms")], 0),
        (vec![("max_duration", "250ms")], 1),
        (vec![("status", "error")], 1),
        (vec![("status", "ok")], 0),
        (vec![("operation", "render payment page")], 1),
        (vec![("operation", "other")], 0),
        (vec![("trace_id", "5B8EFFF798038103D269B633813FC60C")], 1),
        (vec![("q", "duration:[200000000 TO *]")], 1),
        (vec![("q", "status:error")], 1),
    ] {
        let mut query = vec![("stream", "traces"), ("kind", "span")];
        query.extend(extra.iter().copied());
        let answer = node.search(&query).await;
        assert_eq!(hits_of(&answer).len(), want, "{query:?}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cursor_pagination_returns_every_record_once_in_order() {
    let node = Node::start().await;
    let base = whole_second_now();
    // 250 records sharing ten timestamps, in five batches.
    for batch in 0..5 {
        let records: Vec<Value> = (0..50)
            .map(|i| {
                let n = batch * 50 + i;
                json!({"timestamp": base - (1 + n % 10) * MINUTE, "message": format!("page record {n}"), "n": n})
            })
            .collect();
        node.ingest_records("pages", &records).await;
    }
    // Another stream on the same day with the newest records (a search must
    // not stop after the first stream's partition of a day), and some on
    // an older day.
    let newest: Vec<Value> = (0..30)
        .map(|n| json!({"timestamp": base - 30_000_000_000 + (n % 3), "message": format!("other record {n}"), "n": n}))
        .collect();
    node.ingest_records("pages-other", &newest).await;
    let older: Vec<Value> = (30..50)
        .map(|n| json!({"timestamp": base - 26 * HOUR - (n % 4) * MINUTE, "message": format!("other record {n}"), "n": n}))
        .collect();
    node.ingest_records("pages-other", &older).await;

    let streams = [("stream", "pages,pages-other")];
    let all = node.wait_hits(&streams, 300).await;
    let key = |h: &Value| {
        (
            h["ts_nanos"].as_i64().unwrap(),
            num(h, "/node"),
            num(h, "/seq"),
        )
    };
    for pair in all.windows(2) {
        assert!(
            key(&pair[0]) > key(&pair[1]),
            "not strictly newest first: {} then {}",
            pair[0],
            pair[1]
        );
    }
    let unique: BTreeSet<String> = messages(&all).into_iter().collect();
    assert_eq!(unique.len(), 300);

    // The first page holds the newest records of all streams.
    let first = hits_of(
        &node
            .search(&[("stream", "pages,pages-other"), ("limit", "5")])
            .await,
    );
    assert_eq!(messages(&first), messages(&all[..5]), "first page");
    let first_oldest = hits_of(
        &node
            .search(&[
                ("stream", "pages,pages-other"),
                ("limit", "5"),
                ("order", "oldest"),
            ])
            .await,
    );
    let mut oldest_all = all.clone();
    oldest_all.reverse();
    assert_eq!(
        messages(&first_oldest),
        messages(&oldest_all[..5]),
        "first oldest page"
    );

    for page in [7, 13, 100, 299, 300, 301] {
        let walked = node.search_pages(&streams, page).await;
        assert_eq!(
            messages(&walked),
            messages(&all),
            "newest first, pages of {page}"
        );
        let walked = node
            .search_pages(&[streams[0], ("order", "oldest")], page)
            .await;
        assert_eq!(
            messages(&walked),
            messages(&oldest_all),
            "oldest first, pages of {page}"
        );
    }

    // A cursor also works with filters and time bounds: the 25 records of
    // one shared timestamp, in pages of 4.
    let at = (base - 3 * MINUTE).to_string();
    let until = (base - 3 * MINUTE + 1).to_string();
    let walked = node
        .search_pages(&[("stream", "pages"), ("since", &at), ("until", &until)], 4)
        .await;
    let ns: BTreeSet<u64> = walked.iter().map(|h| num(h, "/attributes/n")).collect();
    let want: BTreeSet<u64> = (0..250).filter(|n| 1 + n % 10 == 3).collect();
    assert_eq!(walked.len(), 25);
    assert_eq!(ns, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregations_count_histograms_and_top_values_exactly() {
    let node = Node::start().await;
    let ten_minutes = 10 * MINUTE;
    let base = now_nanos().div_euclid(ten_minutes) * ten_minutes - 6 * ten_minutes;
    let rec = |offset: i64, level: &str, service: &str| json!({"timestamp": base + offset, "level": level, "service": service, "message": format!("agg {level} {service}")});
    let m = MINUTE;
    let records = vec![
        rec(-5 * m, "info", "web"), // before the window
        rec(m, "info", "web"),
        rec(m + 1, "info", "web"),
        rec(12 * m, "error", "payments"),
        rec(12 * m, "error", "payments"),
        rec(19 * m, "warn", "web"),
        rec(35 * m, "info", "worker"),
        rec(59 * m, "info", "web"),
        rec(59 * m, "info", "web"),
        rec(59 * m, "info", "web"),
        rec(60 * m - 1, "error", "web"),
        rec(60 * m, "info", "web"), // on the (exclusive) end of the window
    ];
    node.ingest_records("agg", &records).await;
    node.wait_hits(&[("stream", "agg")], 12).await;

    let since = rfc3339(base);
    let until = rfc3339(base + 60 * m);
    let window = [
        ("stream", "agg"),
        ("since", since.as_str()),
        ("until", until.as_str()),
    ];
    let mut query = window.to_vec();
    query.extend([
        ("interval", "10m"),
        ("top", "level,service"),
        ("top_n", "2"),
    ]);
    let answer = node.aggregate(&query).await;
    assert_eq!(answer["total"], 10, "{answer}");
    let histogram: Vec<(i64, u64)> = answer["histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|b| (b["ts_nanos"].as_i64().unwrap(), num(b, "/count")))
        .collect();
    let want: Vec<(i64, u64)> = [2, 3, 0, 1, 0, 4]
        .iter()
        .enumerate()
        .map(|(i, c)| (base + i as i64 * ten_minutes, *c))
        .collect();
    assert_eq!(histogram, want, "{answer}");
    assert_eq!(answer["histogram"][0]["ts"], rfc3339(base));
    assert_eq!(
        answer["top"]["level"],
        json!([{"value": "info", "count": 6}, {"value": "error", "count": 3}]),
        "{answer}"
    );
    assert_eq!(
        answer["top"]["service"],
        json!([{"value": "web", "count": 7}, {"value": "payments", "count": 2}]),
        "{answer}"
    );
    assert_eq!(answer["partial"], false);
    assert_eq!(answer["nodes"]["answered"], json!([node_id(&node).await]));

    // Filters apply to counts; a query too.
    let mut query = window.to_vec();
    query.extend([
        ("interval", "10m"),
        ("q", "level:error"),
        ("top", "service,kind"),
    ]);
    let answer = node.aggregate(&query).await;
    assert_eq!(answer["total"], 3, "{answer}");
    let counts: Vec<u64> = answer["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| num(b, "/count"))
        .collect();
    assert_eq!(counts, vec![0, 2, 0, 0, 0, 1], "{answer}");
    assert_eq!(
        answer["top"]["service"],
        json!([{"value": "payments", "count": 2}, {"value": "web", "count": 1}])
    );
    assert_eq!(answer["top"]["kind"], json!([{"value": "log", "count": 3}]));

    // A 30-minute interval: buckets aligned to multiples of it since the epoch.
    let mut query = window.to_vec();
    query.push(("interval", "30m"));
    let answer = node.aggregate(&query).await;
    let histogram: Vec<(i64, u64)> = answer["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["ts_nanos"].as_i64().unwrap(), num(b, "/count")))
        .collect();
    let half_hour = 30 * m;
    let first = base.div_euclid(half_hour) * half_hour;
    let mut want = std::collections::BTreeMap::new();
    for record in &records {
        let ts = record["timestamp"].as_i64().unwrap();
        if ts >= base && ts < base + 60 * m {
            *want
                .entry(ts.div_euclid(half_hour) * half_hour)
                .or_insert(0u64) += 1;
        }
    }
    let mut bucket = first;
    let mut want_list = Vec::new();
    while bucket < base + 60 * m {
        want_list.push((bucket, want.get(&bucket).copied().unwrap_or(0)));
        bucket += half_hour;
    }
    assert_eq!(histogram, want_list, "{answer}");
    assert_eq!(answer["total"], 10);
}

/// Reads the next SSE event, which must be a `record` event; returns its hit.
async fn next_record(stream: &mut WatchStream, what: &str) -> Value {
    let event = stream
        .next_sse(Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"))
        .unwrap_or_else(|| panic!("{what}: no event within 20 s"));
    match event.event.as_deref() {
        Some("record") => serde_json::from_str(&event.data)
            .unwrap_or_else(|e| panic!("{what}: bad data {e}: {event:?}")),
        other => panic!("{what}: unexpected event {other:?}: {event:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_tail_sends_exactly_the_matching_new_records() {
    let node = Node::start().await;
    node.ingest_records(
        "tailed",
        &[
            json!({"message": "old match one"}),
            json!({"message": "old match two"}),
        ],
    )
    .await;
    node.wait_hits(&[("stream", "tailed")], 2).await;

    let mut tail = node
        .logs_tail(&[("q", "match"), ("stream", "tailed")])
        .await;
    node.ingest_records(
        "tailed",
        &[
            json!({"message": "new match one", "level": "warn"}),
            json!({"message": "noise one"}),
            json!({"message": "new match two"}),
        ],
    )
    .await;
    node.ingest_records(
        "elsewhere",
        &[json!({"message": "match in another stream"})],
    )
    .await;
    node.ingest_records(
        "tailed",
        &[
            json!({"message": "noise two"}),
            json!({"message": "new match three"}),
        ],
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_record(&mut tail, "tail").await);
    }
    assert_eq!(
        messages(&got),
        vec!["new match one", "new match two", "new match three"]
    );
    assert_eq!(got[0]["level"], "warn");
    assert!(got.iter().all(|h| h["stream"] == "tailed"), "{got:?}");
    // Nothing else was sent in between: the next event is the sentinel.
    node.ingest_records(
        "tailed",
        &[
            json!({"message": "noise three"}),
            json!({"message": "match sentinel"}),
        ],
    )
    .await;
    let next = next_record(&mut tail, "tail").await;
    assert_eq!(
        next["message"], "match sentinel",
        "unexpected record: {next}"
    );

    // backlog=N: the newest N matching records first, oldest of them first.
    let mut with_backlog = node
        .logs_tail(&[("q", "match"), ("stream", "tailed"), ("backlog", "2")])
        .await;
    let first = next_record(&mut with_backlog, "tail with backlog").await;
    let second = next_record(&mut with_backlog, "tail with backlog").await;
    assert_eq!(
        messages(&[first, second]),
        vec!["new match three", "match sentinel"]
    );
    node.ingest_records(
        "tailed",
        &[
            json!({"message": "later noise"}),
            json!({"message": "later match"}),
        ],
    )
    .await;
    let next = next_record(&mut with_backlog, "tail with backlog").await;
    assert_eq!(next["message"], "later match");
    let next = next_record(&mut tail, "tail").await;
    assert_eq!(next["message"], "later match");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nodes_own_logs_are_searchable_in_stream_shoal() {
    let mut node = Node::start().await;
    let query = [("stream", "shoal"), ("q", "\"shoal node listening\"")];
    let hits = node.wait_hits(&query, 1).await;
    let hit = &hits[0];
    assert_eq!(hit["message"], "shoal node listening", "{hit}");
    assert_eq!(
        (hit["service"].as_str(), hit["level"].as_str()),
        (Some("shoal"), Some("info")),
        "{hit}"
    );
    assert_eq!(
        hit["attributes"]["api"],
        format!("127.0.0.1:{}", node.api_port),
        "{hit}"
    );
    assert!(hit["attributes"]["target"].is_string(), "{hit}");
    // A second start adds a second one (and the first survived the restart).
    node.restart().await;
    node.wait_hits(&query, 2).await;
    let streams = node.get_path("/v1/logs/streams").await.ok();
    let shoal = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "shoal")
        .unwrap_or_else(|| panic!("no stream shoal: {streams}"))
        .clone();
    assert!(num(&shoal, "/docs") >= 2, "{shoal}");
    assert_eq!(shoal["nodes"], json!([node_id(&node).await]));
}
