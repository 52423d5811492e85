//! Workflow definitions, stored in Raft under `_shoal/workflows/definitions/`
//! as the validated document (JSON), one key per namespace, name and version.
//! A version is immutable: storing it again with the same document changes
//! nothing; with another document it is refused.

use shoal_workflows::Definition;
use thiserror::Error;

use super::shoal::{Created, KvError, Shoal};

/// Where definitions are stored (inside the reserved `_shoal/` prefix, so
/// the KV API cannot write them).
pub const DEFINITIONS_PREFIX: &str = "_shoal/workflows/definitions/";

/// Most definitions one list answers.
pub const MAX_LIST: usize = 10_000;

#[derive(Debug, Error)]
pub enum WorkflowError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(
        "workflow {0} already exists with another document; a version is immutable: \
         publish the change under a new version"
    )]
    VersionExists(String),
    #[error("workflow definition {0} does not exist")]
    NotFound(String),
    #[error("stored workflow definition {key} is unreadable: {message}")]
    Unreadable { key: String, message: String },
}

/// What storing a definition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new version, written at this revision.
    Created(u64),
    /// The same version with the same document was already there (written
    /// at this revision): nothing changed.
    Unchanged(u64),
}

fn key_of(id: &str) -> String {
    format!("{DEFINITIONS_PREFIX}{id}")
}

fn decode(key: &str, bytes: &[u8]) -> Result<Definition, WorkflowError> {
    serde_json::from_slice(bytes).map_err(|e| WorkflowError::Unreadable {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Store a validated definition unless its version exists: one transaction
/// that writes the key only if it was never created, else reads it.
pub async fn put_definition(
    shoal: &Shoal,
    definition: &Definition,
) -> Result<Stored, WorkflowError> {
    let id = definition.key();
    let key = key_of(&id);
    let value = serde_json::to_vec(definition).map_err(|e| WorkflowError::Unreadable {
        key: key.clone(),
        message: e.to_string(),
    })?;
    match shoal.create(key.clone(), value).await? {
        Created::Written(revision) => Ok(Stored::Created(revision)),
        Created::Exists { value, revision } => {
            if decode(&key, &value)? == *definition {
                Ok(Stored::Unchanged(revision))
            } else {
                Err(WorkflowError::VersionExists(id))
            }
        }
    }
}

/// A definition and the revision it was written at (linearizable read).
pub async fn get_definition(shoal: &Shoal, id: &str) -> Result<(Definition, u64), WorkflowError> {
    shoal.read_barrier(false).await?;
    let key = key_of(id);
    let read_key = key.clone();
    let (_, kv) = shoal.read(move |store| store.kv_get(&read_key)).await?;
    let kv = kv.ok_or_else(|| WorkflowError::NotFound(id.to_string()))?;
    Ok((decode(&key, &kv.value)?, kv.mod_revision))
}

/// Every definition whose id (`namespace/name/version`) starts with
/// `id_prefix`, in id order, at most [`MAX_LIST`]; a linearizable read
/// unless `stale` (then this replica's view).
pub async fn list_definitions(
    shoal: &Shoal,
    id_prefix: &str,
    stale: bool,
) -> Result<Vec<(Definition, u64)>, WorkflowError> {
    shoal.read_barrier(stale).await?;
    let prefix = key_of(id_prefix);
    let (_, kvs, _) = shoal
        .read(move |store| store.kv_range(&prefix, None, MAX_LIST))
        .await?;
    kvs.iter()
        .map(|kv| Ok((decode(&kv.key, &kv.value)?, kv.mod_revision)))
        .collect()
}

/// Delete a definition; the revision of the deletion.
pub async fn delete_definition(shoal: &Shoal, id: &str) -> Result<u64, WorkflowError> {
    shoal
        .delete_key(key_of(id))
        .await?
        .ok_or_else(|| WorkflowError::NotFound(id.to_string()))
}
