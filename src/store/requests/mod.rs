//! Access requests, their approvals and the grants they become. Every change is one
//! `BEGIN IMMEDIATE` transaction that reads the current policy (who may ask, who may
//! decide), changes the request and appends its audit event: either both land or neither.

mod rows;

use rows::{get, row, save};
use serde_json::json;

use super::{Store, StoreError, audit, policy};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::duration::Dur;
use crate::policy::UserStatus;
use crate::policy::requests::{
    AccessRequest, Approval, RequestState, may_review, may_revoke, refuse_request,
};

/// Pending requests one user may have at once.
pub const MAX_PENDING_PER_USER: i64 = 20;
/// Longest reason kept, in bytes.
pub const MAX_REASON: usize = 1000;

/// What a developer asks for.
pub struct NewRequest {
    pub role: String,
    pub target: Option<String>,
    pub reason: String,
    pub ttl: Dur,
}

/// Which requests to list.
#[derive(Default)]
pub struct RequestFilter {
    pub user: Option<String>,
    pub state: Option<RequestState>,
    pub limit: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no access request #{0}")]
    NotFound(i64),
    /// The caller may not do this.
    #[error("{0}")]
    Refused(String),
    /// The request is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RequestError {
    fn from(e: sqlx::Error) -> Self {
        RequestError::Store(StoreError::Db(e))
    }
}

fn check_reason(reason: &str, required: bool) -> Result<String, RequestError> {
    let r = reason.trim();
    if required && r.is_empty() {
        return Err(RequestError::Invalid(
            "a reason is required (--reason \"…\"): reviewers and auditors read it".into(),
        ));
    }
    if r.len() > MAX_REASON {
        return Err(RequestError::Invalid(format!(
            "the reason is {} bytes; keep it under {MAX_REASON}",
            r.len()
        )));
    }
    Ok(r.to_string())
}

fn event(kind: &str, actor: &Actor, r: &AccessRequest, extra: serde_json::Value) -> AuditEvent {
    let mut details = json!({
        "request": r.id,
        "user": r.user,
        "role": r.role,
        "ttl_secs": r.ttl_secs,
        "state": r.state.as_str(),
    });
    if let (Some(d), Some(e)) = (details.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    let mut e = AuditEvent::new(kind, actor, Outcome::Success, details);
    e.target = r.target.clone();
    e
}

impl Store {
    pub async fn create_request(
        &self,
        user: &str,
        new: &NewRequest,
        now: i64,
    ) -> Result<AccessRequest, RequestError> {
        let reason = check_reason(&new.reason, true)?;
        let pool = &self.pool;
        let mut tx = crate::store::begin_write(pool).await?;
        let p = policy::load(&mut tx).await?;
        let refused = |m: String| Err(RequestError::Refused(m));
        let Some(u) = p.users.get(user) else {
            return refused(format!("user `{user}` does not exist"));
        };
        if u.status != UserStatus::Active {
            return refused(format!("user `{user}` is locked"));
        }
        let Some(role) = p.roles.get(&new.role) else {
            return Err(RequestError::Invalid(format!(
                "no role `{}`; `postern request roles` lists the roles you may request",
                crate::printable::cell(&new.role)
            )));
        };
        let target = match &new.target {
            None => None,
            Some(t) => match p.targets.get(t) {
                Some(t) => Some(t),
                None => {
                    return Err(RequestError::Invalid(crate::policy::no_such_target(t)));
                }
            },
        };
        if let Some(why) = refuse_request(&p, u, role, target, new.ttl) {
            return refused(why);
        }
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM access_requests WHERE user_name = $1 AND state = 'pending'",
        )
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        if pending >= MAX_PENDING_PER_USER {
            return Err(RequestError::Conflict(format!(
                "you have {pending} pending requests; cancel some first (`postern request list`)"
            )));
        }
        let same: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM access_requests WHERE user_name = $1 AND role_name = $2 AND target IS NOT DISTINCT FROM $3 AND state = 'pending'",
        )
        .bind(user)
        .bind(&role.name)
        .bind(&new.target)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = same {
            return Err(RequestError::Conflict(format!(
                "request #{id} for the same access is already pending"
            )));
        }
        let pending_until = now.saturating_add(crate::audit::secs_to_ms(
            role.settings.request_expiry.as_secs(),
        ));
        let ttl = i64::try_from(new.ttl.as_secs()).unwrap_or(i64::MAX);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO access_requests (user_name, role_name, target, reason, ttl_secs, state, created_ms, pending_until_ms, approvals_required) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8) RETURNING id",
        )
        .bind(user)
        .bind(&role.name)
        .bind(&new.target)
        .bind(&reason)
        .bind(ttl)
        .bind(now)
        .bind(pending_until)
        .bind(i64::from(role.settings.approvals_required))
        .fetch_one(&mut *tx)
        .await?;
        let r = get(&mut tx, id).await?.ok_or(RequestError::NotFound(id))?;
        let e = event(
            "request.created",
            &Actor::user(user),
            &r,
            json!({ "reason": reason, "approvals_required": r.approvals_required, "pending_until_ms": pending_until }),
        );
        audit::insert_chained(&mut tx, &[e]).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// A reviewer approves or denies a pending request. Approvals count once per reviewer;
    /// the last one needed turns the request into a grant from `now` for its TTL.
    pub async fn decide_request(
        &self,
        reviewer: &str,
        id: i64,
        approve: bool,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequest, RequestError> {
        let reason = check_reason(reason, !approve)?;
        let pool = &self.pool;
        let mut tx = crate::store::begin_write(pool).await?;
        let p = policy::load(&mut tx).await?;
        let mut r = get(&mut tx, id).await?.ok_or(RequestError::NotFound(id))?;
        let actor = Actor::user(reviewer);
        if r.state == RequestState::Pending && now >= r.pending_until_ms {
            r.state = RequestState::Expired;
            r.decided_ms = Some(now);
            save(&mut tx, &r).await?;
            let e = event("request.expired", &Actor::system(), &r, json!({}));
            audit::insert_chained(&mut tx, &[e]).await?;
            tx.commit().await?;
            return Err(RequestError::Conflict(format!(
                "request #{id} expired undecided"
            )));
        }
        if r.state != RequestState::Pending {
            return Err(RequestError::Conflict(format!(
                "request #{id} is {}, not pending",
                r.state.as_str()
            )));
        }
        if r.user == reviewer {
            return Err(RequestError::Refused(
                "you cannot decide your own request; another reviewer must".into(),
            ));
        }
        let (Some(u), Some(role)) = (p.users.get(reviewer), p.roles.get(&r.role)) else {
            return Err(RequestError::Refused(format!(
                "you are not a reviewer of role `{}`",
                r.role
            )));
        };
        if !may_review(u, role) {
            return Err(RequestError::Refused(format!(
                "you are not a reviewer of role `{}` (its reviewers: members of {})",
                r.role,
                role.settings.reviewers.join(", ")
            )));
        }
        if r.approvals.iter().any(|a| a.reviewer == reviewer) {
            return Err(RequestError::Conflict(format!(
                "you already approved request #{id}; it needs another reviewer"
            )));
        }
        let kind = if approve {
            sqlx::query(
                "INSERT INTO request_approvals (request_id, reviewer, reason, at_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(reviewer)
            .bind(&reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            r.approvals.push(Approval {
                reviewer: reviewer.to_string(),
                reason: reason.clone(),
                at_ms: now,
            });
            // The requirement is the role's now, or the one the request was filed under
            // if that was stricter.
            let needed = r.approvals_required.max(role.settings.approvals_required);
            if r.approvals.len() >= usize::from(needed) {
                r.state = RequestState::Approved;
                r.decided_by = Some(reviewer.to_string());
                r.decided_ms = Some(now);
                r.decision_reason = Some(reason.clone());
                r.grant_until_ms = Some(now.saturating_add(crate::audit::secs_to_ms(r.ttl_secs)));
                save(&mut tx, &r).await?;
                "request.approved"
            } else {
                "request.approval"
            }
        } else {
            r.state = RequestState::Denied;
            r.decided_by = Some(reviewer.to_string());
            r.decided_ms = Some(now);
            r.decision_reason = Some(reason.clone());
            save(&mut tx, &r).await?;
            "request.denied"
        };
        let e = event(
            kind,
            &actor,
            &r,
            json!({
                "reason": reason,
                "approvals": r.approvals.len(),
                "approvals_required": r.approvals_required,
                "grant_until_ms": r.grant_until_ms,
            }),
        );
        audit::insert_chained(&mut tx, &[e]).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// The requester takes back a pending request.
    pub async fn cancel_request(
        &self,
        user: &str,
        id: i64,
        now: i64,
    ) -> Result<AccessRequest, RequestError> {
        let pool = &self.pool;
        let mut tx = crate::store::begin_write(pool).await?;
        let mut r = match get(&mut tx, id).await? {
            Some(r) if r.user == user => r,
            // Another user's request is answered as one that does not exist.
            _ => return Err(RequestError::NotFound(id)),
        };
        if r.state != RequestState::Pending {
            return Err(RequestError::Conflict(format!(
                "request #{id} is {}; only a pending request can be cancelled{}",
                r.state.as_str(),
                if r.state == RequestState::Approved {
                    " (`postern request revoke` ends a grant)"
                } else {
                    ""
                }
            )));
        }
        r.state = RequestState::Cancelled;
        r.decided_by = Some(user.to_string());
        r.decided_ms = Some(now);
        save(&mut tx, &r).await?;
        let e = event("request.cancelled", &Actor::user(user), &r, json!({}));
        audit::insert_chained(&mut tx, &[e]).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Ends a running grant before its time: its requester, a reviewer of its role or a
    /// console admin. Sessions that relied on it end at the next live review.
    pub async fn revoke_request(
        &self,
        user: &str,
        id: i64,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequest, RequestError> {
        let reason = check_reason(reason, false)?;
        let pool = &self.pool;
        let mut tx = crate::store::begin_write(pool).await?;
        let p = policy::load(&mut tx).await?;
        let Some(mut r) = get(&mut tx, id).await? else {
            return Err(RequestError::NotFound(id));
        };
        let allowed = r.user == user
            || match (p.users.get(user), p.roles.get(&r.role)) {
                (Some(u), Some(role)) => may_revoke(&p, u, role),
                _ => false,
            };
        if !allowed {
            return Err(RequestError::NotFound(id));
        }
        if !r.running(now) {
            return Err(RequestError::Conflict(format!(
                "request #{id} has no running grant (it is {})",
                r.state.as_str()
            )));
        }
        r.state = RequestState::Revoked;
        r.decided_by = Some(user.to_string());
        r.decided_ms = Some(now);
        r.decision_reason = Some(reason.clone());
        save(&mut tx, &r).await?;
        let e = event(
            "request.revoked",
            &Actor::user(user),
            &r,
            json!({ "reason": reason }),
        );
        audit::insert_chained(&mut tx, &[e]).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Pending requests past their expiry become `expired`, grants past their end
    /// `ended`, and grants ending within `warn_ms` are noted as expiring, each with its
    /// audit event, once (whichever process sweeps first).
    pub async fn sweep_requests(
        &self,
        now: i64,
        warn_ms: i64,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        macro_rules! due {
            () => {
                "(state = 'pending' AND pending_until_ms <= $1)
                 OR (state = 'approved' AND grant_until_ms <= $1)
                 OR (state = 'approved' AND expiring_noted = 0 AND grant_until_ms <= $2)"
            };
        }
        let pool = &self.pool;
        let warn_at = now.saturating_add(warn_ms);
        let due: Option<i64> = sqlx::query_scalar(concat!(
            "SELECT id FROM access_requests WHERE ",
            due!(),
            " LIMIT 1"
        ))
        .bind(now)
        .bind(warn_at)
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = crate::store::begin_write(pool).await?;
        let rows = sqlx::query(concat!(
            "SELECT * FROM access_requests WHERE ",
            due!(),
            " ORDER BY id LIMIT 500"
        ))
        .bind(now)
        .bind(warn_at)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row_ in &rows {
            let mut r = row(row_)?;
            let kind = if r.state == RequestState::Pending {
                r.state = RequestState::Expired;
                r.decided_ms = Some(now);
                "request.expired"
            } else if r.grant_until_ms.unwrap_or(0) <= now {
                r.state = RequestState::Ended;
                "request.grant_ended"
            } else {
                "request.grant_expiring"
            };
            save(&mut tx, &r).await?;
            if kind != "request.expired" {
                sqlx::query("UPDATE access_requests SET expiring_noted = 1 WHERE id = $1")
                    .bind(r.id)
                    .execute(&mut *tx)
                    .await?;
            }
            events.push(event(
                kind,
                &Actor::system(),
                &r,
                json!({ "grant_until_ms": r.grant_until_ms }),
            ));
            out.push(r);
        }
        audit::insert_chained(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(out)
    }
}

/// Ends the pending requests and running grants of a removed user or role (in the
/// caller's transaction); their `request.revoked` events, for the caller to append.
pub(super) async fn close_removed(
    tx: &mut sqlx::AnyConnection,
    actor: &Actor,
    user: Option<&str>,
    role: Option<&str>,
) -> Result<Vec<AuditEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM access_requests WHERE state IN ('pending', 'approved')
           AND ($1 IS NULL OR user_name = $1) AND ($2 IS NULL OR role_name = $2)",
    )
    .bind(user)
    .bind(role)
    .fetch_all(&mut *tx)
    .await?;
    let why = match (user, role) {
        (Some(u), _) => format!("user `{u}` was removed"),
        (_, Some(r)) => format!("role `{r}` was removed"),
        _ => return Ok(Vec::new()),
    };
    let now = crate::audit::now_ms();
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut req = row(r)?;
        req.state = if req.state == RequestState::Pending {
            RequestState::Cancelled
        } else {
            RequestState::Revoked
        };
        req.decided_ms = Some(now);
        req.decision_reason = Some(why.clone());
        save(tx, &req).await?;
        let kind = if req.state == RequestState::Cancelled {
            "request.cancelled"
        } else {
            "request.revoked"
        };
        events.push(event(kind, actor, &req, json!({ "reason": why })));
    }
    Ok(events)
}
