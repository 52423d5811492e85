use serde_json::{json, Value};

use super::*;
use crate::Definition;

const NOW: u64 = 1_000_000;

fn definition(tasks: Value) -> Definition {
    definition_with(json!({"do": tasks}))
}

fn definition_with(mut body: Value) -> Definition {
    body["document"] =
        json!({"dsl": "1.0.0", "namespace": "test", "name": "flow", "version": "1.0.0"});
    crate::parse(body.to_string().as_bytes()).expect("a valid definition")
}

/// A driver for tests: evaluates, settles, and answers what the instance
/// needs with `answer` until it finishes or waits on something `answer`
/// leaves unanswered. Returns the instance and every need it met.
fn drive(
    definition: &Definition,
    instance: &mut Instance,
    mut answer: impl FnMut(&Need, &mut Instance) -> bool,
) -> Vec<Need> {
    let mut seen = Vec::new();
    for _ in 0..100 {
        let evaluation = evaluate(
            &definition.document,
            instance,
            &Env {
                now_ms: NOW,
                secrets: &json!({}),
            },
        );
        settle(instance, &evaluation, NOW);
        if instance.status.is_final() {
            return seen;
        }
        let mut progressed = false;
        for need in &evaluation.needs {
            if instance
                .outcomes
                .get(need.key())
                .is_some_and(|r| r.seq.is_some())
            {
                continue;
            }
            seen.push(need.clone());
            progressed |= answer(need, instance);
        }
        if !progressed {
            return seen;
        }
    }
    panic!("the instance never settled: {instance:?}");
}

fn start(definition: &Definition, input: Value) -> Instance {
    Instance::new("i-1".into(), definition, input, NOW)
}

/// Fires timers and records emits; leaves calls and listens alone.
fn timers_and_emits(need: &Need, instance: &mut Instance) -> bool {
    match need {
        Need::Timer { key, task, .. } => {
            instance.arm_timer(key, task, NOW, NOW);
            instance.fire_timer(key, NOW)
        }
        Need::Emit { key, .. } => instance.record_emitted(key, NOW),
        _ => false,
    }
}

#[test]
fn set_switch_and_flow_directives() {
    let definition = definition(json!([
        {"total": {"set": {"total": "${ .items | map(.price * .qty) | add }"}}},
        {"route": {"switch": [
            {"big": {"when": ".total > 100", "then": "discount"}},
            {"small": {"then": "done"}}
        ]}},
        {"discount": {"set": {"total": "${ .total * 0.9 }", "discounted": true}}},
        {"done": {"set": "${ . + {checked: true} }", "then": "end"}},
        {"never": {"raise": {"error": {"type": "https://x/never", "status": 500}}}}
    ]));
    let mut big = start(&definition, json!({"items": [{"price": 60, "qty": 2}]}));
    drive(&definition, &mut big, timers_and_emits);
    assert_eq!(big.status, Status::Completed);
    assert_eq!(
        big.output,
        Some(json!({"total": 108.0, "discounted": true, "checked": true}))
    );
    let mut small = start(&definition, json!({"items": [{"price": 1, "qty": 2}]}));
    drive(&definition, &mut small, timers_and_emits);
    assert_eq!(small.output, Some(json!({"total": 2, "checked": true})));
}

#[test]
fn an_uncaught_raise_faults_the_instance_with_the_error_and_its_task() {
    let definition = definition_with(json!({
        "use": {"errors": {"outOfStock": {"type": "https://shoal.dev/errors/out-of-stock", "status": 409}}},
        "do": [
            {"check": {"if": ".qty > 5", "raise": {"error": "outOfStock"}}},
            {"ok": {"set": {"ok": true}}}
        ]
    }));
    let mut instance = start(&definition, json!({"qty": 9}));
    drive(&definition, &mut instance, timers_and_emits);
    assert_eq!(instance.status, Status::Faulted);
    let error = instance.error.clone().expect("an error");
    assert_eq!(error.kind, "https://shoal.dev/errors/out-of-stock");
    assert_eq!(error.status, 409);
    assert_eq!(error.instance.as_deref(), Some("/do/0/check"));
    let mut skipped = start(&definition, json!({"qty": 1}));
    drive(&definition, &mut skipped, timers_and_emits);
    assert_eq!(skipped.output, Some(json!({"ok": true})));
}

#[test]
fn a_failing_call_is_retried_by_its_policy_then_caught() {
    let definition = definition(json!([
        {"charge": {
            "try": [{"pay": {"call": "http", "with": {"method": "post", "endpoint": "http://pay.example/charge", "body": "${ . }"}}}],
            "catch": {
                "errors": {"with": {"type": errors::COMMUNICATION}},
                "as": "failure",
                "retry": {"delay": {"seconds": 1}, "backoff": {"exponential": {}}, "limit": {"attempt": {"count": 2}}},
                "do": [{"refund": {"set": {"refunded": true, "status": "${ $failure.status }"}}}]
            }
        }}
    ]));
    let mut instance = start(&definition, json!({"amount": 5}));
    let mut calls = Vec::new();
    let mut delays = Vec::new();
    drive(&definition, &mut instance, |need, instance| match need {
        Need::Call { key, request, .. } => {
            calls.push(key.clone());
            assert_eq!(request.method, "POST");
            assert_eq!(request.body, Some(json!({"amount": 5})));
            let error = WorkflowError::new(errors::COMMUNICATION, 503, "down", "503");
            instance.record_call(key, Err(error), NOW)
        }
        Need::Timer { duration_ms, .. } => {
            delays.push(*duration_ms);
            timers_and_emits(need, instance)
        }
        _ => false,
    });
    assert_eq!(
        calls,
        [
            "/do/0/charge/try/0/pay",
            "/do/0/charge/try/0/pay#1",
            "/do/0/charge/try/0/pay#2"
        ]
    );
    assert_eq!(delays, [1000, 2000], "exponential backoff");
    assert_eq!(instance.status, Status::Completed);
    assert_eq!(
        instance.output,
        Some(json!({"refunded": true, "status": 503}))
    );

    // A call that answers on the second attempt completes the try.
    let mut second = start(&definition, json!({"amount": 5}));
    let mut attempt = 0;
    drive(&definition, &mut second, |need, instance| match need {
        Need::Call { key, .. } => {
            attempt += 1;
            let result = if attempt == 1 {
                Err(WorkflowError::new(
                    errors::COMMUNICATION,
                    503,
                    "down",
                    "503",
                ))
            } else {
                Ok(json!({"charged": 5}))
            };
            instance.record_call(key, result, NOW)
        }
        _ => timers_and_emits(need, instance),
    });
    assert_eq!(second.output, Some(json!({"charged": 5})));

    // While a retry's delay is armed, the instance still lists it as what
    // it waits for (the driver wakes it from that list).
    let mut third = start(&definition, json!({"amount": 5}));
    let seen = drive(&definition, &mut third, |need, instance| match need {
        Need::Call { key, .. } => {
            let error = WorkflowError::new(errors::COMMUNICATION, 503, "down", "503");
            instance.record_call(key, Err(error), NOW)
        }
        Need::Timer { key, task, .. } => {
            instance.arm_timer(key, task, NOW + 1000, NOW);
            false
        }
        _ => false,
    });
    assert!(matches!(seen.last(), Some(Need::Timer { .. })), "{seen:?}");
    let evaluation = evaluate(
        &definition.document,
        &third,
        &Env {
            now_ms: NOW,
            secrets: &json!({}),
        },
    );
    assert!(
        matches!(evaluation.needs.as_slice(), [Need::Timer { key, duration_ms: 1000, .. }] if key == "/do/0/charge/retry#1"),
        "{:?}",
        evaluation.needs
    );
}

#[test]
fn an_error_the_catch_does_not_take_goes_on_up() {
    let definition = definition(json!([
        {"guard": {
            "try": [{"fail": {"raise": {"error": {"type": "https://x/validation", "status": 400}}}}],
            "catch": {"errors": {"with": {"type": "https://x/other"}}, "do": [{"x": {"set": {"caught": true}}}]}
        }}
    ]));
    let mut instance = start(&definition, json!({}));
    drive(&definition, &mut instance, timers_and_emits);
    assert_eq!(instance.status, Status::Faulted);
    assert_eq!(
        instance.error.map(|e| e.kind),
        Some("https://x/validation".into())
    );
}

#[test]
fn for_iterates_with_its_variables_and_while() {
    let definition = definition(json!([
        {"sum": {
            "for": {"each": "line", "in": ".lines", "at": "n"},
            "while": ".count < 3",
            "do": [{"add": {"set": {"total": "${ .total + $line.price }", "count": "${ $n + 1 }"}}}]
        }}
    ]));
    let mut instance = start(
        &definition,
        json!({"total": 0, "count": 0, "lines": [{"price": 1}, {"price": 2}, {"price": 4}, {"price": 8}]}),
    );
    // The for's input is the task's input; each iteration gets the last one's output.
    drive(&definition, &mut instance, timers_and_emits);
    assert_eq!(instance.status, Status::Completed, "{instance:?}");
    assert_eq!(instance.output, Some(json!({"total": 7, "count": 3})));
}

#[test]
fn fork_waits_for_every_branch_or_takes_the_first_to_finish_when_competing() {
    let branches = json!([
        {"a": {"call": "http", "with": {"method": "get", "endpoint": "http://a.example/"}}},
        {"b": {"call": "http", "with": {"method": "get", "endpoint": "http://b.example/"}}}
    ]);
    let all = definition(json!([{"both": {"fork": {"branches": branches}}}]));
    let mut instance = start(&all, json!({}));
    let needs = drive(&all, &mut instance, |_, _| false);
    assert_eq!(needs.len(), 2, "both branches call at once: {needs:?}");
    assert_eq!(instance.status, Status::Running);
    instance.record_call("/do/0/both/fork/branches/1/b", Ok(json!("B")), NOW);
    drive(&all, &mut instance, |_, _| false);
    assert_eq!(instance.status, Status::Running, "a still calls");
    instance.record_call("/do/0/both/fork/branches/0/a", Ok(json!("A")), NOW);
    drive(&all, &mut instance, |_, _| false);
    assert_eq!(instance.output, Some(json!(["A", "B"])));

    let compete = definition(json!([{"race": {"fork": {"compete": true, "branches": branches}}}]));
    let mut instance = start(&compete, json!({}));
    drive(&compete, &mut instance, |_, _| false);
    instance.record_call("/do/0/race/fork/branches/1/b", Ok(json!("B")), NOW);
    drive(&compete, &mut instance, |_, _| false);
    assert_eq!(instance.status, Status::Completed);
    assert_eq!(instance.output, Some(json!("B")));
    assert!(
        instance.waiting.is_empty(),
        "the losing call is no longer awaited"
    );
}

#[test]
fn a_listen_with_a_timeout_times_out_unless_its_event_came_first() {
    let definition = definition(json!([
        {"await": {
            "try": [{"paid": {
                "listen": {"to": {"one": {"with": {"type": "payment.paid"},
                    "correlate": {"order": {"from": ".data.order", "expect": "${ .order }"}}}}},
                "timeout": {"after": "PT30M"}
            }}],
            "catch": {"errors": {"with": {"type": errors::TIMEOUT}},
                      "do": [{"cancel": {"set": {"status": "cancelled"}, "then": "end"}}]}
        }},
        {"paid": {"set": {"status": "paid", "event": "${ .[0].id }"}}}
    ]));
    let event =
        |id: &str, order: &str| json!({"id": id, "type": "payment.paid", "data": {"order": order}});
    // The event first.
    let mut instance = start(&definition, json!({"order": "o-1"}));
    drive(&definition, &mut instance, |_, _| false);
    assert_eq!(instance.status, Status::Waiting);
    assert_eq!(
        instance.waiting.len(),
        2,
        "the listen and its timeout: {:?}",
        instance.waiting
    );
    let timeout_key = "/do/0/await/try/0/paid/timeout";
    instance.arm_timer(timeout_key, "/do/0/await/try/0/paid", NOW + 1_800_000, NOW);
    assert_eq!(
        instance.apply_event(&event("e-0", "o-2"), NOW, event_matches),
        Applied::NotWaiting,
        "another order's payment"
    );
    assert_eq!(
        instance.apply_event(&event("e-1", "o-1"), NOW, event_matches),
        Applied::Applied
    );
    assert_eq!(
        instance.apply_event(&event("e-1", "o-1"), NOW, event_matches),
        Applied::Duplicate
    );
    // The timer fires later: the task had finished, so it changes nothing.
    instance.fire_timer(timeout_key, NOW);
    drive(&definition, &mut instance, |_, _| false);
    assert_eq!(
        instance.output,
        Some(json!({"status": "paid", "event": "e-1"}))
    );

    // The timeout first: the event that comes later is not awaited any more.
    let mut late = start(&definition, json!({"order": "o-1"}));
    drive(&definition, &mut late, |_, _| false);
    late.arm_timer(timeout_key, "/do/0/await/try/0/paid", NOW, NOW);
    late.fire_timer(timeout_key, NOW);
    drive(&definition, &mut late, |_, _| false);
    assert_eq!(late.status, Status::Completed);
    assert_eq!(late.output, Some(json!({"status": "cancelled"})));
    assert_eq!(
        late.apply_event(&event("e-1", "o-1"), NOW, event_matches),
        Applied::NotWaiting
    );
}

#[test]
fn listen_all_needs_every_filter_met_and_emits_go_out_before_the_end() {
    let definition = definition(json!([
        {"announce": {"emit": {"event": {"with": {"type": "order.placed", "source": "test", "data": "${ {order: .order} }"}}}}},
        {"both": {"listen": {"to": {"all": [
            {"with": {"type": "stock.reserved"}},
            {"with": {"type": "payment.paid"}}
        ]}}}},
        {"summary": {"set": "${ map(.type) }"}}
    ]));
    let mut instance = start(&definition, json!({"order": "o-7"}));
    drive(&definition, &mut instance, |_, _| false);
    assert_eq!(instance.status, Status::Running, "an emit is pending");
    match &instance.waiting[0] {
        Need::Emit { event, .. } => assert_eq!(event["data"], json!({"order": "o-7"})),
        other => panic!("expected the emit first, got {other:?}"),
    }
    instance.record_emitted("/do/0/announce", NOW);
    drive(&definition, &mut instance, |_, _| false);
    assert_eq!(instance.status, Status::Waiting);
    let paid = json!({"id": "p", "type": "payment.paid"});
    assert_eq!(
        instance.apply_event(&paid, NOW, event_matches),
        Applied::Applied
    );
    drive(&definition, &mut instance, |_, _| false);
    assert_eq!(instance.status, Status::Waiting, "one of two events");
    let reserved = json!({"id": "r", "type": "stock.reserved"});
    assert_eq!(
        instance.apply_event(&reserved, NOW, event_matches),
        Applied::Applied
    );
    drive(&definition, &mut instance, |_, _| false);
    assert_eq!(
        instance.output,
        Some(json!(["stock.reserved", "payment.paid"]))
    );
}

#[test]
fn evaluation_is_the_same_every_time_from_the_same_outcomes() {
    let definition = definition(json!([
        {"pause": {"wait": {"seconds": 5}}},
        {"call": {"call": "http", "with": {"method": "get", "endpoint": "${ \"http://x.example/\" + .id }"}}}
    ]));
    let mut instance = start(&definition, json!({"id": "42"}));
    instance.arm_timer("/do/0/pause", "/do/0/pause", NOW + 5000, NOW);
    instance.fire_timer("/do/0/pause", NOW + 5000);
    let env = Env {
        now_ms: NOW,
        secrets: &json!({}),
    };
    let first = evaluate(&definition.document, &instance, &env);
    let later = Env {
        now_ms: NOW * 2,
        secrets: &json!({}),
    };
    let second = evaluate(&definition.document, &instance, &later);
    assert_eq!(first.needs, second.needs);
    match &first.needs[..] {
        [Need::Call { request, .. }] => assert_eq!(request.endpoint, "http://x.example/42"),
        other => panic!("expected one call, got {other:?}"),
    }
}

#[test]
fn a_runaway_loop_faults_the_instance() {
    let definition = definition(json!([
        {"again": {"set": {"n": "${ .n + 1 }"}, "then": "again"}}
    ]));
    let mut instance = start(&definition, json!({"n": 0}));
    drive(&definition, &mut instance, timers_and_emits);
    assert_eq!(instance.status, Status::Faulted);
    assert_eq!(
        instance.error.map(|e| e.title),
        Some(Some("too many steps".into()))
    );
}

#[test]
fn a_workflow_timeout_faults_a_waiting_instance() {
    let definition = definition_with(json!({
        "timeout": {"after": {"minutes": 1}},
        "do": [{"sleep": {"wait": {"hours": 1}}}]
    }));
    let mut instance = start(&definition, json!({}));
    drive(&definition, &mut instance, |_, _| false);
    assert_eq!(instance.waiting.len(), 2);
    instance.arm_timer("/timeout", "/", NOW, NOW);
    instance.fire_timer("/timeout", NOW);
    drive(&definition, &mut instance, |_, _| false);
    assert_eq!(instance.status, Status::Faulted);
    assert_eq!(instance.error.map(|e| e.status), Some(408));
    assert!(instance.waiting.is_empty());
}

#[test]
fn task_lifecycle_steps_are_new_exactly_once() {
    let definition = definition(json!([
        {"pause": {"wait": "PT1S"}},
        {"each": {"for": {"in": "${ [1, 2] }", "each": "n"}, "do": [
            {"nap": {"wait": "PT1S"}}
        ]}},
        {"fail": {"try": [{"boom": {"raise": {"error": {"type": "https://example.com/x", "status": 400}}}}],
                  "catch": {"do": [{"after": {"set": {"ok": true}}}]}}}
    ]));
    let mut instance = start(&definition, json!({}));
    let env = Env {
        now_ms: NOW,
        secrets: &json!({}),
    };
    let mut published: Vec<String> = Vec::new();
    for _ in 0..10 {
        let evaluation = evaluate(&definition.document, &instance, &env);
        for (event, n) in unpublished_task_events(&instance, &evaluation) {
            published.push(format!("{} {} {n} @{}", event.task, event.what, event.seq));
        }
        settle(&mut instance, &evaluation, NOW);
        if instance.status.is_final() {
            break;
        }
        for need in evaluation.needs {
            timers_and_emits(&need, &mut instance);
        }
        // Evaluating again with no new outcome publishes nothing.
        if !instance.status.is_final() {
            let again = evaluate(&definition.document, &instance, &env);
            let mut settled = instance.clone();
            settle(&mut settled, &again, NOW);
            assert!(unpublished_task_events(&settled, &again).is_empty());
        }
    }
    assert_eq!(instance.status, Status::Completed);
    // Each step in the order met, placed after the outcome it waited on.
    let expected = [
        "/do/0/pause started 1 @0",
        "/do/0/pause completed 1 @1",
        "/do/1/each started 1 @1",
        "/do/1/each/do/0/nap[0] started 1 @1",
        "/do/1/each/do/0/nap[0] completed 1 @2",
        "/do/1/each/do/0/nap[1] started 1 @2",
        "/do/1/each/do/0/nap[1] completed 1 @3",
        "/do/1/each completed 1 @3",
        "/do/2/fail started 1 @3",
        "/do/2/fail/try/0/boom started 1 @3",
        "/do/2/fail/try/0/boom faulted 1 @3",
        "/do/2/fail/catch/do/0/after#caught started 1 @3",
        "/do/2/fail/catch/do/0/after#caught completed 1 @3",
        "/do/2/fail completed 1 @3",
    ];
    assert_eq!(published, expected);
}
