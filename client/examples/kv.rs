//! Key/value basics: put, get, compare-and-set, a transaction, list, history.
//!
//! Run against a node (default http://127.0.0.1:7700, or SHOAL_URL):
//! `cargo build --workspace --examples && $CARGO_TARGET_DIR/debug/examples/kv`

use shoal_client::{
    Client, Compare, CompareOp, HistoryOptions, ListOptions, PutOptions, Txn, TxnOp,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SHOAL_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::new([url])?;

    let put = client
        .put("example/payments/url", "https://pay.internal:8443")
        .await?;
    println!("put example/payments/url at revision {}", put.revision);
    let put = client.put("example/payments/timeout_ms", "2500").await?;
    println!(
        "put example/payments/timeout_ms at revision {}",
        put.revision
    );

    if let Some(kv) = client.get("example/payments/url").await? {
        println!(
            "get example/payments/url = {} (version {}, mod_revision {})",
            kv.value_str().unwrap_or("<binary>"),
            kv.version,
            kv.mod_revision
        );
    }

    // Compare-and-set on the key's mod revision.
    let stale = PutOptions {
        if_revision: Some(put.revision - 1),
        ..PutOptions::default()
    };
    match client
        .put_with("example/payments/timeout_ms", "3000", &stale)
        .await
    {
        Err(e) if e.is_compare_failed() => println!("CAS with a stale revision: {e}"),
        other => println!("CAS with a stale revision unexpectedly gave {other:?}"),
    }
    let current = PutOptions {
        if_revision: Some(put.revision),
        ..PutOptions::default()
    };
    let cas = client
        .put_with("example/payments/timeout_ms", "3000", &current)
        .await?;
    println!(
        "CAS with the current revision: OK revision {}",
        cas.revision
    );

    // Create a key only if it does not exist, in one atomic step with another write.
    let txn = Txn::new()
        .when([Compare::mod_revision("example/lock", CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put("example/lock", "worker-1"),
            TxnOp::put("example/lock-holder", "worker-1"),
        ])
        .or_else([TxnOp::get("example/lock")]);
    let answer = client.txn(&txn).await?;
    println!(
        "txn: succeeded={} revision={} results={}",
        answer.succeeded,
        answer.revision,
        answer.results.len()
    );

    let page = client.list("example/", &ListOptions::default()).await?;
    println!("list example/ at revision {}:", page.revision);
    for kv in &page.kvs {
        println!("  {} = {}", kv.key, kv.value_str().unwrap_or("<binary>"));
    }

    let history = client
        .history("example/payments/timeout_ms", &HistoryOptions::default())
        .await?;
    for event in &history.events {
        println!(
            "history: revision {} {:?} version {}",
            event.kv.mod_revision, event.kind, event.kv.version
        );
    }

    let deleted = client.delete_prefix("example/").await?;
    println!(
        "deleted {} keys at revision {}",
        deleted.deleted, deleted.revision
    );
    Ok(())
}
