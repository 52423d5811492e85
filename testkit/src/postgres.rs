//! A PostgreSQL server started for one test or benchmark (from Debian's
//! `postgresql` package, which `./scripts/setup` installs).
//!
//! [`Postgres::start`] runs `initdb` (with a password for the user
//! [`PG_USER`]) and `postgres` on a free loopback port in a temporary
//! directory, and waits until `pg_isready` says it takes connections. Run
//! as root (PostgreSQL refuses that), the server runs as the `postgres`
//! user. [`Postgres::crash`] stops it the way a power cut looks to clients
//! (immediate shutdown: connections drop, nothing is flushed), and
//! [`Postgres::restart`] brings it back on the same port with its data. A
//! missing server is an error: it is never skipped.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::free_port;

/// The user clients connect as, and its password.
pub const PG_USER: &str = "shoal";
pub const PG_PASSWORD: &str = "pg-test-secret";

/// How long the server may take to take connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory with PostgreSQL's server programs.
fn bin_dir() -> Result<PathBuf> {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|versions| {
            versions
                .filter_map(|v| v.ok())
                .map(|v| v.path().join("bin"))
                .filter(|bin| bin.join("postgres").is_file())
                .max()
        });
    found.context(
        "PostgreSQL's server was not found under /usr/lib/postgresql/*/bin: run ./scripts/setup",
    )
}

/// Uid and gid to run the server as: `postgres` when this is root.
fn server_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: getuid and getpwnam are plain libc calls; the passwd entry
    // is read at once, before another call could reuse it.
    unsafe {
        if libc::getuid() != 0 {
            return Ok(None);
        }
        let entry = libc::getpwnam(c"postgres".as_ptr());
        if entry.is_null() {
            bail!("running as root, the PostgreSQL server needs the user postgres (created by Debian's postgresql package: run ./scripts/setup)");
        }
        Ok(Some(((*entry).pw_uid, (*entry).pw_gid)))
    }
}

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    user: Option<(u32, u32)>,
    /// Serving TLS with the certificate and key files in its directory.
    tls: bool,
}

impl Postgres {
    pub async fn start() -> Result<Postgres> {
        Postgres::start_with(None).await
    }

    /// A server that takes TLS connections with this certificate chain and
    /// key (PEM), besides plain ones.
    pub async fn start_tls(certificate_pem: &str, key_pem: &str) -> Result<Postgres> {
        Postgres::start_with(Some((certificate_pem, key_pem))).await
    }

    async fn start_with(tls: Option<(&str, &str)>) -> Result<Postgres> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("shoal-pg-").tempdir()?;
        let user = server_user()?;
        let data = dir.path().join("data");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PG_PASSWORD)?;
        if let Some((uid, gid)) = user {
            for path in [dir.path(), password_file.as_path()] {
                chown(path, Some(uid), Some(gid)).context("chown for the postgres user")?;
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                PG_USER,
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
        let output = initdb.output().context("running initdb")?;
        if !output.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        if let Some((certificate_pem, key_pem)) = tls {
            let certificate = dir.path().join("server.crt");
            let key = dir.path().join("server.key");
            std::fs::write(&certificate, certificate_pem)?;
            std::fs::write(&key, key_pem)?;
            // The server refuses a key others may read.
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if let Some((uid, gid)) = user {
                for path in [&certificate, &key] {
                    chown(path, Some(uid), Some(gid)).context("chown for the postgres user")?;
                }
            }
        }
        let mut postgres = Postgres {
            child: None,
            port: free_port()?,
            bin,
            dir,
            user,
            tls: tls.is_some(),
        };
        postgres.spawn().await?;
        Ok(postgres)
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))?;
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.path().display()),
            ])
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log);
        if self.tls {
            let file = |name: &str| self.dir.path().join(name).display().to_string();
            command
                .args(["-c", "ssl=on"])
                .args(["-c", &format!("ssl_cert_file={}", file("server.crt"))])
                .args(["-c", &format!("ssl_key_file={}", file("server.key"))]);
        }
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        self.child = Some(command.spawn().context("starting postgres")?);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "postgres did not take connections within {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL a Shoal database definition uses: no password (that comes
    /// from a KV key).
    pub fn url(&self) -> String {
        format!(
            "postgres://{PG_USER}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// The URL with the password, for the caller's own client.
    pub fn client_url(&self) -> String {
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
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
    pub async fn restart(&mut self) -> Result<()> {
        self.crash().await;
        self.spawn().await
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
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
