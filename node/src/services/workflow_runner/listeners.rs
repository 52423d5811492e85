//! Which instances listen for which events, indexed so that an event is
//! offered only to the instances that can take it: by event type, then by
//! the values its correlations must have. An event of type T is evaluated
//! once per distinct list of correlation expressions among T's listeners,
//! and the instances expecting exactly those values are looked up; without
//! this, every event would be checked against every listening instance.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value;
use shoal_workflows::literal_type;
use shoal_workflows::run::{Instance, Need, Status};

/// One filter of a listening instance, as the index keys it: the event
/// type ("" when the filter has no literal type), the correlation
/// expressions, and the values they must give (as text).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: String,
    from: Vec<String>,
    expect: Vec<String>,
}

/// How a correlation value is compared: text as is, anything else as JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn keys_of(instance: &Instance) -> Vec<Key> {
    if !matches!(instance.status, Status::Running | Status::Waiting) {
        return Vec::new();
    }
    let mut keys: Vec<Key> = instance
        .waiting
        .iter()
        .filter_map(|need| match need {
            Need::Listen { filters, .. } => Some(filters),
            _ => None,
        })
        .flatten()
        .map(|filter| {
            let kind = literal_type(&filter.with).unwrap_or_default().to_string();
            // A correlation without an expected value matches anything: it
            // cannot narrow the lookup.
            let keyed = filter.correlate.iter().all(|c| !c.expect.is_null());
            let (from, expect) = if keyed {
                filter
                    .correlate
                    .iter()
                    .map(|c| (c.from.clone(), text_of(&c.expect)))
                    .unzip()
            } else {
                (Vec::new(), Vec::new())
            };
            Key { kind, from, expect }
        })
        .collect();
    keys.sort_by(|a, b| (&a.kind, &a.from, &a.expect).cmp(&(&b.kind, &b.from, &b.expect)));
    keys.dedup();
    keys
}

#[derive(Default)]
pub struct Listeners {
    by_instance: HashMap<String, Vec<Key>>,
    /// Type → correlation expressions → expected values → instances.
    by_type: HashMap<String, HashMap<Vec<String>, HashMap<Vec<String>, HashSet<String>>>>,
}

impl Listeners {
    pub fn is_empty(&self) -> bool {
        self.by_instance.is_empty()
    }

    /// The event types listened for now ("" for any type).
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }

    /// Records what an instance listens for now; returns the event types it
    /// began to listen for.
    pub fn update(&mut self, instance_id: &str, instance: Option<&Instance>) -> BTreeSet<String> {
        let keys = instance.map(keys_of).unwrap_or_default();
        let before = self.by_instance.remove(instance_id).unwrap_or_default();
        for key in &before {
            let Some(by_from) = self.by_type.get_mut(&key.kind) else {
                continue;
            };
            if let Some(by_expect) = by_from.get_mut(&key.from) {
                if let Some(ids) = by_expect.get_mut(&key.expect) {
                    ids.remove(instance_id);
                    if ids.is_empty() {
                        by_expect.remove(&key.expect);
                    }
                }
                if by_expect.is_empty() {
                    by_from.remove(&key.from);
                }
            }
            if by_from.is_empty() {
                self.by_type.remove(&key.kind);
            }
        }
        for key in &keys {
            self.by_type
                .entry(key.kind.clone())
                .or_default()
                .entry(key.from.clone())
                .or_default()
                .entry(key.expect.clone())
                .or_default()
                .insert(instance_id.to_string());
        }
        let old: BTreeSet<&String> = before.iter().map(|k| &k.kind).collect();
        let new = keys
            .iter()
            .map(|k| k.kind.clone())
            .filter(|kind| !old.contains(kind))
            .collect();
        if !keys.is_empty() {
            self.by_instance.insert(instance_id.to_string(), keys);
        }
        new
    }

    /// The filters of listeners of this event's type (or of no type).
    fn groups<'a>(
        &'a self,
        event: &'a Value,
    ) -> impl Iterator<Item = (&'a Vec<String>, &'a HashMap<Vec<String>, HashSet<String>>)> {
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        [kind, ""]
            .into_iter()
            .filter_map(|t| self.by_type.get(t))
            .flatten()
    }

    /// The correlation expressions to run on this event, each once.
    pub fn programs(&self, event: &Value) -> Vec<String> {
        let programs: BTreeSet<&String> = self.groups(event).flat_map(|(from, _)| from).collect();
        programs.into_iter().cloned().collect()
    }

    /// The instances that may take this event (each checks every filter
    /// itself when the event is applied), given the answer of each of
    /// `programs` (none where it failed).
    pub fn candidates(
        &self,
        event: &Value,
        programs: &[String],
        answers: Vec<Option<Value>>,
    ) -> BTreeSet<String> {
        let values: HashMap<&str, Option<String>> = programs
            .iter()
            .map(String::as_str)
            .zip(answers.iter().map(|a| a.as_ref().map(text_of)))
            .collect();
        let mut found = BTreeSet::new();
        for (from, by_expect) in self.groups(event) {
            let expected: Option<Vec<String>> = from
                .iter()
                .map(|code| values.get(code.as_str()).cloned().flatten())
                .collect();
            if let Some(ids) = expected.and_then(|values| by_expect.get(&values)) {
                found.extend(ids.iter().cloned());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use shoal_workflows::run::{Correlation, EventFilter, ListenMode};

    use super::*;

    /// The candidates, with the correlation expressions run in-process.
    fn candidates(listeners: &Listeners, event: &Value) -> BTreeSet<String> {
        let programs = listeners.programs(event);
        let answers = programs
            .iter()
            .map(|code| shoal_workflows::expr::evaluate(code, event, &[]).ok())
            .collect();
        listeners.candidates(event, &programs, answers)
    }

    fn listening(id: &str, kind: &str, order: Option<&str>) -> Instance {
        let definition = shoal_workflows::parse(
            br#"{"document": {"dsl": "1.0.0", "namespace": "t", "name": "t", "version": "1.0.0"},
                 "do": [{"x": {"set": {"a": 1}}}]}"#,
        )
        .expect("a definition");
        let mut instance = Instance::new(id.into(), &definition, json!({}), 0);
        instance.status = Status::Waiting;
        instance.waiting = vec![Need::Listen {
            key: "/do/0/x".into(),
            task: "/do/0/x".into(),
            mode: ListenMode::One,
            filters: vec![EventFilter {
                with: serde_json::from_value(json!({"type": kind})).expect("a map"),
                correlate: order
                    .map(|order| {
                        vec![Correlation {
                            name: "order".into(),
                            from: ".data.order".into(),
                            expect: json!(order),
                        }]
                    })
                    .unwrap_or_default(),
            }],
        }];
        instance
    }

    #[test]
    fn an_event_is_offered_to_the_instances_its_correlation_names() {
        let mut listeners = Listeners::default();
        for (id, order) in [("a", "o-1"), ("b", "o-2"), ("c", "o-1")] {
            let new = listeners.update(id, Some(&listening(id, "paid", Some(order))));
            assert_eq!(
                new,
                BTreeSet::from(["paid".to_string()]),
                "{id} began to listen"
            );
            let again = listeners.update(id, Some(&listening(id, "paid", Some(order))));
            assert!(again.is_empty(), "{id} listened already");
        }
        listeners.update("any", Some(&listening("any", "paid", None)));
        listeners.update("other", Some(&listening("other", "shipped", Some("o-1"))));
        let event = json!({"type": "paid", "data": {"order": "o-1"}});
        let ids: Vec<String> = candidates(&listeners, &event).into_iter().collect();
        assert_eq!(ids, ["a", "any", "c"]);
        // A number compares as its JSON text.
        listeners.update("n", Some(&listening("n", "paid", Some("7"))));
        let numbered = json!({"type": "paid", "data": {"order": 7}});
        assert!(candidates(&listeners, &numbered).contains("n"));
        // Finished instances listen no more.
        listeners.update("a", None);
        let mut done = listening("c", "paid", Some("o-1"));
        done.status = Status::Completed;
        listeners.update("c", Some(&done));
        let ids: Vec<String> = candidates(&listeners, &event).into_iter().collect();
        assert_eq!(ids, ["any"]);
        assert!(!listeners.is_empty());
    }
}
