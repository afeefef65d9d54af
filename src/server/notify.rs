//! Access-request notifications by webhook. `serve` follows the audit chain (so what
//! another process decided is announced too) and POSTs each request event as JSON with a
//! Slack-compatible `text` and the event itself. A delivery is retried with back-off and,
//! if it still fails, audited as `notify.failed`; decisions never wait for any of it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::audit::{Actor, AuditEvent, Outcome, format_clock};
use crate::config::Notify;
pub use crate::http::Endpoint;
use crate::http::tls_config;
use crate::store::Store;

/// Waits between attempts: four retries, about 15 s in all.
const BACKOFF: [u64; 4] = [1, 2, 4, 8];
/// One attempt: connect, TLS, request and answer.
const ATTEMPT: Duration = Duration::from_secs(10);

async fn post(to: &Endpoint, tls: &Arc<ClientConfig>, body: &[u8]) -> Result<(), String> {
    let tcp = TcpStream::connect((to.host.as_str(), to.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let req = Request::post(to.path.as_str())
        .header(HOST, to.authority())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("postern/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let status = if to.tls {
        let name = ServerName::try_from(to.host.clone())
            .map_err(|_| format!("`{}` is not a valid host name", to.host))?;
        let stream = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(TokioIo::new(stream), req).await?
    } else {
        exchange(TokioIo::new(tcp), req).await?
    };
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the webhook answered HTTP {status}"))
    }
}

async fn exchange<T>(io: T, req: Request<Full<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    let status = match resp {
        Ok(r) => {
            let s = r.status().as_u16();
            // The answer is read (a little of it) so the connection ends cleanly.
            let _ = Limited::new(r.into_body(), 64 << 10).collect().await;
            Ok(s)
        }
        Err(e) => Err(e),
    };
    conn.abort();
    status
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn slack(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What people read about a request event; `None` for events not announced.
pub fn text(e: &AuditEvent) -> Option<String> {
    let d = &e.details;
    let s = |k: &str| slack(d[k].as_str().unwrap_or(""));
    let id = d["request"].as_i64()?;
    let on = e
        .target
        .as_deref()
        .map(|t| format!(" on {}", slack(t)))
        .unwrap_or_default();
    let who = slack(e.actor.0.split_once(':').map_or(&e.actor.0, |(_, n)| n));
    let until = |k: &str| d[k].as_i64().map(format_clock).unwrap_or_default();
    let ttl = crate::duration::Dur::from_secs(d["ttl_secs"].as_u64().unwrap_or(0));
    let (user, role) = (s("user"), s("role"));
    Some(match e.kind.as_str() {
        "request.created" => format!(
            "postern: {user} asks for role {role}{on} for {ttl}: \u{201c}{}\u{201d} (request #{id}; approve: postern request approve {id})",
            s("reason")
        ),
        "request.approval" => format!(
            "postern: {who} approved request #{id} ({user}, {role}{on}): {} of {} approvals",
            d["approvals"], d["approvals_required"]
        ),
        "request.approved" => format!(
            "postern: request #{id} approved by {who}: {user} has role {role}{on} until {}",
            until("grant_until_ms")
        ),
        "request.denied" => format!(
            "postern: request #{id} ({user}, {role}{on}) denied by {who}: {}",
            s("reason")
        ),
        "request.cancelled" => format!("postern: {user} cancelled request #{id} ({role}{on})"),
        "request.expired" => {
            format!("postern: request #{id} ({user}, {role}{on}) expired undecided")
        }
        "request.revoked" => format!(
            "postern: {who} revoked the grant of request #{id} ({user}, {role}{on}): {}",
            s("reason")
        ),
        "request.grant_expiring" => format!(
            "postern: {user}'s role {role}{on} (request #{id}) ends at {}",
            until("grant_until_ms")
        ),
        "request.grant_ended" => {
            format!("postern: {user}'s role {role}{on} (request #{id}) has ended")
        }
        _ => return None,
    })
}

/// Delivers one notification, retrying; the last error when every attempt failed.
async fn deliver(
    to: &Endpoint,
    tls: &Arc<ClientConfig>,
    body: &[u8],
    stop: &CancellationToken,
) -> Result<(), (usize, String)> {
    let mut last = String::new();
    for attempt in 0..=BACKOFF.len() {
        if attempt > 0 {
            let wait = Duration::from_secs(BACKOFF[attempt - 1]);
            if stop
                .run_until_cancelled(tokio::time::sleep(wait))
                .await
                .is_none()
            {
                return Err((attempt, format!("{last}; postern stopped retrying")));
            }
        }
        match tokio::time::timeout(ATTEMPT, post(to, tls, body)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {} s", ATTEMPT.as_secs()),
        }
    }
    Err((BACKOFF.len() + 1, last))
}

/// Follows the audit chain from `from` and announces request events until `stop`.
pub async fn run(store: Store, cfg: Notify, replica: String, from: i64, stop: CancellationToken) {
    let (to, tls) = match (
        Endpoint::parse(&cfg.webhook),
        tls_config("notify.ca_file", &cfg.ca_file),
    ) {
        (Ok(to), Ok(tls)) => (to, tls),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "request notifications are off");
            return;
        }
    };
    let mut after = from;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        // Pages until caught up: a busy log never leaves the announcements behind.
        loop {
            let page = match store.audit_page(after, 1000).await {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "cannot read audit events to notify");
                    break;
                }
            };
            if !announce(&store, &to, &tls, &replica, page, &mut after, &stop).await {
                return;
            }
        }
    }
}

/// Announces the request events of `page`; false once `stop` fired.
async fn announce(
    store: &Store,
    to: &Endpoint,
    tls: &Arc<ClientConfig>,
    replica: &str,
    page: Vec<crate::store::ChainedEvent>,
    after: &mut i64,
    stop: &CancellationToken,
) -> bool {
    for c in page {
        *after = c.seq;
        let Some(text) = text(&c.event) else {
            continue;
        };
        // Another replica following the same log announces it.
        match store.claim_notification(c.seq, replica).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!(error = %e, seq = c.seq, "cannot claim a request notification; sending it anyway");
            }
        }
        let body = json!({ "text": text, "event": c.event }).to_string();
        if let Err((attempts, error)) = deliver(to, tls, body.as_bytes(), stop).await {
            warn!(%error, seq = c.seq, "a request notification could not be delivered");
            let failed = AuditEvent::new(
                "notify.failed",
                &Actor::system(),
                Outcome::Failure,
                json!({ "seq": c.seq, "type": c.event.kind, "attempts": attempts, "error": error }),
            );
            if let Err(e) = store.append_audit(&failed).await {
                warn!(error = %e, "cannot audit a failed notification");
            }
        }
        if stop.is_cancelled() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_name_the_request_and_escape_for_slack() {
        let mut e = AuditEvent::new(
            "request.created",
            &Actor::user("alice"),
            Outcome::Success,
            json!({ "request": 7, "user": "alice", "role": "gpu-admin", "ttl_secs": 3600, "reason": "fix <b> & c" }),
        );
        e.target = Some("gpu-1".into());
        let t = text(&e).unwrap();
        assert!(
            t.contains("alice asks for role gpu-admin on gpu-1 for 1h"),
            "{t}"
        );
        assert!(t.contains("fix &lt;b&gt; &amp; c"), "{t}");
        assert!(t.contains("postern request approve 7"), "{t}");
        e.kind = "session.start".into();
        assert_eq!(text(&e), None);
    }
}
