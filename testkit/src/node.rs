//! [`NodeProcess`]: a `shoal` node on 127.0.0.1 with its own ports and
//! temporary data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::process::{set_parent_death_signal, Process};
use crate::{clear_shoal_env, free_port, shoal_bin, temp_dir};

/// How long [`NodeProcess::wait_ready`] waits by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The API, Raft RPC and gossip ports of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub api: u16,
    pub rpc: u16,
    pub gossip: u16,
}

impl Ports {
    /// Three fresh ports from [`free_port`].
    pub fn free() -> Result<Ports> {
        Ok(Ports {
            api: free_port()?,
            rpc: free_port()?,
            gossip: free_port()?,
        })
    }
}

/// How a node gets its addresses and data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settings {
    /// `--data-dir`, `--api`, `--rpc`, `--gossip` flags.
    Flags,
    /// Like `Flags`, but the API address comes from `SHOAL_API` instead of `--api`.
    ApiFromEnv,
    /// A TOML file passed with `--config`, holding `data_dir`, `api`, `rpc`, `gossip`.
    ConfigFile,
}

/// What to do with the node's OpenTelemetry receivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Otlp {
    /// `SHOAL_OTLP_GRPC=off`, `SHOAL_OTLP_HTTP=off`.
    Off,
    /// On two fresh ports.
    FreshPorts,
    /// Whatever the node does by default (ports 4317 and 4318).
    NodeDefault,
}

/// Options for starting a node; see [`NodeProcess::builder`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    binary: Option<PathBuf>,
    subcommand: String,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    settings: Settings,
    ports: Option<Ports>,
    label: Option<String>,
    otlp: Otlp,
    temp_root: Option<PathBuf>,
    temp_prefix: String,
    die_with_parent: bool,
    listen_host: String,
    /// The CA that signed the node's certificate, when it serves TLS.
    tls_ca_pem: Option<Vec<u8>>,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder {
            binary: None,
            subcommand: "serve".to_string(),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            settings: Settings::Flags,
            ports: None,
            label: None,
            otlp: Otlp::Off,
            temp_root: None,
            temp_prefix: "shoal-test-".to_string(),
            die_with_parent: false,
            listen_host: "127.0.0.1".to_string(),
            tls_ca_pem: None,
        }
    }
}

impl NodeBuilder {
    /// The binary to run instead of [`shoal_bin`].
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// `serve` (the default) or `dev`.
    pub fn subcommand(mut self, subcommand: &str) -> Self {
        self.subcommand = subcommand.to_string();
        self
    }

    /// The host the API, RPC and gossip listeners bind (default
    /// `127.0.0.1`), e.g. `0.0.0.0` to test `--advertise-*`. The node is
    /// still reached on 127.0.0.1.
    pub fn listen_host(mut self, host: &str) -> Self {
        self.listen_host = host.to_string();
        self
    }

    /// Extra arguments appended to the command line, e.g. `["--snapshot-every", "20"]`.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.extra_args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// An extra environment variable for the node process (it wins over the
    /// builder's own defaults, such as the OTLP receivers being off).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.extra_env.push((name.to_string(), value.to_string()));
        self
    }

    /// How the node gets its addresses and data directory ([`Settings::Flags`]
    /// by default).
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Fixed ports (from [`free_port`]) instead of fresh ones: a cluster
    /// hands every node the gossip addresses of all the others before any of
    /// them starts.
    pub fn ports(mut self, ports: Ports) -> Self {
        self.ports = Some(ports);
        self
    }

    /// A name for the node in failure output, e.g. `"node 2"`.
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// Turns the OpenTelemetry receivers on, on two fresh ports
    /// (`--otlp-grpc 127.0.0.1:P1 --otlp-http 127.0.0.1:P2`). Without it the
    /// node runs with `SHOAL_OTLP_GRPC=off` and `SHOAL_OTLP_HTTP=off`, so
    /// parallel nodes never compete for the default ports 4317 and 4318.
    pub fn otlp(mut self) -> Self {
        self.otlp = Otlp::FreshPorts;
        self
    }

    /// Leaves the OpenTelemetry receivers as the node configures them by
    /// default (or as the extra arguments say), for a lone benchmark node.
    pub fn otlp_node_default(mut self) -> Self {
        self.otlp = Otlp::NodeDefault;
        self
    }

    /// Creates the node's temporary directory (data directory and logs)
    /// under `root` instead of the system's temporary directory, e.g. under
    /// [`crate::tmpfs_root`] for a node whose fsyncs should cost nothing.
    pub fn temp_root(mut self, root: &Path) -> Self {
        self.temp_root = Some(root.to_path_buf());
        self
    }

    /// The name prefix of the temporary directory (`shoal-test-` by default).
    pub fn temp_prefix(mut self, prefix: &str) -> Self {
        self.temp_prefix = prefix.to_string();
        self
    }

    /// The kernel kills the node when the starting thread ends (see
    /// [`set_parent_death_signal`]), for harnesses that may die without
    /// running destructors. Off by default.
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// The node serves TLS (the caller passes `--tls-cert` and `--tls-key`)
    /// with a certificate this CA (PEM) signed: its URLs are `https://` and
    /// the harness's client trusts the CA.
    pub fn https(mut self, ca_pem: &[u8]) -> Self {
        self.tls_ca_pem = Some(ca_pem.to_vec());
        self
    }

    /// Starts the process and waits until `GET /ready` answers 200 (at most
    /// [`READY_TIMEOUT`]).
    pub async fn start(self) -> Result<NodeProcess> {
        let mut node = self.spawn()?;
        node.wait_ready().await?;
        Ok(node)
    }

    /// Starts the process without waiting for it to become ready (a cluster
    /// node is not ready before the cluster has formed); see
    /// [`NodeProcess::wait_ready`].
    pub fn spawn(self) -> Result<NodeProcess> {
        let binary = match self.binary {
            Some(path) => path,
            None => shoal_bin()?,
        };
        let dir = temp_dir(&self.temp_prefix, self.temp_root.as_deref())?;
        let data_dir = dir.path().join("data");
        let ports = match self.ports {
            Some(ports) => ports,
            None => Ports::free()?,
        };
        let host = self.listen_host.clone();
        let addr = |port: u16| format!("{host}:{port}");

        let mut args = vec![self.subcommand.clone()];
        let mut env = Vec::new();
        match self.settings {
            Settings::Flags | Settings::ApiFromEnv => {
                args.extend(["--data-dir".to_string(), data_dir.display().to_string()]);
                if self.settings == Settings::Flags {
                    args.extend(["--api".to_string(), addr(ports.api)]);
                } else {
                    env.push(("SHOAL_API".to_string(), addr(ports.api)));
                }
                args.extend(["--rpc".to_string(), addr(ports.rpc)]);
                args.extend(["--gossip".to_string(), addr(ports.gossip)]);
            }
            Settings::ConfigFile => {
                let config = dir.path().join("shoal.toml");
                let contents = format!(
                    "data_dir = {}\napi = {}\nrpc = {}\ngossip = {}\n",
                    toml_string(&data_dir.display().to_string()),
                    toml_string(&addr(ports.api)),
                    toml_string(&addr(ports.rpc)),
                    toml_string(&addr(ports.gossip)),
                );
                std::fs::write(&config, contents)
                    .with_context(|| format!("cannot write {}", config.display()))?;
                args.extend(["--config".to_string(), config.display().to_string()]);
            }
        }
        let (mut otlp_grpc_port, mut otlp_http_port) = (None, None);
        match self.otlp {
            Otlp::FreshPorts => {
                let (grpc, http) = (free_port()?, free_port()?);
                args.extend([
                    "--otlp-grpc".to_string(),
                    addr(grpc),
                    "--otlp-http".to_string(),
                    addr(http),
                ]);
                (otlp_grpc_port, otlp_http_port) = (Some(grpc), Some(http));
            }
            Otlp::Off => {
                // Off unless asked for: the default ports are one per host.
                env.push(("SHOAL_OTLP_GRPC".to_string(), "off".to_string()));
                env.push(("SHOAL_OTLP_HTTP".to_string(), "off".to_string()));
            }
            Otlp::NodeDefault => {}
        }
        // Tests' webhook receivers and call targets listen on loopback,
        // which a node refuses by default; a test of that refusal sets
        // the variable to "".
        env.push((
            "SHOAL_OUTBOUND_ALLOW".to_string(),
            "127.0.0.0/8".to_string(),
        ));
        args.extend(self.extra_args);
        // Added last: the caller's own `env` wins over the defaults above.
        env.extend(self.extra_env);

        let process = Process::new(
            &dir.path().join("shoal.stdout.log"),
            &dir.path().join("shoal.stderr.log"),
        );
        let mut node = NodeProcess {
            process,
            binary,
            label: self.label,
            args,
            env,
            data_dir,
            ports,
            otlp_grpc_port,
            otlp_http_port,
            die_with_parent: self.die_with_parent,
            http: http_client(self.tls_ca_pem.as_deref())?,
            tls_ca_pem: self.tls_ca_pem,
            dir,
        };
        node.spawn()?;
        Ok(node)
    }
}

fn toml_string(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An HTTP client for a node, trusting `ca_pem` (PEM) besides the system's roots.
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5));
    if let Some(pem) = ca_pem {
        for certificate in reqwest::Certificate::from_pem_bundle(pem).context("the CA's PEM")? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().context("cannot build an HTTP client")
}

/// A `shoal` process on 127.0.0.1 with its own ports and temporary
/// directory (the data directory `DIR/data`, and the logs
/// `DIR/shoal.stdout.log` and `DIR/shoal.stderr.log`). Dropping it kills
/// the process and removes the directory; if the thread is panicking (a
/// failing test), the end of the node's log is printed first.
pub struct NodeProcess {
    process: Process,
    binary: PathBuf,
    label: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    data_dir: PathBuf,
    ports: Ports,
    otlp_grpc_port: Option<u16>,
    otlp_http_port: Option<u16>,
    die_with_parent: bool,
    /// For the readiness check only.
    http: reqwest::Client,
    tls_ca_pem: Option<Vec<u8>>,
    // Declared last so the process is gone before the directory is removed.
    dir: TempDir,
}

impl NodeProcess {
    /// Options for a node: `shoal serve` with flags on fresh ports, OTLP off.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// `shoal dev` (a single self-bootstrapping node) on fresh ports with a
    /// temporary data directory, ready. Its API is at [`NodeProcess::api_url`].
    pub async fn dev() -> Result<NodeProcess> {
        NodeProcess::builder().subcommand("dev").start().await
    }

    /// `shoal serve` (a one-node cluster of its own) on fresh ports with a
    /// temporary data directory, ready.
    pub async fn serve() -> Result<NodeProcess> {
        NodeProcess::builder().start().await
    }

    /// `http://127.0.0.1:PORT` (`https://` with [`NodeBuilder::https`]),
    /// the API base URL.
    pub fn api_url(&self) -> String {
        let scheme = if self.tls_ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.ports.api)
    }

    /// The CA given to [`NodeBuilder::https`].
    pub fn tls_ca_pem(&self) -> Option<&[u8]> {
        self.tls_ca_pem.as_deref()
    }

    /// The API base URL followed by `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.api_url(), path)
    }

    /// The node's API, RPC and gossip ports (the same after a restart).
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// `127.0.0.1:PORT` of the gossip listener (what `--seed` takes).
    pub fn gossip_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.gossip)
    }

    /// The OTLP/gRPC receiver's port, when started with [`NodeBuilder::otlp`].
    pub fn otlp_grpc_port(&self) -> Option<u16> {
        self.otlp_grpc_port
    }

    /// The OTLP/HTTP receiver's port, when started with [`NodeBuilder::otlp`].
    pub fn otlp_http_port(&self) -> Option<u16> {
        self.otlp_http_port
    }

    /// The name given with [`NodeBuilder::label`], else the API URL.
    pub fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| self.api_url())
    }

    /// The command line arguments the node runs with (without the binary).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Changes the arguments the next [`NodeProcess::restart`] uses (for
    /// example another retention setting on the same data directory).
    pub fn args_mut(&mut self) -> &mut Vec<String> {
        &mut self.args
    }

    /// The environment the node runs with on top of this process's own
    /// (inherited `SHOAL_*` variables removed).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The node's `--data-dir` (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temporary directory holding the data directory and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The underlying process (pid, signals, exit status, logs).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The underlying process, mutably.
    pub fn process_mut(&mut self) -> &mut Process {
        &mut self.process
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Whether the process was started and has not been seen to end, and is
    /// not paused: a node worth sending requests to.
    pub fn is_up(&self) -> bool {
        self.process.is_up()
    }

    /// Whether the process is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.process.is_paused()
    }

    /// How the process ended the last time it was reaped.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.process.last_exit()
    }

    fn spawn(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command.args(&self.args).current_dir(self.dir.path());
        clear_shoal_env(&mut command);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.die_with_parent {
            set_parent_death_signal(&mut command);
        }
        let header = format!("=== test harness: starting shoal {}", self.args.join(" "));
        self.process.start(&mut command, &header)
    }

    /// Polls `GET /ready` every 50 ms until it answers 200, at most
    /// [`READY_TIMEOUT`]; returns how long that took. An error (with the
    /// log's tail) if the process exits or never gets ready.
    pub async fn wait_ready(&mut self) -> Result<Duration> {
        self.wait_ready_within(READY_TIMEOUT).await
    }

    /// [`NodeProcess::wait_ready`] with another time limit.
    pub async fn wait_ready_within(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut last;
        loop {
            if self.pid().is_none() {
                bail!("wait_ready: {} is not running", self.label());
            }
            if let Some(status) = self.process.try_exit()? {
                bail!(
                    "shoal ({}) exited with {status} before becoming ready\n{}",
                    self.label(),
                    self.log_tail(40)
                );
            }
            let answer = self
                .http
                .get(self.url("/ready"))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            match answer {
                Ok(response) if response.status() == reqwest::StatusCode::OK => {
                    return Ok(started.elapsed())
                }
                Ok(response) => last = format!("/ready answered {}", response.status()),
                Err(e) => last = format!("/ready failed: {e}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "shoal ({}) was not ready after {timeout:?} (last: {last})\n{}",
                    self.label(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL the process and reap it (a paused process is killed too).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the process again with the same binary, data directory, ports,
    /// arguments and environment (killing it first if it still runs) and
    /// waits until ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.restart_no_wait()?;
        self.wait_ready().await?;
        Ok(())
    }

    /// Like [`NodeProcess::restart`] without waiting for `/ready`: a cluster
    /// node may not be ready until enough of its peers are back.
    pub fn restart_no_wait(&mut self) -> Result<()> {
        self.kill9();
        // Fresh connection pool: the old connections died with the process.
        self.http = http_client(self.tls_ca_pem.as_deref())?;
        self.spawn()
    }

    /// Deletes the data directory of a stopped node (a disk replaced, or
    /// wiped by mistake): the next start begins with nothing. The logs,
    /// kept beside the data directory, stay.
    pub fn wipe_data_dir(&mut self) -> Result<()> {
        if self.is_running() {
            bail!(
                "wipe_data_dir: {} is still running; kill it first",
                self.label()
            );
        }
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow!("cannot remove {}: {e}", self.data_dir.display())),
        }
    }

    /// Sends a signal (`libc::SIGTERM`, ...) to the running process.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        self.process.signal(signal).with_context(|| self.label())
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers
    /// nothing, like a hung machine.
    pub fn pause(&mut self) -> Result<()> {
        let label = self.label();
        self.process.pause().context(label)
    }

    /// Continues a paused process (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        let label = self.label();
        self.process.resume().context(label)
    }

    /// Sends SIGTERM (continuing the process first if it is paused) and
    /// waits up to `timeout` for it to exit. Returns the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let label = self.label();
        self.process.terminate(timeout).await.context(label)
    }

    /// Waits up to `timeout` for the process to exit by itself (after a
    /// SIGTERM, or after leaving the cluster) and reaps it. Returns the exit
    /// status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let label = self.label();
        self.process.wait_exit(timeout).await.context(label)
    }

    /// SIGTERM, up to `grace` for a clean exit, then SIGKILL; returns how
    /// the process ended, in words.
    pub fn stop(&mut self, grace: Duration) -> String {
        self.process.stop(grace)
    }

    /// The last `lines` lines of the node's stderr and stdout.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed; shoal node {}{} (data in {}):\n{}",
                self.label
                    .as_deref()
                    .map(|l| format!("{l} "))
                    .unwrap_or_default(),
                self.api_url(),
                self.dir.path().display(),
                self.log_tail(60)
            );
        }
        self.process.kill9();
    }
}
