//! The command-line client: `shoal kv ...`, `shoal lease ...`, `shoal status`.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Node to talk to.
    #[arg(
        long,
        env = "SHOAL_ENDPOINT",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    pub endpoint: String,
    /// Print the server's JSON instead of readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Set a key. The value is the argument, or standard input if omitted.
    Put {
        key: String,
        value: Option<String>,
        /// Attach the key to a lease (it is deleted when the lease expires).
        #[arg(long)]
        lease: Option<u64>,
        /// Only write if the key's mod revision is N (0: only if it does not exist).
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// Print a key's value.
    Get {
        key: String,
        /// Read this node's copy without confirming with the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Delete a key (or every key under a prefix).
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Only delete if the key's mod revision is N.
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// List keys under a prefix.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many keys (all pages are fetched up to this total).
        #[arg(long, default_value_t = 1000)]
        limit: u64,
    },
    /// Print changes to a key (or prefix) as they happen; reconnects on its own.
    Watch {
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start from this revision (replays history from there).
        #[arg(long)]
        from_revision: Option<u64>,
    },
    /// Show a key's past values, newest first.
    History {
        key: String,
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// Write the value a key had at REVISION as a new revision.
    Rollback { key: String, revision: u64 },
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease with a time to live, in seconds; prints its id.
    Grant { ttl_seconds: u64 },
    /// Keep a lease alive: once, or every N seconds until interrupted.
    Keepalive {
        id: u64,
        #[arg(long)]
        every: Option<u64>,
    },
    /// Revoke a lease, deleting its keys.
    Revoke { id: u64 },
    /// Show a lease and its keys.
    Get { id: u64 },
    /// List leases.
    Ls,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show every member: id, addresses, gossip state, Raft role, match index, version, uptime.
    Status,
    /// Remove a node from the cluster (default: the node at --endpoint, which then exits).
    Leave {
        #[arg(long)]
        node_id: Option<u64>,
    },
}

pub(crate) struct Client {
    pub http: reqwest::Client,
    pub endpoint: String,
    pub json: bool,
}

/// Percent-encode a key for a URL path, keeping `/` separators.
pub(crate) fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn printable(value: &str) -> String {
    match STANDARD.decode(value) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => format!("<{} bytes of binary>", e.as_bytes().len()),
        },
        Err(_) => value.to_string(),
    }
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client {
            http,
            endpoint: args.endpoint.trim_end_matches('/').to_string(),
            json: args.json,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.endpoint, path)
    }

    /// Send a request; a JSON error body becomes a readable error.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("reading the reply from {}", self.endpoint))?;
        if !status.is_success() {
            let code = body["error"]["code"].as_str().unwrap_or("error");
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            bail!("{code} ({}): {message}", status.as_u16());
        }
        Ok(body)
    }

    pub fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach {}: {e} (is a node running there? start one with `shoal dev`)",
            self.endpoint
        )
    }

    fn print_json(&self, value: &Value) {
        println!("{value}");
    }
}

pub async fn kv(args: ClientArgs, command: KvCommand) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    match command {
        KvCommand::Put {
            key,
            value,
            lease,
            if_revision,
        } => {
            let value = match value {
                Some(value) => value.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("reading the value from standard input")?;
                    buf
                }
            };
            let mut query = Vec::new();
            if let Some(lease) = lease {
                query.push(("lease", lease.to_string()));
            }
            if let Some(revision) = if_revision {
                query.push(("if_revision", revision.to_string()));
            }
            let request = client
                .http
                .put(client.url(&format!("/v1/kv/{}", encode_path(&key))))
                .query(&query)
                .body(value);
            let body = client.send(request).await?;
            if client.json {
                client.print_json(&body);
            } else {
                println!("OK revision {}", body["revision"]);
            }
        }
        KvCommand::Get { key, stale } => {
            let consistency = if stale { "stale" } else { "linearizable" };
            let request = client
                .http
                .get(client.url(&format!("/v1/kv/{}", encode_path(&key))))
                .query(&[("consistency", consistency)]);
            let body = client.send(request).await?;
            if client.json {
                client.print_json(&body);
            } else {
                let value = STANDARD
                    .decode(body["kv"]["value"].as_str().unwrap_or(""))
                    .context("decoding the value")?;
                let mut out = std::io::stdout();
                out.write_all(&value)?;
                if !value.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
            }
        }
        KvCommand::Del {
            key,
            prefix,
            if_revision,
        } => {
            let mut query = vec![("prefix", prefix.to_string())];
            if let Some(revision) = if_revision {
                query.push(("if_revision", revision.to_string()));
            }
            let request = client
                .http
                .delete(client.url(&format!("/v1/kv/{}", encode_path(&key))))
                .query(&query);
            let body = client.send(request).await?;
            if client.json {
                client.print_json(&body);
            } else {
                println!("deleted {}", body["deleted"]);
            }
        }
        KvCommand::Ls { prefix, limit } => {
            let mut after: Option<String> = None;
            let mut listed = 0;
            loop {
                let page = (limit - listed).min(1000);
                let mut query = vec![("prefix", prefix.clone()), ("limit", page.to_string())];
                if let Some(after) = &after {
                    query.push(("after", after.clone()));
                }
                let body = client
                    .send(client.http.get(client.url("/v1/kv")).query(&query))
                    .await?;
                let kvs = body["kvs"].as_array().cloned().unwrap_or_default();
                for kv in &kvs {
                    if client.json {
                        client.print_json(kv);
                    } else {
                        println!("{}", kv["key"].as_str().unwrap_or(""));
                    }
                }
                listed += kvs.len() as u64;
                after = body["next_after"].as_str().map(str::to_string);
                if after.is_none() || listed >= limit {
                    break;
                }
            }
        }
        KvCommand::Watch {
            key,
            prefix,
            from_revision,
        } => watch(&client, key, prefix, from_revision).await?,
        KvCommand::History { key, limit } => {
            let request = client
                .http
                .get(client.url(&format!("/v1/history/{}", encode_path(&key))))
                .query(&[("limit", limit)]);
            let body = client.send(request).await?;
            if client.json {
                client.print_json(&body);
            } else {
                for event in body["history"].as_array().cloned().unwrap_or_default() {
                    let kv = &event["kv"];
                    match event["type"].as_str() {
                        Some("put") => println!(
                            "revision {} PUT {} (version {})",
                            kv["mod_revision"],
                            printable(kv["value"].as_str().unwrap_or("")),
                            kv["version"]
                        ),
                        _ => println!("revision {} DELETE", kv["mod_revision"]),
                    }
                }
            }
        }
        KvCommand::Rollback { key, revision } => {
            let request = client
                .http
                .post(client.url(&format!("/v1/rollback/{}", encode_path(&key))))
                .json(&json!({"revision": revision}));
            let body = client.send(request).await?;
            if client.json {
                client.print_json(&body);
            } else {
                println!(
                    "OK revision {} (value of revision {revision})",
                    body["revision"]
                );
            }
        }
    }
    Ok(())
}

/// Follow the SSE stream, printing each batch; on a dropped connection,
/// reconnect with `Last-Event-ID` so no change is missed or repeated.
async fn watch(
    client: &Client,
    key: String,
    prefix: bool,
    from_revision: Option<u64>,
) -> anyhow::Result<()> {
    let mut last_seen: Option<u64> = from_revision.map(|r| r.saturating_sub(1));
    loop {
        let mut query = vec![(if prefix { "prefix" } else { "key" }, key.clone())];
        if let Some(from) = from_revision.filter(|_| last_seen.is_none()) {
            query.push(("from_revision", from.to_string()));
        }
        let mut request = client.http.get(client.url("/v1/watch")).query(&query);
        if let Some(last) = last_seen {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let response = request.send().await.map_err(|e| client.unreachable(e))?;
        let response = ensure_success(response, "watch failed").await?;
        read_sse(response, |event, data| {
            let batch: Value = serde_json::from_str(data).context("bad event from the server")?;
            if event == "error" {
                bail!("{}: {}", batch["error"]["code"], batch["error"]["message"]);
            }
            print_batch(client, &batch);
            last_seen = batch["revision"].as_u64().or(last_seen);
            Ok(())
        })
        .await?;
        eprintln!("watch: connection lost; reconnecting");
        tokio::time::sleep(Duration::from_secs(1)).await;
        if last_seen.is_none() {
            // Resume from now if nothing was seen yet: ask the node for its revision.
            let status = client
                .send(client.http.get(client.url("/v1/status")))
                .await?;
            last_seen = status["revision"].as_u64();
        }
    }
}

/// Read a Server-Sent Events response until it ends, calling `on_event`
/// with each event's name and data.
pub(crate) async fn read_sse(
    response: reqwest::Response,
    mut on_event: impl FnMut(&str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let (mut event, mut data) = (String::new(), String::new());
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line = buffer[..end].trim_end_matches('\r').to_string();
            buffer.drain(..=end);
            if let Some(rest) = line.strip_prefix("event:") {
                event = rest.trim().to_string();
            } else if let Some(rest) = line.strip_prefix("data:") {
                data.push_str(rest.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                on_event(&event, &data)?;
                data.clear();
                event.clear();
            }
        }
    }
    Ok(())
}

/// Fail with the server's JSON error if the response is not a success.
pub(crate) async fn ensure_success(
    response: reqwest::Response,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    bail!(
        "{} ({}): {}",
        body["error"]["code"].as_str().unwrap_or("error"),
        status.as_u16(),
        body["error"]["message"].as_str().unwrap_or(what)
    );
}

/// `shoal pub TOPIC [MESSAGE]`: publish one message (standard input when
/// MESSAGE is omitted).
pub async fn publish(
    args: ClientArgs,
    topic: String,
    message: Option<String>,
    content_type: String,
    headers: Vec<String>,
) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    let body = match message {
        Some(message) => message.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the message from standard input")?;
            buf
        }
    };
    let mut request = client
        .http
        .post(client.url(&format!("/v1/topics/{}", encode_path(&topic))))
        .header("content-type", content_type)
        .body(body);
    for header in headers {
        let (name, value) = header
            .split_once('=')
            .ok_or_else(|| anyhow!("--header takes NAME=VALUE, got {header:?}"))?;
        request = request.header(format!("ce-{}", name.trim()), value.trim());
    }
    let receipt = client.send(request).await?;
    if client.json {
        client.print_json(&receipt);
    } else {
        println!(
            "published {} to {} (local subscribers {}, forwarded to nodes {}, durable deliveries {})",
            receipt["id"].as_str().unwrap_or("?"),
            topic,
            receipt["local"],
            receipt["forwarded"],
            receipt["durable"]
        );
    }
    Ok(())
}

/// `shoal sub PATTERN`: print each message as it arrives, one per line.
pub async fn subscribe(
    args: ClientArgs,
    pattern: String,
    queue: Option<String>,
) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    let mut query = vec![("pattern", pattern)];
    if let Some(queue) = queue {
        query.push(("queue", queue));
    }
    let response = client
        .http
        .get(client.url("/v1/subscribe"))
        .query(&query)
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    let response = ensure_success(response, "subscribe failed").await?;
    let mut stdout = std::io::stdout();
    read_sse(response, |event, data| {
        match event {
            "message" if client.json => writeln!(stdout, "{data}")?,
            "message" => {
                let envelope: Value =
                    serde_json::from_str(data).context("bad message from the server")?;
                let payload = match (&envelope["data"], &envelope["data_base64"]) {
                    (Value::String(text), _) => text.trim_end_matches('\n').to_string(),
                    (Value::Null, Value::String(encoded)) => format!("<{encoded} (base64)>"),
                    (value, _) => value.to_string(),
                };
                writeln!(
                    stdout,
                    "{} {}",
                    envelope["topic"].as_str().unwrap_or("?"),
                    payload
                )?;
            }
            "dropped" => {
                eprintln!("sub: the node dropped messages because this subscriber was slow: {data}")
            }
            "error" => bail!("the node ended the subscription: {data}"),
            _ => {}
        }
        stdout.flush()?;
        Ok(())
    })
    .await?;
    bail!("the connection to {} ended", client.endpoint)
}

fn print_batch(client: &Client, batch: &Value) {
    if client.json {
        client.print_json(batch);
        return;
    }
    for event in batch["events"].as_array().cloned().unwrap_or_default() {
        let kv = &event["kv"];
        let key = kv["key"].as_str().unwrap_or("");
        match event["type"].as_str() {
            Some("put") => {
                println!(
                    "PUT {key} {} (revision {})",
                    printable(kv["value"].as_str().unwrap_or("")),
                    batch["revision"]
                )
            }
            _ => println!("DELETE {key} (revision {})", batch["revision"]),
        }
    }
    let _ = std::io::stdout().flush();
}

pub async fn lease(args: ClientArgs, command: LeaseCommand) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    let body = match command {
        LeaseCommand::Grant { ttl_seconds } => {
            let body = client
                .send(
                    client
                        .http
                        .post(client.url("/v1/leases"))
                        .json(&json!({"ttl_seconds": ttl_seconds})),
                )
                .await?;
            if !client.json {
                println!("lease {} granted, ttl {}s", body["id"], body["ttl_seconds"]);
                return Ok(());
            }
            body
        }
        LeaseCommand::Keepalive { id, every } => loop {
            let body = client
                .send(
                    client
                        .http
                        .post(client.url(&format!("/v1/leases/{id}/keepalive"))),
                )
                .await?;
            match every {
                None => break body,
                Some(seconds) => {
                    println!("lease {id} kept alive");
                    tokio::time::sleep(Duration::from_secs(seconds.max(1))).await;
                }
            }
        },
        LeaseCommand::Revoke { id } => {
            client
                .send(client.http.delete(client.url(&format!("/v1/leases/{id}"))))
                .await?
        }
        LeaseCommand::Get { id } => {
            client
                .send(client.http.get(client.url(&format!("/v1/leases/{id}"))))
                .await?
        }
        LeaseCommand::Ls => {
            client
                .send(client.http.get(client.url("/v1/leases")))
                .await?
        }
    };
    client.print_json(&body);
    Ok(())
}

pub async fn cluster(args: ClientArgs, command: ClusterCommand) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    match command {
        ClusterCommand::Status => {
            let body = client
                .send(client.http.get(client.url("/v1/cluster")))
                .await?;
            if client.json {
                client.print_json(&body);
                return Ok(());
            }
            println!("leader {}  term {}", body["leader"], body["term"]);
            println!(
                "{:<18} {:<22} {:<22} {:<8} {:<8} {:>8} {:>8} {:<8} {:>8}",
                "NODE", "API", "RPC", "GOSSIP", "RAFT", "MATCH", "APPLIED", "VERSION", "UPTIME"
            );
            for member in body["members"].as_array().cloned().unwrap_or_default() {
                let text = |field: &str| match &member[field] {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".to_string(),
                    other => other.to_string(),
                };
                println!(
                    "{:<18} {:<22} {:<22} {:<8} {:<8} {:>8} {:>8} {:<8} {:>7}s",
                    text("node_id"),
                    text("api"),
                    text("rpc"),
                    text("gossip_state"),
                    text("raft_role"),
                    text("match_index"),
                    text("applied_index"),
                    text("version"),
                    text("uptime_seconds")
                );
            }
        }
        ClusterCommand::Leave { node_id } => {
            let body = json!({"node_id": node_id});
            let reply = client
                .send(
                    client
                        .http
                        .post(client.url("/v1/cluster/leave"))
                        .json(&body),
                )
                .await?;
            if client.json {
                client.print_json(&reply);
            } else {
                println!("node {} left the cluster", reply["removed"]);
            }
        }
    }
    Ok(())
}

pub async fn status(args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    let body = client
        .send(client.http.get(client.url("/v1/status")))
        .await?;
    if client.json {
        client.print_json(&body);
    } else {
        for (name, value) in body.as_object().cloned().unwrap_or_default() {
            println!(
                "{name:>16}: {}",
                value
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| value.to_string())
            );
        }
    }
    Ok(())
}
