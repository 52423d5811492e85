//! The indexer thread: adds durable WAL entries to their partitions in
//! order, commits about once a second (then the WAL behind the commits can
//! go), closes idle writers, and runs retention.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tantivy::indexer::{LogMergePolicy, UserOperation};
use tantivy::IndexWriter;

use crate::index::{self, Partition, NANOS_PER_DAY};
use crate::record::now_nanos;
use crate::state::Shared;
use crate::wal::{Entry, Wal};
use crate::SearchError;

/// Partitions with an open writer at once; the least recently written is
/// committed and closed beyond this.
const MAX_OPEN_WRITERS: usize = 8;
/// A writer idle this long is closed after its commit (frees its memory).
const WRITER_IDLE: Duration = Duration::from_secs(60);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(10);
/// Most documents handed to a Tantivy writer at once.
const INDEX_BATCH: usize = 1000;

/// Merge in larger steps than Tantivy's default (8 segments at a time, up to
/// 10 M documents): a day of logs is written once and read often, and every
/// merge level rewrites its postings and term dictionaries, which dominated
/// the indexing CPU at millions of records. Segments past 3 M documents are
/// left as they are.
fn merge_policy() -> LogMergePolicy {
    let mut policy = LogMergePolicy::default();
    policy.set_min_num_segments(12);
    policy.set_max_docs_before_merge(3_000_000);
    policy
}

/// The indexer thread's state: the open writers, and the last WAL entry added.
pub(crate) struct Indexer {
    shared: Arc<Shared>,
    pub wal: Option<Arc<Wal>>,
    writers: HashMap<(String, i64), (IndexWriter, Instant, bool)>,
    /// The last WAL entry added whole, and the record seq after it.
    pub last_seq: u64,
    pub next_record: u64,
    /// The entry being added: its seq, its stream, and the days whose
    /// records have not all gone to their writer yet.
    adding: Option<(u64, String, BTreeSet<i64>)>,
    /// WAL bytes of entries added since the last complete commit.
    uncommitted_bytes: u64,
    last_retention: Instant,
}

impl Indexer {
    pub fn new(shared: Arc<Shared>) -> Indexer {
        Indexer {
            shared,
            wal: None,
            writers: HashMap::new(),
            last_seq: 0,
            next_record: 1,
            adding: None,
            uncommitted_bytes: 0,
            last_retention: Instant::now(),
        }
    }

    pub fn run(mut self, queue: mpsc::Receiver<Entry>) {
        let interval = self.shared.config.commit_interval;
        let mut next_commit = Instant::now() + interval;
        loop {
            let wait = next_commit.saturating_duration_since(Instant::now());
            match queue.recv_timeout(wait) {
                Ok(entry) => self.add(entry, false),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.commit_all();
                    return;
                }
            }
            if Instant::now() >= next_commit {
                self.commit_all();
                self.remove_committed_wal();
                if self.last_retention.elapsed() >= RETENTION_EVERY {
                    self.retention();
                }
                next_commit = Instant::now() + interval;
            }
        }
    }

    /// Add an entry's records to their partitions. On replay, records a
    /// partition has already committed are skipped. Documents go to Tantivy
    /// in batches: one hand-over to its indexing thread per batch, not per
    /// record. The records go day by day, each day's whole: a writer closed
    /// to make room for another in the middle of the entry then holds all
    /// of the entry's records for its partition or none, and its commit
    /// says which (see [`Indexer::commit_one`]).
    pub fn add(&mut self, entry: Entry, replay: bool) {
        self.next_record = self
            .next_record
            .max(entry.first_record + entry.records.len() as u64);
        self.uncommitted_bytes += entry.bytes;
        let mut days: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, record) in entry.records.iter().enumerate() {
            days.entry(index::day_of(record.ts_nanos))
                .or_default()
                .push(i);
        }
        self.adding = Some((
            entry.seq,
            entry.stream.clone(),
            days.keys().copied().collect(),
        ));
        for (day, positions) in days {
            self.add_day(&entry, day, positions, replay);
            if let Some((_, _, days_left)) = &mut self.adding {
                days_left.remove(&day);
            }
        }
        self.adding = None;
        self.last_seq = self.last_seq.max(entry.seq);
    }

    /// The records of an entry (at `positions`) that fall on one day.
    fn add_day(&mut self, entry: &Entry, day: i64, positions: Vec<usize>, replay: bool) {
        let partition = match self.partition(&entry.stream, day) {
            Ok(partition) => partition,
            Err(e) => {
                tracing::error!(
                    stream = entry.stream,
                    error = %e,
                    records = positions.len(),
                    "cannot open a log partition; records dropped",
                );
                metrics::counter!("shoal_logs_index_errors_total")
                    .increment(positions.len() as u64);
                return;
            }
        };
        if replay && partition.committed_seq() >= entry.seq {
            return;
        }
        let mut batch: Vec<UserOperation> = Vec::new();
        for i in positions {
            let record = &entry.records[i];
            match index::document(&self.shared.fields, record, entry.first_record + i as u64) {
                Ok(doc) => batch.push(UserOperation::Add(doc)),
                Err(e) => {
                    tracing::error!(stream = entry.stream, error = %e, "cannot index a record");
                    metrics::counter!("shoal_logs_index_errors_total").increment(1);
                }
            }
            if batch.len() >= INDEX_BATCH {
                self.send(&partition, &mut batch, &entry.stream);
            }
        }
        self.send(&partition, &mut batch, &entry.stream);
    }

    /// Hand a batch of documents to its partition's writer.
    fn send(&mut self, partition: &Partition, batch: &mut Vec<UserOperation>, stream: &str) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let sent = self
            .writer(partition)
            .and_then(|w| w.run(std::mem::take(batch)).map_err(SearchError::from));
        if let Err(e) = sent {
            tracing::error!(stream, error = %e, records = count, "cannot index records");
            metrics::counter!("shoal_logs_index_errors_total").increment(count);
        }
    }

    fn partition(&self, stream: &str, day: i64) -> Result<Arc<Partition>, SearchError> {
        let key = (stream.to_string(), day);
        if let Some(partition) = self
            .shared
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(partition.clone());
        }
        let root = self.shared.config.dir.join("indexes");
        let partition = Arc::new(Partition::open(
            &root,
            stream,
            day,
            &self.shared.schema,
            &self.shared.fields,
        )?);
        self.shared
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, partition.clone());
        Ok(partition)
    }

    fn writer(&mut self, partition: &Partition) -> Result<&IndexWriter, SearchError> {
        let key = (partition.stream.clone(), partition.day);
        if !self.writers.contains_key(&key) {
            if self.writers.len() >= MAX_OPEN_WRITERS {
                self.close_least_recent();
            }
            let budget = self.shared.config.limits.writer_bytes.max(15_000_000);
            let writer: IndexWriter = partition.index.writer_with_num_threads(1, budget)?;
            writer.set_merge_policy(Box::new(merge_policy()));
            self.writers
                .insert(key.clone(), (writer, Instant::now(), false));
        }
        let (writer, used, dirty) = self
            .writers
            .get_mut(&key)
            .ok_or_else(|| SearchError::Internal("writer vanished".into()))?;
        *used = Instant::now();
        *dirty = true;
        Ok(writer)
    }

    fn close_least_recent(&mut self) {
        let Some(key) = self
            .writers
            .iter()
            .min_by_key(|(_, (_, used, _))| *used)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        self.commit_one(&key);
        // A writer whose commit failed keeps its documents (and the WAL
        // behind them stays): it is tried again at the next commit.
        if self.writers.get(&key).is_some_and(|(_, _, dirty)| !*dirty) {
            self.writers.remove(&key);
        }
    }

    /// Commit a partition's writer. Its payload is the last entry whose
    /// records for the partition are all in the commit: during an entry,
    /// the entry's own seq once the partition's day is done (or when the
    /// entry has none), else the entry before it; a restart replays the
    /// entries after it.
    fn commit_one(&mut self, key: &(String, i64)) {
        let last_seq = match &self.adding {
            Some((_, stream, days_left)) if *stream == key.0 && days_left.contains(&key.1) => {
                self.last_seq
            }
            Some((seq, _, _)) => *seq,
            None => self.last_seq,
        };
        let Some((writer, _, dirty)) = self.writers.get_mut(key) else {
            return;
        };
        if !*dirty {
            return;
        }
        let started = Instant::now();
        let committed = writer.prepare_commit().and_then(|mut prepared| {
            prepared.set_payload(&last_seq.to_string());
            prepared.commit()
        });
        // Tantivy renames its new meta.json over the old one without
        // syncing the directory: until that is done, a power cut could bring
        // back the old one after the WAL behind the commit was removed.
        let partition = self
            .shared
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let committed = committed
            .map_err(SearchError::from)
            .and_then(|_| match &partition {
                Some(partition) => shoal_durable::sync_dir(&partition.dir)
                    .map_err(|e| SearchError::io(&partition.dir, e)),
                None => Ok(()),
            });
        match committed {
            Ok(()) => {
                *dirty = false;
                if let Some(partition) = partition {
                    partition.committed_seq.store(last_seq, Ordering::Relaxed);
                    if let Err(e) = partition.reader.reload() {
                        tracing::warn!(error = %e, "cannot reload a log partition reader");
                    }
                    // Keep the disk figure (checked by ingest) current between retention passes.
                    partition.measure();
                    self.refresh_index_bytes();
                }
                metrics::histogram!("shoal_logs_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::error!(stream = key.0, error = %e, "committing a log partition failed")
            }
        }
    }

    fn refresh_index_bytes(&self) {
        let partitions = self
            .shared
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let total: u64 = partitions.values().map(|p| p.bytes()).sum();
        self.shared.index_bytes.store(total, Ordering::Relaxed);
    }

    /// Commit every partition with new records, then close idle writers.
    pub fn commit_all(&mut self) {
        self.shared.commit_epoch.fetch_add(1, Ordering::SeqCst);
        let keys: Vec<(String, i64)> = self.writers.keys().cloned().collect();
        for key in &keys {
            self.commit_one(key);
        }
        self.writers
            .retain(|_, (_, used, dirty)| *dirty || used.elapsed() < WRITER_IDLE);
        if !self.writers.values().any(|(_, _, dirty)| *dirty) {
            self.shared
                .searchable_seq
                .store(self.next_record - 1, Ordering::SeqCst);
            // Counted until committed: the indexing cap then also bounds
            // what Tantivy holds in memory before a commit.
            let counted = self.shared.indexing_bytes.load(Ordering::Relaxed);
            self.shared
                .indexing_bytes
                .fetch_sub(self.uncommitted_bytes.min(counted), Ordering::Relaxed);
            self.uncommitted_bytes = 0;
        }
        self.shared.commit_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Every entry up to the last one added is in committed indexes (when no
    /// writer is still dirty after a failed commit): its WAL can go.
    pub fn remove_committed_wal(&self) {
        if self.writers.values().any(|(_, _, dirty)| *dirty) {
            return;
        }
        if let Some(wal) = &self.wal {
            wal.remove_through(self.last_seq, self.next_record);
        }
    }

    /// Drop partitions past their stream's age, then the oldest partitions of
    /// streams over their size, and refresh the size figures.
    pub fn retention(&mut self) {
        self.last_retention = Instant::now();
        let now = now_nanos();
        let partitions: Vec<Arc<Partition>> = self
            .shared
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut by_stream: BTreeMap<String, Vec<Arc<Partition>>> = BTreeMap::new();
        for partition in partitions {
            partition.measure();
            by_stream
                .entry(partition.stream.clone())
                .or_default()
                .push(partition);
        }
        for (stream, mut partitions) in by_stream {
            let (max_age, max_bytes) = self.shared.config.retention.for_stream(&stream);
            let oldest = now.saturating_sub(i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX));
            partitions.sort_by_key(|p| p.day);
            let mut bytes: u64 = partitions.iter().map(|p| p.bytes()).sum();
            let newest = partitions.last().map(|p| p.day);
            let mut kept = partitions.len();
            for partition in partitions {
                let expired = (partition.day + 1) * NANOS_PER_DAY <= oldest;
                // The newest day is never dropped for size: it holds what was just acknowledged.
                let oversize = bytes > max_bytes && Some(partition.day) != newest;
                if expired || oversize {
                    bytes = bytes.saturating_sub(partition.bytes());
                    self.drop_partition(&partition, if expired { "age" } else { "size" });
                    kept -= 1;
                }
            }
            if kept == 0 {
                let mut names = self.shared.stream_names();
                names.known.remove(&stream);
                names.publish_count();
            }
            metrics::gauge!("shoal_logs_stream_bytes", "stream" => stream.clone())
                .set(bytes as f64);
        }
        self.refresh_index_bytes();
        metrics::gauge!("shoal_logs_index_bytes")
            .set(self.shared.index_bytes.load(Ordering::Relaxed) as f64);
        if let Some(wal) = &self.wal {
            metrics::gauge!("shoal_logs_wal_bytes").set(wal.bytes() as f64);
        }
    }

    fn drop_partition(&mut self, partition: &Partition, why: &str) {
        let key = (partition.stream.clone(), partition.day);
        if let Some((writer, _, _)) = self.writers.remove(&key) {
            // Merges still running would write into the removed directory.
            if let Err(e) = writer.wait_merging_threads() {
                tracing::warn!(error = %e, "closing a dropped partition's writer");
            }
        }
        self.shared
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        match std::fs::remove_dir_all(&partition.dir) {
            Ok(()) => {
                tracing::info!(
                    stream = key.0,
                    day = %index::day_name(key.1),
                    why,
                    "retention dropped a log partition",
                );
                metrics::counter!("shoal_logs_partitions_dropped_total", "why" => why.to_string())
                    .increment(1);
            }
            Err(e) => {
                tracing::warn!(
                    path = %partition.dir.display(),
                    error = %e,
                    "cannot remove a log partition",
                )
            }
        }
    }
}
