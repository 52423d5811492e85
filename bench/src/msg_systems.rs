//! msg-bench's systems under test (NATS or Shoal, with TLS and ACLs or
//! without) and starting them: nats-server processes or Shoal nodes, one or
//! three clustered, and how the clients reach them.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use shoal_testkit::{free_port, Process};

use super::Args;
use crate::node::{spawn_logged, Node};
use crate::{acl, tls};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum System {
    /// NATS core; with `tls`, TLS to the clients and between the servers.
    Nats {
        tls: bool,
    },
    Shoal(Security),
}

/// What a Shoal deployment has switched on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Security {
    tls: bool,
    acl: bool,
}

/// NATS as the comparison with Shoal runs it.
pub(super) const NATS: System = System::Nats { tls: false };

/// Shoal as the comparison with NATS runs it.
pub(super) const SHOAL: System = System::Shoal(Security {
    tls: false,
    acl: false,
});

impl System {
    pub(super) fn name(self) -> &'static str {
        match self {
            System::Nats { tls: false } => "NATS",
            System::Nats { tls: true } => "NATS TLS",
            System::Shoal(Security { tls, acl }) => match (tls, acl) {
                (false, false) => "Shoal",
                (true, false) => "Shoal TLS",
                (false, true) => "Shoal ACL",
                (true, true) => "Shoal TLS+ACL",
            },
        }
    }

    pub(super) fn parse(target: &str) -> anyhow::Result<System> {
        let shoal = |tls, acl| System::Shoal(Security { tls, acl });
        Ok(match target {
            "nats" => NATS,
            "nats-tls" => System::Nats { tls: true },
            "shoal" => SHOAL,
            "shoal-tls" => shoal(true, false),
            "shoal-acl" => shoal(false, true),
            "shoal-tls-acl" => shoal(true, true),
            other => bail!(
                "unknown target {other:?} (nats, nats-tls, shoal, shoal-tls, shoal-acl or shoal-tls-acl)"
            ),
        })
    }

    /// The same system with security off: what a variant is set beside.
    pub(super) fn plain(self) -> System {
        match self {
            System::Nats { .. } => NATS,
            System::Shoal(_) => SHOAL,
        }
    }
}

/// A nats-server process, killed (SIGKILL) when dropped.
struct NatsServer {
    process: Process,
    pid: u32,
    url: String,
    monitor: String,
}

/// The servers are configured by file: on 127.0.0.1, with a monitoring
/// port, and with `n` > 1 routes to each other. With `certs` (the directory
/// [`tls::tls_args`] filled) they take TLS from clients and speak mutual
/// TLS to each other (route TLS has no command-line flags).
fn start_nats(
    bin: &Path,
    n: usize,
    dir: &Path,
    certs: Option<&Path>,
) -> anyhow::Result<Vec<NatsServer>> {
    let ports: Vec<(u16, u16, u16)> = (0..n)
        .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let tls = match certs {
        Some(certs) => {
            let file = |name: &str| certs.join(name).display().to_string();
            format!(
                "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\" }}\n",
                file("node.pem"),
                file("node-key.pem"),
                file("ca.pem")
            )
        }
        None => String::new(),
    };
    let mut servers = Vec::new();
    for (i, (client, monitor, cluster)) in ports.iter().enumerate() {
        let mut config = format!(
            "listen: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
             server_name: \"n{i}\"\n{tls}"
        );
        if n > 1 {
            let routes: Vec<String> = ports
                .iter()
                .filter(|p| p.2 != *cluster)
                .map(|p| format!("\"nats://127.0.0.1:{}\"", p.2))
                .collect();
            config.push_str(&format!(
                "cluster {{\nname: \"msg-bench-{}\"\nlisten: \"127.0.0.1:{cluster}\"\n\
                 routes: [{}]\n{tls}}}\n",
                std::process::id(),
                routes.join(", ")
            ));
        }
        let path = dir.join(format!("nats{i}.conf"));
        std::fs::write(&path, config)?;
        let mut command = Command::new(bin);
        command.arg("-c").arg(&path);
        let process = spawn_logged(&mut command, &dir.join(format!("nats{i}.log")))?;
        let scheme = if certs.is_some() { "tls" } else { "nats" };
        servers.push(NatsServer {
            pid: process.pid().context("nats-server is not running")?,
            process,
            url: format!("{scheme}://127.0.0.1:{client}"),
            monitor: format!("http://127.0.0.1:{monitor}"),
        });
    }
    Ok(servers)
}

/// Every server answers its monitoring port and, in a cluster, has a route to every other.
async fn wait_nats(
    servers: &mut [NatsServer],
    http: &reqwest::Client,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let want_routes = servers.len() as u64 - 1;
    for server in servers.iter_mut() {
        loop {
            if let Some(status) = server.process.try_exit()? {
                bail!("nats-server {} exited ({status})", server.url);
            }
            let routes = async {
                let routez: serde_json::Value = http
                    .get(format!("{}/routez", server.monitor))
                    .send()
                    .await?
                    .json()
                    .await?;
                anyhow::Ok(routez["num_routes"].as_u64().unwrap_or(0))
            };
            if matches!(routes.await, Ok(r) if r >= want_routes) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server {} not ready (routes) within {timeout:?}",
                    server.url
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

enum Servers {
    Nats(Vec<NatsServer>),
    Shoal(Vec<Node>),
}

/// How clients reach a Shoal deployment: TLS and a token when it has them.
#[derive(Clone, Default)]
pub(super) struct Access {
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) token: Option<String>,
}

/// One running deployment: one server, or three clustered.
pub(super) struct Deployment {
    pub(super) system: System,
    servers: Servers,
    pub(super) access: Access,
    /// For Shoal's HTTP API (trusting its CA, sending its token).
    pub(super) http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Deployment {
    pub(super) async fn start(
        system: System,
        n: usize,
        args: &Args,
        shoal_bin: &Path,
        http: &reqwest::Client,
    ) -> anyhow::Result<Deployment> {
        let dir = tempfile::Builder::new().prefix("msg-bench-").tempdir()?;
        let mut access = Access::default();
        let mut shoal_http = http.clone();
        let servers = match system {
            System::Nats { tls } => {
                let certs = if tls {
                    tls::tls_args(shoal_bin, dir.path(), true)?;
                    access.tls = Some(tls::client_config(dir.path())?);
                    Some(dir.path().join("certs"))
                } else {
                    None
                };
                let mut servers = start_nats(&args.nats_bin, n, dir.path(), certs.as_deref())?;
                wait_nats(&mut servers, http, Duration::from_secs(30)).await?;
                Servers::Nats(servers)
            }
            System::Shoal(security) => {
                let mut extra = vec!["--log-level".to_string(), "warn".to_string()];
                if security.acl {
                    extra.extend(acl::acl_args(dir.path())?);
                }
                let ca_pem = if security.tls {
                    let (tls_args, ca_pem) = tls::tls_args(shoal_bin, dir.path(), true)?;
                    extra.extend(tls_args);
                    access.tls = Some(tls::client_config(dir.path())?);
                    Some(ca_pem)
                } else {
                    None
                };
                let mut nodes = if n == 1 {
                    vec![Node::spawn_with(shoal_bin, &extra, ca_pem.as_deref())?]
                } else {
                    Node::spawn_cluster(shoal_bin, n, &extra, ca_pem.as_deref())?
                };
                for node in nodes.iter_mut() {
                    node.wait_ready(Duration::from_secs(60))
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!("shoal node {}: {e:#}\n{}", node.api, node.log_tail(20))
                        })?;
                }
                if security.acl {
                    // A service's token: publish and subscribe under bench.,
                    // list topics (to see interest), read its config.
                    let rules = serde_json::json!([
                        {"resource": "topic", "match": "bench.>", "access": "write"},
                        {"resource": "topic", "match": ">", "access": "read"},
                        {"resource": "kv", "match": "config/msg-bench/", "access": "read"},
                    ]);
                    access.token = Some(
                        acl::issue_token(&nodes[0].api, "msg-bench", rules, ca_pem.as_deref())
                            .await?,
                    );
                }
                shoal_http = acl::api_client(
                    ca_pem.as_deref(),
                    access.token.as_deref(),
                    Duration::from_secs(5),
                )?;
                // Every node knows the token (ACLs reach them through Raft).
                for node in &nodes {
                    wait_token(&shoal_http, &node.api).await?;
                }
                Servers::Shoal(nodes)
            }
        };
        Ok(Deployment {
            system,
            servers,
            access,
            http: shoal_http,
            _dir: dir,
        })
    }

    pub(super) fn len(&self) -> usize {
        match &self.servers {
            Servers::Nats(s) => s.len(),
            Servers::Shoal(n) => n.len(),
        }
    }

    pub(super) fn pids(&self) -> Vec<u32> {
        match &self.servers {
            Servers::Nats(s) => s.iter().map(|s| s.pid).collect(),
            Servers::Shoal(n) => n.iter().map(|n| n.pid).collect(),
        }
    }

    /// NATS client URL or Shoal API base URL of server `i`.
    pub(super) fn endpoint(&self, i: usize) -> String {
        match &self.servers {
            Servers::Nats(s) => s[i].url.clone(),
            Servers::Shoal(n) => n[i].api.clone(),
        }
    }

    /// WARN/ERROR lines the Shoal nodes logged.
    pub(super) fn warnings(&self) -> Vec<String> {
        match &self.servers {
            Servers::Nats(_) => Vec::new(),
            Servers::Shoal(nodes) => nodes.iter().flat_map(|n| n.log_warnings()).collect(),
        }
    }
}

/// Waits until `GET /v1/topics` on `api` answers 200 with the client's token.
async fn wait_token(http: &reqwest::Client, api: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let status = http
            .get(format!("{api}/v1/topics"))
            .send()
            .await
            .map(|r| r.status());
        match status {
            Ok(status) if status.is_success() => return Ok(()),
            _ if started.elapsed() > Duration::from_secs(30) => {
                bail!("{api} did not take the bench's token within 30 s: {status:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
