//! Publish and subscribe.
//!
//! `cargo build --workspace --examples && $CARGO_TARGET_DIR/debug/examples/pubsub`

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use shoal_client::{Client, OutgoingMessage, PublishOptions, SubscribeOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SHOAL_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::new([url])?;

    // Returns once the node has registered it: nothing published after is missed.
    let mut subscription = client
        .subscribe("orders.*", &SubscribeOptions::default())
        .await?;

    let options = PublishOptions {
        content_type: Some("text/plain".into()),
        headers: vec![("region".into(), "eu".into())],
        ..PublishOptions::default()
    };
    let receipt = client
        .publish_with("orders.created", "order 42 created", &options)
        .await?;
    println!(
        "published {} to {} (local subscribers {})",
        receipt.id, receipt.topic, receipt.local
    );
    let batch = client
        .publish_batch(&[
            OutgoingMessage::json("orders.paid", &json!({"order": 42, "amount": 99.5}))?,
            OutgoingMessage::text("orders.shipped", "order 42 shipped"),
        ])
        .await?;
    println!("published a batch of {}", batch.ids.len());

    for _ in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await?
            .ok_or("the subscription ended")??;
        println!(
            "received {} [{}] {} headers={:?}",
            message.topic,
            message.content_type,
            message.text().unwrap_or("<binary>"),
            message.headers
        );
    }
    Ok(())
}
