use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

/// Order placed → reserve stock (for + http) → switch on stock → wait for the
/// payment (listen, 30 min timeout) with compensation in catch.do (fork of an
/// http call and an event) → charge → ship with a reusable retry policy.
const ORDER_SAGA: &str = r#"
document:
  dsl: '1.0.0'
  namespace: shop
  name: order-saga
  version: '1.2.0'
  title: Order saga
  summary: Reserve stock, take the payment and ship; compensate when the payment never comes.
  tags:
    team: checkout
  metadata:
    owner: checkout@example.com
use:
  secrets: [payments-api-key]
  errors:
    outOfStock:
      type: https://shop.example.com/errors/out-of-stock
      status: 409
      title: Out of stock
  retries:
    transient:
      delay:
        seconds: 2
      backoff:
        exponential: {}
      limit:
        attempt:
          count: 5
          duration: PT1M
        duration: PT10M
      jitter:
        from:
          milliseconds: 100
        to:
          seconds: 1
input:
  schema:
    format: json
    document:
      type: object
      required: [orderId, items]
output:
  as: '${ { orderId: .orderId, status: .status } }'
timeout:
  after:
    hours: 2
do:
  - recordOrder:
      set:
        orderId: ${ .orderId }
        items: ${ .items }
        status: placed
  - announceOrder:
      emit:
        event:
          with:
            source: https://shop.example.com/orders
            type: com.example.shop.order.placed.v1
            data: '${ { orderId: .orderId, items: .items } }'
  - reserveItems:
      for:
        each: item
        in: ${ .items }
        at: position
      while: ${ .status != "failed" }
      do:
        - reserveItem:
            call: http
            with:
              method: post
              endpoint: https://inventory.example.com/reservations
              headers:
                Content-Type: application/json
              body:
                orderId: ${ .orderId }
                sku: ${ $item.sku }
                quantity: ${ $item.quantity }
      export:
        as: '${ $context + { reserved: true } }'
  - checkStock:
      switch:
        - outOfStock:
            when: ${ $context.reserved != true }
            then: rejectOrder
        - inStock:
            then: awaitPayment
  - rejectOrder:
      raise:
        error: outOfStock
  - awaitPayment:
      try:
        - waitForPayment:
            listen:
              to:
                one:
                  with:
                    type: com.example.payments.payment.received.v1
                    source: https://payments.example.com
                  correlate:
                    orderId:
                      from: ${ .data.orderId }
                      expect: ${ .orderId }
            timeout:
              after: PT30M
        - chargeCard:
            call: http
            with:
              method: POST
              endpoint:
                uri: https://payments.example.com/charges/{orderId}
              query:
                idempotencyKey: ${ .orderId }
              body: '${ { orderId: .orderId, amount: .total } }'
              output: response
      catch:
        errors:
          with:
            type: https://serverlessworkflow.io/spec/1.0.0/errors/timeout
            status: 408
        as: failure
        do:
          - compensate:
              fork:
                compete: false
                branches:
                  - releaseStock:
                      call: http
                      with:
                        method: delete
                        endpoint: https://inventory.example.com/reservations/{orderId}
                  - notifyCustomer:
                      emit:
                        event:
                          with:
                            source: https://shop.example.com/orders
                            type: com.example.shop.order.cancelled.v1
                            data:
                              orderId: ${ .orderId }
                              reason: "${ \"no payment after \" + ($failure.status | tostring) }"
          - cancelled:
              set:
                status: cancelled
              then: end
  - ship:
      try:
        - createShipment:
            call: http
            with:
              method: post
              endpoint: https://shipping.example.com/shipments
              body:
                orderId: ${ .orderId }
      catch:
        errors:
          with:
            status: 503
        retry: transient
  - settle:
      wait: PT1S
  - complete:
      if: ${ .status != "cancelled" }
      set:
        status: completed
      then: end
"#;

#[test]
fn the_order_saga_parses_and_validates() {
    let definition = parse(ORDER_SAGA.as_bytes()).expect("the saga is valid");
    assert_eq!(definition.namespace, "shop");
    assert_eq!(definition.name, "order-saga");
    assert_eq!(definition.version, "1.2.0");
    assert_eq!(definition.key(), "shop/order-saga/1.2.0");
    assert_eq!(
        definition.document["do"][5]["awaitPayment"]["try"][0]["waitForPayment"]["timeout"]
            ["after"],
        json!("PT30M")
    );
}

#[test]
fn the_order_saga_in_json_parses_equal() {
    let from_yaml = parse(ORDER_SAGA.as_bytes()).expect("the saga is valid");
    let as_json = serde_json::to_string_pretty(&from_yaml.document).expect("serializes");
    let from_json = parse(as_json.as_bytes()).expect("the JSON saga is valid");
    assert_eq!(from_yaml, from_json);

    // A small one written by hand in both forms.
    let yaml = "document:\n  dsl: '1.0.0'\n  namespace: shop\n  name: hello\n  version: '0.1.0'\n\
                do:\n  - greet:\n      set:\n        greeting: hello\n        count: 3\n";
    let json = r#" {"document": {"dsl": "1.0.0", "namespace": "shop", "name": "hello",
        "version": "0.1.0"}, "do": [{"greet": {"set": {"greeting": "hello", "count": 3}}}]}"#;
    assert_eq!(parse(yaml.as_bytes()), parse(json.as_bytes()));
    assert!(parse(json.as_bytes()).is_ok());
}

#[test]
fn event_types_are_those_of_every_listen_and_of_schedule_on() {
    let saga = parse(ORDER_SAGA.as_bytes()).expect("the saga is valid");
    let types = saga.event_types();
    // The saga's one listen is inside a try; what it emits is not taken.
    assert!(types.contains("com.example.payments.payment.received.v1"));
    assert!(!types.contains("com.example.shop.order.placed.v1"));
    assert!(!types.contains("anything.else"));

    let none = parse(doc(ONE_TASK).as_bytes()).expect("valid");
    assert!(none.event_types().is_empty());

    let nested = doc(
        "schedule:\n  on:\n    one:\n      with: {type: started.by}\n\
         do:\n  - each:\n      for: {in: '${ .xs }'}\n      do:\n\
         \x20       - wait1:\n            listen:\n              to:\n\
         \x20               all: [{with: {type: in.for}}]\n\
         \x20 - both:\n      fork:\n        branches:\n\
         \x20         - b1:\n              listen: {to: {any: [{with: {type: in.fork}}]}}\n\
         \x20         - b2:\n              set: {x: 1}\n",
    );
    let nested = parse(nested.as_bytes()).expect("valid");
    let types = nested.event_types();
    for kind in ["started.by", "in.for", "in.fork"] {
        assert!(types.contains(kind), "{kind}: {types:?}");
    }
    assert!(!types.contains("other"));

    let computed = doc("do:\n  - w:\n      listen: {to: {one: {with: {type: '${ .kind }'}}}}\n");
    let computed = parse(computed.as_bytes()).expect("valid");
    assert!(computed.event_types().contains("other"));
}

fn header(name: &str) -> String {
    format!("document:\n  dsl: '1.0.0'\n  namespace: shop\n  name: {name}\n  version: '1.0.0'\n")
}

fn doc(body: &str) -> String {
    format!("{}{body}", header("t"))
}

const ONE_TASK: &str = "do:\n  - a:\n      set:\n        x: 1\n";

#[derive(Debug)]
enum Expect {
    Invalid(&'static str),
    Unsupported(&'static str),
}

#[test]
fn invalid_documents_are_refused_with_their_path() {
    let cases: Vec<(&str, String, Expect)> = vec![
        ("missing document", ONE_TASK.into(), Expect::Invalid("")),
        (
            "dsl 0.9",
            format!(
                "document:\n  dsl: '0.9'\n  namespace: shop\n  name: t\n  version: '1.0.0'\n{ONE_TASK}"
            ),
            Expect::Unsupported("/document/dsl"),
        ),
        (
            "dsl not a version",
            format!(
                "document:\n  dsl: latest\n  namespace: shop\n  name: t\n  version: '1.0.0'\n{ONE_TASK}"
            ),
            Expect::Invalid("/document/dsl"),
        ),
        ("bad name", format!("{}{ONE_TASK}", header("Orders")), Expect::Invalid("/document/name")),
        (
            "a namespace the routes use",
            format!(
                "document:\n  dsl: '1.0.0'\n  namespace: instances\n  name: t\n  version: '1.0.0'\n{ONE_TASK}"
            ),
            Expect::Invalid("/document/namespace"),
        ),
        (
            "bad version",
            format!(
                "document:\n  dsl: '1.0.0'\n  namespace: shop\n  name: t\n  version: v1\n{ONE_TASK}"
            ),
            Expect::Invalid("/document/version"),
        ),
        ("empty do", doc("do: []\n"), Expect::Invalid("/do")),
        (
            "duplicate task names",
            doc("do:\n  - a:\n      set: {x: 1}\n  - a:\n      set: {x: 2}\n"),
            Expect::Invalid("/do/1/a"),
        ),
        (
            "dangling then",
            doc("do:\n  - a:\n      set: {x: 1}\n      then: nowhere\n  - b:\n      wait: PT1S\n"),
            Expect::Invalid("/do/0/a/then"),
        ),
        (
            "then into another list",
            doc("do:\n  - a:\n      do:\n        - inner:\n            set: {x: 1}\n            then: b\n  - b:\n      wait: PT1S\n"),
            Expect::Invalid("/do/0/a/do/0/inner/then"),
        ),
        (
            "run task",
            doc("do:\n  - a:\n      set: {x: 1}\n  - build:\n      run:\n        shell:\n          command: make\n"),
            Expect::Unsupported("/do/1/build"),
        ),
        (
            "unknown task kind",
            doc("do:\n  - a:\n      teleport: {to: mars}\n"),
            Expect::Unsupported("/do/0/a"),
        ),
        (
            "call grpc",
            doc("do:\n  - chargeCard:\n      call: grpc\n      with:\n        proto:\n          endpoint: https://x.example.com/p.proto\n"),
            Expect::Unsupported("/do/0/chargeCard/call"),
        ),
        (
            "custom function",
            doc("do:\n  - a:\n      call: sendEmail\n"),
            Expect::Unsupported("/do/0/a/call"),
        ),
        (
            "unknown task field",
            doc("do:\n  - a:\n      set: {x: 1}\n      retries: 3\n"),
            Expect::Invalid("/do/0/a/retries"),
        ),
        (
            "unknown top-level key",
            doc(&format!("extensions: []\n{ONE_TASK}")),
            Expect::Invalid("/extensions"),
        ),
        (
            "use.functions",
            doc(&format!("use:\n  functions:\n    f:\n      call: http\n{ONE_TASK}")),
            Expect::Unsupported("/use/functions"),
        ),
        (
            "listen to one and any",
            doc("do:\n  - w:\n      listen:\n        to:\n          one:\n            with: {type: a.b}\n          any: []\n"),
            Expect::Invalid("/do/0/w/listen/to"),
        ),
        (
            "backoff of two kinds",
            doc("do:\n  - t:\n      try:\n        - a:\n            wait: PT1S\n      catch:\n        retry:\n          backoff:\n            constant: {}\n            exponential: {}\n"),
            Expect::Invalid("/do/0/t/catch/retry/backoff"),
        ),
        (
            "bad duration",
            doc("do:\n  - w:\n      wait: 30 minutes\n"),
            Expect::Invalid("/do/0/w/wait"),
        ),
        (
            "duration in months",
            doc("do:\n  - w:\n      wait: P1M\n"),
            Expect::Unsupported("/do/0/w/wait"),
        ),
        (
            "unbalanced expression",
            doc("do:\n  - a:\n      set:\n        a: '${ .a '\n"),
            Expect::Invalid("/do/0/a/set/a"),
        ),
        (
            "two expressions in one string",
            doc("do:\n  - a:\n      set:\n        a: '${ .a } and ${ .b }'\n"),
            Expect::Invalid("/do/0/a/set/a"),
        ),
        (
            "raise of an undefined error",
            doc("do:\n  - r:\n      raise:\n        error: nope\n"),
            Expect::Invalid("/do/0/r/raise/error"),
        ),
        (
            "inline error without status",
            doc("do:\n  - r:\n      raise:\n        error:\n          type: https://e.example.com/x\n"),
            Expect::Invalid("/do/0/r/raise/error"),
        ),
        (
            "retry of an undefined policy",
            doc("do:\n  - t:\n      try:\n        - a:\n            wait: PT1S\n      catch:\n        retry: nope\n"),
            Expect::Invalid("/do/0/t/catch/retry"),
        ),
        (
            "switch case to nowhere",
            doc("do:\n  - s:\n      switch:\n        - c:\n            when: ${ .x }\n            then: nowhere\n"),
            Expect::Invalid("/do/0/s/switch/0/c/then"),
        ),
        (
            "for without in",
            doc("do:\n  - f:\n      for:\n        each: item\n      do:\n        - a:\n            wait: PT1S\n"),
            Expect::Invalid("/do/0/f/for"),
        ),
        (
            "http endpoint that is not http",
            doc("do:\n  - c:\n      call: http\n      with:\n        method: get\n        endpoint: ftp://x.example.com/\n"),
            Expect::Invalid("/do/0/c/with/endpoint"),
        ),
        (
            "emit without source",
            doc("do:\n  - e:\n      emit:\n        event:\n          with:\n            type: a.b\n"),
            Expect::Invalid("/do/0/e/emit/event/with"),
        ),
        (
            "schedule of two kinds",
            doc(&format!("schedule:\n  every: PT1H\n  cron: '0 * * * *'\n{ONE_TASK}")),
            Expect::Invalid("/schedule"),
        ),
        (
            "cron of six fields",
            doc(&format!("schedule:\n  cron: '0 0 * * * *'\n{ONE_TASK}")),
            Expect::Invalid("/schedule/cron"),
        ),
        (
            "timeout by name",
            doc(&format!("timeout: slow\n{ONE_TASK}")),
            Expect::Unsupported("/timeout"),
        ),
        (
            "task entry with two keys",
            doc("do:\n  - a:\n      wait: PT1S\n    b:\n      wait: PT1S\n"),
            Expect::Invalid("/do/0"),
        ),
        (
            "task name with a slash is escaped in the path",
            doc("do:\n  - a/b~c:\n      wait: soon\n"),
            Expect::Invalid("/do/0/a~1b~0c/wait"),
        ),
        (
            "listen.read",
            doc("do:\n  - w:\n      listen:\n        to:\n          any: []\n        read: envelope\n"),
            Expect::Unsupported("/do/0/w/listen/read"),
        ),
        (
            "endpoint authentication",
            doc("do:\n  - c:\n      call: http\n      with:\n        method: get\n        endpoint:\n          uri: https://x.example.com/\n          authentication:\n            use: token\n"),
            Expect::Unsupported("/do/0/c/with/endpoint/authentication"),
        ),
        (
            "evaluate",
            doc(&format!("evaluate:\n  language: jq\n{ONE_TASK}")),
            Expect::Unsupported("/evaluate"),
        ),
        (
            "catch variable shadowing $context",
            doc("do:\n  - t:\n      try:\n        - a:\n            wait: PT1S\n      catch:\n        as: context\n"),
            Expect::Invalid("/do/0/t/catch/as"),
        ),
        (
            "top-level JSON array",
            r#"[{"document": {}}]"#.into(),
            Expect::Invalid(""),
        ),
    ];
    for (label, text, expected) in cases {
        let result = parse(text.as_bytes());
        match (&result, &expected) {
            (Err(DefinitionError::Invalid { path, message }), Expect::Invalid(want)) => {
                assert_eq!(path, want, "{label}: {message}");
                assert!(!message.is_empty(), "{label}");
            }
            (Err(DefinitionError::Unsupported { path, construct }), Expect::Unsupported(want)) => {
                assert_eq!(path, want, "{label}: {construct}");
            }
            _ => panic!("{label}: expected {expected:?}, got {result:?}"),
        }
    }
}

#[test]
fn nesting_deeper_than_the_limit_is_refused() {
    // 40 nested task lists; the 33rd is refused.
    let mut inner = r#"{"leaf": {"set": {"a": 1}}}"#.to_string();
    for level in 0..39 {
        inner = format!(r#"{{"n{level}": {{"do": [{inner}]}}}}"#);
    }
    let text = format!(
        r#"{{"document": {{"dsl": "1.0.0", "namespace": "shop", "name": "deep",
            "version": "1.0.0"}}, "do": [{inner}]}}"#
    );
    let mut path = "/do".to_string();
    for level in 0..MAX_NESTING {
        path.push_str(&format!("/0/n{}/do", 38 - level));
    }
    match parse(text.as_bytes()) {
        Err(DefinitionError::Invalid { path: got, message }) => {
            assert_eq!(got, path, "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    // 32 levels are fine.
    let mut inner = r#"{"leaf": {"set": {"a": 1}}}"#.to_string();
    for level in 0..31 {
        inner = format!(r#"{{"n{level}": {{"do": [{inner}]}}}}"#);
    }
    let text = format!(
        r#"{{"document": {{"dsl": "1.0.0", "namespace": "shop", "name": "deep",
            "version": "1.0.0"}}, "do": [{inner}]}}"#
    );
    assert!(parse(text.as_bytes()).is_ok());
}

#[test]
fn nesting_beyond_the_parsers_limit_is_a_syntax_error() {
    let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
    match parse(text.as_bytes()) {
        Err(DefinitionError::Syntax(message)) => {
            assert!(message.contains("too deeply"), "{message}")
        }
        other => panic!("expected Syntax, got {other:?}"),
    }
}

#[test]
fn more_than_the_task_limit_is_refused() {
    let mut text = doc("do:\n");
    for i in 0..=MAX_TASKS {
        text.push_str(&format!("  - t{i}:\n      wait: PT1S\n"));
    }
    match parse(text.as_bytes()) {
        Err(DefinitionError::Invalid { path, .. }) => {
            assert_eq!(path, format!("/do/{MAX_TASKS}/t{MAX_TASKS}"));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn oversized_input_is_refused() {
    let mut text = doc(ONE_TASK);
    text.push_str("# ");
    text.push_str(&"x".repeat(MAX_DEFINITION_BYTES));
    match parse(text.as_bytes()) {
        Err(DefinitionError::TooLarge { size, limit }) => {
            assert_eq!(size, text.len());
            assert_eq!(limit, MAX_DEFINITION_BYTES);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn syntax_errors_are_refused() {
    for text in [
        "document: [unclosed\n",
        "document:\n  dsl: '1.0.0'\n   name: bad indent\n",
        "{\"document\": ",
        "{\"a\": 1, \"a\": 2}",
        "a: 1\na: 2\n",
        "a: 1\n---\nb: 2\n",
        "a: !custom 1\n",
        "",
        "   \n",
    ] {
        match parse(text.as_bytes()) {
            Err(DefinitionError::Syntax(message)) => assert!(!message.is_empty()),
            other => panic!("{text:?}: expected Syntax, got {other:?}"),
        }
    }
}

#[test]
fn yaml_alias_bombs_stop_quickly() {
    // Billion laughs: nine levels of nine aliases.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); 9].join(",");
        bomb.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
    }
    // Wide: one large anchor referenced many times (few alias jumps each
    // expanding much).
    let mut wide = String::from("big: &big [");
    wide.push_str(&vec!["\"xxxxxxxxxxxxxxxx\""; 2000].join(","));
    wide.push_str("]\ncopies: [");
    wide.push_str(&vec!["*big"; 2000].join(","));
    wide.push_str("]\n");
    for text in [bomb, wide] {
        let started = Instant::now();
        let result = parse(text.as_bytes());
        assert!(
            matches!(
                result,
                Err(DefinitionError::TooLarge { .. } | DefinitionError::Syntax(_))
            ),
            "got {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn aliases_within_the_limit_expand() {
    let text = format!(
        "{}use:\n  retries:\n    a: &policy\n      delay: {{seconds: 1}}\n    b: *policy\n{ONE_TASK}",
        header("t")
    );
    let definition = parse(text.as_bytes()).expect("valid");
    assert_eq!(
        definition.document["use"]["retries"]["b"],
        json!({"delay": {"seconds": 1}})
    );
}

#[test]
fn random_mutations_never_panic() {
    let original = ORDER_SAGA.as_bytes();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let mut bytes = original.to_vec();
        match round % 4 {
            0 => bytes.truncate((next() as usize) % original.len()),
            1 => {
                for _ in 0..1 + next() % 8 {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] ^= 1 << (next() % 8);
                }
            }
            2 => {
                for _ in 0..1 + next() % 8 {
                    let at = (next() as usize) % bytes.len();
                    let alphabet = b"{}[]:-$&*'\" \n#!|>";
                    let byte = alphabet[(next() as usize) % alphabet.len()];
                    bytes.insert(at, byte);
                }
            }
            _ => {
                let at = (next() as usize) % bytes.len();
                let len = (next() as usize) % 64;
                bytes.drain(at..(at + len).min(bytes.len()));
            }
        }
        let _ = parse(&bytes);
    }
}

#[test]
fn durations_are_read() {
    for (text, want) in [
        ("PT30M", Duration::from_secs(1800)),
        ("PT1H30M", Duration::from_secs(5400)),
        ("P1DT1S", Duration::from_secs(86_401)),
        ("P2W", Duration::from_secs(2 * 7 * 86_400)),
        ("PT0.5S", Duration::from_millis(500)),
    ] {
        assert_eq!(parse_duration(&json!(text)), Ok(want), "{text}");
    }
    assert_eq!(
        parse_duration(&json!({"minutes": 1, "milliseconds": 5})),
        Ok(Duration::from_millis(60_005))
    );
    for text in [
        "P",
        "PT",
        "30 minutes",
        "PT30",
        "PTM",
        "P1H",
        "PT1S1M",
        "PT.5S",
        "pt1m",
        "P1DT",
    ] {
        assert!(parse_duration(&json!(text)).is_err(), "{text}");
    }
    assert!(parse_duration(&json!({})).is_err());
    assert!(parse_duration(&json!({"minute": 1})).is_err());
    assert!(parse_duration(&json!({"minutes": -1})).is_err());
}

#[test]
fn runtime_expressions_are_checked_syntactically() {
    for ok in [
        "${ .a }",
        "  ${ { a: .b, c: [.d[0]] } }  ",
        r#"${ "}" + .a }"#,
        r#"${ "x\(.a + "}")y" }"#,
        "not an expression {",
        "https://x.example.com/${ .id }",
    ] {
        assert_eq!(check_expression_syntax(ok), Ok(()), "{ok}");
    }
    for bad in [
        "${ .a ",
        "${}",
        "${ .a ) }",
        "${ .a } trailing",
        r#"${ "unterminated }"#,
        "${ [.a }",
    ] {
        assert!(check_expression_syntax(bad).is_err(), "{bad}");
    }
}

#[test]
fn errors_read_well() {
    let error = parse(doc("do:\n  - a:\n      set: {x: 1}\n      then: nowhere\n").as_bytes())
        .expect_err("dangling");
    let text = error.to_string();
    assert!(text.contains("/do/0/a/then"), "{text}");
    assert!(text.contains("nowhere"), "{text}");
    assert_eq!(error.path(), Some("/do/0/a/then"));

    let error = parse(ONE_TASK.as_bytes()).expect_err("no document");
    assert!(error.to_string().contains("the document root"), "{error}");

    let error = parse(doc("do:\n  - c:\n      call: grpc\n").as_bytes()).expect_err("grpc");
    assert!(error.to_string().contains("call: grpc"), "{error}");
}

#[test]
fn definitions_round_trip_through_serde() {
    let definition = parse(ORDER_SAGA.as_bytes()).expect("valid");
    let json = serde_json::to_vec(&definition).expect("serializes");
    let back: Definition = serde_json::from_slice(&json).expect("deserializes");
    assert_eq!(back, definition);
    assert_eq!(
        Definition::from_value(definition.document.clone()),
        Ok(definition)
    );
}

#[test]
fn versions_order_by_number_with_pre_releases_first() {
    let mut versions = vec![
        "1.10.0",
        "1.0.0",
        "1.9.0",
        "1.0.0-demo",
        "2.0.0-rc.1",
        "1.9.0+build.7",
    ];
    versions.sort_by_key(|v| super::version_order(v));
    assert_eq!(
        versions,
        [
            "1.0.0-demo",
            "1.0.0",
            "1.9.0",
            "1.9.0+build.7",
            "1.10.0",
            "2.0.0-rc.1"
        ]
    );
}
