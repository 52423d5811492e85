//! Watch a prefix: changes arrive in revision order, each once, even across
//! reconnects (try restarting the node while it runs).
//!
//! `cargo build --workspace --examples && $CARGO_TARGET_DIR/debug/examples/watch`
//! (SHOAL_URL may list several endpoints, comma-separated.)

use std::time::Duration;

use futures::StreamExt;
use shoal_client::{Client, EventType, WatchOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let urls = std::env::var("SHOAL_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::new(urls.split(','))?;

    let mut stream = client.watch(WatchOptions::prefix("demo/watch/")).await?;
    println!(
        "watching demo/watch/ from revision {}",
        stream.start_revision()
    );

    let writer = client.clone();
    tokio::spawn(async move {
        for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = writer.put(&format!("demo/watch/{key}"), value).await;
        }
        let _ = writer.delete_prefix("demo/watch/").await;
    });

    let mut batches = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        for event in &batch.events {
            match event.kind {
                EventType::Put => println!(
                    "revision {}: PUT {} = {}",
                    batch.revision,
                    event.kv.key,
                    event.kv.value_str().unwrap_or("<binary>")
                ),
                EventType::Delete => {
                    println!("revision {}: DELETE {}", batch.revision, event.kv.key)
                }
            }
        }
        batches += 1;
        if batches == 4 {
            break;
        }
    }
    Ok(())
}
