//! Send log records to a stream, then search for them.
//!
//! `cargo build --workspace --examples && $CARGO_TARGET_DIR/debug/examples/logs`

use std::time::Duration;

use shoal_client::{Client, LogRecord, SearchQuery};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SHOAL_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::new([url])?;

    let answer = client
        .ingest(
            "orders-service",
            &[
                LogRecord::new("payment failed for order 42")
                    .level("error")
                    .service("orders")
                    .attr("user", "alice"),
                LogRecord::new("order 43 placed")
                    .level("info")
                    .service("orders"),
            ],
        )
        .await?;
    println!(
        "ingested into {}: accepted {}, rejected {}",
        answer.stream, answer.accepted, answer.rejected
    );

    // Records become searchable within about a second.
    let query = SearchQuery::new("payment AND attributes.user:alice")
        .stream("orders-service")
        .since("1h");
    for _ in 0..50 {
        let found = client.search_logs(&query).await?;
        if !found.hits.is_empty() {
            for hit in &found.hits {
                println!(
                    "{} {} {} {} {}",
                    hit.ts, hit.level, hit.service, hit.message, hit.attributes
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err("the record did not become searchable in 10 s".into())
}
