//! The task kinds with control flow of their own: `switch`, `raise`,
//! `for`, `fork`, `try` (with `catch` and `retry`), `listen` and `call`.

use serde_json::{json, Value};

use super::{
    bare, directive, entry, expression_error, raised, Directive, Flow, Interpreter, Locals,
};
use crate::definition::parse_duration;
use crate::run::state::{
    errors, Correlation, EventFilter, HttpRequest, ListenMode, Need, Outcome, Record, WorkflowError,
};

/// The length given to a retry delay that was armed before its policy's
/// limits were reached: unknown here, and long enough that only its due
/// time decides when it fires.
const ARMED_BEYOND_LIMITS_MS: u64 = u64::MAX / 4;

impl Interpreter<'_> {
    pub(super) fn switch(
        &mut self,
        cases: &[Value],
        path: &str,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        for (i, case) in cases.iter().enumerate() {
            let Some((name, case)) = entry(case) else {
                continue;
            };
            let matched = match case.get("when") {
                None => Ok(true),
                Some(when) => self.condition(
                    when,
                    &input,
                    &input,
                    locals,
                    &format!("{path}/switch/{i}/{name}/when"),
                ),
            };
            match matched {
                Ok(true) => {
                    return Flow::Done {
                        output: input,
                        directive: directive(case.get("then")),
                        seq: 0,
                    }
                }
                Ok(false) => {}
                Err(e) => return raised(e, 0),
            }
        }
        Flow::Done {
            output: input,
            directive: Directive::Continue,
            seq: 0,
        }
    }

    pub(super) fn raise(
        &mut self,
        error: &Value,
        path: &str,
        input: &Value,
        locals: &Locals,
    ) -> Flow {
        let error = match error {
            Value::String(name) => match self.document.pointer(&format!("/use/errors/{name}")) {
                Some(defined) => defined.clone(),
                None => json!({"type": errors::CONFIGURATION, "status": 400,
                    "detail": format!("no error named '{name}' in use.errors")}),
            },
            other => other.clone(),
        };
        let error = match self.value(&error, input, input, locals, &format!("{path}/raise")) {
            Ok(v) => v,
            Err(e) => return raised(e, 0),
        };
        let error = WorkflowError {
            kind: error["type"]
                .as_str()
                .unwrap_or(errors::RUNTIME)
                .to_string(),
            status: error["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(500),
            title: error["title"].as_str().map(str::to_string),
            detail: error["detail"].as_str().map(str::to_string),
            instance: Some(error["instance"].as_str().unwrap_or(path).to_string()),
        };
        raised(error, 0)
    }

    pub(super) fn for_each(
        &mut self,
        task: &Value,
        path: &str,
        scope: &str,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        let collection = match task["for"].get("in") {
            Some(Value::String(code)) => self.jq(
                bare(code),
                &input,
                &input,
                locals,
                &format!("{path}/for/in"),
            ),
            Some(other) => Ok(other.clone()),
            None => Ok(Value::Array(Vec::new())),
        };
        let items = match collection {
            Ok(Value::Array(items)) => items,
            Ok(Value::Null) => Vec::new(),
            Ok(other) => {
                return raised(
                    expression_error(
                        &format!("{path}/for/in"),
                        format!("for.in must give an array, gave {other}"),
                    ),
                    0,
                )
            }
            Err(e) => return raised(e, 0),
        };
        self.keeping_entered(|this| this.iterations(task, path, scope, items, input, locals))
    }

    fn iterations(
        &mut self,
        task: &Value,
        path: &str,
        scope: &str,
        items: Vec<Value>,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        let entered = self.entered;
        let spec = &task["for"];
        let each = spec["each"].as_str().unwrap_or("item").to_string();
        let at = spec["at"].as_str().unwrap_or("index").to_string();
        let tasks = task
            .get("do")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut current = input.clone();
        let mut seq = 0;
        for (i, item) in items.into_iter().enumerate() {
            let mut locals = locals.clone();
            locals.push((each.clone(), item));
            locals.push((at.clone(), json!(i)));
            if let Some(condition) = task.get("while") {
                match self.condition(
                    condition,
                    &current,
                    &input,
                    &locals,
                    &format!("{path}/while"),
                ) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return raised(e, seq),
                }
            }
            let iteration_scope = format!("{scope}[{i}]");
            // An iteration starts when the one before it ended.
            self.entered = entered.max(seq);
            match self.list(
                tasks,
                &format!("{path}/do"),
                &iteration_scope,
                current,
                &locals,
            ) {
                Flow::Done {
                    output,
                    directive,
                    seq: s,
                } => {
                    seq = seq.max(s);
                    current = output;
                    if directive == Directive::End {
                        return Flow::Done {
                            output: current,
                            directive,
                            seq,
                        };
                    }
                }
                other => return other.after(seq),
            }
        }
        Flow::Done {
            output: current,
            directive: Directive::Continue,
            seq,
        }
    }

    pub(super) fn fork(
        &mut self,
        fork: &Value,
        path: &str,
        scope: &str,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        let compete = fork["compete"].as_bool().unwrap_or(false);
        let branches = fork
            .get("branches")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let needs_before = self.needs.len();
        let mut outputs = Vec::with_capacity(branches.len());
        let mut blocked = false;
        let mut first_error: Option<(WorkflowError, u64)> = None;
        let mut winner: Option<(u64, Value)> = None;
        let mut seq = 0;
        for (i, branch) in branches.iter().enumerate() {
            let Some((name, branch)) = entry(branch) else {
                continue;
            };
            let branch_path = format!("{path}/fork/branches/{i}/{name}");
            match self.task(name, branch, &branch_path, scope, input.clone(), locals) {
                Flow::Done { output, seq: s, .. } => {
                    seq = seq.max(s);
                    if winner.as_ref().is_none_or(|(best, _)| s < *best) {
                        winner = Some((s, output.clone()));
                    }
                    outputs.push(output);
                }
                Flow::Blocked { seq: s } => {
                    seq = seq.max(s);
                    blocked = true;
                }
                Flow::Raised { error, seq: s } => {
                    seq = seq.max(s);
                    if first_error.as_ref().is_none_or(|(_, best)| s < *best) {
                        first_error = Some((error, s));
                    }
                }
            }
        }
        if compete {
            if let Some((s, output)) = winner {
                // The first branch to finish wins; the others are dropped.
                self.needs.truncate(needs_before);
                return Flow::Done {
                    output,
                    directive: Directive::Continue,
                    seq: s,
                };
            }
        }
        if let Some((error, s)) = first_error {
            if !compete || !blocked {
                self.needs.truncate(needs_before);
                return raised(error, s);
            }
        }
        if blocked {
            return Flow::Blocked { seq };
        }
        Flow::Done {
            output: Value::Array(outputs),
            directive: Directive::Continue,
            seq,
        }
    }

    pub(super) fn try_catch(
        &mut self,
        task: &Value,
        path: &str,
        scope: &str,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        self.keeping_entered(|this| this.attempts(task, path, scope, input, locals))
    }

    fn attempts(
        &mut self,
        task: &Value,
        path: &str,
        scope: &str,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        let tasks = task
            .get("try")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let catch = task.get("catch").cloned().unwrap_or(Value::Null);
        let retry = match catch.get("retry") {
            Some(Value::String(name)) => self.document.pointer(&format!("/use/retries/{name}")),
            other => other,
        };
        let mut attempt: u64 = 0;
        loop {
            let attempt_scope = match attempt {
                0 => scope.to_string(),
                n => format!("{scope}#{n}"),
            };
            let needs_before = self.needs.len();
            let flow = self.list(
                tasks,
                &format!("{path}/try"),
                &attempt_scope,
                input.clone(),
                locals,
            );
            let (error, seq) = match flow {
                Flow::Raised { error, seq } => (error, seq),
                done_or_blocked => return done_or_blocked,
            };
            self.needs.truncate(needs_before);
            let error_value = serde_json::to_value(&error).unwrap_or(Value::Null);
            let name = catch["as"].as_str().unwrap_or("error").to_string();
            let mut catch_locals = locals.clone();
            catch_locals.push((name, error_value));
            match self.caught(&catch, &error, path, &input, &catch_locals) {
                Ok(true) => {}
                Ok(false) => return raised(error, seq),
                Err(e) => return raised(e, seq),
            }
            if let Some(policy) = retry {
                let key = self.key(
                    &format!("{path}/retry"),
                    &format!("{scope}#{}", attempt + 1),
                );
                match self.record(&key) {
                    Some(Record {
                        seq: Some(fired),
                        outcome: Outcome::Timer { fired: true, .. },
                        ..
                    }) => {
                        // The next attempt starts when the delay ends.
                        self.entered = self.entered.max(*fired);
                        attempt += 1;
                        continue;
                    }
                    armed => {
                        // An armed delay is waited for even if the limits
                        // were reached since it was armed.
                        let delay = match self.retry_delay(policy, path, scope, attempt) {
                            Some(delay) => Some(delay),
                            None if armed.is_some() => Some((ARMED_BEYOND_LIMITS_MS, None)),
                            None => None,
                        };
                        if let Some((duration_ms, jitter_ms)) = delay {
                            self.needs.push(Need::Timer {
                                key,
                                task: path.to_string(),
                                duration_ms,
                                jitter_ms,
                            });
                            return Flow::Blocked { seq };
                        }
                    }
                }
            }
            let Some(handler) = catch.get("do").and_then(Value::as_array) else {
                return Flow::Done {
                    output: input,
                    directive: Directive::Continue,
                    seq,
                };
            };
            // The handler starts when the error was raised.
            self.entered = self.entered.max(seq);
            let flow = self.list(
                handler,
                &format!("{path}/catch/do"),
                &format!("{scope}#caught"),
                input.clone(),
                &catch_locals,
            );
            return flow.after(seq);
        }
    }

    /// Whether `catch` takes this error: `errors.with` fields equal, `when`
    /// true, `exceptWhen` false.
    fn caught(
        &self,
        catch: &Value,
        error: &WorkflowError,
        path: &str,
        input: &Value,
        locals: &Locals,
    ) -> Result<bool, WorkflowError> {
        if let Some(with) = catch.pointer("/errors/with").and_then(Value::as_object) {
            let error = serde_json::to_value(error).unwrap_or(Value::Null);
            if with
                .iter()
                .any(|(field, expected)| error.get(field) != Some(expected))
            {
                return Ok(false);
            }
        }
        if let Some(when) = catch.get("when") {
            if !self.condition(when, input, input, locals, &format!("{path}/catch/when"))? {
                return Ok(false);
            }
        }
        if let Some(except) = catch.get("exceptWhen") {
            if self.condition(
                except,
                input,
                input,
                locals,
                &format!("{path}/catch/exceptWhen"),
            )? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The delay before retry `attempt + 1`, or none when the policy's
    /// limits are reached.
    fn retry_delay(
        &self,
        policy: &Value,
        path: &str,
        scope: &str,
        attempt: u64,
    ) -> Option<(u64, Option<(u64, u64)>)> {
        let ms = |v: Option<&Value>| {
            v.and_then(|v| parse_duration(v).ok())
                .map_or(0, |d| d.as_millis() as u64)
        };
        if let Some(count) = policy
            .pointer("/limit/attempt/count")
            .and_then(Value::as_u64)
        {
            if attempt >= count {
                return None;
            }
        }
        if let Some(limit) = policy.pointer("/limit/duration") {
            let first = self.key(&format!("{path}/retry"), &format!("{scope}#1"));
            let started = match self.record(&first) {
                Some(Record {
                    outcome: Outcome::Timer { due_ms, .. },
                    ..
                }) => due_ms.saturating_sub(ms(policy.get("delay"))),
                _ => self.env.now_ms,
            };
            if self.env.now_ms.saturating_sub(started) >= ms(Some(limit)) {
                return None;
            }
        }
        let delay = ms(policy.get("delay"));
        let backoff = policy
            .get("backoff")
            .and_then(Value::as_object)
            .and_then(|b| b.keys().next().cloned())
            .unwrap_or_else(|| "constant".into());
        let duration = match backoff.as_str() {
            "linear" => delay.saturating_mul(attempt + 1),
            "exponential" => delay.saturating_mul(1u64 << attempt.min(32)),
            _ => delay,
        };
        let jitter = policy
            .get("jitter")
            .map(|j| (ms(j.get("from")), ms(j.get("to"))));
        Some((duration, jitter))
    }

    pub(super) fn listen(
        &mut self,
        to: &Value,
        path: &str,
        scope: &str,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        let key = self.key(path, scope);
        if let Some(Record {
            seq: Some(seq),
            outcome: Outcome::Events { events },
            ..
        }) = self.record(&key)
        {
            let consumed: Vec<Value> = events.iter().flatten().cloned().collect();
            return Flow::Done {
                output: Value::Array(consumed),
                directive: Directive::Continue,
                seq: *seq,
            };
        }
        let (mode, filters) = match (to.get("one"), to.get("any"), to.get("all")) {
            (Some(one), _, _) => (ListenMode::One, vec![one.clone()]),
            (_, Some(Value::Array(any)), _) => (ListenMode::Any, any.clone()),
            (_, _, Some(Value::Array(all))) => (ListenMode::All, all.clone()),
            _ => (ListenMode::Any, Vec::new()),
        };
        let mut computed = Vec::with_capacity(filters.len());
        for (i, filter) in filters.iter().enumerate() {
            let filter_path = format!("{path}/listen/to/{i}");
            let mut correlate = Vec::new();
            if let Some(map) = filter.get("correlate").and_then(Value::as_object) {
                for (name, correlation) in map {
                    let expect = match correlation.get("expect") {
                        Some(expect) => {
                            match self.value(expect, &input, &input, locals, &filter_path) {
                                Ok(v) => v,
                                Err(e) => return raised(e, 0),
                            }
                        }
                        None => Value::Null,
                    };
                    correlate.push(Correlation {
                        name: name.clone(),
                        from: correlation["from"].as_str().map(bare).unwrap_or(".").into(),
                        expect,
                    });
                }
            }
            computed.push(EventFilter {
                with: filter
                    .get("with")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
                correlate,
            });
        }
        self.needs.push(Need::Listen {
            key,
            task: path.to_string(),
            mode,
            filters: computed,
        });
        Flow::Blocked { seq: 0 }
    }

    pub(super) fn call(
        &mut self,
        task: &Value,
        path: &str,
        scope: &str,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        let key = self.key(path, scope);
        match self.record(&key) {
            Some(Record {
                seq: Some(seq),
                outcome: Outcome::Call { output, error },
                ..
            }) => {
                return match error {
                    Some(error) => raised(error.clone(), *seq),
                    None => Flow::Done {
                        output: output.clone().unwrap_or(Value::Null),
                        directive: Directive::Continue,
                        seq: *seq,
                    },
                }
            }
            Some(_) => return Flow::Blocked { seq: 0 },
            None => {}
        }
        let with_path = format!("{path}/with");
        let with = match self.value(&task["with"], &input, &input, locals, &with_path) {
            Ok(v) => v,
            Err(e) => return raised(e, 0),
        };
        let endpoint = match &with["endpoint"] {
            Value::String(uri) => uri.clone(),
            other => other["uri"].as_str().unwrap_or_default().to_string(),
        };
        let object = |field: &str| with[field].as_object().cloned().unwrap_or_default();
        self.needs.push(Need::Call {
            key,
            task: path.to_string(),
            request: HttpRequest {
                method: with["method"]
                    .as_str()
                    .unwrap_or("get")
                    .to_ascii_uppercase(),
                endpoint,
                headers: object("headers"),
                query: object("query"),
                body: with.get("body").cloned(),
                output: with["output"].as_str().unwrap_or("content").to_string(),
            },
        });
        Flow::Blocked { seq: 0 }
    }
}
