//! Workflow definitions: parsing (YAML or JSON) and validation of the subset
//! of the CNCF Serverless Workflow DSL 1.0 that Shoal runs.
//!
//! [`parse`] turns the bytes a user uploads into a [`Definition`]: the
//! document as normalized JSON plus its identity (namespace, name, version).
//! Constructs of the DSL that Shoal does not run are refused with
//! [`DefinitionError::Unsupported`], malformed ones with
//! [`DefinitionError::Invalid`]; both carry the JSON Pointer of the offending
//! construct, so every error can be shown to the user as is (a 4xx).
//!
//! Accepted: the tasks of [`SUPPORTED_TASKS`] (`call` only as `call: http`),
//! the common task fields (`if`, `input`, `output`, `export`, `timeout`,
//! `then`, `metadata`), `use.secrets`, `use.errors`, `use.retries`, inline
//! timeouts, and a schedule (`every`, `cron`, `after` or `on`).
//!
//! Refused as unsupported: the `run` task and unknown task kinds, `call` of
//! anything but `http` (gRPC, OpenAPI, AsyncAPI, functions), `use.functions`,
//! `use.authentications`, `use.catalogs`, `use.extensions`, `use.timeouts`
//! (and timeouts by name), `evaluate`, endpoint authentication,
//! `with.redirect`, `listen.read`, `listen`'s `foreach`, `until`, retry
//! `when`/`exceptWhen`, external schemas, and durations in years or months.
//!
//! Modules, each using only those before it: `types` (limits, the
//! definition, its errors, the validator's state), `values` (durations,
//! runtime expressions, shared helpers), `syntax` (bytes to a size-bounded
//! JSON value), `sections` (the workflow's sections), `tasks` (task lists
//! and tasks), `jq` (every runtime expression compiled with jaq); this file
//! puts them together.

mod event_types;
mod jq;
mod sections;
mod syntax;
mod tasks;
#[cfg(test)]
mod tests;
mod types;
mod values;

use serde_json::Value;

use self::sections::*;
use self::syntax::*;
pub use self::values::parse_duration;
use self::values::*;

pub use self::event_types::{literal_type, EventTypes};
use self::types::{Check, Validator};
pub use self::types::{
    Definition, DefinitionError, HttpEndpoint, MAX_DEFINITION_BYTES, MAX_EXPANDED_BYTES,
    MAX_NESTING, MAX_TASKS, SUPPORTED_CALLS, SUPPORTED_TASKS,
};

/// Namespaces that would collide with the API's own routes under
/// `/v1/workflows/`.
pub const RESERVED_NAMESPACES: [&str; 3] = ["instances", "definitions", "events"];

fn refuse_reserved(namespace: &str) -> Result<(), DefinitionError> {
    if RESERVED_NAMESPACES.contains(&namespace) {
        return Err(invalid(
            "/document/namespace",
            format!(
                "namespace '{namespace}' is reserved: /v1/workflows/{namespace}/... is a route of its own"
            ),
        ));
    }
    Ok(())
}

/// Checks a definition's identity as given apart from its document (a URL
/// path, a command-line argument): the same rules as `document.namespace`,
/// `document.name` and `document.version`, and no reserved namespace.
pub fn check_id(namespace: &str, name: &str, version: &str) -> Result<(), DefinitionError> {
    refuse_reserved(namespace)?;
    for (field, text) in [("namespace", namespace), ("name", name)] {
        if !is_label(text) {
            return Err(invalid(
                &format!("/document/{field}"),
                format!(
                    "{field} '{text}' is not a lowercase RFC 1123 label: 1 to 63 characters \
                     among a-z, 0-9 and '-', starting and ending with a letter or digit"
                ),
            ));
        }
    }
    if !is_semver(version) {
        return Err(invalid(
            "/document/version",
            format!("version '{version}' is not a semantic version such as '1.0.0'"),
        ));
    }
    Ok(())
}

/// The order of definition versions, newest last: by their numbers
/// (`1.10.0` after `1.9.0`), a pre-release (`1.0.0-rc.1`) before its
/// release; build metadata is ignored.
pub fn version_order(version: &str) -> (Vec<u64>, bool, String) {
    let version = version.split('+').next().unwrap_or(version);
    let (core, pre) = match version.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (version, None),
    };
    let numbers = core.split('.').map(|n| n.parse().unwrap_or(0)).collect();
    (numbers, pre.is_none(), pre.unwrap_or_default().to_string())
}

impl Definition {
    /// Validates a definition already in JSON form (e.g. one read back from
    /// storage, or a request body decoded by the caller).
    pub fn from_value(document: Value) -> Result<Definition, DefinitionError> {
        let ((namespace, name, version), _) = validate(&document)?;
        Ok(Definition {
            namespace,
            name,
            version,
            document,
        })
    }

    /// The endpoints of the definition's HTTP calls that are written as
    /// URIs (those computed by expressions are known only when they run).
    /// A walk of the document's structure; its expressions were checked
    /// when the definition was built and are not compiled again.
    pub fn http_endpoints(&self) -> Vec<HttpEndpoint> {
        check_structure(&self.document)
            .map(|(_, validator)| validator.http_endpoints)
            .unwrap_or_default()
    }

    /// The types of the events its `listen` tasks and `schedule.on` take
    /// (a walk of the structure, as for `http_endpoints`).
    pub fn event_types(&self) -> EventTypes {
        check_structure(&self.document)
            .map(|(_, validator)| validator.event_types)
            .unwrap_or_default()
    }
}

/// Parses and validates a definition written in YAML or JSON.
pub fn parse(bytes: &[u8]) -> Result<Definition, DefinitionError> {
    if bytes.len() > MAX_DEFINITION_BYTES {
        return Err(DefinitionError::TooLarge {
            size: bytes.len(),
            limit: MAX_DEFINITION_BYTES,
        });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let value = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(DefinitionError::Syntax("the definition is empty".into())),
        // JSON first; YAML (a superset of JSON's syntax) if that fails.
        Some(b'{') => match parse_json(bytes) {
            Ok(value) => value,
            Err(json @ DefinitionError::Syntax(_)) => {
                parse_yaml(bytes).map_err(|yaml| match yaml {
                    DefinitionError::Syntax(_) => json,
                    other => other,
                })?
            }
            Err(other) => return Err(other),
        },
        Some(_) => parse_yaml(bytes)?,
    };
    let size = json_size(&value)?;
    if size > MAX_EXPANDED_BYTES {
        return Err(DefinitionError::TooLarge {
            size,
            limit: MAX_EXPANDED_BYTES,
        });
    }
    Definition::from_value(value)
}

// ---------------------------------------------------------------------------
// Validation: the workflow (its sections are in `sections.rs`, its tasks in
// `tasks.rs`).

const TOP_LEVEL: &[&str] = &[
    "document", "input", "output", "use", "do", "timeout", "schedule",
];
const TOP_LEVEL_UNSUPPORTED: &[(&str, &str)] =
    &[("evaluate", "evaluate (runtime expression settings)")];

/// Validates a whole definition; returns its namespace, name and version,
/// and what the validator learned.
fn validate(document: &Value) -> Check<((String, String, String), Validator)> {
    let checked = check_structure(document)?;
    jq::check_expressions(document)?;
    Ok(checked)
}

/// Everything [`validate`] checks but the expressions (which it compiles).
fn check_structure(document: &Value) -> Check<((String, String, String), Validator)> {
    let Some(root) = document.as_object() else {
        return Err(invalid(
            "",
            format!(
                "a workflow definition must be a map with 'document' and 'do', found {}",
                kind_of(document)
            ),
        ));
    };
    let header = required(root, "document", "", "the workflow")?;
    let identity = document_section(header, "/document")?;
    let tasks = required(root, "do", "", "the workflow")?;
    check_fields(root, "", "the workflow", TOP_LEVEL, TOP_LEVEL_UNSUPPORTED)?;

    let mut validator = Validator::default();
    if let Some(uses) = root.get("use") {
        validator.use_section(uses, "/use")?;
    }
    if let Some(input) = root.get("input") {
        input_section(input, "/input")?;
    }
    if let Some(output) = root.get("output") {
        output_section(output, "/output", "output")?;
    }
    if let Some(timeout) = root.get("timeout") {
        timeout_section(timeout, "/timeout")?;
    }
    if let Some(schedule) = root.get("schedule") {
        schedule_section(schedule, "/schedule")?;
        if let Some(on) = schedule.get("on") {
            validator.event_types.add_consumption(on);
        }
    }
    validator.task_list(tasks, "/do", 1)?;
    Ok((identity, validator))
}
