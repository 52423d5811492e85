//! SQL over datasets: planning a query (which datasets, which columns,
//! which rows each node must send, whether it is split) and its limits;
//! `crate::run` scans the files and runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::PathBuf;

use polars::prelude::PolarsError;
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

pub(crate) fn invalid(message: impl Into<String>) -> QueryError {
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
    /// In a join, the WHERE's conditions on this table alone
    /// ([`crate::join_filter`]), which the query runs again.
    pub filter: Option<String>,
    /// The columns each node sends of those rows (when the scan is not
    /// partial): the ones the query uses outside that WHERE.
    pub sent: Vec<String>,
    /// The day partitions that filter can match (from its conditions on
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
    // A join's conditions on one dataset alone: each node runs them too.
    let join_filters = match single_table_where {
        None if !subqueries => crate::join_filter::join_filters(query, &read),
        _ => BTreeMap::new(),
    };
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
            let join_filter = join_filters.get(&dataset.name);
            TableScan {
                dataset: dataset.clone(),
                columns,
                filter: single_table_filter
                    .clone()
                    .or_else(|| join_filter.map(ToString::to_string)),
                sent,
                days: join_filter.map_or_else(|| single_table_days.clone(), day_range),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A dataset `orders` of `order_id`, `customer` and `total`.
    pub(crate) fn datasets() -> BTreeMap<String, Dataset> {
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
        // An alias: its conditions go to the nodes as a join's would, and
        // the query keeps its WHERE.
        let aliased = plan_of("SELECT o.total FROM orders o WHERE o.total > 1");
        assert_eq!(aliased.scans[0].filter.as_deref(), Some("(total > 1)"));
        assert!(aliased.sql.contains("WHERE o.total > 1"), "{}", aliased.sql);
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
}
