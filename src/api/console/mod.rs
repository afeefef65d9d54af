//! The web console: server-rendered pages on the API listener (same certificate, same
//! process). Every route checks its viewer on the server; pages carry a strict
//! Content-Security-Policy and load scripts only from `/assets/`, compiled into the binary.
//!
//! - `GET /login`, `POST /login`, `POST /logout`: the password form and the cookie;
//! - `GET /`: the dashboard;
//! - `GET /sessions`, `GET /sessions/{id}`: sessions the viewer may see, one with its
//!   recordings (asciicast in asciinema-player, transcripts as tables);
//! - `GET /sessions/{id}/recording/{channel}`: the recording's file (audited).

// Handlers return the refusal page itself as the error: it is built once, on the way out.
#![allow(clippy::result_large_err)]

mod assets;
mod auth;
mod dashboard;
mod html;
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
