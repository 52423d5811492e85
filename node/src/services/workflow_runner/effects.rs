//! What instances do to the world: HTTP calls, emitted events, lifecycle
//! events, and the secrets they read.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Map, Value};
use shoal_actors::message::{rfc3339_now, Message};
use shoal_actors::subject::validate_topic;
use shoal_workflows::run::{errors, HttpRequest, Instance, TaskEvent, WorkflowError};
use shoal_workflows::Definition;

use super::actor::DefinitionShared;
use crate::services::shoal::Shoal;

/// Longest an outgoing call may take (a task `timeout` can be shorter).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of a call's answer kept as its output.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Where a definition's secrets are read: `secrets/<name>` in the KV store.
pub const SECRETS_PREFIX: &str = "secrets/";

fn communication(status: u16, detail: String) -> WorkflowError {
    WorkflowError::new(errors::COMMUNICATION, status, "HTTP call failed", detail)
}

/// Makes one HTTP call with its idempotency key, bounded per definition
/// and per node. An answer outside 2xx is a communication error carrying
/// its status; a transport failure one with status 503, a destination
/// the outbound policy refuses one with status 403. None echoes the
/// answer's body.
pub async fn call(
    shared: &DefinitionShared,
    request: &HttpRequest,
    idempotency_key: &str,
) -> Result<Value, WorkflowError> {
    let _definition_slot = shared.calls.clone().acquire_owned().await;
    let _node_slot = shared.node_calls.clone().acquire_owned().await;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| communication(400, format!("'{}' is not an HTTP method", request.method)))?;
    let mut builder = shared
        .shoal
        .outbound
        .request(method, &request.endpoint)
        .map_err(|refused| {
            communication(
                403,
                format!("{} {}: {refused}", request.method, request.endpoint),
            )
        })?
        .timeout(CALL_TIMEOUT)
        .header("Idempotency-Key", idempotency_key);
    let query: Vec<(String, String)> = request
        .query
        .iter()
        .map(|(k, v)| (k.clone(), text_of(v)))
        .collect();
    if !query.is_empty() {
        builder = builder.query(&query);
    }
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), text_of(value));
    }
    if let Some(body) = &request.body {
        builder = builder.json(body);
    }
    let response = builder.send().await.map_err(|e| {
        let status = match shoal_outbound::refusal(&e) {
            Some(_) => 403,
            None => 503,
        };
        communication(
            status,
            format!(
                "{} {}: {}",
                request.method,
                request.endpoint,
                shoal_outbound::failure(&e)
            ),
        )
    })?;
    let status = response.status();
    let headers: Map<String, Value> = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), json!(v.to_str().ok()?))))
        .collect();
    let is_json = headers
        .get("content-type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.contains("json"));
    let mut body = Vec::new();
    let mut response = response;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| communication(503, format!("reading the answer of {}", request.endpoint)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(communication(
                502,
                format!(
                    "the answer of {} is larger than {MAX_ANSWER_BYTES} bytes",
                    request.endpoint
                ),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(communication(
            status.as_u16(),
            format!(
                "{} {} answered {}",
                request.method,
                request.endpoint,
                status.as_u16()
            ),
        ));
    }
    let content = if is_json {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    } else {
        Value::String(String::from_utf8_lossy(&body).into_owned())
    };
    Ok(match request.output.as_str() {
        "response" => {
            json!({"statusCode": status.as_u16(), "headers": headers, "content": content})
        }
        "raw" => json!(base64::engine::general_purpose::STANDARD.encode(&body)),
        _ => content,
    })
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The message an `emit` publishes. Its id is the instance's id and the
/// emit's key, the same every time it is published, so a receiver can
/// drop a repeat. It goes to the topic its `topic` attribute names, else
/// the topic named like its type, else `workflows.<namespace>.<name>.events`.
pub fn emitted_message(instance: &Instance, key: &str, event: &Map<String, Value>) -> Message {
    let attribute = |name: &str| event.get(name).and_then(Value::as_str).map(str::to_string);
    let kind = attribute("type").unwrap_or_else(|| "shoal.workflow.event".into());
    let topic = attribute("topic")
        .or_else(|| Some(kind.clone()))
        .filter(|topic| validate_topic(topic).is_ok())
        .unwrap_or_else(|| format!("workflows.{}.{}.events", instance.namespace, instance.name));
    let headers = event
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "id" | "type"
                    | "source"
                    | "time"
                    | "subject"
                    | "data"
                    | "topic"
                    | "datacontenttype"
            )
        })
        .map(|(name, value)| (name.clone(), text_of(value)))
        .collect();
    Message {
        id: format!("{}{key}", instance.id),
        topic,
        source: attribute("source").unwrap_or_else(|| source_of(instance)),
        kind,
        time: rfc3339_now(),
        subject: attribute("subject"),
        content_type: "application/json".into(),
        traceparent: None,
        headers,
        data: event
            .get("data")
            .map(|data| data.to_string().into_bytes())
            .unwrap_or_else(|| b"null".to_vec()),
    }
}

fn source_of(instance: &Instance) -> String {
    format!("shoal://workflows/{}/{}", instance.namespace, instance.name)
}

/// The workflow lifecycle events of an instance's status changes (as its
/// history notes them) from history entry `from` on: `completed`,
/// `faulted`, `cancelled`, `suspended`, `resumed`, `retried`, on
/// `workflows.<namespace>.<name>.<event>`, typed as the DSL names them.
/// Each id names the instance, the event and its history entry, the same
/// however often it is sent. (`started` goes with the first task events:
/// see [`started_message`].)
pub fn lifecycle_messages(instance: &Instance, from: u64) -> Vec<Message> {
    instance
        .history_from(from)
        .filter(|(_, entry)| LIFECYCLE_EVENTS.contains(&entry.what.as_str()))
        .map(|(number, entry)| lifecycle_message(instance, &entry.what, number))
        .collect()
}

/// The workflow's `started` event.
pub fn started_message(instance: &Instance) -> Message {
    lifecycle_message(instance, "started", 0)
}

const LIFECYCLE_EVENTS: [&str; 6] = [
    "completed",
    "faulted",
    "cancelled",
    "suspended",
    "resumed",
    "retried",
];

fn lifecycle_message(instance: &Instance, what: &str, number: u64) -> Message {
    let mut data = json!({
        "instance": instance.id,
        "workflow": instance.definition_key(),
        "status": instance.status,
    });
    match (what, &instance.output, &instance.error) {
        ("completed", Some(output), _) => data["output"] = output.clone(),
        ("faulted", _, Some(error)) => data["error"] = json!(error),
        _ => {}
    }
    let id = format!("{}/{what}/{number}", instance.id);
    dsl_event(instance, id, &format!("workflow.{what}"), what, data)
}

/// A task lifecycle event (`started`, `completed`, `faulted`) on
/// `workflows.<namespace>.<name>.task.<event>`. Its id names the instance,
/// the task run and the occurrence, the same however often it is sent.
pub fn task_message(instance: &Instance, event: &TaskEvent, occurrence: usize) -> Message {
    let what = event.what.as_str();
    let data = json!({
        "instance": instance.id,
        "workflow": instance.definition_key(),
        "task": event.task,
    });
    let id = format!("{}{}/{what}/{occurrence}", instance.id, event.task);
    dsl_event(
        instance,
        id,
        &format!("task.{what}"),
        &format!("task.{what}"),
        data,
    )
}

/// An event of the DSL's lifecycle: type `io.serverlessworkflow.{kind}.v1`
/// on `workflows.<namespace>.<name>.{topic_tail}`.
fn dsl_event(
    instance: &Instance,
    id: String,
    kind: &str,
    topic_tail: &str,
    data: Value,
) -> Message {
    Message {
        id,
        topic: format!(
            "workflows.{}.{}.{topic_tail}",
            instance.namespace, instance.name
        ),
        source: source_of(instance),
        kind: format!("io.serverlessworkflow.{kind}.v1"),
        time: rfc3339_now(),
        subject: Some(instance.id.clone()),
        content_type: "application/json".into(),
        traceparent: None,
        headers: Vec::new(),
        data: data.to_string().into_bytes(),
    }
}

/// `$secret`: each secret the definition names (`use.secrets`) read from
/// the KV key `secrets/<name>`, as JSON when it is JSON, else as text;
/// a missing key is `null`.
pub async fn secrets(shoal: &Arc<Shoal>, definition: &Definition) -> Value {
    let names: Vec<String> = definition
        .document
        .pointer("/use/secrets")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return json!({});
    }
    let read = shoal
        .read(move |store| {
            let mut found = Map::new();
            for name in names {
                let (_, kv) = store.kv_get(&format!("{SECRETS_PREFIX}{name}"))?;
                let value = kv.map_or(Value::Null, |kv| {
                    serde_json::from_slice(&kv.value)
                        .unwrap_or_else(|_| json!(String::from_utf8_lossy(&kv.value)))
                });
                found.insert(name, value);
            }
            Ok(Value::Object(found))
        })
        .await;
    read.unwrap_or_else(|_| json!({}))
}
