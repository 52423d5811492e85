//! SQL over logs with Polars: a query on the table `logs` is analysed first,
//! its top-level conditions on `ts`, `level`, `service`, `stream`, `kind`,
//! `status` and `trace_id` become a search (pushed down to Tantivy on every
//! node), and Polars runs the whole query over the matching records.
//!
//! Polars SQL has no `now()` and compares a UTC timestamp column only with
//! UTC-aware values, so `now()`, `current_timestamp` and timestamp strings
//! compared with `ts` are rewritten into UTC literals before execution
//! (constant times compared with a dataset's `_time`, which has no zone,
//! into literals without one: `/v1/sql` uses this planner too);
//! `date_trunc(unit, ts)` is rewritten too.

use std::ops::ControlFlow;

use polars::prelude::{
    AnyValue, Column, DataFrame, IntoColumn, IntoLazy, NamedFrom, Series, TimeUnit, TimeZone,
};
use polars::sql::SQLContext;
use serde_json::{json, Value};
use sqlparser::ast::{
    visit_expressions_mut, visit_relations, BinaryOperator, Expr, Function, FunctionArg,
    FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident, Interval, ObjectName, SetExpr,
    Statement, TableFactor, Value as SqlValue, ValueWithSpan,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserOptions};

use crate::query::{Hit, KindFilter, SearchRequest};
use crate::record::{normalize_level, parse_timestamp};
use crate::SearchError;

/// The table every query reads, and its columns.
pub const TABLE: &str = "logs";
pub const COLUMNS: &[&str] = &[
    "ts",
    "stream",
    "node",
    "kind",
    "level",
    "service",
    "message",
    "trace_id",
    "span_id",
    "duration_ns",
    "status",
    "attributes",
];
/// Longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 8192;

/// What to fetch for a query, and the query as Polars will run it.
#[derive(Clone, Debug)]
pub struct SqlPlan {
    /// The records the query can see (a superset: the query's own WHERE still applies).
    pub filter: SearchRequest,
    /// The query with `now()`, `date_trunc` and timestamp strings rewritten.
    pub sql: String,
    /// How many times the query names a table (`logs`, or a CTE over it):
    /// a join of `logs` with itself reads it twice.
    pub table_reads: u32,
}

/// Most rows a query that reads the table more than once (a join) may be
/// able to make: the records read to the power of `table_reads`. A self
/// cross join of every record would otherwise take the node's memory.
pub const MAX_JOINED_ROWS: u128 = 1_000_000;

impl SqlPlan {
    /// The most rows the query's joins could make from `records` records.
    pub fn most_joined_rows(&self, records: usize) -> u128 {
        (records as u128).saturating_pow(self.table_reads)
    }
}

fn invalid(message: impl Into<String>) -> SearchError {
    SearchError::InvalidQuery(message.into())
}

/// Parse and check a query, extract what can be pushed down, rewrite it.
pub fn plan(sql: &str, now: i64) -> Result<SqlPlan, SearchError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(invalid(format!(
            "the query is {} bytes; the limit is {MAX_SQL_BYTES}",
            sql.len()
        )));
    }
    let mut statements = Parser::new(&GenericDialect)
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
    let mut filter = SearchRequest {
        kind: KindFilter::Any,
        ..Default::default()
    };
    if let (None, SetExpr::Select(select)) = (&query.with, query.body.as_ref()) {
        let reads_logs_only = select.from.len() == 1
            && select.from[0].joins.is_empty()
            && matches!(&select.from[0].relation, TableFactor::Table { name, .. } if table_is_logs(name));
        if reads_logs_only {
            if let Some(selection) = &select.selection {
                let mut conditions = Vec::new();
                conjuncts(selection, &mut conditions);
                for condition in conditions {
                    push_down(condition, now, &mut filter);
                }
            }
        }
    }
    let _ = visit_expressions_mut(&mut statements, |expr: &mut Expr| {
        naive_times(expr, now);
        ControlFlow::<()>::Continue(())
    });
    let mut bad = None;
    let _ = visit_expressions_mut(&mut statements, |expr: &mut Expr| {
        if is_now(expr) {
            *expr = utc_literal(now);
            return ControlFlow::Continue(());
        }
        if let Expr::Interval(interval) = expr {
            if let Some(text) = string_literal(&interval.value) {
                // Polars panics on an interval it cannot parse: check it here.
                if polars::time::Duration::try_parse_interval(text).is_err() || text.contains('-') {
                    bad = Some(format!(
                        "invalid interval '{text}' (use e.g. '15 minutes', '1 hour', '7 days')"
                    ));
                    return ControlFlow::Break(());
                }
            }
        }
        if let Some(rewritten) = rewrite_date_trunc(expr) {
            *expr = rewritten;
            return ControlFlow::Continue(());
        }
        compared_sides(expr, utc_side);
        ControlFlow::Continue(())
    });
    if let Some(bad) = bad {
        return Err(invalid(bad));
    }
    let mut table_reads = 0u32;
    let _ = visit_relations(&statements, |_| {
        table_reads = table_reads.saturating_add(1);
        ControlFlow::<()>::Continue(())
    });
    Ok(SqlPlan {
        filter,
        sql: statements[0].to_string(),
        table_reads,
    })
}

fn table_is_logs(name: &ObjectName) -> bool {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .is_some_and(|ident| ident.value.eq_ignore_ascii_case(TABLE))
}

fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.to_ascii_lowercase()),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map(|ident| ident.value.to_ascii_lowercase())
        }
        Expr::Nested(inner) => column_name(inner),
        _ => None,
    }
}

fn string_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Value(ValueWithSpan {
            value: SqlValue::SingleQuotedString(text),
            ..
        }) => Some(text.as_str()),
        Expr::Nested(inner) => string_literal(inner),
        _ => None,
    }
}

fn function_is(function: &Function, names: &[&str]) -> bool {
    function.name.0.len() == 1
        && function.name.0[0]
            .as_ident()
            .is_some_and(|ident| names.iter().any(|n| ident.value.eq_ignore_ascii_case(n)))
}

fn is_now(expr: &Expr) -> bool {
    matches!(expr, Expr::Function(f) if function_is(f, &["now", "current_timestamp", "localtimestamp"]))
}

fn interval_nanos(interval: &Interval) -> Option<i64> {
    if interval.leading_field.is_some() || interval.last_field.is_some() {
        return None;
    }
    let duration =
        polars::time::Duration::try_parse_interval(string_literal(&interval.value)?).ok()?;
    if duration.months() != 0 {
        return None;
    }
    let nanos = duration.weeks() * 604_800_000_000_000
        + duration.days() * 86_400_000_000_000
        + duration.nanoseconds();
    Some(if duration.negative() { -nanos } else { nanos })
}

/// A timestamp string: RFC 3339, or `YYYY-MM-DD[ HH:MM[:SS[.f]]]` taken as UTC.
fn timestamp_text(text: &str) -> Option<i64> {
    if let Ok(nanos) = parse_timestamp(&Value::String(text.to_string())) {
        return Some(nanos);
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return naive.and_utc().timestamp_nanos_opt();
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()?
        .and_hms_opt(0, 0, 0)?
        .and_utc()
        .timestamp_nanos_opt()
}

/// The value of a constant time expression: `now()`, a string, `x ± interval`.
fn constant_time(expr: &Expr, now: i64) -> Option<i64> {
    match expr {
        Expr::Nested(inner) => constant_time(inner, now),
        _ if is_now(expr) => Some(now),
        Expr::Value(_) => timestamp_text(string_literal(expr)?),
        Expr::TypedString(typed) => match &typed.value.value {
            SqlValue::SingleQuotedString(text) => timestamp_text(text),
            _ => None,
        },
        Expr::BinaryOp { left, op, right } => {
            let Expr::Interval(interval) = right.as_ref() else {
                return None;
            };
            let (base, delta) = (constant_time(left, now)?, interval_nanos(interval)?);
            match op {
                BinaryOperator::Minus => base.checked_sub(delta),
                BinaryOperator::Plus => base.checked_add(delta),
                _ => None,
            }
        }
        _ => None,
    }
}

fn flip(op: &BinaryOperator) -> Option<BinaryOperator> {
    Some(match op {
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        BinaryOperator::Eq => BinaryOperator::Eq,
        _ => return None,
    })
}

fn conjuncts<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        _ => out.push(expr),
    }
}

/// Narrow the fetch by one top-level condition it understands; others are
/// left to Polars alone.
fn push_down(condition: &Expr, now: i64, filter: &mut SearchRequest) {
    match condition {
        Expr::BinaryOp { left, op, right } => {
            let (column, other, op) = match (column_name(left), column_name(right)) {
                (Some(column), None) => (column, right.as_ref(), op.clone()),
                (None, Some(column)) => match flip(op) {
                    Some(op) => (column, left.as_ref(), op),
                    None => return,
                },
                _ => return,
            };
            if column == "ts" {
                let Some(at) = constant_time(other, now) else {
                    return;
                };
                match op {
                    BinaryOperator::Gt | BinaryOperator::GtEq => tighten_since(filter, at),
                    BinaryOperator::Lt => tighten_until(filter, at),
                    BinaryOperator::LtEq => tighten_until(filter, at.saturating_add(1)),
                    BinaryOperator::Eq => {
                        tighten_since(filter, at);
                        tighten_until(filter, at.saturating_add(1));
                    }
                    _ => {}
                }
            } else if op == BinaryOperator::Eq {
                if let Some(value) = string_literal(other) {
                    push_values(filter, &column, vec![value.to_string()]);
                }
            }
        }
        Expr::Between {
            expr,
            negated: false,
            low,
            high,
            ..
        } if column_name(expr).as_deref() == Some("ts") => {
            if let (Some(low), Some(high)) = (constant_time(low, now), constant_time(high, now)) {
                tighten_since(filter, low);
                tighten_until(filter, high.saturating_add(1));
            }
        }
        Expr::InList {
            expr,
            list,
            negated: false,
            ..
        } => {
            let Some(column) = column_name(expr) else {
                return;
            };
            let values: Option<Vec<String>> = list
                .iter()
                .map(|v| string_literal(v).map(str::to_string))
                .collect();
            if let Some(values) = values {
                push_values(filter, &column, values);
            }
        }
        _ => {}
    }
}

fn tighten_since(filter: &mut SearchRequest, at: i64) {
    filter.since = Some(filter.since.map_or(at, |since| since.max(at)));
}

fn tighten_until(filter: &mut SearchRequest, at: i64) {
    filter.until = Some(filter.until.map_or(at, |until| until.min(at)));
}

/// An equality or IN list on a column the search can filter exactly.
fn push_values(filter: &mut SearchRequest, column: &str, values: Vec<String>) {
    let target = match column {
        "level" => {
            // Stored levels are normalised; only push values that are already.
            if values.iter().any(|v| normalize_level(v) != *v) {
                return;
            }
            &mut filter.levels
        }
        "service" => &mut filter.services,
        "stream" => {
            if values
                .iter()
                .any(|v| crate::record::validate_stream(v).is_err())
            {
                return;
            }
            &mut filter.streams
        }
        "trace_id" => &mut filter.trace_ids,
        "status" => &mut filter.statuses,
        "kind" => {
            filter.kind = match values.as_slice() {
                [one] if one == "log" => KindFilter::Log,
                [one] if one == "span" => KindFilter::Span,
                _ => return,
            };
            return;
        }
        _ => return,
    };
    // Two conditions on the same column: keep the fetch a superset (the
    // query itself decides).
    if target.is_empty() {
        *target = values;
    }
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            clauses: vec![],
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

fn text(value: &str) -> Expr {
    Expr::value(SqlValue::SingleQuotedString(value.to_string()))
}

/// A UTC timestamp literal (Polars' strptime with %z yields a UTC datetime).
fn utc_literal(nanos: i64) -> Expr {
    let formatted = chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(nanos)
        .format("%Y-%m-%dT%H:%M:%S%.6f+0000");
    call(
        "strptime",
        vec![text(&formatted.to_string()), text("%Y-%m-%dT%H:%M:%S%.f%z")],
    )
}

fn rewrite_date_trunc(expr: &Expr) -> Option<Expr> {
    let Expr::Function(function) = expr else {
        return None;
    };
    if !function_is(function, &["date_trunc"]) {
        return None;
    }
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(unit)), FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] =
        list.args.as_slice()
    else {
        return None;
    };
    let format = match string_literal(unit)?.to_ascii_lowercase().as_str() {
        "second" => "%Y-%m-%dT%H:%M:%S+0000",
        "minute" => "%Y-%m-%dT%H:%M:00+0000",
        "hour" => "%Y-%m-%dT%H:00:00+0000",
        "day" => "%Y-%m-%dT00:00:00+0000",
        "month" => "%Y-%m-01T00:00:00+0000",
        "year" => "%Y-01-01T00:00:00+0000",
        _ => return None,
    };
    Some(call(
        "strptime",
        vec![
            call("strftime", vec![arg.clone(), text(format)]),
            text("%Y-%m-%dT%H:%M:%S%z"),
        ],
    ))
}

/// A dataset's time column: a timestamp without a zone, in UTC (as
/// Parquet readers expect it), so what it is compared with must be one too.
const DATASET_TIME: &str = "_time";

/// `_time <op> constant time` (a timestamp string, `now()`, `now() -
/// interval '1 day'`): make the constant a literal without a zone. Runs
/// before `now()` anywhere else becomes a UTC literal.
fn naive_times(expr: &mut Expr, now: i64) {
    compared_sides(expr, |column, other| {
        if column_name(column).as_deref() == Some(DATASET_TIME) {
            if let Some(nanos) = constant_time(other, now) {
                *other = naive_literal(nanos);
            }
        }
    });
}

/// Calls `side(a, b)` and `side(b, a)` for a comparison `a <op> b`, and
/// `side(x, low)`, `side(x, high)` for `x BETWEEN low AND high`.
fn compared_sides(expr: &mut Expr, mut side: impl FnMut(&Expr, &mut Expr)) {
    match expr {
        Expr::BinaryOp { left, op, right }
            if flip(op).is_some() || *op == BinaryOperator::NotEq =>
        {
            side(left, right);
            side(right, left);
        }
        Expr::Between {
            expr, low, high, ..
        } => {
            side(expr, low);
            side(expr, high);
        }
        _ => {}
    }
}

/// A timestamp literal without a zone.
fn naive_literal(nanos: i64) -> Expr {
    let formatted = chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(nanos)
        .format("%Y-%m-%dT%H:%M:%S%.6f");
    call(
        "strptime",
        vec![text(&formatted.to_string()), text("%Y-%m-%dT%H:%M:%S%.f")],
    )
}

/// `ts <op> 'timestamp text'`: make the text a UTC literal.
fn utc_side(column: &Expr, other: &mut Expr) {
    if column_name(column).as_deref() == Some("ts") {
        if let Some(nanos) = string_literal(other).and_then(timestamp_text) {
            *other = utc_literal(nanos);
        }
    }
}

/// Run a planned query over records. Blocking and CPU-heavy: call it from a
/// blocking thread. Answers `{"columns": [...], "rows": [[...], ...]}`.
pub fn execute(sql: &str, hits: &[Hit]) -> Result<Value, SearchError> {
    let frame =
        frame(hits).map_err(|e| SearchError::Internal(format!("building the table: {e}")))?;
    // Polars can still panic on inputs it does not expect: contain it.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut context = SQLContext::new();
        context.register(TABLE, frame.lazy());
        context.execute(sql).and_then(|lazy| lazy.collect())
    }))
    .map_err(|_| invalid("the query could not be run (Polars gave up on it)"))?
    .map_err(|e| invalid(format!("SQL: {e}")))?;
    to_json(&result)
}

/// The table `logs` of these records.
pub fn frame(hits: &[Hit]) -> polars::prelude::PolarsResult<DataFrame> {
    let optional = |value: &str| (!value.is_empty()).then(|| value.to_string());
    let ts: Vec<i64> = hits.iter().map(|h| h.record.ts_nanos).collect();
    let ts = Series::new("ts".into(), ts)
        .into_datetime(TimeUnit::Nanoseconds, Some(TimeZone::UTC))
        .into_column();
    let strings = |name: &str, get: &dyn Fn(&Hit) -> String| {
        Column::new(name.into(), hits.iter().map(get).collect::<Vec<String>>())
    };
    let optional_strings = |name: &str, get: &dyn Fn(&Hit) -> Option<String>| {
        Column::new(
            name.into(),
            hits.iter().map(get).collect::<Vec<Option<String>>>(),
        )
    };
    DataFrame::new(
        hits.len(),
        vec![
            ts,
            strings("stream", &|h| h.stream.clone()),
            Column::new(
                "node".into(),
                hits.iter().map(|h| h.node).collect::<Vec<u64>>(),
            ),
            strings("kind", &|h| h.record.kind.as_str().to_string()),
            strings("level", &|h| h.record.level.clone()),
            strings("service", &|h| h.record.service.clone()),
            strings("message", &|h| h.record.message.clone()),
            optional_strings("trace_id", &|h| optional(&h.record.trace_id)),
            optional_strings("span_id", &|h| optional(&h.record.span_id)),
            Column::new(
                "duration_ns".into(),
                hits.iter()
                    .map(|h| h.record.span.as_ref().map(|s| s.duration_nanos))
                    .collect::<Vec<Option<u64>>>(),
            ),
            optional_strings("status", &|h| {
                h.record.span.as_ref().map(|s| s.status.clone())
            }),
            strings("attributes", &|h| h.record.attributes.clone()),
        ],
    )
}

fn timestamp_json(value: i64, unit: TimeUnit) -> Value {
    let nanos = match unit {
        TimeUnit::Nanoseconds => value,
        TimeUnit::Microseconds => value.saturating_mul(1_000),
        TimeUnit::Milliseconds => value.saturating_mul(1_000_000),
    };
    Value::String(crate::record::format_nanos(nanos))
}

fn any_to_json(value: AnyValue<'_>) -> Value {
    match value {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(b),
        AnyValue::String(s) => Value::String(s.to_string()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::UInt8(x) => x.into(),
        AnyValue::UInt16(x) => x.into(),
        AnyValue::UInt32(x) => x.into(),
        AnyValue::UInt64(x) => x.into(),
        AnyValue::Int8(x) => x.into(),
        AnyValue::Int16(x) => x.into(),
        AnyValue::Int32(x) => x.into(),
        AnyValue::Int64(x) => x.into(),
        AnyValue::Float32(f) => {
            serde_json::Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number)
        }
        AnyValue::Float64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        AnyValue::Datetime(v, unit, _) | AnyValue::DatetimeOwned(v, unit, _) => {
            timestamp_json(v, unit)
        }
        AnyValue::Duration(v, unit) => Value::from(match unit {
            TimeUnit::Nanoseconds => v,
            TimeUnit::Microseconds => v.saturating_mul(1_000),
            TimeUnit::Milliseconds => v.saturating_mul(1_000_000),
        }),
        other => Value::String(other.to_string()),
    }
}

pub fn to_json(frame: &DataFrame) -> Result<Value, SearchError> {
    let columns: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|name| name.to_string())
        .collect();
    let mut rows = Vec::with_capacity(frame.height());
    for i in 0..frame.height() {
        let row = frame
            .columns()
            .iter()
            .map(|column| column.get(i).map(any_to_json))
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|e| SearchError::Internal(format!("reading the result: {e}")))?;
        rows.push(Value::Array(row));
    }
    Ok(json!({"columns": columns, "rows": rows}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    const NOW: i64 = 1_800_000_000_000_000_000;

    fn hit(ts: i64, level: &str, service: &str) -> Hit {
        Hit {
            node: 1,
            stream: "app".into(),
            seq: 1,
            record: Record {
                level: level.into(),
                service: service.into(),
                ..crate::record::test_log(ts, "m")
            },
        }
    }

    #[test]
    fn pushes_down_time_and_filters() {
        let plan = plan(
            "SELECT service, level, count(*) AS n FROM logs WHERE ts > now() - interval '1 hour' \
             AND level IN ('error', 'warn') AND service = 'api' AND message LIKE '%x%' GROUP BY 1, 2",
            NOW,
        )
        .unwrap();
        assert_eq!(plan.filter.since, Some(NOW - 3_600_000_000_000));
        assert_eq!(plan.filter.until, None);
        assert_eq!(plan.filter.levels, ["error", "warn"]);
        assert_eq!(plan.filter.services, ["api"]);
        assert!(plan.sql.contains("strptime"), "{}", plan.sql);
        assert!(!plan.sql.to_lowercase().contains("now()"), "{}", plan.sql);
    }

    #[test]
    fn counts_every_read_of_a_table() {
        for (query, reads) in [
            ("SELECT * FROM logs", 1),
            ("SELECT * FROM logs a JOIN logs b ON a.level = b.level", 2),
            (
                "SELECT * FROM logs WHERE level IN (SELECT level FROM logs)",
                2,
            ),
            ("WITH x AS (SELECT * FROM logs) SELECT * FROM x, x AS y", 3),
        ] {
            let plan = plan(query, NOW).expect("plans");
            assert_eq!(plan.table_reads, reads, "{query}");
        }
        let join = plan("SELECT * FROM logs a, logs b", NOW).expect("plans");
        assert_eq!(join.most_joined_rows(1000), 1_000_000);
        assert!(join.most_joined_rows(1001) > MAX_JOINED_ROWS);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        for bad in [
            "DELETE FROM logs",
            "SELECT 1; SELECT 2",
            "SELEC * FROM logs",
            "SELECT * FROM logs WHERE ts > now() - interval '1 fortnight'",
        ] {
            assert!(
                matches!(plan(bad, NOW), Err(SearchError::InvalidQuery(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn runs_group_by_with_time_conditions() {
        let hits = vec![
            hit(NOW - 10, "error", "api"),
            hit(NOW - 20, "error", "api"),
            hit(NOW - 30, "info", "api"),
            hit(NOW - 7_200_000_000_000, "error", "api"),
            hit(NOW - 40, "error", "db"),
        ];
        let plan = plan(
            "SELECT service, level, count(*) AS n FROM logs WHERE ts > now() - interval '1 hour' \
             GROUP BY 1, 2 ORDER BY n DESC, service",
            NOW,
        )
        .unwrap();
        let answer = execute(&plan.sql, &hits).unwrap();
        assert_eq!(answer["columns"], json!(["service", "level", "n"]));
        assert_eq!(
            answer["rows"],
            json!([["api", "error", 2], ["api", "info", 1], ["db", "error", 1]])
        );
        let plan = super::plan(
            "SELECT max(ts) AS last FROM logs WHERE ts < '2027-01-15T08:00:00Z'",
            NOW,
        )
        .unwrap();
        let answer = execute(&plan.sql, &hits).unwrap();
        assert_eq!(
            answer["rows"][0][0],
            json!(crate::record::format_nanos(NOW - 10))
        );
    }
}
