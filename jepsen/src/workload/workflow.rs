//! Workflow workload: each worker starts instances of a short saga
//! (`jepsen/saga`: a 300 ms timer, then an event correlated by instance id)
//! with its own ids, through random nodes, and sends each instance's event
//! twice (the second a redelivery: the same CloudEvent id): every other
//! instance's on a topic, the rest's to the workflow event inbox (recorded
//! as `event` operations). Starts are idempotent by id, so a start that may
//! or may not have happened is simply one more attempt.
//!
//! After healing, the final phase sends again the event of every instance
//! that has not completed yet (topics are at most once, and a partition
//! can swallow an event), except where the inbox acknowledged it: that one
//! must arrive on its own. It goes on until all have completed or the
//! patience runs out, then reads every instance.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{pace, Ctx, Process};
use crate::client::Reply;
use crate::history::{Op, Outcome};

pub const NAMESPACE: &str = "jepsen";
pub const NAME: &str = "saga";
const DEFINITION: &str = r#"
document: {dsl: '1.0.0', namespace: jepsen, name: saga, version: '1.0.0'}
do:
  - pause: {wait: {milliseconds: 300}}
  - go:
      listen:
        to:
          one:
            with: {type: jepsen.go}
            correlate: {id: {from: '${ .data.id }', expect: '${ .id }'}}
  - done:
      set: '${ {id: .[0].data.id} }'
"#;

/// One instance as the final read found it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinalInstance {
    pub id: String,
    pub status: String,
    pub output: Value,
    /// The error of a faulted instance (`title: detail`).
    #[serde(default)]
    pub error: Option<String>,
    /// How often each of these appears in its history.
    pub timer_fired: usize,
    pub event_applied: usize,
    pub completed: usize,
}

/// The final read after healing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FinalState {
    pub waited_ms: u64,
    /// Every instance of the workload, or none when the read failed.
    pub instances: Option<Vec<FinalInstance>>,
    pub error: Option<String>,
}

/// Publishes the saga (before the workload starts, retried until stored).
pub async fn setup(ctx: &Ctx) -> anyhow::Result<()> {
    let path = format!("/v1/workflows/definitions/{NAMESPACE}/{NAME}/1.0.0");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match ctx
            .api
            .http_json(0, Method::PUT, &path, &[], Some(DEFINITION.to_string()))
            .await
        {
            Ok((status, _)) if (200..300).contains(&status) => return Ok(()),
            other if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("publishing the saga failed: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The event of instance `id`, on a topic or (`durable`) to the inbox.
async fn send_go(ctx: &Ctx, node: usize, id: &str, durable: bool) -> Result<(u16, Value), String> {
    let event_id = format!("go-{id}");
    let path = if durable {
        "/v1/workflows/events/jepsen.go"
    } else {
        "/v1/topics/jepsen.go"
    };
    ctx.api
        .http_json(
            node,
            Method::POST,
            path,
            &[
                ("content-type", "application/json"),
                ("ce-type", "jepsen.go"),
                ("ce-id", &event_id),
            ],
            Some(json!({ "id": id }).to_string()),
        )
        .await
}

/// Clients starting instances at once (each starts one, sends its event
/// twice, then starts the next): two beside the other workloads, which
/// keep their share of the cluster's capacity; eight when it runs alone.
pub fn workers(alone: bool) -> usize {
    if alone {
        8
    } else {
        2
    }
}

pub async fn worker(ctx: Ctx, worker: usize, workers: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = Process::new(worker, workers, 6000);
    let mut seq = 0u64;
    while !ctx.stopped() {
        let node = rng.random_range(0..ctx.n);
        let id = format!("wf-{worker}-{seq}");
        seq += 1;
        let start = ctx.rec.clock.now_ns();
        let answer = ctx
            .api
            .http_json(
                node,
                Method::POST,
                &format!("/v1/workflows/{NAMESPACE}/{NAME}/instances"),
                &[("content-type", "application/json")],
                Some(json!({"id": id, "input": {"id": id}}).to_string()),
            )
            .await;
        let reply: Reply<()> = match answer {
            Ok((200 | 201, _)) => Reply {
                outcome: Outcome::Ok,
                value: None,
                revision: None,
                error: None,
            },
            Ok((status @ 400..=499, body)) => Reply {
                outcome: Outcome::Fail,
                value: None,
                revision: None,
                error: Some(format!("{status} {}", body["error"]["code"])),
            },
            Ok((status, body)) => Reply {
                outcome: Outcome::Info,
                value: None,
                revision: None,
                error: Some(format!("{status} {}", body["error"]["code"])),
            },
            Err(e) if e.starts_with("connect") => Reply {
                outcome: Outcome::Fail,
                value: None,
                revision: None,
                error: Some(e),
            },
            Err(e) => Reply {
                outcome: Outcome::Info,
                value: None,
                revision: None,
                error: Some(e),
            },
        };
        let op = super::op_of(
            "workflow",
            process.id,
            node,
            "start",
            &id,
            None,
            None,
            start,
            ctx.rec.clock.now_ns(),
            &reply,
        );
        process.after(op.outcome);
        ctx.rec.record(op);
        // The event, and the same event again a moment later.
        let durable = seq.is_multiple_of(2);
        for _ in 0..2 {
            pace(&mut rng).await;
            let node = rng.random_range(0..ctx.n);
            let start = ctx.rec.clock.now_ns();
            let answer = send_go(&ctx, node, &id, durable).await;
            if durable {
                let reply: Reply<()> = Reply {
                    outcome: match &answer {
                        Ok((200 | 202, _)) => Outcome::Ok,
                        Ok((400..=499, _)) => Outcome::Fail,
                        Err(e) if e.starts_with("connect") => Outcome::Fail,
                        _ => Outcome::Info,
                    },
                    value: None,
                    revision: None,
                    error: answer.err(),
                };
                let op = super::op_of(
                    "workflow",
                    process.id,
                    node,
                    "event",
                    &id,
                    None,
                    None,
                    start,
                    ctx.rec.clock.now_ns(),
                    &reply,
                );
                process.after(op.outcome);
                ctx.rec.record(op);
            }
        }
        pace(&mut rng).await;
    }
}

/// Every instance id the workload may have started (ok or indeterminate).
pub fn attempted(history: &[Op]) -> BTreeSet<String> {
    starts(history)
        .filter(|o| o.outcome != Outcome::Fail)
        .map(|o| o.key.clone())
        .collect()
}

/// Every instance id whose start was acknowledged.
pub fn acknowledged(history: &[Op]) -> BTreeSet<String> {
    starts(history)
        .filter(|o| o.outcome == Outcome::Ok)
        .map(|o| o.key.clone())
        .collect()
}

fn starts(history: &[Op]) -> impl Iterator<Item = &Op> {
    history
        .iter()
        .filter(|o| o.workload == "workflow" && o.f == "start")
}

/// The instances whose events go to the inbox, and those of them whose
/// event the inbox acknowledged.
pub fn inbox_events(history: &[Op]) -> (BTreeSet<String>, BTreeSet<String>) {
    let sent = history
        .iter()
        .filter(|o| o.workload == "workflow" && o.f == "event");
    let mut durable = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    for op in sent {
        durable.insert(op.key.clone());
        if op.outcome == Outcome::Ok {
            acknowledged.insert(op.key.clone());
        }
    }
    (durable, acknowledged)
}

async fn list_all(ctx: &Ctx, node: usize) -> Result<Vec<Value>, String> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path =
            format!("/v1/workflows/instances?namespace={NAMESPACE}&name={NAME}&limit=1000");
        if let Some(after) = &after {
            path.push_str(&format!("&after={after}"));
        }
        let (status, body) = ctx
            .api
            .http_json(node, Method::GET, &path, &[], None)
            .await?;
        if status != 200 {
            return Err(format!("{status} {body}"));
        }
        all.extend(body["instances"].as_array().cloned().unwrap_or_default());
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Ok(all),
        }
    }
}

/// After healing: sends again the events of unfinished instances (except
/// those the inbox acknowledged) until every instance has completed (or
/// `patience` runs out), then reads each one.
pub async fn final_state(ctx: &Ctx, patience: Duration) -> FinalState {
    let (durable, acknowledged) = inbox_events(&ctx.rec.ops());
    let started = tokio::time::Instant::now();
    let deadline = started + patience;
    let mut node = 0;
    let listed = loop {
        match list_all(ctx, node).await {
            Ok(listed) => {
                let unfinished: Vec<String> = listed
                    .iter()
                    .filter(|i| i["status"] != json!("completed"))
                    .filter_map(|i| i["id"].as_str().map(str::to_string))
                    .collect();
                if unfinished.is_empty() || tokio::time::Instant::now() >= deadline {
                    break Ok(listed);
                }
                for id in unfinished.iter().filter(|id| !acknowledged.contains(*id)) {
                    let _ = send_go(ctx, node, id, durable.contains(id)).await;
                }
            }
            Err(e) if tokio::time::Instant::now() >= deadline => break Err(e),
            Err(_) => node = (node + 1) % ctx.n,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let listed = match listed {
        Ok(listed) => listed,
        Err(e) => {
            return FinalState {
                waited_ms: started.elapsed().as_millis() as u64,
                instances: None,
                error: Some(e),
            }
        }
    };
    let mut instances = Vec::new();
    for summary in listed {
        let id = summary["id"].as_str().unwrap_or_default().to_string();
        let read = ctx
            .api
            .http_json(
                node,
                Method::GET,
                &format!("/v1/workflows/instances/{id}"),
                &[],
                None,
            )
            .await;
        let body = match read {
            Ok((200, body)) => body,
            other => {
                return FinalState {
                    waited_ms: started.elapsed().as_millis() as u64,
                    instances: None,
                    error: Some(format!("reading instance {id}: {other:?}")),
                }
            }
        };
        let count = |what: &str| {
            body["history"]
                .as_array()
                .map_or(0, |h| h.iter().filter(|e| e["what"] == json!(what)).count())
        };
        instances.push(FinalInstance {
            id,
            status: body["status"].as_str().unwrap_or_default().to_string(),
            output: body["output"].clone(),
            error: body["error"].as_object().map(|error| {
                format!(
                    "{}: {}",
                    error
                        .get("title")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    error
                        .get("detail")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                )
            }),
            timer_fired: count("timer.fired"),
            event_applied: count("event.applied"),
            completed: count("completed"),
        });
    }
    FinalState {
        waited_ms: started.elapsed().as_millis() as u64,
        instances: Some(instances),
        error: None,
    }
}
