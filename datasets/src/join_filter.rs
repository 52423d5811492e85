//! The conditions of a join's WHERE that one dataset's rows must meet
//! alone, so that each node sends only those rows and opens only the day
//! partitions they can be in. The query still runs its whole WHERE over
//! what the nodes sent; a condition is only ever applied once more.
//!
//! Only where that is exact: one SELECT (no CTE, no set operation) whose
//! FROM holds tables alone, joined by inner or cross joins (an outer join
//! would turn a row the condition removed into one padded with NULLs,
//! which `x IS NULL` keeps); a dataset named once in it; a top-level (AND)
//! condition all of whose columns are qualified by that dataset's alias
//! (or name).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, BinaryOperator, Expr, JoinOperator, Query, SetExpr,
    TableFactor,
};

use crate::days::conjuncts;

/// Per dataset of `datasets` that a join reads once, the conditions only
/// on it, joined with AND, its columns unqualified (as each node's filter
/// names them).
pub(crate) fn join_filters(query: &Query, datasets: &BTreeSet<String>) -> BTreeMap<String, Expr> {
    let mut filters = BTreeMap::new();
    let (None, SetExpr::Select(select)) = (&query.with, query.body.as_ref()) else {
        return filters;
    };
    let Some(selection) = &select.selection else {
        return filters;
    };
    // What each name in FROM (an alias, or the table's own name) stands
    // for, and how often each table is named.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for from in &select.from {
        let inner = from.joins.iter().all(|join| {
            matches!(
                join.join_operator,
                JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_)
            )
        });
        if !inner {
            return filters;
        }
        let relations =
            std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation));
        for relation in relations {
            let TableFactor::Table { name, alias, .. } = relation else {
                return filters;
            };
            let table = name.to_string();
            let called = alias
                .as_ref()
                .map_or_else(|| table.clone(), |alias| alias.name.value.clone());
            *times.entry(table.clone()).or_default() += 1;
            names.insert(called, table);
        }
    }
    let mut conditions: BTreeMap<String, Vec<Expr>> = BTreeMap::new();
    for condition in conjuncts(selection) {
        let Some(table) = only_table(condition, &names) else {
            continue;
        };
        if datasets.contains(&table) && times.get(&table) == Some(&1) {
            conditions
                .entry(table)
                .or_default()
                .push(unqualified(condition));
        }
    }
    for (table, conditions) in conditions {
        let joined = conditions
            .into_iter()
            .map(|c| Expr::Nested(Box::new(c)))
            .reduce(|left, right| Expr::BinaryOp {
                left: Box::new(left),
                op: BinaryOperator::And,
                right: Box::new(right),
            });
        if let Some(joined) = joined {
            filters.insert(table, joined);
        }
    }
    filters
}

/// The table every column of a condition is qualified by, if there is one
/// and it is in FROM (an unqualified column could be of any table).
fn only_table(condition: &Expr, names: &BTreeMap<String, String>) -> Option<String> {
    let mut qualifiers = BTreeSet::new();
    let unclear = visit_expressions(condition, |expr: &Expr| match expr {
        Expr::Identifier(_) => ControlFlow::Break(()),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            qualifiers.insert(parts[0].value.clone());
            ControlFlow::Continue(())
        }
        Expr::CompoundIdentifier(_) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break();
    match (unclear, qualifiers.len()) {
        (false, 1) => qualifiers.first().and_then(|q| names.get(q)).cloned(),
        _ => None,
    }
}

/// A condition with `alias.column` written `column`.
fn unqualified(condition: &Expr) -> Expr {
    let mut condition = condition.clone();
    let _ = visit_expressions_mut(&mut condition, |expr: &mut Expr| {
        if let Expr::CompoundIdentifier(parts) = expr {
            if let Some(column) = parts.last() {
                *expr = Expr::Identifier(column.clone());
            }
        }
        ControlFlow::<()>::Continue(())
    });
    condition
}

#[cfg(test)]
mod tests {
    use crate::query::plan;
    use crate::query::tests::datasets;

    /// The filter and first day of the scan of `orders` in a query's plan.
    fn pushed(sql: &str) -> (Option<String>, Option<String>) {
        let plan = plan(sql, &datasets()).expect("plan");
        let scan = &plan.scans[0];
        (scan.filter.clone(), scan.days.from.clone())
    }

    #[test]
    fn a_joins_conditions_on_one_dataset_alone_are_pushed_to_its_scan() {
        let (filter, from) = pushed(
            "SELECT o.order_id, l.message FROM orders o JOIN logs l ON l.message = o.order_id \
             WHERE o.total > 10 AND l.level = 'error' AND (o.date >= '2026-12-05' AND \
             (o.total < 100 OR l.level = 'warn'))",
        );
        assert_eq!(
            filter.as_deref(),
            Some("(total > 10) AND (date >= '2026-12-05')")
        );
        assert_eq!(from.as_deref(), Some("2026-12-05"));
        // Named by the table's own name, and with a comma join.
        let (filter, _) = pushed(
            "SELECT orders.total FROM orders, workflow_instances w \
             WHERE orders.customer = w.id AND orders.customer LIKE 'c%'",
        );
        assert_eq!(filter.as_deref(), Some("(customer LIKE 'c%')"));
        // The query itself keeps its WHERE.
        let plan = plan(
            "SELECT o.total FROM orders o JOIN logs l ON l.message = o.order_id WHERE o.total > 1",
            &datasets(),
        )
        .expect("plan");
        assert!(plan.sql.contains("WHERE o.total > 1"), "{}", plan.sql);
    }

    #[test]
    fn nothing_is_pushed_where_it_could_change_the_answer() {
        for sql in [
            // An outer join: `o.total IS NULL` keeps rows padded with NULLs.
            "SELECT * FROM logs l LEFT JOIN orders o ON l.message = o.order_id \
             WHERE o.total IS NULL",
            // An unqualified column could be either table's.
            "SELECT * FROM orders o JOIN logs l ON l.message = o.order_id WHERE total > 1",
            // The same dataset twice: each side has its own rows.
            "SELECT * FROM orders a JOIN orders b ON a.order_id = b.customer WHERE a.total > 1",
            // A CTE.
            "WITH big AS (SELECT * FROM orders o WHERE o.total > 1) \
             SELECT * FROM big b JOIN logs l ON l.message = b.order_id WHERE b.total > 2",
            // A subquery.
            "SELECT * FROM orders o JOIN logs l ON l.message = o.order_id \
             WHERE o.total > (SELECT avg(total) FROM orders)",
        ] {
            assert_eq!(pushed(sql), (None, None), "{sql}");
        }
    }
}
