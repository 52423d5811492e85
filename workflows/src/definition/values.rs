//! Durations, runtime expressions, and the helpers every check uses.

use std::time::Duration;

use serde_json::Value;

use super::types::*;

// ---------------------------------------------------------------------------
// Durations.

/// Validates a duration (ISO 8601 string or `{days, hours, minutes, seconds,
/// milliseconds}`) and returns its length.
pub fn parse_duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::String(text) => iso8601_duration(text),
        Value::Object(parts) => {
            if parts.is_empty() {
                return Err("a duration needs at least one of days, hours, minutes, seconds, milliseconds".into());
            }
            let mut millis: u64 = 0;
            for (key, part) in parts {
                let unit: u64 = match key.as_str() {
                    "days" => 86_400_000,
                    "hours" => 3_600_000,
                    "minutes" => 60_000,
                    "seconds" => 1_000,
                    "milliseconds" => 1,
                    _ => {
                        return Err(format!(
                            "unknown duration field '{key}'; expected days, hours, minutes, seconds, milliseconds"
                        ))
                    }
                };
                let Some(count) = part.as_u64() else {
                    return Err(format!("{key} must be a non-negative integer, found {}", kind_of(part)));
                };
                millis = count
                    .checked_mul(unit)
                    .and_then(|part| millis.checked_add(part))
                    .ok_or("the duration is too long")?;
            }
            Ok(Duration::from_millis(millis))
        }
        other => Err(format!(
            "a duration must be an ISO 8601 string such as 'PT30M' or a map such as {{minutes: 30}}, found {}",
            kind_of(other)
        )),
    }
}

/// `P[nY][nM][nW][nD][T[nH][nM][nS]]` (the schema's pattern: numbers may
/// have a fraction), without years and months, whose length depends on the
/// calendar.
pub(super) fn iso8601_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "'{text}' is not an ISO 8601 duration such as 'PT30M', 'PT1H30M', 'P1D' or 'PT0.5S'"
        )
    };
    let Some(rest) = text.strip_prefix('P') else {
        return Err(bad());
    };
    let (date, time) = match rest.split_once('T') {
        Some((_, "")) => return Err(bad()),
        Some((date, time)) => (date, time),
        None if rest.is_empty() => return Err(bad()),
        None => (rest, ""),
    };
    const DATE_UNITS: &[(char, f64)] = &[('Y', 0.0), ('M', 0.0), ('W', 604_800.0), ('D', 86_400.0)];
    const TIME_UNITS: &[(char, f64)] = &[('H', 3_600.0), ('M', 60.0), ('S', 1.0)];
    let mut seconds = 0f64;
    for (mut part, units) in [(date, DATE_UNITS), (time, TIME_UNITS)] {
        let mut next_unit = 0;
        while !part.is_empty() {
            let digits = part
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .ok_or_else(bad)?;
            let (number, tail) = part.split_at(digits);
            let mut chars = tail.chars();
            let unit = chars.next().ok_or_else(bad)?;
            part = chars.as_str();
            let well_formed = !number.is_empty()
                && !number.starts_with('.')
                && !number.ends_with('.')
                && number.matches('.').count() <= 1;
            if !well_formed {
                return Err(bad());
            }
            let (found, &(_, factor)) = units
                .iter()
                .enumerate()
                .skip(next_unit)
                .find(|(_, (u, _))| *u == unit)
                .ok_or_else(bad)?;
            next_unit = found + 1;
            if factor == 0.0 {
                return Err(CALENDAR.into());
            }
            let count: f64 = number.parse().map_err(|_| bad())?;
            seconds += count * factor;
        }
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is too long"))
}

pub(super) const CALENDAR: &str = "years and months have no fixed length";

pub(super) fn duration(value: &Value, path: &str) -> Check<Duration> {
    parse_duration(value).map_err(|message| {
        if message == CALENDAR {
            unsupported(
                path,
                "a duration in years or months (use weeks, days, hours, minutes or seconds)",
            )
        } else {
            invalid(path, message)
        }
    })
}

// ---------------------------------------------------------------------------
// Runtime expressions.

pub(super) fn is_expression(text: &str) -> bool {
    text.trim_start().starts_with("${")
}

/// Checks a `${ ... }` expression syntactically: delimiters balanced (outside
/// string literals), the `${` closed by the last character, not empty.
pub(super) fn check_expression_syntax(text: &str) -> Result<(), String> {
    let trimmed = text.trim();
    if !trimmed.starts_with("${") {
        return Ok(());
    }
    // '(' '[' '{' in code; 'i' marks a string interpolation `\(`.
    let mut stack: Vec<u8> = Vec::new();
    let mut in_string = false;
    let bytes = trimmed.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        let byte = bytes[i];
        if in_string {
            match byte {
                b'\\' if bytes.get(i + 1) == Some(&b'(') => {
                    stack.push(b'i');
                    in_string = false;
                    i += 1;
                }
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'(' | b'[' | b'{' => stack.push(byte),
                b')' | b']' | b'}' => {
                    let open = stack.pop();
                    let matches = matches!(
                        (open, byte),
                        (Some(b'('), b')')
                            | (Some(b'i'), b')')
                            | (Some(b'['), b']')
                            | (Some(b'{'), b'}')
                    );
                    if !matches {
                        return Err(format!(
                            "the runtime expression '{trimmed}' has an unmatched '{}'",
                            byte as char
                        ));
                    }
                    if open == Some(b'i') {
                        in_string = true;
                    }
                    if stack.is_empty() {
                        if i + 1 != bytes.len() {
                            return Err(format!(
                                "the runtime expression '{trimmed}' ends at its first '}}' \
                                 but text follows; one string holds one expression"
                            ));
                        }
                        if trimmed[2..i].trim().is_empty() {
                            return Err("the runtime expression '${}' is empty".into());
                        }
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    if in_string {
        return Err(format!(
            "the runtime expression '{trimmed}' has an unterminated string"
        ));
    }
    Err(format!(
        "the runtime expression '{trimmed}' is missing a closing '}}'"
    ))
}

// ---------------------------------------------------------------------------
// Helpers: paths, errors, types.

/// `path` + `/key`, escaped as JSON Pointer (RFC 6901) requires.
pub(super) fn child(path: &str, key: &str) -> String {
    let mut out = String::with_capacity(path.len() + key.len() + 1);
    out.push_str(path);
    out.push('/');
    for c in key.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}/{i}")
}

pub(super) fn invalid(path: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

pub(super) fn unsupported(path: &str, construct: impl Into<String>) -> DefinitionError {
    DefinitionError::Unsupported {
        path: path.to_owned(),
        construct: construct.into(),
    }
}

pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

pub(super) fn object<'a>(value: &'a Value, path: &str, what: &str) -> Check<&'a Obj> {
    value.as_object().ok_or_else(|| {
        invalid(
            path,
            format!("{what} must be a map, found {}", kind_of(value)),
        )
    })
}

pub(super) fn array<'a>(value: &'a Value, path: &str, what: &str) -> Check<&'a Vec<Value>> {
    value.as_array().ok_or_else(|| {
        invalid(
            path,
            format!("{what} must be a list, found {}", kind_of(value)),
        )
    })
}

/// A string; if it is a runtime expression, its syntax is checked.
pub(super) fn string<'a>(value: &'a Value, path: &str, what: &str) -> Check<&'a str> {
    let text = value.as_str().ok_or_else(|| {
        invalid(
            path,
            format!("{what} must be a string, found {}", kind_of(value)),
        )
    })?;
    check_expression_syntax(text).map_err(|message| invalid(path, message))?;
    Ok(text)
}

/// A non-empty string holding a runtime expression (`${ }` optional).
pub(super) fn expression<'a>(value: &'a Value, path: &str, what: &str) -> Check<&'a str> {
    let text = string(value, path, what)?;
    if text.trim().is_empty() {
        return Err(invalid(
            path,
            format!("{what} must be a runtime expression, found an empty string"),
        ));
    }
    Ok(text)
}

/// Free data (a body, `set`, event data): any JSON, whose strings that are
/// runtime expressions must be well formed.
pub(super) fn data(value: &Value, path: &str) -> Check {
    fn walk(value: &Value, path: &mut String, depth: usize) -> Check {
        if depth > 256 {
            return Err(invalid(path, "the value is nested too deeply"));
        }
        match value {
            Value::String(text) => {
                check_expression_syntax(text).map_err(|message| invalid(path, message))
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    *path = index(path, i);
                    walk(item, path, depth + 1)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(entries) => {
                for (key, item) in entries {
                    let len = path.len();
                    *path = child(path, key);
                    walk(item, path, depth + 1)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(value, &mut path.to_owned(), 0)
}

pub(super) fn required<'a>(obj: &'a Obj, key: &str, path: &str, what: &str) -> Check<&'a Value> {
    obj.get(key).ok_or_else(|| {
        invalid(
            path,
            format!("{what} is missing the required field '{key}'"),
        )
    })
}

/// Refuses fields outside `allowed`: `Unsupported` for the DSL's constructs
/// Shoal does not run, `Invalid` for the rest.
pub(super) fn check_fields(
    obj: &Obj,
    path: &str,
    what: &str,
    allowed: &[&str],
    unsupported_fields: &[(&str, &str)],
) -> Check {
    for key in obj.keys() {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        let key_path = child(path, key);
        if let Some((_, construct)) = unsupported_fields.iter().find(|(k, _)| k == key) {
            return Err(unsupported(&key_path, *construct));
        }
        return Err(invalid(
            &key_path,
            format!(
                "unknown field '{key}' in {what}; expected one of: {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The one key of `choices` that `obj` sets (exactly one must be set), and
/// its value.
pub(super) fn one_of<'c, 'o>(
    obj: &'o Obj,
    path: &str,
    what: &str,
    choices: &[&'c str],
) -> Check<(&'c str, &'o Value)> {
    let set: Vec<(&str, &Value)> = choices
        .iter()
        .filter_map(|c| obj.get(*c).map(|value| (*c, value)))
        .collect();
    match set.as_slice() {
        [one] => Ok(*one),
        [] => Err(invalid(
            path,
            format!(
                "{what} must set exactly one of: {}; found none",
                choices.join(", ")
            ),
        )),
        many => Err(invalid(
            path,
            format!(
                "{what} must set exactly one of: {}; found {}",
                choices.join(", "),
                many.iter()
                    .map(|(key, _)| *key)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
    }
}

/// Absolute URI: a scheme, then `://`.
pub(super) fn is_absolute_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
}
