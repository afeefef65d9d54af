//! Issued credentials: user certificates, TOTP secrets (sealed), API and database tokens
//! (hashes only).

use sqlx::Row;

use super::{Store, StoreError};

/// Expired tokens are kept a day, so a late client hears "expired", not "unknown".
const KEEP_EXPIRED_MS: i64 = 24 * 3600 * 1000;

/// A user certificate postern issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    pub serial: u64,
    pub user: String,
    pub key_fingerprint: String,
    /// Unix seconds.
    pub valid_before: i64,
    pub issued_ms: i64,
    pub source: String,
}

/// The identity behind an API bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    pub user: String,
    pub cert_serial: String,
    pub expires_ms: i64,
}

/// A database credential as `postern db login` issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbToken {
    pub user: String,
    pub target: String,
    pub database: String,
    pub db_user: String,
    pub issued_ms: i64,
    pub expires_ms: i64,
    /// The serial of the login (user certificate) it was issued under.
    pub cert_serial: Option<u64>,
    /// Its SCRAM-SHA-256 verifier.
    pub scram: Option<crate::credentials::scram::Verifier>,
}

/// The columns `db_token_row` reads.
macro_rules! db_token_select {
    () => {
        "SELECT user_name, target, database, db_user, issued_ms, expires_ms, cert_serial, scram_stored_key, scram_server_key FROM db_tokens"
    };
}

fn db_token_row(r: &sqlx::any::AnyRow) -> Result<DbToken, StoreError> {
    let stored: Option<Vec<u8>> = r.try_get("scram_stored_key")?;
    let server: Option<Vec<u8>> = r.try_get("scram_server_key")?;
    Ok(DbToken {
        user: r.try_get("user_name")?,
        target: r.try_get("target")?,
        database: r.try_get("database")?,
        db_user: r.try_get("db_user")?,
        issued_ms: r.try_get("issued_ms")?,
        expires_ms: r.try_get("expires_ms")?,
        cert_serial: r
            .try_get::<Option<String>, _>("cert_serial")?
            .and_then(|s| s.parse().ok()),
        scram: match (stored, server) {
            (Some(stored_key), Some(server_key)) => Some(crate::credentials::scram::Verifier {
                stored_key,
                server_key,
            }),
            _ => None,
        },
    })
}

fn cert_row(r: &sqlx::any::AnyRow) -> Result<IssuedCert, StoreError> {
    let serial: String = r.try_get("serial")?;
    Ok(IssuedCert {
        serial: serial.parse().unwrap_or(0),
        user: r.try_get("user_name")?,
        key_fingerprint: r.try_get("key_fingerprint")?,
        valid_before: r.try_get("valid_before")?,
        issued_ms: r.try_get("issued_ms")?,
        source: r.try_get("source")?,
    })
}

impl Store {
    pub async fn record_user_cert(&self, c: &IssuedCert) -> Result<(), StoreError> {
        let pool = &self.pool;
        sqlx::query(
            "INSERT INTO user_certificates (serial, user_name, key_fingerprint, valid_before, issued_ms, source) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(c.serial.to_string())
        .bind(&c.user)
        .bind(&c.key_fingerprint)
        .bind(c.valid_before)
        .bind(c.issued_ms)
        .bind(&c.source)
        .execute(&mut *pool.acquire().await?)
        .await?;
        Ok(())
    }

    /// The latest certificate issued for a key (by its `SHA256:` fingerprint), if any.
    pub async fn latest_cert_for_key(
        &self,
        fingerprint: &str,
    ) -> Result<Option<IssuedCert>, StoreError> {
        let pool = &self.pool;
        let row = sqlx::query(
            "SELECT serial, user_name, key_fingerprint, valid_before, issued_ms, source FROM user_certificates WHERE key_fingerprint = $1 ORDER BY issued_ms DESC LIMIT 1",
        )
        .bind(fingerprint)
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
        row.as_ref().map(cert_row).transpose()
    }

    /// A user's certificates still valid at `now_s` (unix seconds), newest first (at most 50).
    pub async fn valid_certs(&self, user: &str, now_s: i64) -> Result<Vec<IssuedCert>, StoreError> {
        let pool = &self.pool;
        let rows = sqlx::query(
            "SELECT serial, user_name, key_fingerprint, valid_before, issued_ms, source FROM user_certificates WHERE user_name = $1 AND valid_before > $2 ORDER BY issued_ms DESC LIMIT 50",
        )
        .bind(user)
        .bind(now_s)
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
        rows.iter().map(cert_row).collect()
    }

    /// A user's database credentials still valid at `now_ms`, newest first (at most 50).
    pub async fn valid_db_tokens(
        &self,
        user: &str,
        now_ms: i64,
    ) -> Result<Vec<DbToken>, StoreError> {
        let pool = &self.pool;
        let rows = sqlx::query(concat!(
            db_token_select!(),
            " WHERE user_name = $1 AND expires_ms > $2 ORDER BY issued_ms DESC LIMIT 50"
        ))
        .bind(user)
        .bind(now_ms)
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
        rows.iter().map(db_token_row).collect()
    }

    /// Stores a user's sealed TOTP secret, replacing any earlier one; false when the user
    /// does not exist.
    pub async fn set_totp(&self, user: &str, sealed: &str) -> Result<bool, StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        if !super::user_exists(&mut conn, user).await? {
            return Ok(false);
        }
        sqlx::query("INSERT INTO user_totp (user_name, sealed, last_step, enrolled_ms) VALUES ($1, $2, 0, $3) ON CONFLICT (user_name) DO UPDATE SET sealed = excluded.sealed, last_step = 0, enrolled_ms = excluded.enrolled_ms")
            .bind(user)
            .bind(sealed)
            .bind(crate::audit::now_ms())
            .execute(&mut *conn)
            .await?;
        Ok(true)
    }

    /// Removes a user's TOTP enrolment; true when there was one.
    pub async fn remove_totp(&self, user: &str) -> Result<bool, StoreError> {
        let pool = &self.pool;
        Ok(sqlx::query("DELETE FROM user_totp WHERE user_name = $1")
            .bind(user)
            .execute(&mut *pool.acquire().await?)
            .await?
            .rows_affected()
            == 1)
    }

    /// The sealed secret and the last time step used, when the user enrolled.
    pub async fn totp(&self, user: &str) -> Result<Option<(String, i64)>, StoreError> {
        let pool = &self.pool;
        let row = sqlx::query("SELECT sealed, last_step FROM user_totp WHERE user_name = $1")
            .bind(user)
            .fetch_optional(&mut *pool.acquire().await?)
            .await?;
        row.map(|r| Ok((r.try_get("sealed")?, r.try_get("last_step")?)))
            .transpose()
    }

    /// Marks a time step used; false when it (or a later one) already was, so a code
    /// cannot be replayed.
    pub async fn use_totp_step(&self, user: &str, step: i64) -> Result<bool, StoreError> {
        let pool = &self.pool;
        Ok(sqlx::query(
            "UPDATE user_totp SET last_step = $1 WHERE user_name = $2 AND last_step < $3",
        )
        .bind(step)
        .bind(user)
        .bind(step)
        .execute(&mut *pool.acquire().await?)
        .await?
        .rows_affected()
            == 1)
    }

    pub async fn insert_api_token(&self, hash: &str, t: &ApiToken) -> Result<(), StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        sqlx::query("DELETE FROM api_tokens WHERE expires_ms < $1")
            .bind(crate::audit::now_ms() - KEEP_EXPIRED_MS)
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO api_tokens (token_hash, user_name, cert_serial, expires_ms) VALUES ($1, $2, $3, $4)")
            .bind(hash)
            .bind(&t.user)
            .bind(&t.cert_serial)
            .bind(t.expires_ms)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    pub async fn api_token(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let pool = &self.pool;
        let row = sqlx::query(
            "SELECT user_name, cert_serial, expires_ms FROM api_tokens WHERE token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
        row.map(|r| {
            Ok(ApiToken {
                user: r.try_get("user_name")?,
                cert_serial: r.try_get("cert_serial")?,
                expires_ms: r.try_get("expires_ms")?,
            })
        })
        .transpose()
    }

    pub async fn insert_db_token(&self, hash: &str, t: &DbToken) -> Result<(), StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        sqlx::query("DELETE FROM db_tokens WHERE expires_ms < $1")
            .bind(crate::audit::now_ms() - KEEP_EXPIRED_MS)
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO db_tokens (token_hash, user_name, target, database, db_user, issued_ms, expires_ms, cert_serial, scram_stored_key, scram_server_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(hash)
            .bind(&t.user)
            .bind(&t.target)
            .bind(&t.database)
            .bind(&t.db_user)
            .bind(t.issued_ms)
            .bind(t.expires_ms)
            .bind(t.cert_serial.map(|s| s.to_string()))
            .bind(t.scram.as_ref().map(|v| v.stored_key.clone()))
            .bind(t.scram.as_ref().map(|v| v.server_key.clone()))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// The database credential with this hash, expired or not (the caller tells which).
    pub async fn db_token(&self, hash: &str) -> Result<Option<DbToken>, StoreError> {
        let pool = &self.pool;
        let row = sqlx::query(concat!(db_token_select!(), " WHERE token_hash = $1"))
            .bind(hash)
            .fetch_optional(&mut *pool.acquire().await?)
            .await?;
        row.map(|r| db_token_row(&r)).transpose()
    }

    /// A user's database credentials that have a SCRAM verifier, newest first, including
    /// those expired recently enough to be told so (at most 64: the candidates a SCRAM
    /// proof is checked against).
    pub async fn scram_tokens(&self, user: &str) -> Result<Vec<DbToken>, StoreError> {
        let pool = &self.pool;
        let rows = sqlx::query(concat!(
            db_token_select!(),
            " WHERE user_name = $1 AND expires_ms > $2 AND scram_stored_key IS NOT NULL ORDER BY issued_ms DESC LIMIT 64"
        ))
        .bind(user)
        .bind(crate::audit::now_ms() - KEEP_EXPIRED_MS)
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
        rows.iter().map(db_token_row).collect()
    }

    /// Stores a target's sealed password for one database user, replacing any earlier one.
    pub async fn set_target_credential(
        &self,
        target: &str,
        db_user: &str,
        sealed: &str,
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        sqlx::query("INSERT INTO target_credentials (target, db_user, sealed, updated_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (target, db_user) DO UPDATE SET sealed = excluded.sealed, updated_ms = excluded.updated_ms")
            .bind(target)
            .bind(db_user)
            .bind(sealed)
            .bind(crate::audit::now_ms())
            .execute(&mut *pool.acquire().await?)
            .await?;
        Ok(())
    }

    pub async fn target_credential(
        &self,
        target: &str,
        db_user: &str,
    ) -> Result<Option<String>, StoreError> {
        let pool = &self.pool;
        let row =
            sqlx::query("SELECT sealed FROM target_credentials WHERE target = $1 AND db_user = $2")
                .bind(target)
                .bind(db_user)
                .fetch_optional(&mut *pool.acquire().await?)
                .await?;
        row.map(|r| r.try_get("sealed"))
            .transpose()
            .map_err(Into::into)
    }
}

/// A bot's join token (as its SHA-256) and the cap on the credentials it logs in to.
#[derive(Clone, Debug)]
pub struct BotToken {
    pub hash: String,
    pub credential_ttl_secs: u64,
    pub created_ms: i64,
}

impl Store {
    /// Sets (or replaces: the old token stops working) a bot's join token.
    pub async fn set_bot_token(&self, bot: &str, t: &BotToken) -> Result<bool, StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        if !super::user_exists(&mut conn, bot).await? {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO bot_tokens (user_name, token_hash, credential_ttl_secs, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_name) DO UPDATE SET token_hash = excluded.token_hash,
               credential_ttl_secs = excluded.credential_ttl_secs, created_ms = excluded.created_ms",
        )
        .bind(bot)
        .bind(&t.hash)
        .bind(i64::try_from(t.credential_ttl_secs).unwrap_or(i64::MAX))
        .bind(t.created_ms)
        .execute(&mut *conn)
        .await?;
        Ok(true)
    }

    pub async fn bot_token(&self, bot: &str) -> Result<Option<BotToken>, StoreError> {
        let pool = &self.pool;
        let row = sqlx::query(
            "SELECT token_hash, credential_ttl_secs, created_ms FROM bot_tokens WHERE user_name = $1",
        )
        .bind(bot)
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
        row.map(|r| {
            let ttl: i64 = r.try_get("credential_ttl_secs")?;
            Ok(BotToken {
                hash: r.try_get("token_hash")?,
                credential_ttl_secs: u64::try_from(ttl).unwrap_or(0),
                created_ms: r.try_get("created_ms")?,
            })
        })
        .transpose()
    }

    /// Removes a bot's join token; true if it had one.
    pub async fn remove_bot_token(&self, bot: &str) -> Result<bool, StoreError> {
        let pool = &self.pool;
        let done = sqlx::query("DELETE FROM bot_tokens WHERE user_name = $1")
            .bind(bot)
            .execute(&mut *pool.acquire().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
