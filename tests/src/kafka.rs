//! A Kafka-protocol broker (tansu) started per test, and Kafka helpers.
//!
//! [`Kafka::start`] runs `tansu broker` on a free local port with in-memory
//! storage and waits until it accepts TCP connections; dropping the
//! [`Kafka`] kills it (printing its log's tail if the test is failing). The
//! binary is `$SHOAL_TANSU`, else `$HOME/.cache/shoal/tools/tansu`, where
//! `./scripts/setup` (or `./scripts/kafka install`) puts it. A missing
//! binary fails the test: it is never skipped silently.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::node::free_port;

/// How long the broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the tansu binary, panicking with what to run if it is missing.
pub fn tansu_bin() -> PathBuf {
    let path = crate::node::setup_tool("SHOAL_TANSU", "tools/tansu");
    assert!(
        path.is_file(),
        "the Kafka-protocol broker tansu was not found at {}: run ./scripts/setup \
         (or ./scripts/kafka install), or set SHOAL_TANSU to its path",
        path.display()
    );
    path
}

/// A running tansu broker with in-memory storage, on its own port.
pub struct Kafka {
    child: Option<Child>,
    pub port: u16,
    // Holds the log; removed after the process is gone.
    dir: TempDir,
}

impl Kafka {
    /// Starts a broker on a free port and waits until it accepts TCP.
    pub async fn start() -> Kafka {
        let bin = tansu_bin();
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("shoal-test-kafka-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let log = File::create(dir.path().join("tansu.log")).expect("cannot create the broker log");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot share the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut kafka = Kafka {
            child: Some(child),
            port,
            dir,
        };
        kafka.wait_accepting().await;
        kafka
    }

    async fn wait_accepting(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().expect("try_wait failed") {
                    self.child = None;
                    panic!(
                        "tansu exited with {status} before accepting connections\n{}",
                        self.log_tail(30)
                    );
                }
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "tansu did not accept connections on port {} within {START_TIMEOUT:?}\n{}",
                    self.port,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:PORT`, what `--kafka-brokers` takes.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The last `lines` lines of the broker's log.
    pub fn log_tail(&self, lines: usize) -> String {
        shoal_testkit::file_tail(&self.dir.path().join("tansu.log"), lines, str::to_string)
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kafka broker on port {}:\n{}", self.port, self.log_tail(30));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
