//! Audit rows: insert and filtered reads.

use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::StoreError;
use super::error::corrupt;
use crate::audit::{Actor, AuditEvent, Outcome};

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    /// Newest N (still returned oldest first).
    pub limit: Option<i64>,
}

pub async fn insert(conn: &mut SqliteConnection, e: &AuditEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (id, time_ms, type, actor, source, target, session_id, result, details)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(e.id.to_string())
    .bind(e.time_ms)
    .bind(&e.kind)
    .bind(&e.actor.0)
    .bind(&e.source)
    .bind(&e.target)
    .bind(&e.session_id)
    .bind(e.result.as_str())
    .bind(e.details.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn search(
    conn: &mut SqliteConnection,
    f: &AuditFilter,
) -> Result<Vec<AuditEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM (
           SELECT seq, id, time_ms, type, actor, source, target, session_id, result, details
           FROM audit_events
           WHERE (?1 IS NULL OR type = ?1 OR type LIKE ?1 || '.%')
             AND (?2 IS NULL OR actor = ?2 OR actor LIKE '%:' || ?2)
             AND (?3 IS NULL OR target = ?3 OR target LIKE '%:' || ?3)
             AND (?4 IS NULL OR time_ms >= ?4)
           ORDER BY seq DESC LIMIT ?5
         ) ORDER BY seq",
    )
    .bind(&f.kind)
    .bind(&f.actor)
    .bind(&f.target)
    .bind(f.since_ms)
    .bind(f.limit.unwrap_or(-1))
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let id: String = r.try_get("id")?;
            let details: String = r.try_get("details")?;
            let result: String = r.try_get("result")?;
            Ok(AuditEvent {
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
                result: Outcome::parse(&result),
                details: serde_json::from_str(&details)
                    .map_err(corrupt(format!("audit event {id} details")))?,
            })
        })
        .collect()
}
