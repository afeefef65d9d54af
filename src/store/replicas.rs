//! Replica leases: every `serve` renews one; a lease not renewed for
//! `server::REPLICA_LEASE` marks a replica taken for dead.

use super::{Store, StoreError};

impl Store {
    /// Takes or renews `name`'s lease, naming the audit key it signs with; `started`: this
    /// process's start, on its first renewal (a replica killed earlier under the same name
    /// is replaced).
    pub async fn heartbeat_replica(
        &self,
        name: &str,
        now: i64,
        started: Option<i64>,
        audit_key: &str,
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        let sql = if started.is_some() {
            "INSERT INTO replicas (name, started_ms, heartbeat_ms, audit_key) VALUES ($1, $3, $2, $4)
             ON CONFLICT (name) DO UPDATE SET started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms, audit_key = excluded.audit_key"
        } else {
            "INSERT INTO replicas (name, started_ms, heartbeat_ms, audit_key) VALUES ($1, $3, $2, $4)
             ON CONFLICT (name) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms, audit_key = excluded.audit_key"
        };
        sqlx::query(sql)
            .bind(name)
            .bind(now)
            .bind(started.unwrap_or(now))
            .bind(audit_key)
            .execute(&mut *pool.acquire().await?)
            .await?;
        Ok(())
    }

    /// Replicas holding a lease renewed since `alive_since` that sign with the audit key
    /// `fingerprint`, or have not said which key they sign with.
    pub async fn replicas_signing_with(
        &self,
        fingerprint: &str,
        alive_since: i64,
    ) -> Result<Vec<String>, StoreError> {
        let pool = &self.pool;
        let rows = sqlx::query(
            "SELECT name FROM replicas WHERE (audit_key = $1 OR audit_key IS NULL) AND heartbeat_ms >= $2 ORDER BY name",
        )
        .bind(fingerprint)
        .bind(alive_since)
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
        rows.iter()
            .map(|r| sqlx::Row::try_get(r, "name").map_err(StoreError::from))
            .collect()
    }

    /// Gives up `name`'s lease (a clean stop: its sessions have ended).
    pub async fn remove_replica(&self, name: &str) -> Result<(), StoreError> {
        let pool = &self.pool;
        sqlx::query("DELETE FROM replicas WHERE name = $1")
            .bind(name)
            .execute(&mut *pool.acquire().await?)
            .await?;
        Ok(())
    }
}
