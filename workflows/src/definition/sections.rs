//! Validation of the workflow's sections other than tasks: `document`,
//! `use`, `input`, `output`, `timeout`, `schedule`, errors, retry policies
//! and events.

use std::collections::HashSet;

use serde_json::Value;

use super::types::*;
use super::values::*;

pub(super) const DOCUMENT: &[&str] = &[
    "dsl",
    "namespace",
    "name",
    "version",
    "title",
    "summary",
    "tags",
    "metadata",
];
pub(super) const USE: &[&str] = &["secrets", "errors", "retries"];
pub(super) const USE_UNSUPPORTED: &[(&str, &str)] = &[
    ("authentications", "use.authentications"),
    ("catalogs", "use.catalogs"),
    ("extensions", "use.extensions"),
    ("functions", "use.functions"),
    ("timeouts", "use.timeouts (reusable timeouts)"),
];

pub(super) fn document_section(value: &Value, path: &str) -> Check<(String, String, String)> {
    let doc = object(value, path, "document")?;
    check_fields(doc, path, "document", DOCUMENT, &[])?;

    let dsl_path = child(path, "dsl");
    let dsl = required(doc, "dsl", path, "document")?;
    let Some(dsl) = dsl.as_str() else {
        return Err(invalid(
            &dsl_path,
            format!(
                "dsl must be a string such as '1.0.0' (quote it in YAML), found {}",
                kind_of(dsl)
            ),
        ));
    };
    let dsl = dsl.trim();
    if !is_dsl_1_0(dsl) {
        if dsl.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(unsupported(
                &dsl_path,
                format!("DSL version '{dsl}' (use {SUPPORTED_DSL})"),
            ));
        }
        return Err(invalid(
            &dsl_path,
            format!("dsl must be the DSL version, {SUPPORTED_DSL}; found '{dsl}'"),
        ));
    }

    let label = |key: &str| -> Check<String> {
        let key_path = child(path, key);
        let text = string(required(doc, key, path, "document")?, &key_path, key)?;
        if !is_label(text) {
            return Err(invalid(
                &key_path,
                format!(
                    "{key} '{text}' is not a lowercase RFC 1123 label: 1 to 63 characters among \
                     a-z, 0-9 and '-', starting and ending with a letter or digit, no '--'"
                ),
            ));
        }
        Ok(text.to_owned())
    };
    let namespace = label("namespace")?;
    super::refuse_reserved(&namespace)?;
    let name = label("name")?;

    let version_path = child(path, "version");
    let version = required(doc, "version", path, "document")?;
    let Some(version) = version.as_str() else {
        return Err(invalid(
            &version_path,
            format!(
                "version must be a string such as '1.0.0' (quote it in YAML), found {}",
                kind_of(version)
            ),
        ));
    };
    if !is_semver(version) {
        return Err(invalid(
            &version_path,
            format!(
                "version '{version}' is not a semantic version: MAJOR.MINOR.PATCH with an \
                 optional -prerelease, e.g. '1.0.0' or '2.1.0-rc.1', at most 64 characters"
            ),
        ));
    }

    for key in ["title", "summary"] {
        if let Some(text) = doc.get(key) {
            string(text, &child(path, key), key)?;
        }
    }
    if let Some(tags) = doc.get("tags") {
        let tags_path = child(path, "tags");
        for (key, tag) in object(tags, &tags_path, "tags")? {
            string(tag, &child(&tags_path, key), "a tag's value")?;
        }
    }
    if let Some(metadata) = doc.get("metadata") {
        object(metadata, &child(path, "metadata"), "metadata")?;
    }
    Ok((namespace, name, version.to_owned()))
}

pub(super) fn is_dsl_1_0(dsl: &str) -> bool {
    dsl.strip_prefix("1.0.")
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
}

/// `^[a-z0-9](-?[a-z0-9])*$`, at most 63 characters.
pub(super) fn is_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
        && !text.contains("--")
}

/// `^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$`, at most 64 characters.
pub(super) fn is_semver(text: &str) -> bool {
    if text.is_empty() || text.len() > 64 {
        return false;
    }
    let (core, pre) = match text.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (text, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && pre.is_none_or(|pre| {
            !pre.is_empty()
                && pre
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        })
}

impl Validator {
    pub(super) fn use_section(&mut self, value: &Value, path: &str) -> Check {
        let uses = object(value, path, "use")?;
        check_fields(uses, path, "use", USE, USE_UNSUPPORTED)?;
        if let Some(secrets) = uses.get("secrets") {
            let secrets_path = child(path, "secrets");
            let mut seen = HashSet::new();
            for (i, secret) in array(secrets, &secrets_path, "use.secrets")?
                .iter()
                .enumerate()
            {
                let secret_path = index(&secrets_path, i);
                let name = string(secret, &secret_path, "a secret's name")?;
                if name.trim().is_empty() {
                    return Err(invalid(&secret_path, "a secret's name must not be empty"));
                }
                if !seen.insert(name) {
                    return Err(invalid(
                        &secret_path,
                        format!("secret '{name}' is listed twice"),
                    ));
                }
            }
        }
        if let Some(errors) = uses.get("errors") {
            let errors_path = child(path, "errors");
            for (name, error) in object(errors, &errors_path, "use.errors")? {
                let error_path = child(&errors_path, name);
                reusable_name(name, &error_path, "an error")?;
                error_definition(error, &error_path)?;
                self.errors.insert(name.clone());
            }
        }
        if let Some(retries) = uses.get("retries") {
            let retries_path = child(path, "retries");
            for (name, retry) in object(retries, &retries_path, "use.retries")? {
                let retry_path = child(&retries_path, name);
                reusable_name(name, &retry_path, "a retry policy")?;
                retry_policy(retry, &retry_path)?;
                self.retries.insert(name.clone());
            }
        }
        Ok(())
    }
}

pub(super) fn reusable_name(name: &str, path: &str, what: &str) -> Check {
    if name.trim().is_empty() {
        return Err(invalid(
            path,
            format!("the name of {what} must not be empty"),
        ));
    }
    Ok(())
}

/// An error (RFC 7807 problem details): `type` and `status` required.
pub(super) fn error_definition(value: &Value, path: &str) -> Check {
    let error = object(value, path, "an error")?;
    check_fields(
        error,
        path,
        "an error",
        &["type", "status", "instance", "title", "detail"],
        &[],
    )?;
    let type_path = child(path, "type");
    let kind = string(
        required(error, "type", path, "an error")?,
        &type_path,
        "the error's type",
    )?;
    if !is_expression(kind) && !is_absolute_uri(kind) {
        return Err(invalid(
            &type_path,
            format!(
                "the error's type must be an absolute URI (e.g. \
                 'https://example.com/errors/out-of-stock') or a runtime expression, found '{kind}'"
            ),
        ));
    }
    let status = required(error, "status", path, "an error")?;
    if !status.is_u64() {
        return Err(invalid(
            &child(path, "status"),
            format!(
                "the error's status must be a non-negative integer (e.g. 409), found {}",
                kind_of(status)
            ),
        ));
    }
    for key in ["instance", "title", "detail"] {
        if let Some(text) = error.get(key) {
            string(text, &child(path, key), key)?;
        }
    }
    Ok(())
}

/// A retry policy: `delay`, `backoff`, `limit`, `jitter`.
pub(super) fn retry_policy(value: &Value, path: &str) -> Check {
    let policy = object(value, path, "a retry policy")?;
    check_fields(
        policy,
        path,
        "a retry policy",
        &["delay", "backoff", "limit", "jitter"],
        &[
            ("when", "a retry policy's 'when' (use catch.when)"),
            (
                "exceptWhen",
                "a retry policy's 'exceptWhen' (use catch.exceptWhen)",
            ),
        ],
    )?;
    if let Some(delay) = policy.get("delay") {
        duration(delay, &child(path, "delay"))?;
    }
    if let Some(backoff) = policy.get("backoff") {
        let backoff_path = child(path, "backoff");
        let strategies = object(backoff, &backoff_path, "backoff")?;
        check_fields(strategies, &backoff_path, "backoff", BACKOFFS, &[])?;
        let (chosen, settings) = one_of(strategies, &backoff_path, "backoff", BACKOFFS)?;
        let strategy_path = child(&backoff_path, chosen);
        let settings = object(settings, &strategy_path, "a backoff strategy")?;
        if let Some(key) = settings.keys().next() {
            return Err(invalid(
                &child(&strategy_path, key),
                format!(
                    "the {chosen} backoff takes no settings in DSL 1.0: write '{chosen}: {{}}'"
                ),
            ));
        }
    }
    if let Some(limit) = policy.get("limit") {
        let limit_path = child(path, "limit");
        let limits = object(limit, &limit_path, "a retry limit")?;
        check_fields(
            limits,
            &limit_path,
            "a retry limit",
            &["attempt", "duration"],
            &[],
        )?;
        if let Some(attempt) = limits.get("attempt") {
            let attempt_path = child(&limit_path, "attempt");
            let attempt = object(attempt, &attempt_path, "limit.attempt")?;
            check_fields(
                attempt,
                &attempt_path,
                "limit.attempt",
                &["count", "duration"],
                &[],
            )?;
            if let Some(count) = attempt.get("count") {
                if !count.is_u64() {
                    return Err(invalid(
                        &child(&attempt_path, "count"),
                        format!(
                            "the attempt count must be a non-negative integer, found {}",
                            kind_of(count)
                        ),
                    ));
                }
            }
            if let Some(each) = attempt.get("duration") {
                duration(each, &child(&attempt_path, "duration"))?;
            }
        }
        if let Some(total) = limits.get("duration") {
            duration(total, &child(&limit_path, "duration"))?;
        }
    }
    if let Some(jitter) = policy.get("jitter") {
        let jitter_path = child(path, "jitter");
        let range = object(jitter, &jitter_path, "jitter")?;
        check_fields(range, &jitter_path, "jitter", &["from", "to"], &[])?;
        let from = duration(
            required(range, "from", &jitter_path, "jitter")?,
            &child(&jitter_path, "from"),
        )?;
        let to = duration(
            required(range, "to", &jitter_path, "jitter")?,
            &child(&jitter_path, "to"),
        )?;
        if from > to {
            return Err(invalid(
                &jitter_path,
                "jitter.from must not be longer than jitter.to",
            ));
        }
    }
    Ok(())
}

pub(super) const BACKOFFS: &[&str] = &["constant", "linear", "exponential"];

/// The workflow's (or a task's) `input`: `schema` and `from`.
pub(super) fn input_section(value: &Value, path: &str) -> Check {
    let input = object(value, path, "input")?;
    check_fields(input, path, "input", &["schema", "from"], &[])?;
    if let Some(schema) = input.get("schema") {
        schema_section(schema, &child(path, "schema"))?;
    }
    if let Some(from) = input.get("from") {
        expression_or_data(from, &child(path, "from"), "input.from")?;
    }
    Ok(())
}

/// `output` and `export`: `schema` and `as`.
pub(super) fn output_section(value: &Value, path: &str, what: &str) -> Check {
    let output = object(value, path, what)?;
    check_fields(output, path, what, &["schema", "as"], &[])?;
    if let Some(schema) = output.get("schema") {
        schema_section(schema, &child(path, "schema"))?;
    }
    if let Some(shape) = output.get("as") {
        expression_or_data(shape, &child(path, "as"), &format!("{what}.as"))?;
    }
    Ok(())
}

/// A string is a (jq) expression, a map is a template whose strings may be
/// runtime expressions.
pub(super) fn expression_or_data(value: &Value, path: &str, what: &str) -> Check {
    match value {
        Value::String(_) => expression(value, path, what).map(drop),
        Value::Object(_) => data(value, path),
        other => Err(invalid(
            path,
            format!(
                "{what} must be a runtime expression or a map, found {}",
                kind_of(other)
            ),
        )),
    }
}

/// An inline JSON Schema: `document` (and `format: json`).
pub(super) fn schema_section(value: &Value, path: &str) -> Check {
    let schema = object(value, path, "a schema")?;
    check_fields(
        schema,
        path,
        "a schema",
        &["format", "document"],
        &[("resource", "an external schema (schema.resource)")],
    )?;
    if let Some(format) = schema.get("format") {
        let format_path = child(path, "format");
        let format = string(format, &format_path, "the schema's format")?;
        if format != "json" && !format.starts_with("json:") {
            return Err(unsupported(
                &format_path,
                format!("schema format '{format}' (use 'json')"),
            ));
        }
    }
    let document = required(schema, "document", path, "a schema")?;
    if !document.is_object() && !document.is_boolean() {
        return Err(invalid(
            &child(path, "document"),
            format!(
                "the schema's document must be a JSON Schema (a map), found {}",
                kind_of(document)
            ),
        ));
    }
    Ok(())
}

/// A timeout: `{after: duration}`.
pub(super) fn timeout_section(value: &Value, path: &str) -> Check {
    if value.is_string() {
        return Err(unsupported(
            path,
            "a timeout by name (use.timeouts; write {after: <duration>} inline)",
        ));
    }
    let timeout = object(value, path, "a timeout")?;
    check_fields(timeout, path, "a timeout", &["after"], &[])?;
    duration(
        required(timeout, "after", path, "a timeout")?,
        &child(path, "after"),
    )?;
    Ok(())
}

pub(super) const SCHEDULES: &[&str] = &["every", "cron", "after", "on"];

pub(super) fn schedule_section(value: &Value, path: &str) -> Check {
    let schedule = object(value, path, "schedule")?;
    check_fields(schedule, path, "schedule", SCHEDULES, &[])?;
    let (chosen, value) = one_of(schedule, path, "schedule", SCHEDULES)?;
    let chosen_path = child(path, chosen);
    match chosen {
        "every" | "after" => {
            if duration(value, &chosen_path)?.is_zero() {
                return Err(invalid(
                    &chosen_path,
                    format!("schedule.{chosen} must be longer than zero"),
                ));
            }
        }
        "cron" => cron(string(value, &chosen_path, "schedule.cron")?, &chosen_path)?,
        _ => {
            if value.get("all").is_some() {
                return Err(unsupported(
                    &child(&chosen_path, "all"),
                    "schedule.on.all (a start on several correlated events; use one or any)",
                ));
            }
            event_consumption(value, &chosen_path)?
        }
    }
    Ok(())
}

/// A cron expression that parses and matches some minute.
pub(super) fn cron(text: &str, path: &str) -> Check {
    let cron = crate::cron::Cron::parse(text).map_err(|message| invalid(path, message))?;
    if cron.next_after(0).is_none() {
        return Err(invalid(
            path,
            format!("cron expression '{text}' never matches a day"),
        ));
    }
    Ok(())
}

/// `listen.to` and `schedule.on`: exactly one of `one`, `any`, `all`.
pub(super) fn event_consumption(value: &Value, path: &str) -> Check {
    let strategy = object(value, path, "an event consumption strategy")?;
    check_fields(
        strategy,
        path,
        "an event consumption strategy",
        &["one", "any", "all"],
        &[("until", "'until' in an event consumption strategy")],
    )?;
    let (chosen, value) = one_of(
        strategy,
        path,
        "an event consumption strategy",
        &["one", "any", "all"],
    )?;
    let chosen_path = child(path, chosen);
    if chosen == "one" {
        return event_filter(value, &chosen_path);
    }
    let filters = array(value, &chosen_path, chosen)?;
    if chosen == "all" && filters.is_empty() {
        return Err(invalid(
            &chosen_path,
            "'all' must list at least one event filter",
        ));
    }
    for (i, filter) in filters.iter().enumerate() {
        event_filter(filter, &index(&chosen_path, i))?;
    }
    Ok(())
}

/// An event filter: `with` (at least one attribute) and `correlate`.
pub(super) fn event_filter(value: &Value, path: &str) -> Check {
    let filter = object(value, path, "an event filter")?;
    check_fields(filter, path, "an event filter", &["with", "correlate"], &[])?;
    let with_path = child(path, "with");
    let with = object(
        required(filter, "with", path, "an event filter")?,
        &with_path,
        "with",
    )?;
    if with.is_empty() {
        return Err(invalid(
            &with_path,
            "an event filter must match at least one attribute (e.g. type)",
        ));
    }
    event_properties(with, &with_path)?;
    if let Some(correlate) = filter.get("correlate") {
        let correlate_path = child(path, "correlate");
        for (name, correlation) in object(correlate, &correlate_path, "correlate")? {
            let correlation_path = child(&correlate_path, name);
            reusable_name(name, &correlation_path, "a correlation")?;
            let correlation = object(correlation, &correlation_path, "a correlation")?;
            check_fields(
                correlation,
                &correlation_path,
                "a correlation",
                &["from", "expect"],
                &[],
            )?;
            let from = required(correlation, "from", &correlation_path, "a correlation")?;
            expression(from, &child(&correlation_path, "from"), "correlate.from")?;
            if let Some(expect) = correlation.get("expect") {
                string(
                    expect,
                    &child(&correlation_path, "expect"),
                    "correlate.expect",
                )?;
            }
        }
    }
    Ok(())
}

/// CloudEvents attributes: the standard ones must be strings; `data` and
/// extension attributes are free.
pub(super) fn event_properties(properties: &Obj, path: &str) -> Check {
    for (key, value) in properties {
        let key_path = child(path, key);
        match key.as_str() {
            "id" | "source" | "type" | "time" | "subject" | "datacontenttype" | "dataschema" => {
                string(value, &key_path, key)?;
            }
            _ => data(value, &key_path)?,
        }
    }
    Ok(())
}
