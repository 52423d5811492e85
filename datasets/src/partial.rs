//! Partial aggregation: a grouped query over one dataset split into a
//! query each node runs over its own rows (grouped by the same keys, with
//! sums and counts in place of the aggregates) and a query that merges
//! the nodes' groups. Each node then sends one row per group instead of
//! every matching row.
//!
//! Only shapes whose merge is exact are split: one SELECT over one dataset
//! without joins, `SELECT DISTINCT`, window functions or `GROUP BY`
//! positions; aggregates `count(*)`, `count(x)`, `count(DISTINCT x)`,
//! `sum`, `min`, `max` and `avg` (a sum and a count); every
//! aggregate in the SELECT list named with `AS`. Any other query runs as it
//! is over every node's matching rows.
//!
//! `count(DISTINCT x)` cannot merge from groups: the same x may be in
//! several nodes' groups. Each node sends, beside its groups, the keys and
//! x of each of its matching rows, as a frame of its own; the asking node
//! counts the distinct x per group over every node's rows and the merge
//! takes those counts like another group's columns. The other aggregates'
//! columns (a day's revenue beside its customers) then do not cross once
//! per row. The nodes do not remove duplicate (keys, x) first: with many
//! distinct values (customers per day) nearly every row is its own pair,
//! and grouping them on the nodes measured slower than sending them
//! (bench/README.md).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, GroupByExpr, Ident, ObjectName, OrderByKind, SelectItem, SetExpr, Statement,
    TableFactor, VisitMut, VisitorMut,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use serde::{Deserialize, Serialize};

use crate::definition::{DATE_COLUMN, TIME_COLUMN};
use crate::query::column_name;

/// What each node runs over its rows of a dataset instead of sending them
/// (a frame per query it has, in this order), and what the asking node
/// makes of the distinct rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialQueries {
    /// Its groups: the keys and the partial aggregates.
    pub groups: Option<String>,
    /// For `count(DISTINCT x)`: the keys and each x of every matching row.
    pub distinct_rows: Option<String>,
    /// Over every node's distinct rows, on the asking node: the keys and
    /// each count of distinct x, under the names of the x columns; these
    /// rows are stacked under the groups for the merge.
    pub distinct_counts: Option<String>,
}

impl PartialQueries {
    /// How many frames a node's part of the scan has.
    pub fn frames(&self) -> usize {
        usize::from(self.groups.is_some()) + usize::from(self.distinct_rows.is_some())
    }
}

/// A query in two steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// What each node runs over its rows of the dataset.
    pub partial: PartialQueries,
    /// What runs over every node's partial rows, registered under the
    /// dataset's name.
    pub merge: String,
    /// Whether the partial query groups by the `date` column (a time
    /// bucket of whole days became one).
    pub uses_date: bool,
}

/// One GROUP BY key.
struct Key {
    /// The expression as the query wrote it (the merge replaces it).
    original: Expr,
    /// What each node groups by.
    partial: Expr,
    /// Its column in the nodes' groups.
    name: String,
    /// What the merge groups by.
    merge: Expr,
}

/// `strftime(_time, format)` where the format names whole days or coarser
/// (`%Y-%m`, `%G-W%V`, `%Y-%m-%d`): the same as `strftime(date, format)`.
/// Formatting every row's timestamp is the costly part of such a query;
/// grouping by `date` first leaves one value per day to format.
fn day_bucket(expr: &Expr) -> Option<Expr> {
    let Expr::Function(function) = expr else {
        return None;
    };
    if function_name(function).as_deref() != Some("strftime") || function.over.is_some() {
        return None;
    }
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(time)), FunctionArg::Unnamed(FunctionArgExpr::Expr(format))] =
        list.args.as_slice()
    else {
        return None;
    };
    let time_name = column_name(time)?;
    let Expr::Value(value) = format else {
        return None;
    };
    let sqlparser::ast::Value::SingleQuotedString(text) = &value.value else {
        return None;
    };
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '%'
            && !chars
                .next()
                .is_some_and(|s| "YymdejGgVUWaAbBhuwCDF%".contains(s))
        {
            return None;
        }
    }
    (time_name == TIME_COLUMN).then(|| Expr::Identifier(Ident::new(DATE_COLUMN)))
}

/// Aggregates whose partial results merge exactly.
const MERGEABLE: [&str; 6] = ["count", "sum", "min", "max", "avg", "mean"];

/// Aggregates that depend on how many rows a group has or on their order
/// and cannot be merged from per-node groups; a query with one of these
/// runs unsplit.
const UNMERGEABLE: &[&str] = &[
    "first",
    "last",
    "median",
    "mode",
    "quantile",
    "quantile_cont",
    "quantile_disc",
    "percentile_cont",
    "percentile_disc",
    "std",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "stdev",
    "variance",
    "var",
    "var_samp",
    "var_pop",
    "array_agg",
    "string_agg",
    "listagg",
    "group_concat",
    "corr",
    "covar",
    "covar_samp",
    "covar_pop",
    "kurtosis",
    "skew",
    "any_value",
    "bool_and",
    "bool_or",
    "count_if",
    "approx_count_distinct",
    "n_unique",
    "implode",
];

/// One aggregate of the query and the partial columns it becomes.
struct Aggregate {
    /// The aggregate as the query wrote it (its text is its identity).
    original: String,
    /// The expression that merges the partial columns.
    merge: Expr,
}

/// The query split for `table`, when its shape allows it.
pub fn split(sql: &str, table: &str) -> Option<Split> {
    let statements = Parser::parse_sql(&GenericDialect, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Statement::Query(query) = &statements[0] else {
        return None;
    };
    if query.with.is_some() || query.fetch.is_some() || !query.locks.is_empty() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let plain = select.distinct.is_none()
        && select.top.is_none()
        && select.into.is_none()
        && select.prewhere.is_none()
        && select.exclude.is_none()
        && select.lateral_views.is_empty()
        && select.connect_by.is_empty()
        && select.cluster_by.is_empty()
        && select.distribute_by.is_empty()
        && select.sort_by.is_empty()
        && select.named_window.is_empty()
        && select.qualify.is_none()
        && select.from.len() == 1
        && select.from[0].joins.is_empty()
        && matches!(&select.from[0].relation, TableFactor::Table { name, alias: None, args: None, .. }
            if name.to_string() == table);
    if !plain {
        return None;
    }
    let group_by = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs.clone(),
        _ => return None,
    };
    // The aggregates, each with the partial columns it needs.
    let mut collector = Collector::default();
    for item in &select.projection {
        match item {
            SelectItem::ExprWithAlias { expr, .. } => collector.walk(expr),
            SelectItem::UnnamedExpr(expr) => {
                let before = collector.aggregates.len();
                collector.walk(expr);
                if collector.aggregates.len() != before || contains_aggregate(expr) {
                    // The merged column would be named after the rewrite.
                    return None;
                }
            }
            _ => return None,
        }
    }
    if let Some(having) = &select.having {
        collector.walk(having);
    }
    if let Some(order_by) = &query.order_by {
        let OrderByKind::Expressions(exprs) = &order_by.kind else {
            return None;
        };
        for order in exprs {
            collector.walk(&order.expr);
        }
    }
    if collector.refused || collector.aggregates.is_empty() {
        return None;
    }
    // The keys: a GROUP BY name that is a SELECT alias stands for the
    // aliased expression.
    let mut keys: Vec<Key> = Vec::with_capacity(group_by.len());
    for (i, expr) in group_by.iter().enumerate() {
        if matches!(expr, Expr::Value(_)) {
            return None;
        }
        let aliased = select
            .projection
            .iter()
            .find_map(|item| match (item, expr) {
                (
                    SelectItem::ExprWithAlias {
                        expr: aliased,
                        alias,
                    },
                    Expr::Identifier(name),
                ) if alias.value == name.value => Some(aliased.clone()),
                _ => None,
            });
        let (original, name) = match (aliased, column_name(expr)) {
            (Some(aliased), Some(name)) => (aliased, name.to_string()),
            (_, Some(name)) => (expr.clone(), name.to_string()),
            _ => (expr.clone(), format!("__k{i}")),
        };
        // Distinct values are counted per group of the query, not per day
        // (a month's customers are not the sum of its days'): with
        // count(DISTINCT x) no key is grouped by `date` first.
        let bucket = match collector.distinct.is_empty() {
            true => day_bucket(&original),
            false => None,
        };
        keys.push(match bucket {
            Some(day) => {
                let name = format!("__k{i}");
                let mut merge = original.clone();
                if let Expr::Function(Function {
                    args: FunctionArguments::List(list),
                    ..
                }) = &mut merge
                {
                    list.args[0] = FunctionArg::Unnamed(FunctionArgExpr::Expr(column(&name)));
                }
                Key {
                    original,
                    partial: day,
                    name,
                    merge,
                }
            }
            None => Key {
                partial: original.clone(),
                original,
                merge: column(&name),
                name,
            },
        });
    }

    // Each node: the keys and the partial aggregates; the keys and the
    // distinct arguments of its rows.
    let key_items: Vec<SelectItem> = keys
        .iter()
        .map(|key| alias(key.partial.clone(), &key.name))
        .collect();
    let key_exprs: Vec<Expr> = keys.iter().map(|key| key.partial.clone()).collect();
    let node_query = |items: Vec<SelectItem>, group: Vec<Expr>| {
        let mut node_select = select.as_ref().clone();
        node_select.projection = key_items.iter().cloned().chain(items).collect();
        node_select.group_by = GroupByExpr::Expressions(group, Vec::new());
        node_select.having = None;
        let mut node_query = query.as_ref().clone();
        *node_query.body = SetExpr::Select(Box::new(node_select));
        node_query.order_by = None;
        node_query.limit_clause = None;
        node_query.to_string()
    };
    let groups = (!collector.partials.is_empty())
        .then(|| node_query(collector.partials.clone(), key_exprs.clone()));
    let distinct_rows = (!collector.distinct.is_empty()).then(|| {
        let items = collector.distinct.iter().enumerate();
        let items = items.map(|(i, (_, arg))| alias(arg.clone(), &distinct_name(i)));
        node_query(items.collect(), Vec::new())
    });
    let distinct_counts = (!collector.distinct.is_empty()).then(|| {
        let names: Vec<String> = keys
            .iter()
            .map(|key| column(&key.name).to_string())
            .collect();
        let counts = (0..collector.distinct.len()).map(|i| {
            let name = column(&distinct_name(i));
            format!("count(DISTINCT {name}) AS {name}")
        });
        let items: Vec<String> = names.iter().cloned().chain(counts).collect();
        let group = match names.is_empty() {
            true => String::new(),
            false => format!(" GROUP BY {}", names.join(", ")),
        };
        format!(
            "SELECT {} FROM {}{group}",
            items.join(", "),
            Ident::with_quote('"', table)
        )
    });

    // The merge: aggregates of the partial columns, keys by their names.
    let mut merge_select = select.as_ref().clone();
    merge_select.selection = None;
    merge_select.group_by = GroupByExpr::Expressions(
        keys.iter().map(|key| key.merge.clone()).collect(),
        Vec::new(),
    );
    let mut rewriter = Rewriter {
        aggregates: &collector.aggregates,
        keys: &keys,
    };
    for item in &mut merge_select.projection {
        if let SelectItem::ExprWithAlias { expr, .. } = item {
            let _ = expr.visit(&mut rewriter);
        }
    }
    if let Some(having) = &mut merge_select.having {
        let _ = having.visit(&mut rewriter);
    }
    let mut merge_query = query.as_ref().clone();
    if let Some(order_by) = &mut merge_query.order_by {
        let _ = order_by.visit(&mut rewriter);
    }
    // Every column the merge still names must be a key, a partial column
    // or an alias of the SELECT list (ORDER BY revenue).
    let mut known: BTreeSet<String> = keys.iter().map(|key| key.name.clone()).collect();
    known.extend(
        merge_select
            .projection
            .iter()
            .filter_map(|item| match item {
                SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
                _ => None,
            }),
    );
    *merge_query.body = SetExpr::Select(Box::new(merge_select));
    if !names_only(&merge_query, &known) {
        return None;
    }
    Some(Split {
        partial: PartialQueries {
            groups,
            distinct_rows,
            distinct_counts,
        },
        merge: merge_query.to_string(),
        uses_date: keys.iter().any(|key| key.partial != key.original),
    })
}

fn alias(expr: Expr, name: &str) -> SelectItem {
    SelectItem::ExprWithAlias {
        expr,
        alias: Ident::with_quote('"', name),
    }
}

fn function_name(function: &Function) -> Option<String> {
    match function.name.0.as_slice() {
        [part] => part
            .as_ident()
            .map(|ident| ident.value.to_ascii_lowercase()),
        _ => None,
    }
}

fn call(name: &str, arg: Expr) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            clauses: vec![],
            args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// The column of the N-th distinct argument in a node's distinct rows.
fn distinct_name(index: usize) -> String {
    format!("{DISTINCT_PREFIX}{index}")
}

const DISTINCT_PREFIX: &str = "__d";

/// Whether a column of the distinct rows holds a distinct argument (the
/// others are the keys).
pub fn is_distinct_name(name: &str) -> bool {
    name.strip_prefix(DISTINCT_PREFIX)
        .is_some_and(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
}

fn column(name: &str) -> Expr {
    Expr::Identifier(Ident::with_quote('"', name))
}

/// Whether an expression holds a function call of an aggregate name.
fn contains_aggregate(expr: &Expr) -> bool {
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(expr, |e: &Expr| {
        if let Expr::Function(function) = e {
            let name = function_name(function).unwrap_or_default();
            if MERGEABLE.contains(&name.as_str()) || UNMERGEABLE.contains(&name.as_str()) {
                found = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

/// Finds the aggregates of the query and makes their partial columns.
#[derive(Default)]
struct Collector {
    aggregates: Vec<Aggregate>,
    /// Partial aggregates, `expr AS "__aN"`.
    partials: Vec<SelectItem>,
    /// Arguments of `count(DISTINCT x)`, with their text; the N-th is the
    /// column [`distinct_name`]`(N)`.
    distinct: Vec<(String, Expr)>,
    /// An aggregate that cannot be merged, or a form not understood.
    refused: bool,
}

impl Collector {
    fn walk(&mut self, expr: &Expr) {
        let _ = sqlparser::ast::visit_expressions(expr, |e: &Expr| {
            if let Expr::Function(function) = e {
                self.function(function, e);
            }
            ControlFlow::<()>::Continue(())
        });
    }

    fn partial(&mut self, expr: Expr) -> Expr {
        let name = format!("__a{}", self.partials.len());
        self.partials.push(alias(expr, &name));
        column(&name)
    }

    /// The column of a distinct argument (one per argument text).
    fn distinct_column(&mut self, arg: &Expr) -> Expr {
        let text = arg.to_string();
        let index = match self.distinct.iter().position(|(t, _)| *t == text) {
            Some(index) => index,
            None => {
                self.distinct.push((text, arg.clone()));
                self.distinct.len() - 1
            }
        };
        column(&distinct_name(index))
    }

    fn function(&mut self, function: &Function, whole: &Expr) {
        let Some(name) = function_name(function) else {
            return;
        };
        if UNMERGEABLE.contains(&name.as_str()) || function.over.is_some() {
            self.refused = true;
            return;
        }
        if !MERGEABLE.contains(&name.as_str()) {
            return;
        }
        let original = whole.to_string();
        if self.aggregates.iter().any(|a| a.original == original) {
            return;
        }
        let FunctionArguments::List(list) = &function.args else {
            self.refused = true;
            return;
        };
        // Of the aggregates over DISTINCT x, Polars has count alone.
        let distinct =
            name == "count" && list.duplicate_treatment == Some(DuplicateTreatment::Distinct);
        let plain = (list.duplicate_treatment.is_none() || distinct)
            && function.filter.is_none()
            && function.null_treatment.is_none()
            && function.within_group.is_empty()
            && list.clauses.is_empty()
            && list.args.len() == 1;
        if !plain {
            self.refused = true;
            return;
        }
        let argument = match &list.args[0] {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(arg)) => {
                if contains_aggregate(arg) {
                    self.refused = true;
                    return;
                }
                Some(arg.clone())
            }
            FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if name == "count" && !distinct => None,
            _ => {
                self.refused = true;
                return;
            }
        };
        if let (true, Some(arg)) = (distinct, &argument) {
            if matches!(arg, Expr::Value(_)) {
                // A node's rows of a constant alone would be one row,
                // however many (or few) rows it has.
                self.refused = true;
                return;
            }
            // The group's count of distinct x, from the asking node's
            // count over every node's rows (one row per group).
            let counted = self.distinct_column(arg);
            self.aggregates.push(Aggregate {
                original,
                merge: call("max", counted),
            });
            return;
        }
        let merge = match (name.as_str(), argument) {
            ("count", arg) => {
                let counted = self.partial(match arg {
                    Some(arg) => call("count", arg),
                    None => whole.clone(),
                });
                call("sum", counted)
            }
            ("sum", Some(arg)) => call("sum", self.partial(call("sum", arg))),
            ("min", Some(arg)) => call("min", self.partial(call("min", arg))),
            ("max", Some(arg)) => call("max", self.partial(call("max", arg))),
            (_, Some(arg)) => {
                // avg: the sum of the sums over the sum of the counts (NULL
                // for a group without values, as avg gives).
                let sum = call("sum", self.partial(call("sum", arg.clone())));
                let count = call("sum", self.partial(call("count", arg)));
                match Parser::new(&GenericDialect)
                    .try_with_sql(&format!(
                        "CASE WHEN {count} = 0 THEN NULL ELSE CAST({sum} AS DOUBLE) / {count} END"
                    ))
                    .and_then(|mut parser| parser.parse_expr())
                {
                    Ok(expr) => expr,
                    Err(_) => {
                        self.refused = true;
                        return;
                    }
                }
            }
            _ => {
                self.refused = true;
                return;
            }
        };
        self.aggregates.push(Aggregate { original, merge });
    }
}

/// Puts the merge of each aggregate and of each key in its place.
struct Rewriter<'a> {
    aggregates: &'a [Aggregate],
    keys: &'a [Key],
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let text = expr.to_string();
        if let Some(aggregate) = self.aggregates.iter().find(|a| a.original == text) {
            *expr = aggregate.merge.clone();
        } else if let Some(key) = self.keys.iter().find(|key| {
            !matches!(key.original, Expr::Identifier(_)) && key.original.to_string() == text
        }) {
            *expr = key.merge.clone();
        }
        ControlFlow::Continue(())
    }
}

/// Whether every column the query names is in `known` or a partial column.
fn names_only(query: &sqlparser::ast::Query, known: &BTreeSet<String>) -> bool {
    let mut ok = true;
    let _ = sqlparser::ast::visit_expressions(query, |expr: &Expr| {
        if let Some(name) = column_name(expr) {
            if !known.contains(name) && !name.starts_with("__a") && !name.starts_with("__d") {
                ok = false;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    ok
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use polars::prelude::{AnyValue, DataFrame};
    use serde_json::json;

    use crate::query::plan;
    use crate::run::{execute, scan, Local};
    use crate::store::tests::live_paths;
    use crate::{Dataset, Datasets, TableScan};

    fn orders() -> BTreeMap<String, Dataset> {
        let orders: Dataset = serde_json::from_value(json!({"columns": [
            {"name": "order_id", "type": "string", "from": "/data/id"},
            {"name": "customer", "type": "string", "from": "/data/customer"},
            {"name": "status", "type": "string", "from": "/data/status"},
            {"name": "total", "type": "float64", "from": "/data/total"},
            {"name": "items", "type": "int64", "from": "/data/items"}]}))
        .expect("definition");
        BTreeMap::from([(
            "orders".to_string(),
            orders.validate("orders").expect("valid"),
        )])
    }

    /// The scan of a query that runs as written over every row.
    fn as_written(scan: &TableScan) -> TableScan {
        TableScan {
            partial: None,
            filter: None,
            sent: scan.columns.clone(),
            ..scan.clone()
        }
    }

    /// Rows as text, floats to 6 places, sorted unless the query orders them.
    fn rows(frame: &DataFrame, ordered: bool) -> Vec<String> {
        let mut rows: Vec<String> = (0..frame.height())
            .map(|i| {
                frame
                    .columns()
                    .iter()
                    .map(|column| match column.get(i) {
                        Ok(AnyValue::Float64(f)) => format!("{f:.6}"),
                        Ok(value) => value.to_string(),
                        Err(e) => e.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        if !ordered {
            rows.sort();
        }
        rows
    }

    /// Every query gives the same answer split over three nodes as whole
    /// over all rows in one place; the ones that cannot merge exactly are
    /// not split.
    #[test]
    fn a_split_query_answers_as_the_whole_query() {
        let temp = tempfile::tempdir().expect("temp");
        let datasets = orders();
        let dataset = &datasets["orders"];
        let nodes: Vec<Datasets> = (1..=3)
            .map(|n| Datasets::new(temp.path().join(format!("node{n}")), n))
            .collect();
        let whole = Datasets::new(temp.path().join("whole"), 9);
        let mut all = Vec::new();
        for i in 0..600u64 {
            let mut data = json!({"id": format!("o-{i}"), "customer": format!("c{}", i % 23),
                "status": if i % 5 == 0 { "cancelled" } else { "completed" },
                // Eighths: every sum is exact in any order, so a rounded
                // mean cannot fall either side of .xx5 by the order the
                // nodes' rows were added in.
                "total": (i % 97) as f64 * 1.25 + 0.125, "items": i % 6});
            if i % 11 == 0 {
                data["total"] = json!(null);
            }
            if i % 13 == 0 {
                data["customer"] = json!(null);
            }
            let envelope = json!({"id": format!("e-{i}"), "data": data,
                "time": format!("2026-{:02}-{:02}T{:02}:00:00Z", 1 + i % 3, 1 + i % 28, i % 24)});
            all.push((i, dataset.row(&envelope).expect("row")));
        }
        for (n, node) in nodes.iter().enumerate() {
            let part: Vec<_> = all
                .iter()
                .filter(|(i, _)| *i as usize % 3 == n)
                .cloned()
                .map(|(i, row)| (i + 1, row))
                .collect();
            let (first, last) = (part[0].0, part[part.len() - 1].0);
            node.write(dataset, first, last, part).expect("write");
        }
        let everything: Vec<_> = all.iter().cloned().map(|(i, row)| (i + 1, row)).collect();
        whole.write(dataset, 1, 600, everything).expect("write");
        let files = |store: &Datasets| live_paths(store, "orders");
        let split = [
            "SELECT CAST(date AS VARCHAR) AS day, count(*) AS orders, sum(total) AS revenue, \
             avg(total) AS avg_order FROM orders WHERE status = 'completed' \
             GROUP BY date ORDER BY date",
            "SELECT customer, sum(total) AS revenue FROM orders WHERE status = 'completed' \
             GROUP BY customer ORDER BY revenue DESC, customer LIMIT 5",
            "SELECT strftime(_time, '%Y-%m') AS month, status, count(*) AS orders, \
             sum(total) AS revenue FROM orders GROUP BY month, status ORDER BY month, status",
            "SELECT count(*) AS n FROM orders",
            "SELECT count(*) AS n, count(total) AS priced, min(total) AS lo, max(total) AS hi, \
             avg(items) AS average FROM orders WHERE total > 10",
            "SELECT customer, count(*) AS n FROM orders GROUP BY customer HAVING count(*) > 25",
            "SELECT customer, round(sum(total) / count(*), 2) AS mean FROM orders \
             GROUP BY customer ORDER BY customer",
            "SELECT customer, count(*) AS n FROM orders GROUP BY customer \
             HAVING sum(total) > 1000 ORDER BY n DESC, customer LIMIT 4",
            "SELECT orders.status, count(orders.customer) AS c FROM orders \
             GROUP BY orders.status ORDER BY orders.status",
            "SELECT items, avg(total) AS a FROM orders WHERE customer IS NULL GROUP BY items",
            "SELECT count(*) AS n FROM orders WHERE total > 1000000",
            "SELECT strftime(_time, '%G-W%V') AS week, sum(total) AS revenue FROM orders \
             GROUP BY strftime(_time, '%G-W%V') ORDER BY week",
            "SELECT strftime(_time, '%Y-%m-%d %H:00') AS hour, count(*) AS n FROM orders \
             GROUP BY hour ORDER BY hour",
            "SELECT strftime(orders._time, '%Y') AS y, status, max(total) AS hi FROM orders \
             GROUP BY y, status ORDER BY y DESC, status",
            // Aggregates over DISTINCT x: each node sends its distinct
            // (keys, x) beside its groups (customers are on every node).
            "SELECT date, sum(total) AS revenue, count(DISTINCT customer) AS customers \
             FROM orders GROUP BY date",
            "SELECT CAST(date AS VARCHAR) AS day, count(*) AS orders, sum(total) AS revenue, \
             avg(total) AS avg_order, count(DISTINCT customer) AS customers FROM orders \
             WHERE status = 'completed' GROUP BY date ORDER BY date",
            "SELECT count(DISTINCT customer) AS c FROM orders WHERE status = 'completed'",
            "SELECT count(DISTINCT customer) AS c FROM orders WHERE total > 1000000",
            "SELECT status, count(DISTINCT customer) AS c, count(DISTINCT items) AS i, \
             max(total) AS hi FROM orders GROUP BY status \
             HAVING count(DISTINCT customer) > 3 ORDER BY c DESC, status",
            "SELECT strftime(_time, '%Y-%m') AS month, count(DISTINCT customer) AS c, \
             count(DISTINCT items) / count(*) AS r FROM orders GROUP BY month ORDER BY month",
            "SELECT customer, count(DISTINCT customer) AS once, count(*) AS n FROM orders \
             GROUP BY customer ORDER BY customer",
            "SELECT items, count(DISTINCT customer) AS c FROM orders \
             WHERE customer IS NULL GROUP BY items",
        ];
        let whole_only = [
            "SELECT customer, median(total) AS m FROM orders GROUP BY customer",
            "SELECT DISTINCT customer FROM orders",
            "SELECT customer, count(*) FROM orders GROUP BY customer",
            "SELECT order_id, total FROM orders WHERE total > 100",
            "SELECT o.customer, count(*) AS n FROM orders o GROUP BY o.customer",
            "SELECT customer, count(*) AS n, first(total) AS f FROM orders GROUP BY customer",
            "SELECT customer, n FROM (SELECT customer, count(*) AS n FROM orders GROUP BY customer) AS x",
            "SELECT count(DISTINCT 1) AS c FROM orders",
            "SELECT status, count(DISTINCT customer) FROM orders GROUP BY status",
            // A subquery reads the whole table (order o-1 is on one node
            // only): neither split nor filtered on the nodes.
            "SELECT status, count(*) AS n FROM orders \
             WHERE customer IN (SELECT customer FROM orders WHERE order_id = 'o-1') GROUP BY status",
            "SELECT order_id FROM orders \
             WHERE customer IN (SELECT customer FROM orders WHERE order_id = 'o-1')",
        ];
        for (sql, should_split) in split
            .iter()
            .map(|s| (s, true))
            .chain(whole_only.iter().map(|s| (s, false)))
        {
            let planned = plan(sql, &datasets).expect(sql);
            assert_eq!(planned.merge.is_some(), should_split, "{sql}: {planned:?}");
            if sql.contains("'%Y-%m')") || sql.contains("'%G-W%V')") {
                // A bucket of whole days: the nodes group by day, unless
                // distinct values are counted per bucket.
                let partial = format!("{:?}", planned.scans[0].partial);
                assert_eq!(
                    partial.contains("strftime"),
                    sql.contains("DISTINCT"),
                    "{partial}"
                );
            }
            let table = &planned.scans[0];
            let expected = execute(
                sql,
                None,
                vec![(as_written(table), Local::Files(files(&whole)), Vec::new())],
                vec![],
            )
            .expect(sql);
            let parts = nodes[1..]
                .iter()
                .map(|node| scan(table, &files(node)).expect(sql))
                .collect();
            let got = execute(
                &planned.sql,
                planned.merge.as_deref(),
                vec![(table.clone(), Local::Files(files(&nodes[0])), parts)],
                vec![],
            )
            .expect(sql);
            let ordered = sql.contains("ORDER BY");
            assert_eq!(
                rows(&got, ordered),
                rows(&expected, ordered),
                "{sql}\nmerge: {:?}",
                planned.merge
            );
            // One node alone runs the split query too.
            let alone = execute(
                sql,
                None,
                vec![(as_written(table), Local::Files(files(&nodes[0])), vec![])],
                vec![],
            )
            .expect(sql);
            let split_alone = execute(
                &planned.sql,
                planned.merge.as_deref(),
                vec![(table.clone(), Local::Files(files(&nodes[0])), vec![])],
                vec![],
            )
            .expect(sql);
            assert_eq!(
                rows(&split_alone, ordered),
                rows(&alone, ordered),
                "{sql} on one node"
            );
            assert_eq!(got.get_column_names(), expected.get_column_names(), "{sql}");
            assert!(expected.height() > 0 || sql.contains("1000000"), "{sql}");
        }
    }
}
