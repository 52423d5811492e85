//! Runtime expressions: jq programs compiled and run with jaq.
//!
//! One set of functions serves publishing (every expression is compiled
//! then) and running: jq's standard library without the functions whose
//! answer does not follow from the input (`now`, `env`, `input`, `inputs`).
//! An instance is re-evaluated from its recorded outcomes, so an expression
//! must give the same answer every time; `env` would also hand the node's
//! environment to a definition. `halt` and `halt_error` stay (the library
//! defines other functions with them) but only fail the expression: jaq's
//! own runner would exit the process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Native, Vars};
use serde_json::Value;

type Data = jaq_core::data::JustLut<jaq_json::Val>;
type Program = jaq_core::compile::Filter<Native<Data>>;

/// Functions of jq's library that are not available.
pub const DENIED_FUNCTIONS: [&str; 4] = ["now", "env", "input", "inputs"];

/// Most outputs one expression may produce before it is cut off.
pub const MAX_OUTPUTS: usize = 10_000;
/// Most bytes of JSON one expression's result may hold.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// Most compiled programs kept per thread.
const CACHE_SIZE: usize = 1024;

thread_local! {
    static CACHE: RefCell<HashMap<(String, Vec<String>), Rc<Program>>> =
        RefCell::new(HashMap::new());
}

fn functions() -> impl Iterator<Item = jaq_core::native::Fun<Data>> {
    jaq_core::funs::<Data>()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| !DENIED_FUNCTIONS.contains(name))
}

/// Compiles one jq program with the given global variables (each written
/// with its `$`); the error is jaq's, in words.
pub fn compile(code: &str, variables: &[&str]) -> Result<(), String> {
    build(code, variables).map(|_| ())
}

fn build(code: &str, variables: &[&str]) -> Result<Program, String> {
    let definitions = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let arena = Arena::default();
    let modules = Loader::new(definitions)
        .load(&arena, File { code, path: () })
        .map_err(|errors| {
            let messages: Vec<String> = errors
                .into_iter()
                .flat_map(|(_, error)| match error {
                    jaq_core::load::Error::Io(errors) => errors
                        .into_iter()
                        .map(|(name, message)| format!("cannot load {name}: {message}"))
                        .collect::<Vec<_>>(),
                    jaq_core::load::Error::Lex(errors) => errors
                        .into_iter()
                        .map(|(expected, at)| {
                            format!("expected {} at '{}'", expected.as_str(), excerpt(at))
                        })
                        .collect(),
                    jaq_core::load::Error::Parse(errors) => errors
                        .into_iter()
                        .map(|(expected, found)| {
                            format!("expected {}, found '{}'", expected.as_str(), excerpt(found))
                        })
                        .collect(),
                })
                .collect();
            messages.join("; ")
        })?;
    Compiler::default()
        .with_funs(functions())
        .with_global_vars(variables.iter().copied())
        .compile(modules)
        .map_err(|errors| {
            let messages: Vec<String> = errors
                .into_iter()
                .flat_map(|(_, undefined)| undefined)
                .map(|(name, kind)| format!("undefined {} '{name}'", kind.as_str()))
                .collect();
            messages.join("; ")
        })
}

/// At most 20 characters of the code where an error was found ("the end"
/// when at the end).
fn excerpt(at: &str) -> String {
    if at.is_empty() {
        return "the end".to_string();
    }
    at.chars().take(20).collect()
}

fn to_val(value: &Value) -> Result<jaq_json::Val, String> {
    jaq_json::read::parse_single(value.to_string().as_bytes()).map_err(|e| e.to_string())
}

fn from_val(value: &jaq_json::Val) -> Result<Value, String> {
    let text = value.to_string();
    if text.len() > MAX_RESULT_BYTES {
        return Err(format!(
            "the result is {} bytes of JSON; the limit is {MAX_RESULT_BYTES}",
            text.len()
        ));
    }
    serde_json::from_str(&text).map_err(|e| format!("the result is not JSON: {e}"))
}

/// Runs `code` on `input` with the given variables (names with their `$`)
/// and returns its first output (`null` when it has none), as jq's `first`.
pub fn evaluate(code: &str, input: &Value, variables: &[(&str, &Value)]) -> Result<Value, String> {
    let names: Vec<String> = variables.iter().map(|(n, _)| n.to_string()).collect();
    let cache_key = (code.to_string(), names);
    let program = CACHE.with(|cache| -> Result<Rc<Program>, String> {
        if let Some(program) = cache.borrow().get(&cache_key) {
            return Ok(program.clone());
        }
        let names: Vec<&str> = cache_key.1.iter().map(String::as_str).collect();
        let program = Rc::new(build(code, &names)?);
        let mut cache = cache.borrow_mut();
        if cache.len() >= CACHE_SIZE {
            cache.clear();
        }
        cache.insert(cache_key.clone(), program.clone());
        Ok(program)
    })?;
    let values = variables
        .iter()
        .map(|(_, value)| to_val(value))
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = Ctx::<Data>::new(&program.lut, Vars::new(values));
    let mut outputs = program.id.run((ctx, to_val(input)?));
    match outputs.next() {
        None => Ok(Value::Null),
        Some(Ok(value)) => from_val(&value),
        Some(Err(exn)) => Err(match exn.get_err() {
            Ok(error) => error.to_string(),
            Err(_) => "the expression stopped the program".to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expressions_compile_or_say_why() {
        let vars = ["$context", "$input"];
        assert_eq!(compile(".a | map(. + 1)", &vars), Ok(()));
        assert_eq!(compile("{ order: .order }", &vars), Ok(()));
        assert_eq!(compile("$context.x", &vars), Ok(()));
        let error = compile(".[", &vars).expect_err("unclosed");
        assert!(error.contains("expected"), "{error}");
        let error = compile("nosuchfunction(1)", &vars).expect_err("unknown function");
        assert!(error.contains("nosuchfunction"), "{error}");
        let error = compile("$nope", &vars).expect_err("unknown variable");
        assert!(error.contains("$nope"), "{error}");
    }

    #[test]
    fn functions_whose_answer_does_not_follow_from_the_input_are_refused() {
        for code in ["now", "env", "input", "[inputs]", "$ENV"] {
            let error = compile(code, &[]).expect_err(code);
            assert!(error.contains("undefined"), "{code}: {error}");
        }
        for code in ["halt", "\"x\" | halt_error(1)", "halt_error"] {
            assert!(
                evaluate(code, &json!(1), &[]).is_err(),
                "{code} fails, never exits"
            );
        }
    }

    #[test]
    fn an_expression_runs_with_its_variables() {
        let context = json!({"n": 2});
        let out = evaluate(
            "{total: (.items | map(.price) | add), n: $context.n}",
            &json!({"items": [{"price": 3}, {"price": 4.5}]}),
            &[("$context", &context)],
        );
        assert_eq!(out, Ok(json!({"total": 7.5, "n": 2})));
        assert_eq!(evaluate("empty", &json!(1), &[]), Ok(Value::Null));
        assert_eq!(evaluate(".[]", &json!([5, 6]), &[]), Ok(json!(5)));
        let error = evaluate("error(\"no stock\")", &json!(null), &[]).expect_err("raised");
        assert!(error.contains("no stock"), "{error}");
        let error = evaluate(".a + 1", &json!({"a": "x"}), &[]).expect_err("type error");
        assert!(!error.is_empty());
    }

    #[test]
    fn a_result_past_the_size_limit_is_an_error() {
        let error = evaluate("[range(200000)] | map(tostring * 10)", &json!(null), &[])
            .expect_err("too large");
        assert!(error.contains("limit"), "{error}");
    }
}
