//! PostgreSQL cancel keys shared between replicas (see `pg::cancel`).

use sqlx::Row;

use super::{Store, StoreError, begin_write};

/// A live session's cancel key as another replica needs it.
#[derive(Clone, Debug)]
pub struct SharedCancel {
    /// Hex SHA-256 of the (process id, secret) postern gave the client.
    pub key_hash: String,
    /// The target backend's address.
    pub addr: String,
    /// The target backend's own key, sealed.
    pub sealed: String,
}

impl Store {
    /// Adds and removes cancel keys of `replica` in one transaction, and drops those of
    /// replicas that no longer hold a lease.
    pub async fn put_cancel_keys(
        &self,
        replica: &str,
        add: &[SharedCancel],
        remove: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = begin_write(&self.pool).await?;
        let now = crate::audit::now_ms();
        for c in add {
            sqlx::query(
                "INSERT INTO cancel_keys (key_hash, replica, addr, sealed, created_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (key_hash) DO UPDATE SET replica = excluded.replica, addr = excluded.addr,
                   sealed = excluded.sealed, created_ms = excluded.created_ms",
            )
            .bind(&c.key_hash)
            .bind(replica)
            .bind(&c.addr)
            .bind(&c.sealed)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for k in remove {
            sqlx::query("DELETE FROM cancel_keys WHERE key_hash = $1 AND replica = $2")
                .bind(k)
                .bind(replica)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM cancel_keys WHERE replica NOT IN (SELECT name FROM replicas)")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The cancel key whose hash is `key_hash`, if a live session holds it.
    pub async fn cancel_key(&self, key_hash: &str) -> Result<Option<SharedCancel>, StoreError> {
        let row = sqlx::query("SELECT addr, sealed FROM cancel_keys WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(&mut *self.pool.acquire().await?)
            .await?;
        row.map(|r| {
            Ok(SharedCancel {
                key_hash: key_hash.to_string(),
                addr: r.try_get("addr")?,
                sealed: r.try_get("sealed")?,
            })
        })
        .transpose()
    }
}
