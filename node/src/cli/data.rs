//! `shoal db` and `shoal sink`: define the databases SQL sinks write (with
//! migrations read from a directory as the sqlx CLI lays it out) and the
//! sinks themselves; list, read and delete them; look at and replay a
//! sink's dead letters.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use shoal_client::Method;

use super::client::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Define (or redefine) a database. NAME `local` is each node's embedded
    /// SQLite (it takes --migrations only); any other NAME is a PostgreSQL
    /// database at --url. Migrations run before the definition is stored.
    Apply {
        name: String,
        /// postgres://user@host:port/database (libpq's sslmode and sslrootcert
        /// as query parameters; no password).
        #[arg(long)]
        url: Option<String>,
        /// The KV key holding the password.
        #[arg(long)]
        password_key: Option<String>,
        /// Connections each node opens at most (1-32; default 4).
        #[arg(long)]
        max_connections: Option<u32>,
        /// A directory of migrations: files `<VERSION>_<DESCRIPTION>.sql`, as
        /// `sqlx migrate add` writes them.
        #[arg(long)]
        migrations: Option<PathBuf>,
    },
    /// List databases (one line each: name, URL or `local`, migrations).
    Ls,
    /// Print a database's definition as JSON.
    Get { name: String },
    /// Delete a database's definition (for `local`: its migrations list).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SinkCommand {
    /// Define (or redefine) a sink from a JSON file (`-` for standard
    /// input): database, table, key, columns, mode, version_column,
    /// per_node. The table is checked before it is stored.
    Apply { name: String, file: PathBuf },
    /// List sinks (one line each: name, database.table, key).
    Ls,
    /// Print a sink's definition as JSON.
    Get { name: String },
    /// Delete a sink (its pending rows and dead letters are dropped).
    Rm { name: String },
    /// Print a sink's dead letters (of every node that answers), one per
    /// line: the message id and the database's reason.
    DeadLetters { name: String },
    /// Send a sink's dead letters again (on every node that answers).
    Replay { name: String },
}

/// The migrations of a directory laid out as the sqlx CLI lays it out, in
/// version order.
fn read_migrations(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let (version, description) = stem.split_once('_').unwrap_or((stem, ""));
        let Ok(version) = version.parse::<i64>() else {
            bail!(
                "{}: a migration's file name is <VERSION>_<DESCRIPTION>.sql",
                path.display()
            );
        };
        let sql = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        found.push((
            version,
            json!({"version": version, "description": description.replace('_', " "), "sql": sql}),
        ));
    }
    if found.is_empty() {
        bail!(
            "{} holds no <VERSION>_<DESCRIPTION>.sql file",
            dir.display()
        );
    }
    found.sort_by_key(|(version, _)| *version);
    Ok(found.into_iter().map(|(_, migration)| migration).collect())
}

fn print_or_json(json: bool, answer: &Value, line: impl FnOnce(&Value) -> String) {
    if json {
        println!("{answer}");
    } else {
        println!("{}", line(answer));
    }
}

pub async fn db(args: ClientArgs, command: DbCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    match command {
        DbCommand::Apply {
            name,
            url,
            password_key,
            max_connections,
            migrations,
        } => {
            let mut definition = json!({});
            if let Some(url) = url {
                definition["url"] = json!(url);
            }
            if let Some(key) = password_key {
                definition["password_key"] = json!(key);
            }
            if let Some(max) = max_connections {
                definition["max_connections"] = json!(max);
            }
            if let Some(dir) = migrations {
                definition["migrations"] = Value::Array(read_migrations(&dir)?);
            }
            let path = format!("/v1/databases/{name}");
            let answer = client
                .request_json(Method::PUT, &path, &[], Some(&definition))
                .await?;
            print_or_json(args.json, &answer, |d| {
                let count = d["migrations"].as_array().map_or(0, Vec::len);
                format!("database {name} defined ({count} migrations applied or already there)")
            });
        }
        DbCommand::Ls => {
            let answer = client
                .request_json(Method::GET, "/v1/databases", &[], None)
                .await?;
            if args.json {
                println!("{answer}");
                return Ok(());
            }
            for d in answer["databases"].as_array().into_iter().flatten() {
                println!(
                    "{}  {}  {} migrations",
                    d["name"].as_str().unwrap_or(""),
                    d["url"].as_str().unwrap_or("local"),
                    d["migrations"].as_array().map_or(0, Vec::len)
                );
            }
        }
        DbCommand::Get { name } => {
            let path = format!("/v1/databases/{name}");
            let answer = client.request_json(Method::GET, &path, &[], None).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        DbCommand::Rm { name } => {
            let path = format!("/v1/databases/{name}");
            let answer = client
                .request_json(Method::DELETE, &path, &[], None)
                .await?;
            print_or_json(args.json, &answer, |_| format!("deleted database {name}"));
        }
    }
    Ok(())
}

pub async fn sink(args: ClientArgs, command: SinkCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    match command {
        SinkCommand::Apply { name, file } => {
            let bytes = if file.as_os_str() == "-" {
                super::client::read_stdin("sink definition")?
            } else {
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let definition: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let path = format!("/v1/sinks/{name}");
            let answer = client
                .request_json(Method::PUT, &path, &[], Some(&definition))
                .await?;
            print_or_json(args.json, &answer, |s| {
                format!(
                    "sink {name} defined: {}.{}",
                    s["database"].as_str().unwrap_or(""),
                    s["table"].as_str().unwrap_or("")
                )
            });
        }
        SinkCommand::Ls => {
            let answer = client
                .request_json(Method::GET, "/v1/sinks", &[], None)
                .await?;
            if args.json {
                println!("{answer}");
                return Ok(());
            }
            for s in answer["sinks"].as_array().into_iter().flatten() {
                let key: Vec<&str> = s["key"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{}  {}.{}  key ({})",
                    s["name"].as_str().unwrap_or(""),
                    s["database"].as_str().unwrap_or(""),
                    s["table"].as_str().unwrap_or(""),
                    key.join(", ")
                );
            }
        }
        SinkCommand::Get { name } => {
            let path = format!("/v1/sinks/{name}");
            let answer = client.request_json(Method::GET, &path, &[], None).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        SinkCommand::Rm { name } => {
            let path = format!("/v1/sinks/{name}");
            let answer = client
                .request_json(Method::DELETE, &path, &[], None)
                .await?;
            print_or_json(args.json, &answer, |_| format!("deleted sink {name}"));
        }
        SinkCommand::DeadLetters { name } => {
            let path = format!("/v1/sinks/{name}/dead-letters");
            let answer = client.request_json(Method::GET, &path, &[], None).await?;
            if args.json {
                println!("{answer}");
                return Ok(());
            }
            for letter in answer["dead_letters"].as_array().into_iter().flatten() {
                println!(
                    "{}  {}",
                    letter["message"]["id"].as_str().unwrap_or(""),
                    letter["last_error"].as_str().unwrap_or("")
                );
            }
        }
        SinkCommand::Replay { name } => {
            let path = format!("/v1/sinks/{name}/dead-letters/replay");
            let answer = client
                .request_json(Method::POST, &path, &[], Some(&json!({})))
                .await?;
            print_or_json(args.json, &answer, |a| {
                format!("{} dead letters of sink {name} sent again", a["replayed"])
            });
        }
    }
    Ok(())
}

/// `shoal sql`: a query over datasets, as a table, JSON, or the bytes of
/// CSV, Parquet or Arrow IPC.
pub async fn sql(
    args: ClientArgs,
    query: String,
    format: String,
    output: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let client = args.connect()?;
    let write = |bytes: &[u8]| -> anyhow::Result<()> {
        match &output {
            Some(path) => {
                std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
            }
            None => {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(bytes)?;
                Ok(stdout.flush()?)
            }
        }
    };
    if format == "table" {
        let body = json!({ "query": query });
        let answer = client
            .request_json(Method::POST, "/v1/sql", &[], Some(&body))
            .await?;
        super::logs::warn_partial(&answer);
        if args.json || output.is_some() {
            return write(format!("{answer}\n").as_bytes());
        }
        super::logs::print_table(&answer);
        eprintln!(
            "({} rows, {} ms)",
            answer["rows"].as_array().map_or(0, Vec::len),
            answer["took_ms"]
        );
        return Ok(());
    }
    let body = json!({ "query": query, "format": format });
    let (headers, bytes) = client
        .request_bytes(Method::POST, "/v1/sql", &[], Some(&body))
        .await?;
    if headers.get("x-shoal-partial").and_then(|v| v.to_str().ok()) == Some("true") {
        eprintln!("warning: partial result; a node did not answer (see --json for which)");
    }
    write(&bytes)
}
