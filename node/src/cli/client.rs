//! The command-line client: `shoal kv ...`, `shoal lease ...`, `shoal cluster ...`,
//! `shoal pub`, `shoal sub` and `shoal status`, on top of `shoal-client`.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};
use shoal_client::{
    Client, Consistency, DeleteOptions, Error, Event, EventType, HistoryOptions, KeyValue,
    LeaseInfo, ListOptions, Message, Method, PublishOptions, PutOptions, SubscribeOptions,
    WatchBatch, WatchOptions,
};

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
    /// Token to send (`Authorization: Bearer`), needed when the node runs with --acl.
    #[arg(long, env = "SHOAL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// endpoint, besides the system's
    /// (e.g. the ca.pem of `shoal tls ca`).
    #[arg(long, env = "SHOAL_CACERT", global = true)]
    pub cacert: Option<std::path::PathBuf>,
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

impl ClientArgs {
    /// A client for `--endpoint`.
    pub fn connect(&self) -> anyhow::Result<Client> {
        let mut builder = Client::builder()
            .endpoint(self.endpoint.as_str())
            .connect_timeout(Duration::from_secs(5));
        if let Some(token) = self.token.as_deref().filter(|token| !token.is_empty()) {
            builder = builder.token(token);
        }
        if let Some(path) = &self.cacert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --cacert {}", path.display()))?;
            builder = builder.ca_certificates_pem(pem);
        }
        Ok(builder.build()?)
    }
}

/// The CLI's wording of a client error: the server's `code (status):
/// message`, or a hint to start a node when none answers.
pub(crate) fn describe(error: &Error) -> String {
    match error {
        Error::Transport { endpoint, source } => {
            // The innermost cause says what went wrong (refused, a
            // certificate not trusted, ...); reqwest's own text does not.
            let mut cause: &dyn std::error::Error = source;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            let hint = if cause.to_string().contains("certificate") {
                "is the node's CA given with --cacert?"
            } else {
                "is a node running there? start one with `shoal dev`"
            };
            format!("cannot reach {endpoint}: {source}: {cause} ({hint})")
        }
        Error::Compacted { message, .. } => format!("compacted (410): {message}"),
        other => other.to_string(),
    }
}

fn printable(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_string(),
        Err(_) => format!("<{} bytes of binary>", value.len()),
    }
}

pub(super) fn read_stdin(what: &str) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .with_context(|| format!("reading the {what} from standard input"))?;
    Ok(buf)
}

// The API's JSON for the typed answers, for `--json` (as the server sends it).

fn kv_json(kv: &KeyValue, with_value: bool) -> Value {
    let mut out = json!({
        "key": kv.key,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    });
    if with_value {
        out["value"] = json!(STANDARD.encode(&kv.value));
    }
    out
}

fn event_json(event: &Event) -> Value {
    match event.kind {
        EventType::Put => json!({"type": "put", "kv": kv_json(&event.kv, true)}),
        EventType::Delete => json!({"type": "delete", "kv": kv_json(&event.kv, false)}),
    }
}

fn lease_json(lease: &LeaseInfo, with_keys: bool) -> Value {
    let mut out = json!({
        "id": lease.id,
        "ttl_seconds": lease.ttl_seconds,
        "remaining_ms": lease.remaining_ms,
    });
    if with_keys {
        out["keys"] = json!(lease.keys);
    }
    out
}

pub async fn kv(args: ClientArgs, command: KvCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    match command {
        KvCommand::Put {
            key,
            value,
            lease,
            if_revision,
        } => {
            let value = match value {
                Some(value) => value.into_bytes(),
                None => read_stdin("value")?,
            };
            let options = PutOptions { lease, if_revision };
            let put = client.put_with(&key, value, &options).await?;
            if args.json {
                println!(
                    "{}",
                    json!({
                        "revision": put.revision,
                        "kv": kv_json(&put.kv, false),
                        "prev_kv": put.prev_kv.as_ref().map(|p| kv_json(p, false)),
                    })
                );
            } else {
                println!("OK revision {}", put.revision);
            }
        }
        KvCommand::Get { key, stale } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            let Some(got) = client.get_with(&key, consistency).await? else {
                bail!("key_not_found (404): key {key:?} does not exist");
            };
            if args.json {
                println!(
                    "{}",
                    json!({"revision": got.revision, "kv": kv_json(&got.kv, true)})
                );
            } else {
                let mut out = std::io::stdout();
                out.write_all(&got.kv.value)?;
                if !got.kv.value.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
            }
        }
        KvCommand::Del {
            key,
            prefix,
            if_revision,
        } => {
            let options = DeleteOptions {
                prefix,
                if_revision,
            };
            let deleted = client.delete_with(&key, &options).await?;
            if args.json {
                println!(
                    "{}",
                    json!({"revision": deleted.revision, "deleted": deleted.deleted})
                );
            } else {
                println!("deleted {}", deleted.deleted);
            }
        }
        KvCommand::Ls { prefix, limit } => {
            let mut options = ListOptions::default();
            let mut listed = 0;
            loop {
                // At most 1000, so the cast cannot truncate.
                options.limit = Some((limit - listed).min(1000) as u32);
                let page = client.list(&prefix, &options).await?;
                for kv in &page.kvs {
                    if args.json {
                        println!("{}", kv_json(kv, true));
                    } else {
                        println!("{}", kv.key);
                    }
                }
                listed += page.kvs.len() as u64;
                options.after = page.next_after;
                if options.after.is_none() || listed >= limit {
                    break;
                }
            }
        }
        KvCommand::Watch {
            key,
            prefix,
            from_revision,
        } => watch(&client, args.json, key, prefix, from_revision).await?,
        KvCommand::History { key, limit } => {
            let options = HistoryOptions {
                limit: Some(u32::try_from(limit).unwrap_or(u32::MAX)),
                ..HistoryOptions::default()
            };
            let history = client.history(&key, &options).await?;
            if args.json {
                let events: Vec<Value> = history.events.iter().map(event_json).collect();
                println!(
                    "{}",
                    json!({
                        "key": history.key,
                        "revision": history.revision,
                        "compact_revision": history.compact_revision,
                        "history": events,
                    })
                );
            } else {
                for event in &history.events {
                    let kv = &event.kv;
                    match event.kind {
                        EventType::Put => println!(
                            "revision {} PUT {} (version {})",
                            kv.mod_revision,
                            printable(&kv.value),
                            kv.version
                        ),
                        EventType::Delete => println!("revision {} DELETE", kv.mod_revision),
                    }
                }
            }
        }
        KvCommand::Rollback { key, revision } => {
            let (new_revision, kv) = client.rollback(&key, revision).await?;
            if args.json {
                println!(
                    "{}",
                    json!({"revision": new_revision, "kv": kv.as_ref().map(|kv| kv_json(kv, false))})
                );
            } else {
                println!("OK revision {new_revision} (value of revision {revision})");
            }
        }
    }
    Ok(())
}

/// Follow the client's watch stream (it reconnects on its own, without
/// missing or repeating a revision), printing each batch.
async fn watch(
    client: &Client,
    json: bool,
    key: String,
    prefix: bool,
    from_revision: Option<u64>,
) -> anyhow::Result<()> {
    let mut options = if prefix {
        WatchOptions::prefix(key)
    } else {
        WatchOptions::key(key)
    };
    if let Some(revision) = from_revision {
        options = options.from_revision(revision);
    }
    let mut batches = client.watch(options).await?;
    let mut reconnects = 0;
    let mut announced = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            batch = batches.next() => match batch {
                Some(batch) => print_batch(json, &batch?),
                None => bail!("the watch ended"),
            },
            _ = tick.tick() => {}
        }
        // Once per outage, not once per attempt.
        if batches.connected_endpoint().is_some() {
            announced = false;
        }
        if batches.reconnects() > reconnects {
            reconnects = batches.reconnects();
            if !announced {
                announced = true;
                eprintln!("watch: connection lost; reconnecting");
            }
        }
    }
}

fn print_batch(json: bool, batch: &WatchBatch) {
    if json {
        let events: Vec<Value> = batch.events.iter().map(event_json).collect();
        println!("{}", json!({"revision": batch.revision, "events": events}));
    } else {
        for event in &batch.events {
            let key = &event.kv.key;
            match event.kind {
                EventType::Put => println!(
                    "PUT {key} {} (revision {})",
                    printable(&event.kv.value),
                    batch.revision
                ),
                EventType::Delete => println!("DELETE {key} (revision {})", batch.revision),
            }
        }
    }
    let _ = std::io::stdout().flush();
}

/// `shoal pub TOPIC [MESSAGE]`: publish one message (standard input when
/// MESSAGE is omitted).
pub async fn publish(
    args: ClientArgs,
    topic: String,
    message: Option<String>,
    content_type: Option<String>,
    headers: Vec<String>,
    to_workflows: bool,
) -> anyhow::Result<()> {
    let client = args.connect()?;
    let body = match message {
        Some(message) => message.into_bytes(),
        None => read_stdin("message")?,
    };
    let content_type = content_type.unwrap_or_else(|| {
        let structured = serde_json::from_slice::<serde_json::Value>(&body)
            .is_ok_and(|v| v.is_object() || v.is_array());
        if structured {
            "application/json"
        } else {
            "text/plain"
        }
        .to_string()
    });
    let mut options = PublishOptions {
        content_type: Some(content_type),
        ..PublishOptions::default()
    };
    for header in headers {
        let (name, value) = header
            .split_once('=')
            .ok_or_else(|| anyhow!("--header takes NAME=VALUE, got {header:?}"))?;
        options
            .headers
            .push((name.trim().to_string(), value.trim().to_string()));
    }
    if to_workflows {
        // An id known before sending lets a retry change nothing.
        options.id = Some(
            match options.headers.iter().position(|(name, _)| name == "id") {
                Some(at) => options.headers.remove(at).1,
                None => shoal_actors::message::new_id(),
            },
        );
        let receipt = client.send_workflow_event(&topic, body, &options).await?;
        if args.json {
            println!(
                "{}",
                json!({
                    "id": receipt.id,
                    "topic": receipt.topic,
                    "duplicate": receipt.duplicate,
                    "revision": receipt.revision,
                })
            );
        } else if receipt.duplicate {
            println!(
                "{} was waiting already in the workflow event inbox",
                receipt.id
            );
        } else {
            println!(
                "stored {} for workflows (topic {}, revision {})",
                receipt.id, receipt.topic, receipt.revision
            );
        }
        return Ok(());
    }
    let receipt = client.publish_with(&topic, body, &options).await?;
    if args.json {
        println!(
            "{}",
            json!({
                "id": receipt.id,
                "topic": receipt.topic,
                "local": receipt.local,
                "forwarded": receipt.forwarded,
                "routed": receipt.routed,
                "durable": receipt.durable,
            })
        );
    } else {
        println!(
            "published {} to {} (local subscribers {}, forwarded to nodes {}, durable deliveries {})",
            receipt.id, topic, receipt.local, receipt.forwarded, receipt.durable
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
    let client = args.connect()?;
    let options = SubscribeOptions {
        queue,
        ..SubscribeOptions::default()
    };
    let mut messages = client.subscribe(&pattern, &options).await?;
    let (mut dropped, mut reconnects) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(message)) => print_message(args.json, &message)?,
                Some(Err(e)) => bail!("the node ended the subscription: {}", describe(&e)),
                None => bail!("the connection to {} ended", client.current_endpoint()),
            },
            _ = tick.tick() => {}
        }
        if messages.dropped() > dropped {
            let count = messages.dropped() - dropped;
            dropped = messages.dropped();
            eprintln!(
                "sub: the node dropped messages because this subscriber was slow: {}",
                json!({ "dropped": count })
            );
        }
        if messages.reconnects() > reconnects {
            reconnects = messages.reconnects();
            eprintln!(
                "sub: connection lost; subscribing again (messages published meanwhile are missed)"
            );
        }
    }
}

fn print_message(json: bool, message: &Message) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    if json {
        writeln!(stdout, "{}", message.envelope())?;
    } else {
        let envelope: Value =
            serde_json::from_str(message.envelope()).context("bad message from the server")?;
        let payload = match (&envelope["data"], &envelope["data_base64"]) {
            (Value::String(text), _) => text.trim_end_matches('\n').to_string(),
            (Value::Null, Value::String(encoded)) => format!("<{encoded} (base64)>"),
            (value, _) => value.to_string(),
        };
        writeln!(stdout, "{} {payload}", message.topic)?;
    }
    stdout.flush()?;
    Ok(())
}

pub async fn lease(args: ClientArgs, command: LeaseCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    let body = match command {
        LeaseCommand::Grant { ttl_seconds } => {
            let lease = client.lease_grant(ttl_seconds).await?;
            if !args.json {
                println!("lease {} granted, ttl {}s", lease.id, lease.ttl_seconds);
                return Ok(());
            }
            json!({"id": lease.id, "ttl_seconds": lease.ttl_seconds})
        }
        LeaseCommand::Keepalive { id, every } => loop {
            let lease = client.lease_keepalive(id).await?;
            match every {
                None => break json!({"id": lease.id, "ttl_seconds": lease.ttl_seconds}),
                Some(seconds) => {
                    println!("lease {id} kept alive");
                    tokio::time::sleep(Duration::from_secs(seconds.max(1))).await;
                }
            }
        },
        LeaseCommand::Revoke { id } => {
            let revoked = client.lease_revoke(id).await?;
            json!({"revision": revoked.revision, "deleted": revoked.deleted})
        }
        LeaseCommand::Get { id } => match client.lease_time_to_live(id).await? {
            Some(lease) => lease_json(&lease, true),
            None => bail!("lease_not_found (404): lease {id} does not exist or has expired"),
        },
        LeaseCommand::Ls => {
            let leases = client.lease_list().await?;
            let leases: Vec<Value> = leases.iter().map(|l| lease_json(l, false)).collect();
            json!({ "leases": leases })
        }
    };
    println!("{body}");
    Ok(())
}

pub async fn cluster(args: ClientArgs, command: ClusterCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    match command {
        ClusterCommand::Status => {
            let body = client
                .request_json(Method::GET, "/v1/cluster", &[], None)
                .await?;
            if args.json {
                println!("{body}");
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
                .request_json(Method::POST, "/v1/cluster/leave", &[], Some(&body))
                .await?;
            if args.json {
                println!("{reply}");
            } else {
                println!("node {} left the cluster", reply["removed"]);
            }
        }
    }
    Ok(())
}

pub async fn status(args: ClientArgs) -> anyhow::Result<()> {
    let client = args.connect()?;
    let body = client
        .request_json(Method::GET, "/v1/status", &[], None)
        .await?;
    if args.json {
        println!("{body}");
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
