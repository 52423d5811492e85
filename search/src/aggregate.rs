//! Counting on one node: histograms over time and top values of a field,
//! answered from the fast-field columns when the filter is only a time range
//! and a kind, else by running the filter's query with a counting collector.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Cardinality, Column, StrColumn};
use tantivy::query::EnableScoring;
use tantivy::schema::Schema;
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader, Term};

use crate::index::{Fields, Partition};
use crate::query::{build_query, relevant, KindFilter, SearchRequest, TOP_FIELDS};
use crate::record::Kind;
use crate::SearchError;

/// Most histogram buckets one aggregation returns.
pub const MAX_BUCKETS: i64 = 10_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AggregateRequest {
    /// Which records to count (its order, limit and cursor are ignored).
    pub filter: SearchRequest,
    /// Histogram bucket width in nanoseconds; none means no histogram.
    pub interval: Option<i64>,
    /// Fields to count values of (see `TOP_FIELDS`).
    pub top: Vec<String>,
    pub top_n: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub key: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Aggregation {
    pub total: u64,
    /// Bucket start (Unix nanoseconds, a multiple of the interval) -> count, only non-empty buckets.
    pub histogram: BTreeMap<i64, u64>,
    /// Field -> value -> count.
    pub top: BTreeMap<String, HashMap<String, u64>>,
}

impl Aggregation {
    /// Sum aggregations from several partitions or nodes.
    pub fn merge(parts: impl IntoIterator<Item = Aggregation>) -> Aggregation {
        let mut merged = Aggregation::default();
        for part in parts {
            merged.total += part.total;
            for (key, count) in part.histogram {
                *merged.histogram.entry(key).or_default() += count;
            }
            for (field, values) in part.top {
                let counts = merged.top.entry(field).or_default();
                for (value, count) in values {
                    *counts.entry(value).or_default() += count;
                }
            }
        }
        merged
    }

    /// The `n` most frequent values of a field, most frequent first.
    pub fn top_values(&self, field: &str, n: usize) -> Vec<Bucket> {
        let mut buckets: Vec<Bucket> = self
            .top
            .get(field)
            .map(|values| {
                values
                    .iter()
                    .map(|(key, count)| Bucket {
                        key: key.clone(),
                        count: *count,
                    })
                    .collect()
            })
            .unwrap_or_default();
        buckets.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        buckets.truncate(n);
        buckets
    }
}

/// Count matching records on this node's partitions.
pub(crate) fn count(
    partitions: Vec<Arc<Partition>>,
    schema: &Schema,
    fields: &Fields,
    request: &AggregateRequest,
) -> Result<Aggregation, SearchError> {
    let query = build_query(schema, fields, &request.filter)?;
    for field in &request.top {
        if !TOP_FIELDS.contains(&field.as_str()) {
            return Err(SearchError::InvalidQuery(format!(
                "cannot count {field:?}; one of {}",
                TOP_FIELDS.join(", ")
            )));
        }
    }
    let histogram = match request.interval {
        Some(interval) => {
            let (Some(since), Some(until)) = (request.filter.since, request.filter.until) else {
                return Err(SearchError::InvalidQuery(
                    "a histogram needs since and until".into(),
                ));
            };
            if interval <= 0 || (until - since) / interval > MAX_BUCKETS {
                return Err(SearchError::InvalidQuery(format!(
                    "the histogram would have more than {MAX_BUCKETS} buckets"
                )));
            }
            Some(Histogram::new(since, until, interval))
        }
        None => None,
    };
    let collector = Counts {
        histogram,
        top: request.top.clone(),
    };
    let by_columns = counts_by_columns(&request.filter);
    let mut parts = Vec::new();
    for partition in relevant(partitions, &request.filter) {
        let searcher = partition.reader.searcher();
        let weight = query.weight(EnableScoring::disabled_from_searcher(&searcher))?;
        for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
            let counted = match &by_columns {
                Some(kind) => collector.count_columns(segment, fields, *kind, &request.filter)?,
                None => None,
            };
            match counted {
                Some(part) => parts.push(part),
                None => parts.push(collector.collect_segment(
                    weight.as_ref(),
                    ordinal as SegmentOrdinal,
                    segment,
                )?),
            }
        }
    }
    Ok(Aggregation::merge(parts))
}

/// Whether a filter is only a time range and a kind, which the fast-field
/// columns answer without running a query (dashboards' "all records over
/// time"): then the kind to check, if any.
fn counts_by_columns(filter: &SearchRequest) -> Option<Option<&'static str>> {
    let only_time = filter.query.trim().is_empty()
        && filter.levels.is_empty()
        && filter.services.is_empty()
        && filter.trace_ids.is_empty()
        && filter.names.is_empty()
        && filter.statuses.is_empty()
        && filter.min_duration.is_none()
        && filter.max_duration.is_none()
        && filter.after.is_none()
        && filter.seq_after.is_empty();
    if !only_time {
        return None;
    }
    Some(match filter.kind {
        KindFilter::Log => Some(Kind::Log.as_str()),
        KindFilter::Span => Some(Kind::Span.as_str()),
        KindFilter::Any => None,
    })
}

/// Histogram buckets, aligned to multiples of the interval since the epoch
/// (as Elasticsearch's fixed intervals are), over [since, until).
#[derive(Clone, Copy)]
struct Histogram {
    first: i64,
    interval: i64,
    len: usize,
}

impl Histogram {
    fn new(since: i64, until: i64, interval: i64) -> Histogram {
        let first = since.div_euclid(interval) * interval;
        let last = (until - 1).div_euclid(interval) * interval;
        Histogram {
            first,
            interval,
            len: ((last - first) / interval + 1) as usize,
        }
    }

    fn slot(&self, ts: i64) -> usize {
        // Out-of-range times (which the filter excludes) land past the end.
        usize::try_from(ts.saturating_sub(self.first).div_euclid(self.interval))
            .unwrap_or(usize::MAX)
    }

    fn buckets(&self, counts: &[u64]) -> BTreeMap<i64, u64> {
        counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(slot, count)| (self.first + slot as i64 * self.interval, *count))
            .collect()
    }
}

/// Counts per histogram bucket and per value of some fields.
struct Counts {
    histogram: Option<Histogram>,
    top: Vec<String>,
}

/// Rows of a segment read per block when counting from columns.
const COLUMN_BLOCK: usize = 4096;

impl Counts {
    fn segment(&self, reader: &SegmentReader) -> tantivy::Result<CountsSegment> {
        let mut columns = Vec::new();
        for field in &self.top {
            let column = reader.fast_fields().str(field)?;
            let terms = column.as_ref().map_or(0, |c| c.num_terms());
            columns.push((field.clone(), column, vec![0; terms]));
        }
        Ok(CountsSegment {
            histogram: self.histogram,
            buckets: vec![0; self.histogram.map_or(0, |h| h.len)],
            ts: reader.fast_fields().i64("ts")?,
            columns,
            total: 0,
        })
    }

    /// Count a segment straight from its columns when every document is of
    /// the wanted kind and every column has one value per document; `None`
    /// when the segment needs the query.
    fn count_columns(
        &self,
        reader: &SegmentReader,
        fields: &Fields,
        kind: Option<&str>,
        filter: &SearchRequest,
    ) -> tantivy::Result<Option<Aggregation>> {
        if reader.num_deleted_docs() > 0 {
            return Ok(None);
        }
        let docs = reader.max_doc();
        if let Some(kind) = kind {
            let matching = reader
                .inverted_index(fields.kind)?
                .doc_freq(&Term::from_field_text(fields.kind, kind))?;
            if matching == 0 {
                return Ok(Some(Aggregation::default()));
            }
            if matching != docs {
                return Ok(None);
            }
        }
        let mut segment = self.segment(reader)?;
        let full = |column: &Column<u64>| column.get_cardinality() == Cardinality::Full;
        if segment.ts.get_cardinality() != Cardinality::Full
            || segment
                .columns
                .iter()
                .any(|(_, column, _)| column.as_ref().is_some_and(|c| !full(c.ords())))
        {
            return Ok(None);
        }
        let (since, until) = (
            filter.since.unwrap_or(i64::MIN),
            filter.until.unwrap_or(i64::MAX),
        );
        let values = segment.ts.values.clone();
        let all_in_range = values.min_value() >= since && values.max_value() < until;
        let mut ts = vec![0i64; COLUMN_BLOCK];
        let mut ords = vec![0u64; COLUMN_BLOCK];
        let mut in_range = vec![true; COLUMN_BLOCK];
        let mut start = 0u32;
        while start < docs {
            let len = COLUMN_BLOCK.min((docs - start) as usize);
            let ts = &mut ts[..len];
            values.get_range(u64::from(start), ts);
            let in_range = &mut in_range[..len];
            if !all_in_range {
                for (keep, ts) in in_range.iter_mut().zip(ts.iter()) {
                    *keep = (since..until).contains(ts);
                }
            }
            segment.total += in_range.iter().filter(|keep| **keep).count() as u64;
            if let Some(histogram) = segment.histogram {
                for (ts, _) in ts.iter().zip(in_range.iter()).filter(|(_, keep)| **keep) {
                    if let Some(count) = segment.buckets.get_mut(histogram.slot(*ts)) {
                        *count += 1;
                    }
                }
            }
            for (_, column, counts) in &mut segment.columns {
                let Some(column) = column else { continue };
                let ords = &mut ords[..len];
                column.ords().values.get_range(u64::from(start), ords);
                for (ord, _) in ords.iter().zip(in_range.iter()).filter(|(_, keep)| **keep) {
                    if let Some(count) = counts.get_mut(*ord as usize) {
                        *count += 1;
                    }
                }
            }
            start += len as u32;
        }
        Ok(Some(segment.harvest()))
    }
}

struct CountsSegment {
    histogram: Option<Histogram>,
    buckets: Vec<u64>,
    ts: Column<i64>,
    columns: Vec<(String, Option<StrColumn>, Vec<u64>)>,
    total: u64,
}

impl Collector for Counts {
    type Fruit = Aggregation;
    type Child = CountsSegment;

    fn for_segment(
        &self,
        _segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<CountsSegment> {
        self.segment(reader)
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Aggregation>) -> tantivy::Result<Aggregation> {
        Ok(Aggregation::merge(fruits))
    }
}

impl SegmentCollector for CountsSegment {
    type Fruit = Aggregation;

    fn collect(&mut self, doc: DocId, _score: Score) {
        self.total += 1;
        if let (Some(histogram), Some(ts)) = (self.histogram, self.ts.first(doc)) {
            if let Some(count) = self.buckets.get_mut(histogram.slot(ts)) {
                *count += 1;
            }
        }
        for (_, column, counts) in &mut self.columns {
            if let Some(column) = column {
                for ord in column.term_ords(doc) {
                    if let Some(count) = counts.get_mut(ord as usize) {
                        *count += 1;
                    }
                }
            }
        }
    }

    fn harvest(self) -> Aggregation {
        let mut top = BTreeMap::new();
        for (field, column, counts) in self.columns {
            let mut values = HashMap::new();
            if let Some(column) = column {
                let mut text = String::new();
                for (ord, count) in counts.into_iter().enumerate() {
                    if count > 0 && column.ord_to_str(ord as u64, &mut text).unwrap_or(false) {
                        values.insert(text.clone(), count);
                    }
                }
            }
            top.insert(field, values);
        }
        let histogram = self
            .histogram
            .map(|h| h.buckets(&self.buckets))
            .unwrap_or_default();
        Aggregation {
            total: self.total,
            histogram,
            top,
        }
    }
}
