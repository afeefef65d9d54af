//! The console's operations as JSON, for scripts: sessions, the audit log, the access
//! check, lock/unlock and kill, behind the bearer token of `postern login`, with the same
//! console rights and the same actions (`api::actions`) as the pages. Documented in
//! `/v1/openapi.json` (`openapi.rs`).

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Ctx, body};
use crate::api::ApiError;
use crate::api::actions;
use crate::audit::{Actor, now_ms};
use crate::policy::{ConsoleRight, Decision, Policy, Request, TargetKind, User, UserStatus};
use crate::store::{AuditFilter, SessionFilter, SessionRow};

/// Sessions or events one request returns at most.
const MAX_ROWS: i64 = 1000;

/// The caller, with the console rights their roles grant.
struct Caller {
    policy: Policy,
    user: User,
    rights: BTreeSet<ConsoleRight>,
}

impl Caller {
    fn audits(&self) -> bool {
        self.rights.contains(&ConsoleRight::Audit)
    }
    fn actor(&self) -> Actor {
        Actor::of(&self.user)
    }
    fn needs(&self, right: ConsoleRight) -> Result<(), ApiError> {
        if self.rights.contains(&right) {
            return Ok(());
        }
        Err(lacks(right))
    }
}

/// The refusal of a caller without a console right.
pub(super) fn lacks(right: ConsoleRight) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "this needs the console's `{}` right (a role with `console = [\"{}\"]`)",
            right.as_str(),
            right.as_str()
        ),
    )
}

async fn caller(cx: &Ctx, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let (policy, user, _) = cx.bearer(headers).await?;
    let rights = policy.console_rights(&user);
    Ok(Caller {
        policy,
        user,
        rights,
    })
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such session")
}

fn since(s: &Option<String>) -> Result<Option<i64>, ApiError> {
    crate::duration::since(s.as_deref().unwrap_or(""), now_ms()).map_err(ApiError::bad_request)
}

/// A recording of a session: its channel, size and SHA-256 (once finished).
#[derive(Serialize, ToSchema)]
pub struct RecordingOut {
    channel: i64,
    bytes: i64,
    sha256: Option<String>,
}

/// A session as the index holds it.
#[derive(Serialize, ToSchema)]
pub struct SessionOut {
    id: String,
    /// `ssh` or `postgres`.
    protocol: String,
    user: String,
    target: String,
    /// The unix login or `database as db_user`.
    login: String,
    client_addr: String,
    /// Unix milliseconds.
    started_ms: i64,
    ended_ms: Option<i64>,
    end_reason: Option<String>,
    exit_status: Option<i64>,
    bytes_in: i64,
    bytes_out: i64,
    recordings: Vec<RecordingOut>,
}

impl From<&SessionRow> for SessionOut {
    fn from(s: &SessionRow) -> Self {
        SessionOut {
            id: s.id.clone(),
            protocol: s.kind.clone(),
            user: s.user.clone(),
            target: s.target.clone(),
            login: s.login.clone(),
            client_addr: s.client_addr.clone(),
            started_ms: s.started_ms,
            ended_ms: s.ended_ms,
            end_reason: s.end_reason.clone(),
            exit_status: s.exit_status,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            recordings: s
                .recordings
                .iter()
                .map(|r| RecordingOut {
                    channel: r.channel,
                    bytes: r.bytes,
                    sha256: r.sha256.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize, IntoParams)]
pub struct SessionsQuery {
    /// Only this user's sessions (callers without the audit right see only their own).
    user: Option<String>,
    target: Option<String>,
    /// `ssh` or `postgres`.
    protocol: Option<String>,
    /// Started within this long: `1h`, `7d`.
    since: Option<String>,
    /// Only sessions still running.
    #[serde(default)]
    active: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SessionsOut {
    /// Oldest first; at most 1000 (the newest).
    sessions: Vec<SessionOut>,
}

/// Sessions the caller may see: their own, or every one with the audit right.
#[utoipa::path(get, path = "/v1/sessions", params(SessionsQuery), tag = "sessions",
    security(("bearer" = [])),
    responses((status = 200, body = SessionsOut), (status = 401, body = super::openapi::ErrorOut)))]
pub async fn sessions(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<SessionsOut>, ApiError> {
    let c = caller(&cx, &headers).await?;
    let filter = SessionFilter {
        user: if c.audits() {
            q.user.filter(|u| !u.is_empty())
        } else {
            Some(c.user.name.clone())
        },
        target: q.target.filter(|t| !t.is_empty()),
        since_ms: since(&q.since)?,
        active: q.active,
        limit: Some(MAX_ROWS),
    };
    let rows = cx
        .shared
        .store
        .list_sessions(&filter)
        .await
        .map_err(ApiError::store)?;
    let sessions = rows
        .iter()
        .filter(|s| {
            q.protocol
                .as_deref()
                .is_none_or(|p| p.is_empty() || s.kind == p)
        })
        .map(SessionOut::from)
        .collect();
    Ok(Json(SessionsOut { sessions }))
}

async fn visible(cx: &Ctx, c: &Caller, id: &str) -> Result<SessionRow, ApiError> {
    actions::session_for(cx, id, |user| c.audits() || user == c.user.name)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(not_found)
}

/// One session; another user's session (without the audit right) is `not_found`.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session id (36 characters)")),
    security(("bearer" = [])),
    responses((status = 200, body = SessionOut), (status = 404, body = super::openapi::ErrorOut)))]
pub async fn session(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionOut>, ApiError> {
    let c = caller(&cx, &headers).await?;
    Ok(Json(SessionOut::from(&visible(&cx, &c, &id).await?)))
}

#[derive(Serialize, ToSchema)]
pub struct KillOut {
    session: String,
    /// True: the kill was written; the session ends within a second on the `serve` that
    /// runs it. False: it had already ended.
    requested: bool,
}

/// Ends a live session, as `sessions kill` does (admin right).
#[utoipa::path(post, path = "/v1/sessions/{id}/kill", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    security(("bearer" = [])),
    responses((status = 200, body = KillOut), (status = 403, body = super::openapi::ErrorOut), (status = 404, body = super::openapi::ErrorOut)))]
pub async fn kill(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<KillOut>, ApiError> {
    let c = caller(&cx, &headers).await?;
    let s = visible(&cx, &c, &id).await?;
    c.needs(ConsoleRight::Admin)?;
    if s.ended_ms.is_some() {
        return Ok(Json(KillOut {
            session: s.id,
            requested: false,
        }));
    }
    actions::kill(&cx, c.actor(), &s, "api")
        .await
        .map_err(ApiError::store)?;
    Ok(Json(KillOut {
        session: s.id,
        requested: true,
    }))
}

#[derive(Deserialize, IntoParams)]
pub struct AuditQuery {
    /// An event type or its prefix: `auth`, `session.kill`.
    #[serde(rename = "type")]
    kind: Option<String>,
    actor: Option<String>,
    target: Option<String>,
    session: Option<String>,
    /// Within this long: `1h`, `7d`.
    since: Option<String>,
    /// Only events after this sequence number (to follow the log).
    after: Option<i64>,
    /// At most this many (the newest), up to 1000.
    limit: Option<i64>,
}

/// An audit event with its place in the chain.
#[derive(Serialize, ToSchema)]
pub struct EventOut {
    seq: i64,
    time_ms: i64,
    #[serde(rename = "type")]
    kind: String,
    actor: String,
    source: Option<String>,
    target: Option<String>,
    session_id: Option<String>,
    /// `success`, `failure`, `allow` or `deny`.
    result: String,
    #[schema(value_type = Object)]
    details: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct EventsOut {
    /// Oldest first.
    events: Vec<EventOut>,
}

/// The audit log, with the filters of `audit search` (audit right).
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), tag = "audit",
    security(("bearer" = [])),
    responses((status = 200, body = EventsOut), (status = 403, body = super::openapi::ErrorOut)))]
pub async fn audit(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<EventsOut>, ApiError> {
    let c = caller(&cx, &headers).await?;
    c.needs(ConsoleRight::Audit)?;
    let filter = AuditFilter {
        kind: q.kind,
        actor: q.actor,
        target: q.target,
        session: q.session,
        since_ms: since(&q.since)?,
        until_ms: None,
        after_seq: q.after,
        limit: Some(q.limit.unwrap_or(MAX_ROWS).clamp(1, MAX_ROWS)),
    };
    let events = cx
        .shared
        .store
        .search_audit(&filter)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(EventsOut {
        events: events
            .into_iter()
            .map(|e| EventOut {
                seq: e.seq,
                time_ms: e.event.time_ms,
                kind: e.event.kind,
                actor: e.event.actor.0,
                source: e.event.source,
                target: e.event.target,
                session_id: e.event.session_id,
                result: e.event.result.as_str().to_string(),
                details: e.event.details,
            })
            .collect(),
    }))
}

/// What to check: a user, a target, and the login (SSH) or database and database user.
#[derive(Deserialize, ToSchema)]
pub struct CheckIn {
    user: String,
    target: String,
    login: Option<String>,
    database: Option<String>,
    db_user: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckOut {
    /// `allow` or `deny`.
    decision: &'static str,
    /// The rule that allowed it, or why it was denied.
    because: String,
    /// The roles whose rules allow it.
    roles: Vec<String>,
}

/// The policy engine's decision and the rule that made it, as `access check` (admin right).
#[utoipa::path(post, path = "/v1/access/check", tag = "policy", request_body = CheckIn,
    security(("bearer" = [])),
    responses((status = 200, body = CheckOut), (status = 403, body = super::openapi::ErrorOut), (status = 404, body = super::openapi::ErrorOut)))]
pub async fn check(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<CheckOut>, ApiError> {
    let c = caller(&cx, &headers).await?;
    c.needs(ConsoleRight::Admin)?;
    let q: CheckIn = body(raw)?;
    let missing = |what: &str, name: &str| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} `{name}`"),
        )
    };
    let user = c
        .policy
        .users
        .get(&q.user)
        .ok_or_else(|| missing("user", &q.user))?;
    let target = c
        .policy
        .targets
        .get(&q.target)
        .ok_or_else(|| missing("target", &q.target))?;
    let request = match (target.kind, &q.login, &q.database, &q.db_user) {
        (TargetKind::Ssh, Some(login), _, _) => Request::Ssh { login },
        (TargetKind::Postgres, _, Some(database), Some(db_user)) => {
            Request::Postgres { database, db_user }
        }
        (TargetKind::Ssh, ..) => return Err(ApiError::bad_request("an SSH target needs `login`")),
        (TargetKind::Postgres, ..) => {
            return Err(ApiError::bad_request(
                "a PostgreSQL target needs `database` and `db_user`",
            ));
        }
    };
    let decision =
        actions::check_access(&cx, c.actor(), &c.policy, user, target, &request, "api").await;
    Ok(Json(match decision {
        Decision::Allow(g) => CheckOut {
            decision: "allow",
            because: g.rule.to_string(),
            roles: g.roles,
        },
        Decision::Deny(reason) => CheckOut {
            decision: "deny",
            because: reason.to_string(),
            roles: Vec::new(),
        },
    }))
}

#[derive(Serialize, ToSchema)]
pub struct UserStatusOut {
    user: String,
    /// `active` or `locked`.
    status: &'static str,
}

async fn set_status(
    cx: Ctx,
    headers: HeaderMap,
    name: String,
    to: UserStatus,
) -> Result<Json<UserStatusOut>, ApiError> {
    let c = caller(&cx, &headers).await?;
    c.needs(ConsoleRight::Admin)?;
    let found = actions::set_user_status(&cx, &c.actor(), &name, to)
        .await
        .map_err(ApiError::store)?;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no user `{name}`"),
        ));
    }
    Ok(Json(UserStatusOut {
        user: name,
        status: match to {
            UserStatus::Active => "active",
            UserStatus::Locked => "locked",
        },
    }))
}

/// Locks a user, as `admin user lock` (admin right): their live sessions end.
#[utoipa::path(post, path = "/v1/users/{name}/lock", tag = "policy",
    params(("name" = String, Path, description = "The user")),
    security(("bearer" = [])),
    responses((status = 200, body = UserStatusOut), (status = 403, body = super::openapi::ErrorOut), (status = 404, body = super::openapi::ErrorOut)))]
pub async fn lock(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<UserStatusOut>, ApiError> {
    set_status(cx, headers, name, UserStatus::Locked).await
}

/// Unlocks a user, as `admin user unlock` (admin right).
#[utoipa::path(post, path = "/v1/users/{name}/unlock", tag = "policy",
    params(("name" = String, Path, description = "The user")),
    security(("bearer" = [])),
    responses((status = 200, body = UserStatusOut), (status = 403, body = super::openapi::ErrorOut), (status = 404, body = super::openapi::ErrorOut)))]
pub async fn unlock(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<UserStatusOut>, ApiError> {
    set_status(cx, headers, name, UserStatus::Active).await
}
