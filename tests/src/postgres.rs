//! A PostgreSQL server started per test (Debian's `postgresql` package,
//! which `./scripts/setup` installs), and a client to look at its tables.
//!
//! [`Postgres::start`] runs `initdb` (with a password for the user `shoal`)
//! and `postgres` on a free loopback port in a temporary directory. Run as
//! root (PostgreSQL refuses that), the server runs as the `postgres` user.
//! [`Postgres::crash`] kills it the way a power cut would look to clients
//! (immediate shutdown), and [`Postgres::restart`] brings it back on the
//! same port with its data. A missing server fails the test: it is never
//! skipped.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tempfile::TempDir;

use crate::node::free_port;

/// The user the tests connect as, and its password.
pub const USER: &str = "shoal";
pub const PASSWORD: &str = "pg-test-secret";

/// How long the server may take to take connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory with PostgreSQL's server programs.
fn bin_dir() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|versions| {
            versions
                .filter_map(|v| v.ok())
                .map(|v| v.path().join("bin"))
                .filter(|bin| bin.join("postgres").is_file())
                .max()
        });
    found.unwrap_or_else(|| {
        panic!("PostgreSQL's server was not found under /usr/lib/postgresql/*/bin: run ./scripts/setup")
    })
}

/// Uid and gid to run the server as: `postgres` when this is root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: getuid and getpwnam are plain libc calls; the passwd entry
    // is read at once, before any other call could reuse it.
    unsafe {
        if libc::getuid() != 0 {
            return None;
        }
        let entry = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !entry.is_null(),
            "running as root, the PostgreSQL server needs the user postgres (created by Debian's postgresql package: run ./scripts/setup)"
        );
        Some(((*entry).pw_uid, (*entry).pw_gid))
    }
}

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    user: Option<(u32, u32)>,
}

impl Postgres {
    pub async fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("shoal-pg-")
            .tempdir()
            .expect("a temporary directory");
        let user = server_user();
        let data = dir.path().join("data");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).expect("writing the password file");
        if let Some((uid, gid)) = user {
            for path in [dir.path(), password_file.as_path()] {
                chown(path, Some(uid), Some(gid)).expect("chown for the postgres user");
            }
        }
        let mut initdb = Command::new(bin_dir().join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let output = initdb.output().expect("running initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut postgres = Postgres {
            child: None,
            port: free_port(),
            dir,
            user,
        };
        postgres.spawn().await;
        postgres
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("opening the server log");
        let mut command = Command::new(bin_dir().join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.path().display()),
            ])
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        self.child = Some(command.spawn().expect("starting postgres"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(pool) = self.try_connect().await {
                pool.close().await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not take connections within {START_TIMEOUT:?}: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL a Shoal database definition uses (no password: that comes
    /// from a KV key).
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    async fn try_connect(&self) -> Result<PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&format!(
                "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
                self.port
            ))
            .await
    }

    /// A client pool, for the test's own statements.
    pub async fn client(&self) -> PgPool {
        self.try_connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to postgres: {e}\n{}", self.log_tail()))
    }

    /// Immediate shutdown (SIGQUIT): connections drop, nothing is flushed.
    pub async fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
            }
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }

    /// Start again on the same port, with the same data.
    pub async fn restart(&mut self) {
        self.crash().await;
        self.spawn().await;
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("postgres log (tail):\n{}", self.log_tail());
        }
    }
}
