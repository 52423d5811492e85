//! The log engine of one node (`Logs`): opening partitions and replaying
//! the WAL, ingest through the WAL with its caps, and searches and counts
//! over the open partitions. The indexer thread is in `indexer.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::aggregate::{self, AggregateRequest, Aggregation};
use crate::index::{self, Partition, NANOS_PER_DAY};
use crate::indexer::Indexer;
use crate::query::{self, Hit, SearchRequest};
use crate::record::{self, now_nanos, Record};
use crate::state::{LogsConfig, Shared};
use crate::wal::{self, Job, Wal};
use crate::SearchError;

/// Batches waiting for the WAL thread.
const WAL_QUEUE: usize = 1024;
/// Durable batches waiting for the indexer.
const INDEX_QUEUE: usize = 256;
/// Records may be at most this far in the future.
const MAX_FUTURE_NANOS: i64 = NANOS_PER_DAY;

/// A stream on this node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StreamInfo {
    pub name: String,
    pub partitions: usize,
    pub docs: u64,
    pub bytes: u64,
    /// First and last day (`YYYY-MM-DD`) held.
    pub first_day: String,
    pub last_day: String,
}

/// The cap's slot of a new stream while its first records are written.
struct NewStreamSlot {
    shared: Arc<Shared>,
    stream: String,
    written: bool,
}

impl Drop for NewStreamSlot {
    /// Unless the records were written: a new stream without records holds no slot.
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let mut names = self.shared.stream_names();
        names.known.remove(&self.stream);
        names.publish_count();
    }
}

/// What an ingest did with a batch.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestOutcome {
    pub accepted: usize,
    /// (position in the batch, reason) of each refused record.
    pub rejected: Vec<(usize, String)>,
}

#[derive(Clone)]
pub struct Logs {
    shared: Arc<Shared>,
    wal: Arc<Wal>,
}

impl Logs {
    /// Open (or create) the engine under `config.dir`: open every partition,
    /// replay the WAL entries not yet committed, and start the indexer. Blocking.
    pub fn open(config: LogsConfig) -> Result<Logs, SearchError> {
        let (schema, fields) = index::schema();
        let index_root = config.dir.join("indexes");
        shoal_durable::create_dir_all(&index_root).map_err(|e| SearchError::io(&index_root, e))?;
        let mut partitions = BTreeMap::new();
        for stream_dir in std::fs::read_dir(&index_root)
            .map_err(|e| SearchError::io(&index_root, e))?
            .flatten()
        {
            let stream = stream_dir.file_name().to_string_lossy().to_string();
            if record::validate_stream(&stream).is_err() {
                continue;
            }
            let days: BTreeSet<i64> = std::fs::read_dir(stream_dir.path())
                .map_err(|e| SearchError::io(&stream_dir.path(), e))?
                .flatten()
                .filter_map(|day_dir| index::parse_day_name(&day_dir.file_name().to_string_lossy()))
                .collect();
            for day in days {
                match Partition::open(&index_root, &stream, day, &schema, &fields) {
                    Ok(partition) => {
                        partitions.insert((stream.clone(), day), Arc::new(partition));
                    }
                    Err(e) => {
                        tracing::error!(
                            stream,
                            day = %index::day_name(day),
                            error = %e,
                            "cannot open a log partition; skipping it",
                        )
                    }
                }
            }
        }
        let shared = Arc::new(Shared {
            schema,
            fields,
            partitions: RwLock::new(partitions),
            indexing_bytes: AtomicU64::new(0),
            index_bytes: AtomicU64::new(0),
            searchable_seq: AtomicU64::new(0),
            commit_epoch: AtomicU64::new(0),
            disk_low: Default::default(),
            streams: Default::default(),
            config,
        });
        let (to_indexer, indexer_queue) = mpsc::sync_channel(INDEX_QUEUE);
        let mut indexer = Indexer::new(shared.clone());
        let mut replayed = 0usize;
        let wal = Wal::open(
            &shared.config.dir.join("wal"),
            shared.config.limits.wal_bytes,
            WAL_QUEUE,
            to_indexer,
            &mut |entry| {
                replayed += entry.records.len();
                indexer.add(entry, true);
            },
        )?;
        let (next_seq, next_record) = wal.opened_at();
        indexer.last_seq = indexer.last_seq.max(next_seq - 1);
        indexer.next_record = indexer.next_record.max(next_record);
        indexer.commit_all();
        if replayed > 0 {
            tracing::info!(records = replayed, "replayed the log WAL");
        }
        let wal = Arc::new(wal);
        indexer.wal = Some(wal.clone());
        indexer.remove_committed_wal();
        indexer.retention();
        shared.stream_names().known = shared
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|(stream, _)| stream.clone())
            .collect();
        shared.stream_names().publish_count();
        std::thread::Builder::new()
            .name("shoal-log-indexer".into())
            .spawn(move || indexer.run(indexer_queue))
            .map_err(|e| SearchError::Internal(format!("starting the indexer thread: {e}")))?;
        Ok(Logs { shared, wal })
    }

    /// Append records to a stream: fsynced in the WAL before this returns,
    /// searchable after the next commit (about a second). Records outside
    /// retention or too far in the future are refused one by one.
    pub async fn ingest(
        &self,
        stream: &str,
        records: Vec<Record>,
    ) -> Result<IngestOutcome, SearchError> {
        record::validate_stream(stream)?;
        // The node's own streams (the audit trail above all) are small and
        // go on while the disk is low: the reserve is there for them too.
        let reserved = self.shared.stream_names().reserved.contains(stream);
        self.check_limits(!reserved)?;
        let (max_age, _) = self.shared.config.retention.for_stream(stream);
        let now = now_nanos();
        let oldest = now.saturating_sub(i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX));
        let mut outcome = IngestOutcome::default();
        let mut kept = Vec::with_capacity(records.len());
        for (position, record) in records.into_iter().enumerate() {
            if record.ts_nanos < oldest {
                outcome.rejected.push((
                    position,
                    "timestamp is older than the stream's retention".into(),
                ));
            } else if record.ts_nanos > now + MAX_FUTURE_NANOS {
                outcome.rejected.push((
                    position,
                    "timestamp is more than a day in the future".into(),
                ));
            } else {
                kept.push(record);
            }
        }
        if kept.is_empty() {
            return Ok(outcome);
        }
        // A new stream's slot is given back unless its records are written
        // (the guard's drop).
        let mut slot = self.admit_stream(stream)?.then(|| NewStreamSlot {
            shared: self.shared.clone(),
            stream: stream.to_string(),
            written: false,
        });
        // In a task of its own, which a caller that gives up does not
        // cancel: records handed to the WAL are written all the same, and a
        // slot given back for them let the stream cap be passed.
        let logs = self.clone();
        let stream = stream.to_string();
        tokio::spawn(async move {
            let written = logs.write(&stream, kept, outcome).await;
            if written.is_ok() {
                if let Some(slot) = &mut slot {
                    slot.written = true;
                }
                // Another ingest that took the slot may have failed and given
                // it back after this one was admitted: the stream holds records.
                let mut names = logs.shared.stream_names();
                if names.known.insert(stream) {
                    names.publish_count();
                }
            }
            written
        })
        .await
        .map_err(|e| SearchError::Internal(format!("ingest task: {e}")))?
    }

    /// Append kept records to the WAL and wait for the fsync.
    async fn write(
        &self,
        stream: &str,
        kept: Vec<Record>,
        mut outcome: IngestOutcome,
    ) -> Result<IngestOutcome, SearchError> {
        outcome.accepted = kept.len();
        let stream = stream.to_string();
        let (stream, kept, encoded) = tokio::task::spawn_blocking(move || {
            let encoded = wal::encode_batch(&stream, &kept);
            (stream, kept, encoded)
        })
        .await
        .map_err(|e| SearchError::Internal(format!("encoding task: {e}")))?;
        let encoded = encoded?;
        let bytes = encoded.len() as u64;
        let (reply, answer) = oneshot::channel();
        self.shared
            .indexing_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        let appended = self.wal.append(Job {
            stream,
            records: kept,
            encoded,
            reply,
        });
        if let Err(e) = appended {
            self.shared
                .indexing_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            return Err(e);
        }
        match answer.await {
            Ok(Ok(_seq)) => {
                metrics::counter!("shoal_logs_ingested_records_total")
                    .increment(outcome.accepted as u64);
                metrics::counter!("shoal_logs_ingested_bytes_total").increment(bytes);
                Ok(outcome)
            }
            Ok(Err(e)) => {
                self.shared
                    .indexing_bytes
                    .fetch_sub(bytes, Ordering::Relaxed);
                Err(e)
            }
            Err(_) => Err(SearchError::Internal("the WAL thread stopped".into())),
        }
    }

    /// `Busy` when a cap is reached. Ingest checks this itself; callers check
    /// it first as well so that a refused request costs no parsing.
    pub fn check_capacity(&self) -> Result<(), SearchError> {
        self.check_limits(true)
    }

    fn check_limits(&self, disk_low_applies: bool) -> Result<(), SearchError> {
        if disk_low_applies && self.shared.disk_low.load(Ordering::Relaxed) {
            return Err(SearchError::NoSpace(
                "the node's disk is nearly full (see --min-free-disk-mb): logs are not accepted \
                 until space is freed"
                    .into(),
            ));
        }
        let limits = &self.shared.config.limits;
        let wal = self.wal.bytes();
        if wal >= limits.wal_bytes {
            return Err(SearchError::Busy(format!(
                "the log WAL holds {wal} bytes, its cap is {}",
                limits.wal_bytes
            )));
        }
        let indexing = self.shared.indexing_bytes.load(Ordering::Relaxed);
        if indexing >= limits.indexing_bytes {
            return Err(SearchError::Busy(format!(
                "{indexing} acknowledged bytes are not yet searchable, the cap is {}",
                limits.indexing_bytes
            )));
        }
        let disk = self.disk_bytes();
        if disk >= limits.disk_bytes {
            return Err(SearchError::Busy(format!(
                "log storage uses {disk} bytes, its cap is {}",
                limits.disk_bytes
            )));
        }
        Ok(())
    }

    /// A stream the node does not hold yet is taken only under the cap;
    /// whether it is new.
    fn admit_stream(&self, stream: &str) -> Result<bool, SearchError> {
        let mut names = self.shared.stream_names();
        if names.known.contains(stream) {
            return Ok(false);
        }
        let max = self.shared.config.limits.streams;
        if !names.reserved.contains(stream) && names.counted() >= max {
            metrics::counter!("shoal_logs_streams_refused_total").increment(1);
            return Err(SearchError::TooManyStreams(format!(
                "this node holds {max} log streams, the most it may (--logs-max-streams): records \
                 for a new stream are refused until retention drops one"
            )));
        }
        names.known.insert(stream.to_string());
        names.publish_count();
        Ok(true)
    }

    /// Never refuse this stream for the stream cap (the node's own records:
    /// audit, its own logs).
    pub fn reserve_stream(&self, stream: &str) {
        self.shared
            .stream_names()
            .reserved
            .insert(stream.to_string());
    }

    /// Refuse (or accept again) new records because the file system holding
    /// them is nearly full: the node's own check, not the engine's caps.
    pub fn set_disk_low(&self, low: bool) {
        self.shared.disk_low.store(low, Ordering::Relaxed);
    }

    /// The highest record seq that is searchable on this node.
    pub fn searchable_seq(&self) -> u64 {
        self.shared.searchable_seq.load(Ordering::Relaxed)
    }

    /// Where a live tail starts: the highest searchable record seq, taken
    /// between commit passes, so that every record a search can see is at
    /// or below it and every record at or below it is searchable. (During
    /// a pass, partitions already reloaded show records above
    /// `searchable_seq`: a tail starting there would send them as new.)
    pub async fn tail_position(&self) -> u64 {
        loop {
            let epoch = self.shared.commit_epoch.load(Ordering::SeqCst);
            if epoch.is_multiple_of(2) {
                let seq = self.shared.searchable_seq.load(Ordering::SeqCst);
                if self.shared.commit_epoch.load(Ordering::SeqCst) == epoch {
                    return seq;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Bytes of indexes and WAL on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.index_bytes.load(Ordering::Relaxed) + self.wal.bytes()
    }

    fn partitions(&self) -> Vec<Arc<Partition>> {
        self.shared
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Search this node's records. Runs on a blocking thread.
    pub async fn search(&self, request: SearchRequest) -> Result<Vec<Hit>, SearchError> {
        query::validate(&request)?;
        self.on_partitions("search", move |shared, partitions| {
            query::search(
                partitions,
                &shared.schema,
                &shared.fields,
                &request,
                shared.config.node_id,
            )
        })
        .await
    }

    /// Every matching record on this node, newest first, at most `max` (for
    /// SQL, whose own limits apply afterwards). Runs on a blocking thread.
    pub async fn scan(
        &self,
        mut request: SearchRequest,
        max: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        request.limit = max.max(1);
        request.order = query::SearchOrder::Newest;
        request.after = None;
        let mut check = request.clone();
        check.limit = 1;
        query::validate(&check)?;
        self.on_partitions("scan", move |shared, partitions| {
            query::search(
                partitions,
                &shared.schema,
                &shared.fields,
                &request,
                shared.config.node_id,
            )
        })
        .await
    }

    /// Count this node's matching records. Runs on a blocking thread.
    pub async fn aggregate(&self, request: AggregateRequest) -> Result<Aggregation, SearchError> {
        let mut filter = request.filter.clone();
        filter.limit = 1;
        query::validate(&filter)?;
        self.on_partitions("aggregation", move |shared, partitions| {
            aggregate::count(partitions, &shared.schema, &shared.fields, &request)
        })
        .await
    }

    /// Run `work` over this node's open partitions on a blocking thread
    /// (Tantivy reads files and burns CPU).
    async fn on_partitions<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Shared, Vec<Arc<Partition>>) -> Result<T, SearchError> + Send + 'static,
    ) -> Result<T, SearchError> {
        let logs = self.clone();
        tokio::task::spawn_blocking(move || work(&logs.shared, logs.partitions()))
            .await
            .map_err(|e| SearchError::Internal(format!("{what} task: {e}")))?
    }

    /// The streams on this node.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let mut streams: BTreeMap<String, StreamInfo> = BTreeMap::new();
        for partition in self.partitions() {
            let info = streams
                .entry(partition.stream.clone())
                .or_insert_with(|| StreamInfo {
                    name: partition.stream.clone(),
                    first_day: index::day_name(partition.day),
                    ..Default::default()
                });
            info.partitions += 1;
            info.docs += partition.num_docs();
            info.bytes += partition.bytes();
            info.last_day = index::day_name(partition.day);
        }
        streams.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::query::{Cursor, SearchOrder};
    use crate::state::{Limits, Retention};

    fn config(dir: &std::path::Path) -> LogsConfig {
        LogsConfig {
            dir: dir.to_path_buf(),
            node_id: 7,
            commit_interval: Duration::from_millis(50),
            retention: Retention {
                max_age: Duration::from_secs(7 * 86_400),
                max_bytes_per_stream: u64::MAX,
                streams: BTreeMap::new(),
            },
            limits: Limits {
                wal_bytes: 1 << 30,
                indexing_bytes: 1 << 30,
                disk_bytes: 1 << 40,
                writer_bytes: 15_000_000,
                streams: 1000,
            },
        }
    }

    fn record(ts_nanos: i64, message: &str) -> Record {
        crate::record::test_log(ts_nanos, message)
    }

    async fn all(logs: &Logs, order: SearchOrder, page: usize) -> Vec<Hit> {
        let mut out = Vec::new();
        let mut after: Option<Cursor> = None;
        loop {
            let request = SearchRequest {
                order,
                limit: page,
                after,
                ..Default::default()
            };
            let hits = logs.search(request).await.unwrap();
            let done = hits.len() < page;
            after = hits.last().map(Hit::cursor);
            out.extend(hits);
            if done {
                return out;
            }
        }
    }

    async fn wait_count(logs: &Logs, count: usize) {
        for _ in 0..200 {
            if all(logs, SearchOrder::Newest, 1000).await.len() == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never saw {count} records");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ingest_its_caller_gave_up_on_still_counts_its_new_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut one_stream = config(dir.path());
        one_stream.limits.streams = 1;
        let logs = Logs::open(one_stream).unwrap();
        // Polled once, then dropped: the caller gives up before its
        // records are written.
        let ingest = logs.ingest("first", vec![record(now_nanos(), "kept")]);
        let waker = std::task::Waker::noop();
        let polled = std::pin::pin!(ingest).poll(&mut std::task::Context::from_waker(waker));
        assert!(polled.is_pending(), "the ingest finished in its first poll");
        wait_count(&logs, 1).await;
        assert_eq!(
            logs.shared.stream_names().counted(),
            1,
            "the stream holds a record, so it counts"
        );
        let second = logs
            .ingest("second", vec![record(now_nanos(), "refused")])
            .await;
        assert!(
            matches!(second, Err(SearchError::TooManyStreams(_))),
            "a second stream passed the cap of one: {second:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cursor_pages_are_exact_with_equal_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(config(dir.path())).unwrap();
        let now = now_nanos();
        // 95 records on 3 timestamps, in several batches.
        for batch in 0..5 {
            let records = (0..19)
                .map(|i| {
                    record(
                        now - ((batch * 19 + i) % 3) as i64,
                        &format!("m{}", batch * 19 + i),
                    )
                })
                .collect();
            logs.ingest("s", records).await.unwrap();
        }
        wait_count(&logs, 95).await;
        for order in [SearchOrder::Newest, SearchOrder::Oldest] {
            let hits = all(&logs, order, 7).await;
            assert_eq!(hits.len(), 95, "{order:?}");
            let mut messages: Vec<&str> = hits.iter().map(|h| h.record.message.as_str()).collect();
            messages.sort_unstable();
            messages.dedup();
            assert_eq!(messages.len(), 95, "{order:?}: duplicates across pages");
            let keys: Vec<Cursor> = hits.iter().map(Hit::cursor).collect();
            let mut sorted = keys.clone();
            match order {
                SearchOrder::Newest => sorted.sort_by(|a, b| b.cmp(a)),
                _ => sorted.sort(),
            }
            assert_eq!(keys, sorted, "{order:?}: out of order");
        }
    }

    /// The aggregation answered from columns (a time range and a kind only)
    /// must count exactly what the query path counts, including segments
    /// that mix logs and spans and windows that cut through segments.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_from_columns_match_the_query_path() {
        use crate::query::KindFilter;
        use crate::record::{Kind, SpanInfo};
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(config(dir.path())).unwrap();
        let minute = 60_000_000_000i64;
        let now = now_nanos();
        let levels = ["info", "warn", "error"];
        let services = ["a", "b"];
        let log = |i: i64| Record {
            level: levels[i as usize % 3].into(),
            service: services[i as usize % 2].into(),
            ..record(now - i * minute, &format!("m{i}"))
        };
        // Three batches of logs, so several segments; spans only in "mixed".
        for batch in 0..3 {
            let records: Vec<Record> = (batch * 60..(batch + 1) * 60).map(log).collect();
            logs.ingest("plain", records.clone()).await.unwrap();
            let mut mixed = records;
            mixed.extend((0..7).map(|i| Record {
                kind: Kind::Span,
                span: Some(SpanInfo {
                    status: "ok".into(),
                    ..Default::default()
                }),
                ..log(batch * 60 + i * 5)
            }));
            logs.ingest("mixed", mixed).await.unwrap();
        }
        let total = 2 * 180 + 21;
        for _ in 0..200 {
            let any = AggregateRequest {
                filter: SearchRequest {
                    kind: KindFilter::Any,
                    ..Default::default()
                },
                ..Default::default()
            };
            if logs.aggregate(any).await.unwrap().total == total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let windows = [
            (now - 200 * minute, now + 1),
            (now - 95 * minute, now - 35 * minute),
            (now - 10 * minute, now - 9 * minute),
        ];
        for kind in [KindFilter::Log, KindFilter::Span, KindFilter::Any] {
            for (since, until) in windows {
                let filter = SearchRequest {
                    kind,
                    since: Some(since),
                    until: Some(until),
                    ..Default::default()
                };
                let request = |filter: SearchRequest| AggregateRequest {
                    filter,
                    interval: Some(7 * minute),
                    top: vec!["level".into(), "service".into()],
                    top_n: 10,
                };
                let by_columns = logs.aggregate(request(filter.clone())).await.unwrap();
                // Naming every level keeps the same records but needs the query.
                let levels = levels.iter().map(|l| l.to_string()).collect();
                let by_query = logs
                    .aggregate(request(SearchRequest { levels, ..filter }))
                    .await
                    .unwrap();
                let case = format!("{kind:?} {since}..{until}");
                assert!(by_columns.total > 0, "{case}: nothing counted");
                assert_eq!(by_columns.total, by_query.total, "{case}");
                assert_eq!(by_columns.histogram, by_query.histogram, "{case}");
                assert_eq!(by_columns.top, by_query.top, "{case}");
                assert_eq!(
                    by_columns.histogram.values().sum::<u64>(),
                    by_columns.total,
                    "{case}"
                );
            }
        }
    }
}
