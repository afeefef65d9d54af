//! Access-request rows: reading them back, saving a decision, the running grants, and
//! the lists callers read.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::RequestFilter;
use crate::policy::requests::{AccessRequest, Approval, RequestState};
use crate::policy::{Policy, TimedGrant};
use crate::store::{Store, StoreError, policy};

async fn approvals(conn: &mut AnyConnection, id: i64) -> Result<Vec<Approval>, StoreError> {
    let rows = sqlx::query(
        "SELECT reviewer, reason, at_ms FROM request_approvals WHERE request_id = $1 ORDER BY at_ms, reviewer",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Approval {
                reviewer: r.try_get("reviewer")?,
                reason: r.try_get("reason")?,
                at_ms: r.try_get("at_ms")?,
            })
        })
        .collect()
}

pub(super) fn row(r: &AnyRow) -> Result<AccessRequest, StoreError> {
    let state: String = r.try_get("state")?;
    let ttl: i64 = r.try_get("ttl_secs")?;
    let approvals_required: i64 = r.try_get("approvals_required")?;
    Ok(AccessRequest {
        id: r.try_get("id")?,
        user: r.try_get("user_name")?,
        role: r.try_get("role_name")?,
        target: r.try_get("target")?,
        reason: r.try_get("reason")?,
        ttl_secs: u64::try_from(ttl).unwrap_or(0),
        state: RequestState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            what: "access request".into(),
            why: format!("unknown state `{state}`"),
        })?,
        created_ms: r.try_get("created_ms")?,
        pending_until_ms: r.try_get("pending_until_ms")?,
        approvals_required: u8::try_from(approvals_required).unwrap_or(u8::MAX),
        approvals: Vec::new(),
        decided_by: r.try_get("decided_by")?,
        decided_ms: r.try_get("decided_ms")?,
        decision_reason: r.try_get("decision_reason")?,
        grant_until_ms: r.try_get("grant_until_ms")?,
    })
}

pub(super) async fn get(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<Option<AccessRequest>, StoreError> {
    let Some(r) = sqlx::query("SELECT * FROM access_requests WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let mut req = row(&r)?;
    req.approvals = approvals(conn, id).await?;
    Ok(Some(req))
}

/// Writes a request's state and decision columns.
pub(super) async fn save(conn: &mut AnyConnection, r: &AccessRequest) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE access_requests SET state = $1, decided_by = $2, decided_ms = $3, decision_reason = $4, grant_until_ms = $5 WHERE id = $6",
    )
    .bind(r.state.as_str())
    .bind(&r.decided_by)
    .bind(r.decided_ms)
    .bind(&r.decision_reason)
    .bind(r.grant_until_ms)
    .bind(r.id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The grants of approved requests still running at `now`.
pub async fn active_grants(
    conn: &mut AnyConnection,
    now: i64,
) -> Result<Vec<TimedGrant>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, user_name, role_name, target, grant_until_ms FROM access_requests WHERE state = 'approved' AND grant_until_ms > $1 ORDER BY id",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(TimedGrant {
                request: r.try_get("id")?,
                user: r.try_get("user_name")?,
                role: r.try_get("role_name")?,
                target: r.try_get("target")?,
                until_ms: r.try_get("grant_until_ms")?,
            })
        })
        .collect()
}

impl Store {
    /// The policy with the grants running at `now`, as decisions see it.
    pub async fn load_policy_at(&self, now: i64) -> Result<Policy, StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        let mut p = policy::load(&mut conn).await?;
        p.grants = active_grants(&mut conn, now).await?;
        Ok(p)
    }

    /// Files a request by `user`, checked against the policy at this moment.
    pub async fn get_request(&self, id: i64) -> Result<Option<AccessRequest>, StoreError> {
        let pool = &self.pool;
        get(&mut *pool.acquire().await?, id).await
    }

    /// Requests, newest first.
    pub async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<AccessRequest>, StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        let rows = sqlx::query(
            "SELECT * FROM access_requests WHERE ($1 IS NULL OR user_name = $1) AND ($2 IS NULL OR state = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(&f.user)
        .bind(f.state.map(RequestState::as_str))
        .bind(f.limit.unwrap_or(500))
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut req = row(r)?;
            req.approvals = approvals(&mut conn, req.id).await?;
            out.push(req);
        }
        Ok(out)
    }
}
