//! Helpers shared by the durable messaging tests (`tests/delivery_*.rs`).

use std::time::Duration;

use crate::ws::{Delivery, Subscriber};
use crate::*;

/// Time limit of most waits.
pub const T: Duration = Duration::from_secs(15);

/// `PUT /v1/{kind}/{name}` with a JSON body; the reply as is.
pub async fn put_definition(node: &Node, kind: &str, name: &str, body: &Value) -> Reply {
    node.send(
        node.request(Method::PUT, &format!("/v1/{kind}/{name}"))
            .json(body),
    )
    .await
}

/// `PUT /v1/webhooks/{name}`, asserting 200; the stored definition.
pub async fn put_webhook(node: &Node, name: &str, body: Value) -> Value {
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
pub async fn put_route(node: &Node, name: &str, body: Value) -> Value {
    let reply = put_definition(node, "routes", name, &body).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "PUT route {name}: {}",
        reply.describe()
    );
    reply.body
}

/// `POST /v1/topics/{topic}` with a JSON payload, asserting 202; the answer.
pub async fn publish(node: &Node, topic: &str, payload: &Value) -> Value {
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
pub async fn publish_until(
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
pub async fn outbox_counts(node: &Node, destination: &str) -> Option<(u64, u64)> {
    let body = node.get_path("/v1/outbox").await.ok();
    body["destinations"]
        .as_array()
        .unwrap_or_else(|| panic!("/v1/outbox without destinations: {body}"))
        .iter()
        .find(|d| d["destination"] == destination)
        .map(|d| (num(d, "/pending"), num(d, "/dead")))
}

/// Waits until the node knows the webhook (its `/v1/outbox` lists every
/// configured webhook): its messaging configuration has caught up.
pub async fn wait_webhook_known(node: &Node, name: &str) {
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

/// Waits until the node's outbox shows `(pending, dead)` for the destination.
/// A destination that is not listed counts as empty: `/v1/outbox` lists
/// every configured webhook, but other destinations (`kafka:...`) only
/// while they hold entries.
pub async fn wait_outbox(node: &Node, destination: &str, want: (u64, u64)) {
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

/// An open `GET /v1/subscribe` SSE stream, after its `subscribed` event.
pub async fn subscribe(node: &Node, pattern: &str) -> Subscriber {
    node.subscribe_sse(&[("pattern", pattern)]).await
}

/// The next message envelope of a subscription, `None` if none arrives
/// within `timeout`. Panics on `dropped` or `error` events.
pub async fn next_message(stream: &mut Subscriber, timeout: Duration) -> Option<Value> {
    stream.next(timeout).await.map(Delivery::envelope)
}

pub fn header<'a>(envelope: &'a Value, name: &str) -> Option<&'a str> {
    envelope["headers"][name].as_str()
}
