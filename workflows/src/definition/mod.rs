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
//! Modules: `syntax` (bytes to a size-bounded JSON value), `sections` (the
//! workflow's sections), `tasks` (task lists and tasks), `values` (durations,
//! runtime expressions, shared helpers).

mod sections;
mod syntax;
mod tasks;
#[cfg(test)]
mod tests;
mod values;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::sections::*;
use self::syntax::*;
pub use self::values::parse_duration;
use self::values::*;

/// The largest definition [`parse`] accepts, in bytes of YAML or JSON.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;

/// The largest definition once expressed as JSON (YAML aliases expanded).
pub const MAX_EXPANDED_BYTES: usize = 4 * MAX_DEFINITION_BYTES;

/// How deep task lists may nest (the workflow's `do` is level 1).
pub const MAX_NESTING: usize = 32;

/// How many tasks a definition may hold, nested ones included.
pub const MAX_TASKS: usize = 1000;

/// The task kinds Shoal runs (`call` only as `call: http`).
pub const SUPPORTED_TASKS: &[&str] = &[
    "call", "do", "emit", "for", "fork", "listen", "raise", "set", "switch", "try", "wait",
];

/// What a `call` task may call.
pub const SUPPORTED_CALLS: &[&str] = &["http"];

/// The DSL versions Shoal reads, as a pattern for messages.
const SUPPORTED_DSL: &str = "1.0.x, e.g. '1.0.0'";

/// Checks a definition's identity as given apart from its document (a URL
/// path, a command-line argument): the same rules as `document.namespace`,
/// `document.name` and `document.version`.
pub fn check_id(namespace: &str, name: &str, version: &str) -> Result<(), DefinitionError> {
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

/// A validated workflow definition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Definition {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// The whole definition as JSON (YAML converted, aliases expanded).
    pub document: Value,
}

impl Definition {
    /// `namespace/name/version`, the definition's identity.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.version)
    }

    /// Validates a definition already in JSON form (e.g. one read back from
    /// storage, or a request body decoded by the caller).
    pub fn from_value(document: Value) -> Result<Definition, DefinitionError> {
        let (namespace, name, version) = validate(&document)?;
        Ok(Definition {
            namespace,
            name,
            version,
            document,
        })
    }
}

/// Why a definition is refused. Every variant is the user's mistake (a 4xx),
/// and its `Display` is written for the user.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DefinitionError {
    /// The definition is larger than `limit` bytes (as uploaded, or as JSON
    /// once YAML aliases are expanded; `size` is then how far it got).
    #[error("the workflow definition is too large: {size} bytes, the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// Neither valid JSON nor valid YAML (or not exactly one YAML document).
    #[error("the workflow definition is not valid YAML or JSON: {0}")]
    Syntax(String),
    /// The document breaks the DSL; `path` is a JSON Pointer into it.
    #[error("invalid workflow definition at {}: {message}", show_path(.path))]
    Invalid { path: String, message: String },
    /// A construct of the DSL that Shoal does not run; `path` is a JSON
    /// Pointer into the document.
    #[error("{construct} is not supported by Shoal (at {})", show_path(.path))]
    Unsupported { path: String, construct: String },
}

impl DefinitionError {
    /// The JSON Pointer of the offending construct, if the error has one.
    pub fn path(&self) -> Option<&str> {
        match self {
            DefinitionError::Invalid { path, .. } | DefinitionError::Unsupported { path, .. } => {
                Some(path)
            }
            DefinitionError::TooLarge { .. } | DefinitionError::Syntax(_) => None,
        }
    }
}

fn show_path(path: &str) -> &str {
    if path.is_empty() {
        "the document root"
    } else {
        path
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

type Obj = Map<String, Value>;
type Check<T = ()> = Result<T, DefinitionError>;

const TOP_LEVEL: &[&str] = &[
    "document", "input", "output", "use", "do", "timeout", "schedule",
];
const TOP_LEVEL_UNSUPPORTED: &[(&str, &str)] =
    &[("evaluate", "evaluate (runtime expression settings)")];

/// Validates a whole definition; returns its namespace, name and version.
fn validate(document: &Value) -> Check<(String, String, String)> {
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
    }
    validator.task_list(tasks, "/do", 1)?;
    Ok(identity)
}

/// What the validator learns on its way: names defined in `use`, and the
/// running task count.
#[derive(Default)]
struct Validator {
    errors: HashSet<String>,
    retries: HashSet<String>,
    tasks: usize,
}
