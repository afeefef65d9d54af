//! The audit log for auditors: the same filters as `audit search`, new events followed as
//! they are written, and the Verify button, which walks the whole chain in the background
//! with the same verifier as `audit verify` and shows its progress.

use std::sync::Mutex;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::routes::Ctx;
use super::auth::{CsrfForm, Viewer, cross_site, refused, refused_to, store_down, viewer};
use super::html::{nonempty, page, urlencode, when};
use crate::audit::verify::Verifier;
use crate::audit::{Outcome, now_ms};
use crate::store::{AuditFilter, ChainedEvent, ExportFormat};

/// Events the page shows at most; filters narrow it.
const SHOWN: i64 = 500;

/// The viewer, when they hold the console's audit right.
async fn auditor(cx: &Ctx, headers: &HeaderMap) -> Result<Viewer, Response> {
    let v = viewer(cx, headers).await?;
    if !v.audits() {
        return Err(refused_to(
            &v,
            StatusCode::FORBIDDEN,
            "Refused",
            "The audit log needs the console's audit right.",
        ));
    }
    Ok(v)
}

#[derive(Deserialize, Default, Clone)]
pub struct LogQuery {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    session: String,
    /// `1h`, `7d`… or empty.
    #[serde(default)]
    since: String,
    /// Only events after this sequence number (following).
    #[serde(default)]
    after: Option<i64>,
}

impl LogQuery {
    fn filter(&self) -> Result<AuditFilter, String> {
        let since_ms = crate::duration::since(&self.since, now_ms())?;
        Ok(AuditFilter {
            kind: nonempty(&self.kind),
            actor: nonempty(&self.actor),
            target: nonempty(&self.target),
            session: nonempty(&self.session),
            since_ms,
            until_ms: None,
            after_seq: self.after,
            limit: Some(SHOWN),
        })
    }

    /// The query string the follow requests repeat.
    fn encoded(&self) -> String {
        let pairs = [
            ("type", &self.kind),
            ("actor", &self.actor),
            ("target", &self.target),
            ("session", &self.session),
            ("since", &self.since),
        ];
        pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn row(e: &ChainedEvent) -> Value {
    let ev = &e.event;
    json!({
        "seq": e.seq,
        "time": when(ev.time_ms),
        "type": ev.kind,
        "actor": ev.actor.0,
        "target": ev.target.clone().unwrap_or_default(),
        "result": ev.result.as_str(),
        "details": ev.details.to_string(),
    })
}

pub async fn log(State(cx): State<Ctx>, headers: HeaderMap, Query(q): Query<LogQuery>) -> Response {
    let v = match auditor(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let filter = match q.filter() {
        Ok(f) => f,
        Err(why) => return refused(StatusCode::BAD_REQUEST, &why),
    };
    let events = match cx.shared.store.search_audit(&filter).await {
        Ok(e) => e,
        Err(e) => return store_down(e),
    };
    let last = events.last().map_or(0, |e| e.seq);
    let follow = format!("/audit/events?{}", q.encoded());
    let body = html! {
        form.filters method="get" action="/audit" {
            label { "Type " input name="type" placeholder="e.g. auth.failure" value=(q.kind); }
            label { "Actor " input name="actor" value=(q.actor); }
            label { "Target " input name="target" value=(q.target); }
            label { "Session " input name="session" value=(q.session); }
            label { "Within " input name="since" placeholder="e.g. 24h" value=(q.since); }
            button type="submit" { "Filter" }
        }
        p.links {
            label { input #follow type="checkbox" data-url=(follow) data-after=(last); " Follow new events" }
            " · " a href="/audit/verify" { "Verify the chain" }
            " · Export the whole log: "
            a href="/audit/export?format=jsonl" download { "JSON lines (signed)" }
            " or " a href="/audit/export?format=csv" download { "CSV" }
        }
        table.audit {
            thead { tr { th { "Seq" } th { "Time (UTC)" } th { "Type" } th { "Actor" } th { "Target" } th { "Result" } th { "Details" } } }
            tbody {
                @for e in events.iter().rev() {
                    @let r = row(e);
                    tr {
                        @for k in ["seq", "time", "type", "actor", "target", "result"] {
                            td { (r[k].as_str().map(str::to_string).unwrap_or_else(|| r[k].to_string())) }
                        }
                        td { code { (r["details"].as_str().unwrap_or("")) } }
                    }
                }
            }
        }
    };
    page(Some(&v), "Audit log", body).into_response()
}

/// `GET /audit/events?after=SEQ&…`: newer events as JSON, for following the log.
pub async fn events(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<LogQuery>,
) -> Response {
    if let Err(r) = auditor(&cx, &headers).await {
        return r;
    }
    let filter = match q.filter() {
        Ok(f) => f,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    match cx.shared.store.search_audit(&filter).await {
        Ok(e) => Json(e.iter().map(row).collect::<Vec<_>>()).into_response(),
        Err(e) => store_down(e),
    }
}

/// The chain verification of this process: one at a time.
#[derive(Clone, Default)]
struct Run {
    by: String,
    started_ms: i64,
    /// Verified up to this sequence number, out of `last`.
    done: i64,
    last: i64,
    /// `None` while it runs; then whether the chain held, and what was found.
    result: Option<(bool, String)>,
    finished_ms: Option<i64>,
}

static VERIFY: Mutex<Option<Run>> = Mutex::new(None);

fn current() -> Option<Run> {
    VERIFY.lock().ok().and_then(|g| g.clone())
}

fn update(f: impl FnOnce(&mut Run)) {
    if let Ok(mut g) = VERIFY.lock()
        && let Some(r) = g.as_mut()
    {
        f(r);
    }
}

pub async fn verify_page(State(cx): State<Ctx>, headers: HeaderMap) -> Response {
    let v = match auditor(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let run = current();
    let running = run.as_ref().is_some_and(|r| r.result.is_none());
    let body = html! {
        @if running {
            meta http-equiv="refresh" content="1";
        }
        p { "Walks every audit event and signed checkpoint in the store, and every recording \
             the events name, exactly as " code { "postern audit verify" } " does." }
        @match &run {
            None => { p.empty { "No verification has run since postern started." } }
            Some(r) => {
                dl.facts {
                    dt { "Started by" } dd { (r.by) " at " (when(r.started_ms)) }
                    @match &r.result {
                        None => {
                            dt { "Progress" } dd #verify-progress {
                                progress max=(r.last.max(1)) value=(r.done) {}
                                " seq " (r.done) " of " (r.last)
                            }
                        }
                        Some((ok, what)) => {
                            dt { "Result" }
                            dd #verify-result class=(if *ok { "ok" } else { "error" }) {
                                (if *ok { "OK: " } else { "FAILED: " }) (what)
                            }
                            @if let Some(f) = r.finished_ms { dt { "Finished" } dd { (when(f)) } }
                        }
                    }
                }
            }
        }
        @if !running {
            form.verify method="post" action="/audit/verify" {
                input type="hidden" name="csrf" value=(v.csrf);
                button type="submit" { "Verify" }
            }
        }
    };
    page(Some(&v), "Verify the audit chain", body).into_response()
}

/// `POST /audit/verify`: starts a verification in the background (unless one runs).
pub async fn verify(State(cx): State<Ctx>, headers: HeaderMap, form: Form<CsrfForm>) -> Response {
    let v = match auditor(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if cross_site(&headers) {
        return refused(StatusCode::FORBIDDEN, "This form came from another site.");
    }
    if let Err(r) = v.check_csrf(&form.0.csrf) {
        return r;
    }
    {
        let Ok(mut g) = VERIFY.lock() else {
            return refused(StatusCode::INTERNAL_SERVER_ERROR, "verification state lost");
        };
        if g.as_ref().is_some_and(|r| r.result.is_none()) {
            return Redirect::to("/audit/verify").into_response();
        }
        *g = Some(Run {
            by: v.user.name.clone(),
            started_ms: now_ms(),
            ..Run::default()
        });
    }
    tokio::spawn(run(cx, v));
    Redirect::to("/audit/verify").into_response()
}

async fn run(cx: Ctx, v: Viewer) {
    let store = &cx.shared.store;
    if let Ok(last) = store.audit_head_seq().await {
        update(|r| r.last = last);
    }
    let key = cx.shared.keys.audit_key.public_key().clone();
    let mut verifier = Verifier::new(key);
    let now = now_ms();
    verifier.at(now);
    let walked = store
        .verify_chain(&mut verifier, |seq| update(|r| r.done = seq))
        .await;
    let files = verifier.recording_files();
    let local = cx
        .shared
        .recordings
        .open_all(files.iter().map(String::as_str))
        .await;
    // Recordings are hashed from disk: off the runtime's threads.
    let result = match (walked, local) {
        (Ok(()), Ok(local)) => {
            tokio::task::spawn_blocking(move || verifier.finish(Some(local.root()), Some(now)))
                .await
                .map_err(|e| crate::audit::verify::Broken {
                    seq: 0,
                    what: format!("the verification stopped: {e}"),
                })
                .and_then(|r| r)
        }
        (Err(b), _) => Err(b),
        (Ok(()), Err(e)) => Err(crate::audit::verify::Broken {
            seq: 0,
            what: format!("recordings cannot be read: {e}"),
        }),
    };
    let (ok, what, details) = match &result {
        Ok(r) => (
            true,
            format!(
                "{} events verified (chain intact), {} signed checkpoints, {} recordings intact, {} open recordings intact up to their last seal",
                r.events, r.checkpoints, r.recordings, r.open_recordings
            ),
            json!({ "events": r.events, "checkpoints": r.checkpoints, "recordings": r.recordings, "via": "console" }),
        ),
        Err(b) => (
            false,
            format!("at seq {}: {}", b.seq, b.what),
            json!({ "seq": b.seq, "what": b.what, "via": "console" }),
        ),
    };
    update(|r| {
        r.result = Some((ok, what));
        r.finished_ms = Some(now_ms());
        r.done = r.last;
    });
    let outcome = if ok {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    cx.audit("audit.verify", v.actor(), outcome, details).await;
}

/// The last verification's outcome, for the dashboard: `(ok, what, finished_ms)`.
pub fn last_result() -> Option<(bool, String, i64)> {
    let r = current()?;
    let (ok, what) = r.result?;
    Some((ok, what, r.finished_ms.unwrap_or(r.started_ms)))
}

/// Exports streaming at once (each reads the whole log).
static EXPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

#[derive(Deserialize, Default)]
pub struct ExportQuery {
    /// `jsonl` (the default) or `csv`.
    #[serde(default)]
    format: String,
}

/// `GET /audit/export`: the whole log as `audit export` writes it, streamed as it is read
/// (JSON lines with signed checkpoints and trailer, which `audit verify --file` checks).
pub async fn export(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> Response {
    let v = match auditor(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (format, ext, kind) = match q.format.as_str() {
        "" | "jsonl" => (ExportFormat::Jsonl, "jsonl", "application/x-ndjson"),
        "csv" => (ExportFormat::Csv, "csv", "text/csv; charset=utf-8"),
        other => {
            return refused(
                StatusCode::BAD_REQUEST,
                &format!("unknown export format `{other}` (jsonl or csv)"),
            );
        }
    };
    // The data dir's key as it is now: after a rotation the trailer must be signed by the
    // newest key, which this process may not sign checkpoints with until its restart.
    let key = crate::credentials::audit_key::current(&cx.shared.config.data_dir)
        .unwrap_or_else(|_| cx.shared.keys.audit_key.clone());
    let signer = match crate::audit::chain::Signer::new(&key) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot sign an export");
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "postern cannot sign the export with its audit key.",
            );
        }
    };
    let Ok(turn) = EXPORTS.try_acquire() else {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "Two exports are already being downloaded; try again when one has finished.",
        );
    };
    let (mut w, r) = tokio::io::duplex(256 << 10);
    tokio::spawn(async move {
        let _turn = turn;
        let store = &cx.shared.store;
        // A browser that stops reading for this long has gone: the export ends.
        let wrote = tokio::time::timeout(
            std::time::Duration::from_secs(600),
            store.export_audit(format, None, None, &signer, &mut w),
        )
        .await;
        let (outcome, details) = match wrote {
            Ok(Ok(n)) => (
                Outcome::Success,
                json!({ "events": n, "format": ext, "via": "console" }),
            ),
            Ok(Err(e)) => (
                Outcome::Failure,
                json!({ "error": e.to_string(), "format": ext, "via": "console" }),
            ),
            Err(_) => (
                Outcome::Failure,
                json!({ "error": "timed out", "format": ext, "via": "console" }),
            ),
        };
        cx.audit("audit.export", v.actor(), outcome, details).await;
    });
    let mut resp = (
        StatusCode::OK,
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(r)),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Ok(d) = HeaderValue::from_str(&format!(
        "attachment; filename=\"postern-audit-{}.{ext}\"",
        now_ms() / 1000
    )) {
        h.insert(header::CONTENT_DISPOSITION, d);
    }
    resp
}
