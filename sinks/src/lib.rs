//! SQL sinks: messages projected into database tables. A sink maps a
//! message's CloudEvent envelope to a row; the outbox delivers each message
//! to it at least once, and writes are idempotent (an upsert or insert by
//! the sink's key, guarded by an optional version column), so a redelivered
//! message leaves the same row.

pub mod definition;
mod migrate;
pub mod write;

pub use definition::{Database, DefinitionError, Mode, Sink};
pub use write::{Databases, Pool, WriteError, MAX_BATCH_ROWS};
