//! One partition: the Tantivy index of one stream for one UTC day.
//!
//! Only what queries need is indexed; the whole record is stored once as
//! bincode in `doc`, so a hit is rebuilt exactly as it was ingested.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tantivy::schema::{
    Field, IndexRecordOption, JsonObjectOptions, OwnedValue, Schema, TextFieldIndexing,
    TextOptions, FAST, STORED,
};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::{Index, IndexReader, IndexSettings, ReloadPolicy, TantivyDocument};

use crate::record::Record;
use crate::SearchError;

pub(crate) const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// The fields of every partition's schema.
#[derive(Clone)]
pub(crate) struct Fields {
    pub kind: Field,
    pub ts: Field,
    pub seq: Field,
    pub level: Field,
    pub service: Field,
    pub message: Field,
    pub trace_id: Field,
    pub span_id: Field,
    pub parent_span_id: Field,
    pub name: Field,
    pub status: Field,
    pub span_kind: Field,
    pub duration: Field,
    pub attributes: Field,
    pub doc: Field,
}

pub(crate) fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    // No field norms: hits are ordered by time, never scored.
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_fieldnorms(false)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    // Attribute values are matched whole, like Elasticsearch keywords
    // (`attributes.user.id:u-42`); dotted keys (`http.method`) are indexed
    // as paths, so `attributes.http.method:GET` finds them either way.
    let json = JsonObjectOptions::default()
        .set_expand_dots_enabled()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_fieldnorms(false)
                .set_index_option(IndexRecordOption::Basic),
        );
    // Keywords: matched whole, also without field norms.
    let keyword = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_fieldnorms(false)
            .set_index_option(IndexRecordOption::Basic),
    );
    let fields = Fields {
        kind: builder.add_text_field("kind", keyword.clone() | FAST),
        ts: builder.add_i64_field("ts", FAST),
        seq: builder.add_u64_field("seq", FAST),
        level: builder.add_text_field("level", keyword.clone() | FAST),
        service: builder.add_text_field("service", keyword.clone() | FAST),
        message: builder.add_text_field("message", text),
        trace_id: builder.add_text_field("trace_id", keyword.clone()),
        span_id: builder.add_text_field("span_id", keyword.clone()),
        parent_span_id: builder.add_text_field("parent_span_id", keyword.clone()),
        name: builder.add_text_field("name", keyword.clone() | FAST),
        status: builder.add_text_field("status", keyword.clone() | FAST),
        span_kind: builder.add_text_field("span_kind", keyword),
        duration: builder.add_u64_field("duration", FAST),
        attributes: builder.add_json_field("attributes", json),
        doc: builder.add_bytes_field("doc", STORED),
    };
    (builder.build(), fields)
}

/// Stored records are compressed with zstd in 64 KiB blocks: larger blocks
/// compress repetitive log lines better, and a page of hits reads few blocks.
/// (Partitions created before keep the compressor they were made with.)
fn settings() -> IndexSettings {
    IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor::default()),
        docstore_blocksize: 64 << 10,
        ..IndexSettings::default()
    }
}

/// Days since the Unix epoch of a nanosecond timestamp.
pub(crate) fn day_of(ts_nanos: i64) -> i64 {
    ts_nanos.div_euclid(NANOS_PER_DAY)
}

/// `YYYY-MM-DD` of a day number.
pub(crate) fn day_name(day: i64) -> String {
    chrono::DateTime::from_timestamp(day * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day-{day}"))
}

/// The day of a partition directory's name (also of one being rebuilt).
pub(crate) fn parse_day_name(name: &str) -> Option<i64> {
    let name = name.strip_suffix(UPGRADING).unwrap_or(name);
    let date = chrono::NaiveDate::parse_from_str(name, "%Y-%m-%d").ok()?;
    Some(
        date.and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp()
            .div_euclid(86_400),
    )
}

/// Build the Tantivy document of a record.
pub(crate) fn document(
    fields: &Fields,
    record: &Record,
    seq: u64,
) -> Result<TantivyDocument, SearchError> {
    let mut doc = TantivyDocument::new();
    doc.add_text(fields.kind, record.kind.as_str());
    doc.add_i64(fields.ts, record.ts_nanos);
    doc.add_u64(fields.seq, seq);
    doc.add_text(fields.level, &record.level);
    doc.add_text(fields.service, &record.service);
    doc.add_text(fields.message, &record.message);
    if !record.trace_id.is_empty() {
        doc.add_text(fields.trace_id, &record.trace_id);
    }
    if !record.span_id.is_empty() {
        doc.add_text(fields.span_id, &record.span_id);
    }
    if let Some(span) = &record.span {
        if !span.parent_span_id.is_empty() {
            doc.add_text(fields.parent_span_id, &span.parent_span_id);
        }
        doc.add_text(fields.name, &record.message);
        doc.add_text(fields.status, &span.status);
        doc.add_text(fields.span_kind, &span.span_kind);
        doc.add_u64(fields.duration, span.duration_nanos);
    }
    if record.attributes.len() > 2 {
        // Ingest only lets JSON objects through; anything else is skipped, not fatal.
        // Parsed straight into Tantivy's value tree (no serde_json tree between).
        if let Ok(object @ OwnedValue::Object(_)) =
            serde_json::from_str::<OwnedValue>(&record.attributes)
        {
            doc.add_field_value(fields.attributes, &object);
        }
    }
    let stored = shoal_codec::encode(record)
        .map_err(|e| SearchError::Internal(format!("encoding a record: {e}")))?;
    doc.add_bytes(fields.doc, &stored);
    Ok(doc)
}

/// The record stored in a document.
pub(crate) fn stored_record(fields: &Fields, doc: &TantivyDocument) -> Option<Record> {
    use tantivy::schema::Value;
    let bytes = doc.get_first(fields.doc)?.as_bytes()?.to_vec();
    shoal_codec::decode(&bytes).ok()
}

/// An open partition: its index and a reader reloaded after each commit.
pub(crate) struct Partition {
    pub stream: String,
    pub day: i64,
    pub dir: PathBuf,
    pub index: Index,
    pub reader: IndexReader,
    /// The highest WAL entry whose records for this partition are committed.
    pub committed_seq: AtomicU64,
    /// Bytes on disk, refreshed by the retention pass.
    pub bytes: AtomicU64,
}

/// Every partition of the current format holds this file, with `FORMAT` in it.
const FORMAT_FILE: &str = "shoal-format";
/// Format 2 has Tantivy's sstable term dictionaries (smaller, and cheaper to
/// build and merge than the FST ones of format 1, which had no format file).
/// This build cannot search format 1, so such a partition is rebuilt from its
/// stored records when it is opened.
const FORMAT: &str = "2";
/// Suffix of a partition directory while it is rebuilt.
const UPGRADING: &str = ".upgrading";
/// A partition Tantivy could not open is renamed `<day>.set-aside-<nanos>`
/// (no longer a partition: searches and retention pass it by).
const SET_ASIDE: &str = ".set-aside-";

/// The partition's index in `dir`: opened, or created with the format file.
fn open_or_create(dir: &Path, schema: &Schema) -> Result<Index, SearchError> {
    if dir.join("meta.json").exists() {
        return Ok(Index::open_in_dir(dir)?);
    }
    let index = Index::builder()
        .schema(schema.clone())
        .settings(settings())
        .create_in_dir(dir)?;
    let format = dir.join(FORMAT_FILE);
    std::fs::write(&format, FORMAT).map_err(|e| SearchError::io(&format, e))?;
    Ok(index)
}

impl Partition {
    pub fn open(
        root: &Path,
        stream: &str,
        day: i64,
        schema: &Schema,
        fields: &Fields,
    ) -> Result<Partition, SearchError> {
        let dir = root.join(stream).join(day_name(day));
        // The old partition is moved here while it is rebuilt; if it is
        // still here, a rebuild was interrupted and starts over.
        let old = root
            .join(stream)
            .join(format!("{}{UPGRADING}", day_name(day)));
        if old.exists() {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| SearchError::io(&dir, e))?;
            }
        } else if dir.join("meta.json").exists() && !dir.join(FORMAT_FILE).exists() {
            shoal_durable::rename(&dir, &old).map_err(|e| SearchError::io(&dir, e))?;
        }
        shoal_durable::create_dir_all(&dir).map_err(|e| SearchError::io(&dir, e))?;
        let index = match open_or_create(&dir, schema) {
            // Tantivy cannot read what is there (a damaged meta.json): the
            // partition is set aside for an operator to look at, and a new
            // one takes the records that come (the WAL's first), rather than
            // every record of this stream and day being dropped.
            Err(SearchError::Index(e)) => {
                let aside = root.join(stream).join(format!(
                    "{}{SET_ASIDE}{}",
                    day_name(day),
                    crate::record::now_nanos()
                ));
                tracing::error!(
                    stream,
                    day = %day_name(day),
                    error = %e,
                    set_aside = %aside.display(),
                    "a log partition cannot be read: set aside, a new one takes its records",
                );
                metrics::counter!("shoal_logs_partitions_set_aside_total").increment(1);
                shoal_durable::rename(&dir, &aside).map_err(|e| SearchError::io(&dir, e))?;
                shoal_durable::create_dir_all(&dir).map_err(|e| SearchError::io(&dir, e))?;
                open_or_create(&dir, schema)?
            }
            opened => opened?,
        };
        if old.exists() {
            rebuild(&old, &index, fields, stream, day)?;
            std::fs::remove_dir_all(&old).map_err(|e| SearchError::io(&old, e))?;
        }
        let committed_seq = index
            .load_metas()?
            .payload
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let partition = Partition {
            stream: stream.to_string(),
            day,
            dir,
            index,
            reader,
            committed_seq: AtomicU64::new(committed_seq),
            bytes: AtomicU64::new(0),
        };
        partition.measure();
        Ok(partition)
    }

    pub fn committed_seq(&self) -> u64 {
        self.committed_seq.load(Ordering::Relaxed)
    }

    /// Refresh the on-disk size.
    pub fn measure(&self) -> u64 {
        let bytes = dir_bytes(&self.dir);
        self.bytes.store(bytes, Ordering::Relaxed);
        bytes
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

/// Re-index every record stored in the partition at `old` (an earlier
/// format) into `index`, keeping record sequence numbers and the WAL position
/// the old partition had committed.
fn rebuild(
    old: &Path,
    index: &Index,
    fields: &Fields,
    stream: &str,
    day: i64,
) -> Result<(), SearchError> {
    let old_index = Index::open_in_dir(old)?;
    let payload = old_index.load_metas()?.payload;
    let searcher = old_index.reader()?.searcher();
    let total = searcher.num_docs();
    tracing::info!(
        stream,
        day = %day_name(day),
        records = total,
        "rebuilding a log partition of an earlier format",
    );
    let started = std::time::Instant::now();
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 64 << 20)?;
    let mut done = 0u64;
    for segment in searcher.segment_readers() {
        let seqs = segment.fast_fields().u64("seq")?;
        let store = segment
            .get_store_reader(16)
            .map_err(|e| SearchError::io(old, e))?;
        for doc_id in segment.doc_ids_alive() {
            let record = stored_record(fields, &store.get(doc_id)?).ok_or_else(|| {
                SearchError::Internal(format!(
                    "a stored record in {} cannot be read",
                    old.display()
                ))
            })?;
            let seq = seqs.first(doc_id).unwrap_or(0);
            writer.add_document(document(fields, &record, seq)?)?;
            done += 1;
            if done.is_multiple_of(1_000_000) {
                tracing::info!(
                    stream,
                    day = %day_name(day),
                    done,
                    total,
                    "rebuilding a log partition",
                );
            }
        }
    }
    let mut prepared = writer.prepare_commit()?;
    if let Some(payload) = payload {
        prepared.set_payload(&payload);
    }
    prepared.commit()?;
    writer.wait_merging_threads()?;
    tracing::info!(
        stream,
        day = %day_name(day),
        records = done,
        secs = started.elapsed().as_secs_f64(),
        "rebuilt a log partition",
    );
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|items| {
            items
                .flatten()
                .filter_map(|item| item.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
