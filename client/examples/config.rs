//! Typed configuration: the keys under a prefix as a struct, kept current.
//!
//! `cargo build --workspace --examples && $CARGO_TARGET_DIR/debug/examples/config`

use std::time::Duration;

use serde::Deserialize;
use shoal_client::Client;

/// `demo/payments/url`, `demo/payments/timeout_ms`, `demo/payments/db/pool`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // The fields are read through Debug.
struct Payments {
    url: String,
    timeout_ms: u64,
    #[serde(default)]
    retries: u32,
    db: Db,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Db {
    pool: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SHOAL_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::new([url])?;
    client
        .put("demo/payments/url", "https://pay.internal:8443")
        .await?;
    client.put("demo/payments/timeout_ms", "2500").await?;
    client.put("demo/payments/db/pool", "8").await?;

    let mut config = client.config::<Payments>("demo/payments/").await?;
    println!("at revision {}: {:?}", config.revision(), *config.get());

    // Another service (or `shoal kv put`) changes a value...
    let writer = client.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = writer.put("demo/payments/timeout_ms", "3000").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = writer.put("demo/payments/retries", "3").await;
    });
    // ...and every holder of the config sees the new struct.
    for _ in 0..2 {
        let value = tokio::time::timeout(Duration::from_secs(10), config.changed()).await??;
        println!("changed: {:?}", *value);
    }
    client.delete_prefix("demo/payments/").await?;
    Ok(())
}
