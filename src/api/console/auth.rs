//! Console logins: the password form, the session cookie and what it carries (the user and
//! a CSRF token), held in memory by the process that served the login.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::super::routes::Ctx;
use super::html::{Form, page};
use crate::audit::{Actor, Outcome};
use crate::credentials::token;
use crate::policy::{ConsoleRight, Policy, User, UserStatus};

/// `__Host-`: the browser keeps it only from a secure origin, for the whole host, with no
/// `Domain` attribute a sibling could widen.
pub const COOKIE: &str = "__Host-postern";
/// A console login ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(15 * 60);
/// …and this long after it began, however busy.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Console logins held at once; the least recently used goes first.
const MAX_LOGINS: usize = 10_000;

struct Login {
    user: String,
    csrf: String,
    began: Instant,
    seen: Instant,
}

/// Console logins by the hash of their cookie.
#[derive(Default)]
pub struct Logins {
    map: Mutex<HashMap<String, Login>>,
}

impl Logins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Login>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new login: the cookie value and its CSRF token.
    fn begin(&self, user: &str) -> anyhow::Result<String> {
        let (cookie, hash) = token::new_token("psc_")?;
        let (csrf, _) = token::new_token("")?;
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, l| live(l, now));
        if map.len() >= MAX_LOGINS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, l)| l.seen)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            hash,
            Login {
                user: user.to_string(),
                csrf,
                began: now,
                seen: now,
            },
        );
        Ok(cookie)
    }

    /// The user and CSRF token of a live login, which this request keeps alive.
    fn touch(&self, cookie: &str) -> Option<(String, String)> {
        let hash = token::hash(cookie);
        let now = Instant::now();
        let mut map = self.lock();
        let l = map.get_mut(&hash)?;
        if !live(l, now) {
            map.remove(&hash);
            return None;
        }
        l.seen = now;
        Some((l.user.clone(), l.csrf.clone()))
    }

    fn end(&self, cookie: &str) {
        self.lock().remove(&token::hash(cookie));
    }
}

fn live(l: &Login, now: Instant) -> bool {
    now.duration_since(l.seen) < IDLE && now.duration_since(l.began) < LIFETIME
}

/// Who is looking, and what they may see.
pub struct Viewer {
    pub user: User,
    pub rights: BTreeSet<ConsoleRight>,
    pub csrf: String,
    pub policy: Policy,
}

impl Viewer {
    pub fn audits(&self) -> bool {
        self.rights.contains(&ConsoleRight::Audit)
    }
    pub fn administers(&self) -> bool {
        self.rights.contains(&ConsoleRight::Admin)
    }
    /// A user sees their own sessions; auditors and admins see every one.
    pub fn may_see(&self, session_user: &str) -> bool {
        self.audits() || session_user == self.user.name
    }
    pub fn actor(&self) -> Actor {
        Actor::user(&self.user.name)
    }

    /// A state-changing request carries the login's CSRF token.
    pub fn check_csrf(&self, sent: &str) -> Result<(), Response> {
        if aws_lc_rs::constant_time::verify_slices_are_equal(sent.as_bytes(), self.csrf.as_bytes())
            .is_ok()
        {
            Ok(())
        } else {
            Err(refused(
                StatusCode::FORBIDDEN,
                "This form is out of date (its security token does not match your login). Go back, reload the page and try again.",
            ))
        }
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The viewer behind the request's cookie, or a redirect to the login page: no cookie,
/// an expired login, a user since deleted or locked.
pub async fn viewer(cx: &Ctx, headers: &HeaderMap) -> Result<Viewer, Response> {
    let to_login = || Redirect::to("/login").into_response();
    let cookie = cookie_value(headers).ok_or_else(to_login)?;
    let logins = &cx.shared.api.console;
    let (name, csrf) = logins.touch(cookie).ok_or_else(to_login)?;
    let policy = cx.shared.store.load_policy().await.map_err(store_down)?;
    let user = match policy.users.get(&name) {
        Some(u) if u.status == UserStatus::Active => u.clone(),
        _ => {
            logins.end(cookie);
            return Err(to_login());
        }
    };
    let rights = policy.console_rights(&user);
    Ok(Viewer {
        user,
        rights,
        csrf,
        policy,
    })
}

/// The page for a store that cannot be read: logged, and the viewer told to retry.
pub fn store_down(e: crate::store::StoreError) -> Response {
    tracing::warn!(error = %e, "console: store error");
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "postern cannot read its store right now; try again shortly.",
    )
}

/// The viewer of a posted form: logged in, the form from this site, its CSRF token theirs.
pub async fn form_viewer(cx: &Ctx, headers: &HeaderMap, csrf: &str) -> Result<Viewer, Response> {
    let v = viewer(cx, headers).await?;
    if cross_site(headers) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "This form came from another site.",
        ));
    }
    v.check_csrf(csrf)?;
    Ok(v)
}

/// A refusal of a request or review action, as a page with the status it deserves.
pub fn not_done(v: &Viewer, e: crate::store::RequestError) -> Response {
    use crate::store::RequestError as E;
    let status = match &e {
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::Refused(_) => StatusCode::FORBIDDEN,
        E::Conflict(_) => StatusCode::CONFLICT,
        E::Invalid(_) => StatusCode::BAD_REQUEST,
        E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    refused_to(v, status, "Not done", &e.to_string())
}

/// A page saying why a request was refused.
pub fn refused(status: StatusCode, why: &str) -> Response {
    let body = page(None, "Refused", html! { p.error { (why) } });
    (status, body).into_response()
}

/// The same, inside the logged-in viewer's page frame.
pub fn refused_to(v: &Viewer, status: StatusCode, title: &str, why: &str) -> Response {
    let body = page(Some(v), title, html! { p.error { (why) } });
    (status, body).into_response()
}

/// A request from another site's page: the browser says where the form came from.
pub fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin != format!("https://{host}")
}

fn login_form(error: Option<&str>, user: &str) -> maud::Markup {
    page(
        None,
        "Log in",
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.login method="post" action="/login" {
                label { "User " input name="user" autocomplete="username" required value=(user); }
                label { "Password " input name="password" type="password" autocomplete="current-password" required; }
                label { "One-time code " input name="totp" inputmode="numeric" autocomplete="one-time-code" placeholder="if enrolled"; }
                button type="submit" { "Log in" }
            }
        },
    )
}

pub async fn login_page() -> impl IntoResponse {
    login_form(None, "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    totp: String,
}

pub async fn login(State(cx): State<Ctx>, headers: HeaderMap, form: Form<LoginForm>) -> Response {
    if cross_site(&headers) {
        return refused(
            StatusCode::FORBIDDEN,
            "This login form was sent from another site.",
        );
    }
    let Form(f) = form;
    let totp = Some(f.totp.trim()).filter(|t| !t.is_empty());
    let verified = match cx.verify_password(&f.user, &f.password, totp).await {
        Ok(v) => v,
        Err(e) => {
            let shown: String = f.user.chars().take(64).collect();
            return (e.status, login_form(Some(&e.message), &shown)).into_response();
        }
    };
    let cookie = match cx.shared.api.console.begin(&verified.user.name) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot make a login cookie");
            return refused(StatusCode::INTERNAL_SERVER_ERROR, "cannot start a login");
        }
    };
    let method = verified.method;
    let name = verified.user.name.clone();
    verified.attempt.succeeded();
    cx.audit(
        "auth.login",
        Actor::user(&name),
        Outcome::Success,
        json!({ "method": method, "via": "console" }),
    )
    .await;
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={cookie}; Path=/; Secure; HttpOnly; SameSite=Strict"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(State(cx): State<Ctx>, headers: HeaderMap, form: Form<CsrfForm>) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = v.check_csrf(&form.0.csrf) {
        return r;
    }
    if let Some(c) = cookie_value(&headers) {
        cx.shared.api.console.end(c);
    }
    cx.audit(
        "auth.logout",
        v.actor(),
        Outcome::Success,
        json!({ "via": "console" }),
    )
    .await;
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-postern=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}
