//! The interpreter. An instance is evaluated from the start every time,
//! with its recorded outcomes answering every call, timer, listen and emit
//! it meets; where an outcome is missing the interpreter notes what it
//! needs and stops that branch. Evaluation is deterministic: the same
//! document, input and outcomes give the same result on any node, at any
//! time (jq's clock and environment are not available, see `expr`). The
//! one exception is a retry's duration limit, decided against the driver's
//! clock once and then kept by the recorded timer.

mod tasks;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::state::{errors, EventFilter, Instance, Need, Outcome, Record, WorkflowError};
use crate::definition::parse_duration;
use crate::expr;

/// Most tasks one evaluation may run (loops included) before the instance
/// is faulted as runaway.
pub const MAX_STEPS: usize = 100_000;

/// What the driver hands the interpreter besides the instance.
pub struct Env<'a> {
    /// The driver's clock (Unix milliseconds): only for retry duration
    /// limits not decided yet.
    pub now_ms: u64,
    /// `$secret`: the secrets the definition names, by name.
    pub secrets: &'a Value,
}

/// What an evaluation found.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Evaluated {
    Completed(Value),
    Faulted(WorkflowError),
    /// Waiting for what `needs` lists.
    Blocked,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Evaluation {
    pub result: Evaluated,
    /// Outcomes still to record (emits may be listed even when completed).
    pub needs: Vec<Need>,
    /// Every task the evaluation started, completed or saw fault, in the
    /// order it met them.
    pub tasks: Vec<TaskEvent>,
}

/// A task's lifecycle step, placed in time by outcome order: `seq` is the
/// latest settled outcome it depended on (0: none, it happened at the
/// start). An instance evaluated again with more outcomes meets the same
/// steps again with the same `seq`; the steps with a `seq` above those of
/// the last evaluation are the new ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task's JSON Pointer with its scope (`[i]` for a `for`
    /// iteration, `#n` for a retry's attempt), unique per run of a task.
    pub task: String,
    /// The task's JSON Pointer alone, the same for every run of it.
    pub path: String,
    pub what: TaskStep,
    pub seq: u64,
    /// The `seq` at which the task started.
    pub since: u64,
}

/// A step in a task's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStep {
    Started,
    Completed,
    Faulted,
}

impl TaskStep {
    /// The DSL's name of the step, as in its event types.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStep::Started => "started",
            TaskStep::Completed => "completed",
            TaskStep::Faulted => "faulted",
        }
    }
}

impl std::fmt::Display for TaskStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Directive {
    Continue,
    Exit,
    End,
    Goto(String),
}

/// How a task or a list of tasks ended; `seq` is the latest settled
/// outcome it used.
enum Flow {
    Done {
        output: Value,
        directive: Directive,
        seq: u64,
    },
    Blocked {
        seq: u64,
    },
    Raised {
        error: WorkflowError,
        seq: u64,
    },
}

impl Flow {
    /// The same outcome, for work that also used the outcomes up to
    /// `earlier` (the latest settled outcome decides races).
    fn after(self, earlier: u64) -> Flow {
        match self {
            Flow::Done {
                output,
                directive,
                seq,
            } => Flow::Done {
                output,
                directive,
                seq: seq.max(earlier),
            },
            Flow::Blocked { seq } => Flow::Blocked {
                seq: seq.max(earlier),
            },
            Flow::Raised { error, seq } => raised(error, seq.max(earlier)),
        }
    }
}

/// Variables declared by `for` and `catch.as`, innermost last.
type Locals = Vec<(String, Value)>;

struct Interpreter<'a> {
    document: &'a Value,
    instance: &'a Instance,
    env: &'a Env<'a>,
    needs: Vec<Need>,
    tasks: Vec<TaskEvent>,
    /// When the task about to run became reachable: the latest settled
    /// outcome that what ran before it depended on.
    entered: u64,
    steps: usize,
    context: Value,
    workflow: Value,
    runtime: Value,
}

/// Evaluates an instance of `document` as far as its outcomes reach.
pub fn evaluate(document: &Value, instance: &Instance, env: &Env) -> Evaluation {
    let mut interpreter = Interpreter {
        document,
        instance,
        env,
        needs: Vec::new(),
        tasks: Vec::new(),
        entered: 0,
        steps: 0,
        context: json!({}),
        workflow: json!({
            "id": instance.id,
            "definition": document,
            "input": instance.input,
            "startedAt": {"epoch": {"milliseconds": instance.created_ms}},
        }),
        runtime: json!({"name": "shoal", "version": env!("CARGO_PKG_VERSION")}),
    };
    let flow = interpreter.workflow();
    let result = match flow {
        Flow::Done { output, .. } => Evaluated::Completed(output),
        Flow::Blocked { .. } => Evaluated::Blocked,
        Flow::Raised { error, .. } => Evaluated::Faulted(error),
    };
    Evaluation {
        result,
        needs: interpreter.needs,
        tasks: interpreter.tasks,
    }
}

fn expression_error(path: &str, message: String) -> WorkflowError {
    WorkflowError::new(
        errors::EXPRESSION,
        400,
        "runtime expression failed",
        message,
    )
    .at(path)
}

fn raised(error: WorkflowError, seq: u64) -> Flow {
    Flow::Raised { error, seq }
}

/// The single `name: task` entry of a task list item.
fn entry(item: &Value) -> Option<(&String, &Value)> {
    item.as_object().and_then(|map| map.iter().next())
}

fn directive(value: Option<&Value>) -> Directive {
    match value.and_then(Value::as_str) {
        None | Some("continue") => Directive::Continue,
        Some("exit") => Directive::Exit,
        Some("end") => Directive::End,
        Some(task) => Directive::Goto(task.to_string()),
    }
}

fn bare(text: &str) -> &str {
    let trimmed = text.trim();
    trimmed
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(trimmed)
}

fn is_expression(text: &str) -> bool {
    let trimmed = text.trim();
    trimmed.starts_with("${") && trimmed.ends_with('}')
}

impl<'a> Interpreter<'a> {
    fn workflow(&mut self) -> Flow {
        let document = self.document;
        let locals = Locals::new();
        let raw = self.instance.input.clone();
        let input = match document.pointer("/input/from") {
            Some(from) => match self.value(from, &raw, &raw, &locals, "/input/from") {
                Ok(v) => v,
                Err(e) => return raised(e, 0),
            },
            None => raw,
        };
        let tasks = document
            .get("do")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let flow = self.list(tasks, "/do", "", input.clone(), &locals);
        let flow = self.timeout(document.get("timeout"), "", "", flow, 0);
        match flow {
            Flow::Done { output, seq, .. } => match document.pointer("/output/as") {
                Some(output_as) => {
                    match self.value(output_as, &output, &input, &locals, "/output/as") {
                        Ok(v) => Flow::Done {
                            output: v,
                            directive: Directive::End,
                            seq,
                        },
                        Err(e) => raised(e, seq),
                    }
                }
                None => Flow::Done {
                    output,
                    directive: Directive::End,
                    seq,
                },
            },
            other => other,
        }
    }

    /// The variables every expression sees.
    fn variables<'v>(
        &'v self,
        input: &'v Value,
        task: &'v Value,
        locals: &'v Locals,
    ) -> Vec<(String, &'v Value)> {
        let mut vars: Vec<(String, &Value)> = vec![
            ("$context".into(), &self.context),
            ("$input".into(), input),
            ("$output".into(), &Value::Null),
            ("$secret".into(), self.env.secrets),
            ("$task".into(), task),
            ("$workflow".into(), &self.workflow),
            ("$runtime".into(), &self.runtime),
            ("$authorization".into(), &Value::Null),
        ];
        for (name, value) in locals {
            let name = format!("${name}");
            vars.retain(|(n, _)| *n != name);
            vars.push((name, value));
        }
        vars
    }

    /// Runs one jq program.
    fn jq(
        &self,
        code: &str,
        data: &Value,
        input: &Value,
        locals: &Locals,
        path: &str,
    ) -> Result<Value, WorkflowError> {
        let task = json!({"reference": path, "input": input});
        let vars = self.variables(input, &task, locals);
        let vars: Vec<(&str, &Value)> = vars.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        expr::evaluate(code, data, &vars).map_err(|message| expression_error(path, message))
    }

    /// A value with every `${ }` string in it evaluated against `data`.
    fn value(
        &self,
        value: &Value,
        data: &Value,
        input: &Value,
        locals: &Locals,
        path: &str,
    ) -> Result<Value, WorkflowError> {
        match value {
            Value::String(text) if is_expression(text) => {
                self.jq(bare(text), data, input, locals, path)
            }
            Value::Array(items) => items
                .iter()
                .map(|item| self.value(item, data, input, locals, path))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| Ok((k.clone(), self.value(v, data, input, locals, path)?)))
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
            other => Ok(other.clone()),
        }
    }

    /// A condition (`if`, `when`, `while`): jq with or without `${ }`.
    fn condition(
        &self,
        text: &Value,
        data: &Value,
        input: &Value,
        locals: &Locals,
        path: &str,
    ) -> Result<bool, WorkflowError> {
        let code = text.as_str().map(bare).unwrap_or("true");
        let value = self.jq(code, data, input, locals, path)?;
        Ok(!matches!(value, Value::Null | Value::Bool(false)))
    }

    fn record(&self, key: &str) -> Option<&'a Record> {
        self.instance.outcomes.get(key)
    }

    fn key(&self, path: &str, scope: &str) -> String {
        format!("{path}{scope}")
    }

    /// A list of tasks, in order, following flow directives.
    fn list(
        &mut self,
        tasks: &[Value],
        path: &str,
        scope: &str,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        self.keeping_entered(|this| {
            let entered = this.entered;
            this.list_from(tasks, path, scope, input, locals, entered)
        })
    }

    /// Runs `work`, which moves `entered` along as its tasks run, and puts
    /// `entered` back afterwards: what follows a composite task is placed
    /// by the composite's own outcome, not by its last inner task.
    fn keeping_entered(&mut self, work: impl FnOnce(&mut Self) -> Flow) -> Flow {
        let entered = self.entered;
        let flow = work(self);
        self.entered = entered;
        flow
    }

    fn list_from(
        &mut self,
        tasks: &[Value],
        path: &str,
        scope: &str,
        input: Value,
        locals: &Locals,
        entered: u64,
    ) -> Flow {
        let mut current = input;
        let mut seq = 0;
        let mut i = 0;
        while i < tasks.len() {
            let Some((name, task)) = entry(&tasks[i]) else {
                i += 1;
                continue;
            };
            let task_path = format!("{path}/{i}/{name}");
            self.entered = entered.max(seq);
            match self.task(name, task, &task_path, scope, current, locals) {
                Flow::Done {
                    output,
                    directive,
                    seq: s,
                } => {
                    seq = seq.max(s);
                    current = output;
                    match directive {
                        Directive::Continue => i += 1,
                        Directive::Exit => break,
                        Directive::End => {
                            return Flow::Done {
                                output: current,
                                directive: Directive::End,
                                seq,
                            }
                        }
                        Directive::Goto(target) => {
                            match tasks
                                .iter()
                                .position(|t| entry(t).is_some_and(|(n, _)| *n == target))
                            {
                                Some(at) => i = at,
                                None => {
                                    return raised(
                                        WorkflowError::new(
                                            errors::CONFIGURATION,
                                            400,
                                            "unknown task",
                                            format!("then: '{target}' names no task of this list"),
                                        )
                                        .at(&task_path),
                                        seq,
                                    )
                                }
                            }
                        }
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

    /// One task with its common fields: `input`, `if`, `timeout`,
    /// `output`, `export`, `then`.
    fn task(
        &mut self,
        name: &str,
        task: &Value,
        path: &str,
        scope: &str,
        raw: Value,
        locals: &Locals,
    ) -> Flow {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return raised(
                WorkflowError::new(
                    errors::RUNTIME,
                    500,
                    "too many steps",
                    format!(
                        "the instance ran {MAX_STEPS} tasks in one evaluation (a runaway loop?)"
                    ),
                )
                .at(path),
                0,
            );
        }
        let input = match task.pointer("/input/from") {
            Some(from) => match self.value(from, &raw, &raw, locals, &format!("{path}/input/from"))
            {
                Ok(v) => v,
                Err(e) => return raised(e, 0),
            },
            None => raw.clone(),
        };
        if let Some(condition) = task.get("if") {
            match self.condition(condition, &input, &input, locals, &format!("{path}/if")) {
                Ok(true) => {}
                Ok(false) => {
                    return Flow::Done {
                        output: raw,
                        directive: Directive::Continue,
                        seq: 0,
                    }
                }
                Err(e) => return raised(e, 0),
            }
        }
        let entered = self.entered;
        self.note_task(path, scope, TaskStep::Started, entered, entered);
        let needs_before = self.needs.len();
        let flow = self.body(name, task, path, scope, input.clone(), locals);
        let flow = self.timeout(task.get("timeout"), path, scope, flow, needs_before);
        let flow = self.finished(flow, path, task, &input, locals);
        match &flow {
            Flow::Done { seq, .. } => {
                self.note_task(path, scope, TaskStep::Completed, entered, entered.max(*seq))
            }
            Flow::Raised { seq, .. } => {
                self.note_task(path, scope, TaskStep::Faulted, entered, entered.max(*seq))
            }
            Flow::Blocked { .. } => {}
        }
        flow
    }

    fn note_task(&mut self, path: &str, scope: &str, what: TaskStep, since: u64, seq: u64) {
        self.tasks.push(TaskEvent {
            task: self.key(path, scope),
            path: path.to_string(),
            what,
            seq,
            since,
        });
    }

    /// A task's `output`, `export` and `then`, once its body is done.
    fn finished(
        &mut self,
        flow: Flow,
        path: &str,
        task: &Value,
        input: &Value,
        locals: &Locals,
    ) -> Flow {
        let Flow::Done {
            output,
            directive: inner,
            seq,
        } = flow
        else {
            return flow;
        };
        let output = match task.pointer("/output/as") {
            Some(output_as) => {
                match self.value(
                    output_as,
                    &output,
                    input,
                    locals,
                    &format!("{path}/output/as"),
                ) {
                    Ok(v) => v,
                    Err(e) => return raised(e, seq),
                }
            }
            None => output,
        };
        if let Some(export_as) = task.pointer("/export/as") {
            match self.value(
                export_as,
                &output,
                input,
                locals,
                &format!("{path}/export/as"),
            ) {
                Ok(context) => self.context = context,
                Err(e) => return raised(e, seq),
            }
        }
        let directive = match inner {
            Directive::End => Directive::End,
            _ if task.get("switch").is_some() => inner,
            _ => directive(task.get("then")),
        };
        Flow::Done {
            output,
            directive,
            seq,
        }
    }

    /// A task's or the workflow's `timeout`: a timer raced with the work.
    fn timeout(
        &mut self,
        timeout: Option<&Value>,
        path: &str,
        scope: &str,
        flow: Flow,
        needs_before: usize,
    ) -> Flow {
        let Some(after) = timeout.and_then(|t| t.get("after")) else {
            return flow;
        };
        let key = self.key(&format!("{path}/timeout"), scope);
        let fired = match self.record(&key) {
            Some(Record {
                seq: Some(seq),
                outcome: Outcome::Timer { fired: true, .. },
                ..
            }) => Some(*seq),
            _ => None,
        };
        let timed_out = |fired_seq: u64| {
            raised(
                WorkflowError::new(
                    errors::TIMEOUT,
                    408,
                    "timed out",
                    format!("the task did not finish within {after}"),
                )
                .at(if path.is_empty() { "/" } else { path }),
                fired_seq,
            )
        };
        match (flow, fired) {
            (Flow::Done { seq, .. } | Flow::Raised { seq, .. }, Some(fired_seq))
                if seq > fired_seq =>
            {
                timed_out(fired_seq)
            }
            (Flow::Blocked { .. }, Some(fired_seq)) => {
                // What the task waited for no longer matters.
                self.needs.truncate(needs_before);
                timed_out(fired_seq)
            }
            (Flow::Blocked { seq }, None) => {
                let duration_ms = parse_duration(after).map_or(0, |d| d.as_millis() as u64);
                self.needs.push(Need::Timer {
                    key,
                    task: if path.is_empty() {
                        "/".into()
                    } else {
                        path.into()
                    },
                    duration_ms,
                    jitter_ms: None,
                });
                Flow::Blocked { seq }
            }
            (flow, _) => flow,
        }
    }

    fn body(
        &mut self,
        name: &str,
        task: &Value,
        path: &str,
        scope: &str,
        input: Value,
        locals: &Locals,
    ) -> Flow {
        let done = |output: Value, seq: u64| Flow::Done {
            output,
            directive: Directive::Continue,
            seq,
        };
        if let Some(set) = task.get("set") {
            return match self.value(set, &input, &input, locals, &format!("{path}/set")) {
                Ok(v) => done(v, 0),
                Err(e) => raised(e, 0),
            };
        }
        if let Some(cases) = task.get("switch").and_then(Value::as_array) {
            return self.switch(cases, path, input, locals);
        }
        if let Some(error) = task.pointer("/raise/error") {
            return self.raise(error, path, &input, locals);
        }
        if task.get("for").is_some() {
            return self.for_each(task, path, scope, input, locals);
        }
        if let Some(fork) = task.get("fork") {
            return self.fork(fork, path, scope, input, locals);
        }
        if task.get("try").is_some() {
            return self.try_catch(task, path, scope, input, locals);
        }
        if let Some(tasks) = task.get("do").and_then(Value::as_array) {
            return self.list(tasks, &format!("{path}/do"), scope, input, locals);
        }
        if let Some(wait) = task.get("wait") {
            let key = self.key(path, scope);
            return match self.record(&key) {
                Some(Record {
                    seq: Some(seq),
                    outcome: Outcome::Timer { fired: true, .. },
                    ..
                }) => done(input, *seq),
                _ => {
                    let duration_ms = parse_duration(wait).map_or(0, |d| d.as_millis() as u64);
                    self.needs.push(Need::Timer {
                        key,
                        task: path.to_string(),
                        duration_ms,
                        jitter_ms: None,
                    });
                    Flow::Blocked { seq: 0 }
                }
            };
        }
        if let Some(with) = task.pointer("/emit/event/with") {
            let key = self.key(path, scope);
            if self.record(&key).is_none() {
                match self.value(with, &input, &input, locals, &format!("{path}/emit")) {
                    Ok(Value::Object(event)) => self.needs.push(Need::Emit {
                        key,
                        task: path.to_string(),
                        event,
                    }),
                    Ok(other) => {
                        return raised(
                            expression_error(path, format!("emit.event.with became {other}")),
                            0,
                        )
                    }
                    Err(e) => return raised(e, 0),
                }
            }
            // An emit does not wait: the driver publishes it and records it.
            return done(input, 0);
        }
        if let Some(to) = task.pointer("/listen/to") {
            return self.listen(to, path, scope, input, locals);
        }
        if task.get("call").is_some() {
            return self.call(task, path, scope, input, locals);
        }
        raised(
            WorkflowError::new(
                errors::CONFIGURATION,
                400,
                "unknown task",
                format!("task '{name}' is of no kind this runtime knows"),
            )
            .at(path),
            0,
        )
    }
}

/// Whether an event (a CloudEvent envelope) meets a filter: every `with`
/// attribute equal (or its `${ }` expression true on the event), and every
/// correlation's value equal to the one expected (compared as text when
/// the expected value is text).
pub fn event_matches(filter: &EventFilter, event: &Value) -> bool {
    let attributes_match = filter.with.iter().all(|(name, expected)| match expected {
        Value::String(text) if is_expression(text) => {
            matches!(
                expr::evaluate(bare(text), event, &[]),
                Ok(Value::Bool(true))
            )
        }
        expected => event.get(name) == Some(expected),
    });
    attributes_match
        && filter.correlate.iter().all(|correlation| {
            let Ok(found) = expr::evaluate(&correlation.from, event, &[]) else {
                return false;
            };
            match (&correlation.expect, &found) {
                (Value::Null, _) => true,
                (Value::String(expected), Value::String(found)) => expected == found,
                (Value::String(expected), found) => {
                    let found = found.to_string();
                    *expected == found
                }
                (expected, found) => expected == found,
            }
        })
}
