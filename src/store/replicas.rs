//! Replica leases: every `serve` renews one; a lease not renewed for
//! `server::REPLICA_LEASE` marks a replica taken for dead.

use super::{Store, StoreError};

/// The keys a replica's lease names (SHA-256 fingerprints), so a key is retired only once
/// no live replica uses it.
pub struct LeaseKeys<'a> {
    /// The audit key it signs with.
    pub audit: &'a str,
    /// The SSH host key it offers in key exchange.
    pub host: &'a str,
}

/// Which of a lease's keys.
#[derive(Clone, Copy)]
pub enum LeaseKey {
    Audit,
    Host,
}

impl Store {
    /// Takes or renews `name`'s lease, naming the keys it uses; `started`: this process's
    /// start, on its first renewal (a replica killed earlier under the same name is
    /// replaced).
    pub async fn heartbeat_replica(
        &self,
        name: &str,
        now: i64,
        started: Option<i64>,
        keys: &LeaseKeys<'_>,
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        let sql = if started.is_some() {
            "INSERT INTO replicas (name, started_ms, heartbeat_ms, audit_key, host_key) VALUES ($1, $3, $2, $4, $5)
             ON CONFLICT (name) DO UPDATE SET started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms, audit_key = excluded.audit_key, host_key = excluded.host_key"
        } else {
            "INSERT INTO replicas (name, started_ms, heartbeat_ms, audit_key, host_key) VALUES ($1, $3, $2, $4, $5)
             ON CONFLICT (name) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms, audit_key = excluded.audit_key, host_key = excluded.host_key"
        };
        sqlx::query(sql)
            .bind(name)
            .bind(now)
            .bind(started.unwrap_or(now))
            .bind(keys.audit)
            .bind(keys.host)
            .execute(&mut *pool.acquire().await?)
            .await?;
        Ok(())
    }

    /// Replicas holding a lease renewed since `alive_since` that use the key
    /// `fingerprint` as `key`, or have not said which key they use.
    pub async fn replicas_using(
        &self,
        key: LeaseKey,
        fingerprint: &str,
        alive_since: i64,
    ) -> Result<Vec<String>, StoreError> {
        let sql = match key {
            LeaseKey::Audit => {
                "SELECT name FROM replicas WHERE (audit_key = $1 OR audit_key IS NULL) AND heartbeat_ms >= $2 ORDER BY name"
            }
            LeaseKey::Host => {
                "SELECT name FROM replicas WHERE (host_key = $1 OR host_key IS NULL) AND heartbeat_ms >= $2 ORDER BY name"
            }
        };
        let pool = &self.pool;
        let rows = sqlx::query(sql)
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
