//! The `/v1/` endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

mod db;
mod login;
mod openapi;
mod ops;
mod requests;
mod reviews;
mod targets;

use super::{ApiError, Door};
use crate::audit::{Actor, AuditEvent, Outcome, now_ms};
use crate::credentials::{password, ssh_cert, token, totp};
use crate::policy::{Policy, User, UserStatus, names};
use crate::server::Shared;
use crate::store::ApiToken;

#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
}

type Reply = Result<Json<Value>, ApiError>;

pub fn router(shared: Arc<Shared>, peer: SocketAddr) -> Router {
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/v1/ready", get(ready))
        .route("/v1/login", post(login::login))
        .route("/v1/login/bot", post(login::login_bot))
        .route("/v1/whoami", get(whoami))
        .route("/v1/db/login", post(db::db_login))
        .route("/v1/targets", get(targets::targets))
        .route("/v1/sessions", get(ops::sessions))
        .route("/v1/sessions/{id}", get(ops::session))
        .route("/v1/sessions/{id}/kill", post(ops::kill))
        .route("/v1/audit", get(ops::audit))
        .route("/v1/access/check", post(ops::check))
        .route("/v1/users/{name}/lock", post(ops::lock))
        .route("/v1/users/{name}/unlock", post(ops::unlock))
        .route("/v1/requests", get(requests::list).post(requests::create))
        .route("/v1/requests/roles", get(requests::roles))
        .route("/v1/requests/{id}/approve", post(requests::approve))
        .route("/v1/requests/{id}/deny", post(requests::deny))
        .route("/v1/requests/{id}/cancel", post(requests::cancel))
        .route("/v1/requests/{id}/revoke", post(requests::revoke))
        .route("/v1/reviews", get(reviews::list).post(reviews::start))
        .route("/v1/reviews/items", get(reviews::items))
        .route("/v1/reviews/items/{id}/certify", post(reviews::certify))
        .route("/v1/reviews/items/{id}/revoke", post(reviews::revoke))
        .route("/v1/reviews/{id}/report", get(reviews::report))
        .route("/v1/openapi.json", get(openapi::openapi))
        .route("/metrics", get(metrics))
        .merge(super::console::router())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; the API lives under /v1/",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(super::body_in_time))
        .with_state(Ctx { shared, peer })
}

/// Readiness for a load balancer: 200 when the store takes a write within two seconds
/// (new sessions can be decided and recorded) and this replica's lease is current, 503
/// with the reason otherwise. `/v1/health` says
/// only that the process serves.
#[utoipa::path(get, path = "/v1/ready", tag = "health",
    responses((status = 200, description = "`status`: `ready`, `store`: `ok`"), (status = 503, body = openapi::ErrorOut)))]
async fn ready(State(cx): State<Ctx>) -> Reply {
    if let Some(age) = cx.shared.lease_lapsed() {
        return Err(not_ready(&format!(
            "this replica could not renew its lease in the store for {} s; the others take it for dead",
            age.as_secs()
        )));
    }
    match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        cx.shared.store.writable(),
    )
    .await
    {
        Ok(Ok(_)) => Ok(Json(json!({ "status": "ready", "store": "ok" }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store failed");
            Err(not_ready(
                "postern cannot read its store; new sessions are refused until it can",
            ))
        }
        Err(_) => Err(not_ready(
            "postern's store did not answer within 2 s; new sessions are refused until it does",
        )),
    }
}

fn not_ready(why: &str) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why)
}

/// Prometheus metrics: counts by protocol, method, result and reason, never by who or
/// where (`crate::metrics`).
async fn metrics(State(cx): State<Ctx>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&cx.shared.live.count_by_protocol()),
    )
}

/// Request bodies are small JSON documents.
pub(super) const MAX_BODY: usize = 64 * 1024;

/// A numeric id from the path (a request, a review item or campaign), with a JSON error.
fn path_id(s: &str) -> Result<i64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(format!("`{}` is not a number", crate::printable::cell(s)))
    })
}

/// Parses a JSON body into `T`, with an error that says what is wrong with it.
fn body<T: DeserializeOwned>(raw: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = raw.map_err(|e| {
        ApiError::new(
            e.status(),
            "bad_request",
            format!(
                "cannot read the request body ({}); bodies are JSON of at most {} KiB",
                e.body_text(),
                MAX_BODY / 1024
            ),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

impl Ctx {
    pub(super) async fn audit(&self, kind: &str, actor: Actor, result: Outcome, details: Value) {
        self.audit_on(kind, actor, result, None, details).await;
    }

    pub(super) async fn audit_on(
        &self,
        kind: &str,
        actor: Actor,
        result: Outcome,
        target: Option<String>,
        details: Value,
    ) {
        let mut e = AuditEvent::new(kind, &actor, result, details);
        e.source = Some(self.peer.to_string());
        e.target = target;
        self.shared.audit(e).await;
    }

    async fn policy(&self) -> Result<Policy, ApiError> {
        self.shared
            .store
            .load_policy()
            .await
            .map_err(ApiError::store)
    }

    /// A failed login: counted for throttling, audited, answered without saying which part
    /// was wrong.
    /// A login refused unchecked because of earlier failures: audited, 429 with when to
    /// try again.
    async fn rate_limited(&self, user: &str, wait: std::time::Duration) -> ApiError {
        let secs = wait.as_secs() + 1;
        self.audit(
            "auth.rate_limited",
            Actor("unknown".into()),
            Outcome::Deny,
            json!({ "method": "password", "user": names::printable(user), "retry_after": secs }),
        )
        .await;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed logins; try again in {secs} s"),
        );
        e.retry_after = Some(secs);
        e
    }

    async fn login_failed(&self, user: &str, known: bool, reason: &str, err: ApiError) -> ApiError {
        let actor = if known {
            Actor::user(user)
        } else {
            Actor("unknown".into())
        };
        self.audit(
            "auth.failure",
            actor,
            Outcome::Failure,
            json!({ "method": "password", "reason": reason, "user": names::printable(user) }),
        )
        .await;
        err
    }

    /// The user behind `Authorization: Bearer …`, still active.
    async fn bearer(&self, headers: &HeaderMap) -> Result<(Policy, User, ApiToken), ApiError> {
        let unauthorized = |code, m: String| ApiError::new(StatusCode::UNAUTHORIZED, code, m);
        let Some(tok) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Err(unauthorized(
                "not_logged_in",
                "this request needs a login; run postern login".into(),
            ));
        };
        let Some(t) = self
            .shared
            .store
            .api_token(&token::hash(tok.trim()))
            .await
            .map_err(ApiError::store)?
        else {
            return Err(unauthorized(
                "invalid_token",
                "postern does not know this login; run postern login".into(),
            ));
        };
        if t.expires_ms <= now_ms() {
            return Err(unauthorized(
                "credential_expired",
                crate::credentials::expired_message(t.expires_ms),
            ));
        }
        let serial = t.cert_serial.parse::<u64>().unwrap_or(0);
        if self
            .shared
            .store
            .is_revoked(serial)
            .await
            .map_err(ApiError::store)?
        {
            return Err(unauthorized(
                "credential_revoked",
                format!("your postern credential (serial {serial}) was revoked; run postern login"),
            ));
        }
        let policy = self.policy().await?;
        let user = match policy.users.get(&t.user) {
            Some(u) if u.status == UserStatus::Active => u.clone(),
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "user_locked",
                    format!("user `{}` is locked; ask an admin", t.user),
                ));
            }
            None => {
                return Err(unauthorized(
                    "invalid_token",
                    format!("user `{}` no longer exists", t.user),
                ));
            }
        };
        Ok((policy, user, t))
    }
}

/// A user who proved their password (and one-time code when enrolled).
pub(super) struct Verified<'a> {
    pub policy: Policy,
    pub user: User,
    /// `password` or `password+totp`.
    pub method: &'static str,
    /// Settled as a success once the caller has issued what the login is for.
    pub attempt: super::limiter::Attempt<'a>,
}

impl Ctx {
    /// The password (and one-time code) check shared by every password login: throttled
    /// per user and source, failures audited without saying which part was wrong, locked
    /// users refused.
    pub(super) async fn verify_password(
        &self,
        name: &str,
        password: &str,
        totp: Option<&str>,
    ) -> Result<Verified<'_>, ApiError> {
        let ip = self.peer.ip();
        let policy = self.policy().await?;
        let user = policy.users.get(name).cloned();
        let known = user.as_ref().map(|u| u.name.as_str());
        let attempt = match self.shared.api.limiter.attempt(Door::Password, known, ip) {
            Ok(a) => a,
            Err(wait) => return Err(self.rate_limited(name, wait).await),
        };
        let hash = match &user {
            Some(u) => self
                .shared
                .store
                .password_hash(&u.name)
                .await
                .map_err(ApiError::store)?,
            None => None,
        };
        let Ok(Ok(permit)) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.shared.api.verifiers.acquire(),
        )
        .await
        else {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "postern is busy checking other logins; try again in a few seconds",
            );
            e.retry_after = Some(2);
            return Err(e);
        };
        let pw = password.to_string();
        let verified = tokio::task::spawn_blocking(move || match &hash {
            Some(h) => password::verify(&pw, h),
            None => {
                password::verify_nothing(&pw);
                false
            }
        })
        .await
        .unwrap_or(false);
        drop(permit);
        let wrong = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "wrong user name or password",
            )
        };
        let known = user.is_some();
        let Some(user) = user.filter(|_| verified) else {
            let reason = if known {
                "wrong password"
            } else {
                "unknown user"
            };
            return Err(self.login_failed(name, known, reason, wrong()).await);
        };
        if user.bot {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bot",
                format!(
                    "`{}` is a bot: bots log in with their join token (postern login --bot), never a password or the console",
                    user.name
                ),
            ));
        }
        if user.status == UserStatus::Locked {
            self.audit(
                "auth.failure",
                Actor::user(&user.name),
                Outcome::Deny,
                json!({ "method": "password", "reason": "user locked" }),
            )
            .await;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "user_locked",
                format!("user `{}` is locked; ask an admin", user.name),
            ));
        }
        let mut method = "password";
        if let Some((sealed, _)) = self
            .shared
            .store
            .totp(&user.name)
            .await
            .map_err(ApiError::store)?
        {
            method = "password+totp";
            let Some(code) = totp else {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "totp_required",
                    "this account needs a one-time code from its authenticator app",
                ));
            };
            let secret = self
                .shared
                .keys
                .master_key
                .open("totp", &sealed)
                .map_err(|e| ApiError::internal("cannot unseal a TOTP secret", e))?;
            let invalid = || {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "totp_invalid",
                    "the one-time code is wrong or was already used",
                )
            };
            let Some(step) = totp::check(&secret, code, ssh_cert::now_secs()) else {
                return Err(self
                    .login_failed(&user.name, true, "wrong one-time code", invalid())
                    .await);
            };
            let fresh = self
                .shared
                .store
                .use_totp_step(&user.name, i64::try_from(step).unwrap_or(i64::MAX))
                .await
                .map_err(ApiError::store)?;
            if !fresh {
                return Err(self
                    .login_failed(&user.name, true, "one-time code reused", invalid())
                    .await);
            }
        }
        Ok(Verified {
            policy,
            user,
            method,
            attempt,
        })
    }
}

/// Who the bearer token belongs to, and until when.
#[utoipa::path(get, path = "/v1/whoami", tag = "login", security(("bearer" = [])),
    responses((status = 200, description = "`user`, `roles`, `cert_serial`, `expires`", body = Object),
        (status = 401, body = openapi::ErrorOut)))]
pub(super) async fn whoami(State(cx): State<Ctx>, headers: HeaderMap) -> Reply {
    let (_, user, t) = cx.bearer(&headers).await?;
    Ok(Json(json!({
        "user": user.name,
        "roles": user.roles,
        "cert_serial": t.cert_serial,
        "expires": t.expires_ms / 1000,
    })))
}
