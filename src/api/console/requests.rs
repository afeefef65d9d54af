//! Access requests in the browser: ask for a requestable role, see one's requests, and,
//! for reviewers, approve or deny what waits for them and revoke running grants. The same
//! store calls as `/v1/requests` and `postern request`, so the same rules and the same
//! audit events (with the viewer as actor).

use axum::Form;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::super::routes::Ctx;
use super::auth::{Viewer, form_viewer, not_done, refused_to, store_down, viewer};
use super::html::{page, when};
use crate::audit::now_ms;
use crate::duration::Dur;
use crate::policy::requests::{AccessRequest, RequestState, requestable_roles};
use crate::store::{NewRequest, RequestFilter};

#[derive(Deserialize)]
pub struct AskForm {
    #[serde(default)]
    csrf: String,
    role: String,
    #[serde(default)]
    target: String,
    #[serde(rename = "for")]
    ttl: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
pub struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

fn state(r: &AccessRequest) -> String {
    match r.state {
        RequestState::Pending => format!(
            "pending ({} of {})",
            r.approvals.len(),
            r.approvals_required
        ),
        RequestState::Approved => format!("granted until {}", when(r.grant_until_ms.unwrap_or(0))),
        s => s.as_str().to_string(),
    }
}

fn row(r: &AccessRequest, actions: Markup) -> Markup {
    html! {
        tr.request data-id=(r.id) {
            td { "#" (r.id) }
            td { (r.user) }
            td { (r.role) @if let Some(t) = &r.target { " on " (t) } }
            td { (Dur::from_secs(r.ttl_secs)) }
            td.reason { (r.reason) }
            td.state { (state(r)) }
            td { (actions) }
        }
    }
}

fn table(rows: Markup) -> Markup {
    html! {
        table.requests {
            thead { tr { th { "#" } th { "User" } th { "Role" } th { "For" } th { "Reason" } th { "State" } th {} } }
            tbody { (rows) }
        }
    }
}

fn act(v: &Viewer, id: i64, verb: &str, label: &str, reason: bool) -> Markup {
    html! {
        form.act method="post" action={ "/requests/" (id) "/" (verb) } {
            input type="hidden" name="csrf" value=(v.csrf);
            @if reason { input type="text" name="reason" placeholder="reason" maxlength="1000"; }
            button type="submit" class=(verb) { (label) }
        }
    }
}

pub async fn list(State(cx): State<Ctx>, headers: HeaderMap) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let store = &cx.shared.store;
    let list = |f: RequestFilter| async move { store.list_requests(&f).await };
    let mine = match list(RequestFilter {
        user: Some(v.user.name.clone()),
        limit: Some(100),
        ..RequestFilter::default()
    })
    .await
    {
        Ok(m) => m,
        Err(e) => return store_down(e),
    };
    let (pending, running) = match (
        list(RequestFilter {
            state: Some(RequestState::Pending),
            ..RequestFilter::default()
        })
        .await,
        list(RequestFilter {
            state: Some(RequestState::Approved),
            ..RequestFilter::default()
        })
        .await,
    ) {
        (Ok(p), Ok(r)) => (p, r),
        (Err(e), _) | (_, Err(e)) => return store_down(e),
    };
    let now = now_ms();
    let decide: Vec<&AccessRequest> = pending
        .iter()
        .filter(|r| r.awaits(&v.policy, &v.user))
        .collect();
    // One's own grants are under "Your requests", with Give up.
    let revocable: Vec<&AccessRequest> = running
        .iter()
        .filter(|r| r.user != v.user.name && r.revocable_by(&v.policy, &v.user, now))
        .collect();
    let askable = requestable_roles(&v.policy, &v.user);
    let body = html! {
        @if !askable.is_empty() {
            section.ask {
                h2 { "Ask for access" }
                form.ask method="post" action="/requests" {
                    input type="hidden" name="csrf" value=(v.csrf);
                    label { "Role " select name="role" { @for r in &askable { option value=(r.name) { (r.name) " (at most " (r.settings.max_request_ttl) ")" } } } }
                    label { "Target " select name="target" {
                        option value="" { "every target the role reaches" }
                        @for t in v.policy.targets.values() { option value=(t.name) { (t.name) } }
                    } }
                    label { "For " input type="text" name="for" value="1h" size="6"; }
                    label { "Reason " input type="text" name="reason" required maxlength="1000" size="40"; }
                    button type="submit" { "Request" }
                }
            }
        }
        @if !decide.is_empty() {
            section.decide {
                h2 { "Waiting for your decision" }
                (table(html! { @for r in &decide {
                    (row(r, html! { (act(&v, r.id, "approve", "Approve", true)) (act(&v, r.id, "deny", "Deny", true)) }))
                } }))
            }
        }
        section.mine {
            h2 { "Your requests" }
            @if mine.is_empty() { p.empty { "None yet." } } @else {
                (table(html! { @for r in &mine {
                    (row(r, html! {
                        @if r.state == RequestState::Pending { (act(&v, r.id, "cancel", "Cancel", false)) }
                        @if r.running(now) { (act(&v, r.id, "revoke", "Give up", false)) }
                    }))
                } }))
            }
        }
        @if !revocable.is_empty() {
            section.grants {
                h2 { "Running grants you may revoke" }
                (table(html! { @for r in &revocable { (row(r, act(&v, r.id, "revoke", "Revoke", true))) } }))
            }
        }
    };
    page(Some(&v), "Requests", body).into_response()
}

pub async fn ask(State(cx): State<Ctx>, headers: HeaderMap, Form(f): Form<AskForm>) -> Response {
    let v = match form_viewer(&cx, &headers, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ttl: Dur = match f.ttl.trim().parse() {
        Ok(d) => d,
        Err(e) => return refused_to(&v, StatusCode::BAD_REQUEST, "Not done", &format!("{e}")),
    };
    let new = NewRequest {
        role: f.role,
        target: super::html::nonempty(&f.target),
        reason: f.reason,
        ttl,
    };
    match cx
        .shared
        .store
        .create_request(&v.user.name, &new, now_ms())
        .await
    {
        Ok(_) => Redirect::to("/requests").into_response(),
        Err(e) => not_done(&v, e),
    }
}

pub async fn decide(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((id, verb)): UrlPath<(String, String)>,
    Form(f): Form<ActForm>,
) -> Response {
    let v = match form_viewer(&cx, &headers, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<i64>() else {
        return refused_to(&v, StatusCode::NOT_FOUND, "Not found", "No such request.");
    };
    let store = &cx.shared.store;
    let (name, now) = (v.user.name.as_str(), now_ms());
    let done = match verb.as_str() {
        "approve" => store.decide_request(name, id, true, &f.reason, now).await,
        "deny" => store.decide_request(name, id, false, &f.reason, now).await,
        "cancel" => store.cancel_request(name, id, now).await,
        "revoke" => store.revoke_request(name, id, &f.reason, now).await,
        _ => return refused_to(&v, StatusCode::NOT_FOUND, "Not found", "No such action."),
    };
    match done {
        Ok(_) => Redirect::to("/requests").into_response(),
        Err(e) => not_done(&v, e),
    }
}
