//! Full-text search over recordings: terminal text, commands and output of channels
//! without a terminal, and SQL, with the same matching as `postern sessions grep`. Each
//! result links into its session at the matching time. Searches are audited
//! (`recording.search`), as each one reads recordings.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::super::routes::Ctx;
use super::auth::{refused, store_down, viewer};
use super::html::{nonempty, page, urlencode};
use crate::audit::{Outcome, now_ms};
use crate::recording::search::{grep, is_transcript};
use crate::store::SessionFilter;

/// Sessions searched at most (newest first); narrow with the filters.
const SESSIONS: i64 = 500;
/// Matching lines shown at most.
const HITS: usize = 500;
/// The shortest pattern searched: shorter ones match nearly everything.
const MIN_PATTERN: usize = 2;
/// Searches that read recordings at once; others wait their turn (at most `QUEUED`).
static SEARCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
const QUEUED: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Deserialize, Default)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    target: String,
    /// `24h`, `7d`… (default 7 days).
    #[serde(default)]
    since: String,
}

struct Hit {
    session: String,
    channel: i64,
    user: String,
    target: String,
    offset: f64,
    line: String,
    transcript: bool,
}

pub async fn search(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let within = nonempty(&q.since).unwrap_or_else(|| "7d".into());
    let since = match crate::duration::since(&within, now_ms()) {
        Ok(s) => s,
        Err(why) => return refused(StatusCode::BAD_REQUEST, &why),
    };
    let pattern = q.q.trim().to_string();
    let mut hits = Vec::new();
    let mut error = None;
    if pattern.chars().count() >= MIN_PATTERN {
        let filter = SessionFilter {
            // Without the audit right, only the viewer's own sessions are searched.
            user: if v.audits() {
                nonempty(&q.user)
            } else {
                Some(v.user.name.clone())
            },
            target: nonempty(&q.target),
            since_ms: since,
            active: false,
            limit: Some(SESSIONS),
        };
        let rows = match cx.shared.store.list_sessions(&filter).await {
            Ok(r) => r,
            Err(e) => return store_down(e),
        };
        let Ok(Ok(_turn)) = tokio::time::timeout(QUEUED, SEARCHES.acquire()).await else {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "Other searches are still reading recordings; try again in a moment.",
            );
        };
        let stored: Vec<String> = rows
            .iter()
            .flat_map(|s| s.recordings.iter().map(|r| r.path.clone()))
            .collect();
        let local = cx
            .shared
            .recordings
            .open_all(stored.iter().map(String::as_str))
            .await;
        let needle = pattern.clone();
        // Recordings are read from disk: off the runtime's threads.
        let found = tokio::task::spawn_blocking(move || {
            let local = local.map_err(|e| format!("recordings cannot be read: {e}"))?;
            let data_dir = local.root();
            let mut hits = Vec::new();
            for s in rows.iter().rev() {
                for r in &s.recordings {
                    let path = crate::recording::resolve(data_dir, &r.path);
                    // A recording that cannot be read is reported, never "no match".
                    let lines = grep(&path, &needle).map_err(|e| {
                        format!(
                            "cannot read the recording of session {} channel {}: {e}",
                            s.id, r.channel
                        )
                    })?;
                    for (offset, line) in lines {
                        if hits.len() >= HITS {
                            return Ok(hits);
                        }
                        hits.push(Hit {
                            session: s.id.clone(),
                            channel: r.channel,
                            user: s.user.clone(),
                            target: s.target.clone(),
                            offset,
                            line,
                            transcript: is_transcript(&path),
                        });
                    }
                }
            }
            Ok::<_, String>(hits)
        })
        .await;
        match found {
            Ok(Ok(h)) => hits = h,
            Ok(Err(e)) => error = Some(e),
            Err(e) => error = Some(format!("the search stopped: {e}")),
        }
        cx.audit(
            "recording.search",
            v.actor(),
            Outcome::Success,
            json!({ "pattern": pattern, "hits": hits.len(), "via": "console" }),
        )
        .await;
    }
    let body = html! {
        form.filters method="get" action="/search" {
            label { "Text " input name="q" type="search" required minlength=(MIN_PATTERN) value=(q.q); }
            @if v.audits() {
                label { "User " input name="user" value=(q.user); }
            }
            label { "Target " input name="target" value=(q.target); }
            label { "Within " input name="since" placeholder="7d" value=(q.since); }
            button type="submit" { "Search" }
        }
        @if let Some(e) = &error { p.error { (e) } }
        @if !pattern.is_empty() && pattern.chars().count() < MIN_PATTERN {
            p.error { "Search for at least " (MIN_PATTERN) " characters." }
        } @else if !pattern.is_empty() && hits.is_empty() && error.is_none() {
            p.empty { "No recording contains “" (pattern) "”." }
        }
        @if !hits.is_empty() {
            table.hits {
                thead { tr { th { "Session" } th { "User" } th { "Target" } th { "Channel" } th { "At" } th { "Line" } } }
                tbody {
                    @for h in &hits {
                        @let link = if h.transcript {
                            format!("/sessions/{}?q={}", h.session, urlencode(&pattern))
                        } else {
                            format!("/sessions/{}?t={:.1}", h.session, (h.offset - 1.0).max(0.0))
                        };
                        tr.hit {
                            td { a href=(link) { code { (&h.session[..8.min(h.session.len())]) } } }
                            td { (h.user) }
                            td { (h.target) }
                            td { (h.channel) }
                            td { "+" (format!("{:.1}", h.offset)) "s" }
                            td { code { (h.line) } }
                        }
                    }
                }
            }
            @if hits.len() >= HITS { p.more { "The first " (HITS) " matches; narrow the search for the rest." } }
        }
    };
    page(Some(&v), "Search recordings", body).into_response()
}
