//! The event types a definition can take in, so that a node looks only at
//! the messages some definition could use.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::values::is_expression;

/// The event type an event filter's `with` names as literal text; `None`
/// when it takes any type (no `type`, one that is not text, or a `${ }`
/// expression).
pub fn literal_type(with: &Map<String, Value>) -> Option<&str> {
    match with.get("type") {
        Some(Value::String(kind)) if !is_expression(kind) => Some(kind),
        _ => None,
    }
}

/// The CloudEvent types of the events a definition's `listen` tasks and
/// `schedule.on` consume: named types, or any type once a filter's type is
/// not a literal text (absent, or a runtime expression).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventTypes {
    any: bool,
    types: BTreeSet<String>,
}

impl EventTypes {
    /// Whether an event of this type may be taken.
    pub fn contains(&self, kind: &str) -> bool {
        self.any || self.types.contains(kind)
    }

    /// Whether no event is taken at all.
    pub fn is_empty(&self) -> bool {
        !self.any && self.types.is_empty()
    }

    /// Adds a type; `None` for any type.
    pub fn add(&mut self, kind: Option<&str>) {
        match kind {
            Some(kind) => {
                if !self.types.contains(kind) {
                    self.types.insert(kind.to_string());
                }
            }
            None => self.any = true,
        }
    }

    pub fn extend(&mut self, other: &EventTypes) {
        self.any |= other.any;
        self.types.extend(other.types.iter().cloned());
    }

    /// Adds what an event filter's `with` takes.
    pub fn add_filter(&mut self, with: Option<&Value>) {
        self.add(with.and_then(Value::as_object).and_then(literal_type));
    }

    /// Adds what an event consumption strategy (`one`, `any` or `all`, as
    /// in `listen.to` and `schedule.on`) takes; one of another shape, or
    /// `any` with no filter, takes any type.
    pub fn add_consumption(&mut self, strategy: &Value) {
        let filters: Vec<&Value> = match (strategy.get("one"), strategy.get("any")) {
            (Some(one), _) => vec![one],
            (_, Some(Value::Array(any))) => any.iter().collect(),
            _ => match strategy.get("all") {
                Some(Value::Array(all)) => all.iter().collect(),
                _ => Vec::new(),
            },
        };
        if filters.is_empty() {
            self.add(None);
        }
        for filter in filters {
            self.add_filter(filter.get("with"));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn literal_types_are_named_and_anything_else_takes_any_type() {
        let mut types = EventTypes::default();
        assert!(types.is_empty());
        types.add_consumption(&json!({"one": {"with": {"type": "a.paid"}}}));
        types.add_consumption(&json!({"all": [{"with": {"type": "b"}}, {"with": {"type": "c"}}]}));
        assert!(types.contains("a.paid") && types.contains("b") && types.contains("c"));
        assert!(!types.contains("a") && !types.contains("d"));
        for strategy in [
            json!({"one": {"with": {"source": "x"}}}),
            json!({"one": {"with": {"type": "${ .x }"}}}),
            json!({"one": {"with": {"type": 7}}}),
            json!({"any": []}),
            json!({"until": true}),
        ] {
            let mut some = EventTypes::default();
            some.add_consumption(&strategy);
            assert!(some.contains("anything"), "{strategy}");
        }
        let mut both = EventTypes::default();
        both.extend(&types);
        assert_eq!(both, types);
    }
}
