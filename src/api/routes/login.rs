//! Logging in: a password (and one-time code) or a bot's join token, traded for a user
//! certificate and a bearer token.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::{Ctx, Reply, Verified, body};
use crate::api::ApiError;
use crate::audit::{Actor, Outcome, now_ms};
use crate::credentials::{ssh_cert, token};
use crate::duration::Dur;
use crate::policy::{Policy, User, names};
use crate::store::{ApiToken, IssuedCert};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    user: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
    /// The client's public key, OpenSSH format: what the certificate certifies.
    public_key: String,
}

/// The shortest `credential_ttl` of the user's roles (standing, granted, or requestable,
/// so someone with no standing role can log in to ask), never beyond any role's
/// `max_session_ttl`.
fn credential_ttl(policy: &Policy, user: &User) -> Option<Dur> {
    policy
        .login_roles(user)
        .iter()
        .map(|r| r.settings.credential_ttl.min(r.settings.max_session_ttl))
        .min()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BotLoginRequest {
    bot: String,
    /// The join token (`pbt_…`).
    token: String,
    /// The client's public key, OpenSSH format: what the certificate certifies.
    public_key: String,
}

/// Password (and one-time code) login: a user certificate for `public_key` and a bearer
/// token for this API, both valid for the shortest `credential_ttl` of the user's roles.
#[utoipa::path(post, path = "/v1/login", tag = "login", request_body = LoginRequest,
    responses((status = 200, description = "`user`, `roles`, `certificate`, `serial`, `valid_before`, `ttl`, `token`, `ssh_port`, `postgres_port`, `tls_ca`", body = Object),
        (status = 401, body = super::openapi::ErrorOut), (status = 429, body = super::openapi::ErrorOut)))]
pub async fn login(State(cx): State<Ctx>, raw: Result<Bytes, BytesRejection>) -> Reply {
    let req: LoginRequest = body(raw)?;
    let key = names::parse_user_key(&req.public_key)
        .map_err(|e| ApiError::bad_request(format!("public_key: {e}")))?;
    let Verified {
        policy,
        user,
        method,
        attempt,
    } = cx
        .verify_password(&req.user, &req.password, req.totp.as_deref())
        .await?;
    issue(&cx, &policy, &user, method, &key, attempt, None).await
}

/// Bot login: the join token `postern admin bot add` printed, traded for the same
/// certificate and bearer token a person gets, valid for at most the bot's cap.
#[utoipa::path(post, path = "/v1/login/bot", tag = "login", request_body = BotLoginRequest,
    responses((status = 200, description = "as `/v1/login`", body = Object),
        (status = 401, body = super::openapi::ErrorOut), (status = 429, body = super::openapi::ErrorOut)))]
pub async fn login_bot(State(cx): State<Ctx>, raw: Result<Bytes, BytesRejection>) -> Reply {
    let req: BotLoginRequest = body(raw)?;
    let key = names::parse_user_key(&req.public_key)
        .map_err(|e| ApiError::bad_request(format!("public_key: {e}")))?;
    let (policy, user, cap, attempt) = cx.verify_bot(&req.bot, &req.token).await?;
    issue(&cx, &policy, &user, "join_token", &key, attempt, Some(cap)).await
}

/// Issues a login: a user certificate for `key` and a bearer token, for the shortest
/// `credential_ttl` of the user's roles (and at most `cap`).
async fn issue(
    cx: &Ctx,
    policy: &Policy,
    user: &User,
    method: &'static str,
    key: &crate::policy::UserKey,
    attempt: crate::api::limiter::Attempt<'_>,
    cap: Option<Dur>,
) -> Reply {
    let Some(ttl) = credential_ttl(policy, user).map(|t| cap.map_or(t, |c| t.min(c))) else {
        cx.audit(
            "auth.failure",
            Actor::of(user),
            Outcome::Deny,
            json!({ "method": method, "reason": "no roles" }),
        )
        .await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no_roles",
            format!(
                "user `{}` has no roles, so no access to issue; ask an admin to grant one",
                user.name
            ),
        ));
    };
    let public = russh::keys::PublicKey::from_openssh(&key.public_key)
        .map_err(|e| ApiError::bad_request(format!("public_key: {e}")))?;
    let valid_before = ssh_cert::now_secs().saturating_add(ttl.as_secs());
    let (cert, serial) =
        ssh_cert::issue_user(&cx.shared.keys.user_ca, &public, &user.name, valid_before)
            .map_err(|e| ApiError::internal("cannot sign the certificate", e))?;
    let cert_line = cert
        .to_openssh()
        .map_err(|e| ApiError::internal("cannot encode the certificate", e))?;
    let valid_before_ms = crate::audit::secs_to_ms(valid_before);
    cx.shared
        .store
        .record_user_cert(&IssuedCert {
            serial,
            user: user.name.clone(),
            key_fingerprint: key.fingerprint.clone(),
            valid_before: i64::try_from(valid_before).unwrap_or(i64::MAX),
            issued_ms: now_ms(),
            source: cx.peer.to_string(),
        })
        .await
        .map_err(ApiError::store)?;
    let (bearer, bearer_hash) =
        token::new_token("pst_").map_err(|e| ApiError::internal("cannot make a token", e))?;
    cx.shared
        .store
        .insert_api_token(
            &bearer_hash,
            &ApiToken {
                user: user.name.clone(),
                cert_serial: serial.to_string(),
                expires_ms: valid_before_ms,
            },
        )
        .await
        .map_err(ApiError::store)?;
    attempt.succeeded();
    cx.audit(
        "auth.login",
        Actor::of(user),
        Outcome::Success,
        json!({
            "method": method,
            "serial": serial.to_string(),
            "key_fingerprint": key.fingerprint,
            "ttl": ttl.to_string(),
            "valid_before": valid_before,
        }),
    )
    .await;
    Ok(Json(json!({
        "user": user.name,
        "roles": user.roles,
        "certificate": cert_line.trim(),
        "serial": serial.to_string(),
        "valid_before": valid_before,
        "ttl": ttl.to_string(),
        "token": bearer,
        "ssh_port": cx.shared.config.ssh.listen.port(),
        "postgres_port": cx.shared.config.postgres.listen.port(),
        "tls_ca": cx.shared.api.tls_ca,
    })))
}

impl Ctx {
    /// The join-token check of a bot login: throttled like passwords (per bot and
    /// source), compared in constant time, failures audited, locked bots refused.
    async fn verify_bot(
        &self,
        name: &str,
        presented: &str,
    ) -> Result<(Policy, User, Dur, crate::api::limiter::Attempt<'_>), ApiError> {
        let policy = self.policy().await?;
        let user = policy.users.get(name).filter(|u| u.bot).cloned();
        let known = user.as_ref().map(|u| u.name.clone());
        let attempt = match self.shared.api.limiter.attempt(
            crate::api::Door::Password,
            known.as_deref(),
            self.peer.ip(),
        ) {
            Ok(a) => a,
            Err(wait) => return Err(self.rate_limited(name, wait).await),
        };
        let stored = match &user {
            Some(u) => self
                .shared
                .store
                .bot_token(&u.name)
                .await
                .map_err(ApiError::store)?,
            None => None,
        };
        let presented = token::hash(presented);
        let matches = stored.as_ref().is_some_and(|t| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                presented.as_bytes(),
                t.hash.as_bytes(),
            )
            .is_ok()
        });
        let (Some(user), Some(stored)) = (user.filter(|_| matches), stored.filter(|_| matches))
        else {
            let (actor, reason) = match &known {
                Some(n) => (Actor(format!("bot:{n}")), "wrong or revoked join token"),
                None => (Actor("unknown".into()), "unknown bot"),
            };
            self.audit(
                "auth.failure",
                actor,
                Outcome::Failure,
                json!({ "method": "join_token", "reason": reason, "user": names::printable(name) }),
            )
            .await;
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "wrong bot name or join token",
            ));
        };
        if user.status == crate::policy::UserStatus::Locked {
            self.audit(
                "auth.failure",
                Actor::of(&user),
                Outcome::Deny,
                json!({ "method": "join_token", "reason": "user locked" }),
            )
            .await;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "user_locked",
                format!("bot `{}` is locked; ask an admin", user.name),
            ));
        }
        Ok((
            policy,
            user,
            Dur::from_secs(stored.credential_ttl_secs),
            attempt,
        ))
    }
}
