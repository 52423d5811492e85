//! `shoal logs ingest`: ship log files or standard input to a stream (the
//! job Filebeat or Promtail does), with read positions that survive restarts
//! and rotation.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_client::{Client, Error};

use super::client::describe;

/// Ships `files` (or standard input, without files) to `stream`.
pub(super) async fn ship(
    client: &Client,
    stream: String,
    files: Vec<PathBuf>,
    follow: bool,
    state_file: Option<PathBuf>,
    batch: usize,
) -> anyhow::Result<()> {
    let shipper = Shipper {
        client,
        stream: stream.clone(),
        batch: batch.clamp(1, 100_000),
        sent: 0,
        started: Instant::now(),
    };
    if files.is_empty() {
        ship_stdin(shipper).await
    } else {
        let state_file = match state_file {
            Some(path) => path,
            None => default_state_file(&stream)?,
        };
        ship_files(shipper, files, follow, state_file).await
    }
}

/// An HTTP status with its reason, e.g. `429 Too Many Requests`.
fn status_text(status: u16) -> String {
    reqwest::StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string())
}

/// Sends batches of lines, in order, retrying until the node takes them.
struct Shipper<'a> {
    client: &'a Client,
    stream: String,
    batch: usize,
    sent: u64,
    started: Instant,
}

impl Shipper<'_> {
    /// A line as a record: JSON objects as they are, other text as a message
    /// stamped with the time it was read.
    fn record(line: &str) -> String {
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.trim_start().starts_with('{')
            && serde_json::from_str::<serde_json::Map<String, Value>>(trimmed).is_ok()
        {
            return trimmed.to_string();
        }
        let now = shoal_search::record::format_nanos(shoal_search::record::now_nanos());
        json!({"timestamp": now, "message": trimmed}).to_string()
    }

    /// Send one batch; returns once the node has acknowledged it. Busy or
    /// unreachable nodes are retried with backoff; the batch is never dropped.
    async fn send(&mut self, lines: &[String]) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let body: String = lines.iter().map(|line| Self::record(line) + "\n").collect();
        let mut backoff = Duration::from_millis(200);
        loop {
            let sent = self
                .client
                .ingest_raw(
                    &self.stream,
                    body.clone().into_bytes(),
                    "application/x-ndjson",
                )
                .await;
            match sent {
                Ok(answer) => {
                    for error in &answer.errors {
                        eprintln!(
                            "logs ingest: line {} of a batch refused: {}",
                            error.index, error.error
                        );
                    }
                    break;
                }
                // The node took the batch; only its answer was unreadable.
                Err(Error::Decode { .. }) => break,
                Err(Error::Api { status, .. }) if status == 429 || status >= 500 => {
                    eprintln!(
                        "logs ingest: the node is busy ({}); retrying in {backoff:?}",
                        status_text(status)
                    );
                }
                Err(Error::Api {
                    status, message, ..
                }) => {
                    bail!(
                        "the node refused the batch ({}): {message}",
                        status_text(status)
                    );
                }
                Err(e) => eprintln!("logs ingest: {}; retrying in {backoff:?}", describe(&e)),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        self.sent += lines.len() as u64;
        Ok(())
    }

    fn progress(&self, done: bool) {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        eprintln!(
            "logs ingest: {} lines sent to {} ({:.0} lines/s){}",
            self.sent,
            self.stream,
            self.sent as f64 / seconds,
            if done { ", done" } else { "" }
        );
    }
}

async fn ship_stdin(mut shipper: Shipper<'_>) -> anyhow::Result<()> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<String>(shipper.batch * 2);
    // Standard input is read on its own thread: reads block.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if sender.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut last_progress = Instant::now();
    loop {
        let mut lines = Vec::new();
        let deadline = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(deadline);
        let mut ended = false;
        while lines.len() < shipper.batch {
            tokio::select! {
                line = receiver.recv() => match line {
                    Some(line) if line.trim().is_empty() => {}
                    Some(line) => lines.push(line),
                    None => { ended = true; break; }
                },
                _ = &mut deadline => break,
            }
        }
        shipper.send(&lines).await?;
        if last_progress.elapsed() >= Duration::from_secs(5) {
            shipper.progress(false);
            last_progress = Instant::now();
        }
        if ended {
            shipper.progress(true);
            return Ok(());
        }
    }
}

/// Where reading a file stopped: its inode and the byte after the last line sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Position {
    inode: u64,
    offset: u64,
}

fn default_state_file(stream: &str) -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set; pass --state-file")?;
    Ok(home
        .join(".local/state/shoal")
        .join(format!("ingest-{stream}.json")))
}

fn load_state(path: &Path) -> anyhow::Result<BTreeMap<String, Position>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("reading positions from {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Save atomically (write, fsync, rename), so a crash leaves the old or the new positions.
fn save_state(path: &Path, state: &BTreeMap<String, Position>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        shoal_durable::create_dir_all(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let state = serde_json::to_string_pretty(state)?;
    shoal_durable::replace_file(path, state.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A file being read: the open handle (which keeps reading a renamed file
/// to its end), and the position after the last complete line.
struct Tailed {
    path: PathBuf,
    key: String,
    reader: Option<BufReader<File>>,
    position: Position,
    /// The size of a renamed file when its rename was seen with lines
    /// still unread: it is read to its end before the new file is opened.
    draining: Option<u64>,
}

impl Tailed {
    fn open(path: &Path, saved: Option<Position>) -> anyhow::Result<Tailed> {
        let key = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        let mut tailed = Tailed {
            path: path.to_path_buf(),
            key,
            reader: None,
            position: Position::default(),
            draining: None,
        };
        let Ok(file) = File::open(path) else {
            return Ok(tailed);
        };
        let inode = file.metadata()?.ino();
        match saved {
            Some(saved) if saved.inode == inode => {
                tailed.attach(file, saved)?;
            }
            Some(saved) => {
                // Rotated while we were away: finish the old file first, if it is still there.
                if let Some(old) = find_inode(path, saved.inode) {
                    eprintln!(
                        "logs ingest: {} was rotated; reading the rest of {}",
                        path.display(),
                        old.display()
                    );
                    tailed.attach(File::open(&old)?, saved)?;
                } else {
                    tailed.attach(file, Position { inode, offset: 0 })?;
                }
            }
            None => tailed.attach(file, Position { inode, offset: 0 })?,
        }
        Ok(tailed)
    }

    fn attach(&mut self, mut file: File, mut position: Position) -> anyhow::Result<()> {
        let size = file.metadata()?.len();
        if position.offset > size {
            // Truncated (copytruncate): start over.
            position.offset = 0;
        }
        file.seek(SeekFrom::Start(position.offset))?;
        self.reader = Some(BufReader::with_capacity(1 << 20, file));
        self.position = position;
        Ok(())
    }

    /// Complete lines available now (at most `max`); the position moves past them.
    fn read_lines(&mut self, max: usize) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        let Some(reader) = self.reader.as_mut() else {
            return Ok(lines);
        };
        let mut buffer = Vec::new();
        while lines.len() < max {
            buffer.clear();
            let read = reader
                .by_ref()
                .take(16 << 20)
                .read_until(b'\n', &mut buffer)?;
            if read == 0 {
                break;
            }
            if buffer.last() != Some(&b'\n') {
                // A partial line: leave it for the next read.
                reader.seek(SeekFrom::Current(-(read as i64)))?;
                break;
            }
            self.position.offset += read as u64;
            let line = String::from_utf8_lossy(&buffer)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            if !line.trim().is_empty() {
                lines.push(line);
            }
        }
        Ok(lines)
    }

    /// After reaching the end: follow a rename (a new file at the path) or a truncation.
    fn check_rotation(&mut self) -> anyhow::Result<bool> {
        let current = std::fs::metadata(&self.path).ok();
        match (&self.reader, current) {
            (None, Some(_)) => {
                let file = File::open(&self.path)?;
                let inode = file.metadata()?.ino();
                self.attach(file, Position { inode, offset: 0 })?;
                Ok(true)
            }
            (Some(reader), Some(meta)) if meta.ino() != self.position.inode => {
                // Renamed. Lines written to the old file between our last read
                // and the rename are still to be read: read again first (until
                // the old file stops growing; a partial last line stays behind).
                let old_len = reader.get_ref().metadata()?.len();
                if old_len > self.position.offset && self.draining != Some(old_len) {
                    self.draining = Some(old_len);
                    return Ok(false);
                }
                self.draining = None;
                let file = File::open(&self.path)?;
                self.attach(
                    file,
                    Position {
                        inode: meta.ino(),
                        offset: 0,
                    },
                )?;
                Ok(true)
            }
            (Some(_), Some(meta)) if meta.len() < self.position.offset => {
                let file = File::open(&self.path)?;
                self.attach(
                    file,
                    Position {
                        inode: meta.ino(),
                        offset: 0,
                    },
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A file in the same directory with this inode (where a rotated file went).
fn find_inode(path: &Path, inode: u64) -> Option<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == inode))
}

async fn ship_files(
    mut shipper: Shipper<'_>,
    files: Vec<PathBuf>,
    follow: bool,
    state_file: PathBuf,
) -> anyhow::Result<()> {
    let mut state = if follow {
        load_state(&state_file)?
    } else {
        BTreeMap::new()
    };
    let mut tailed = Vec::new();
    for path in &files {
        if !follow && !path.is_file() {
            bail!("{} is not a readable file", path.display());
        }
        let key = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string();
        tailed.push(Tailed::open(path, state.get(&key).copied())?);
    }
    let mut last_progress = Instant::now();
    loop {
        let mut idle = true;
        for file in &mut tailed {
            loop {
                let lines = file.read_lines(shipper.batch)?;
                if lines.is_empty() {
                    break;
                }
                idle = false;
                shipper.send(&lines).await?;
                if follow {
                    // Saved only after the node acknowledged the lines.
                    state.insert(file.key.clone(), file.position);
                    save_state(&state_file, &state)?;
                }
            }
            if follow && file.check_rotation()? {
                idle = false;
                state.insert(file.key.clone(), file.position);
                save_state(&state_file, &state)?;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            shipper.progress(false);
            last_progress = Instant::now();
        }
        if !follow {
            shipper.progress(true);
            return Ok(());
        }
        if idle {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
