//! Opening the store on one of its two backends, and the few places where their SQL differs.
//!
//! Both backends are reached through sqlx's `Any` driver, so every statement in this module
//! tree is written once, in SQL both engines accept: `$N` placeholders, `ON CONFLICT`,
//! `RETURNING`, `IS NOT DISTINCT FROM`. What cannot be shared is chosen by [`Dialect`]:
//! how a write transaction takes the store-wide write lock, and a string search.

use std::path::Path;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};

use super::StoreError;
use super::error;

/// The engine behind a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of(pool: &AnyPool) -> Dialect {
        match pool.connect_options().database_url.scheme() {
            "sqlite" => Dialect::Sqlite,
            _ => Dialect::Postgres,
        }
    }

    pub fn of_conn(conn: &sqlx::AnyConnection) -> Dialect {
        match conn.backend_name() {
            "SQLite" => Dialect::Sqlite,
            _ => Dialect::Postgres,
        }
    }

    /// `sqlite` on the embedded store, `postgres` on PostgreSQL.
    pub fn pick(self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }
}

/// The advisory lock every PostgreSQL write transaction takes first: writers run one at a
/// time, as they do on SQLite (`BEGIN IMMEDIATE`), so the audit chain has one order and a
/// read-check-write inside a transaction sees every earlier commit.
const WRITE_LOCK: i64 = 0x706f_7374_6572;

/// A transaction that holds the store-wide write lock from its first statement.
pub async fn begin_write(pool: &AnyPool) -> Result<Transaction<'static, Any>, StoreError> {
    match Dialect::of(pool) {
        Dialect::Sqlite => Ok(pool.begin_with("BEGIN IMMEDIATE").await?),
        Dialect::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        }
    }
}

fn drivers() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(sqlx::any::install_default_drivers);
}

/// The embedded store: `path` (created 0600 by the caller), WAL, every commit synced.
pub async fn sqlite(path: &Path) -> Result<AnyPool, StoreError> {
    drivers();
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let opts = AnyConnectOptions::from_str(&url).map_err(|e| error::open_failed(path, e))?;
    // WAL is a property of the file: switch it once, before the pool opens more connections.
    let failed = |e| error::open_failed(path, e);
    let mut first = <sqlx::AnyConnection as sqlx::Connection>::connect_with(&opts)
        .await
        .map_err(failed)?;
    first
        .execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL")
        .await
        .map_err(failed)?;
    let _ = sqlx::Connection::close(first).await;
    AnyPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // Every acknowledged change is on disk before the call returns.
                conn.execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON",
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(|e| error::open_failed(path, e))
}

/// A PostgreSQL store at `url` (`postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=verify-full&sslrootcert=CA`).
pub async fn postgres(url: &str) -> Result<AnyPool, StoreError> {
    drivers();
    let shown = redacted(url);
    let opts = AnyConnectOptions::from_str(url).map_err(|e| StoreError::Open {
        path: shown.clone(),
        why: e.to_string(),
        advice: "give store.url (or POSTERN_STORE_URL) as postgres://USER:PASSWORD@HOST:PORT/DATABASE",
    })?;
    if !matches!(opts.database_url.scheme(), "postgres" | "postgresql") {
        return Err(StoreError::Open {
            path: shown,
            why: "it is not a postgres:// URL".into(),
            advice: "leave store.url empty for the embedded store in the data dir, or give postgres://USER:PASSWORD@HOST:PORT/DATABASE",
        });
    }
    AnyPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| {
            Box::pin(async move {
                // A writer waits for the write lock at most this long, like SQLite's busy
                // timeout; the server's notices ("already exists, skipping") stay out of the log.
                conn.execute("SET lock_timeout = '10s'; SET client_min_messages = warning")
                    .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(|e| StoreError::Open {
            path: shown,
            why: match e.as_database_error() {
                Some(d) => d.message().to_string(),
                None => e.to_string(),
            },
            advice: "check that the PostgreSQL server is up, the URL's user, password and database are right, and (with sslmode=verify-full) that sslrootcert names the CA that signed its certificate",
        })
}

/// `url` without its password, for messages.
pub fn redacted(url: &str) -> String {
    match AnyConnectOptions::from_str(url) {
        Ok(mut o) => {
            if o.database_url.password().is_some() {
                let _ = o.database_url.set_password(Some("***"));
            }
            o.database_url.to_string()
        }
        Err(_) => "(a store URL that does not parse)".into(),
    }
}
