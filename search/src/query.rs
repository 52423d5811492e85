//! Searching partitions: the request shape, the Tantivy query built from it
//! (also used by the counts in `aggregate.rs`), and a collector over fast
//! fields that keeps the top hits in time order with an exact cursor.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::query_grammar::UserInputAst;
use tantivy::schema::{IndexRecordOption, Schema};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader, TantivyDocument, Term};

use crate::index::{self, Fields, Partition, NANOS_PER_DAY};
use crate::record::Record;
use crate::SearchError;

/// Most hits one search returns.
pub const MAX_LIMIT: usize = 10_000;
/// Query strings longer than this are refused (query cost limit).
pub const MAX_QUERY_BYTES: usize = 4096;
/// Fields that `top` aggregations count.
pub const TOP_FIELDS: &[&str] = &["level", "service", "status", "kind", "name"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchOrder {
    /// Newest first (by timestamp).
    #[default]
    Newest,
    /// Oldest first.
    Oldest,
    /// In the order each node received records (for live tail), oldest first.
    Ingest,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindFilter {
    #[default]
    Log,
    Span,
    Any,
}

/// The position of a hit in the cluster-wide order (timestamp, node, seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    pub ts: i64,
    pub node: u64,
    pub seq: u64,
}

impl Cursor {
    /// Opaque text form for clients.
    pub fn encode(&self) -> String {
        format!("{:x}-{:x}-{:x}", self.ts, self.node, self.seq)
    }

    pub fn decode(text: &str) -> Result<Cursor, SearchError> {
        let bad =
            || SearchError::InvalidQuery(format!("cursor {text:?} is not one this API returned"));
        let mut parts = text.split('-');
        let mut next = || parts.next().ok_or_else(bad);
        let ts = i64::from_str_radix(next()?, 16).map_err(|_| bad())?;
        let node = u64::from_str_radix(next()?, 16).map_err(|_| bad())?;
        let seq = u64::from_str_radix(next()?, 16).map_err(|_| bad())?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Cursor { ts, node, seq })
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SearchRequest {
    /// Tantivy query syntax over `message` by default; empty matches all.
    pub query: String,
    /// Streams to search; empty means all.
    pub streams: Vec<String>,
    pub kind: KindFilter,
    /// Inclusive lower and exclusive upper time bound, Unix nanoseconds.
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub levels: Vec<String>,
    pub services: Vec<String>,
    /// Records of any of these traces.
    pub trace_ids: Vec<String>,
    /// Spans: any of these names (operations) and statuses, duration bounds in nanoseconds.
    pub names: Vec<String>,
    pub statuses: Vec<String>,
    pub min_duration: Option<u64>,
    pub max_duration: Option<u64>,
    pub order: SearchOrder,
    pub limit: usize,
    /// Continue after this hit (newest/oldest order).
    pub after: Option<Cursor>,
    /// Ingest order: per node, only records with a greater seq.
    pub seq_after: BTreeMap<u64, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hit {
    pub node: u64,
    pub stream: String,
    pub seq: u64,
    pub record: Record,
}

impl Hit {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            ts: self.record.ts_nanos,
            node: self.node,
            seq: self.seq,
        }
    }
}

/// Merge hit lists from several nodes into one page in the request's order.
pub fn merge_hits(lists: Vec<Vec<Hit>>, order: SearchOrder, limit: usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = lists.into_iter().flatten().collect();
    match order {
        SearchOrder::Newest => hits.sort_by_key(|hit| std::cmp::Reverse(hit.cursor())),
        SearchOrder::Oldest | SearchOrder::Ingest => hits.sort_by_key(Hit::cursor),
    }
    hits.truncate(limit);
    hits
}

/// Check what a client may ask for before any work is done.
pub(crate) fn validate(request: &SearchRequest) -> Result<(), SearchError> {
    if request.query.len() > MAX_QUERY_BYTES {
        return Err(SearchError::InvalidQuery(format!(
            "query is {} bytes; the limit is {MAX_QUERY_BYTES}",
            request.query.len()
        )));
    }
    if request.limit == 0 || request.limit > MAX_LIMIT {
        return Err(SearchError::InvalidQuery(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    if let (Some(since), Some(until)) = (request.since, request.until) {
        if since >= until {
            return Err(SearchError::InvalidQuery(
                "since must be before until".into(),
            ));
        }
    }
    for stream in request.streams.iter().filter(|s| *s != NO_STREAM) {
        crate::record::validate_stream(stream)?;
    }
    Ok(())
}

/// A stream filter that matches nothing: no stream has this name (names do
/// not start with `_`). What a search gets for a caller who may read none
/// of the streams there are.
pub const NO_STREAM: &str = "_none";

/// The Tantivy query for a request's filters.
pub(crate) fn build_query(
    schema: &Schema,
    fields: &Fields,
    request: &SearchRequest,
) -> Result<Box<dyn Query>, SearchError> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    if !request.query.trim().is_empty() {
        let mut parser = QueryParser::new(
            schema.clone(),
            vec![fields.message],
            tantivy::tokenizer::TokenizerManager::default(),
        );
        parser.set_conjunction_by_default();
        let invalid = |e: &dyn std::fmt::Display| {
            SearchError::InvalidQuery(format!("cannot parse query {:?}: {e}", request.query))
        };
        let ast = tantivy::query_grammar::parse_query(&request.query)
            .map_err(|_| invalid(&format!("Syntax Error: {}", request.query)))?;
        let parsed = parser
            .build_query_from_user_input_ast(lift_negations(ast))
            .map_err(|e| invalid(&e))?;
        clauses.push((Occur::Must, parsed));
    }
    let term = |field, value: &str| -> Box<dyn Query> {
        Box::new(TermQuery::new(
            Term::from_field_text(field, value),
            IndexRecordOption::Basic,
        ))
    };
    let any_of = |field, values: &[String]| -> Box<dyn Query> {
        Box::new(BooleanQuery::new(
            values
                .iter()
                .map(|v| (Occur::Should, term(field, v)))
                .collect(),
        ))
    };
    match request.kind {
        KindFilter::Log => clauses.push((Occur::Must, term(fields.kind, "log"))),
        KindFilter::Span => clauses.push((Occur::Must, term(fields.kind, "span"))),
        KindFilter::Any => {}
    }
    for (field, values) in [
        (fields.level, &request.levels),
        (fields.service, &request.services),
        (fields.trace_id, &request.trace_ids),
        (fields.name, &request.names),
        (fields.status, &request.statuses),
    ] {
        if !values.is_empty() {
            clauses.push((Occur::Must, any_of(field, values)));
        }
    }
    if request.min_duration.is_some() || request.max_duration.is_some() {
        let bound = |b: Option<u64>| {
            b.map_or(Bound::Unbounded, |v| {
                Bound::Included(Term::from_field_u64(fields.duration, v))
            })
        };
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                bound(request.min_duration),
                bound(request.max_duration),
            )),
        ));
    }
    let (mut lower, mut upper) = (
        request.since.map(Bound::Included),
        request.until.map(Bound::Excluded),
    );
    // The cursor bounds the timestamp; ties are settled in the collector.
    match (request.order, request.after) {
        (SearchOrder::Newest, Some(after)) => {
            upper = Some(tighter_upper(upper, after.ts));
        }
        (SearchOrder::Oldest, Some(after)) => {
            lower = Some(tighter_lower(lower, after.ts));
        }
        _ => {}
    }
    if lower.is_some() || upper.is_some() {
        let bound = |b: Option<Bound<i64>>| match b {
            Some(Bound::Included(v)) => Bound::Included(Term::from_field_i64(fields.ts, v)),
            Some(Bound::Excluded(v)) => Bound::Excluded(Term::from_field_i64(fields.ts, v)),
            _ => Bound::Unbounded,
        };
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(bound(lower), bound(upper))),
        ));
    }
    if clauses.is_empty() {
        return Ok(Box::new(AllQuery));
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// `a AND NOT b` parses as `+a +(-b)`, and in Tantivy a clause that only
/// excludes matches nothing, so the whole query would find nothing. Lift
/// such clauses into their parent (`+a -b`), which is what the query means.
fn lift_negations(ast: UserInputAst) -> UserInputAst {
    match ast {
        UserInputAst::Clause(children) => {
            let mut lifted = Vec::with_capacity(children.len());
            for (occur, child) in children {
                match (occur, lift_negations(child)) {
                    (None | Some(Occur::Must), UserInputAst::Clause(inner))
                        if !inner.is_empty()
                            && inner.iter().all(|(o, _)| *o == Some(Occur::MustNot)) =>
                    {
                        lifted.extend(inner);
                    }
                    (occur, child) => lifted.push((occur, child)),
                }
            }
            UserInputAst::Clause(lifted)
        }
        UserInputAst::Boost(inner, boost) => {
            UserInputAst::Boost(Box::new(lift_negations(*inner)), boost)
        }
        leaf => leaf,
    }
}

fn tighter_upper(upper: Option<Bound<i64>>, ts: i64) -> Bound<i64> {
    match upper {
        Some(Bound::Excluded(u)) if u <= ts => Bound::Excluded(u),
        _ => Bound::Included(ts),
    }
}

fn tighter_lower(lower: Option<Bound<i64>>, ts: i64) -> Bound<i64> {
    match lower {
        Some(Bound::Included(l)) if l > ts => Bound::Included(l),
        _ => Bound::Included(ts),
    }
}

/// Which partitions a request may find records in, in the order to visit them.
pub(crate) fn relevant(
    partitions: Vec<Arc<Partition>>,
    request: &SearchRequest,
) -> Vec<Arc<Partition>> {
    let mut selected: Vec<Arc<Partition>> = partitions
        .into_iter()
        .filter(|p| request.streams.is_empty() || request.streams.iter().any(|s| *s == p.stream))
        .filter(|p| {
            request
                .since
                .is_none_or(|since| (p.day + 1) * NANOS_PER_DAY > since)
        })
        .filter(|p| {
            request
                .until
                .is_none_or(|until| p.day * NANOS_PER_DAY < until)
        })
        .collect();
    match request.order {
        SearchOrder::Newest => selected.sort_by_key(|a| std::cmp::Reverse(a.day)),
        _ => selected.sort_by_key(|a| a.day),
    }
    selected
}

/// Run a search on this node's partitions.
pub(crate) fn search(
    partitions: Vec<Arc<Partition>>,
    schema: &Schema,
    fields: &Fields,
    request: &SearchRequest,
    node: u64,
) -> Result<Vec<Hit>, SearchError> {
    let mut request = request.clone();
    if request.order == SearchOrder::Ingest {
        // Only this node's part of the tail position matters here.
        request.after = None;
    }
    let query = build_query(schema, fields, &request)?;
    let seq_after = request.seq_after.get(&node).copied();
    let collector = TopHits {
        limit: request.limit,
        order: request.order,
        after: request.after,
        node,
        seq_after,
    };
    let mut found: Vec<(Key, Arc<Partition>, DocAddress)> = Vec::new();
    let mut visited_day = None;
    for partition in relevant(partitions, &request) {
        // Partitions are visited day by day, and days do not overlap in
        // time: once a page is full after a whole day, an older (or newer)
        // day cannot improve it. The partitions of other streams on the
        // same day can, so a day is always finished.
        if request.order != SearchOrder::Ingest
            && found.len() >= request.limit
            && visited_day != Some(partition.day)
        {
            break;
        }
        visited_day = Some(partition.day);
        let searcher = partition.reader.searcher();
        for (key, address) in searcher.search(query.as_ref(), &collector)? {
            found.push((key, partition.clone(), address));
        }
    }
    sort_keys(&mut found, request.order, |item| item.0);
    found.truncate(request.limit);
    let mut hits = Vec::with_capacity(found.len());
    for ((_, seq), partition, address) in found {
        let searcher = partition.reader.searcher();
        let doc: TantivyDocument = searcher.doc(address)?;
        if let Some(record) = index::stored_record(fields, &doc) {
            hits.push(Hit {
                node,
                stream: partition.stream.clone(),
                seq,
                record,
            });
        }
    }
    Ok(hits)
}

/// (timestamp, seq) of a document.
type Key = (i64, u64);

fn sort_keys<T>(items: &mut [T], order: SearchOrder, key: impl Fn(&T) -> Key) {
    match order {
        SearchOrder::Newest => items.sort_unstable_by_key(|item| std::cmp::Reverse(key(item))),
        SearchOrder::Oldest => items.sort_unstable_by_key(|item| key(item)),
        SearchOrder::Ingest => items.sort_unstable_by_key(|item| key(item).1),
    }
}

/// The best `limit` documents in the request's order, after the cursor.
#[derive(Clone, Copy)]
struct TopHits {
    limit: usize,
    order: SearchOrder,
    after: Option<Cursor>,
    node: u64,
    seq_after: Option<u64>,
}

impl TopHits {
    /// Is (ts, this node, seq) strictly after the cursor in the page order?
    fn wanted(&self, ts: i64, seq: u64) -> bool {
        if let Some(after) = self.seq_after {
            if seq <= after {
                return false;
            }
        }
        let Some(after) = self.after else { return true };
        let position = Cursor {
            ts,
            node: self.node,
            seq,
        };
        match self.order {
            SearchOrder::Newest => position < after,
            SearchOrder::Oldest => position > after,
            SearchOrder::Ingest => true,
        }
    }
}

struct TopHitsSegment {
    limit: usize,
    order: SearchOrder,
    segment: SegmentOrdinal,
    ts: Column<i64>,
    seq: Column<u64>,
    filter: TopHits,
    found: Vec<(Key, DocAddress)>,
}

impl Collector for TopHits {
    type Fruit = Vec<(Key, DocAddress)>;
    type Child = TopHitsSegment;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<TopHitsSegment> {
        Ok(TopHitsSegment {
            limit: self.limit,
            order: self.order,
            segment,
            ts: reader.fast_fields().i64("ts")?,
            seq: reader.fast_fields().u64("seq")?,
            filter: *self,
            found: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<Vec<(Key, DocAddress)>>,
    ) -> tantivy::Result<Vec<(Key, DocAddress)>> {
        let mut all: Vec<(Key, DocAddress)> = fruits.into_iter().flatten().collect();
        sort_keys(&mut all, self.order, |item| item.0);
        all.truncate(self.limit);
        Ok(all)
    }
}

impl SegmentCollector for TopHitsSegment {
    type Fruit = Vec<(Key, DocAddress)>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let (Some(ts), Some(seq)) = (self.ts.first(doc), self.seq.first(doc)) else {
            return;
        };
        if !self.filter.wanted(ts, seq) {
            return;
        }
        self.found
            .push(((ts, seq), DocAddress::new(self.segment, doc)));
        // Keep memory bounded: trim to the best `limit` now and then.
        if self.found.len() >= self.limit * 2 + 64 {
            sort_keys(&mut self.found, self.order, |item| item.0);
            self.found.truncate(self.limit);
        }
    }

    fn harvest(mut self) -> Self::Fruit {
        sort_keys(&mut self.found, self.order, |item| item.0);
        self.found.truncate(self.limit);
        self.found
    }
}
