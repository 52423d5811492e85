//! A database definition's migrations: run once per node when its pool
//! opens, each statement stopped past the definition's time limit.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, MigrationSource, MigrationType, Migrator};

use crate::definition::Database;
use crate::write::{classify, Pool, WriteError};

/// A database definition's migrations, as sqlx's migrator takes them.
#[derive(Debug)]
struct Defined(Vec<sqlx::migrate::Migration>);

impl MigrationSource<'static> for Defined {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<sqlx::migrate::Migration>, BoxDynError>> + Send>>
    {
        Box::pin(async move { Ok(self.0) })
    }
}

/// Run the migrations of a definition that have not run on this database,
/// on one connection, each statement stopped once `limit` has passed (an
/// endless migration must not hold the database, or this node's sinks).
pub(crate) async fn migrate(
    pool: &Pool,
    database: &Database,
    limit: Duration,
) -> Result<(), WriteError> {
    if database.migrations.is_empty() {
        return Ok(());
    }
    let migrations = database
        .migrations
        .iter()
        .map(|m| {
            sqlx::migrate::Migration::new(
                m.version,
                Cow::Owned(m.description.clone()),
                MigrationType::Simple,
                Cow::Owned(m.sql.clone()),
                false,
            )
        })
        .collect();
    let failed = |e: MigrateError| {
        let name = &database.name;
        let (error, what) = match e {
            MigrateError::Execute(e) => (e, format!("migrations of database {name}")),
            MigrateError::ExecuteMigration(e, version) if stopped(&e) => {
                return WriteError::Refused(format!(
                    "migration {version} of database {name} ran past {limit:?} and was stopped"
                ))
            }
            MigrateError::ExecuteMigration(e, version) => {
                (e, format!("migration {version} of database {name} failed"))
            }
            other => return WriteError::Refused(format!("migrations of database {name}: {other}")),
        };
        match classify(pool, error) {
            WriteError::Refused(m) => WriteError::Refused(format!("{what}: {m}")),
            unavailable => unavailable,
        }
    };
    let migrator = Migrator::new(Defined(migrations)).await.map_err(failed)?;
    let unavailable = |e: sqlx::Error| classify(pool, e);
    let ran = match pool {
        Pool::Sqlite(pool) => {
            let mut connection = pool.acquire().await.map_err(unavailable)?;
            let deadline = std::time::Instant::now() + limit;
            connection
                .lock_handle()
                .await
                .map_err(unavailable)?
                .set_progress_handler(10_000, move || std::time::Instant::now() < deadline);
            let ran = migrator.run_direct(&mut *connection).await;
            // Not back to the pool with its deadline.
            drop(connection.detach());
            ran
        }
        Pool::Postgres(pool) => {
            let mut connection = pool.acquire().await.map_err(unavailable)?;
            sqlx::query(&format!("SET statement_timeout = {}", limit.as_millis()))
                .execute(&mut *connection)
                .await
                .map_err(unavailable)?;
            let ran = migrator.run_direct(&mut *connection).await;
            // Not back to the pool with the session's timeout.
            drop(connection.detach());
            ran
        }
    };
    ran.map_err(failed)
}

/// Whether a statement was stopped for running too long: SQLite's
/// interrupt (the progress handler's), PostgreSQL's statement_timeout.
fn stopped(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database_error) = error else {
        return false;
    };
    let code = database_error.code().unwrap_or_default();
    code == "57014" || code.parse::<i64>().is_ok_and(|c| c & 0xff == 9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::Databases;

    #[tokio::test]
    async fn a_migration_past_its_limit_is_stopped_and_frees_the_database() {
        let dir = std::env::temp_dir().join(format!("shoal-sinks-endless-{}", std::process::id()));
        let databases = Databases::new(dir.join("local.sqlite"), Duration::from_millis(300));
        let mut local = Database::local();
        local.migrations = vec![crate::definition::Migration {
            version: 1,
            description: "endless".into(),
            sql: "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                  SELECT count(*) FROM c"
                .into(),
        }];
        let Err(error) = databases.pool(Some(&local), None).await else {
            panic!("an endless migration finished");
        };
        assert!(
            matches!(&error, WriteError::Refused(m) if m.contains("ran past")),
            "{error:?}"
        );
        // Nothing of it stayed: the same version with other SQL runs.
        local.migrations[0].sql = "CREATE TABLE t (id INTEGER PRIMARY KEY)".into();
        databases.pool(Some(&local), None).await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_migration_its_caller_gave_up_on_runs_once_and_alone() {
        let dir = std::env::temp_dir().join(format!("shoal-sinks-given-up-{}", std::process::id()));
        let databases = Databases::new(dir.join("local.sqlite"), Duration::from_secs(60));
        let mut local = Database::local();
        local.migrations = vec![crate::definition::Migration {
            version: 1,
            description: "slow".into(),
            sql: "CREATE TABLE big AS WITH RECURSIVE c(x) AS \
                  (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 40000000) SELECT x FROM c"
                .into(),
        }];
        // The caller (a PUT cut off by its request timeout) gives up while
        // the statement runs.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            databases.pool(Some(&local), None),
        )
        .await;
        assert!(
            gave_up.is_err(),
            "the migration was meant to outlast its caller"
        );
        // A retry neither runs it beside the first nor fails for it (the
        // statement runs longer than SQLite waits for a lock).
        let pool = databases.pool(Some(&local), None).await.unwrap();
        let Pool::Sqlite(sqlite) = &pool else {
            panic!("the embedded database is SQLite")
        };
        let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM big")
            .fetch_one(sqlite)
            .await
            .unwrap();
        assert_eq!(rows.0, 40_000_000);
        let _ = std::fs::remove_dir_all(dir);
    }
}
