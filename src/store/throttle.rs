//! Failed logins shared between replicas (the counts behind `api::limiter`).

use sqlx::Row;

use super::{Store, StoreError, begin_write};

/// One counter: a door (`password`, `postgres`), a user (`""` for the source alone) and a
/// source network.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FailureKey {
    pub door: String,
    pub user: String,
    pub addr: String,
}

/// Rows read back at most, newest first: a flood of distinct sources cannot make the
/// once-a-second read unbounded.
const READ_AT_MOST: i64 = 10_000;

impl Store {
    /// Adds `n` failures to each key (a count older than `forget_before_ms` starts again),
    /// and deletes the keys in `cleared` (a success).
    pub async fn add_login_failures(
        &self,
        failed: &[(FailureKey, u32)],
        cleared: &[FailureKey],
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<(), StoreError> {
        if failed.is_empty() && cleared.is_empty() {
            return Ok(());
        }
        let mut tx = begin_write(&self.pool).await?;
        for (k, n) in failed {
            sqlx::query(
                "INSERT INTO login_failures (door, user_name, addr, failures, last_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (door, user_name, addr) DO UPDATE SET
                   failures = CASE WHEN login_failures.last_ms < $6 THEN excluded.failures
                                   ELSE login_failures.failures + excluded.failures END,
                   last_ms = excluded.last_ms",
            )
            .bind(&k.door)
            .bind(&k.user)
            .bind(&k.addr)
            .bind(i64::from(*n))
            .bind(now_ms)
            .bind(forget_before_ms)
            .execute(&mut *tx)
            .await?;
        }
        for k in cleared {
            sqlx::query(
                "DELETE FROM login_failures WHERE door = $1 AND user_name = $2 AND addr = $3",
            )
            .bind(&k.door)
            .bind(&k.user)
            .bind(&k.addr)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM login_failures WHERE last_ms < $1")
            .bind(forget_before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Counters with at least `min` failures, the last after `since_ms`, as (key, failures,
    /// last failure ms).
    pub async fn login_failures(
        &self,
        since_ms: i64,
        min: u32,
    ) -> Result<Vec<(FailureKey, u32, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT door, user_name, addr, failures, last_ms FROM login_failures
             WHERE last_ms >= $1 AND failures >= $2 ORDER BY last_ms DESC LIMIT $3",
        )
        .bind(since_ms)
        .bind(i64::from(min))
        .bind(READ_AT_MOST)
        .fetch_all(&mut *self.pool.acquire().await?)
        .await?;
        rows.iter()
            .map(|r| {
                let failures: i64 = r.try_get("failures")?;
                Ok((
                    FailureKey {
                        door: r.try_get("door")?,
                        user: r.try_get("user_name")?,
                        addr: r.try_get("addr")?,
                    },
                    u32::try_from(failures).unwrap_or(u32::MAX),
                    r.try_get("last_ms")?,
                ))
            })
            .collect()
    }
}
