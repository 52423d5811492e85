//! PostgreSQL for the SQL sink tests: a server of the test's own (from
//! `shoal_testkit`) and a client pool to look at its tables.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub use shoal_testkit::{Postgres, PG_PASSWORD as PASSWORD};

/// Starts a server, panicking with the reason if it cannot.
pub async fn start() -> Postgres {
    Postgres::start()
        .await
        .unwrap_or_else(|e| panic!("starting PostgreSQL: {e:#}"))
}

/// A client pool, for the test's own statements.
pub async fn client(postgres: &Postgres) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&postgres.client_url())
        .await
        .unwrap_or_else(|e| panic!("connecting to PostgreSQL: {e}\n{}", postgres.log_tail()))
}
