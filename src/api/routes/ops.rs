//! The console's operations as JSON, for scripts: sessions, the audit log, the access
//! check, lock/unlock and kill, behind the bearer token of `postern login`, with the same
//! console rights and the same actions (`api::actions`) as the pages. Documented by the
//! OpenAPI document at `/v1/openapi.json`, generated from these handlers.

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
    responses((status = 200, body = SessionsOut), (status = 401, body = ErrorOut)))]
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
    responses((status = 200, body = SessionOut), (status = 404, body = ErrorOut)))]
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
    responses((status = 200, body = KillOut), (status = 403, body = ErrorOut), (status = 404, body = ErrorOut)))]
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
    responses((status = 200, body = EventsOut), (status = 403, body = ErrorOut)))]
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
    responses((status = 200, body = CheckOut), (status = 403, body = ErrorOut), (status = 404, body = ErrorOut)))]
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
    responses((status = 200, body = UserStatusOut), (status = 403, body = ErrorOut), (status = 404, body = ErrorOut)))]
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
    responses((status = 200, body = UserStatusOut), (status = 403, body = ErrorOut), (status = 404, body = ErrorOut)))]
pub async fn unlock(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<UserStatusOut>, ApiError> {
    set_status(cx, headers, name, UserStatus::Active).await
}

/// A target the caller may reach, and with what.
#[derive(Serialize, ToSchema)]
pub struct TargetOut {
    name: String,
    /// `ssh` or `postgres`.
    kind: String,
    /// SSH: the logins (`*`: any login a rule allows).
    logins: Vec<String>,
    /// PostgreSQL: the databases and database users.
    databases: Vec<String>,
    db_users: Vec<String>,
    /// When the access rests on approved requests only: when the last of them ends
    /// (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    granted_until: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct TargetsOut {
    targets: Vec<TargetOut>,
    /// postern's SSH and PostgreSQL ports, to connect with.
    ssh_port: u16,
    postgres_port: u16,
    /// When the caller's login ends (Unix seconds).
    expires: i64,
}

/// The targets the caller's roles reach now, with the logins or databases on each
/// (`postern ls`).
#[utoipa::path(get, path = "/v1/targets", tag = "policy", security(("bearer" = [])),
    responses((status = 200, body = TargetsOut), (status = 401, body = ErrorOut)))]
pub async fn targets(
    State(cx): State<Ctx>,
    headers: HeaderMap,
) -> Result<Json<TargetsOut>, ApiError> {
    let (policy, user, token) = cx.bearer(&headers).await?;
    let targets = policy
        .targets
        .values()
        .filter_map(|t| {
            let roles = policy.roles_for(&user, &t.name);
            if !crate::policy::may_reach(&roles, t) {
                return None;
            }
            let r = crate::policy::reach(&user, &roles, t);
            Some(TargetOut {
                name: t.name.clone(),
                kind: t.kind.to_string(),
                logins: r.logins,
                databases: r.databases,
                db_users: r.db_users,
                granted_until: policy.reach_until(&user, t).map(|g| g.until_ms / 1000),
            })
        })
        .collect();
    Ok(Json(TargetsOut {
        targets,
        ssh_port: cx.shared.config.ssh.listen.port(),
        postgres_port: cx.shared.config.postgres.listen.port(),
        expires: token.expires_ms / 1000,
    }))
}

/// Every error: a stable machine code and a message for people.
#[derive(Serialize, ToSchema)]
pub struct ErrorOut {
    code: String,
    message: String,
    /// Seconds to wait (`rate_limited`).
    retry_after: Option<u64>,
}

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The token `postern login` prints (or POST /v1/login returns)",
                ))
                .build(),
        );
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", scheme);
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "postern", description = "postern's HTTPS API: the console's operations as JSON."),
    paths(super::ready, super::login::login, super::login::login_bot, super::whoami, super::db::db_login, targets, sessions, session, kill, audit, check, lock, unlock,
        super::requests::create, super::requests::list, super::requests::roles, super::requests::approve,
        super::requests::deny, super::requests::cancel, super::requests::revoke,
        super::reviews::start, super::reviews::list, super::reviews::items, super::reviews::certify,
        super::reviews::revoke, super::reviews::report),
    components(schemas(ErrorOut)),
    modifiers(&Bearer)
)]
pub(super) struct Doc;

/// `GET /v1/openapi.json`: this API, described from its handlers.
pub async fn openapi() -> Result<([(axum::http::HeaderName, &'static str); 1], String), ApiError> {
    use utoipa::OpenApi;
    let json = Doc::openapi()
        .to_json()
        .map_err(|e| ApiError::internal("cannot render the OpenAPI document", e))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    ))
}
