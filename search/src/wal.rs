//! The write-ahead log: an ingest batch is appended and fsynced here before
//! it is acknowledged, then handed to the indexer in log order.
//!
//! Segment files `wal/<first seq>.wal` hold frames: a u32 length and a
//! CRC32 of the body, then the body (u64 entry seq, u64 first record seq,
//! then the bincode of the stream name and records). One thread writes:
//! it takes every batch waiting, writes them, fsyncs once (group commit),
//! hands them to the indexer and only then answers the callers.
//! Replay reads each segment up to its first torn or corrupt frame.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

use crate::record::Record;
use crate::SearchError;

/// A segment is closed and a new one started past this size (or past an
/// eighth of the WAL cap, so that committed segments can go well before
/// the cap is reached).
const SEGMENT_BYTES: u64 = 64 << 20;
const MIN_SEGMENT_BYTES: u64 = 1 << 20;
/// At most this many batches share one fsync.
const GROUP_COMMIT_MAX: usize = 512;
const FRAME_HEADER: usize = 8;
const BODY_HEADER: usize = 16;
/// Frames larger than this are corrupt (ingest bodies are far smaller).
const MAX_FRAME_BYTES: usize = 512 << 20;

/// A durable batch, in log order.
pub(crate) struct Entry {
    pub seq: u64,
    pub first_record: u64,
    pub stream: String,
    pub records: Vec<Record>,
    /// Encoded size counted against the indexing cap (0 on replay).
    pub bytes: u64,
}

pub(crate) struct Job {
    pub stream: String,
    pub records: Vec<Record>,
    /// bincode of (stream, records), made by the caller's thread.
    pub encoded: Vec<u8>,
    pub reply: oneshot::Sender<Result<u64, SearchError>>,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
}

pub(crate) struct Wal {
    dir: PathBuf,
    jobs: mpsc::SyncSender<Job>,
    segments: Arc<Mutex<Vec<Segment>>>,
    bytes: Arc<AtomicU64>,
    /// (next entry seq, next record seq) when the log was opened.
    opened_at: (u64, u64),
}

/// Holds the counters past removed segments, so that seqs never go back.
const POSITION_FILE: &str = "position";

fn read_position(dir: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(dir.join(POSITION_FILE)).unwrap_or_default();
    let mut numbers = text
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

pub(crate) fn encode_batch(stream: &str, records: &[Record]) -> Result<Vec<u8>, SearchError> {
    shoal_codec::encode(&(stream, records))
        .map_err(|e| SearchError::Internal(format!("encoding a batch: {e}")))
}

impl Wal {
    /// Open the log in `dir`, read back every entry for replay, and start
    /// the writer thread, which passes each new entry to `indexer`.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        queue: usize,
        indexer: mpsc::SyncSender<Entry>,
        replay: &mut dyn FnMut(Entry),
    ) -> Result<Wal, SearchError> {
        shoal_durable::create_dir_all(dir).map_err(|e| SearchError::io(dir, e))?;
        let mut segments = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| SearchError::io(dir, e))? {
            let item = item.map_err(|e| SearchError::io(dir, e))?;
            let name = item.file_name().to_string_lossy().to_string();
            if name.starts_with(shoal_durable::TEMPORARY_PREFIX) {
                // A position file a crash cut short.
                let _ = std::fs::remove_file(item.path());
                continue;
            }
            if let Some(seq) = name
                .strip_suffix(".wal")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let bytes = item.metadata().map(|m| m.len()).unwrap_or(0);
                segments.push(Segment {
                    first_seq: seq,
                    path: item.path(),
                    bytes,
                });
            }
        }
        segments.sort_by_key(|s| s.first_seq);
        let (floor_seq, floor_record) = read_position(dir);
        let mut next_seq = floor_seq.max(1);
        let mut next_record = floor_record.max(1);
        for segment in &segments {
            read_segment(&segment.path, &mut |entry: Entry| {
                next_seq = next_seq.max(entry.seq + 1);
                next_record = next_record.max(entry.first_record + entry.records.len() as u64);
                replay(entry);
            })?;
        }
        // New writes go to a fresh segment: a torn tail stays where it is. A
        // segment already named for the next seq holds no valid entry (or the
        // seq would have moved past it): start it again from empty.
        segments.retain(|s| s.first_seq != next_seq);
        let current = Segment {
            first_seq: next_seq,
            path: dir.join(format!("{next_seq:020}.wal")),
            bytes: 0,
        };
        File::create(&current.path).map_err(|e| SearchError::io(&current.path, e))?;
        let file = open_segment(&current.path)?;
        segments.push(current);
        let total: u64 = segments.iter().map(|s| s.bytes).sum();
        let segments = Arc::new(Mutex::new(segments));
        let bytes = Arc::new(AtomicU64::new(total));
        let opened_at = (next_seq, next_record);
        let (jobs, receiver) = mpsc::sync_channel(queue);
        let writer = Writer {
            dir: dir.to_path_buf(),
            file: BufWriter::with_capacity(1 << 20, file),
            segments: segments.clone(),
            bytes: bytes.clone(),
            next_seq,
            next_record,
            indexer,
            segment_bytes: (max_bytes / 8).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES),
            torn: false,
        };
        std::thread::Builder::new()
            .name("shoal-log-wal".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| SearchError::Internal(format!("starting the WAL thread: {e}")))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            jobs,
            segments,
            bytes,
            opened_at,
        })
    }

    /// Queue a batch; the reply comes once it is fsynced and handed to the indexer.
    pub fn append(&self, job: Job) -> Result<(), SearchError> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => {
                SearchError::Busy("the write-ahead log queue is full".into())
            }
            mpsc::TrySendError::Disconnected(_) => {
                SearchError::Internal("the write-ahead log has stopped".into())
            }
        })
    }

    /// Bytes on disk in WAL segments.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// (next entry seq, next record seq) when the log was opened.
    pub fn opened_at(&self) -> (u64, u64) {
        self.opened_at
    }

    /// Delete the closed segments whose entries are all at or below `seq`
    /// (they are in committed indexes). `next_record` follows the last of
    /// them; both counters are saved first so that they never go back.
    pub fn remove_through(&self, seq: u64, next_record: u64) {
        let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        if !(segments.len() > 1 && segments[1].first_seq <= seq + 1) {
            return;
        }
        if let Err(e) = write_position(&self.dir, seq + 1, next_record) {
            tracing::warn!(error = %e, "cannot save the WAL position; keeping its segments");
            return;
        }
        // The last segment is the one being written; never remove it.
        while segments.len() > 1 && segments[1].first_seq <= seq + 1 {
            let segment = segments.remove(0);
            match std::fs::remove_file(&segment.path) {
                Ok(()) => {
                    self.bytes.fetch_sub(segment.bytes, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(
                        path = %segment.path.display(),
                        error = %e,
                        "cannot remove a WAL segment",
                    );
                    segments.insert(0, segment);
                    break;
                }
            }
        }
    }
}

fn write_position(dir: &Path, next_seq: u64, next_record: u64) -> std::io::Result<()> {
    let position = format!("{next_seq} {next_record}\n");
    shoal_durable::replace_file(&dir.join(POSITION_FILE), position.as_bytes())
}

fn open_segment(path: &Path) -> Result<File, SearchError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| SearchError::io(path, e))?;
    // Make the new file's directory entry durable too: entries appended
    // to a segment whose name may vanish in a power cut would be lost.
    if let Some(dir) = path.parent() {
        shoal_durable::sync_dir(dir).map_err(|e| SearchError::io(dir, e))?;
    }
    Ok(file)
}

/// Read one segment's frames; stops quietly at the first torn or corrupt one.
fn read_segment(path: &Path, each: &mut dyn FnMut(Entry)) -> Result<(), SearchError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| SearchError::io(path, e))?;
    let mut at = 0;
    while at + FRAME_HEADER <= data.len() {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let start = at + FRAME_HEADER;
        if !(BODY_HEADER..=MAX_FRAME_BYTES).contains(&len) || start + len > data.len() {
            tracing::warn!(
                path = %path.display(),
                offset = at,
                "WAL segment ends in a torn frame; ignoring the rest",
            );
            break;
        }
        let body = &data[start..start + len];
        if crc32fast::hash(body) != crc {
            tracing::warn!(
                path = %path.display(),
                offset = at,
                "WAL frame fails its checksum; ignoring the rest",
            );
            break;
        }
        let seq = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
        let first_record = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
        match shoal_codec::decode::<(String, Vec<Record>)>(&body[BODY_HEADER..]) {
            Ok((stream, records)) => each(Entry {
                seq,
                first_record,
                stream,
                records,
                bytes: 0,
            }),
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    offset = at,
                    error = %e,
                    "undecodable WAL entry; ignoring the rest",
                );
                break;
            }
        }
        at = start + len;
    }
    Ok(())
}

struct Writer {
    dir: PathBuf,
    file: BufWriter<File>,
    segments: Arc<Mutex<Vec<Segment>>>,
    bytes: Arc<AtomicU64>,
    next_seq: u64,
    next_record: u64,
    indexer: mpsc::SyncSender<Entry>,
    segment_bytes: u64,
    /// A write to the current segment failed (its last frame may be torn)
    /// and no new segment could be started: nothing more is written until
    /// one is, since replay stops at a torn frame and would not see what
    /// followed it.
    torn: bool,
}

impl Writer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < GROUP_COMMIT_MAX {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if self.torn {
                self.rotate();
                if self.torn {
                    for job in batch {
                        let _ = job.reply.send(Err(SearchError::Internal(
                            "the WAL cannot start a new segment after a failed write".into(),
                        )));
                    }
                    continue;
                }
            }
            let started = std::time::Instant::now();
            let mut assigned = Vec::with_capacity(batch.len());
            let mut written = 0u64;
            let mut result = Ok(());
            for job in &batch {
                let (seq, first_record) = (self.next_seq, self.next_record);
                self.next_seq += 1;
                self.next_record += job.records.len() as u64;
                assigned.push((seq, first_record));
                let mut header = [0u8; FRAME_HEADER + BODY_HEADER];
                header[8..16].copy_from_slice(&seq.to_le_bytes());
                header[16..24].copy_from_slice(&first_record.to_le_bytes());
                let len = (BODY_HEADER + job.encoded.len()) as u32;
                let mut crc = crc32fast::Hasher::new();
                crc.update(&header[8..]);
                crc.update(&job.encoded);
                header[0..4].copy_from_slice(&len.to_le_bytes());
                header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
                result = self
                    .file
                    .write_all(&header)
                    .and_then(|_| self.file.write_all(&job.encoded));
                if result.is_err() {
                    break;
                }
                written += (header.len() + job.encoded.len()) as u64;
            }
            let result = result
                .and_then(|_| self.file.flush())
                .and_then(|_| self.file.get_ref().sync_data());
            metrics::histogram!("shoal_logs_wal_sync_seconds")
                .record(started.elapsed().as_secs_f64());
            self.grow(written);
            if let Err(e) = result {
                tracing::error!(error = %e, "writing the log WAL failed");
                // The failed frame may be torn: continue in a new segment so that
                // replay, which stops at a torn frame, still sees later entries.
                self.torn = true;
                self.rotate();
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(SearchError::Internal(format!("writing the WAL: {e}"))));
                }
                continue;
            }
            for (job, (seq, first_record)) in batch.into_iter().zip(assigned) {
                let bytes = job.encoded.len() as u64;
                let entry = Entry {
                    seq,
                    first_record,
                    stream: job.stream,
                    records: job.records,
                    bytes,
                };
                if self.indexer.send(entry).is_err() {
                    let _ = job
                        .reply
                        .send(Err(SearchError::Internal("the indexer has stopped".into())));
                    continue;
                }
                let _ = job.reply.send(Ok(seq));
            }
            let current = self
                .segments
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last()
                .map_or(0, |s| s.bytes);
            if current >= self.segment_bytes {
                self.rotate();
            }
        }
    }

    fn grow(&self, written: u64) {
        if let Some(segment) = self
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_mut()
        {
            segment.bytes += written;
        }
        self.bytes.fetch_add(written, Ordering::Relaxed);
    }

    fn rotate(&mut self) {
        let path = self.dir.join(format!("{:020}.wal", self.next_seq));
        match open_segment(&path) {
            Ok(file) => {
                let old =
                    std::mem::replace(&mut self.file, BufWriter::with_capacity(1 << 20, file));
                // Not flushed: what it still holds belongs to a batch whose
                // callers were told it failed.
                drop(old.into_parts());
                self.torn = false;
                let segment = Segment {
                    first_seq: self.next_seq,
                    path,
                    bytes: 0,
                };
                self.segments
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(segment);
            }
            Err(e) => tracing::error!(error = %e, "cannot start a new WAL segment"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> Record {
        crate::record::test_log(1, message)
    }

    fn open(dir: &Path) -> (Wal, mpsc::Receiver<Entry>, Vec<Entry>) {
        let (to_indexer, indexed) = mpsc::sync_channel(1024);
        let mut replayed = Vec::new();
        let wal = Wal::open(dir, 1 << 30, 64, to_indexer, &mut |entry| {
            replayed.push(entry)
        })
        .unwrap();
        (wal, indexed, replayed)
    }

    fn append(wal: &Wal, messages: &[&str]) -> u64 {
        let records: Vec<Record> = messages.iter().map(|m| record(m)).collect();
        let encoded = encode_batch("s", &records).unwrap();
        let (reply, answer) = oneshot::channel();
        wal.append(Job {
            stream: "s".into(),
            records,
            encoded,
            reply,
        })
        .unwrap();
        answer.blocking_recv().unwrap().unwrap()
    }

    #[test]
    fn replay_stops_at_a_torn_tail_and_keeps_counting() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, indexed, replayed) = open(dir.path());
            assert!(replayed.is_empty());
            assert_eq!(append(&wal, &["a", "b"]), 1);
            assert_eq!(append(&wal, &["c"]), 2);
            let sent: Vec<Entry> = indexed.try_iter().collect();
            assert_eq!(
                sent.iter()
                    .map(|e| (e.seq, e.first_record))
                    .collect::<Vec<_>>(),
                vec![(1, 1), (2, 3)]
            );
        }
        // A crash in the middle of a third frame: its tail is missing.
        let segment = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "wal"))
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5]);
        std::fs::write(&segment, &bytes).unwrap();
        let (wal, _indexed, replayed) = open(dir.path());
        let messages: Vec<String> = replayed
            .iter()
            .flat_map(|e| e.records.iter().map(|r| r.message.clone()))
            .collect();
        assert_eq!(messages, ["a", "b", "c"]);
        // New entries continue the sequence in a fresh segment.
        assert_eq!(append(&wal, &["d"]), 3);
        drop(wal);
        let (_wal, _indexed, replayed) = open(dir.path());
        assert_eq!(
            replayed.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn removed_segments_keep_the_counters() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _indexed, _) = open(dir.path());
            append(&wal, &["a", "b", "c"]);
        }
        {
            // Reopening starts a new segment; the first one is now closed and removable.
            let (wal, _indexed, replayed) = open(dir.path());
            assert_eq!(replayed.len(), 1);
            wal.remove_through(1, 4);
            assert_eq!(wal.bytes(), 0);
        }
        let (wal, _indexed, replayed) = open(dir.path());
        assert!(replayed.is_empty());
        assert_eq!(wal.opened_at(), (2, 4));
        assert_eq!(append(&wal, &["d"]), 2);
    }
}
