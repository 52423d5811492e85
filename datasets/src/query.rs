//! SQL over datasets: planning a query (which datasets, which columns,
//! which rows each node must send), scanning a node's files, and running
//! the query over every node's part with Polars.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::PathBuf;

use polars::prelude::{
    col, concat, lit, DataFrame, DataType, Engine, IntoLazy, LazyFrame, Null, PlRefPath,
    PolarsError, ScanArgsParquet, UnionArgs,
};
use polars::sql::SQLContext;
use polars_core::query_result::QueryResult;
use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    visit_expressions, visit_relations, Expr, Query, SelectItem, SetExpr, Statement, TableFactor,
    Visit, Visitor,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserOptions};
use thiserror::Error;

use crate::days::{day_range, DayRange};
use crate::definition::{Dataset, DATE_COLUMN, ID_COLUMN, TIME_COLUMN};
use crate::partial::PartialQueries;

/// Longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 8192;
/// Most rows one node sends the node that runs a query, unless the plan
/// says otherwise ([`TableScan::max_rows`]).
pub const DEFAULT_MAX_SCAN_ROWS: u64 = 10_000_000;
/// How a refusal for too many rows ends.
pub const NARROW_IT: &str = "narrow it with WHERE";
/// Most rows of a result.
pub const MAX_RESULT_ROWS: usize = 1_000_000;
/// The table of log records (the node fetches them from the log engine).
pub const LOGS_TABLE: &str = "logs";
/// Tables a query may read besides datasets; no dataset takes their names.
pub const BUILTIN_TABLES: [&str; 2] = [LOGS_TABLE, crate::instances::TABLE];

#[derive(Debug, Error)]
pub enum QueryError {
    /// The query is at fault (the text says why).
    #[error("{0}")]
    Invalid(String),
    /// Past one of the limits.
    #[error("{0}")]
    TooBig(String),
    #[error("{0}")]
    Polars(#[from] PolarsError),
}

fn invalid(message: impl Into<String>) -> QueryError {
    QueryError::Invalid(message.into())
}

/// The format of a query's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    Json,
    Csv,
    Parquet,
    ArrowIpc,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::ArrowIpc => "application/vnd.apache.arrow.file",
        }
    }

    /// From a name (`--format`, `format`) or a media type (`Accept`).
    pub fn parse(text: &str) -> Option<Format> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "json" | "application/json" => Format::Json,
            "csv" | "text/csv" => Format::Csv,
            "parquet" | "application/vnd.apache.parquet" | "application/x-parquet" => {
                Format::Parquet
            }
            "arrow" | "ipc" | "application/vnd.apache.arrow.file" => Format::ArrowIpc,
            _ => return None,
        })
    }
}

/// What one node must send for one dataset a query reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableScan {
    /// Carried as JSON text: the definition's optional fields are left out
    /// when empty, which a binary codec cannot tell apart.
    #[serde(with = "as_json")]
    pub dataset: Dataset,
    /// The columns the query can use, in the table's order.
    pub columns: Vec<String>,
    /// The query's WHERE, when it reads this one table alone: each node
    /// sends only the rows that pass it, and the query runs without it.
    pub filter: Option<String>,
    /// The columns each node sends of those rows (when the scan is not
    /// partial): the ones the query uses outside that WHERE.
    pub sent: Vec<String>,
    /// The day partitions that WHERE can match (from its conditions on
    /// `date` and `_time`): files of other days are not opened.
    pub days: DayRange,
    /// What each node runs over its rows instead, when the query
    /// aggregates in a way that merges exactly ([`crate::partial`]): each
    /// node sends its groups (and, for `count(DISTINCT x)`, the keys and x
    /// of its rows).
    pub partial: Option<PartialQueries>,
    /// The most rows (or groups) one node's part may have: the asking
    /// node's limit, so every node applies the same one.
    pub max_rows: u64,
    /// The most bytes of Arrow IPC one node's part may have (at most
    /// [`crate::ipc::MAX_PART_BYTES`]): the asking node's limit too.
    pub max_part_bytes: u64,
}

impl TableScan {
    /// The paths of the files of days the query can match.
    pub fn files_to_read(&self, files: Vec<crate::files::DataFile>) -> Vec<PathBuf> {
        files
            .into_iter()
            .filter(|file| self.days.holds(&file.date))
            .map(|file| file.path)
            .collect()
    }
}

mod as_json {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    use crate::definition::Dataset;

    pub fn serialize<S: Serializer>(dataset: &Dataset, to: S) -> Result<S::Ok, S::Error> {
        serde_json::to_string(dataset)
            .map_err(serde::ser::Error::custom)?
            .serialize(to)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<Dataset, D::Error> {
        let text = String::deserialize(from)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

/// The column an expression names (`total`, or `total` of `orders.total`).
pub(crate) fn column_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Identifier(ident) => Some(&ident.value),
        Expr::CompoundIdentifier(parts) => parts.last().map(|ident| ident.value.as_str()),
        _ => None,
    }
}

/// A checked query and the scans it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryPlan {
    /// What runs over the rows the scans give (without the WHERE they run).
    pub sql: String,
    pub scans: Vec<TableScan>,
    /// The built-in tables ([`BUILTIN_TABLES`]) it reads.
    pub builtins: BTreeSet<String>,
    /// What runs over the nodes' groups when the scan is partial.
    pub merge: Option<String>,
}

/// Every column of a dataset's table, in order: `_id`, `_time`, its own,
/// then `date`.
pub fn table_columns(dataset: &Dataset) -> Vec<String> {
    let mut columns = vec![ID_COLUMN.to_string(), TIME_COLUMN.to_string()];
    columns.extend(dataset.columns.iter().map(|c| c.name.clone()));
    columns.push(DATE_COLUMN.to_string());
    columns
}

/// Parse and check a query against the defined datasets.
pub fn plan(sql: &str, datasets: &BTreeMap<String, Dataset>) -> Result<QueryPlan, QueryError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(invalid(format!(
            "the query is {} bytes; the limit is {MAX_SQL_BYTES}",
            sql.len()
        )));
    }
    let statements = Parser::new(&GenericDialect)
        .with_options(ParserOptions::new().with_trailing_commas(true))
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| invalid(format!("cannot parse the SQL: {e}")))?;
    if statements.len() != 1 {
        return Err(invalid("send exactly one SQL statement"));
    }
    let Statement::Query(query) = &statements[0] else {
        return Err(invalid("only SELECT queries are allowed"));
    };
    let ctes: BTreeSet<String> = query
        .with
        .iter()
        .flat_map(|with| with.cte_tables.iter())
        .map(|cte| cte.alias.name.value.clone())
        .collect();
    let mut read = BTreeSet::new();
    let mut builtins = BTreeSet::new();
    let mut unknown = None;
    let _ = visit_relations(&statements, |relation| {
        let name = relation.to_string();
        if ctes.contains(&name) {
            return ControlFlow::<()>::Continue(());
        }
        if datasets.contains_key(&name) {
            read.insert(name);
        } else if BUILTIN_TABLES.contains(&name.as_str()) {
            builtins.insert(name);
        } else {
            unknown = Some(name);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if let Some(name) = unknown {
        let known: Vec<&str> = datasets.keys().map(String::as_str).collect();
        return Err(invalid(format!(
            "no table is named {name:?} (datasets: {}; built in: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            },
            BUILTIN_TABLES.join(", ")
        )));
    }
    if read.is_empty() && builtins.is_empty() {
        return Err(invalid("the query reads no table"));
    }
    // The columns the query names anywhere (a superset of what it uses).
    let mut named = BTreeSet::new();
    let _ = visit_expressions(&statements, |expr: &Expr| {
        if let Some(name) = column_name(expr) {
            named.insert(name.to_string());
        }
        ControlFlow::<()>::Continue(())
    });
    let mut wildcards = Wildcards(false);
    let _ = statements.visit(&mut wildcards);
    let wildcard = wildcards.0;
    // A subquery reads its table whole: neither a filter nor a split may
    // cut the table down to one node's rows or the rows that pass.
    let subqueries = visit_expressions(&statements, |expr: &Expr| match expr {
        Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break();
    let single_table_where = match (&query.with, query.body.as_ref()) {
        _ if subqueries || read.len() != 1 => None,
        (None, SetExpr::Select(select))
            if select.from.len() == 1
                && select.from[0].joins.is_empty()
                && matches!(
                    &select.from[0].relation,
                    TableFactor::Table { alias: None, .. }
                ) =>
        {
            select.selection.as_ref()
        }
        _ => None,
    };
    let single_table_filter = single_table_where.map(ToString::to_string);
    let single_table_days = single_table_where.map(day_range).unwrap_or_default();
    // The nodes run that WHERE, so the query runs without it, and a column
    // it alone names is not sent.
    let mut run_sql = sql.to_string();
    let mut sent_named = named.clone();
    if single_table_where.is_some() {
        let mut without_where = statements.clone();
        if let Statement::Query(query) = &mut without_where[0] {
            if let SetExpr::Select(select) = query.body.as_mut() {
                select.selection = None;
            }
        }
        run_sql = without_where[0].to_string();
        sent_named.clear();
        let _ = visit_expressions(&without_where, |expr: &Expr| {
            if let Some(name) = column_name(expr) {
                sent_named.insert(name.to_string());
            }
            ControlFlow::<()>::Continue(())
        });
    }
    let mut scans: Vec<TableScan> = read
        .iter()
        .filter_map(|name| datasets.get(name))
        .map(|dataset| {
            let mut columns: Vec<String> = table_columns(dataset)
                .into_iter()
                .filter(|column| wildcard || named.contains(column))
                .collect();
            let mut sent: Vec<String> = columns
                .iter()
                .filter(|column| wildcard || sent_named.contains(*column))
                .cloned()
                .collect();
            if sent.is_empty() {
                // `SELECT count(1) FROM t` uses no column but needs the
                // rows: the narrowest column (a day from `_time`).
                if !columns.iter().any(|c| c == DATE_COLUMN) {
                    columns.push(DATE_COLUMN.to_string());
                }
                sent.push(DATE_COLUMN.to_string());
            }
            TableScan {
                dataset: dataset.clone(),
                columns,
                filter: single_table_filter.clone(),
                sent,
                days: single_table_days.clone(),
                partial: None,
                max_rows: DEFAULT_MAX_SCAN_ROWS,
                max_part_bytes: crate::ipc::MAX_PART_BYTES as u64,
            }
        })
        .collect();
    let mut merge = None;
    if let ([scan], true, false) = (scans.as_mut_slice(), builtins.is_empty(), subqueries) {
        if let Some(split) = crate::partial::split(sql, &scan.dataset.name) {
            if split.uses_date && !scan.columns.iter().any(|c| c == DATE_COLUMN) {
                scan.columns.push(DATE_COLUMN.to_string());
            }
            scan.partial = Some(split.partial);
            merge = Some(split.merge);
        }
    }
    Ok(QueryPlan {
        sql: run_sql,
        scans,
        builtins,
        merge,
    })
}

/// Whether a query selects `*` (or `t.*`) anywhere: then every column of
/// what it reads is needed.
struct Wildcards(bool);

impl Visitor for Wildcards {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        fn selects_all(body: &SetExpr) -> bool {
            match body {
                SetExpr::Select(select) => select.projection.iter().any(|item| {
                    matches!(
                        item,
                        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                    )
                }),
                SetExpr::SetOperation { left, right, .. } => {
                    selects_all(left) || selects_all(right)
                }
                SetExpr::Query(query) => selects_all(&query.body),
                _ => false,
            }
        }
        self.0 |= selects_all(&query.body);
        ControlFlow::Continue(())
    }
}

/// The rows of Parquet files (their own columns; none of a file's
/// missing columns is an error: it reads as NULL).
pub fn scan_files(paths: &[PathBuf]) -> Result<LazyFrame, PolarsError> {
    let paths: Vec<PlRefPath> = paths
        .iter()
        .map(|p| PlRefPath::new(p.to_string_lossy().as_ref()))
        .collect();
    let args = ScanArgsParquet {
        allow_missing_columns: true,
        ..Default::default()
    };
    LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)
}

/// A dataset's table on this node: its files, with `date` from `_time`,
/// reduced to `columns`.
pub fn local_table(
    dataset: &Dataset,
    files: &[PathBuf],
    columns: &[String],
) -> Result<LazyFrame, QueryError> {
    let table = if files.is_empty() {
        crate::store::frame(dataset, &[])
            .map_err(|e| QueryError::Invalid(e.to_string()))?
            .lazy()
    } else {
        scan_files(files)?
    };
    let table = table.with_column(col(TIME_COLUMN).cast(DataType::Date).alias(DATE_COLUMN));
    Ok(table.select(columns.iter().map(|c| col(c.as_str())).collect::<Vec<_>>()))
}

/// The lazy frames of one node's part of a scan: when the scan is
/// partial, its groups and its distinct rows (those of
/// [`PartialQueries`] it has, in that order); else its rows that pass the
/// filter (the columns it sends).
fn part_lazy(scan: &TableScan, files: &[PathBuf]) -> Result<Vec<LazyFrame>, QueryError> {
    let Some(partial) = &scan.partial else {
        return Ok(vec![rows_lazy(scan, files)?]);
    };
    let table = local_table(&scan.dataset, files, &scan.columns)?;
    [&partial.groups, &partial.distinct_rows]
        .into_iter()
        .flatten()
        .map(|query| Ok(run_over(&scan.dataset.name, table.clone(), query)?))
        .collect()
}

/// A node's rows of a scan that pass its filter, the columns it sends.
fn rows_lazy(scan: &TableScan, files: &[PathBuf]) -> Result<LazyFrame, QueryError> {
    let table = local_table(&scan.dataset, files, &scan.columns)?;
    let sent: Vec<_> = scan.sent.iter().map(|c| col(c.as_str())).collect();
    Ok(match &scan.filter {
        Some(filter) => run_over(
            &scan.dataset.name,
            table,
            &format!("SELECT * FROM \"{}\" WHERE {filter}", scan.dataset.name),
        )?
        .select(sent),
        None => table.select(sent),
    })
}

/// A query over one table, registered under the dataset's own name (the
/// SQL may name it: orders.total).
fn run_over(name: &str, table: LazyFrame, query: &str) -> Result<LazyFrame, PolarsError> {
    let mut context = SQLContext::new();
    context.register(name, table);
    context.execute(query)
}

/// Frames one under the other, matched by column name: a column a frame
/// lacks is NULL in its rows.
fn stack_by_name(mut parts: Vec<LazyFrame>) -> Result<LazyFrame, QueryError> {
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    let mut schemas = Vec::with_capacity(parts.len());
    for part in &mut parts {
        schemas.push(part.collect_schema()?);
    }
    let mut all: Vec<(String, DataType)> = Vec::new();
    for schema in &schemas {
        for (name, dtype) in schema.iter() {
            if !all.iter().any(|(n, _)| n == name.as_str()) {
                all.push((name.to_string(), dtype.clone()));
            }
        }
    }
    let parts: Vec<LazyFrame> = parts
        .into_iter()
        .zip(&schemas)
        .map(|(part, schema)| {
            part.select(
                all.iter()
                    .map(|(name, dtype)| match schema.contains(name) {
                        true => col(name.as_str()),
                        false => lit(Null {}).cast(dtype.clone()).alias(name.as_str()),
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    Ok(concat(
        parts,
        UnionArgs {
            to_supertypes: true,
            ..Default::default()
        },
    )?)
}

/// What the merge of a partial scan reads: every node's groups, with the
/// counts of distinct values per group (from every node's distinct rows)
/// stacked under them.
fn merge_input(
    name: &str,
    partial: &PartialQueries,
    frames: Vec<DataFrame>,
) -> Result<LazyFrame, QueryError> {
    let mut frames = frames.into_iter();
    let mut inputs = Vec::with_capacity(2);
    if partial.groups.is_some() {
        inputs.extend(frames.next().map(IntoLazy::lazy));
    }
    if let (Some(_), Some(counts), Some(rows)) = (
        &partial.distinct_rows,
        &partial.distinct_counts,
        frames.next(),
    ) {
        inputs.push(run_over(name, rows.lazy(), counts)?);
    }
    if inputs.len() != partial.frames() {
        return Err(invalid("a partial scan is missing a frame"));
    }
    stack_by_name(inputs)
}

/// One node's part of a scan: its groups and distinct rows when the scan
/// is partial, else its rows that pass the filter (the columns it sends).
pub fn scan(scan: &TableScan, files: &[PathBuf]) -> Result<Vec<DataFrame>, QueryError> {
    // Polars' streaming engine: a filter, a projection and a partial
    // aggregation are what it does fastest (the query itself runs on the
    // in-memory engine, which is faster for count(DISTINCT x)).
    let max_rows = scan.max_rows.min(u64::from(u32::MAX) - 1);
    let lazy: Vec<LazyFrame> = part_lazy(scan, files)?
        .into_iter()
        .map(|lazy| lazy.limit(max_rows as u32 + 1))
        .collect();
    let frames = match <[LazyFrame; 1]>::try_from(lazy) {
        Ok([one]) => match one.collect_with_engine(Engine::Streaming)? {
            QueryResult::Single(frame) => vec![frame],
            QueryResult::Multiple(_) => {
                return Err(QueryError::Invalid("the scan gave several tables".into()))
            }
        },
        // In one plan, so that the files are read once for all.
        Err(several) => {
            let optimizations = several[0].get_current_optimizations();
            LazyFrame::collect_all_with_engine(
                several.into_iter().map(|lazy| lazy.logical_plan).collect(),
                Engine::Streaming,
                optimizations,
            )?
        }
    };
    if frames.iter().any(|frame| frame.height() as u64 > max_rows) {
        return Err(QueryError::TooBig(format!(
            "the query needs more than {max_rows} rows of {} from one node; {NARROW_IT}",
            scan.dataset.name
        )));
    }
    Ok(frames)
}

/// This node's part of a table in a query.
pub enum Local {
    /// Its files, read when the query runs (on this node alone, with the
    /// query's filters and projection pushed into the read).
    Files(Vec<PathBuf>),
    /// Its files already read by [`scan`], as the other nodes read theirs.
    Scanned(Vec<DataFrame>),
}

/// The query over every node's part: per dataset, this node's part and
/// the parts the other nodes sent (each the frames [`scan`] made); and the
/// built-in tables it reads, by name. `merge` runs instead of `plan_sql`
/// when the scan is partial (every part, this node's too, is then its
/// groups and distinct rows).
pub fn execute(
    plan_sql: &str,
    merge: Option<&str>,
    tables: Vec<(TableScan, Local, Vec<Vec<DataFrame>>)>,
    builtins: Vec<(&str, DataFrame)>,
) -> Result<DataFrame, QueryError> {
    let mut sql = plan_sql;
    let mut context = SQLContext::new();
    for (name, frame) in builtins {
        context.register(name, frame.lazy());
    }
    for (scan, local, parts) in tables {
        let table = match local {
            Local::Files(files)
                if parts.is_empty()
                    && scan
                        .partial
                        .as_ref()
                        .is_none_or(|p| p.distinct_rows.is_some()) =>
            {
                // Lazy: Polars pushes the filter and the query's projection
                // into the read of the files. On one node, a query with
                // count(DISTINCT x) runs whole: split, its rows would be
                // gathered into a frame only to be grouped again.
                rows_lazy(&scan, &files)?
            }
            local => {
                // This node's part as the other nodes sent theirs, so every
                // part is frames of the same columns, each stacked with the
                // others' (a lazy union would have Polars count rows
                // through a 128-bit cast this build does not carry).
                let mut all = match local {
                    Local::Files(files) => self::scan(&scan, &files)?,
                    Local::Scanned(frames) => frames,
                };
                for part in &parts {
                    if part.len() != all.len() {
                        return Err(invalid(format!(
                            "a node sent {} frames of {}; this node made {}",
                            part.len(),
                            scan.dataset.name,
                            all.len()
                        )));
                    }
                    for (into, frame) in all.iter_mut().zip(part) {
                        into.vstack_mut(frame)?;
                    }
                }
                match (merge, &scan.partial) {
                    (Some(merge), Some(partial)) => {
                        sql = merge;
                        merge_input(&scan.dataset.name, partial, all)?
                    }
                    _ => match <[DataFrame; 1]>::try_from(all) {
                        Ok([rows]) => rows.lazy(),
                        Err(_) => return Err(invalid("a scan of rows is one frame")),
                    },
                }
            }
        };
        context.register(&scan.dataset.name, table);
    }
    let frame = context
        .execute(sql)?
        .limit(MAX_RESULT_ROWS as u32 + 1)
        .collect()?;
    if frame.height() > MAX_RESULT_ROWS {
        return Err(QueryError::TooBig(format!(
            "the result has more than {MAX_RESULT_ROWS} rows; add LIMIT or aggregate"
        )));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{decode_parts, part_from_ipc, part_to_ipc};
    use serde_json::json;

    fn datasets() -> BTreeMap<String, Dataset> {
        let orders: Dataset = serde_json::from_value(json!({"columns": [
            {"name": "order_id", "type": "string", "from": "/data/id"},
            {"name": "customer", "type": "string", "from": "/data/customer"},
            {"name": "total", "type": "float64", "from": "/data/total"}]}))
        .expect("definition");
        BTreeMap::from([(
            "orders".to_string(),
            orders.validate("orders").expect("valid"),
        )])
    }

    #[test]
    fn a_plan_names_the_columns_and_pushes_a_single_tables_filter() {
        let plan = plan(
            "SELECT date, sum(total) AS revenue FROM orders WHERE total > 10 GROUP BY date",
            &datasets(),
        )
        .expect("plan");
        assert_eq!(plan.scans.len(), 1);
        assert_eq!(plan.scans[0].columns, vec!["total", "date"]);
        assert_eq!(plan.scans[0].filter.as_deref(), Some("total > 10"));
        let joined = plan_of("SELECT * FROM orders a JOIN orders b ON a.order_id = b.order_id");
        assert_eq!(joined.scans[0].filter, None);
        assert_eq!(joined.scans[0].columns.len(), 6);
        let counted = plan_of("SELECT count(*) FROM orders");
        assert_eq!(counted.scans[0].columns, vec!["date"]);
        let qualified = plan_of("SELECT orders.total FROM orders WHERE orders.total > 1");
        assert_eq!(qualified.scans[0].columns, vec!["total"]);
        assert_eq!(
            qualified.scans[0].filter.as_deref(),
            Some("orders.total > 1")
        );
        // The nodes run the WHERE: the query runs without it, and a column
        // only the WHERE names is read but not sent.
        let filtered = plan_of("SELECT date, customer FROM orders WHERE total > 1");
        assert_eq!(filtered.merge, None);
        assert_eq!(filtered.scans[0].columns, vec!["customer", "total", "date"]);
        assert_eq!(filtered.scans[0].sent, vec!["customer", "date"]);
        assert_eq!(filtered.sql, "SELECT date, customer FROM orders");
        // count(DISTINCT x) beside other aggregates: each node sends its
        // groups and its distinct (keys, x).
        let distinct = plan_of(
            "SELECT date, count(DISTINCT customer) AS c, sum(total) AS t FROM orders \
             WHERE total > 1 GROUP BY date",
        );
        assert_eq!(
            distinct.scans[0].partial,
            Some(PartialQueries {
                groups: Some(
                    "SELECT date AS \"date\", sum(total) AS \"__a0\" FROM orders \
                     WHERE total > 1 GROUP BY date"
                        .into()
                ),
                distinct_rows: Some(
                    "SELECT date AS \"date\", customer AS \"__d0\" FROM orders \
                     WHERE total > 1"
                        .into()
                ),
                distinct_counts: Some(
                    "SELECT \"date\", count(DISTINCT \"__d0\") AS \"__d0\" FROM \"orders\" \
                     GROUP BY \"date\""
                        .into()
                ),
            })
        );
        assert_eq!(
            distinct.merge.as_deref(),
            Some(
                "SELECT date, max(\"__d0\") AS c, sum(\"__a0\") AS t FROM orders \
                 GROUP BY \"date\""
            )
        );
        let rows_only = plan_of("SELECT 1 AS one FROM orders WHERE total > 1");
        assert_eq!(rows_only.scans[0].sent, vec!["date"]);
        // A subquery reads the whole table: nothing is pushed or split.
        let sub = plan_of(
            "SELECT count(*) AS n FROM orders WHERE customer IN \
             (SELECT customer FROM orders WHERE total > 100)",
        );
        assert_eq!(
            (sub.scans[0].filter.as_deref(), sub.merge.as_deref()),
            (None, None)
        );
        assert!(sub.sql.contains("WHERE customer IN"), "{}", sub.sql);
        let aliased = plan_of("SELECT o.total FROM orders o WHERE o.total > 1");
        assert_eq!(aliased.scans[0].filter, None);
        let nested = plan_of("SELECT n FROM (SELECT * FROM orders) AS x");
        assert_eq!(nested.scans[0].columns.len(), 6);
        let builtin = plan_of(
            "SELECT o.total, i.status FROM orders o JOIN workflow_instances i ON o.order_id = i.id",
        );
        assert_eq!(builtin.scans.len(), 1);
        assert_eq!(
            builtin.builtins,
            BTreeSet::from(["workflow_instances".to_string()])
        );
        let logs_only = plan_of("SELECT count(*) FROM logs");
        assert!(logs_only.scans.is_empty());
        assert_eq!(logs_only.builtins, BTreeSet::from(["logs".to_string()]));
    }

    #[test]
    fn a_where_on_date_or_time_bounds_the_days_read() {
        let days = |sql: &str| plan_of(sql).scans[0].days.clone();
        let range = |from: Option<&str>, to: Option<&str>| DayRange {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
        };
        assert_eq!(
            days(
                "SELECT count(*) AS n FROM orders WHERE date BETWEEN '2026-12-02' AND '2026-12-04'"
            ),
            range(Some("2026-12-02"), Some("2026-12-04"))
        );
        assert_eq!(
            days("SELECT total FROM orders WHERE total > 1 AND _time >= strptime('2026-12-02T10:00:00.000000', '%Y-%m-%dT%H:%M:%S%.f') AND '2026-12-09' > date"),
            range(Some("2026-12-02"), Some("2026-12-09"))
        );
        assert_eq!(
            days("SELECT total FROM orders WHERE (date = '2026-12-05') AND date >= '2026-12-01'"),
            range(Some("2026-12-05"), Some("2026-12-05"))
        );
        // An OR, a non-day constant, a join: every day.
        for sql in [
            "SELECT total FROM orders WHERE date = '2026-12-05' OR total > 1",
            "SELECT total FROM orders WHERE date > 'yesterday'",
            "SELECT a.total FROM orders a JOIN orders b ON a.order_id = b.order_id WHERE a.date = '2026-12-05'",
        ] {
            assert_eq!(days(sql), DayRange::default(), "{sql}");
        }
        let bounded = range(Some("2026-12-02"), Some("2026-12-04"));
        assert!(bounded.holds("2026-12-02") && bounded.holds("2026-12-04"));
        assert!(!bounded.holds("2026-12-01") && !bounded.holds("2026-12-05"));
    }

    fn plan_of(sql: &str) -> QueryPlan {
        plan(sql, &datasets()).expect("plan")
    }

    /// Scans travel between nodes in the binary codec.
    #[test]
    fn a_scan_round_trips_in_the_codec() {
        let mut scan = plan_of("SELECT total FROM orders WHERE total > 1").scans[0].clone();
        scan.dataset.retention.max_bytes = Some(5);
        let bytes = shoal_codec::encode(&scan).expect("encode");
        let back: TableScan = shoal_codec::decode(&bytes).expect("decode");
        assert_eq!(back, scan);
    }

    #[test]
    fn bad_queries_are_refused_with_the_reason() {
        for (sql, reason) in [
            ("SELECT * FROM nope", "no table is named \"nope\""),
            ("SELECT 1", "reads no table"),
            ("DELETE FROM orders", "only SELECT"),
            ("SELECT 1; SELECT 2", "exactly one"),
            ("SELEC", "cannot parse"),
            ("SELECT * FROM logz", "built in: logs, workflow_instances"),
        ] {
            let error = plan(sql, &datasets()).expect_err(sql).to_string();
            assert!(error.contains(reason), "{sql}: {error}");
        }
        let long = format!(
            "SELECT * FROM orders WHERE order_id = '{}'",
            "x".repeat(9000)
        );
        assert!(plan(&long, &datasets()).is_err());
    }

    #[test]
    fn a_query_runs_over_local_files_and_frames_from_other_nodes() {
        let temp = tempfile::tempdir().expect("temp");
        let datasets = datasets();
        let dataset = &datasets["orders"];
        let store = crate::store::Datasets::new(temp.path().to_path_buf(), 1);
        let row = |id: &str, customer: &str, total: f64, time: &str| {
            dataset
                .row(&json!({"id": id, "time": time,
                    "data": {"id": id, "customer": customer, "total": total}}))
                .expect("row")
        };
        store
            .write(
                dataset,
                1,
                2,
                vec![
                    (1, row("a", "c1", 10.0, "2026-12-04T10:00:00Z")),
                    (2, row("b", "c2", 30.0, "2026-12-05T10:00:00Z")),
                ],
            )
            .expect("write");
        let sql = "SELECT date, count(*) AS orders, sum(total) AS revenue, \
                   count(DISTINCT customer) AS customers FROM orders \
                   WHERE total >= 10 GROUP BY date ORDER BY date";
        let plan = plan(sql, &datasets).expect("plan");
        // Another node's part, as it would arrive.
        let remote_files: Vec<PathBuf> = Vec::new();
        let remote_store = crate::store::Datasets::new(temp.path().join("other"), 2);
        remote_store
            .write(
                dataset,
                1,
                1,
                vec![(1, row("c", "c1", 5.0, "2026-12-05T11:00:00Z"))],
            )
            .expect("write");
        let remote_paths: Vec<PathBuf> = remote_store
            .live_files("orders")
            .expect("files")
            .into_iter()
            .map(|f| f.path)
            .chain(remote_files)
            .collect();
        let mut part = scan(&plan.scans[0], &remote_paths).expect("scan");
        assert_eq!(part.len(), 2, "groups and distinct rows");
        assert!(
            part.iter().all(|frame| frame.height() == 0),
            "the filter ran on the remote node"
        );
        let part =
            part_from_ipc(&part_to_ipc(&mut part, &plan.scans[0]).expect("ipc")).expect("from ipc");
        let local: Vec<PathBuf> = store
            .live_files("orders")
            .expect("files")
            .into_iter()
            .map(|f| f.path)
            .collect();
        let result = execute(
            &plan.sql,
            plan.merge.as_deref(),
            vec![(plan.scans[0].clone(), Local::Files(local), vec![part])],
            Vec::new(),
        )
        .expect("run");
        assert_eq!(result.height(), 2);
        let revenue = result
            .column("revenue")
            .expect("revenue")
            .f64()
            .expect("f64");
        assert_eq!(revenue.get(0), Some(10.0));
        assert_eq!(revenue.get(1), Some(30.0));
        let counted = super::plan("SELECT count(*) AS n FROM orders", &datasets).expect("plan");
        let part = scan(&counted.scans[0], &remote_paths).expect("scan");
        let mut parts = decode_parts(vec![vec![part_to_ipc(
            &mut part.clone(),
            &counted.scans[0],
        )
        .expect("ipc")]])
        .expect("decode");
        assert_eq!(parts[0][0].len(), 1, "groups alone");
        // A part cut short or with a length past its end is refused.
        let bytes = part_to_ipc(&mut part.clone(), &counted.scans[0]).expect("ipc");
        for bad in [&bytes[..3], &bytes[..bytes.len() - 1], &[0xff; 12][..]] {
            assert!(part_from_ipc(bad).is_err(), "{} bytes", bad.len());
        }
        let local: Vec<PathBuf> = store
            .live_files("orders")
            .expect("files")
            .into_iter()
            .map(|f| f.path)
            .collect();
        // This node's files read first, as a worker does while the other
        // nodes' parts come.
        let local = scan(&counted.scans[0], &local).expect("local scan");
        let result = execute(
            &counted.sql,
            counted.merge.as_deref(),
            vec![(
                counted.scans[0].clone(),
                Local::Scanned(local),
                parts.remove(0),
            )],
            Vec::new(),
        )
        .expect("count");
        assert_eq!(
            format!("{:?}", result.column("n").expect("n").get(0)),
            "Ok(UInt32(3))"
        );
    }
}
