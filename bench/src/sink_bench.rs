//! sink-bench: SQL sinks into PostgreSQL and the embedded SQLite on one
//! node on this machine.
//!
//! - throughput: `--rows` messages published as fast as `--clients`
//!   clients can (batches of `--batch` through `POST /v1/publish`), routed
//!   to a sink; rows per second from the first publish to the last row in
//!   the table (publishing included);
//! - drain (PostgreSQL): the database is crashed, `--rows` messages wait in
//!   the outbox, the database comes back; rows per second from the first
//!   row written to the last (the sink alone);
//! - lag: messages published at `--rate` per second for `--lag-secs`; each
//!   row records its write time (a column default), each message its send
//!   time: the difference's percentiles;
//! - the peer: the same rows upserted straight into PostgreSQL by this
//!   process over one connection, in the statement Shoal sends (256-row
//!   `INSERT ... ON CONFLICT DO UPDATE`), side by side in the same run.
//!
//! See bench/README.md.

#[allow(dead_code)]
#[path = "node.rs"]
mod node;
#[path = "runner.rs"]
mod runner;
#[allow(dead_code)]
#[path = "stats.rs"]
mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use shoal_testkit::Postgres;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{PgPool, SqlitePool};

use crate::node::Node;
use crate::stats::summarize;

#[derive(Parser, Debug)]
#[command(
    about = "SQL sinks into PostgreSQL and SQLite: rows/s, drain rate after an outage, lag at a steady rate; PostgreSQL written directly beside"
)]
struct Args {
    /// shoal binary [default: $SHOAL_BIN, else $CARGO_TARGET_DIR/release/shoal, else .../debug/shoal]
    #[arg(long)]
    shoal_bin: Option<std::path::PathBuf>,
    /// Messages per throughput and drain run.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Messages per publish request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent publishers in the throughput runs.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Messages per second in the lag runs.
    #[arg(long, default_value_t = 5_000)]
    rate: usize,
    /// Length of each lag run.
    #[arg(long, default_value_t = 20)]
    lag_secs: u64,
}

/// One database under test: how to count its rows.
enum Target {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Postgres(_) => "postgres",
            Target::Sqlite(_) => "sqlite",
        }
    }

    async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        match self {
            Target::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
            Target::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        }
        .with_context(|| format!("{}: {sql}", self.name()))
    }

    async fn count(&self, table: &str) -> anyhow::Result<usize> {
        let sql = format!("SELECT count(*) FROM {table}");
        let (count,): (i64,) = match self {
            Target::Postgres(pool) => sqlx::query_as(&sql).fetch_one(pool).await?,
            Target::Sqlite(pool) => sqlx::query_as(&sql).fetch_one(pool).await?,
        };
        Ok(count as usize)
    }

    /// Write time minus send time of every row, in microseconds.
    async fn lags_us(&self, table: &str) -> anyhow::Result<Vec<u64>> {
        let sql = format!("SELECT written_ms - sent_ms FROM {table}");
        let lags: Vec<(f64,)> = match self {
            Target::Postgres(pool) => sqlx::query_as(&sql).fetch_all(pool).await?,
            Target::Sqlite(pool) => sqlx::query_as(&sql).fetch_all(pool).await?,
        };
        Ok(lags
            .into_iter()
            .map(|(ms,)| (ms.max(0.0) * 1000.0) as u64)
            .collect())
    }
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The columns every table has; `written_ms` is the row's write time.
fn create_table(target: &Target, table: &str) -> String {
    let written = match target {
        Target::Postgres(_) => {
            "double precision DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)"
        }
        Target::Sqlite(_) => "REAL DEFAULT ((julianday('now') - 2440587.5) * 86400000.0)",
    };
    format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2), \
         status text, version bigint, sent_ms double precision, written_ms {written})"
    )
}

fn sink(database: &str, table: &str) -> Value {
    json!({
        "database": database, "table": table, "key": ["id"],
        "columns": {"id": "/data/id", "customer": "/data/customer", "total": "/data/total",
                    "status": "/data/status", "version": "/data/version", "sent_ms": "/data/sent_ms"},
        "version_column": "version"
    })
}

fn order(id: usize) -> Value {
    json!({"id": id, "customer": format!("customer-{}", id % 997), "total": format!("{}.{:02}", id % 500, id % 100),
           "status": "placed", "version": 1, "sent_ms": now_ms()})
}

struct Bench {
    http: reqwest::Client,
    api: String,
}

impl Bench {
    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        let reply = self
            .http
            .put(format!("{}{path}", self.api))
            .json(body)
            .send()
            .await?;
        let status = reply.status();
        if !status.is_success() {
            bail!("PUT {path}: {status} {}", reply.text().await?);
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, ids: std::ops::Range<usize>) -> anyhow::Result<()> {
        let messages: Vec<Value> = ids
            .map(|id| json!({"topic": topic, "data": order(id)}))
            .collect();
        let reply = self
            .http
            .post(format!("{}/v1/publish", self.api))
            .json(&json!({ "messages": messages }))
            .send()
            .await?;
        let status = reply.status();
        if status.as_u16() != 202 {
            bail!("publish: {status} {}", reply.text().await?);
        }
        Ok(())
    }

    /// `rows` messages by `clients` publishers in batches; how long it took.
    async fn publish_all(
        self: &Arc<Self>,
        topic: &str,
        rows: usize,
        batch: usize,
        clients: usize,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (bench, next, topic) = (self.clone(), next.clone(), topic.to_string());
            tasks.push(tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                    if start >= rows {
                        return Ok::<(), anyhow::Error>(());
                    }
                    bench
                        .publish(&topic, start..(start + batch).min(rows))
                        .await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(started.elapsed())
    }
}

/// Polls the row count until `want`: the times of the first row and the
/// last, from `since`.
async fn wait_rows(
    target: &Target,
    table: &str,
    want: usize,
    since: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    let mut first = None;
    loop {
        let count = target.count(table).await?;
        if count > 0 && first.is_none() {
            first = Some(since.elapsed());
        }
        if count >= want {
            return Ok((first.unwrap_or_default(), since.elapsed()));
        }
        if since.elapsed() > Duration::from_secs(600) {
            bail!(
                "{}: only {count} of {want} rows in {table} after 10 minutes",
                target.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The peer: the rows written straight into PostgreSQL, 256 per statement.
async fn direct_upserts(pool: &PgPool, rows: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for chunk_start in (0..rows).step_by(256) {
        let ids: Vec<usize> = (chunk_start..(chunk_start + 256).min(rows)).collect();
        let mut sql = String::from(
            "INSERT INTO direct_orders AS target (id, customer, total, status, version, sent_ms) VALUES ",
        );
        for (i, _) in ids.iter().enumerate() {
            let n = i * 6;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(CAST(${}::text AS bigint), CAST(${}::text AS text), CAST(${}::text AS numeric(12,2)), \
                 CAST(${}::text AS text), CAST(${}::text AS bigint), CAST(${}::text AS double precision))",
                n + 1, n + 2, n + 3, n + 4, n + 5, n + 6
            ));
        }
        sql.push_str(
            " ON CONFLICT (id) DO UPDATE SET customer = excluded.customer, total = excluded.total, \
             status = excluded.status, version = excluded.version, sent_ms = excluded.sent_ms \
             WHERE target.version IS NULL OR target.version <= excluded.version",
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            let row = order(id);
            for field in ["id", "customer", "total", "status", "version", "sent_ms"] {
                query = query.bind(match &row[field] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
        }
        query.execute(pool).await?;
    }
    Ok(started.elapsed())
}

fn per_second(rows: usize, took: Duration) -> String {
    format!("{:.0}", rows as f64 / took.as_secs_f64().max(1e-9))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (binary, _) = node::resolve_binary(args.shoal_bin.clone())?;
    let mut postgres = Postgres::start().await?;
    let pg = PgPoolOptions::new()
        .max_connections(4)
        .connect(&postgres.client_url())
        .await?;
    let mut node = Node::spawn_with(
        &binary,
        &["--outbound-allow".to_string(), "127.0.0.0/8".to_string()],
        None,
    )?;
    node.wait_ready(Duration::from_secs(30)).await?;
    let sqlite = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(node.data_dir().join("sql").join("local.sqlite"))
            .create_if_missing(true),
    )
    .await?;
    let targets = [Target::Postgres(pg.clone()), Target::Sqlite(sqlite)];
    let bench = Arc::new(Bench {
        http: reqwest::Client::new(),
        api: node.api.clone(),
    });
    // The KV API takes the raw body as the value.
    let reply = bench
        .http
        .put(format!("{}/v1/kv/secrets/bench-pg", bench.api))
        .body(shoal_testkit::PG_PASSWORD)
        .send()
        .await?;
    if !reply.status().is_success() {
        bail!("storing the password: {}", reply.status());
    }
    bench
        .put(
            "/v1/databases/bench",
            &json!({"url": postgres.url(), "password_key": "secrets/bench-pg"}),
        )
        .await?;
    for target in &targets {
        let database = match target {
            Target::Postgres(_) => "bench",
            Target::Sqlite(_) => "local",
        };
        for run in ["tp", "drain", "lag"] {
            let table = format!("{run}_orders");
            target.execute(&create_table(target, &table)).await?;
            let name = format!("{}-{run}", target.name());
            bench
                .put(&format!("/v1/sinks/{name}"), &sink(database, &table))
                .await?;
            bench
                .put(
                    &format!("/v1/routes/{name}"),
                    &json!({"source": format!("bench.{}.{run}", target.name()), "destinations": [format!("sql:{name}")]}),
                )
                .await?;
        }
    }
    targets[0]
        .execute(&create_table(&targets[0], "direct_orders"))
        .await?;
    // Routes apply through Raft and the node's watch: give them a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!(
        "sink-bench: {} rows per run, {} clients x {} per publish, lag at {}/s for {} s",
        args.rows, args.clients, args.batch, args.rate, args.lag_secs
    );
    println!();
    println!("| run | target | rows/s | detail |");
    println!("| --- | --- | ---: | --- |");
    let direct = direct_upserts(&pg, args.rows).await?;
    println!(
        "| direct upserts (the peer) | postgres | {} | this process, one connection, 256 rows per statement |",
        per_second(args.rows, direct)
    );
    for target in &targets {
        let topic = format!("bench.{}.tp", target.name());
        let started = Instant::now();
        let published = bench
            .publish_all(&topic, args.rows, args.batch, args.clients)
            .await?;
        let (_, last) = wait_rows(target, "tp_orders", args.rows, started).await?;
        println!(
            "| throughput (publish to last row) | {} | {} | published in {:.2} s ({}/s), last row at {:.2} s |",
            target.name(),
            per_second(args.rows, last),
            published.as_secs_f64(),
            per_second(args.rows, published),
            last.as_secs_f64()
        );
    }
    // Drain: PostgreSQL down while the messages are published.
    postgres.crash().await;
    bench
        .publish_all("bench.postgres.drain", args.rows, args.batch, args.clients)
        .await?;
    postgres.restart().await?;
    let since = Instant::now();
    // The pool's connections died with the server; it opens new ones.
    let (first, last) = wait_rows(&targets[0], "drain_orders", args.rows, since).await?;
    println!(
        "| drain after an outage (first to last row) | postgres | {} | first row {:.2} s after the restart (retry delay), last at {:.2} s |",
        per_second(args.rows, last.saturating_sub(first)),
        first.as_secs_f64(),
        last.as_secs_f64()
    );
    println!();
    println!(
        "| lag at {}/s | target | rows | p50 | p99 | max |",
        args.rate
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for target in &targets {
        let topic = format!("bench.{}.lag", target.name());
        let total = args.rate * args.lag_secs as usize;
        let per_tick = (args.rate / 100).max(1);
        let started = Instant::now();
        let mut sent = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while sent < total {
            tick.tick().await;
            let end = (sent + per_tick).min(total);
            bench.publish(&topic, sent..end).await?;
            sent = end;
        }
        let offered = started.elapsed();
        wait_rows(target, "lag_orders", total, started).await?;
        let lags = summarize(target.lags_us("lag_orders").await?).context("no rows")?;
        println!(
            "| {:.0}/s offered | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            total as f64 / offered.as_secs_f64(),
            target.name(),
            lags.count,
            lags.p50 as f64 / 1000.0,
            lags.p99 as f64 / 1000.0,
            lags.max as f64 / 1000.0
        );
    }
    let warnings = node.log_warnings();
    if !warnings.is_empty() {
        println!();
        println!("node warnings: {}", warnings.len());
        for line in warnings.iter().take(5) {
            println!("  {line}");
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    runner::run_benchmark("sink-bench", run(Args::parse()))
}
