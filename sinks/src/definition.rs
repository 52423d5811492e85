//! Database and sink definitions as users write them, and their checks
//! (everything that can be checked without a database).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use utoipa::ToSchema;

/// Keys of the configuration store that hold the definitions.
pub const DATABASES_PREFIX: &str = "_shoal/databases/";
pub const SINKS_PREFIX: &str = "_shoal/sinks/";

/// The embedded database: SQLite in each node's data dir. Always there;
/// defined only to carry migrations.
pub const LOCAL_DATABASE: &str = "local";

/// Longest database or sink name.
pub const MAX_NAME_BYTES: usize = 128;
/// Most columns a sink maps.
pub const MAX_COLUMNS: usize = 64;
/// Most key columns.
pub const MAX_KEY_COLUMNS: usize = 8;
/// Longest identifier (PostgreSQL's limit).
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// Most connections a node opens to one database.
pub const MAX_CONNECTIONS: u32 = 32;
/// Most migrations a database definition carries.
pub const MAX_MIGRATIONS: usize = 256;
/// Longest migration description.
pub const MAX_DESCRIPTION_BYTES: usize = 256;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct DefinitionError(pub String);

fn invalid(message: impl Into<String>) -> DefinitionError {
    DefinitionError(message.into())
}

pub fn validate_name(kind: &str, name: &str) -> Result<(), DefinitionError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{kind} name {name:?} must be 1-{MAX_NAME_BYTES} characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A PostgreSQL database the sinks may write, or (named `local`) the
/// migrations of each node's embedded SQLite database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "shop", "url": "postgres://shoal@db.internal:5432/shop?sslmode=verify-full",
    "password_key": "secrets/shop-db", "max_connections": 4,
    "migrations": [{"version": 1, "description": "orders", "sql": "CREATE TABLE orders (id text PRIMARY KEY, status text)"}]}))]
pub struct Database {
    /// Read-only: the name in the path.
    #[serde(default)]
    pub name: String,
    /// `postgres://user@host:port/database`, with libpq's `sslmode`
    /// (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) and
    /// `sslrootcert` (a CA file on every node) as query parameters. No
    /// password in the URL: it comes from `password_key`. Absent for
    /// `local`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// The KV key whose value is the password (read on each node from its
    /// replica when it connects; protect it with an ACL policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_key: Option<String>,
    /// Connections each node opens at most (1-32).
    #[serde(default = "default_max_connections")]
    #[schema(default = default_max_connections)]
    pub max_connections: u32,
    /// Versioned schema migrations, applied in version order by each node
    /// when it first writes the database after a start or a change of
    /// this definition, and by the receiving node before the definition
    /// is stored. Applied versions are recorded in the database
    /// (`_sqlx_migrations`, as the sqlx CLI does): each runs once, in a
    /// transaction, and an applied migration whose SQL changed is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<Migration>,
}

/// One schema migration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// Greater than 0, unique within the database (the sqlx CLI's file
    /// name prefix, e.g. 1 or 20261205120000).
    pub version: i64,
    #[serde(default)]
    pub description: String,
    /// SQL statements, run in one transaction.
    pub sql: String,
}

fn default_max_connections() -> u32 {
    4
}

impl Database {
    /// Check and complete a definition given by a user.
    pub fn validate(mut self, name: &str) -> Result<Database, DefinitionError> {
        validate_name("database", name)?;
        self.name = name.to_string();
        self.validate_migrations()?;
        if name == LOCAL_DATABASE {
            if !self.url.is_empty()
                || self.password_key.is_some()
                || self.max_connections != default_max_connections()
            {
                return Err(invalid(format!(
                    "{LOCAL_DATABASE:?} is the embedded SQLite database of each node: its definition carries migrations only (give a PostgreSQL database another name)"
                )));
            }
            return Ok(self);
        }
        let url =
            url::Url::parse(&self.url).map_err(|e| invalid(format!("url {:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid("url must be postgres://user@host:port/database"));
        }
        if url.password().is_some() {
            return Err(invalid(
                "url must not carry a password (it would be readable with the definition): store it in a KV key and name that key in password_key",
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("url needs a host"));
        }
        if url.query_pairs().any(|(name, _)| name == "password") {
            return Err(invalid(
                "url must not carry a password parameter: use password_key",
            ));
        }
        if let Some(key) = &self.password_key {
            if key.is_empty() || key.len() > 1024 {
                return Err(invalid("password_key must be a KV key of 1-1024 bytes"));
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(invalid(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS}"
            )));
        }
        Ok(self)
    }

    fn validate_migrations(&mut self) -> Result<(), DefinitionError> {
        if self.migrations.len() > MAX_MIGRATIONS {
            return Err(invalid(format!(
                "a database carries at most {MAX_MIGRATIONS} migrations"
            )));
        }
        self.migrations.sort_by_key(|m| m.version);
        for (i, migration) in self.migrations.iter().enumerate() {
            if migration.version <= 0 {
                return Err(invalid(format!(
                    "migration version {} must be greater than 0",
                    migration.version
                )));
            }
            if i > 0 && self.migrations[i - 1].version == migration.version {
                return Err(invalid(format!(
                    "migration version {} is given twice",
                    migration.version
                )));
            }
            if migration.description.len() > MAX_DESCRIPTION_BYTES {
                return Err(invalid(format!(
                    "migration {}: the description is over {MAX_DESCRIPTION_BYTES} bytes",
                    migration.version
                )));
            }
            if migration.sql.trim().is_empty() {
                return Err(invalid(format!(
                    "migration {} has no SQL",
                    migration.version
                )));
            }
        }
        Ok(())
    }

    /// The definition of the embedded database when none is stored.
    pub fn local() -> Database {
        Database {
            name: LOCAL_DATABASE.to_string(),
            url: String::new(),
            password_key: None,
            max_connections: default_max_connections(),
            migrations: Vec::new(),
        }
    }

    pub fn is_local(&self) -> bool {
        self.name == LOCAL_DATABASE
    }
}

/// A database's password from the value of the KV key its `password_key`
/// names (`None` when the key does not exist).
pub fn password(key: &str, value: Option<Vec<u8>>) -> Result<String, DefinitionError> {
    let value = value.ok_or_else(|| {
        invalid(format!(
            "the database's password_key {key:?} does not exist in the KV store"
        ))
    })?;
    String::from_utf8(value).map_err(|_| {
        invalid(format!(
            "the database's password_key {key:?} does not hold UTF-8 text"
        ))
    })
}

/// How rows are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Insert, or update the row with the same key (unless its version is newer).
    #[default]
    Upsert,
    /// Insert; a row whose key exists already is left as it is.
    Insert,
}

/// A projection of messages into a table: each message a route sends to
/// `sql:<name>` becomes (or updates) one row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "orders", "database": "shop", "table": "orders", "key": ["id"],
    "columns": {"id": "/data/id", "customer_id": "/data/customer_id", "total_amount": "/data/total",
        "status": "/data/status", "updated_at": "/time"},
    "mode": "upsert", "version_column": "updated_at", "per_node": false}))]
pub struct Sink {
    /// Read-only: the name in the path.
    #[serde(default)]
    pub name: String,
    /// `local` (the node's embedded SQLite) or a database defined with
    /// `PUT /v1/databases/{name}`.
    pub database: String,
    /// The table written, `table` or `schema.table`; it must exist.
    pub table: String,
    /// The columns that identify a row (a primary key or unique index
    /// over exactly these columns must exist).
    pub key: Vec<String>,
    /// Column name -> JSON Pointer into the message's CloudEvent envelope
    /// (`/id`, `/source`, `/type`, `/time`, `/subject`, `/data/...`). A
    /// pointer that finds nothing writes NULL.
    pub columns: BTreeMap<String, String>,
    #[serde(default)]
    pub mode: Mode,
    /// A column of `columns` (not of `key`) that orders versions of a row:
    /// an upsert never replaces a row whose version is greater. The
    /// table's column must be of a number, date or time type (checked on
    /// PUT; in SQLite, not of TEXT or BLOB affinity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_column: Option<String>,
    /// Required for `local` in a cluster of more than one node: each node
    /// writes the messages it accepted into its own SQLite file.
    #[serde(default)]
    pub per_node: bool,
}

impl Sink {
    pub fn validate(mut self, name: &str) -> Result<Sink, DefinitionError> {
        validate_name("sink", name)?;
        self.name = name.to_string();
        validate_name("database", &self.database)?;
        let parts: Vec<&str> = self.table.split('.').collect();
        if parts.len() > 2 {
            return Err(invalid(format!(
                "table {:?} must be table or schema.table",
                self.table
            )));
        }
        for part in parts {
            validate_identifier("table", part)?;
        }
        if self.columns.is_empty() || self.columns.len() > MAX_COLUMNS {
            return Err(invalid(format!("a sink maps 1 to {MAX_COLUMNS} columns")));
        }
        for (column, pointer) in &self.columns {
            validate_identifier("column", column)?;
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(invalid(format!(
                    "column {column:?}: {pointer:?} is not a JSON Pointer (it starts with '/', e.g. /data/id)"
                )));
            }
        }
        if self.key.is_empty() || self.key.len() > MAX_KEY_COLUMNS {
            return Err(invalid(format!("key needs 1 to {MAX_KEY_COLUMNS} columns")));
        }
        for (i, column) in self.key.iter().enumerate() {
            if !self.columns.contains_key(column) {
                return Err(invalid(format!(
                    "key column {column:?} is not one of the mapped columns"
                )));
            }
            if self.key[..i].contains(column) {
                return Err(invalid(format!("key column {column:?} is named twice")));
            }
        }
        if let Some(version) = &self.version_column {
            if !self.columns.contains_key(version) {
                return Err(invalid(format!(
                    "version_column {version:?} is not one of the mapped columns"
                )));
            }
            if self.key.contains(version) {
                return Err(invalid(format!(
                    "version_column {version:?} cannot be a key column"
                )));
            }
            if self.mode == Mode::Insert {
                return Err(invalid(
                    "version_column applies to upserts only (mode insert never replaces a row)",
                ));
            }
        }
        if self.mode == Mode::Upsert && self.columns.len() == self.key.len() {
            return Err(invalid(
                "an upsert needs a column besides the key (use mode insert to only add rows)",
            ));
        }
        Ok(self)
    }

    /// The values of one row, in `columns` order, taken from a message's
    /// CloudEvent envelope.
    pub fn row(&self, envelope: &Value) -> Vec<Value> {
        self.columns
            .values()
            .map(|pointer| envelope.pointer(pointer).cloned().unwrap_or(Value::Null))
            .collect()
    }

    /// Positions of the key columns and of the version column in a row.
    pub(crate) fn positions(&self) -> (Vec<usize>, Option<usize>) {
        let index = |name: &String| self.columns.keys().position(|c| c == name);
        let key = self.key.iter().filter_map(index).collect();
        let version = self.version_column.as_ref().and_then(index);
        (key, version)
    }
}

/// Table and column names: letters, digits and '_', not starting with a
/// digit (they are quoted in statements, but nothing needs more).
pub fn validate_identifier(kind: &str, name: &str) -> Result<(), DefinitionError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IDENTIFIER_BYTES
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{kind} name {name:?} must be 1-{MAX_IDENTIFIER_BYTES} letters, digits or '_', not starting with a digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sink() -> Sink {
        serde_json::from_value(json!({
            "database": "local", "table": "orders", "key": ["id"],
            "columns": {"id": "/data/id", "status": "/data/status", "v": "/data/v"},
            "version_column": "v"
        }))
        .unwrap()
    }

    #[test]
    fn a_sink_maps_an_envelope_to_a_row() {
        let sink = sink().validate("orders").unwrap();
        let row = sink.row(&json!({"id": "m1", "data": {"id": 7, "status": "paid"}}));
        // columns in name order: id, status, v
        assert_eq!(row, vec![json!(7), json!("paid"), Value::Null]);
        assert_eq!(sink.positions(), (vec![0], Some(2)));
    }

    #[test]
    fn bad_sinks_are_refused_with_the_reason() {
        let refused = |change: fn(&mut Sink), needle: &str| {
            let mut bad = sink();
            change(&mut bad);
            let error = bad.validate("s").unwrap_err().0;
            assert!(error.contains(needle), "{error:?} lacks {needle:?}");
        };
        refused(|s| s.table = "orders; drop table x".into(), "table name");
        refused(|s| s.table = "a.b.c".into(), "schema.table");
        refused(|s| s.key = vec!["nope".into()], "not one of the mapped");
        refused(|s| s.key = vec![], "key needs");
        refused(|s| s.key = vec!["id".into(), "id".into()], "twice");
        refused(|s| s.version_column = Some("id".into()), "cannot be a key");
        refused(|s| s.mode = Mode::Insert, "upserts only");
        refused(
            |s| {
                s.columns.insert("x\"y".into(), "/data".into());
            },
            "column name",
        );
        refused(
            |s| {
                s.columns.insert("x".into(), "data".into());
            },
            "JSON Pointer",
        );
    }

    #[test]
    fn database_urls_carry_no_password() {
        let database = |url: &str| Database {
            name: String::new(),
            url: url.into(),
            password_key: None,
            max_connections: 4,
            migrations: Vec::new(),
        };
        assert!(database("postgres://u@h/db").validate("shop").is_ok());
        assert!(database("postgres://u:secret@h/db")
            .validate("shop")
            .is_err());
        assert!(database("postgres://u@h/db?password=x")
            .validate("shop")
            .is_err());
        assert!(database("mysql://u@h/db").validate("shop").is_err());
        assert!(database("postgres://u@h/db").validate("local").is_err());
        assert!(database("").validate("shop").is_err());
        assert!(database("").validate("local").is_ok());
    }

    #[test]
    fn migrations_are_ordered_and_checked() {
        let migration = |version: i64, sql: &str| Migration {
            version,
            description: String::new(),
            sql: sql.into(),
        };
        let with = |migrations: Vec<Migration>| {
            let mut local = Database::local();
            local.migrations = migrations;
            local.validate(LOCAL_DATABASE)
        };
        let valid = with(vec![migration(2, "b"), migration(1, "a")]).unwrap();
        let versions: Vec<i64> = valid.migrations.iter().map(|m| m.version).collect();
        assert_eq!(versions, vec![1, 2]);
        assert!(with(vec![migration(1, "a"), migration(1, "b")])
            .unwrap_err()
            .0
            .contains("twice"));
        assert!(with(vec![migration(0, "a")])
            .unwrap_err()
            .0
            .contains("greater than 0"));
        assert!(with(vec![migration(1, "  ")])
            .unwrap_err()
            .0
            .contains("no SQL"));
    }
}
