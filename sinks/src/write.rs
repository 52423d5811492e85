//! Connections to the sinks' databases, what a table looks like, and the
//! batched, idempotent statements that write rows into it.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqliteSynchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use thiserror::Error;

use crate::definition::{Database, Mode, Sink};
use crate::migrate::migrate;

/// Most rows one statement writes (64 columns at most: 16 384 parameters,
/// under both databases' limits).
pub const MAX_BATCH_ROWS: usize = 256;
/// Time allowed to get a connection (a database that is down fails fast
/// and the rows wait in the outbox).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for a lock another process holds.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why rows were not written.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The database cannot take them now (down, unreachable, busy, out of
    /// connections): try again later, nothing is lost.
    #[error("{0}")]
    Unavailable(String),
    /// The database refused them (a value of the wrong type, a constraint,
    /// a table that does not match the sink): trying again cannot help.
    #[error("{0}")]
    Refused(String),
}

/// A connection pool to one database.
#[derive(Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// What a table has: its columns with their declared types, and the
/// column sets of its unique indexes (the primary key among them).
#[derive(Debug)]
struct Table {
    columns: HashMap<String, String>,
    unique: Vec<BTreeSet<String>>,
}

/// The pools of every database a sink wrote, and the tables they hold.
pub struct Databases {
    local_path: PathBuf,
    /// How long a definition's pending migrations may run.
    migration_limit: Duration,
    pools: Mutex<HashMap<String, (u64, Pool)>>,
    /// Held while a pool is opened and its migrations run, so they run
    /// once on this node (by the migration's task, so that a caller who
    /// gives up does not let a second one start beside it).
    opening: Arc<tokio::sync::Mutex<()>>,
    tables: Mutex<HashMap<(String, String), Arc<Table>>>,
}

impl Databases {
    /// `local_path` is the embedded SQLite file (created on first use);
    /// migrations that run past `migration_limit` are stopped and refused.
    pub fn new(local_path: PathBuf, migration_limit: Duration) -> Databases {
        Databases {
            local_path,
            migration_limit,
            pools: Mutex::new(HashMap::new()),
            opening: Arc::new(tokio::sync::Mutex::new(())),
            tables: Mutex::new(HashMap::new()),
        }
    }

    /// The pool of a database: `None` is the embedded one without a
    /// definition. A definition or password that changed gets a new pool
    /// (the old one closes when its last user is done); a new pool first
    /// runs the definition's migrations that have not run.
    pub async fn pool(
        &self,
        database: Option<&Database>,
        password: Option<String>,
    ) -> Result<Pool, WriteError> {
        let local = Database::local();
        let database = database.unwrap_or(&local);
        let fingerprint = fingerprint(database, &password);
        if let Some(pool) = self.known_pool(&database.name, fingerprint) {
            return Ok(pool);
        }
        let opening = self.opening.clone().lock_owned().await;
        if let Some(pool) = self.known_pool(&database.name, fingerprint) {
            return Ok(pool);
        }
        let pool = if database.is_local() {
            self.open_local()?
        } else {
            open_postgres(database, password)?
        };
        let migration = {
            let (pool, database, limit) = (pool.clone(), database.clone(), self.migration_limit);
            tokio::spawn(async move {
                let ran = migrate(&pool, &database, limit).await;
                drop(opening);
                ran
            })
        };
        migration.await.map_err(|e| {
            WriteError::Unavailable(format!("migrations of database {}: {e}", database.name))
        })??;
        self.lock_pools()
            .insert(database.name.clone(), (fingerprint, pool.clone()));
        // After the migrations: a shape read before them is stale.
        self.forget_tables(&database.name);
        Ok(pool)
    }

    fn known_pool(&self, name: &str, fingerprint: u64) -> Option<Pool> {
        match self.lock_pools().get(name) {
            Some((known, pool)) if *known == fingerprint => Some(pool.clone()),
            _ => None,
        }
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Pool)>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_local(&self) -> Result<Pool, WriteError> {
        if let Some(dir) = self.local_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| WriteError::Unavailable(format!("creating {}: {e}", dir.display())))?;
        }
        // WAL with FULL sync: a row is on disk before its outbox entry goes.
        let options = SqliteConnectOptions::new()
            .filename(&self.local_path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|connection, _| Box::pin(forbid_attach(connection)))
            .connect_lazy_with(options);
        Ok(Pool::Sqlite(pool))
    }

    /// Forget what is known of a database's tables (a sink was redefined,
    /// or a write was refused: the table may have changed).
    pub fn forget_tables(&self, database: &str) {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(name, _), _| name != database);
    }

    /// Whether a sink fits its table: the table exists, has every mapped
    /// column, a unique index over exactly the key columns, and a version
    /// column (if any) whose values compare as numbers or times.
    pub async fn check(&self, pool: &Pool, sink: &Sink) -> Result<(), WriteError> {
        self.forget_tables(&sink.database);
        let table = self.table(pool, sink).await?;
        let missing: Vec<&str> = sink
            .columns
            .keys()
            .filter(|c| !table.columns.contains_key(*c))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(WriteError::Refused(format!(
                "table {} has no column {} (it has {})",
                sink.table,
                missing.join(", "),
                sorted(table.columns.keys()).join(", ")
            )));
        }
        let key: BTreeSet<String> = sink.key.iter().cloned().collect();
        if !table.unique.contains(&key) {
            return Err(WriteError::Refused(format!(
                "table {} has no primary key or unique index over exactly ({}): rows could not be found again by their key",
                sink.table,
                sink.key.join(", ")
            )));
        }
        if let Some(version) = &sink.version_column {
            let declared = table.columns.get(version).map_or("", String::as_str);
            if !orders_versions(matches!(pool, Pool::Postgres(_)), declared) {
                return Err(WriteError::Refused(format!(
                    "version column {version} of table {} is {declared:?}: versions must compare as numbers or times (as text, \"10\" comes before \"9\"); make it an integer, numeric or timestamp column",
                    sink.table
                )));
            }
        }
        Ok(())
    }

    async fn table(&self, pool: &Pool, sink: &Sink) -> Result<Arc<Table>, WriteError> {
        let cache_key = (sink.database.clone(), sink.table.clone());
        if let Some(table) = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cache_key)
        {
            return Ok(table.clone());
        }
        let table = match pool {
            Pool::Sqlite(pool) => sqlite_table(pool, &sink.table).await,
            Pool::Postgres(pool) => postgres_table(pool, &sink.table).await,
        }
        .map_err(|e| classify(pool, e))?;
        if table.columns.is_empty() {
            return Err(WriteError::Refused(format!(
                "table {} does not exist in database {}",
                sink.table, sink.database
            )));
        }
        let table = Arc::new(table);
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cache_key, table.clone());
        Ok(table)
    }

    /// Write rows (each as [`Sink::row`] made it) in one statement: all of
    /// them or none. Rows with the same key are reduced to the one that
    /// wins (the greatest version, else the last; for inserts the first),
    /// so the result is that of writing them one by one in order.
    pub async fn write(
        &self,
        pool: &Pool,
        sink: &Sink,
        rows: &[Vec<Value>],
    ) -> Result<(), WriteError> {
        if rows.is_empty() {
            return Ok(());
        }
        let table = self.table(pool, sink).await?;
        let rows = reduce(sink, rows);
        let result = match pool {
            Pool::Sqlite(pool) => write_sqlite(pool, sink, &rows).await,
            Pool::Postgres(pool) => write_postgres(pool, sink, &table, &rows).await,
        };
        let result = result.map_err(|e| classify(pool, e));
        if matches!(result, Err(WriteError::Refused(_))) {
            self.forget_tables(&sink.database);
        }
        result
    }
}

/// What identifies a pool: a change of any of it opens a new one.
fn fingerprint(database: &Database, password: &Option<String>) -> u64 {
    let mut hasher = DefaultHasher::new();
    (
        &database.url,
        database.max_connections,
        password,
        &database.migrations,
    )
        .hash(&mut hasher);
    hasher.finish()
}

/// Migrations run on the node's own SQLite file: `ATTACH` (and `VACUUM
/// INTO`, which attaches) would let their SQL create or read any file
/// the node may, so a connection may attach nothing.
async fn forbid_attach(connection: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = connection.lock_handle().await?;
    let raw = handle.as_raw_handle().as_ptr();
    // SAFETY: `raw` is the open connection's handle, locked for this call;
    // sqlite3_limit only sets a limit on it.
    unsafe {
        libsqlite3_sys::sqlite3_limit(raw, libsqlite3_sys::SQLITE_LIMIT_ATTACHED, 0);
    }
    Ok(())
}

fn sorted<'a>(names: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    let mut names: Vec<&str> = names.map(String::as_str).collect();
    names.sort_unstable();
    names
}

fn open_postgres(database: &Database, password: Option<String>) -> Result<Pool, WriteError> {
    let mut options = PgConnectOptions::from_str(&database.url)
        .map_err(|e| WriteError::Unavailable(format!("database {}: url: {e}", database.name)))?;
    if let Some(password) = password {
        options = options.password(&password);
    }
    let pool = PgPoolOptions::new()
        .max_connections(database.max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options);
    Ok(Pool::Postgres(pool))
}

/// Whether a column of this declared type orders versions as numbers or
/// times: PostgreSQL's number, date and time types; in SQLite, a column
/// whose type affinity is not TEXT or BLOB (the rules of "Datatypes In
/// SQLite", 3.1).
fn orders_versions(postgres: bool, declared: &str) -> bool {
    if postgres {
        let declared = declared.to_ascii_lowercase();
        [
            "smallint",
            "integer",
            "bigint",
            "numeric",
            "real",
            "double precision",
            "timestamp",
            "date",
            "time",
            "interval",
        ]
        .iter()
        .any(|kind| declared.starts_with(kind))
    } else {
        let declared = declared.to_ascii_uppercase();
        declared.contains("INT")
            || !(["CHAR", "CLOB", "TEXT", "BLOB"]
                .iter()
                .any(|text| declared.contains(text))
                || declared.trim().is_empty())
    }
}

/// Whether an error is the database's refusal of these rows or a reason
/// to try again.
pub(crate) fn classify(pool: &Pool, error: sqlx::Error) -> WriteError {
    let text = error.to_string();
    let sqlx::Error::Database(database_error) = &error else {
        // Connection, TLS, pool and protocol errors: the database is not
        // there (or not usable) now.
        return WriteError::Unavailable(text);
    };
    let code = database_error
        .code()
        .map(|c| c.into_owned())
        .unwrap_or_default();
    let transient = match pool {
        // SQLSTATE classes: connection exception, invalid authorization
        // (a password being rotated), invalid catalog name (a database not
        // created yet), insufficient resources, operator intervention
        // (shutdown), system error, transaction rollback (serialization,
        // deadlock), lock not available.
        Pool::Postgres(_) => {
            ["08", "28", "3D", "53", "57", "58", "40"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
        }
        // Result codes (primary code in the low byte): BUSY, LOCKED,
        // IOERR, FULL, CANTOPEN.
        Pool::Sqlite(_) => code
            .parse::<i64>()
            .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14)),
    };
    if transient {
        WriteError::Unavailable(text)
    } else {
        WriteError::Refused(text)
    }
}

/// One row per key: for upserts the greatest version (else the last),
/// for inserts the first.
fn reduce(sink: &Sink, rows: &[Vec<Value>]) -> Vec<Vec<Value>> {
    let (key, version) = sink.positions();
    let mut order: Vec<String> = Vec::new();
    let mut kept: HashMap<String, &Vec<Value>> = HashMap::new();
    for row in rows {
        let id: Vec<&Value> = key.iter().map(|&i| &row[i]).collect();
        let id = serde_json::to_string(&id).unwrap_or_default();
        match kept.get(&id) {
            None => {
                order.push(id.clone());
                kept.insert(id, row);
            }
            Some(old) => {
                let replace = match (sink.mode, version) {
                    (Mode::Insert, _) => false,
                    (Mode::Upsert, None) => true,
                    (Mode::Upsert, Some(v)) => !newer(&old[v], &row[v]),
                };
                if replace {
                    kept.insert(id, row);
                }
            }
        }
    }
    order
        .iter()
        .filter_map(|id| kept.get(id).map(|row| (*row).clone()))
        .collect()
}

/// Whether version `a` is greater than `b` (numbers as numbers, anything
/// else as text, NULL least).
fn newer(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => {
            a.as_f64().unwrap_or(f64::MIN) > b.as_f64().unwrap_or(f64::MIN)
        }
        (Value::Null, _) => false,
        (_, Value::Null) => true,
        (Value::String(a), Value::String(b)) => a > b,
        (a, b) => {
            let (a, b) = (a.to_string(), b.to_string());
            a > b
        }
    }
}

fn quote(identifier: &str) -> String {
    format!("\"{identifier}\"")
}

fn quoted_table(table: &str) -> String {
    table.split('.').map(quote).collect::<Vec<_>>().join(".")
}

/// `INSERT ... VALUES ... ON CONFLICT ...` with the values as produced by
/// `value(row, column, parameter number)`.
fn statement(
    sink: &Sink,
    rows: usize,
    target: &str,
    alias: Option<&str>,
    value: impl Fn(usize, &str, usize) -> String,
) -> String {
    let columns: Vec<&String> = sink.columns.keys().collect();
    let names: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let mut sql = format!("INSERT INTO {}", quoted_table(&sink.table));
    if let Some(alias) = alias {
        sql.push_str(&format!(" AS {}", quote(alias)));
    }
    sql.push_str(&format!(" ({}) VALUES ", names.join(", ")));
    let mut parameter = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        let values: Vec<String> = columns
            .iter()
            .map(|column| {
                parameter += 1;
                value(row, column, parameter)
            })
            .collect();
        sql.push_str(&format!("({})", values.join(", ")));
    }
    let key: Vec<String> = sink.key.iter().map(|c| quote(c)).collect();
    sql.push_str(&format!(" ON CONFLICT ({})", key.join(", ")));
    match sink.mode {
        Mode::Insert => sql.push_str(" DO NOTHING"),
        Mode::Upsert => {
            let updates: Vec<String> = columns
                .iter()
                .filter(|c| !sink.key.contains(c))
                .map(|c| format!("{0} = excluded.{0}", quote(c)))
                .collect();
            sql.push_str(&format!(" DO UPDATE SET {}", updates.join(", ")));
            if let Some(version) = &sink.version_column {
                let v = quote(version);
                sql.push_str(&format!(
                    " WHERE {target}.{v} IS NULL OR {target}.{v} <= excluded.{v}"
                ));
            }
        }
    }
    sql
}

async fn write_sqlite(
    pool: &SqlitePool,
    sink: &Sink,
    rows: &[Vec<Value>],
) -> Result<(), sqlx::Error> {
    let table = sink.table.rsplit('.').next().unwrap_or(&sink.table);
    let sql = statement(sink, rows.len(), &quote(table), None, |_, _, n| {
        format!("?{n}")
    });
    let mut query = sqlx::query(&sql);
    for value in rows.iter().flatten() {
        query = match value {
            Value::Null => query.bind(None::<String>),
            Value::Bool(b) => query.bind(i64::from(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => query.bind(i),
                None => query.bind(n.as_f64()),
            },
            Value::String(s) => query.bind(s.clone()),
            other => query.bind(other.to_string()),
        };
    }
    query.execute(pool).await?;
    Ok(())
}

async fn write_postgres(
    pool: &PgPool,
    sink: &Sink,
    table: &Table,
    rows: &[Vec<Value>],
) -> Result<(), sqlx::Error> {
    let type_of = |column: &str| {
        table
            .columns
            .get(column)
            .map(String::as_str)
            .unwrap_or("text")
    };
    // Each value goes as text and is cast to its column's type, so any
    // type with a text form (numeric, timestamptz, uuid, jsonb, ...) works
    // and a value that is not of it is refused by the database.
    let sql = statement(
        sink,
        rows.len(),
        &quote("target"),
        Some("target"),
        |_, column, n| format!("CAST(${n}::text AS {})", type_of(column)),
    );
    let mut query = sqlx::query(&sql);
    let columns: Vec<&String> = sink.columns.keys().collect();
    for row in rows {
        for (value, column) in row.iter().zip(&columns) {
            let json_column = matches!(type_of(column), "json" | "jsonb");
            let text = match value {
                Value::Null => None,
                Value::String(s) if !json_column => Some(s.clone()),
                other => Some(other.to_string()),
            };
            query = query.bind(text);
        }
    }
    query.execute(pool).await?;
    Ok(())
}

async fn sqlite_table(pool: &SqlitePool, table: &str) -> Result<Table, sqlx::Error> {
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (schema, name),
        None => ("main", table),
    };
    let described: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, type, pk FROM pragma_table_info(?1, ?2)")
            .bind(name)
            .bind(schema)
            .fetch_all(pool)
            .await?;
    let mut primary: Vec<(i64, String)> = described
        .iter()
        .filter(|(_, _, pk)| *pk > 0)
        .map(|(column, _, pk)| (*pk, column.clone()))
        .collect();
    primary.sort();
    let mut unique: Vec<BTreeSet<String>> = Vec::new();
    if !primary.is_empty() {
        unique.push(primary.into_iter().map(|(_, c)| c).collect());
    }
    let indexes: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM pragma_index_list(?1, ?2) WHERE \"unique\" = 1 AND partial = 0",
    )
    .bind(name)
    .bind(schema)
    .fetch_all(pool)
    .await?;
    for (index,) in indexes {
        let columns: Vec<(Option<String>,)> =
            sqlx::query_as("SELECT name FROM pragma_index_info(?1, ?2)")
                .bind(&index)
                .bind(schema)
                .fetch_all(pool)
                .await?;
        // An index over an expression has a column without a name.
        if columns.iter().all(|(c,)| c.is_some()) {
            unique.push(columns.into_iter().filter_map(|(c,)| c).collect());
        }
    }
    Ok(Table {
        columns: described
            .into_iter()
            .map(|(column, declared, _)| (column, declared))
            .collect(),
        unique,
    })
}

async fn postgres_table(pool: &PgPool, table: &str) -> Result<Table, sqlx::Error> {
    let name = quoted_table(table);
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(&name)
    .fetch_all(pool)
    .await?;
    let unique: Vec<(Vec<String>,)> = sqlx::query_as(
        "SELECT array_agg(a.attname::text) FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL \
         AND NOT (0 = ANY(i.indkey)) GROUP BY i.indexrelid",
    )
    .bind(&name)
    .fetch_all(pool)
    .await?;
    Ok(Table {
        columns: columns.into_iter().collect(),
        unique: unique
            .into_iter()
            .map(|(columns,)| columns.into_iter().collect())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_version_column_must_order_as_numbers_or_times() {
        for declared in [
            "bigint",
            "integer",
            "numeric(12,2)",
            "double precision",
            "timestamp with time zone",
            "date",
        ] {
            assert!(orders_versions(true, declared), "{declared}");
        }
        for declared in ["text", "character varying(20)", "jsonb", "boolean", "uuid"] {
            assert!(!orders_versions(true, declared), "{declared}");
        }
        for declared in [
            "INTEGER", "INT", "BIGINT", "REAL", "NUMERIC", "DATETIME", "ANY",
        ] {
            assert!(orders_versions(false, declared), "{declared}");
        }
        for declared in ["TEXT", "VARCHAR(10)", "CLOB", "BLOB", ""] {
            assert!(!orders_versions(false, declared), "{declared}");
        }
    }

    fn sink(mode: Mode, version: Option<&str>) -> Sink {
        let mut sink: Sink = serde_json::from_value(json!({
            "database": "local", "table": "shop.orders", "key": ["id"],
            "columns": {"id": "/data/id", "status": "/data/status", "v": "/data/v"},
            "mode": mode,
        }))
        .unwrap();
        sink.version_column = version.map(String::from);
        sink
    }

    #[test]
    fn rows_with_one_key_are_reduced_to_the_one_that_wins() {
        let rows = vec![
            vec![json!(1), json!("paid"), json!(2)],
            vec![json!(2), json!("new"), json!(1)],
            vec![json!(1), json!("new"), json!(1)],
        ];
        let versioned = reduce(&sink(Mode::Upsert, Some("v")), &rows);
        assert_eq!(versioned, vec![rows[0].clone(), rows[1].clone()]);
        let last = reduce(&sink(Mode::Upsert, None), &rows);
        assert_eq!(last, vec![rows[2].clone(), rows[1].clone()]);
        let first = reduce(&sink(Mode::Insert, None), &rows);
        assert_eq!(first, vec![rows[0].clone(), rows[1].clone()]);
    }

    #[test]
    fn statements_quote_every_name_and_guard_the_version() {
        let sql = statement(
            &sink(Mode::Upsert, Some("v")),
            2,
            "\"target\"",
            Some("target"),
            |_, _, n| format!("${n}"),
        );
        assert_eq!(
            sql,
            "INSERT INTO \"shop\".\"orders\" AS \"target\" (\"id\", \"status\", \"v\") \
             VALUES ($1, $2, $3), ($4, $5, $6) ON CONFLICT (\"id\") DO UPDATE SET \
             \"status\" = excluded.\"status\", \"v\" = excluded.\"v\" \
             WHERE \"target\".\"v\" IS NULL OR \"target\".\"v\" <= excluded.\"v\""
        );
        let insert = statement(&sink(Mode::Insert, None), 1, "t", None, |_, _, n| {
            format!("?{n}")
        });
        assert!(
            insert.ends_with("ON CONFLICT (\"id\") DO NOTHING"),
            "{insert}"
        );
    }

    #[tokio::test]
    async fn the_embedded_database_takes_upserts_in_order_of_version() {
        let dir = std::env::temp_dir().join(format!("shoal-sinks-{}", std::process::id()));
        let databases = Databases::new(dir.join("local.sqlite"), Duration::from_secs(5));
        let pool = databases.pool(None, None).await.unwrap();
        let Pool::Sqlite(sqlite) = &pool else {
            panic!("the embedded database is SQLite")
        };
        sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, v INTEGER)")
            .execute(sqlite)
            .await
            .unwrap();
        let mut sink = sink(Mode::Upsert, Some("v"));
        sink.table = "orders".into();
        databases.check(&pool, &sink).await.unwrap();
        let write = |rows: Vec<Vec<Value>>| {
            let (databases, pool, sink) = (&databases, &pool, &sink);
            async move { databases.write(pool, sink, &rows).await }
        };
        write(vec![vec![json!(1), json!("paid"), json!(2)]])
            .await
            .unwrap();
        // An older version changes nothing; a newer one does.
        write(vec![vec![json!(1), json!("new"), json!(1)]])
            .await
            .unwrap();
        let status: (String,) = sqlx::query_as("SELECT status FROM orders WHERE id = 1")
            .fetch_one(sqlite)
            .await
            .unwrap();
        assert_eq!(status.0, "paid");
        write(vec![vec![json!(1), json!("shipped"), json!(3)]])
            .await
            .unwrap();
        let status: (String,) = sqlx::query_as("SELECT status FROM orders WHERE id = 1")
            .fetch_one(sqlite)
            .await
            .unwrap();
        assert_eq!(status.0, "shipped");
        // A table without the mapped column is refused with its name.
        sink.columns.insert("missing".into(), "/data/x".into());
        let refused = databases.check(&pool, &sink).await.unwrap_err();
        assert!(
            matches!(&refused, WriteError::Refused(m) if m.contains("no column missing")),
            "{refused:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
