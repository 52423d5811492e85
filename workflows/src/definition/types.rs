//! The definition module's data: limits, the definition, its errors, and
//! the validator's state. Every other file of the module builds on this one.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
pub(super) const SUPPORTED_DSL: &str = "1.0.x, e.g. '1.0.0'";

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

pub(super) type Obj = Map<String, Value>;
pub(super) type Check<T = ()> = Result<T, DefinitionError>;

/// What the validator learns on its way: names defined in `use`, the
/// running task count, the endpoints of HTTP calls, and the types of the
/// events consumed.
#[derive(Default)]
pub(super) struct Validator {
    pub(super) errors: HashSet<String>,
    pub(super) retries: HashSet<String>,
    pub(super) tasks: usize,
    pub(super) http_endpoints: Vec<HttpEndpoint>,
    pub(super) event_types: super::EventTypes,
}

/// An HTTP call's endpoint written as a URI (not computed by an
/// expression), for checks the definition's reader makes of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// JSON Pointer of the URI in the document.
    pub path: String,
    pub uri: String,
}
