//! `POST /v1/db/login`: a database token for one target, database and database user,
//! decided on the current policy and bound to the login it was asked with.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::{Ctx, Reply, body};
use crate::api::ApiError;
use crate::audit::{Actor, Outcome, now_ms};
use crate::credentials::token;
use crate::policy::requests::{refusal_hint, unreached_refusal};
use crate::policy::{
    Decision, Request, TargetKind, decide, default_database, may_reach, names, no_such_target,
};
use crate::store::DbToken;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DbLoginRequest {
    target: String,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    db_user: Option<String>,
}

/// A database token for one target, database and database user (defaults: the first the
/// user's roles allow), valid for the shortest `credential_ttl` that allows it.
#[utoipa::path(post, path = "/v1/db/login", tag = "login", request_body = DbLoginRequest,
    security(("bearer" = [])),
    responses((status = 200, description = "`user`, `target`, `database`, `db_user`, `dbname`, `token`, `expires`, `ttl`, `postgres_port`", body = Object),
        (status = 401, body = super::openapi::ErrorOut), (status = 403, body = super::openapi::ErrorOut)))]
pub(super) async fn db_login(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Reply {
    let (policy, user, login) = cx.bearer(&headers).await?;
    let req: DbLoginRequest = body(raw)?;
    let actor = Actor::of(&user);
    let roles = policy.roles_for(&user, &req.target);
    // A target the user may reach nothing on is answered like one that does not exist.
    let target = match policy.targets.get(&req.target) {
        Some(t) if may_reach(&roles, t) => t,
        Some(t)
            if t.kind == TargetKind::Postgres
                && let Some(refusal) = unreached_refusal(
                    &policy,
                    &user,
                    t,
                    None,
                    req.database.as_deref(),
                    req.db_user.as_deref(),
                ) =>
        {
            cx.audit_on(
                "access.deny",
                actor,
                Outcome::Deny,
                Some(t.name.clone()),
                json!({ "reason": "no role reaches the target", "kind": "postgres", "requestable": true }),
            )
            .await;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                refusal,
            ));
        }
        found => {
            let reason = match found {
                Some(_) => "no role reaches the target",
                None => "unknown target",
            };
            cx.audit_on(
                "access.deny",
                actor,
                Outcome::Deny,
                Some(names::printable(&req.target)),
                json!({ "reason": reason, "kind": "postgres" }),
            )
            .await;
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_target",
                no_such_target(&req.target),
            ));
        }
    };
    if target.kind != TargetKind::Postgres {
        cx.audit_on(
            "access.deny",
            actor,
            Outcome::Deny,
            Some(target.name.clone()),
            json!({ "reason": "wrong kind", "kind": "postgres", "target_kind": target.kind }),
        )
        .await;
        return Err(ApiError::bad_request(format!(
            "target `{}` is an {} target; `postern db login` is for postgres targets",
            target.name, target.kind
        )));
    }
    let (default_db, default_db_user) = default_database(&roles, target);
    let missing = |what: &str, flag: &str| {
        ApiError::bad_request(format!(
            "none of your roles names a default {what} for `{}`; pass {flag}",
            target.name
        ))
    };
    let database = match req.database.or(default_db) {
        Some(d) => d,
        None => return Err(missing("database", "--database")),
    };
    let db_user = match req.db_user.or(default_db_user) {
        Some(d) => d,
        None => return Err(missing("database user", "--db-user")),
    };
    for (what, name) in [("database", &database), ("database user", &db_user)] {
        names::check_requested_name(what, name)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let grant = match decide(
        &user,
        &roles,
        target,
        &Request::Postgres {
            database: &database,
            db_user: &db_user,
        },
    ) {
        Decision::Allow(g) => g,
        Decision::Deny(reason) => {
            cx.audit_on(
                "access.deny",
                actor,
                Outcome::Deny,
                Some(target.name.clone()),
                json!({ "database": database, "db_user": db_user, "reason": reason.to_string(), "decision": reason }),
            )
            .await;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "access to database `{database}` as `{db_user}` on `{}` denied: {reason}{}",
                    target.name,
                    refusal_hint(
                        &policy,
                        &user,
                        target,
                        &Request::Postgres {
                            database: &database,
                            db_user: &db_user
                        }
                    )
                ),
            ));
        }
    };
    let ttl = grant
        .settings
        .credential_ttl
        .min(grant.settings.max_session_ttl);
    let issued = now_ms();
    // Access resting on an approved request lasts no longer than its grant.
    let resting = policy.grant_end(&user, &target.name, &grant.roles);
    let expires = issued
        .saturating_add(crate::audit::secs_to_ms(ttl.as_secs()))
        .min(resting.map_or(i64::MAX, |g| g.until_ms));
    let (secret, hash) =
        token::new_token("pgt_").map_err(|e| ApiError::internal("cannot make a token", e))?;
    cx.shared
        .store
        .insert_db_token(
            &hash,
            &DbToken {
                user: user.name.clone(),
                target: target.name.clone(),
                database: database.clone(),
                db_user: db_user.clone(),
                issued_ms: issued,
                expires_ms: expires,
                cert_serial: login.cert_serial.parse().ok(),
                scram: Some(crate::credentials::scram::verifier(
                    &secret,
                    &crate::credentials::scram::salt(&user.name),
                )),
            },
        )
        .await
        .map_err(ApiError::store)?;
    cx.audit_on(
        "credential.db_token",
        actor,
        Outcome::Success,
        Some(target.name.clone()),
        json!({ "database": database, "db_user": db_user, "rule": grant.rule.to_string(), "ttl": ttl.to_string(), "expires": expires / 1000 }),
    )
    .await;
    Ok(Json(json!({
        "user": user.name,
        "target": target.name,
        "database": database,
        "db_user": db_user,
        "dbname": format!("{}/{}", target.name, database),
        "token": secret,
        "expires": expires / 1000,
        "ttl": ttl.to_string(),
        "postgres_port": cx.shared.config.postgres.listen.port(),
    })))
}
