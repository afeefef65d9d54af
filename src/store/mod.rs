//! The store: the only module that runs SQL.
//!
//! Callers see [`Store`] and domain types only. The backend is embedded SQLite
//! (WAL, so admin commands and a running `serve` share one data dir safely), or a
//! PostgreSQL database shared by several replicas (`[store] url`), each with its own
//! migrations. Callers cannot tell them apart; see [`open`] for how the SQL is shared.

mod audit;
mod cancel;
mod commands;
mod credentials;
pub mod error;
mod export;
mod keys;
mod migrate;
mod mirror;
mod open;
mod policy;
mod replicas;
mod requests;
mod reviews;
mod sessions;
mod throttle;
mod walk;
mod writer;

use std::path::{Path, PathBuf};

use sqlx::AnyPool;

pub use audit::{AuditFilter, ChainedEvent, Checkpoint};
pub use cancel::SharedCancel;
pub use credentials::{ApiToken, BotToken, DbToken, IssuedCert};
pub use error::StoreError;
pub use export::ExportFormat;
pub use migrate::{Copied, MigrateError};
pub use open::{Dialect, begin_write, redacted};
pub use replicas::{LeaseKey, LeaseKeys};
pub use requests::{NewRequest, RequestError, RequestFilter};
pub use reviews::{Campaign, NewCampaign, ReviewItem, review_csv};
pub use sessions::{RecordingRow, SessionEnd, SessionFilter, SessionRow};
pub use throttle::FailureKey;

use crate::audit::chain::Signer;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::policy::{self as policy_model, Change, Policy, PolicyError, diff};
use std::sync::Arc;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    audit: writer::AuditQueue,
}

/// A store opened and brought up to date whose audit writer has not started yet.
pub struct Opened {
    pool: AnyPool,
}

impl Opened {
    /// Starts the audit writer (signing checkpoints with `signer`): the store is ready.
    pub fn start(self, signer: Option<Arc<Signer>>) -> Store {
        let audit = writer::AuditQueue::start(self.pool.clone(), signer);
        Store {
            pool: self.pool,
            audit,
        }
    }

    pub fn dialect(&self) -> Dialect {
        Dialect::of(&self.pool)
    }
}

pub fn sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("postern.db")
}

impl Store {
    /// Opens the store `url` names (PostgreSQL), or the embedded one in `data_dir` when
    /// `url` is empty, and brings its schema up to date.
    pub async fn open(
        data_dir: &Path,
        url: &str,
        signer: Option<Arc<Signer>>,
    ) -> Result<Store, StoreError> {
        Ok(Self::connect(data_dir, url).await?.start(signer))
    }

    /// Opens (creating if needed) the embedded store in `data_dir` and brings its schema up to date.
    pub async fn open_sqlite(
        data_dir: &Path,
        signer: Option<Arc<Signer>>,
    ) -> Result<Store, StoreError> {
        Self::open(data_dir, "", signer).await
    }

    /// As `open`, stopping before the audit writer starts: keys can be shared through the
    /// store (`Opened::share_keys`) before the audit key that signs is loaded.
    pub async fn connect(data_dir: &Path, url: &str) -> Result<Opened, StoreError> {
        if !url.is_empty() {
            let pool = open::postgres(url).await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            return Ok(Opened { pool });
        }
        let path = sqlite_path(data_dir);
        if !path.exists() {
            // Created 0600 before SQLite touches it; its -wal and -shm files inherit the mode.
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            if let Err(e) = created
                && e.kind() != std::io::ErrorKind::AlreadyExists
            {
                return Err(error::open_failed(&path, sqlx::Error::Io(e)));
            }
        }
        let pool = open::sqlite(&path).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Opened { pool })
    }

    /// Which engine holds the store.
    pub fn dialect(&self) -> Dialect {
        Dialect::of(&self.pool)
    }

    /// The policy as decisions see it now: with the grants of approved requests running.
    pub async fn load_policy(&self) -> Result<Policy, StoreError> {
        self.load_policy_at(crate::audit::now_ms()).await
    }

    /// Changes the policy in one serialised transaction: `edit` gets the current policy
    /// and returns the desired one; the difference is validated, written together with
    /// one audit event per change, and returned. With `dry_run` nothing is written.
    pub async fn update_policy<F>(
        &self,
        actor: &Actor,
        dry_run: bool,
        edit: F,
    ) -> Result<Vec<Change>, StoreError>
    where
        F: FnOnce(&Policy) -> Result<Policy, PolicyError>,
    {
        let pool = &self.pool;
        // IMMEDIATE takes the write lock first, so two admins cannot interleave.
        let mut tx = crate::store::begin_write(pool).await?;
        let changes = edit_policy(&mut tx, actor, dry_run, edit).await?;
        if dry_run || changes.is_empty() {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(changes)
    }

    /// Appends an event to the chain; returns once it is durable. Concurrent callers
    /// share one transaction (group commit).
    pub async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.append_audit_all(std::slice::from_ref(event)).await
    }

    /// Appends `events` in this order through the group commit, waiting for all of them.
    pub async fn append_audit_all(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let r = self.audit.append_all(events.to_vec()).await;
        match &r {
            Ok(()) => events.iter().for_each(crate::metrics::observe),
            Err(_) => crate::metrics::store_error("audit_append"),
        }
        r
    }

    /// Appends many events in one transaction, in order.
    pub async fn append_audit_batch(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let pool = &self.pool;
        let written: Result<(), StoreError> = async {
            let mut tx = crate::store::begin_write(pool).await?;
            audit::insert_chained(&mut tx, &events).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        match written {
            Ok(()) => events.iter().for_each(crate::metrics::observe),
            Err(_) => crate::metrics::store_error("audit_append"),
        }
        written
    }

    /// Signs the current head of the audit chain (if it is not signed yet).
    /// A head the log must still hold before this process signs anything newer (the last
    /// one a witness outside the data dir recorded).
    pub async fn audit_expect(&self, seq: i64, hash: String) {
        self.audit.expect(seq, hash).await
    }

    pub async fn audit_checkpoint(&self) -> Result<(), StoreError> {
        self.audit.checkpoint().await
    }

    /// Events in chain order after `after_seq` (at most `limit`), for verify and export.
    pub async fn audit_page(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        let pool = &self.pool;
        audit::page(&mut *pool.acquire().await?, after_seq, limit).await
    }

    /// Whether a change could be written now: takes the write lock and lets it go, writing
    /// nothing (readiness probes).
    pub async fn writable(&self) -> Result<(), StoreError> {
        let pool = &self.pool;
        let tx = crate::store::begin_write(pool).await?;
        tx.rollback().await?;
        Ok(())
    }

    /// The sequence number of the newest event (0 when there is none).
    pub async fn audit_head_seq(&self) -> Result<i64, StoreError> {
        let pool = &self.pool;
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS m FROM audit_events")
            .fetch_one(&mut *pool.acquire().await?)
            .await?;
        Ok(sqlx::Row::try_get(&row, "m")?)
    }

    pub async fn audit_checkpoints(
        &self,
        after_seq: i64,
        upto_seq: i64,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let pool = &self.pool;
        audit::checkpoints_in(&mut *pool.acquire().await?, after_seq, upto_seq).await
    }

    /// The newest signed checkpoint (the signed head after `audit_checkpoint`).
    pub async fn audit_last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let pool = &self.pool;
        audit::last_checkpoint(&mut *pool.acquire().await?).await
    }

    pub async fn audit_anchor(&self) -> Result<Option<Checkpoint>, StoreError> {
        let pool = &self.pool;
        audit::anchor(&mut *pool.acquire().await?).await
    }

    /// Removes events older than `before_ms`, keeping a signed anchor; returns how many.
    pub async fn prune_audit(&self, before_ms: i64, signer: &Signer) -> Result<u64, StoreError> {
        let pool = &self.pool;
        let mut tx = crate::store::begin_write(pool).await?;
        let n = audit::prune(&mut tx, before_ms, signer).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub async fn search_audit(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        audit::search(&mut conn, filter).await
    }

    /// The session's row, and the rows of the recordings it lists, in one transaction.
    pub async fn start_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        let r = async {
            let mut tx = self.pool.begin().await?;
            sessions::insert(&mut tx, s).await?;
            for rec in &s.recordings {
                let channel = u32::try_from(rec.channel).unwrap_or_default();
                sessions::add_recording(&mut tx, &s.id, channel, &rec.path).await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        if r.is_err() {
            crate::metrics::store_error("session_start");
        }
        r
    }

    pub async fn end_session(&self, id: &str, end: &SessionEnd) -> Result<(), StoreError> {
        let r = async {
            sessions::end(
                &mut *self.pool.acquire().await?,
                id,
                crate::audit::now_ms(),
                end,
            )
            .await
        }
        .await;
        if r.is_err() {
            crate::metrics::store_error("session_end");
        }
        r
    }

    pub async fn add_recording(
        &self,
        session: &str,
        channel: u32,
        path: &str,
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        sessions::add_recording(&mut *pool.acquire().await?, session, channel, path).await
    }

    pub async fn finish_recording(
        &self,
        session: &str,
        channel: u32,
        sha256: &str,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        sessions::finish_recording(&mut *pool.acquire().await?, session, channel, sha256, bytes)
            .await
    }

    /// Stores a user's password hash (PHC string); false when the user does not exist.
    pub async fn set_password_hash(&self, user: &str, hash: &str) -> Result<bool, StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        if !user_exists(&mut conn, user).await? {
            return Ok(false);
        }
        sqlx::query("INSERT INTO user_passwords (user_name, hash, updated_ms) VALUES ($1, $2, $3) ON CONFLICT (user_name) DO UPDATE SET hash = excluded.hash, updated_ms = excluded.updated_ms")
            .bind(user)
            .bind(hash)
            .bind(crate::audit::now_ms())
            .execute(&mut *conn)
            .await?;
        Ok(true)
    }

    pub async fn password_hash(&self, user: &str) -> Result<Option<String>, StoreError> {
        let pool = &self.pool;
        let row = sqlx::query("SELECT hash FROM user_passwords WHERE user_name = $1")
            .bind(user)
            .fetch_optional(&mut *pool.acquire().await?)
            .await?;
        Ok(row.map(|r| sqlx::Row::try_get(&r, "hash")).transpose()?)
    }

    /// Revokes a user certificate serial (idempotent); true when it was not revoked yet.
    pub async fn revoke_serial(
        &self,
        serial: u64,
        actor: &Actor,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let pool = &self.pool;
        let done = sqlx::query(
            "INSERT INTO revoked_certificates (serial, revoked_ms, actor, reason) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(serial.to_string())
        .bind(crate::audit::now_ms())
        .bind(&actor.0)
        .bind(reason)
        .execute(&mut *pool.acquire().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn is_revoked(&self, serial: u64) -> Result<bool, StoreError> {
        let pool = &self.pool;
        Ok(
            sqlx::query("SELECT 1 FROM revoked_certificates WHERE serial = $1")
                .bind(serial.to_string())
                .fetch_optional(&mut *pool.acquire().await?)
                .await?
                .is_some(),
        )
    }

    /// Every revoked serial (a small table: revocations are rare and certificates short).
    pub async fn revoked_serials(&self) -> Result<std::collections::HashSet<u64>, StoreError> {
        let pool = &self.pool;
        let rows = sqlx::query("SELECT serial FROM revoked_certificates")
            .fetch_all(&mut *pool.acquire().await?)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| sqlx::Row::try_get::<String, _>(r, "serial").ok())
            .filter_map(|s| s.parse().ok())
            .collect())
    }

    /// Closes sessions a crashed process left open (single node: every open session).
    /// Closes the sessions of replicas that died (see `sessions::close_orphans`).
    pub async fn close_orphan_sessions(
        &self,
        reason: &str,
        me: &str,
        at_start: bool,
        expired_before: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let pool = &self.pool;
        sessions::close_orphans(
            &mut *pool.acquire().await?,
            reason,
            me,
            at_start,
            expired_before,
        )
        .await
    }

    /// Claims the notification of audit event `seq` for `replica`: true for the first
    /// claimant only, so replicas following the same log announce each event once.
    pub async fn claim_notification(&self, seq: i64, replica: &str) -> Result<bool, StoreError> {
        let pool = &self.pool;
        let done = sqlx::query(
            "INSERT INTO notify_claims (seq, replica, claimed_ms) VALUES ($1, $2, $3) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(seq)
        .bind(replica)
        .bind(crate::audit::now_ms())
        .execute(&mut *pool.acquire().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn list_sessions(&self, f: &SessionFilter) -> Result<Vec<SessionRow>, StoreError> {
        let pool = &self.pool;
        sessions::list(&mut *pool.acquire().await?, f).await
    }

    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let pool = &self.pool;
        sessions::get(&mut *pool.acquire().await?, id).await
    }

    /// Waits for outstanding writes, signs the audit head and closes the store.
    pub async fn close(&self) {
        let _ = self.audit.checkpoint().await;
        let pool = &self.pool;
        pool.close().await
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Inside a transaction that holds the write lock: reads the policy, applies `edit`,
/// validates the result and (unless `dry_run`) writes the difference with one audit event
/// per change. The caller commits.
async fn edit_policy<F>(
    tx: &mut sqlx::AnyConnection,
    actor: &Actor,
    dry_run: bool,
    edit: F,
) -> Result<Vec<Change>, StoreError>
where
    F: FnOnce(&Policy) -> Result<Policy, PolicyError>,
{
    let current = policy::load(tx).await?;
    let desired = edit(&current)?;
    desired.validate()?;
    let changes = diff(&current, &desired);
    if dry_run || changes.is_empty() {
        return Ok(changes);
    }
    policy::write(tx, &changes).await?;
    let mut events: Vec<AuditEvent> = changes
        .iter()
        .map(|c| {
            AuditEvent::new(c.event_type(), actor, Outcome::Success, c.details())
                .with_target(format!("{}:{}", c.entity().kind(), c.entity().name()))
        })
        .collect();
    // A removed user's or role's open requests and running grants end with it, so a user
    // or role made later under the same name inherits nothing.
    for c in &changes {
        if let Change::Delete(e) = c {
            let (user, role) = match e {
                policy_model::Entity::User(u) => (Some(u.name.as_str()), None),
                policy_model::Entity::Role(r) => (None, Some(r.name.as_str())),
                policy_model::Entity::Target(_) => continue,
            };
            events.extend(requests::close_removed(tx, actor, user, role).await?);
        }
    }
    audit::insert_chained(tx, &events).await?;
    Ok(changes)
}

async fn user_exists(conn: &mut sqlx::AnyConnection, user: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT 1 FROM users WHERE name = $1")
        .bind(user)
        .fetch_optional(conn)
        .await?
        .is_some())
}
