//! Access reviews in the browser: the items waiting for the viewer with Certify and
//! Revoke, campaigns (audit right) with their reports, and starting one (admin right).
//! The same store calls as `/v1/reviews` and `postern review`.

use axum::Form;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::super::routes::Ctx;
use super::auth::{form_viewer, not_done, refused_to, store_down, viewer};
use super::html::{page, when};
use crate::audit::{AuditEvent, Outcome};
use crate::config::OnDue;
use crate::duration::Dur;
use crate::policy::reviews::{Scope, may_decide};
use crate::store::NewCampaign;

#[derive(Deserialize)]
pub struct StartForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    due: String,
}

#[derive(Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

pub async fn list(State(cx): State<Ctx>, headers: HeaderMap) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let store = &cx.shared.store;
    let open = match store.review_items(None).await {
        Ok(i) => i,
        Err(e) => return store_down(e),
    };
    let mine: Vec<_> = open
        .iter()
        .filter(|i| may_decide(&v.policy, &v.user, &i.user, &i.role))
        .collect();
    let campaigns = if v.audits() {
        match store.review_campaigns().await {
            Ok(c) => c,
            Err(e) => return store_down(e),
        }
    } else {
        Vec::new()
    };
    let ms = |m: Option<i64>| m.map(when).unwrap_or_else(|| "–".into());
    let body = html! {
        section.review-items {
            h2 { "Waiting for your decision" }
            @if mine.is_empty() { p.empty { "Nothing to review." } } @else {
                table.items {
                    thead { tr { th { "#" } th { "User" } th { "Role" } th { "Granted" } th { "Last used" } th {} th {} } }
                    tbody { @for i in &mine {
                        tr.item data-id=(i.id) {
                            td { (i.id) } td { (i.user) } td { (i.role) }
                            td { (ms(i.granted_ms)) } td { (ms(i.last_used_ms)) }
                            td { @if i.stale { span.badge.stale { "stale" } } }
                            td {
                                form.act method="post" action={ "/reviews/items/" (i.id) "/certify" } {
                                    input type="hidden" name="csrf" value=(v.csrf);
                                    input type="text" name="reason" placeholder="reason" maxlength="1000";
                                    button type="submit" class="certify" { "Certify" }
                                }
                                form.act method="post" action={ "/reviews/items/" (i.id) "/revoke" } {
                                    input type="hidden" name="csrf" value=(v.csrf);
                                    input type="text" name="reason" placeholder="reason (required)" required maxlength="1000";
                                    button type="submit" class="revoke" { "Revoke" }
                                }
                            }
                        }
                    } }
                }
            }
        }
        @if v.administers() {
            section.start {
                h2 { "Start a review" }
                form.start method="post" action="/reviews" {
                    input type="hidden" name="csrf" value=(v.csrf);
                    label { "Name " input type="text" name="name" maxlength="100"; }
                    label { "Scope " input type="text" name="scope" placeholder="role=NAME or target-label=KEY=VALUE"; }
                    label { "Due in " input type="text" name="due" value=(cx.shared.config.review.due) size="6"; }
                    button type="submit" { "Start" }
                }
            }
        }
        @if v.audits() {
            section.campaigns {
                h2 { "Campaigns" }
                table.campaigns {
                    thead { tr { th { "#" } th { "Name" } th { "Scope" } th { "Due" } th { "Items" } th {} } }
                    tbody { @for c in &campaigns {
                        tr {
                            td { (c.id) } td { (c.name) } td { (c.scope) } td { (when(c.due_ms)) }
                            td { @for (k, n) in &c.counts { (k) " " (n) " " } }
                            td { a href={ "/reviews/" (c.id) "/report.csv" } { "Report (CSV)" } }
                        }
                    } }
                }
            }
        }
    };
    page(Some(&v), "Reviews", body).into_response()
}

pub async fn start(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Form(f): Form<StartForm>,
) -> Response {
    let v = match form_viewer(&cx, &headers, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let bad = |m: String| refused_to(&v, StatusCode::BAD_REQUEST, "Not started", &m);
    if !v.administers() {
        return refused_to(
            &v,
            StatusCode::FORBIDDEN,
            "Refused",
            "Starting a review needs the console's admin right.",
        );
    }
    let scope = match Scope::parse(&f.scope) {
        Ok(s) => s,
        Err(e) => return bad(e.to_string()),
    };
    let cfg = &cx.shared.config.review;
    let due = match super::html::nonempty(&f.due).map(|d| d.parse::<Dur>()) {
        None => cfg.due,
        Some(Ok(d)) => d,
        Some(Err(e)) => return bad(e.to_string()),
    };
    let now = crate::clock::now_ms();
    let name: String = f.name.trim().chars().take(100).collect();
    let c = NewCampaign {
        name: if name.is_empty() {
            format!("review {}", when(now))
        } else {
            name
        },
        scope,
        due,
        revoke_at_due: cfg.on_due == OnDue::Revoke,
        stale_after: cfg.stale_after,
    };
    match cx.shared.store.start_review(&v.actor(), &c, now).await {
        Ok(_) => Redirect::to("/reviews").into_response(),
        Err(e) => store_down(e),
    }
}

pub async fn decide(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((id, verb)): UrlPath<(String, String)>,
    Form(f): Form<DecideForm>,
) -> Response {
    let v = match form_viewer(&cx, &headers, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<i64>() else {
        return refused_to(
            &v,
            StatusCode::NOT_FOUND,
            "Not found",
            "No such review item.",
        );
    };
    let certify = match verb.as_str() {
        "certify" => true,
        "revoke" => false,
        _ => return refused_to(&v, StatusCode::NOT_FOUND, "Not found", "No such action."),
    };
    let done = cx
        .shared
        .store
        .decide_review_item(&v.user.name, id, certify, &f.reason, crate::clock::now_ms())
        .await;
    match done {
        Ok(_) => Redirect::to("/reviews").into_response(),
        Err(e) => not_done(&v, e),
    }
}

/// A campaign's report as a CSV download (audit right), audited as `review.report`.
pub async fn report(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<i64>() else {
        return refused_to(&v, StatusCode::NOT_FOUND, "Not found", "No such campaign.");
    };
    if !v.audits() {
        return refused_to(
            &v,
            StatusCode::FORBIDDEN,
            "Refused",
            "Reports need the console's audit right.",
        );
    }
    let items = match cx.shared.store.review_items(Some(id)).await {
        Ok(i) => i,
        Err(e) => return store_down(e),
    };
    let e = AuditEvent::new(
        "review.report",
        &v.actor(),
        Outcome::Success,
        serde_json::json!({ "campaign": id, "format": "csv", "items": items.len(), "via": "console" }),
    );
    if let Err(err) = cx.shared.store.append_audit(&e).await {
        return store_down(err);
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"review-{id}.csv\""),
            ),
        ],
        crate::store::review_csv(&items),
    )
        .into_response()
}
