//! The day partitions a query can match, from its WHERE: files of other
//! days are not opened.

use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Value as SqlValue,
};

use crate::definition::{DATE_COLUMN, TIME_COLUMN};
use crate::query::column_name;

/// Inclusive bounds on day partitions (`YYYY-MM-DD`), a superset of the
/// days whose rows a query can match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayRange {
    pub from: Option<String>,
    pub to: Option<String>,
}

impl DayRange {
    /// Whether the partition of `day` may hold matching rows.
    pub fn holds(&self, day: &str) -> bool {
        self.from.as_deref().is_none_or(|from| day >= from)
            && self.to.as_deref().is_none_or(|to| day <= to)
    }

    fn since(&mut self, day: String) {
        if self.from.as_ref().is_none_or(|from| day > *from) {
            self.from = Some(day);
        }
    }

    fn until(&mut self, day: String) {
        if self.to.as_ref().is_none_or(|to| day < *to) {
            self.to = Some(day);
        }
    }
}

/// The top-level (AND) conditions of a WHERE.
pub(crate) fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut all = conjuncts(left);
            all.extend(conjuncts(right));
            all
        }
        Expr::Nested(inner) => conjuncts(inner),
        other => vec![other],
    }
}

/// The days a WHERE can match, from its top-level (AND) conditions that
/// compare `date` or `_time` with a constant: `date >= '2026-12-01'`,
/// `_time < strptime('2026-12-03T00:00:00', ...)` (what a timestamp
/// string or `now()` compared with `_time` becomes), `BETWEEN`. Bounds are
/// whole days, so the range is a superset; anything else is left to the
/// WHERE itself.
pub(crate) fn day_range(selection: &Expr) -> DayRange {
    fn is_day_column(expr: &Expr) -> bool {
        column_name(expr).is_some_and(|name| name == DATE_COLUMN || name == TIME_COLUMN)
    }
    /// The day of a constant: a string, or `strptime('...', format)`.
    fn day_of(expr: &Expr) -> Option<String> {
        let text = match expr {
            Expr::Value(value) => match &value.value {
                SqlValue::SingleQuotedString(text) => text.as_str(),
                _ => return None,
            },
            Expr::Function(function) => {
                let FunctionArguments::List(list) = &function.args else {
                    return None;
                };
                let is_strptime = function.name.to_string().eq_ignore_ascii_case("strptime");
                match list.args.first() {
                    Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(first))) if is_strptime => {
                        return day_of(first)
                    }
                    _ => return None,
                }
            }
            _ => return None,
        };
        let day = text.get(..10)?;
        chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
        Some(day.to_string())
    }
    let mut range = DayRange::default();
    for condition in conjuncts(selection) {
        match condition {
            Expr::BinaryOp { left, op, right } => {
                let (op, day) = if is_day_column(left) {
                    (op.clone(), day_of(right))
                } else if is_day_column(right) {
                    let flipped = match op {
                        BinaryOperator::Gt => BinaryOperator::Lt,
                        BinaryOperator::GtEq => BinaryOperator::LtEq,
                        BinaryOperator::Lt => BinaryOperator::Gt,
                        BinaryOperator::LtEq => BinaryOperator::GtEq,
                        other => other.clone(),
                    };
                    (flipped, day_of(left))
                } else {
                    continue;
                };
                let Some(day) = day else { continue };
                match op {
                    BinaryOperator::Gt | BinaryOperator::GtEq => range.since(day),
                    BinaryOperator::Lt | BinaryOperator::LtEq => range.until(day),
                    BinaryOperator::Eq => {
                        range.since(day.clone());
                        range.until(day);
                    }
                    _ => {}
                }
            }
            Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } if is_day_column(expr) => {
                if let Some(day) = day_of(low) {
                    range.since(day);
                }
                if let Some(day) = day_of(high) {
                    range.until(day);
                }
            }
            _ => {}
        }
    }
    range
}
