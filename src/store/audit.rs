//! Audit rows: chained inserts, checkpoints, filtered and sequential reads.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::StoreError;
use super::error::corrupt;
use crate::audit::chain::{self, GENESIS, Signer};
use crate::audit::lineage;
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
async fn head(conn: &mut AnyConnection) -> Result<(i64, String), StoreError> {
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
    conn: &mut AnyConnection,
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
        let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_rows_sql(chunk.len())));
        for (seq, e, prev_hash, hash, details) in chunk {
            q = q
                .bind(*seq)
                .bind(e.id.to_string())
                .bind(e.time_ms)
                .bind(e.kind.clone())
                .bind(e.actor.0.clone())
                .bind(e.source.clone())
                .bind(e.target.clone())
                .bind(e.session_id.clone())
                .bind(e.result.as_str())
                .bind(details.clone())
                .bind(prev_hash.clone())
                .bind(hash.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok((seq, prev))
}

/// Rows per INSERT statement (12 values each, well under SQLite's variable limit).
const ROWS_PER_INSERT: usize = 200;

/// `INSERT INTO audit_events … VALUES ($1, … $12), ($13, …)` for `rows` rows: numbered
/// placeholders, which both backends read (a statement built from numbers alone).
fn insert_rows_sql(rows: usize) -> String {
    const COLUMNS: usize = 12;
    let mut sql = String::from(
        "INSERT INTO audit_events (seq, id, time_ms, type, actor, source, target, session_id, result, details, prev_hash, hash) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..COLUMNS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * COLUMNS + c + 1));
        }
        sql.push(')');
    }
    sql
}

pub async fn last_checkpoint(conn: &mut AnyConnection) -> Result<Option<Checkpoint>, StoreError> {
    sqlx::query(
        "SELECT seq, hash, time_ms, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| checkpoint_row(&r))
    .transpose()
}

fn checkpoint_row(r: &AnyRow) -> Result<Checkpoint, StoreError> {
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
    conn: &mut AnyConnection,
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
            sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = $1")
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
    sqlx::query("INSERT INTO audit_checkpoints (seq, hash, time_ms, signature) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(cp.seq)
        .bind(&cp.hash)
        .bind(cp.time_ms)
        .bind(&cp.signature)
        .execute(&mut *conn)
        .await?;
    Ok(Some((cp.seq, cp.hash)))
}

pub async fn checkpoints_in(
    conn: &mut AnyConnection,
    after: i64,
    upto: i64,
) -> Result<Vec<Checkpoint>, StoreError> {
    sqlx::query("SELECT seq, hash, time_ms, signature FROM audit_checkpoints WHERE seq > $1 AND seq <= $2 ORDER BY seq")
        .bind(after)
        .bind(upto)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(checkpoint_row)
        .collect()
}

pub async fn anchor(conn: &mut AnyConnection) -> Result<Option<Checkpoint>, StoreError> {
    sqlx::query("SELECT seq, hash, time_ms, signature FROM audit_anchor WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| checkpoint_row(&r))
        .transpose()
}

/// The seq of the audit key handover at or before `seq` whose old key still signed at
/// `seq` (not retired by then), if any.
async fn open_handover(conn: &mut AnyConnection, seq: i64) -> Result<Option<i64>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT seq FROM audit_events WHERE type = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1",
    )
    .bind(lineage::ROTATED)
    .bind(seq)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let handover: i64 = row.try_get("seq")?;
    let retired = sqlx::query(
        "SELECT seq FROM audit_events WHERE type = $1 AND seq > $2 AND seq <= $3 LIMIT 1",
    )
    .bind(lineage::RETIRED)
    .bind(handover)
    .bind(seq)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(retired.is_none().then_some(handover))
}

/// Removes events older than `before_ms`, keeping a signed anchor at the last removed one.
/// A cut inside an audit key overlap stops before its handover: the checkpoints the old
/// key signed after the cut need the handover to be verified.
pub async fn prune(
    conn: &mut AnyConnection,
    before_ms: i64,
    signer: &Signer,
) -> Result<u64, StoreError> {
    let Some(mut last) = sqlx::query(
        "SELECT seq, hash FROM audit_events WHERE time_ms < $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(before_ms)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(0);
    };
    if let Some(handover) = open_handover(conn, last.try_get("seq")?).await? {
        let Some(before) = sqlx::query(
            "SELECT seq, hash FROM audit_events WHERE seq < $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(handover)
        .fetch_optional(&mut *conn)
        .await?
        else {
            return Ok(0);
        };
        last = before;
    }
    let seq: i64 = last.try_get("seq")?;
    let hash: Option<String> = last.try_get("hash")?;
    let hash = hash.unwrap_or_else(|| GENESIS.to_string());
    sqlx::query("INSERT INTO audit_anchor (id, seq, hash, time_ms, signature) VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, time_ms = excluded.time_ms, signature = excluded.signature")
        .bind(seq)
        .bind(&hash)
        .bind(now_ms())
        .bind(signer.sign(seq, &hash))
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM audit_checkpoints WHERE seq < $1")
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

fn event_row(r: &AnyRow) -> Result<ChainedEvent, StoreError> {
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
    conn: &mut AnyConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<ChainedEvent>, StoreError> {
    sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(event_row)
        .collect()
}

pub async fn search(
    conn: &mut AnyConnection,
    f: &AuditFilter,
) -> Result<Vec<ChainedEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM (
           SELECT * FROM audit_events
           WHERE ($1 IS NULL OR type = $1 OR type LIKE $1 || '.%')
             AND ($2 IS NULL OR actor = $2 OR actor LIKE '%:' || $2)
             AND ($3 IS NULL OR target = $3 OR target LIKE '%:' || $3)
             AND ($4 IS NULL OR time_ms >= $4)
             AND ($5 IS NULL OR time_ms < $5)
             AND ($6 IS NULL OR session_id = $6 OR session_id LIKE $6 || '%')
             AND ($7 IS NULL OR seq > $7)
           ORDER BY seq DESC LIMIT $8
         ) AS recent ORDER BY seq",
    )
    .bind(&f.kind)
    .bind(&f.actor)
    .bind(&f.target)
    .bind(f.since_ms)
    .bind(f.until_ms)
    .bind(&f.session)
    .bind(f.after_seq)
    .bind(f.limit.unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(event_row).collect()
}
