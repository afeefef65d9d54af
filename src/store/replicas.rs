//! Replica leases: every `serve` renews one; a lease not renewed for
//! `server::REPLICA_LEASE` marks a replica taken for dead.

use super::{Store, StoreError};

impl Store {
    /// Takes or renews `name`'s lease; `started`: this process's start, on its first
    /// renewal (a replica killed earlier under the same name is replaced).
    pub async fn heartbeat_replica(
        &self,
        name: &str,
        now: i64,
        started: Option<i64>,
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        let sql = if started.is_some() {
            "INSERT INTO replicas (name, started_ms, heartbeat_ms) VALUES ($1, $3, $2)
             ON CONFLICT (name) DO UPDATE SET started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms"
        } else {
            "INSERT INTO replicas (name, started_ms, heartbeat_ms) VALUES ($1, $3, $2)
             ON CONFLICT (name) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms"
        };
        sqlx::query(sql)
            .bind(name)
            .bind(now)
            .bind(started.unwrap_or(now))
            .execute(&mut *pool.acquire().await?)
            .await?;
        Ok(())
    }

    /// Replicas holding a lease renewed since `alive_since` that started before `ms`.
    pub async fn replicas_started_before(
        &self,
        ms: i64,
        alive_since: i64,
    ) -> Result<Vec<String>, StoreError> {
        let pool = &self.pool;
        let rows = sqlx::query(
            "SELECT name FROM replicas WHERE started_ms < $1 AND heartbeat_ms >= $2 ORDER BY name",
        )
        .bind(ms)
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
