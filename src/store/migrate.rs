//! Copying a whole store to an empty one on another backend (`postern store migrate`):
//! every table that holds state, row for row, in one transaction on the destination.
//! What only describes running processes (replica leases, claims, cancel keys, login
//! failure counts) is not copied: the destination's replicas make their own.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Opened, Store, StoreError, begin_write};

/// A column's type on both backends.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
    Blob,
}
use Kind::{Blob, Int, Text};

/// The tables copied, parents before children, each with its columns (all of them).
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "users",
        &[
            ("name", Text),
            ("status", Text),
            ("created_ms", Int),
            ("updated_ms", Int),
            ("kind", Text),
        ],
    ),
    (
        "roles",
        &[
            ("name", Text),
            ("spec", Text),
            ("created_ms", Int),
            ("updated_ms", Int),
        ],
    ),
    (
        "user_keys",
        &[
            ("fingerprint", Text),
            ("user_name", Text),
            ("public_key", Text),
            ("comment", Text),
            ("position", Int),
        ],
    ),
    (
        "user_roles",
        &[
            ("user_name", Text),
            ("role_name", Text),
            ("granted_ms", Int),
        ],
    ),
    (
        "targets",
        &[
            ("name", Text),
            ("kind", Text),
            ("address", Text),
            ("spec", Text),
            ("created_ms", Int),
            ("updated_ms", Int),
        ],
    ),
    (
        "sessions",
        &[
            ("id", Text),
            ("kind", Text),
            ("user_name", Text),
            ("target_name", Text),
            ("login", Text),
            ("client_addr", Text),
            ("started_ms", Int),
            ("ended_ms", Int),
            ("end_reason", Text),
            ("bytes_in", Int),
            ("bytes_out", Int),
            ("exit_status", Int),
            ("cert_serial", Int),
            ("roles", Text),
            ("replica", Text),
        ],
    ),
    (
        "recordings",
        &[
            ("session_id", Text),
            ("channel", Int),
            ("path", Text),
            ("sha256", Text),
            ("bytes", Int),
        ],
    ),
    (
        "audit_events",
        &[
            ("seq", Int),
            ("id", Text),
            ("time_ms", Int),
            ("type", Text),
            ("actor", Text),
            ("source", Text),
            ("target", Text),
            ("session_id", Text),
            ("result", Text),
            ("details", Text),
            ("prev_hash", Text),
            ("hash", Text),
        ],
    ),
    (
        "audit_checkpoints",
        &[
            ("seq", Int),
            ("hash", Text),
            ("time_ms", Int),
            ("signature", Text),
        ],
    ),
    (
        "audit_anchor",
        &[
            ("id", Int),
            ("seq", Int),
            ("hash", Text),
            ("time_ms", Int),
            ("signature", Text),
        ],
    ),
    (
        "session_commands",
        &[
            ("seq", Int),
            ("session_id", Text),
            ("command", Text),
            ("actor", Text),
            ("requested_ms", Int),
        ],
    ),
    (
        "revoked_certificates",
        &[
            ("serial", Text),
            ("revoked_ms", Int),
            ("actor", Text),
            ("reason", Text),
        ],
    ),
    (
        "user_passwords",
        &[("user_name", Text), ("hash", Text), ("updated_ms", Int)],
    ),
    (
        "user_certificates",
        &[
            ("serial", Text),
            ("user_name", Text),
            ("key_fingerprint", Text),
            ("valid_before", Int),
            ("issued_ms", Int),
            ("source", Text),
        ],
    ),
    (
        "user_totp",
        &[
            ("user_name", Text),
            ("sealed", Text),
            ("last_step", Int),
            ("enrolled_ms", Int),
        ],
    ),
    (
        "api_tokens",
        &[
            ("token_hash", Text),
            ("user_name", Text),
            ("cert_serial", Text),
            ("expires_ms", Int),
        ],
    ),
    (
        "db_tokens",
        &[
            ("token_hash", Text),
            ("user_name", Text),
            ("target", Text),
            ("database", Text),
            ("db_user", Text),
            ("issued_ms", Int),
            ("expires_ms", Int),
            ("cert_serial", Text),
            ("scram_stored_key", Blob),
            ("scram_server_key", Blob),
        ],
    ),
    (
        "target_credentials",
        &[
            ("target", Text),
            ("db_user", Text),
            ("sealed", Text),
            ("updated_ms", Int),
        ],
    ),
    (
        "access_requests",
        &[
            ("id", Int),
            ("user_name", Text),
            ("role_name", Text),
            ("target", Text),
            ("reason", Text),
            ("ttl_secs", Int),
            ("state", Text),
            ("created_ms", Int),
            ("pending_until_ms", Int),
            ("approvals_required", Int),
            ("decided_by", Text),
            ("decided_ms", Int),
            ("decision_reason", Text),
            ("grant_until_ms", Int),
            ("expiring_noted", Int),
        ],
    ),
    (
        "request_approvals",
        &[
            ("request_id", Int),
            ("reviewer", Text),
            ("reason", Text),
            ("at_ms", Int),
        ],
    ),
    (
        "bot_tokens",
        &[
            ("user_name", Text),
            ("token_hash", Text),
            ("credential_ttl_secs", Int),
            ("created_ms", Int),
        ],
    ),
    (
        "review_campaigns",
        &[
            ("id", Int),
            ("name", Text),
            ("scope", Text),
            ("created_ms", Int),
            ("created_by", Text),
            ("due_ms", Int),
            ("on_due", Text),
            ("closed_ms", Int),
        ],
    ),
    (
        "review_items",
        &[
            ("id", Int),
            ("campaign_id", Int),
            ("user_name", Text),
            ("role_name", Text),
            ("granted_ms", Int),
            ("last_used_ms", Int),
            ("stale", Int),
            ("decision", Text),
            ("reviewer", Text),
            ("decided_ms", Int),
            ("reason", Text),
        ],
    ),
];

/// Identity columns on PostgreSQL whose sequences must continue after the copied rows.
const IDENTITIES: &[(&str, &str)] = &[
    ("session_commands", "seq"),
    ("access_requests", "id"),
    ("review_campaigns", "id"),
    ("review_items", "id"),
];

/// Rows read and written per statement.
const PAGE: i64 = 500;

/// Why a migration did not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the destination store is not empty (table `{0}` has rows); migrate into a new, empty database"
    )]
    NotEmpty(&'static str),
    #[error("a `serve` holds a lease on the source store ({0}); stop every replica first")]
    Running(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for MigrateError {
    fn from(e: sqlx::Error) -> Self {
        MigrateError::Store(e.into())
    }
}

/// Rows copied per table.
pub type Copied = Vec<(&'static str, u64)>;

impl Store {
    /// Copies every table that holds state from this embedded store into `dest`, which
    /// must be empty, in one transaction there. The caller verifies the audit chain on
    /// `dest` afterwards.
    pub async fn copy_into(&self, dest: &Opened) -> Result<Copied, MigrateError> {
        let live: Vec<String> = sqlx::query_scalar("SELECT name FROM replicas")
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        if let Some(r) = live.first() {
            return Err(MigrateError::Running(r.clone()));
        }
        let mut tx = begin_write(&dest.pool).await?;
        for (table, _) in TABLES {
            let sql = format!("SELECT 1 FROM {table} LIMIT 1");
            let any: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_optional(&mut *tx)
                .await?;
            if any.is_some() {
                return Err(MigrateError::NotEmpty(table));
            }
        }
        let mut copied = Vec::with_capacity(TABLES.len());
        let mut src = self.pool.acquire().await?;
        for (table, columns) in TABLES {
            let n = copy_table(&mut src, &mut tx, table, columns).await?;
            copied.push((*table, n));
        }
        if dest.dialect() == super::Dialect::Postgres {
            for (table, column) in IDENTITIES {
                let sql = format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(copied)
    }
}

async fn copy_table(
    src: &mut AnyConnection,
    dest: &mut AnyConnection,
    table: &str,
    columns: &[(&str, Kind)],
) -> Result<u64, MigrateError> {
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    let list = names.join(", ");
    // Pages by SQLite's rowid (the source is always the embedded store): linear in the
    // table's size, however large the audit log.
    let select = format!(
        "SELECT rowid AS postern_rowid, {list} FROM {table} WHERE rowid > $1 ORDER BY rowid LIMIT $2"
    );
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let insert = format!(
        "INSERT INTO {table} ({list}) VALUES ({})",
        placeholders.join(", ")
    );
    let mut done: u64 = 0;
    let mut after: i64 = i64::MIN;
    loop {
        let rows: Vec<AnyRow> = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
            .bind(after)
            .bind(PAGE)
            .fetch_all(&mut *src)
            .await?;
        if rows.is_empty() {
            return Ok(done);
        }
        for row in &rows {
            after = row.try_get("postern_rowid")?;
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
            for (i, (_, kind)) in columns.iter().enumerate() {
                let i = i + 1;
                q = match kind {
                    Int => q.bind(row.try_get::<Option<i64>, _>(i)?),
                    Text => q.bind(row.try_get::<Option<String>, _>(i)?),
                    Blob => q.bind(row.try_get::<Option<Vec<u8>>, _>(i)?),
                };
            }
            q.execute(&mut *dest).await?;
            done += 1;
        }
    }
}
