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
    /// The TLS port in front of the broker, when started with
    /// [`Kafka::start_behind_tls`], and the task that serves it.
    tls: Option<(u16, tokio::task::JoinHandle<()>)>,
    // Holds the log; removed after the process is gone.
    dir: TempDir,
}

impl Kafka {
    /// Starts a broker on a free port and waits until it accepts TCP.
    pub async fn start() -> Kafka {
        let port = free_port();
        Kafka::spawn(port, port).await
    }

    /// A broker reached only over TLS with `certificate`: tansu (which does
    /// not speak TLS itself) behind a TLS endpoint of the test's own, which
    /// the broker advertises as its address, so that every connection a
    /// client makes (bootstrap and per-broker) is TLS.
    pub async fn start_behind_tls(certificate: &crate::tls::ServerCertificate) -> Kafka {
        let tls_port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", tls_port))
            .await
            .expect("bind the TLS port");
        let mut kafka = Kafka::spawn(free_port(), tls_port).await;
        let acceptor = crate::tls::acceptor(&certificate.certificate_pem, &certificate.key_pem);
        let backend = kafka.port;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut broker) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                });
            }
        });
        kafka.tls = Some((tls_port, task));
        kafka
    }

    /// tansu listening on `port`, advertising `advertised`.
    async fn spawn(port: u16, advertised: u16) -> Kafka {
        let bin = tansu_bin();
        let dir = tempfile::Builder::new()
            .prefix("shoal-test-kafka-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let log = File::create(dir.path().join("tansu.log")).expect("cannot create the broker log");
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
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
            tls: None,
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

    /// `127.0.0.1:PORT`, what `--kafka-brokers` takes (the TLS port for a
    /// broker behind TLS).
    pub fn brokers(&self) -> String {
        let port = self.tls.as_ref().map_or(self.port, |(port, _)| *port);
        format!("127.0.0.1:{port}")
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
        if let Some((_, task)) = self.tls.take() {
            task.abort();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
