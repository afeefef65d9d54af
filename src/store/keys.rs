//! Key material replicas share: every `serve` on one PostgreSQL store presents the same
//! SSH host key, signs with the same CAs and audit key, and serves TLS from the same CA.
//! The store keeps each file sealed with the master key (which it never holds), so
//! someone who reads the database learns nothing from these rows.

use sqlx::Row;

use super::{Opened, StoreError, begin_write};

impl Opened {
    /// Under the write lock: adds the files of `local` (relative path, sealed contents)
    /// that the store does not hold yet, and returns every file the store holds. The first
    /// replica's keys become everyone's; two replicas starting at once agree on one set.
    pub async fn share_keys(
        &self,
        local: &[(String, String)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut tx = begin_write(&self.pool).await?;
        for (name, sealed) in local {
            sqlx::query(
                "INSERT INTO shared_keys (name, sealed, created_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(sealed)
            .bind(crate::audit::now_ms())
            .execute(&mut *tx)
            .await?;
        }
        let rows = sqlx::query("SELECT name, sealed FROM shared_keys ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("sealed")?)))
            .collect()
    }
}

impl super::Store {
    /// Under the write lock: replaces the shared files in `put` (name, sealed contents)
    /// and removes those named in `remove`: a rotated key becomes every replica's at its
    /// next start.
    pub async fn replace_shared_keys(
        &self,
        put: &[(String, String)],
        remove: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = begin_write(&self.pool).await?;
        for (name, sealed) in put {
            sqlx::query(
                "INSERT INTO shared_keys (name, sealed, created_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, created_ms = excluded.created_ms",
            )
            .bind(name)
            .bind(sealed)
            .bind(crate::audit::now_ms())
            .execute(&mut *tx)
            .await?;
        }
        for name in remove {
            sqlx::query("DELETE FROM shared_keys WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
