//! The HTTPS API: JSON under `/v1/`, served by axum over rustls on the `api` listener.
//!
//! - `POST /v1/login`: password (+ TOTP) for an SSH user certificate and a bearer token;
//! - `GET /v1/whoami`: who a bearer token belongs to;
//! - `POST /v1/db/login`: a short-lived database credential, after the RBAC decision.
//!
//! Errors are JSON: `{"code": "...", "message": "..."}` (see [`error::ApiError`]).

mod actions;
mod console;
mod error;
mod limiter;
mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use error::ApiError;
pub use limiter::{Door, Limiter};

use crate::server::Shared;
use crate::server::admission::Gate;

/// A client gets this long to finish the TLS handshake, to send each request's headers
/// (or the next request on an idle connection), and to send a request's body.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API keeps across connections.
pub struct Api {
    pub tls: TlsAcceptor,
    pub limiter: Limiter,
    /// Password hashes checked at once (each takes tens of MiB and a core for a moment):
    /// about one per core; logins beyond wait briefly, then are told to retry.
    pub verifiers: tokio::sync::Semaphore,
    /// postern's TLS CA (PEM), handed to clients at login; read once at start.
    pub tls_ca: String,
    /// Web console logins (cookies), in this process's memory.
    pub console: console::Logins,
}

impl Api {
    pub fn new(tls: Arc<rustls::ServerConfig>, tls_ca: String) -> Api {
        Api {
            tls: tls::with_alpn(&tls, b"http/1.1"),
            tls_ca,
            console: console::Logins::default(),
            limiter: Limiter::default(),
            verifiers: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            ),
        }
    }
}

/// Serves one HTTPS connection until the client closes it or postern shuts down.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    gate: Gate,
) {
    let tls = tokio::select! {
        t = tokio::time::timeout(HANDSHAKE_TIMEOUT, shared.api.tls.accept(stream)) => match t {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!("TLS handshake timed out");
                return;
            }
        },
        why = gate.expired() => {
            debug!(reason = why, "connection dropped during the TLS handshake");
            return;
        }
    };
    // An HTTPS connection carries no login of its own: past the handshake it is bounded
    // by the read timeouts below, not by the unauthenticated budgets.
    gate.passed();
    let service = TowerToHyperService::new(routes::router(shared, peer));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "HTTPS connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn).await;
        }
    }
}

/// Reads a request's whole body within `HANDSHAKE_TIMEOUT` before any handler sees it: a
/// client trickling a body byte by byte is answered 408 and its connection closed.
async fn body_in_time(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        axum::body::to_bytes(body, routes::MAX_BODY),
    )
    .await
    {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(_)) => ApiError::new(
            hyper::StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            format!(
                "cannot read the request body; bodies are JSON of at most {} KiB",
                routes::MAX_BODY / 1024
            ),
        )
        .into_response(),
        Err(_) => ApiError::new(
            hyper::StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request body did not arrive within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}
