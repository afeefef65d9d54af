//! The first page after login: live sessions with their time left, the viewer's targets
//! and valid credentials, and for auditors the
//! last day's refusals and failures, today's credentials, the audit chain and a week of
//! sessions per hour.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::super::routes::Ctx;
use super::auth::{Viewer, viewer};
use super::html::{page, span, when};
use crate::audit::now_ms;
use crate::policy::{TargetKind, default_database, default_login, may_reach};
use crate::store::{AuditFilter, SessionFilter};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Events counted per figure at most (shown as `N+`).
const COUNT_CAP: i64 = 10_000;

#[derive(serde::Deserialize, Default)]
pub struct DashQuery {
    /// `live`: only the live sessions, which the page refreshes every second.
    #[serde(default)]
    part: String,
}

pub async fn dashboard(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<DashQuery>,
) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let store = &cx.shared.store;
    let live = store
        .list_sessions(&SessionFilter {
            active: true,
            user: (!v.audits()).then(|| v.user.name.clone()),
            limit: Some(500),
            ..SessionFilter::default()
        })
        .await
        .unwrap_or_default();
    let live: Vec<_> = live.iter().rev().collect();
    let live = html! {
        section.live {
            h2 { "Live sessions" }
            (live_table(&cx, &live))
        }
    };
    if q.part == "live" {
        return live.into_response();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .unwrap_or("bastion")
        .to_string();
    let audit_part = if v.audits() {
        auditor_panels(&cx).await
    } else {
        html! {}
    };
    let credentials = credentials(&cx, &v).await;
    let body = html! {
        (live)
        (targets(&cx, &v, &host))
        (credentials)
        (audit_part)
    };
    page(Some(&v), "Dashboard", body).into_response()
}

/// Live sessions with the time each has left (for those this process runs).
fn live_table(cx: &Ctx, rows: &[&crate::store::SessionRow]) -> Markup {
    let now = now_ms();
    html! {
        @if rows.is_empty() {
            p.empty { "No live sessions." }
        } @else {
            table.sessions {
                thead { tr { th { "Started (UTC)" } th { "User" } th { "Target" } th { "Login" } th { "Protocol" } th { "Time left" } } }
                tbody {
                    @for s in rows {
                        tr.session data-id=(s.id) {
                            td { a href={ "/sessions/" (s.id) } { (when(s.started_ms)) } }
                            td { (s.user) }
                            td { (s.target) }
                            td { (s.login) }
                            td { (s.kind) }
                            td.left {
                                @match cx.shared.live.deadline_ms(&s.id) {
                                    Some(d) => { (span((d - now) / 1000)) }
                                    None => { "—" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The viewer's own credentials still valid, with the time each has left.
async fn credentials(cx: &Ctx, v: &Viewer) -> Markup {
    let store = &cx.shared.store;
    let now = now_ms();
    let certs = store
        .valid_certs(&v.user.name, now / 1000)
        .await
        .unwrap_or_default();
    let tokens = store
        .valid_db_tokens(&v.user.name, now)
        .await
        .unwrap_or_default();
    let revoked = store.revoked_serials().await.unwrap_or_default();
    html! {
        section.credentials {
            h2 { "Your credentials" }
            @if certs.is_empty() && tokens.is_empty() {
                p.empty { "None valid now: run " code { "postern login" } "." }
            } @else {
                table.credentials {
                    thead { tr { th { "Credential" } th { "For" } th { "Issued (UTC)" } th { "Time left" } } }
                    tbody {
                        @for c in &certs {
                            tr {
                                td { "SSH certificate " (c.serial) }
                                td { code { (c.key_fingerprint) } }
                                td { (when(c.issued_ms)) }
                                td.left {
                                    @if revoked.contains(&c.serial) { "revoked" }
                                    @else { (span(c.valid_before - now / 1000)) }
                                }
                            }
                        }
                        @for t in &tokens {
                            tr {
                                td { "Database token" }
                                td { (t.target) "/" (t.database) " as " (t.db_user) }
                                td { (when(t.issued_ms)) }
                                td.left {
                                    @if t.cert_serial.is_some_and(|s| revoked.contains(&s)) { "revoked" }
                                    @else { (span((t.expires_ms - now) / 1000)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The targets the viewer's roles reach, with the command that reaches each.
fn targets(cx: &Ctx, v: &Viewer, host: &str) -> Markup {
    let ssh_port = cx.shared.config.ssh.listen.port();
    let pg_port = cx.shared.config.postgres.listen.port();
    let reach: Vec<_> = v
        .policy
        .targets
        .values()
        .filter(|t| may_reach(&v.policy.roles_for(&v.user, &t.name), t))
        .collect();
    html! {
        section.targets {
            h2 { "Your targets" }
            @if reach.is_empty() {
                p.empty { "Your roles reach no target." }
            } @else {
                table.targets {
                    thead { tr { th { "Target" } th { "Kind" } th { "Connect with" } } }
                    tbody {
                        @for t in &reach {
                            @let roles = v.policy.roles_for(&v.user, &t.name);
                            @let line = match t.kind {
                                TargetKind::Ssh => {
                                    let login = default_login(&roles, t).map(|l| format!("{l}@")).unwrap_or_default();
                                    format!("ssh -p {ssh_port} {login}{}@{host}", t.name)
                                }
                                TargetKind::Postgres => {
                                    let (db, _) = default_database(&roles, t);
                                    format!("postern db login {}{}  # then psql \"host={host} port={pg_port} …\"", t.name, db.map(|d| format!("/{d}")).unwrap_or_default())
                                }
                            };
                            tr {
                                td { (t.name) }
                                td { (format!("{:?}", t.kind).to_lowercase()) }
                                td { code.copy { (line) } " " button type="button" data-copy=(line) { "Copy" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn count(cx: &Ctx, kind: &str, since_ms: i64) -> String {
    let n = cx
        .shared
        .store
        .search_audit(&AuditFilter {
            kind: Some(kind.into()),
            since_ms: Some(since_ms),
            limit: Some(COUNT_CAP),
            ..AuditFilter::default()
        })
        .await
        .map(|e| e.len())
        .unwrap_or(0);
    if n as i64 >= COUNT_CAP {
        format!("{n}+")
    } else {
        n.to_string()
    }
}

async fn auditor_panels(cx: &Ctx) -> Markup {
    let now = now_ms();
    let day_ago = now - DAY_MS;
    let midnight = now - now.rem_euclid(DAY_MS);
    let denials = count(cx, "access.deny", day_ago).await;
    let failures = count(cx, "auth.failure", day_ago).await;
    let logins = count(cx, "auth.login", midnight).await;
    let db_tokens = count(cx, "credential.db_token", midnight).await;
    let store = &cx.shared.store;
    let checkpoint = store.audit_last_checkpoint().await.ok().flatten();
    let head = store.audit_head_seq().await.unwrap_or(0);
    let week = store
        .list_sessions(&SessionFilter {
            since_ms: Some(now - 7 * DAY_MS),
            limit: Some(100_000),
            ..SessionFilter::default()
        })
        .await
        .unwrap_or_default();
    let mut hours = [0u32; 168];
    let first_hour = (now - 7 * DAY_MS).div_euclid(HOUR_MS) + 1;
    for s in &week {
        let i = s.started_ms.div_euclid(HOUR_MS) - first_hour;
        if let Some(h) = usize::try_from(i).ok().and_then(|i| hours.get_mut(i)) {
            *h += 1;
        }
    }
    html! {
        section.figures {
            h2 { "Last 24 hours" }
            dl.figures {
                dt { "Access denied" } dd id="denials" { (denials) }
                dt { "Failed logins" } dd id="failures" { (failures) }
                dt { "Logins today (UTC)" } dd id="logins" { (logins) }
                dt { "Database credentials today (UTC)" } dd id="db-tokens" { (db_tokens) }
            }
        }
        section.chain {
            h2 { "Audit chain" }
            p {
                "Events: " (head) ". "
                @match &checkpoint {
                    Some(c) => { "Last signed checkpoint: event " (c.seq) " at " (when(c.time_ms)) " UTC." }
                    None => { "No signed checkpoint yet." }
                }
            }
            p.verify {
                @match super::audit::last_result() {
                    Some((ok, what, at)) => {
                        "Last verification (" (when(at)) " UTC): "
                        span class=(if ok { "ok" } else { "error" }) { (if ok { "OK: " } else { "FAILED: " }) (what) }
                    }
                    None => { "Not verified since postern started." }
                }
                " " a href="/audit/verify" { "Verify now" }
            }
        }
        section.chart {
            h2 { "Sessions per hour, last 7 days" }
            (chart(&hours))
        }
    }
}

/// Bars, one per hour, oldest on the left; drawn on the server.
fn chart(hours: &[u32; 168]) -> Markup {
    let max = hours.iter().copied().max().unwrap_or(0).max(1);
    let (w, h) = (4u32, 100u32);
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (168 * w) " " (h + 12) } role="img" aria-label="sessions per hour" {
            @for (i, n) in hours.iter().enumerate() {
                @let bar = n * h / max;
                @if *n > 0 {
                    rect x=(i as u32 * w) y=(h - bar) width=(w - 1) height=(bar) { title { (n) " sessions" } }
                }
            }
            @for d in 0..7u32 {
                line x1=(d * 24 * w) x2=(d * 24 * w) y1="0" y2=(h) {}
            }
            text x="0" y=(h + 11) { "7 days ago" }
            text x=(168 * w - 30) y=(h + 11) { "now" }
        }
    }
}
