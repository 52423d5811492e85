//! Runtime expressions are compiled with jaq (a jq implementation) when a
//! definition is published, so a jq syntax error, an unknown function or an
//! undefined variable is refused with its path instead of failing an
//! instance later.

use std::collections::BTreeSet;

use serde_json::Value;

use super::types::Check;
use super::values::{child, index, invalid};
use crate::expr::compile;

/// Most runtime expressions one definition may hold (each is compiled).
pub const MAX_EXPRESSIONS: usize = 2000;

/// The variables the DSL gives every expression.
const DSL_VARIABLES: [&str; 8] = [
    "$context",
    "$input",
    "$output",
    "$secret",
    "$task",
    "$workflow",
    "$runtime",
    "$authorization",
];

/// Fields whose string value is an expression even without `${ }`.
const BARE_EXPRESSION_FIELDS: [&str; 4] = ["if", "when", "exceptWhen", "while"];

/// Compiles every runtime expression of a validated document.
pub(super) fn check_expressions(document: &Value) -> Check {
    let mut variables: BTreeSet<String> = DSL_VARIABLES.iter().map(|v| v.to_string()).collect();
    declared_variables(document, &mut variables);
    let mut found = Vec::new();
    expressions(document, "", false, &mut found);
    if found.len() > MAX_EXPRESSIONS {
        return Err(invalid(
            "",
            format!(
                "the definition has {} runtime expressions; the limit is {MAX_EXPRESSIONS}",
                found.len()
            ),
        ));
    }
    let variables: Vec<&str> = variables.iter().map(String::as_str).collect();
    for (path, code) in found {
        compile(&code, &variables)
            .map_err(|message| invalid(&path, format!("runtime expression: {message}")))?;
    }
    Ok(())
}

/// The variables the document declares: `for.each` (default `item`),
/// `for.at` (default `index`) and `catch.as` (default `error`).
fn declared_variables(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(spec)) = map.get("for") {
                for (field, default) in [("each", "item"), ("at", "index")] {
                    let name = spec.get(field).and_then(Value::as_str).unwrap_or(default);
                    out.insert(format!("${name}"));
                }
            }
            if let Some(Value::Object(catch)) = map.get("catch") {
                let name = catch.get("as").and_then(Value::as_str).unwrap_or("error");
                out.insert(format!("${name}"));
            }
            map.values().for_each(|v| declared_variables(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| declared_variables(v, out)),
        _ => {}
    }
}

/// Every expression with its path: strings written `${ ... }` anywhere, and
/// the strings of the fields that are expressions without it (`bare`).
fn expressions(value: &Value, path: &str, bare: bool, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(text) => {
            let trimmed = text.trim();
            if let Some(inner) = trimmed
                .strip_prefix("${")
                .and_then(|rest| rest.strip_suffix('}'))
            {
                out.push((path.to_string(), inner.to_string()));
            } else if bare {
                out.push((path.to_string(), trimmed.to_string()));
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let bare = BARE_EXPRESSION_FIELDS.contains(&key.as_str())
                    || (key == "in" && path.ends_with("/for"));
                expressions(item, &child(path, key), bare, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                expressions(item, &index(path, i), false, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::DefinitionError;
    use super::*;

    #[test]
    fn every_expression_of_a_document_is_found_with_its_path() {
        let document = serde_json::json!({
            "do": [
                {"a": {"set": {"x": "${ .x }", "plain": "text"}, "if": ".ready"}},
                {"b": {"for": {"each": "line", "in": ".lines"}, "do": [
                    {"c": {"set": {"y": "${ $line.price }"}}}
                ]}},
            ]
        });
        let mut found = Vec::new();
        expressions(&document, "", false, &mut found);
        let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/do/0/a/if",
                "/do/0/a/set/x",
                "/do/1/b/do/0/c/set/y",
                "/do/1/b/for/in"
            ]
        );
        assert_eq!(check_expressions(&document), Ok(()));
        let mut broken = document.clone();
        broken["do"][1]["b"]["do"][0]["c"]["set"]["y"] = "${ $item.price }".into();
        match check_expressions(&broken) {
            Err(DefinitionError::Invalid { path, message }) => {
                assert_eq!(path, "/do/1/b/do/0/c/set/y");
                assert!(message.contains("$item"), "{message}");
            }
            other => panic!("expected an invalid expression, got {other:?}"),
        }
    }
}
