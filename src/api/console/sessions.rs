//! Session pages: the list with its filters, one session with its recordings played in
//! the browser, and the recordings themselves (each delivery audited).

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::routes::Ctx;
use super::auth::{Viewer, refused, refused_to, store_down, viewer};
use super::html::{nonempty, page, span, when};
use crate::audit::{Outcome, now_ms};
use crate::recording::search::is_transcript;
use crate::recording::store::Local;
use crate::recording::stream::{self, MARKER, STDERR, STDOUT};
use crate::store::{AuditFilter, SessionFilter, SessionRow};

/// Rows a list shows at most; filters narrow it.
const LIST_LIMIT: i64 = 500;
/// Transcript entries shown on a session page.
const TRANSCRIPT_ROWS: usize = 5_000;
/// Bytes of a transcript read for a session page.
const TRANSCRIPT_READ: u64 = 8 << 20;
/// Bytes of a command's output shown on a session page.
const STREAM_SHOWN: usize = 64 * 1024;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    user: String,
    #[serde(default)]
    target: String,
    /// `ssh`, `postgres` or empty.
    #[serde(default)]
    protocol: String,
    /// `1h`, `7d`… or empty.
    #[serde(default)]
    since: String,
    /// `active`, `ended` or empty.
    #[serde(default)]
    state: String,
}

fn not_found(v: &Viewer) -> Response {
    refused_to(v, StatusCode::NOT_FOUND, "Not found", "No such session.")
}

/// Sessions the viewer may see, with the list's filters.
pub async fn list(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let since = match crate::duration::since(&q.since, now_ms()) {
        Ok(s) => s,
        Err(why) => return refused(StatusCode::BAD_REQUEST, &why),
    };
    let filter = SessionFilter {
        // Without the audit right the list is the viewer's own, whatever was asked.
        user: if v.audits() {
            nonempty(&q.user)
        } else {
            Some(v.user.name.clone())
        },
        target: nonempty(&q.target),
        since_ms: since,
        active: q.state == "active",
        limit: Some(LIST_LIMIT),
    };
    let rows = match cx.shared.store.list_sessions(&filter).await {
        Ok(r) => r,
        Err(e) => return store_down(e),
    };
    let rows: Vec<&SessionRow> = rows
        .iter()
        .rev()
        .filter(|s| q.protocol.is_empty() || s.kind == q.protocol)
        .filter(|s| q.state != "ended" || s.ended_ms.is_some())
        .collect();
    let body = html! {
        form.filters method="get" action="/sessions" {
            @if v.audits() {
                label { "User " input name="user" value=(q.user); }
            }
            label { "Target " input name="target" value=(q.target); }
            label { "Protocol "
                select name="protocol" {
                    @for (val, shown) in [("", "any"), ("ssh", "SSH"), ("postgres", "PostgreSQL")] {
                        option value=(val) selected[q.protocol == val] { (shown) }
                    }
                }
            }
            label { "Started within " input name="since" placeholder="e.g. 24h" value=(q.since); }
            label { "State "
                select name="state" {
                    @for (val, shown) in [("", "any"), ("active", "active"), ("ended", "ended")] {
                        option value=(val) selected[q.state == val] { (shown) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        (table(&rows))
    };
    page(Some(&v), "Sessions", body).into_response()
}

/// A table of sessions, newest first, each linking to its page.
pub(super) fn table(rows: &[&SessionRow]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No sessions." }
        } @else {
            table.sessions {
                thead { tr { th { "Started (UTC)" } th { "User" } th { "Target" } th { "Login" } th { "Protocol" } th { "Duration" } th { "Ended" } } }
                tbody {
                    @for s in rows {
                        tr.session data-id=(s.id) {
                            td { a href={ "/sessions/" (s.id) } { (when(s.started_ms)) } }
                            td { (s.user) }
                            td { (s.target) }
                            td { (s.login) }
                            td { (s.kind) }
                            td { (span((s.ended_ms.unwrap_or_else(now_ms) - s.started_ms) / 1000)) }
                            td {
                                @match &s.ended_ms {
                                    Some(_) => { (s.end_reason.as_deref().unwrap_or("ended")) }
                                    None => { span.live { "live" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The session, when it exists and the viewer may see it; 404 otherwise (another user's
/// session is indistinguishable from none).
pub(super) async fn visible(cx: &Ctx, v: &Viewer, id: &str) -> Result<SessionRow, Response> {
    match crate::api::actions::session_for(cx, id, |user| v.may_see(user)).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(not_found(v)),
        Err(e) => Err(store_down(e)),
    }
}

/// The session's recording of `channel`, to read, or the page saying it has none.
pub(super) async fn recording_of(
    cx: &Ctx,
    v: &Viewer,
    s: &SessionRow,
    channel: i64,
) -> Result<(Local, PathBuf), Response> {
    let Some(r) = s.recordings.iter().find(|r| r.channel == channel) else {
        return Err(refused_to(
            v,
            StatusCode::NOT_FOUND,
            "Not found",
            "This session has no such recording.",
        ));
    };
    match cx.shared.recordings.open(&r.path).await {
        Ok(local) => Ok((local, PathBuf::from(&r.path))),
        Err(e) => Err(unreadable(&e)),
    }
}

/// The answer when a recording's store cannot hand it over.
fn unreadable(e: &crate::recording::RecordingError) -> Response {
    tracing::warn!(error = %e, "console: cannot read a recording");
    refused(
        StatusCode::NOT_FOUND,
        "The recording cannot be read from postern's recording store; tell an admin (postern's log says why).",
    )
}

/// A recording delivered to a viewer: `recording.view` or `recording.export`.
async fn delivered(cx: &Ctx, v: &Viewer, s: &SessionRow, channel: i64, kind: &str) {
    cx.audit_on(
        kind,
        v.actor(),
        Outcome::Success,
        Some(s.target.clone()),
        json!({ "session": s.id, "channel": channel, "via": "console" }),
    )
    .await;
}

#[derive(Deserialize, Default)]
pub struct ShowQuery {
    /// Where the players start, in seconds (a search result's time).
    #[serde(default)]
    t: Option<f64>,
    /// What the transcript filter starts with (a search result's text).
    #[serde(default)]
    q: String,
}

pub async fn show(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Query(at): Query<ShowQuery>,
) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let s = match visible(&cx, &v, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut parts = Vec::new();
    for r in &s.recordings {
        let kind = PathBuf::from(&r.path);
        let url = format!("/sessions/{}/recording/{}", s.id, r.channel);
        let live = s.ended_ms.is_none() && r.sha256.is_none();
        let textual = is_transcript(&kind) || stream::is_stream(&kind);
        // An sftp channel records its transfer log (markers), shown as a table.
        let sftp = !textual
            && !live
            && cx
                .shared
                .recordings
                .header(&r.path)
                .await
                .as_deref()
                .and_then(crate::recording::search::command_in)
                .as_deref()
                == Some("subsystem sftp");
        let local = if textual || sftp {
            cx.shared.recordings.open(&r.path).await.map_err(|e| {
                tracing::warn!(error = %e, "console: cannot read a recording");
                e.to_string()
            })
        } else {
            Err(String::new())
        };
        let part = if textual {
            delivered(&cx, &v, &s, r.channel, "recording.view").await;
            let filter = at.q.clone();
            // Read from disk off the runtime's threads.
            match local {
                Ok(local) => tokio::task::spawn_blocking(move || {
                    if is_transcript(&kind) {
                        transcript(local.path(), &filter)
                    } else {
                        command_output(local.path())
                    }
                })
                .await
                .unwrap_or_else(
                    |e| html! { p.error { "Cannot read this recording: " (e.to_string()) } },
                ),
                Err(e) => html! { p.error { "Cannot read this recording: " (e) } },
            }
        } else if live {
            let live = format!("/sessions/{}/live/{}", s.id, r.channel);
            html! { div.player.watching data-live=(live) {} }
        } else {
            let start = at.t.filter(|t| t.is_finite() && *t >= 0.0);
            // An sftp channel records its transfer log (markers), not the files.
            let log = match local {
                Ok(local) => tokio::task::spawn_blocking(move || transfer_log(local.path()))
                    .await
                    .unwrap_or_default(),
                Err(_) => None,
            };
            html! {
                @if let Some(log) = log {
                    h3 { "Transfer log" }
                    @if log.is_empty() { p.empty { "Nothing was transferred." } }
                    table.transfers {
                        tbody { @for (t, m) in &log { tr { td.t { (format!("+{t:.3}s")) } td { (m) } } } }
                    }
                } @else {
                    div.player data-cast=(url) data-start=[start] {}
                }
            }
        };
        parts.push(html! {
            section.recording {
                h2 { "Channel " (r.channel) }
                p.links {
                    a href={ (url) "?download=1" } download { "Download" }
                    " · sha256 " code { (r.sha256.as_deref().unwrap_or("(still recording)")) }
                }
                (part)
            }
        });
    }
    let events = cx
        .shared
        .store
        .search_audit(&AuditFilter {
            session: Some(s.id.clone()),
            limit: Some(200),
            ..AuditFilter::default()
        })
        .await
        .unwrap_or_default();
    let title = format!("{} → {}", s.user, s.target);
    let body = html! {
        dl.facts {
            dt { "Session" } dd { code { (s.id) } }
            dt { "Protocol" } dd { (s.kind) }
            dt { "Login" } dd { (s.login) }
            dt { "From" } dd { (s.client_addr) }
            dt { "Started (UTC)" } dd { (when(s.started_ms)) }
            dt { "Ended" } dd {
                @match s.ended_ms {
                    Some(e) => { (when(e)) " — " (s.end_reason.as_deref().unwrap_or("")) }
                    None => { span.live { "live" } }
                }
            }
            @if let Some(x) = s.exit_status { dt { "Exit status" } dd { (x) } }
            dt { "Bytes" } dd { "in " (s.bytes_in) ", out " (s.bytes_out) }
        }
        @if s.ended_ms.is_none() && v.administers() {
            form.kill method="post" action={ "/sessions/" (s.id) "/kill" } {
                input type="hidden" name="csrf" value=(v.csrf);
                button.danger type="submit" { "Kill session" }
            }
        }
        @if s.recordings.is_empty() { p.empty { "No recordings." } }
        @for p in &parts { (p) }
        section.events {
            h2 { "Audit events" }
            table.events {
                thead { tr { th { "Time (UTC)" } th { "Type" } th { "Actor" } th { "Result" } th { "Details" } } }
                tbody {
                    @for e in &events {
                        tr {
                            td { (when(e.event.time_ms)) }
                            td { (e.event.kind) }
                            td { (e.event.actor.0) }
                            td { (format!("{:?}", e.event.result).to_lowercase()) }
                            td { code { (e.event.details.to_string()) } }
                        }
                    }
                }
            }
        }
    };
    page(Some(&v), &title, body).into_response()
}

/// A PostgreSQL transcript as a table: time, statement, duration, rows or tag, error.
fn transcript(path: &Path, filter: &str) -> Markup {
    let (entries, cut) = match crate::recording::transcript::read_head(path, TRANSCRIPT_READ) {
        Ok(e) => e,
        Err(e) => return html! { p.error { "Cannot read this transcript: " (e) } },
    };
    let shown = entries.len().min(TRANSCRIPT_ROWS);
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    html! {
        input.filter type="search" placeholder="Filter statements" data-filter="transcript" value=(filter);
        table.transcript {
            thead { tr { th { "+s" } th { "Statement" } th { "Duration (ms)" } th { "Result" } th { "Error" } } }
            tbody {
                @for (t, v) in &entries[..shown] {
                    @let kind = s(v, "type");
                    tr class=(kind) data-rolled-back=(v["rolled_back"] == true) {
                        td.t { (format!("{t:.3}")) }
                        td.sql {
                            @match kind.as_str() {
                                "prepare" => { "PREPARE " (s(v, "name")) ": " }
                                "bind" => { "BIND " }
                                _ => {}
                            }
                            code { (s(v, "sql")) }
                            @if let Some(p) = v.get("params").filter(|p| !p.is_null()) {
                                " " span.params { (p.to_string()) }
                            }
                        }
                        td.ms { (v["duration_ms"].as_f64().map(|d| format!("{d:.3}")).unwrap_or_default()) }
                        td.result {
                            (s(v, "tag"))
                            @if let Some(n) = v["rows"].as_u64() { " (" (n) " rows)" }
                            @if let Some(c) = v["completion"].as_str() { " " (c) }
                            @if v["rolled_back"] == true { " (rolled back)" }
                        }
                        td.error {
                            @if let Some(e) = v["error"].as_object() {
                                (e.get("code").and_then(Value::as_str).unwrap_or("")) " "
                                (e.get("message").and_then(Value::as_str).unwrap_or(""))
                            }
                        }
                    }
                }
            }
        }
        @if shown < entries.len() || cut {
            p.more { "The first " (shown) " entries: download the transcript for all of them." }
        }
    }
}

/// A channel without a terminal: its command and what it printed.
fn command_output(path: &Path) -> Markup {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut marks = Vec::new();
    let mut bytes = [0u64; 2];
    let read = stream::read(path, |r| {
        match r.kind {
            STDOUT => bytes[0] += r.data.len() as u64,
            STDERR => bytes[1] += r.data.len() as u64,
            _ => {}
        }
        let buf = match r.kind {
            STDOUT => &mut out,
            STDERR => &mut err,
            MARKER => {
                marks.push((r.t_ms, String::from_utf8_lossy(&r.data).into_owned()));
                return Ok(());
            }
            _ => return Ok(()),
        };
        let room = STREAM_SHOWN.saturating_sub(buf.len());
        buf.extend_from_slice(&r.data[..room.min(r.data.len())]);
        Ok(())
    });
    let header = match read {
        Ok(h) => h,
        Err(e) => return html! { p.error { "Cannot read this recording: " (e) } },
    };
    let command = header["command"].as_str().unwrap_or("");
    let at = |t: u32| format!("+{:.3}s", f64::from(t) / 1000.0);
    html! {
        @if !command.is_empty() { p { "Command: " code { (command) } } }
        @for (t, m) in &marks { p.marker { (at(*t)) " " (m) } }
        h3 { "Output" }
        (stream_text(&out, bytes[0]))
        @if bytes[1] > 0 { h3 { "Errors" } (stream_text(&err, bytes[1])) }
    }
}

/// The markers of an sftp channel's asciicast (its transfer log); `None` for any other.
fn transfer_log(path: &Path) -> Option<Vec<(f64, String)>> {
    use std::io::BufRead;
    if crate::recording::search::recorded_command(path).as_deref() != Some("subsystem sftp") {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let lines = std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .skip(1);
    Some(
        lines
            .filter_map(|l| serde_json::from_str::<(f64, String, String)>(&l).ok())
            .filter(|(_, code, _)| code == "m")
            .map(|(t, _, m)| (t, m))
            .collect(),
    )
}

/// What a stream printed, as text; a stream that is mostly not text is only counted.
fn stream_text(shown: &[u8], total: u64) -> Markup {
    let text = String::from_utf8_lossy(shown);
    let printable = text
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
        .count();
    html! {
        @if printable * 10 < text.chars().count() * 9 {
            p.empty { "(binary, " (total) " bytes: download the recording for them)" }
        } @else {
            pre { (text) }
            @if total > shown.len() as u64 { p.more { "… " (total - shown.len() as u64) " more bytes: download the recording for them." } }
        }
    }
}

#[derive(Deserialize, Default)]
pub struct RecordingQuery {
    #[serde(default)]
    download: Option<String>,
}

/// A recording's file as it is stored (asciicast, transcript, stream), streamed from disk:
/// to the player (`recording.view`) or as a download (`recording.export`).
pub async fn recording(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((id, channel)): UrlPath<(String, i64)>,
    Query(q): Query<RecordingQuery>,
) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let s = match visible(&cx, &v, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (local, path) = match recording_of(&cx, &v, &s, channel).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // A fetched copy is removed when `local` drops; the open file reads on.
    let file = match tokio::fs::File::open(local.path()).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, path = %local.path().display(), "console: cannot open a recording");
            return refused(
                StatusCode::NOT_FOUND,
                "The recording file is missing from postern's recording store.",
            );
        }
    };
    drop(local);
    let download = q.download.is_some();
    let kind = if download {
        "recording.export"
    } else {
        "recording.view"
    };
    delivered(&cx, &v, &s, channel, kind).await;
    let (kind, ext) = if is_transcript(&path) {
        ("application/x-ndjson", "pg.jsonl")
    } else if stream::is_stream(&path) {
        ("application/octet-stream", "stream")
    } else {
        ("application/x-asciicast", "cast")
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if download
        && let Ok(v) = HeaderValue::from_str(&format!(
            "attachment; filename=\"{}-{}.{ext}\"",
            s.id, channel
        ))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}
