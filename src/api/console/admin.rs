//! The admins' pages: users, roles and targets as the policy holds them, locking and
//! unlocking users, and the access check (`postern access check` in the browser). Every
//! page reads the same policy the servers decide with; changes go through the same
//! `update_policy` as the CLI, so each is a `policy.*` audit event with the admin as actor.

use axum::Form;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::super::routes::Ctx;
use super::auth::{CsrfForm, Viewer, cross_site, refused, refused_to, viewer};
use super::html::page;
use crate::policy::{Decision, Request, TargetKind, UserStatus};

/// The viewer, when they hold the console's admin right.
async fn admin(cx: &Ctx, headers: &HeaderMap) -> Result<Viewer, Response> {
    let v = viewer(cx, headers).await?;
    if !v.administers() {
        return Err(refused_to(
            &v,
            StatusCode::FORBIDDEN,
            "Refused",
            "This page needs the console's admin right.",
        ));
    }
    Ok(v)
}

fn missing(v: &Viewer, what: &str) -> Response {
    refused_to(
        v,
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("No such {what}."),
    )
}

fn status(s: UserStatus) -> &'static str {
    match s {
        UserStatus::Active => "active",
        UserStatus::Locked => "locked",
    }
}

pub async fn users(State(cx): State<Ctx>, headers: HeaderMap) -> Response {
    let v = match admin(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let body = html! {
        table.users {
            thead { tr { th { "User" } th { "Status" } th { "Roles" } th { "Keys" } } }
            tbody {
                @for u in v.policy.users.values() {
                    tr {
                        td { a href={ "/users/" (u.name) } { (u.name) } }
                        td class=(status(u.status)) { (status(u.status)) }
                        td { (u.roles.iter().cloned().collect::<Vec<_>>().join(", ")) }
                        td { (u.keys.len()) }
                    }
                }
            }
        }
    };
    page(Some(&v), "Users", body).into_response()
}

pub async fn user(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let v = match admin(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(u) = v.policy.users.get(&name) else {
        return missing(&v, "user");
    };
    let (action, label) = match u.status {
        UserStatus::Active => ("lock", "Lock"),
        UserStatus::Locked => ("unlock", "Unlock"),
    };
    let rights = v.policy.console_rights(u);
    let body = html! {
        dl.facts {
            dt { "Status" } dd.status { (status(u.status)) }
            dt { "Roles" } dd {
                @for r in &u.roles { a href={ "/roles/" (r) } { (r) } " " }
            }
            dt { "Console" } dd {
                @for r in &rights { span.badge { (r.as_str()) } " " }
            }
        }
        form.lock method="post" action={ "/users/" (u.name) "/" (action) } {
            input type="hidden" name="csrf" value=(v.csrf);
            button type="submit" { (label) " " (u.name) }
        }
        h2 { "Keys" }
        @if u.keys.is_empty() { p.empty { "No keys." } }
        ul.keys { @for k in &u.keys { li { code { (k.fingerprint) } " " (k.comment) } } }
        p { a href={ "/sessions?user=" (u.name) } { "Sessions of " (u.name) } }
    };
    page(Some(&v), &format!("User {}", u.name), body).into_response()
}

async fn set_status(
    cx: Ctx,
    headers: HeaderMap,
    name: String,
    form: CsrfForm,
    to: UserStatus,
) -> Response {
    let v = match admin(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if cross_site(&headers) {
        return refused(StatusCode::FORBIDDEN, "This form came from another site.");
    }
    if let Err(r) = v.check_csrf(&form.csrf) {
        return r;
    }
    if !v.policy.users.contains_key(&name) {
        return missing(&v, "user");
    }
    match crate::api::actions::set_user_status(&cx, &v.actor(), &name, to).await {
        Ok(_) => Redirect::to(&format!("/users/{name}")).into_response(),
        Err(e) => refused_to(
            &v,
            StatusCode::CONFLICT,
            "Not changed",
            &format!("The user was not changed: {e}"),
        ),
    }
}

pub async fn lock(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    form: Form<CsrfForm>,
) -> Response {
    set_status(cx, headers, name, form.0, UserStatus::Locked).await
}

pub async fn unlock(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    form: Form<CsrfForm>,
) -> Response {
    set_status(cx, headers, name, form.0, UserStatus::Active).await
}

pub async fn roles(State(cx): State<Ctx>, headers: HeaderMap) -> Response {
    let v = match admin(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let body = html! {
        table.roles {
            thead { tr { th { "Role" } th { "Allow rules" } th { "Deny rules" } th { "Credential TTL" } th { "Session TTL" } th { "Console" } } }
            tbody {
                @for r in v.policy.roles.values() {
                    tr {
                        td { a href={ "/roles/" (r.name) } { (r.name) } }
                        td { (r.allow.len()) }
                        td { (r.deny.len()) }
                        td { (r.settings.credential_ttl) }
                        td { (r.settings.max_session_ttl) }
                        td { @for c in &r.settings.console { span.badge { (c.as_str()) } " " } }
                    }
                }
            }
        }
    };
    page(Some(&v), "Roles", body).into_response()
}

pub async fn role(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let v = match admin(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(r) = v.policy.roles.get(&name) else {
        return missing(&v, "role");
    };
    let s = &r.settings;
    let members: Vec<&str> = v
        .policy
        .users
        .values()
        .filter(|u| u.roles.contains(&r.name))
        .map(|u| u.name.as_str())
        .collect();
    let rules = |effect: &str, list: &[crate::policy::Rule]| {
        html! {
            h2 { (effect) " rules" }
            @if list.is_empty() { p.empty { "None." } }
            ol.rules {
                @for rule in list {
                    li { code { (serde_json::to_string(rule).unwrap_or_default()) } }
                }
            }
        }
    };
    let body = html! {
        dl.facts {
            dt { "Credential TTL" } dd { (s.credential_ttl) }
            dt { "Session TTL" } dd { (s.max_session_ttl) }
            dt { "Idle timeout" } dd { (s.idle_timeout) }
            dt { "Port forwarding" } dd { (on_off(s.port_forwarding)) }
            dt { "File transfer" } dd { (on_off(s.file_transfer)) }
            dt { "Parameters in transcripts" } dd { (if s.redact_parameters { "redacted" } else { "recorded" }) }
            dt { "Members" } dd { @for m in &members { a href={ "/users/" (m) } { (m) } " " } }
        }
        (rules("Allow", &r.allow))
        (rules("Deny", &r.deny))
    };
    page(Some(&v), &format!("Role {}", r.name), body).into_response()
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

pub async fn targets(State(cx): State<Ctx>, headers: HeaderMap) -> Response {
    let v = match admin(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let body = html! {
        table.targets {
            thead { tr { th { "Target" } th { "Kind" } th { "Address" } th { "Labels" } } }
            tbody {
                @for t in v.policy.targets.values() {
                    tr {
                        td { a href={ "/targets/" (t.name) } { (t.name) } }
                        td { (t.kind.to_string()) }
                        td { code { (t.address) } }
                        td { @for (k, val) in &t.labels { code { (k) "=" (val) } " " } }
                    }
                }
            }
        }
    };
    page(Some(&v), "Targets", body).into_response()
}

pub async fn target(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let v = match admin(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(t) = v.policy.targets.get(&name) else {
        return missing(&v, "target");
    };
    // Roles with a rule that selects it, and the users who hold them.
    let roles: Vec<&str> = v
        .policy
        .roles
        .values()
        .filter(|r| crate::policy::may_reach(&[r], t))
        .map(|r| r.name.as_str())
        .collect();
    let users: Vec<&str> = v
        .policy
        .users
        .values()
        .filter(|u| u.roles.iter().any(|r| roles.contains(&r.as_str())))
        .map(|u| u.name.as_str())
        .collect();
    let body = html! {
        dl.facts {
            dt { "Kind" } dd { (t.kind.to_string()) }
            dt { "Address" } dd { code { (t.address) } }
            dt { "Labels" } dd { @for (k, val) in &t.labels { code { (k) "=" (val) } " " } }
            @if let Some(k) = &t.host_key { dt { "Host key" } dd { code.wrap { (k) } } }
            @if let Some(m) = &t.tls_mode {
                dt { "TLS" } dd { (serde_json::to_string(m).unwrap_or_default().trim_matches('"')) }
            }
            dt { "Reached through roles" } dd { @for r in &roles { a href={ "/roles/" (r) } { (r) } " " } }
            dt { "By users" } dd { @for u in &users { a href={ "/users/" (u) } { (u) } " " } }
        }
        p { a href={ "/sessions?target=" (t.name) } { "Sessions on " (t.name) } }
    };
    page(Some(&v), &format!("Target {}", t.name), body).into_response()
}

#[derive(Deserialize, Default)]
pub struct CheckQuery {
    #[serde(default)]
    user: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    database: String,
    #[serde(default)]
    db_user: String,
}

/// `GET /access`: the form, and with a question in the query, the decision and the rule
/// that made it (an `access.check` event, as from the CLI).
pub async fn check(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<CheckQuery>,
) -> Response {
    let v = match admin(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let answer = if q.user.is_empty() {
        None
    } else {
        Some(answer(&cx, &v, &q).await)
    };
    let p = &v.policy;
    let body = html! {
        form.access method="get" action="/access" {
            label { "User " select name="user" {
                @for u in p.users.keys() { option value=(u) selected[*u == q.user] { (u) } }
            } }
            label { "Target " select name="target" {
                @for t in p.targets.values() {
                    option value=(t.name) selected[t.name == q.target] { (t.name) " (" (t.kind.to_string()) ")" }
                }
            } }
            label { "SSH login " input name="login" value=(q.login); }
            label { "Database " input name="database" value=(q.database); }
            label { "Database user " input name="db_user" value=(q.db_user); }
            button type="submit" { "Check" }
        }
        @if let Some(a) = answer { (a) }
    };
    page(Some(&v), "Access check", body).into_response()
}

async fn answer(cx: &Ctx, v: &Viewer, q: &CheckQuery) -> Markup {
    let p = &v.policy;
    let (Some(user), Some(target)) = (p.users.get(&q.user), p.targets.get(&q.target)) else {
        return html! { p.error { "Choose a user and a target that exist." } };
    };
    let request = match target.kind {
        TargetKind::Ssh if !q.login.is_empty() => Request::Ssh { login: &q.login },
        TargetKind::Postgres if !q.database.is_empty() && !q.db_user.is_empty() => {
            Request::Postgres {
                database: &q.database,
                db_user: &q.db_user,
            }
        }
        TargetKind::Ssh => return html! { p.error { "An SSH target needs a login." } },
        TargetKind::Postgres => {
            return html! { p.error { "A PostgreSQL target needs a database and a database user." } };
        }
    };
    let decision =
        crate::api::actions::check_access(cx, v.actor(), p, user, target, &request, "console")
            .await;
    match decision {
        Decision::Allow(g) => html! {
            div.decision.allow {
                p { strong { "ALLOW" } " " (user.name) " → " (request.to_string()) " on " (target.name) }
                p { "Allowed by " span.rule { (g.rule.to_string()) } }
                p { "Roles " (g.roles.join(", ")) "; credential TTL " (g.settings.credential_ttl)
                    ", session TTL " (g.settings.max_session_ttl) ", idle timeout " (g.settings.idle_timeout) }
            }
        },
        Decision::Deny(reason) => html! {
            div.decision.deny {
                p { strong { "DENY" } " " (user.name) " → " (request.to_string()) " on " (target.name) }
                p { "Because " span.rule { (reason.to_string()) } }
            }
        },
    }
}
