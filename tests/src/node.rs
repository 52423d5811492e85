//! Starting, killing and restarting `shoal` processes, and talking to them.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::http::{encode_key, num, Reply};
use crate::sse::WatchStream;

/// How long a node may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default timeout of one HTTP request made by the helpers.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Path of something `./scripts/setup` installs under `$HOME/.cache/shoal/`
/// (`relative`), or the path in the environment variable `var` when set.
pub fn setup_tool(var: &str, relative: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            PathBuf::from(home).join(".cache/shoal").join(relative)
        }
    }
}

/// Path of the `shoal` binary under test: `SHOAL_BIN`, else
/// `<target>/debug/shoal` next to the test executable (`<target>/debug/deps/`).
pub fn shoal_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOAL_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SHOAL_BIN points to {}, which is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("cannot find the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is not in <target>/<profile>/deps/");
    let bin = profile_dir.join(format!("shoal{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the shoal binary was not found at {}: build it with `cargo build -p shoal` \
         (same CARGO_TARGET_DIR as the tests), or set SHOAL_BIN",
        bin.display()
    );
    bin
}

/// A local port that is free for TCP and UDP right now and that this process
/// has not handed out before (so parallel tests never get the same port).
///
/// Ports come from below the kernel's ephemeral range: a port from there
/// (what binding port 0 gives) can be taken again, between this check and
/// the node binding it, as the source port of any outgoing connection on the
/// machine; that made nodes fail to start with "Address already in use".
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let below = ephemeral_ports_start();
    loop {
        let port = if below > FIRST_TEST_PORT + 1000 {
            rand::random_range(FIRST_TEST_PORT..below)
        } else {
            let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a local TCP port");
            listener.local_addr().expect("local_addr").port()
        };
        if TcpListener::bind(("127.0.0.1", port)).is_err()
            || UdpSocket::bind(("127.0.0.1", port)).is_err()
        {
            continue;
        }
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A memory-backed (tmpfs) directory for node data, where an fsync costs
/// next to nothing: `/dev/shm` if it is a writable directory, else `None`.
pub fn tmpfs_root() -> Option<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    let probe = tempfile::Builder::new()
        .prefix("shoal-probe-")
        .tempdir_in(&shm)
        .ok()?;
    drop(probe);
    Some(shm)
}

/// Where Debian's `libfaketime` package (installed by `scripts/setup`)
/// puts the multi-threaded library.
const LIBFAKETIME: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// The libfaketime library, for a node whose wall clock is off (see
/// [`clock_offset_env`]); panics with what to install if it is missing.
pub fn libfaketime() -> PathBuf {
    LIBFAKETIME
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is missing (Debian: apt-get install faketime, which ./scripts/setup does); \
                 looked in {LIBFAKETIME:?}"
            )
        })
}

/// Environment that runs a process with its wall clock `seconds` ahead (or
/// behind, if negative) under libfaketime. The monotonic clock is left
/// alone, as a real clock step (NTP, an operator) leaves it.
pub fn clock_offset_env(seconds: i64) -> Vec<(String, String)> {
    vec![
        (
            "LD_PRELOAD".to_string(),
            libfaketime().display().to_string(),
        ),
        ("FAKETIME".to_string(), format!("{seconds:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ]
}

/// Lowest port the tests pick when the ephemeral range leaves room below it.
const FIRST_TEST_PORT: u16 = 10_000;

/// First port of the kernel's range for outgoing connections' source ports.
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
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

/// Options for starting a node; see [`Node::builder`].
#[derive(Debug)]
pub struct NodeBuilder {
    subcommand: String,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    settings: Settings,
    ports: Option<(u16, u16, u16)>,
    label: Option<String>,
    otlp: bool,
    temp_root: Option<PathBuf>,
}

impl NodeBuilder {
    /// `serve` (the default) or `dev`.
    pub fn subcommand(mut self, subcommand: &str) -> Self {
        self.subcommand = subcommand.to_string();
        self
    }

    /// Extra arguments appended to the command line, e.g. `["--snapshot-every", "20"]`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An extra environment variable for the node process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.extra_env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Fixed API, RPC and gossip ports (from [`free_port`]) instead of fresh
    /// ones: a cluster hands every node the gossip addresses of all the others
    /// before any of them starts.
    pub fn ports(mut self, api: u16, rpc: u16, gossip: u16) -> Self {
        self.ports = Some((api, rpc, gossip));
        self
    }

    /// A name for the node in failure output, e.g. `"node 2"`.
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// Turns the OpenTelemetry receivers on, on two fresh ports
    /// (`--otlp-grpc 127.0.0.1:P1 --otlp-http 127.0.0.1:P2`), exposed as
    /// [`Node::otlp_grpc_port`] and [`Node::otlp_http_port`]. Without it a
    /// test node runs with `SHOAL_OTLP_GRPC=off` and `SHOAL_OTLP_HTTP=off`,
    /// so parallel tests never compete for the default ports 4317 and 4318.
    pub fn otlp(mut self) -> Self {
        self.otlp = true;
        self
    }

    /// Creates the node's temporary directory (data directory and logs)
    /// under `root` instead of the system's temporary directory, e.g. under
    /// [`tmpfs_root`] for a node whose fsyncs should cost nothing.
    pub fn temp_root(mut self, root: &Path) -> Self {
        self.temp_root = Some(root.to_path_buf());
        self
    }

    /// Starts the process and waits until `/ready` answers 200.
    pub async fn start(self) -> Node {
        let mut node = self.start_no_wait();
        node.wait_ready().await;
        node
    }

    /// Starts the process without waiting for it to become ready (a cluster
    /// node is not ready before the cluster has formed). Use
    /// [`Node::wait_ready`] to wait.
    pub fn start_no_wait(self) -> Node {
        let mut temp = tempfile::Builder::new();
        temp.prefix("shoal-test-");
        let dir = match &self.temp_root {
            Some(root) => temp.tempdir_in(root).unwrap_or_else(|e| {
                panic!(
                    "cannot create a temporary directory in {}: {e}",
                    root.display()
                )
            }),
            None => temp.tempdir().expect("cannot create a temporary directory"),
        };
        let data_dir = dir.path().join("data");
        let (api_port, rpc_port, gossip_port) = self
            .ports
            .unwrap_or_else(|| (free_port(), free_port(), free_port()));
        let addr = |port: u16| format!("127.0.0.1:{port}");

        let mut args = vec![self.subcommand.clone()];
        let mut env = Vec::new();
        match self.settings {
            Settings::Flags | Settings::ApiFromEnv => {
                args.extend(["--data-dir".to_string(), data_dir.display().to_string()]);
                if self.settings == Settings::Flags {
                    args.extend(["--api".to_string(), addr(api_port)]);
                } else {
                    env.push(("SHOAL_API".to_string(), addr(api_port)));
                }
                args.extend(["--rpc".to_string(), addr(rpc_port)]);
                args.extend(["--gossip".to_string(), addr(gossip_port)]);
            }
            Settings::ConfigFile => {
                let config = dir.path().join("shoal.toml");
                let contents = format!(
                    "data_dir = {}\napi = {}\nrpc = {}\ngossip = {}\n",
                    toml_string(&data_dir.display().to_string()),
                    toml_string(&addr(api_port)),
                    toml_string(&addr(rpc_port)),
                    toml_string(&addr(gossip_port)),
                );
                std::fs::write(&config, contents).expect("cannot write the config file");
                args.extend(["--config".to_string(), config.display().to_string()]);
            }
        }
        let (mut otlp_grpc_port, mut otlp_http_port) = (None, None);
        if self.otlp {
            let (grpc, http) = (free_port(), free_port());
            args.extend([
                "--otlp-grpc".to_string(),
                addr(grpc),
                "--otlp-http".to_string(),
                addr(http),
            ]);
            (otlp_grpc_port, otlp_http_port) = (Some(grpc), Some(http));
        } else {
            // Off unless asked for: the default ports are one per host.
            env.push(("SHOAL_OTLP_GRPC".to_string(), "off".to_string()));
            env.push(("SHOAL_OTLP_HTTP".to_string(), "off".to_string()));
        }
        args.extend(self.extra_args);
        // Added last: a test's own `env` wins over the defaults above.
        env.extend(self.extra_env);

        let mut node = Node {
            child: None,
            paused: false,
            last_exit: None,
            label: self.label,
            args,
            env,
            data_dir,
            api_port,
            rpc_port,
            gossip_port,
            otlp_grpc_port,
            otlp_http_port,
            client: new_client(),
            dir,
        };
        node.spawn();
        node
    }
}

fn toml_string(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn new_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("cannot build an HTTP client")
}

/// A running `shoal` process with its own data directory and ports. Dropping
/// it kills the process and removes the directory; if the test is panicking,
/// the end of the node's log is printed first.
pub struct Node {
    child: Option<Child>,
    /// Stopped with SIGSTOP and not yet continued.
    paused: bool,
    /// How the process ended, once the harness has reaped it.
    last_exit: Option<ExitStatus>,
    label: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    data_dir: PathBuf,
    pub api_port: u16,
    pub rpc_port: u16,
    pub gossip_port: u16,
    /// The OTLP/gRPC and OTLP/HTTP receivers' ports, when started with
    /// [`NodeBuilder::otlp`] (otherwise the receivers are off).
    pub otlp_grpc_port: Option<u16>,
    pub otlp_http_port: Option<u16>,
    client: reqwest::Client,
    // Declared last so the process is gone before the directory is removed.
    dir: TempDir,
}

impl Node {
    /// `shoal serve` with flags and no extra arguments, ready.
    pub async fn start() -> Node {
        Node::builder().start().await
    }

    /// `shoal serve` with extra arguments, ready.
    pub async fn start_with(args: &[&str]) -> Node {
        Node::builder().args(args).start().await
    }

    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            subcommand: "serve".to_string(),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            settings: Settings::Flags,
            ports: None,
            label: None,
            otlp: false,
            temp_root: None,
        }
    }

    /// The name given with [`NodeBuilder::label`], else the API endpoint.
    pub fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| self.endpoint())
    }

    /// `127.0.0.1:PORT` of the gossip listener (what `--seed` takes).
    pub fn gossip_addr(&self) -> String {
        format!("127.0.0.1:{}", self.gossip_port)
    }

    /// The command line arguments the node runs with (without the binary).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Changes the arguments the next [`Node::restart`] uses (for example
    /// another retention setting on the same data directory).
    pub fn args_mut(&mut self) -> &mut Vec<String> {
        &mut self.args
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temporary directory holding the data directory and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT` of the OTLP/HTTP receiver; panics unless the
    /// node was started with [`NodeBuilder::otlp`].
    pub fn otlp_http_endpoint(&self) -> String {
        let port = self
            .otlp_http_port
            .unwrap_or_else(|| panic!("{} was started without .otlp()", self.label()));
        format!("http://127.0.0.1:{port}")
    }

    /// `127.0.0.1:PORT` of the OTLP/gRPC receiver; panics unless the node
    /// was started with [`NodeBuilder::otlp`].
    pub fn otlp_grpc_addr(&self) -> String {
        let port = self
            .otlp_grpc_port
            .unwrap_or_else(|| panic!("{} was started without .otlp()", self.label()));
        format!("127.0.0.1:{port}")
    }

    /// `http://127.0.0.1:PORT`, the API base URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.endpoint(), path)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    fn stdout_log(&self) -> PathBuf {
        self.dir.path().join("shoal.stdout.log")
    }

    fn stderr_log(&self) -> PathBuf {
        self.dir.path().join("shoal.stderr.log")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the node is already running");
        let open_log = |path: PathBuf| -> File {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            writeln!(
                file,
                "=== test harness: starting shoal {}",
                self.args.join(" ")
            )
            .expect("cannot write to the log");
            file
        };
        let stdout = open_log(self.stdout_log());
        let stderr = open_log(self.stderr_log());
        let mut command = Command::new(shoal_bin());
        command
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        clean_env(&mut command);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", shoal_bin().display()));
        self.child = Some(child);
    }

    /// Polls `GET /ready` every 50 ms until it answers 200 (30 s at most).
    /// Panics with the log's tail if the process exits or never gets ready.
    pub async fn wait_ready(&mut self) {
        self.wait_ready_within(READY_TIMEOUT).await
    }

    /// [`Node::wait_ready`] with another time limit.
    pub async fn wait_ready_within(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().expect("try_wait failed") {
                    let pid = child.id();
                    self.child = None;
                    self.last_exit = Some(status);
                    self.remove_faketime_files(pid);
                    panic!(
                        "shoal exited with {status} before becoming ready\n{}",
                        self.log_tail(40)
                    );
                }
            } else {
                panic!("wait_ready: the node is not running");
            }
            let answer = self
                .client
                .get(self.url("/ready"))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            match answer {
                Ok(response) if response.status() == StatusCode::OK => return,
                Ok(response) => last = format!("/ready answered {}", response.status()),
                Err(e) => last = format!("/ready failed: {e}"),
            }
            if Instant::now() >= deadline {
                panic!(
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
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.last_exit = Some(status);
            }
            self.remove_faketime_files(child.id());
        }
        self.paused = false;
    }

    /// Removes the shared memory and semaphore that libfaketime creates for
    /// a process it runs in (see [`clock_offset_env`]) once the process is
    /// gone: a killed process cannot remove them itself.
    fn remove_faketime_files(&self, pid: u32) {
        let faketime = self
            .env
            .iter()
            .any(|(name, value)| name == "LD_PRELOAD" && value.contains("faketime"));
        if faketime {
            for name in [
                format!("faketime_shm_{pid}"),
                format!("sem.faketime_sem_{pid}"),
            ] {
                let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
            }
        }
    }

    /// Starts the process again with the same data directory, ports and
    /// arguments (killing it first if it still runs) and waits until ready.
    pub async fn restart(&mut self) {
        self.restart_no_wait();
        self.wait_ready().await;
    }

    /// Like [`Node::restart`] without waiting for `/ready`: a cluster node
    /// may not be ready until enough of its peers are back.
    pub fn restart_no_wait(&mut self) {
        self.kill9();
        // Fresh connection pool: the old connections died with the process.
        self.client = new_client();
        self.spawn();
    }

    /// Deletes the data directory of a stopped node (a disk replaced, or
    /// wiped by mistake): the next start begins with nothing. The logs,
    /// kept beside the data directory, stay.
    pub fn wipe_data_dir(&mut self) {
        assert!(
            !self.is_running(),
            "wipe_data_dir: {} is still running; kill it first",
            self.label()
        );
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", self.data_dir.display()),
        }
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => match child.try_wait().expect("try_wait failed") {
                None => true,
                Some(status) => {
                    let pid = child.id();
                    self.child = None;
                    self.paused = false;
                    self.last_exit = Some(status);
                    self.remove_faketime_files(pid);
                    false
                }
            },
            None => false,
        }
    }

    /// Whether the harness started the process and has not seen it end, and
    /// it is not paused: a node worth sending requests to.
    pub fn is_up(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// How the process ended the last time the harness reaped it.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`libc::SIGTERM`, ...) to the running process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("signal {signal}: {} is not running", self.label()));
        let pid = libc::pid_t::try_from(pid).expect("pid does not fit in pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, which is not reaped yet, so it cannot have been reused.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            result,
            0,
            "kill({pid}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers
    /// nothing, like a hung machine.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// Continues a paused process (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// Sends SIGTERM (continuing the process first if it is paused) and waits
    /// up to `timeout` for it to exit; panics with the log's tail if it does
    /// not. Returns the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if self.paused {
            self.resume();
        }
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the process to exit by itself (after a
    /// SIGTERM, or after leaving the cluster) and reaps it; panics with the
    /// log's tail if it is still running then. Returns the exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.child.as_mut() else {
                return self
                    .last_exit
                    .unwrap_or_else(|| panic!("wait_exit: {} was never started", self.label()));
            };
            if let Some(status) = child.try_wait().expect("try_wait failed") {
                let pid = child.id();
                self.child = None;
                self.paused = false;
                self.last_exit = Some(status);
                self.remove_faketime_files(pid);
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.label(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of the node's stdout and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |path: PathBuf| file_tail(&path, lines, strip_ansi);
        format!("{}{}", tail(self.stderr_log()), tail(self.stdout_log()))
    }

    // ----- raw requests -------------------------------------------------

    /// A request to `path` (which may include a query string) with the
    /// default timeout.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .timeout(REQUEST_TIMEOUT)
    }

    /// Sends a request and reads the whole reply; `Err` describes a failure
    /// to connect, a timeout, or a broken reply (for nodes that may be down).
    pub async fn try_send(&self, request: RequestBuilder) -> Result<Reply, String> {
        let response = request.send().await.map_err(|e| describe_error(&e))?;
        Reply::try_read(response)
            .await
            .map_err(|e| describe_error(&e))
    }

    /// `METHOD path` with a time limit, not panicking if the node does not
    /// answer.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<Reply, String> {
        self.try_send(self.client.request(method, self.url(path)).timeout(timeout))
            .await
    }

    /// Sends a request and reads the whole reply.
    pub async fn send(&self, request: RequestBuilder) -> Reply {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTP request failed: {e}\n{}", self.log_tail(20)));
        Reply::read(response).await
    }

    /// `GET path` (path may include a query string).
    pub async fn get_path(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    // ----- key/value ----------------------------------------------------

    fn kv_path(key: &str) -> String {
        format!("/v1/kv/{}", encode_key(key))
    }

    /// `PUT /v1/kv/{key}` with a time limit; `Err` if there is no reply.
    pub async fn try_put(
        &self,
        key: &str,
        value: &[u8],
        timeout: Duration,
    ) -> Result<Reply, String> {
        let request = self
            .client
            .put(self.url(&Self::kv_path(key)))
            .timeout(timeout)
            .body(value.to_vec());
        self.try_send(request).await
    }

    /// `GET /v1/kv/{key}` with query parameters and a time limit; `Err` if
    /// there is no reply.
    pub async fn try_get(
        &self,
        key: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Reply, String> {
        let request = self
            .client
            .get(self.url(&Self::kv_path(key)))
            .query(query)
            .timeout(timeout);
        self.try_send(request).await
    }

    /// `PUT /v1/kv/{key}` with query parameters; returns the reply as is.
    pub async fn put_with(&self, key: &str, value: &[u8], query: &[(&str, &str)]) -> Reply {
        let request = self
            .request(Method::PUT, &Self::kv_path(key))
            .query(query)
            .body(value.to_vec());
        self.send(request).await
    }

    /// `PUT /v1/kv/{key}`, asserting 200; returns the body.
    pub async fn put(&self, key: &str, value: &[u8]) -> Value {
        let reply = self.put_with(key, value, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "PUT {key:?}: {}",
            reply.describe()
        );
        reply.body
    }

    /// `PUT`, returning the new revision.
    pub async fn put_rev(&self, key: &str, value: &[u8]) -> u64 {
        num(&self.put(key, value).await, "/revision")
    }

    /// `GET /v1/kv/{key}` with query parameters.
    pub async fn get_with(&self, key: &str, query: &[(&str, &str)]) -> Reply {
        self.send(self.request(Method::GET, &Self::kv_path(key)).query(query))
            .await
    }

    /// `GET /v1/kv/{key}`: status and body.
    pub async fn get(&self, key: &str) -> (StatusCode, Value) {
        let reply = self.get_with(key, &[]).await;
        (reply.status, reply.body)
    }

    /// The key's `kv` object, asserting that it exists.
    pub async fn get_kv(&self, key: &str) -> Value {
        let reply = self.get_with(key, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET {key:?}: {}",
            reply.describe()
        );
        reply.body["kv"].clone()
    }

    /// `DELETE /v1/kv/{key}` with query parameters.
    pub async fn delete_with(&self, key: &str, query: &[(&str, &str)]) -> Reply {
        self.send(
            self.request(Method::DELETE, &Self::kv_path(key))
                .query(query),
        )
        .await
    }

    /// `DELETE /v1/kv/{key}`, asserting 200; returns the body.
    pub async fn delete(&self, key: &str) -> Value {
        let reply = self.delete_with(key, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "DELETE {key:?}: {}",
            reply.describe()
        );
        reply.body
    }

    /// `GET /v1/kv` with query parameters, asserting 200.
    pub async fn list(&self, query: &[(&str, &str)]) -> Reply {
        let reply = self
            .send(self.request(Method::GET, "/v1/kv").query(query))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "list {query:?}: {}",
            reply.describe()
        );
        reply
    }

    /// Every key/value object under `prefix`, following pagination.
    pub async fn list_all(&self, prefix: &str) -> Vec<Value> {
        let mut kvs = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10_000 {
            let mut query = vec![
                ("prefix", prefix.to_string()),
                ("limit", "1000".to_string()),
            ];
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let page = self.list(&query).await.body;
            kvs.extend(
                page["kvs"]
                    .as_array()
                    .expect("kvs is not an array")
                    .iter()
                    .cloned(),
            );
            if page["more"] != Value::Bool(true) {
                return kvs;
            }
            after = Some(
                page["next_after"]
                    .as_str()
                    .expect("more is true but next_after is not a string")
                    .to_string(),
            );
        }
        panic!("list_all: pagination did not end");
    }

    /// `POST /v1/txn`.
    pub async fn txn(&self, body: &Value) -> Reply {
        self.post_json("/v1/txn", body).await
    }

    // ----- node ---------------------------------------------------------

    /// `GET /v1/status`, asserting 200.
    pub async fn status(&self) -> Value {
        self.get_path("/v1/status").await.ok()
    }

    /// The current store revision, from `/v1/status`.
    pub async fn revision(&self) -> u64 {
        num(&self.status().await, "/revision")
    }

    // ----- leases -------------------------------------------------------

    /// Grants a lease, returning its id.
    pub async fn grant_lease(&self, ttl_seconds: u64) -> u64 {
        let body = self
            .post_json("/v1/leases", &json!({ "ttl_seconds": ttl_seconds }))
            .await
            .ok();
        assert_eq!(num(&body, "/ttl_seconds"), ttl_seconds, "grant: {body}");
        num(&body, "/id")
    }

    pub async fn keepalive(&self, lease: u64) -> Reply {
        self.send(self.request(Method::POST, &format!("/v1/leases/{lease}/keepalive")))
            .await
    }

    // ----- watch --------------------------------------------------------

    /// `GET /v1/watch` (SSE) without reading the stream: for error replies.
    pub async fn watch_reply(&self, query: &[(&str, &str)]) -> Reply {
        self.send(self.request(Method::GET, "/v1/watch").query(query))
            .await
    }

    /// Opens an SSE watch, asserting 200 and `text/event-stream`. With
    /// `last_event_id`, sends `Last-Event-ID` as a reconnecting client does.
    pub async fn watch(&self, query: &[(&str, &str)], last_event_id: Option<u64>) -> WatchStream {
        let mut request = self
            .client
            .get(self.url("/v1/watch"))
            .query(query)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        open_event_stream(request, &format!("watch {query:?}")).await
    }

    /// `GET /v1/watch/poll` with query parameters; the HTTP timeout is the
    /// server-side `timeout_ms` (if given) plus 10 s.
    pub async fn poll(&self, query: &[(&str, &str)]) -> Reply {
        let server_ms: u64 = query
            .iter()
            .find(|(k, _)| *k == "timeout_ms")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(30_000);
        let request = self
            .request(Method::GET, "/v1/watch/poll")
            .query(query)
            .timeout(Duration::from_millis(server_ms) + Duration::from_secs(10));
        self.send(request).await
    }
}

/// A reqwest error with its causes (the top-level message alone is often
/// just "error sending request").
fn describe_error(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        text.push_str(" (timed out)");
    }
    text
}

/// Removes terminal colour sequences (`ESC [ ... letter`) from log text.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Removes inherited `SHOAL_*` variables so the developer's environment cannot
/// change what a test starts.
fn clean_env(command: &mut Command) {
    for name in inherited_shoal_vars() {
        command.env_remove(name);
    }
}

/// Names of the `SHOAL_*` environment variables of this process.
pub(crate) fn inherited_shoal_vars() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.to_string_lossy().starts_with("SHOAL_"))
        .collect()
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed; shoal node {}{} (data in {}):\n{}",
                self.label
                    .as_deref()
                    .map(|l| format!("{l} "))
                    .unwrap_or_default(),
                self.endpoint(),
                self.dir.path().display(),
                self.log_tail(60)
            );
        }
        self.kill9();
    }
}

/// Sends a request for a Server-Sent Events stream and opens it, asserting
/// 200 and `text/event-stream`; `label` names the stream in failures.
pub async fn open_event_stream(request: RequestBuilder, label: &str) -> WatchStream {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
        .await
        .unwrap_or_else(|_| panic!("{label}: no response headers in time"))
        .unwrap_or_else(|e| panic!("{label}: request failed: {e}"));
    if response.status() != StatusCode::OK {
        let reply = Reply::read(response).await;
        panic!("{label}: expected 200, got {}", reply.describe());
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{label}: content-type is {content_type:?}"
    );
    WatchStream::new(response)
}

/// The last `lines` lines of a log file (passed through `clean`), under a
/// header naming the file; empty if the file cannot be read.
pub(crate) fn file_tail(path: &Path, lines: usize, clean: impl Fn(&str) -> String) -> String {
    let content = std::fs::read(path).unwrap_or_default();
    let content = clean(&String::from_utf8_lossy(&content));
    let all: Vec<&str> = content.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last {} lines of {} ---\n{}\n",
        all.len() - start,
        path.display(),
        all[start..].join("\n")
    )
}
