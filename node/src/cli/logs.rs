//! `shoal logs ...`: search, tail, aggregate, SQL and list streams; shipping
//! files or standard input to a stream is in `ship.rs`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use shoal_client::{Client, Method};

use super::client::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum LogsCommand {
    /// Send log lines to a stream: from FILEs, or standard input when none is
    /// given. JSON object lines are sent as records, other lines as messages.
    /// With --follow, files are tailed across rotation (rename or truncate)
    /// and read positions are saved, so a restart neither re-sends nor skips lines.
    Ingest {
        /// Stream to write to (e.g. orders-service).
        #[arg(long)]
        stream: String,
        files: Vec<PathBuf>,
        /// Keep reading the files as they grow and rotate.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Where read positions are kept [default: ~/.local/state/shoal/ingest-STREAM.json].
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Lines per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Search records across the cluster, newest first.
    Search {
        /// Query: words, "phrases", AND/OR/NOT, field:value (level, service,
        /// trace_id, attributes.KEY), ranges such as duration:>1000000.
        #[arg(default_value = "")]
        query: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Oldest first.
        #[arg(long)]
        oldest: bool,
        /// At most this many records (pages are followed up to this total).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print the newest matching records; with -f, keep printing new ones.
    Tail {
        #[arg(default_value = "")]
        query: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Follow: print records as they arrive.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the newest records to print first.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: usize,
    },
    /// Counts over time and the most frequent levels and services.
    Stats {
        #[arg(default_value = "")]
        query: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Histogram bucket width, e.g. 1m.
        #[arg(long)]
        interval: Option<String>,
    },
    /// Run SQL over logs (Polars) on the table `logs`, e.g.
    /// "SELECT service, level, count(*) FROM logs WHERE ts > now() - interval '1 hour' GROUP BY 1, 2".
    /// Columns: ts, stream, node, kind, level, service, message, trace_id,
    /// span_id, duration_ns, status, attributes (JSON text).
    Sql { query: String },
    /// List streams: records, bytes and nodes.
    Streams,
    /// Show a whole trace: its spans and log records, from every node.
    Trace { trace_id: String },
}

#[derive(clap::Args, Debug, Default)]
pub struct FilterArgs {
    /// Only these streams (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    stream: Vec<String>,
    /// From this time: a duration ago (15m, 2h, 7d), RFC 3339 or epoch.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    /// Only these levels (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    level: Vec<String>,
    /// Only these services.
    #[arg(long, value_delimiter = ',')]
    service: Vec<String>,
    /// log (default), span or any.
    #[arg(long)]
    kind: Option<String>,
}

impl FilterArgs {
    fn query(&self, q: &str) -> Vec<(&'static str, String)> {
        let mut query = vec![("q", q.to_string())];
        let mut add = |name: &'static str, values: &[String]| {
            if !values.is_empty() {
                query.push((name, values.join(",")));
            }
        };
        add("stream", &self.stream);
        add("level", &self.level);
        add("service", &self.service);
        for (name, value) in [
            ("since", &self.since),
            ("until", &self.until),
            ("kind", &self.kind),
        ] {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        query
    }
}

/// A GET of an endpoint the client has no typed call for, with query parameters.
async fn get(client: &Client, path: &str, params: &[(&str, String)]) -> anyhow::Result<Value> {
    let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
    Ok(client
        .request_json(Method::GET, path, &params, None)
        .await?)
}

pub async fn run(args: ClientArgs, command: LogsCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    let json = args.json;
    match command {
        LogsCommand::Ingest {
            stream,
            files,
            follow,
            state_file,
            batch,
        } => super::ship::ship(&client, stream, files, follow, state_file, batch).await,
        LogsCommand::Search {
            query,
            filter,
            oldest,
            limit,
        } => {
            let mut params = filter.query(&query);
            params.push((
                "order",
                if oldest { "oldest" } else { "newest" }.to_string(),
            ));
            let mut printed = 0;
            let mut cursor: Option<String> = None;
            while printed < limit {
                let mut page = params.clone();
                page.push(("limit", (limit - printed).min(1000).to_string()));
                if let Some(cursor) = &cursor {
                    page.push(("cursor", cursor.clone()));
                }
                let answer = get(&client, "/v1/logs/search", &page).await?;
                warn_partial(&answer);
                let hits = answer["hits"].as_array().cloned().unwrap_or_default();
                for hit in &hits {
                    print_hit(json, hit);
                }
                printed += hits.len();
                match answer["next_cursor"].as_str() {
                    Some(next) if !hits.is_empty() => cursor = Some(next.to_string()),
                    _ => break,
                }
            }
            Ok(())
        }
        LogsCommand::Tail {
            query,
            filter,
            follow,
            lines,
        } => {
            let mut params = filter.query(&query);
            if !follow {
                params.push(("limit", lines.clamp(1, 10_000).to_string()));
                let answer = get(&client, "/v1/logs/search", &params).await?;
                warn_partial(&answer);
                for hit in answer["hits"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .rev()
                {
                    print_hit(json, hit);
                }
                return Ok(());
            }
            params.push(("backlog", lines.min(1000).to_string()));
            let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let mut events = client.request_events("/v1/logs/tail", &params).await?;
            while let Some(event) = events.next().await? {
                match event.event.as_str() {
                    "record" => print_hit(
                        json,
                        &serde_json::from_str(&event.data).context("bad record from the server")?,
                    ),
                    "error" => eprintln!("tail: {}", event.data),
                    _ => {}
                }
            }
            bail!("the connection to {} ended", client.current_endpoint())
        }
        LogsCommand::Stats {
            query,
            filter,
            interval,
        } => {
            let mut params = filter.query(&query);
            params.push(("top", "level,service".into()));
            if let Some(interval) = interval {
                params.push(("interval", interval));
            }
            let answer = get(&client, "/v1/logs/aggregate", &params).await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            warn_partial(&answer);
            println!(
                "{} records from {} to {}",
                answer["total"],
                text(&answer["since"]),
                text(&answer["until"])
            );
            for field in ["level", "service"] {
                let buckets: Vec<String> = answer["top"][field]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|b| format!("{} {}", text(&b["value"]), b["count"]))
                    .collect();
                println!("{field}: {}", buckets.join(", "));
            }
            for bucket in answer["histogram"].as_array().cloned().unwrap_or_default() {
                if bucket["count"].as_u64().unwrap_or(0) > 0 {
                    println!("{} {}", text(&bucket["ts"]), bucket["count"]);
                }
            }
            Ok(())
        }
        LogsCommand::Sql { query } => {
            let body = json!({ "query": query });
            let answer = client
                .request_json(Method::POST, "/v1/logs/sql", &[], Some(&body))
                .await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            warn_partial(&answer);
            print_table(&answer);
            eprintln!(
                "({} rows, {} records read, {} ms)",
                answer["rows"].as_array().map_or(0, Vec::len),
                answer["scanned"],
                answer["took_ms"]
            );
            Ok(())
        }
        LogsCommand::Streams => {
            let answer = get(&client, "/v1/logs/streams", &[]).await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            warn_partial(&answer);
            println!(
                "{:<32} {:>12} {:>12} {:>6}",
                "STREAM", "RECORDS", "BYTES", "NODES"
            );
            for stream in answer["streams"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{:<32} {:>12} {:>12} {:>6}",
                    text(&stream["name"]),
                    stream["docs"],
                    stream["bytes"],
                    stream["nodes"].as_array().map_or(0, Vec::len)
                );
            }
            Ok(())
        }
        LogsCommand::Trace { trace_id } => {
            let answer = get(&client, &format!("/v1/traces/{trace_id}"), &[]).await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            warn_partial(&answer);
            for hit in answer["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(answer["logs"].as_array().into_iter().flatten())
            {
                print_hit(json, hit);
            }
            Ok(())
        }
    }
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_string)
}

/// A SQL answer's columns and rows, tab-separated.
pub(super) fn print_table(answer: &Value) {
    let columns: Vec<String> = answer["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    println!("{}", columns.join("\t"));
    for row in answer["rows"].as_array().into_iter().flatten() {
        let cells: Vec<String> = row.as_array().into_iter().flatten().map(text).collect();
        println!("{}", cells.join("\t"));
    }
}

pub(super) fn warn_partial(answer: &Value) {
    if answer["partial"].as_bool() == Some(true) {
        let failed: Vec<String> = answer["nodes"]["failed"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|f| format!("{} ({})", f["node"], text(&f["error"])))
            .collect();
        eprintln!(
            "warning: partial result; no answer from {}",
            failed.join(", ")
        );
    }
}

fn print_hit(json: bool, hit: &Value) {
    if json {
        println!("{hit}");
        return;
    }
    let mut line = format!(
        "{} {:<5} {} ",
        text(&hit["ts"]),
        text(&hit["level"]).to_uppercase(),
        text(&hit["service"])
    );
    if hit["kind"] == "span" {
        line.push_str(&format!(
            "span {:?} {:.3}ms {} trace={}",
            text(&hit["message"]),
            hit["span"]["duration_ms"].as_f64().unwrap_or(0.0),
            text(&hit["span"]["status"]),
            text(&hit["trace_id"])
        ));
    } else {
        line.push_str(&text(&hit["message"]));
        if let Some(attributes) = hit["attributes"].as_object().filter(|a| !a.is_empty()) {
            line.push_str(&format!(" {}", Value::Object(attributes.clone())));
        }
    }
    println!("{line}");
}
