//! Live watch and kill: a terminal channel's recording tailed into the browser as it is
//! written, as server-sent events in the form asciinema-player's `eventsource` driver
//! reads; and the admins' button that ends a session the way `sessions kill` does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Form;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::super::routes::Ctx;
use super::auth::{CsrfForm, cross_site, refused, refused_to, viewer};
use super::sessions::{recording_of, visible};
use crate::audit::Outcome;
use crate::recording::search::is_transcript;

/// How often a watched recording is read for new events.
const POLL: Duration = Duration::from_millis(100);
/// How often the session's row (has the channel ended?) and the viewer's login are checked.
const RECHECK: Duration = Duration::from_secs(1);
/// A browser that takes nothing for this long is no longer watching.
const STALLED: Duration = Duration::from_secs(30);
/// A comment sent this often keeps idle connections open through proxies.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The longest recording line (one event) a watch holds while waiting for its end.
const MAX_LINE: usize = 4 << 20;
/// Bytes read from the recording per poll.
const CHUNK: usize = 256 << 10;
/// Watches open at once, across viewers.
const MAX_WATCHES: usize = 64;

static WATCHES: AtomicUsize = AtomicUsize::new(0);

/// One open watch, counted while it lives.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        let n = WATCHES.fetch_add(1, Ordering::SeqCst);
        if n >= MAX_WATCHES {
            WATCHES.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        WATCHES.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `GET /sessions/{id}/live/{channel}`: the channel's terminal so far, then each event as
/// it is recorded, then `done` when the channel ends.
pub async fn watch(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath((id, channel)): UrlPath<(String, i64)>,
) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let s = match visible(&cx, &v, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = s
        .recordings
        .iter()
        .find(|r| r.channel == channel)
        .map(|r| PathBuf::from(&r.path))
        .unwrap_or_default();
    if is_transcript(&kind) || crate::recording::stream::is_stream(&kind) {
        return refused_to(
            &v,
            StatusCode::NOT_FOUND,
            "Not found",
            "Only terminal channels can be watched live.",
        );
    }
    let Some(slot) = Slot::take() else {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many live watches are open; close one and try again.",
        );
    };
    let (local, path) = match recording_of(&cx, &v, &s, channel).await {
        Ok(p) => p,
        Err(r) => return r,
    };
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
    cx.audit_on(
        "recording.view",
        v.actor(),
        Outcome::Success,
        Some(s.target.clone()),
        json!({ "session": s.id, "channel": channel, "via": "console", "live": true }),
    )
    .await;
    let (w, r) = tokio::io::duplex(64 << 10);
    let tail = Tail {
        cx,
        headers,
        id: s.id,
        channel,
        path,
        local,
        file,
        chunk: vec![0u8; CHUNK],
        out: w,
    };
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = tail.run().await {
            tracing::debug!(error = %e, "console: live watch ended");
        }
    });
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(r));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// A watch's reader of one recording, writing events into the response body.
struct Tail {
    cx: Ctx,
    headers: HeaderMap,
    id: String,
    channel: i64,
    path: PathBuf,
    /// The recording as a local file; one fetched from a bucket is refreshed each
    /// `RECHECK` with what was uploaded since.
    local: crate::recording::store::Local,
    file: tokio::fs::File,
    /// The buffer each poll reads the recording into.
    chunk: Vec<u8>,
    out: DuplexStream,
}

impl Tail {
    async fn send(&mut self, frame: &str) -> std::io::Result<()> {
        match tokio::time::timeout(STALLED, self.out.write_all(frame.as_bytes())).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the browser stopped reading",
            )),
        }
    }

    /// The recording's lines from where the last read ended: header first, then events.
    async fn pump(&mut self, pending: &mut Vec<u8>, header: &mut bool) -> std::io::Result<()> {
        loop {
            let n = self.file.read(&mut self.chunk).await?;
            if n == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&self.chunk[..n]);
            let mut frames = String::new();
            let mut used = 0;
            while let Some(end) = pending[used..].iter().position(|&b| b == b'\n') {
                let line = &pending[used..used + end];
                used += end + 1;
                if let Some(f) = frame(line, header) {
                    frames.push_str(&f);
                }
            }
            pending.drain(..used);
            if pending.len() > MAX_LINE {
                return Err(std::io::Error::other(format!(
                    "{}: a line longer than {MAX_LINE} bytes",
                    self.path.display()
                )));
            }
            if !frames.is_empty() {
                self.send(&frames).await?;
            }
            if n < CHUNK {
                return Ok(());
            }
        }
    }

    async fn run(mut self) -> std::io::Result<()> {
        let mut pending = Vec::new();
        let mut header = false;
        let mut checked = tokio::time::Instant::now();
        let mut quiet = tokio::time::Instant::now();
        loop {
            self.pump(&mut pending, &mut header).await?;
            let now = tokio::time::Instant::now();
            if now.duration_since(checked) >= RECHECK {
                checked = now;
                self.refresh().await?;
                // A logout, a lock or an expired login ends the watch.
                if viewer(&self.cx, &self.headers).await.is_err() {
                    return Ok(());
                }
                if self.ended().await {
                    // The file is complete (synced before its row was sealed): read the rest.
                    self.refresh().await?;
                    self.pump(&mut pending, &mut header).await?;
                    self.send("event: done\ndata: {}\n\n").await?;
                    return self.out.shutdown().await;
                }
            }
            if now.duration_since(quiet) >= KEEPALIVE {
                quiet = now;
                self.send(": still live\n\n").await?;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn refresh(&mut self) -> std::io::Result<()> {
        self.local
            .refresh()
            .await
            .map(|_| ())
            .map_err(std::io::Error::other)
    }

    /// The channel's recording is finished, or the session ended without finishing it.
    async fn ended(&self) -> bool {
        match self.cx.shared.store.get_session(&self.id).await {
            Ok(Some(s)) => {
                let sealed = s
                    .recordings
                    .iter()
                    .any(|r| r.channel == self.channel && r.sha256.is_some());
                sealed || s.ended_ms.is_some()
            }
            Ok(None) => true,
            // A store that cannot answer now may next time: keep watching.
            Err(_) => false,
        }
    }
}

/// One asciicast line as an event-stream frame: the header becomes the terminal's size,
/// output and resize events pass as they are (typed input is not shown live).
fn frame(line: &[u8], header: &mut bool) -> Option<String> {
    let v: Value = serde_json::from_slice(line).ok()?;
    if !*header {
        *header = true;
        let size = json!({ "cols": v["width"], "rows": v["height"], "time": 0 });
        return Some(format!("data: {size}\n\n"));
    }
    match v.get(1).and_then(Value::as_str) {
        Some("o" | "r") => Some(format!("data: {v}\n\n")),
        _ => None,
    }
}

/// `POST /sessions/{id}/kill`: admins end a live session, through the same store command
/// `sessions kill` writes (so it reaches whichever `serve` runs it).
pub async fn kill(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    form: Form<CsrfForm>,
) -> Response {
    let v = match viewer(&cx, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if cross_site(&headers) {
        return refused(StatusCode::FORBIDDEN, "This form came from another site.");
    }
    if let Err(r) = v.check_csrf(&form.0.csrf) {
        return r;
    }
    let s = match visible(&cx, &v, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !v.administers() {
        return refused_to(
            &v,
            StatusCode::FORBIDDEN,
            "Refused",
            "Ending sessions needs the console's admin right.",
        );
    }
    if s.ended_ms.is_some() {
        return Redirect::to(&format!("/sessions/{}", s.id)).into_response();
    }
    if let Err(e) = crate::api::actions::kill(&cx, v.actor(), &s, "console").await {
        tracing::warn!(error = %e, "console: cannot write a kill");
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "postern cannot write to its store right now; the session was not ended. Try again shortly.",
        );
    }
    Redirect::to(&format!("/sessions/{}", s.id)).into_response()
}

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn a_cast_becomes_the_players_event_stream() {
        let mut header = false;
        let size = frame(
            br#"{"version":2,"width":100,"height":30,"timestamp":1}"#,
            &mut header,
        );
        assert_eq!(
            size.as_deref(),
            Some("data: {\"cols\":100,\"rows\":30,\"time\":0}\n\n")
        );
        assert_eq!(
            frame(br#"[0.5,"o","hi\r\n"]"#, &mut header).as_deref(),
            Some("data: [0.5,\"o\",\"hi\\r\\n\"]\n\n")
        );
        assert_eq!(frame(br#"[0.6,"i","secret"]"#, &mut header), None);
        assert_eq!(
            frame(br#"[0.7,"r","80x24"]"#, &mut header).as_deref(),
            Some("data: [0.7,\"r\",\"80x24\"]\n\n")
        );
        assert_eq!(frame(b"not json", &mut header), None);
    }
}
