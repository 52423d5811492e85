//! Workflows: definitions written in the CNCF Serverless Workflow DSL 1.0.
//!
//! This crate parses and validates definitions (YAML or JSON) and refuses,
//! with the construct's JSON Pointer path, everything of the DSL that Shoal
//! does not run. It knows nothing of storage or HTTP: the node stores the
//! validated document in Raft and serves it.

pub mod cron;
pub mod definition;
pub mod expr;
pub mod run;
pub mod sandbox;

pub use definition::{
    check_id, literal_type, parse, version_order, Definition, DefinitionError, EventTypes,
    HttpEndpoint, MAX_DEFINITION_BYTES, SUPPORTED_TASKS,
};
