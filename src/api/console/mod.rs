//! The web console: server-rendered pages on the API listener (same certificate, same
//! process). Every route checks its viewer on the server; pages carry a strict
//! Content-Security-Policy and load scripts only from `/assets/`, compiled into the binary.
//!
//! - `GET /login`, `POST /login`, `POST /logout`: the password form and the cookie;
//! - `GET /`: the dashboard;
//! - `GET /sessions`, `GET /sessions/{id}`: sessions the viewer may see, one with its
//!   recordings (asciicast in asciinema-player, transcripts as tables);
//! - `GET /sessions/{id}/recording/{channel}`: the recording's file (audited);
//! - `GET /sessions/{id}/live/{channel}`: a live terminal channel as server-sent events;
//!   `POST /sessions/{id}/kill`: ends a live session (admins);
//! - `GET /users`, `/users/{name}`, `/roles`, `/roles/{name}`, `/targets`,
//!   `/targets/{name}`, `/access`:
//!   the policy and the access check; `POST /users/{name}/lock|unlock` (admins);
//! - `GET /search?q=TEXT`: text in recordings (as `sessions grep`), linking into them;
//! - `GET /audit`, `GET /audit/events?after=SEQ`: the audit log and its new events;
//!   `GET|POST /audit/verify`: the chain verification, run in the background;
//!   `GET /audit/export?format=jsonl|csv`: the whole log, as `audit export` writes it.

// Handlers return the refusal page itself as the error: it is built once, on the way out.
#![allow(clippy::result_large_err)]

mod admin;
mod assets;
mod audit;
mod auth;
mod dashboard;
mod html;
mod live;
mod requests;
mod reviews;
mod search;
mod sessions;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};

pub use auth::Logins;

use super::routes::Ctx;

/// Scripts from postern only (WebAssembly compilation allowed: the player's terminal is
/// WebAssembly), no inline script or style elements, no framing, forms only to postern.
pub const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(super) fn router() -> Router<Ctx> {
    Router::new()
        .route("/", get(dashboard::dashboard))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{id}", get(sessions::show))
        .route(
            "/sessions/{id}/recording/{channel}",
            get(sessions::recording),
        )
        .route("/sessions/{id}/live/{channel}", get(live::watch))
        .route("/sessions/{id}/kill", post(live::kill))
        .route("/users", get(admin::users))
        .route("/users/{name}", get(admin::user))
        .route("/users/{name}/lock", post(admin::lock))
        .route("/users/{name}/unlock", post(admin::unlock))
        .route("/roles", get(admin::roles))
        .route("/roles/{name}", get(admin::role))
        .route("/targets", get(admin::targets))
        .route("/targets/{name}", get(admin::target))
        .route("/access", get(admin::check))
        .route("/search", get(search::search))
        .route("/requests", get(requests::list).post(requests::ask))
        .route("/requests/{id}/{verb}", post(requests::decide))
        .route("/reviews", get(reviews::list).post(reviews::start))
        .route("/reviews/items/{id}/{verb}", post(reviews::decide))
        .route("/reviews/{id}/report.csv", get(reviews::report))
        .route("/audit", get(audit::log))
        .route("/audit/events", get(audit::events))
        .route("/audit/export", get(audit::export))
        .route("/audit/verify", get(audit::verify_page).post(audit::verify))
        .route("/assets/{name}", get(assets::get))
        .layer(axum::middleware::from_fn(security_headers))
}

async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it, browsers send `Origin: null` on the console's own forms.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}
