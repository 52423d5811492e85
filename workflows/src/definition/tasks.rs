//! Validation of task lists and of each supported task kind.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::sections::*;
use super::types::*;
use super::values::*;

/// The fields every task may carry.
const COMMON: &[&str] = &[
    "if", "input", "output", "export", "timeout", "then", "metadata",
];

/// Flow directives that are not task names.
const DIRECTIVES: &[&str] = &["continue", "exit", "end"];

const MAX_TASK_NAME_CHARS: usize = 128;

const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Names the runtime binds in expressions (`$context`, ...): a loop or catch
/// variable must not shadow them.
const RESERVED_VARIABLES: &[&str] = &[
    "context",
    "input",
    "output",
    "secrets",
    "task",
    "workflow",
    "runtime",
    "authorization",
];

impl Validator {
    /// A task list: a non-empty list of single-key maps `{name: task}`, names
    /// unique within the list.
    pub(super) fn task_list(&mut self, value: &Value, path: &str, depth: usize) -> Check {
        if depth > MAX_NESTING {
            return Err(invalid(
                path,
                format!("task lists nest more than {MAX_NESTING} levels deep"),
            ));
        }
        let Some(items) = value.as_array() else {
            return Err(invalid(
                path,
                format!(
                    "a task list must be a list of single-key maps {{taskName: task}}, found {}",
                    kind_of(value)
                ),
            ));
        };
        if items.is_empty() {
            return Err(invalid(path, "a task list must hold at least one task"));
        }
        let mut entries: Vec<(&str, &Value, String)> = Vec::with_capacity(items.len());
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = index(path, i);
            let Some(entry) = item.as_object() else {
                return Err(invalid(
                    &item_path,
                    format!(
                        "each entry of a task list must be a single-key map {{taskName: task}}, \
                         found {}",
                        kind_of(item)
                    ),
                ));
            };
            let mut keys = entry.iter();
            let (Some((name, task)), None) = (keys.next(), keys.next()) else {
                let names: Vec<&str> = entry.keys().map(String::as_str).collect();
                return Err(invalid(
                    &item_path,
                    format!(
                        "each entry of a task list must be a single-key map {{taskName: task}}, \
                         found {} keys ({}); indent the task's fields under its name",
                        entry.len(),
                        names.join(", ")
                    ),
                ));
            };
            let name = name.as_str();
            let task_path = child(&item_path, name);
            if name.trim().is_empty() {
                return Err(invalid(&task_path, "a task name must not be empty"));
            }
            if name.chars().count() > MAX_TASK_NAME_CHARS {
                return Err(invalid(
                    &task_path,
                    format!("a task name has at most {MAX_TASK_NAME_CHARS} characters"),
                ));
            }
            if DIRECTIVES.contains(&name) {
                return Err(invalid(
                    &task_path,
                    format!("'{name}' is a flow directive and cannot name a task"),
                ));
            }
            if let Some(first) = seen.insert(name, i) {
                return Err(invalid(
                    &task_path,
                    format!(
                        "duplicate task name '{name}' (also at {}); task names are unique \
                         within their list",
                        index(path, first)
                    ),
                ));
            }
            entries.push((name, task, task_path));
        }
        let names: Vec<&str> = entries.iter().map(|(name, _, _)| *name).collect();
        for (_, task, task_path) in &entries {
            self.task(task, task_path, &names, depth)?;
        }
        Ok(())
    }

    fn task(&mut self, value: &Value, path: &str, siblings: &[&str], depth: usize) -> Check {
        self.tasks += 1;
        if self.tasks > MAX_TASKS {
            return Err(invalid(
                path,
                format!("a definition holds at most {MAX_TASKS} tasks (nested ones included)"),
            ));
        }
        let task = object(value, path, "a task")?;
        let kind = task_kind(task, path)?;
        let specific: &[&str] = match kind {
            "call" => &["call", "with"],
            "for" => &["for", "while", "do"],
            "try" => &["try", "catch"],
            _ => &[],
        };
        for key in task.keys() {
            let key = key.as_str();
            if key == kind || COMMON.contains(&key) || specific.contains(&key) {
                continue;
            }
            let key_path = child(path, key);
            if kind == "listen" && key == "foreach" {
                return Err(unsupported(
                    &key_path,
                    "listen's 'foreach' (iterating over consumed events)",
                ));
            }
            let mut allowed: Vec<&str> = vec![kind];
            allowed.extend(specific.iter().filter(|k| **k != kind));
            allowed.extend(COMMON);
            return Err(invalid(
                &key_path,
                format!(
                    "unknown field '{key}' in a {kind} task; expected one of: {}",
                    allowed.join(", ")
                ),
            ));
        }
        common_fields(task, path, siblings)?;
        let body_path = child(path, kind);
        let body = required(task, kind, path, "the task")?;
        match kind {
            "call" => {
                call_task(task, path)?;
                self.record_endpoint(task, path);
                Ok(())
            }
            "do" => self.task_list(body, &body_path, depth + 1),
            "emit" => emit_task(body, &body_path),
            "for" => self.for_task(task, path, depth),
            "fork" => self.fork_task(body, &body_path, depth),
            "listen" => {
                listen_task(body, &body_path)?;
                if let Some(to) = body.get("to") {
                    self.event_types.add_consumption(to);
                }
                Ok(())
            }
            "raise" => self.raise_task(body, &body_path),
            "set" => set_task(body, &body_path),
            "switch" => switch_task(body, &body_path, siblings),
            "try" => self.try_task(task, path, depth),
            _ => duration(body, &body_path).map(drop),
        }
    }
}

fn common_fields(task: &Obj, path: &str, siblings: &[&str]) -> Check {
    if let Some(condition) = task.get("if") {
        expression(condition, &child(path, "if"), "if")?;
    }
    if let Some(input) = task.get("input") {
        input_section(input, &child(path, "input"))?;
    }
    if let Some(output) = task.get("output") {
        output_section(output, &child(path, "output"), "output")?;
    }
    if let Some(export) = task.get("export") {
        output_section(export, &child(path, "export"), "export")?;
    }
    if let Some(timeout) = task.get("timeout") {
        timeout_section(timeout, &child(path, "timeout"))?;
    }
    if let Some(then) = task.get("then") {
        flow_directive(then, &child(path, "then"), siblings)?;
    }
    if let Some(metadata) = task.get("metadata") {
        object(metadata, &child(path, "metadata"), "metadata")?;
    }
    Ok(())
}

impl Validator {
    fn for_task(&mut self, task: &Obj, path: &str, depth: usize) -> Check {
        let for_path = child(path, "for");
        let spec = object(required(task, "for", path, "a for task")?, &for_path, "for")?;
        check_fields(spec, &for_path, "for", &["each", "in", "at"], &[])?;
        // `each` defaults to `item`, as the spec says.
        let each = match spec.get("each") {
            Some(each) => variable(each, &child(&for_path, "each"), "for.each")?,
            None => "item",
        };
        expression(
            required(spec, "in", &for_path, "for")?,
            &child(&for_path, "in"),
            "for.in",
        )?;
        if let Some(at) = spec.get("at") {
            let at_path = child(&for_path, "at");
            if variable(at, &at_path, "for.at")? == each {
                return Err(invalid(
                    &at_path,
                    "for.at and for.each must name different variables",
                ));
            }
        }
        if let Some(condition) = task.get("while") {
            expression(condition, &child(path, "while"), "while")?;
        }
        let body = required(task, "do", path, "a for task")?;
        self.task_list(body, &child(path, "do"), depth + 1)
    }

    fn fork_task(&mut self, value: &Value, path: &str, depth: usize) -> Check {
        let fork = object(value, path, "fork")?;
        check_fields(fork, path, "fork", &["branches", "compete"], &[])?;
        if let Some(compete) = fork.get("compete") {
            if !compete.is_boolean() {
                return Err(invalid(
                    &child(path, "compete"),
                    format!(
                        "fork.compete must be true or false, found {}",
                        kind_of(compete)
                    ),
                ));
            }
        }
        let branches = required(fork, "branches", path, "fork")?;
        self.task_list(branches, &child(path, "branches"), depth + 1)
    }

    fn raise_task(&self, value: &Value, path: &str) -> Check {
        let raise = object(value, path, "raise")?;
        check_fields(raise, path, "raise", &["error"], &[])?;
        let error_path = child(path, "error");
        match required(raise, "error", path, "raise")? {
            Value::String(name) => {
                if self.errors.contains(name) {
                    Ok(())
                } else {
                    Err(invalid(
                        &error_path,
                        format!("raise.error names '{name}', which use.errors does not define"),
                    ))
                }
            }
            error => error_definition(error, &error_path),
        }
    }

    fn try_task(&mut self, task: &Obj, path: &str, depth: usize) -> Check {
        let body = required(task, "try", path, "a try task")?;
        self.task_list(body, &child(path, "try"), depth + 1)?;
        let catch_path = child(path, "catch");
        let catch = object(
            required(task, "catch", path, "a try task")?,
            &catch_path,
            "catch",
        )?;
        check_fields(
            catch,
            &catch_path,
            "catch",
            &["errors", "as", "when", "exceptWhen", "retry", "do"],
            &[],
        )?;
        if let Some(errors) = catch.get("errors") {
            error_filter(errors, &child(&catch_path, "errors"))?;
        }
        if let Some(name) = catch.get("as") {
            variable(name, &child(&catch_path, "as"), "catch.as")?;
        }
        for key in ["when", "exceptWhen"] {
            if let Some(condition) = catch.get(key) {
                expression(condition, &child(&catch_path, key), key)?;
            }
        }
        if let Some(retry) = catch.get("retry") {
            let retry_path = child(&catch_path, "retry");
            match retry {
                Value::String(name) if !self.retries.contains(name) => {
                    return Err(invalid(
                        &retry_path,
                        format!("catch.retry names '{name}', which use.retries does not define"),
                    ));
                }
                Value::String(_) => {}
                policy => retry_policy(policy, &retry_path)?,
            }
        }
        if let Some(handler) = catch.get("do") {
            self.task_list(handler, &child(&catch_path, "do"), depth + 1)?;
        }
        Ok(())
    }
}

/// The task's kind, from its defining key.
fn task_kind<'k>(task: &'k Obj, path: &str) -> Check<&'k str> {
    if task.contains_key("run") {
        return Err(unsupported(
            path,
            "the run task (containers, scripts, shell commands, sub-workflows)",
        ));
    }
    // A for task also has `do`.
    if task.contains_key("for") {
        return Ok("for");
    }
    let kinds: Vec<&str> = task
        .keys()
        .map(String::as_str)
        .filter(|key| SUPPORTED_TASKS.contains(key))
        .collect();
    match kinds.as_slice() {
        [kind] => Ok(kind),
        [] => match task.keys().find(|key| !COMMON.contains(&key.as_str())) {
            Some(other) => Err(unsupported(path, format!("the task kind '{other}'"))),
            None => Err(invalid(
                path,
                format!(
                    "the task has no kind; it needs one of: {}",
                    SUPPORTED_TASKS.join(", ")
                ),
            )),
        },
        many => Err(invalid(
            path,
            format!(
                "the task mixes the kinds {}; a task has exactly one",
                many.join(" and ")
            ),
        )),
    }
}

/// `then`: `continue`, `exit`, `end` or the name of a task of the same list.
fn flow_directive(value: &Value, path: &str, siblings: &[&str]) -> Check {
    let target = string(value, path, "then")?;
    if DIRECTIVES.contains(&target) || siblings.contains(&target) {
        return Ok(());
    }
    let mut known: Vec<&str> = DIRECTIVES.to_vec();
    known.extend(siblings.iter().take(20));
    Err(invalid(
        path,
        format!(
            "then: '{target}' names no task of this task list; expected one of: {}{}",
            known.join(", "),
            if siblings.len() > 20 { ", ..." } else { "" }
        ),
    ))
}

/// A jq variable name (`each`, `at`, `as`).
fn variable<'a>(value: &'a Value, path: &str, what: &str) -> Check<&'a str> {
    let name = string(value, path, what)?;
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(invalid(
            path,
            format!(
                "{what} must be a variable name (letters, digits and '_', not starting with a \
                 digit; no '$'), found '{name}'"
            ),
        ));
    }
    if RESERVED_VARIABLES.contains(&name) {
        return Err(invalid(
            path,
            format!("{what}: '{name}' is reserved (the runtime binds ${name})"),
        ));
    }
    Ok(name)
}

impl Validator {
    /// Notes a validated HTTP call's endpoint if it is a URI.
    fn record_endpoint(&mut self, task: &Obj, path: &str) {
        let Some(endpoint) = task.get("with").and_then(|with| with.get("endpoint")) else {
            return;
        };
        let (uri, uri_path) = match endpoint.get("uri") {
            Some(uri) => (uri, format!("{path}/with/endpoint/uri")),
            None => (endpoint, format!("{path}/with/endpoint")),
        };
        if let Some(uri) = uri.as_str().filter(|uri| !is_expression(uri)) {
            self.http_endpoints.push(HttpEndpoint {
                path: uri_path,
                uri: uri.to_string(),
            });
        }
    }
}

fn call_task(task: &Obj, path: &str) -> Check {
    let call_path = child(path, "call");
    let call = required(task, "call", path, "a call task")?;
    let Some(target) = call.as_str() else {
        return Err(invalid(
            &call_path,
            format!("call must be a string ('http'), found {}", kind_of(call)),
        ));
    };
    match target {
        "http" => {}
        "grpc" | "openapi" | "asyncapi" => {
            return Err(unsupported(&call_path, format!("call: {target}")));
        }
        other => {
            return Err(unsupported(
                &call_path,
                format!("call: {other} (a custom or cataloged function; Shoal calls http only)"),
            ));
        }
    }
    let with_path = child(path, "with");
    let with = object(
        required(task, "with", path, "an HTTP call")?,
        &with_path,
        "with",
    )?;
    check_fields(
        with,
        &with_path,
        "an HTTP call's 'with'",
        &["method", "endpoint", "headers", "body", "query", "output"],
        &[(
            "redirect",
            "with.redirect (redirects as errors) on HTTP calls",
        )],
    )?;
    let method_path = child(&with_path, "method");
    let method = string(
        required(with, "method", &with_path, "an HTTP call")?,
        &method_path,
        "method",
    )?;
    if !HTTP_METHODS.iter().any(|m| m.eq_ignore_ascii_case(method)) {
        return Err(invalid(
            &method_path,
            format!(
                "unknown HTTP method '{method}'; expected one of: {}",
                HTTP_METHODS.join(", ")
            ),
        ));
    }
    let endpoint_path = child(&with_path, "endpoint");
    match required(with, "endpoint", &with_path, "an HTTP call")? {
        Value::Object(endpoint) => {
            check_fields(
                endpoint,
                &endpoint_path,
                "an endpoint",
                &["uri"],
                &[("authentication", "endpoint authentication")],
            )?;
            let uri = required(endpoint, "uri", &endpoint_path, "an endpoint")?;
            http_uri(uri, &child(&endpoint_path, "uri"))?;
        }
        uri => http_uri(uri, &endpoint_path)?,
    }
    if let Some(headers) = with.get("headers") {
        let headers_path = child(&with_path, "headers");
        for (name, header) in object(headers, &headers_path, "headers")? {
            let header_path = child(&headers_path, name);
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(invalid(
                    &header_path,
                    format!("'{name}' is not an HTTP header name"),
                ));
            }
            match header {
                Value::String(_) => {
                    string(header, &header_path, "a header's value")?;
                }
                Value::Number(_) | Value::Bool(_) => {}
                other => {
                    return Err(invalid(
                        &header_path,
                        format!(
                            "a header's value must be a string, found {}",
                            kind_of(other)
                        ),
                    ))
                }
            }
        }
    }
    if let Some(query) = with.get("query") {
        let query_path = child(&with_path, "query");
        object(query, &query_path, "query")?;
        data(query, &query_path)?;
    }
    if let Some(body) = with.get("body") {
        data(body, &child(&with_path, "body"))?;
    }
    if let Some(output) = with.get("output") {
        let output_path = child(&with_path, "output");
        let format = string(output, &output_path, "with.output")?;
        if !["content", "response", "raw"].contains(&format) {
            return Err(invalid(
                &output_path,
                format!("with.output must be content, response or raw, found '{format}'"),
            ));
        }
    }
    Ok(())
}

/// An absolute `http(s)://` URI (possibly a URI template) or a runtime
/// expression.
fn http_uri(value: &Value, path: &str) -> Check {
    let uri = string(value, path, "the endpoint")?;
    if is_expression(uri) {
        return Ok(());
    }
    let lower = uri.to_ascii_lowercase();
    let is_http = (lower.starts_with("http://") || lower.starts_with("https://"))
        && is_absolute_uri(uri)
        && !uri.chars().any(char::is_whitespace);
    if !is_http {
        return Err(invalid(
            path,
            format!(
                "the endpoint must be an absolute http:// or https:// URI or a runtime \
                 expression ${{ ... }}, found '{uri}'"
            ),
        ));
    }
    Ok(())
}

fn emit_task(value: &Value, path: &str) -> Check {
    let emit = object(value, path, "emit")?;
    check_fields(emit, path, "emit", &["event"], &[])?;
    let event_path = child(path, "event");
    let event = object(
        required(emit, "event", path, "emit")?,
        &event_path,
        "emit.event",
    )?;
    check_fields(event, &event_path, "emit.event", &["with"], &[])?;
    let with_path = child(&event_path, "with");
    let with = object(
        required(event, "with", &event_path, "emit.event")?,
        &with_path,
        "emit.event.with",
    )?;
    for key in ["type", "source"] {
        let attribute = required(with, key, &with_path, "the emitted event")?;
        if attribute
            .as_str()
            .is_some_and(|text| text.trim().is_empty())
        {
            return Err(invalid(
                &child(&with_path, key),
                format!("the emitted event's {key} must not be empty"),
            ));
        }
    }
    event_properties(with, &with_path)
}

fn listen_task(value: &Value, path: &str) -> Check {
    let listen = object(value, path, "listen")?;
    check_fields(
        listen,
        path,
        "listen",
        &["to"],
        &[("read", "listen.read (reading events as envelope or raw)")],
    )?;
    event_consumption(required(listen, "to", path, "listen")?, &child(path, "to"))
}

fn set_task(value: &Value, path: &str) -> Check {
    match value {
        Value::Object(entries) if entries.is_empty() => {
            Err(invalid(path, "set must set at least one value"))
        }
        Value::Object(_) => data(value, path),
        Value::String(text) if is_expression(text) => string(value, path, "set").map(drop),
        other => Err(invalid(
            path,
            format!(
                "set must be a map of values or a runtime expression ${{ ... }}, found {}",
                match other {
                    Value::String(_) => "a plain string",
                    other => kind_of(other),
                }
            ),
        )),
    }
}

fn switch_task(value: &Value, path: &str, siblings: &[&str]) -> Check {
    let cases = array(value, path, "switch")?;
    if cases.is_empty() {
        return Err(invalid(path, "switch must list at least one case"));
    }
    let mut names = HashSet::new();
    let mut default_case: Option<String> = None;
    for (i, item) in cases.iter().enumerate() {
        let item_path = index(path, i);
        let entry = object(item, &item_path, "a switch case")?;
        let mut keys = entry.iter();
        let (Some((name, case)), None) = (keys.next(), keys.next()) else {
            return Err(invalid(
                &item_path,
                "each switch case must be a single-key map {caseName: {when, then}}",
            ));
        };
        let case_path = child(&item_path, name);
        if name.trim().is_empty() {
            return Err(invalid(
                &case_path,
                "a switch case's name must not be empty",
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(invalid(
                &case_path,
                format!("duplicate switch case name '{name}'"),
            ));
        }
        let case = object(case, &case_path, "a switch case")?;
        check_fields(case, &case_path, "a switch case", &["when", "then"], &[])?;
        match case.get("when") {
            Some(condition) => {
                expression(condition, &child(&case_path, "when"), "when")?;
            }
            None => {
                if let Some(first) = &default_case {
                    return Err(invalid(
                        &case_path,
                        format!(
                            "a switch has at most one default case (without 'when'); {first} \
                             is one already"
                        ),
                    ));
                }
                default_case = Some(case_path.clone());
            }
        }
        let then = required(case, "then", &case_path, "a switch case")?;
        flow_directive(then, &child(&case_path, "then"), siblings)?;
    }
    Ok(())
}

/// `catch.errors`: `{with: {type, status, instance, title, details}}`.
fn error_filter(value: &Value, path: &str) -> Check {
    let errors = object(value, path, "catch.errors")?;
    check_fields(errors, path, "catch.errors", &["with"], &[])?;
    let Some(with) = errors.get("with") else {
        return Ok(());
    };
    let with_path = child(path, "with");
    let filter = object(with, &with_path, "catch.errors.with")?;
    if filter.is_empty() {
        return Err(invalid(
            &with_path,
            "an error filter must match at least one field",
        ));
    }
    check_fields(
        filter,
        &with_path,
        "an error filter",
        &["type", "status", "instance", "title", "details"],
        &[],
    )?;
    for (key, field) in filter {
        let field_path = child(&with_path, key);
        if key == "status" {
            if !field.is_u64() {
                return Err(invalid(
                    &field_path,
                    format!(
                        "status must be a non-negative integer, found {}",
                        kind_of(field)
                    ),
                ));
            }
        } else {
            string(field, &field_path, key)?;
        }
    }
    Ok(())
}
