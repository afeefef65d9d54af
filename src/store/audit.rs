//! Audit rows: chained inserts, checkpoints, filtered and sequential reads.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::StoreError;
use super::error::corrupt;
use crate::audit::chain::{self, GENESIS, Signer};
use crate::audit::{Actor, AuditEvent, Outcome, now_ms};

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub session: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only events after this sequence number (for following the log).
    pub after_seq: Option<i64>,
    /// Newest N (still returned oldest first).
    pub limit: Option<i64>,
}

/// An event with its place in the chain.
#[derive(Clone, Debug)]
pub struct ChainedEvent {
    pub seq: i64,
    pub event: AuditEvent,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub time_ms: i64,
    pub signature: String,
}

/// The last link: (seq, hash) of the newest event, or of the prune anchor, or genesis.
async fn head(conn: &mut SqliteConnection) -> Result<(i64, String), StoreError> {
    if let Some(r) = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?
    {
        let hash: Option<String> = r.try_get("hash")?;
        return Ok((
            r.try_get("seq")?,
            hash.unwrap_or_else(|| GENESIS.to_string()),
        ));
    }
    if let Some(a) = anchor(conn).await? {
        return Ok((a.seq, a.hash));
    }
    Ok((0, GENESIS.to_string()))
}

/// Appends events in order, each linked to the one before. Call inside a transaction
/// that holds the write lock (`BEGIN IMMEDIATE`), so the chain has one order.
pub async fn insert_chained(
    conn: &mut SqliteConnection,
    events: &[AuditEvent],
) -> Result<(i64, String), StoreError> {
    let (mut seq, mut prev) = head(conn).await?;
    // Hash in order first, then write many rows per statement.
    let mut rows = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let details = e.details.to_string();
        let hash = chain::event_hash_with(seq, e, &prev, &details);
        rows.push((
            seq,
            e,
            std::mem::replace(&mut prev, hash.clone()),
            hash,
            details,
        ));
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO audit_events (seq, id, time_ms, type, actor, source, target, session_id, result, details, prev_hash, hash) ",
        );
        q.push_values(chunk, |mut b, (seq, e, prev_hash, hash, details)| {
            b.push_bind(*seq)
                .push_bind(e.id.to_string())
                .push_bind(e.time_ms)
                .push_bind(e.kind.clone())
                .push_bind(e.actor.0.clone())
                .push_bind(e.source.clone())
                .push_bind(e.target.clone())
                .push_bind(e.session_id.clone())
                .push_bind(e.result.as_str())
                .push_bind(details.clone())
                .push_bind(prev_hash.clone())
                .push_bind(hash.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok((seq, prev))
}

/// Rows per INSERT statement (12 values each, well under SQLite's variable limit).
const ROWS_PER_INSERT: usize = 200;

pub async fn last_checkpoint(
    conn: &mut SqliteConnection,
) -> Result<Option<Checkpoint>, StoreError> {
    sqlx::query(
        "SELECT seq, hash, time_ms, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| checkpoint_row(&r))
    .transpose()
}

fn checkpoint_row(r: &SqliteRow) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        seq: r.try_get("seq")?,
        hash: r.try_get("hash")?,
        time_ms: r.try_get("time_ms")?,
        signature: r.try_get("signature")?,
    })
}

/// A head this process saw signed (or was told of, from a witness): the log must still
/// hold it before anything newer is signed.
pub type Known = Option<(i64, String)>;

/// Signs the current head if it is not signed yet, unless the log no longer holds `known`
/// (rewritten or cut outside postern: signing would vouch for the rewrite). Returns the
/// signed head.
pub async fn checkpoint(
    conn: &mut SqliteConnection,
    signer: &Signer,
    known: &Known,
) -> Result<Known, StoreError> {
    let (seq, hash) = head(conn).await?;
    if seq == 0 {
        return Ok(None);
    }
    if let Some((kseq, khash)) = known {
        let pruned = anchor(conn)
            .await?
            .is_some_and(|a| a.seq > *kseq || (a.seq == *kseq && a.hash == *khash));
        let at: Option<Option<String>> =
            sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = ?")
                .bind(kseq)
                .fetch_optional(&mut *conn)
                .await?;
        if !pruned && at.flatten().as_deref() != Some(khash.as_str()) {
            return Err(StoreError::Rewritten { seq: *kseq });
        }
    }
    if let Some(c) = last_checkpoint(conn).await?
        && c.seq >= seq
    {
        return Ok(Some((c.seq, c.hash)));
    }
    let cp = Checkpoint {
        seq,
        signature: signer.sign(seq, &hash),
        hash,
        time_ms: now_ms(),
    };
    sqlx::query("INSERT OR IGNORE INTO audit_checkpoints (seq, hash, time_ms, signature) VALUES (?, ?, ?, ?)")
        .bind(cp.seq)
        .bind(&cp.hash)
        .bind(cp.time_ms)
        .bind(&cp.signature)
        .execute(&mut *conn)
        .await?;
    Ok(Some((cp.seq, cp.hash)))
}

pub async fn checkpoints_in(
    conn: &mut SqliteConnection,
    after: i64,
    upto: i64,
) -> Result<Vec<Checkpoint>, StoreError> {
    sqlx::query("SELECT seq, hash, time_ms, signature FROM audit_checkpoints WHERE seq > ? AND seq <= ? ORDER BY seq")
        .bind(after)
        .bind(upto)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(checkpoint_row)
        .collect()
}

pub async fn anchor(conn: &mut SqliteConnection) -> Result<Option<Checkpoint>, StoreError> {
    sqlx::query("SELECT seq, hash, time_ms, signature FROM audit_anchor WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| checkpoint_row(&r))
        .transpose()
}

/// Removes events older than `before_ms`, keeping a signed anchor at the last removed one.
pub async fn prune(
    conn: &mut SqliteConnection,
    before_ms: i64,
    signer: &Signer,
) -> Result<u64, StoreError> {
    let Some(last) = sqlx::query(
        "SELECT seq, hash FROM audit_events WHERE time_ms < ? ORDER BY seq DESC LIMIT 1",
    )
    .bind(before_ms)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(0);
    };
    let seq: i64 = last.try_get("seq")?;
    let hash: Option<String> = last.try_get("hash")?;
    let hash = hash.unwrap_or_else(|| GENESIS.to_string());
    sqlx::query("INSERT OR REPLACE INTO audit_anchor (id, seq, hash, time_ms, signature) VALUES (1, ?, ?, ?, ?)")
        .bind(seq)
        .bind(&hash)
        .bind(now_ms())
        .bind(signer.sign(seq, &hash))
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query("DELETE FROM audit_events WHERE seq <= ?")
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM audit_checkpoints WHERE seq < ?")
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

fn event_row(r: &SqliteRow) -> Result<ChainedEvent, StoreError> {
    let id: String = r.try_get("id")?;
    let details: String = r.try_get("details")?;
    let result: String = r.try_get("result")?;
    Ok(ChainedEvent {
        seq: r.try_get("seq")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        event: AuditEvent {
            id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt {
                what: format!("audit event id {id}"),
                why: e.to_string(),
            })?,
            time_ms: r.try_get("time_ms")?,
            kind: r.try_get("type")?,
            actor: Actor(r.try_get("actor")?),
            source: r.try_get("source")?,
            target: r.try_get("target")?,
            session_id: r.try_get("session_id")?,
            result: Outcome::parse(&result).ok_or_else(|| StoreError::Corrupt {
                what: format!("audit event {id}"),
                why: format!("unknown result `{}`", crate::printable::cell(&result)),
            })?,
            details: serde_json::from_str(&details)
                .map_err(corrupt(format!("audit event {id} details")))?,
        },
    })
}

/// Events in sequence order after `after`, at most `limit` (for walking the whole log).
pub async fn page(
    conn: &mut SqliteConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<ChainedEvent>, StoreError> {
    sqlx::query("SELECT * FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?")
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(event_row)
        .collect()
}

pub async fn search(
    conn: &mut SqliteConnection,
    f: &AuditFilter,
) -> Result<Vec<ChainedEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM (
           SELECT * FROM audit_events
           WHERE (?1 IS NULL OR type = ?1 OR type LIKE ?1 || '.%')
             AND (?2 IS NULL OR actor = ?2 OR actor LIKE '%:' || ?2)
             AND (?3 IS NULL OR target = ?3 OR target LIKE '%:' || ?3)
             AND (?4 IS NULL OR time_ms >= ?4)
             AND (?5 IS NULL OR time_ms < ?5)
             AND (?6 IS NULL OR session_id = ?6 OR session_id LIKE ?6 || '%')
             AND (?7 IS NULL OR seq > ?7)
           ORDER BY seq DESC LIMIT ?8
         ) ORDER BY seq",
    )
    .bind(&f.kind)
    .bind(&f.actor)
    .bind(&f.target)
    .bind(f.since_ms)
    .bind(f.until_ms)
    .bind(&f.session)
    .bind(f.after_seq)
    .bind(f.limit.unwrap_or(-1))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(event_row).collect()
}
