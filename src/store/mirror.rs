//! The SIEM mirror shared by replicas: each event is taken by one replica's mirror.

use sqlx::Row;

use super::{ChainedEvent, Store, StoreError, audit, begin_write};

/// Events taken at most at once.
const RANGE: i64 = 5000;

impl Store {
    /// Takes the next events for `replica`'s mirror: first a range a dead replica (or this
    /// one, before a restart) took and never wrote out, else the events after the shared
    /// cursor (which starts after `start_after` the first time). Returns the range's start
    /// (for `mirror_written`) and its events; None when there is nothing to take.
    pub async fn mirror_take(
        &self,
        replica: &str,
        start_after: i64,
    ) -> Result<Option<(i64, Vec<ChainedEvent>)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // Read first, so an idle mirror never takes the write lock.
        let orphan: Option<i64> = sqlx::query_scalar(
            "SELECT after_seq FROM mirror_claims
             WHERE replica = $1 OR replica NOT IN (SELECT name FROM replicas) LIMIT 1",
        )
        .bind(replica)
        .fetch_optional(&mut *conn)
        .await?;
        let cursor: Option<i64> = sqlx::query_scalar("SELECT seq FROM mirror_cursor WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_events")
            .fetch_one(&mut *conn)
            .await?;
        drop(conn);
        if orphan.is_none() && head <= cursor.unwrap_or(start_after) {
            return Ok(None);
        }
        let mut tx = begin_write(&self.pool).await?;
        let now = crate::audit::now_ms();
        let orphan = sqlx::query(
            "SELECT after_seq, last_seq FROM mirror_claims
             WHERE replica = $1 OR replica NOT IN (SELECT name FROM replicas)
             ORDER BY after_seq LIMIT 1",
        )
        .bind(replica)
        .fetch_optional(&mut *tx)
        .await?;
        let (after, last) = if let Some(r) = orphan {
            let (after, last): (i64, i64) = (r.try_get("after_seq")?, r.try_get("last_seq")?);
            sqlx::query(
                "UPDATE mirror_claims SET replica = $1, claimed_ms = $2 WHERE after_seq = $3",
            )
            .bind(replica)
            .bind(now)
            .bind(after)
            .execute(&mut *tx)
            .await?;
            (after, last)
        } else {
            sqlx::query(
                "INSERT INTO mirror_cursor (id, seq) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
            )
            .bind(start_after)
            .execute(&mut *tx)
            .await?;
            let after: i64 = sqlx::query_scalar("SELECT seq FROM mirror_cursor WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM (SELECT seq FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2) AS page",
            )
            .bind(after)
            .bind(RANGE)
            .fetch_one(&mut *tx)
            .await?;
            let Some(last) = last else {
                tx.rollback().await?;
                return Ok(None);
            };
            sqlx::query("UPDATE mirror_cursor SET seq = $1 WHERE id = 1")
                .bind(last)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO mirror_claims (after_seq, last_seq, replica, claimed_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(after)
            .bind(last)
            .bind(replica)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            (after, last)
        };
        tx.commit().await?;
        let mut events = audit::page(&mut *self.pool.acquire().await?, after, RANGE).await?;
        events.retain(|e| e.seq <= last);
        Ok(Some((after, events)))
    }

    /// The range that started after `after_seq` was written out by `replica`'s mirror.
    pub async fn mirror_written(&self, replica: &str, after_seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mirror_claims WHERE after_seq = $1 AND replica = $2")
            .bind(after_seq)
            .bind(replica)
            .execute(&mut *self.pool.acquire().await?)
            .await?;
        Ok(())
    }
}
