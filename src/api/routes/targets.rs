//! `GET /v1/targets`: what the caller may reach now (`postern ls`).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;

use super::Ctx;
use crate::api::ApiError;

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
    responses((status = 200, body = TargetsOut), (status = 401, body = super::openapi::ErrorOut)))]
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
