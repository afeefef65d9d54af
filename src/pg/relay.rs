//! The relay of an authenticated PostgreSQL session: both directions at once, forwarding
//! whole messages untouched, and a tracker that pairs each statement (simple `Query`, or
//! extended `Parse`/`Bind`/`Execute`) with its outcome (`CommandComplete`, `ErrorResponse`)
//! for the transcript. A statement's line is queued to the recorder before its completion
//! reaches the client.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{Buf, BytesMut};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{Io, wire};
use crate::recording::LineRecorder;
use crate::server::limits::Limits;

pub struct Relay<'a> {
    pub client: &'a mut Box<dyn Io>,
    pub upstream: Box<dyn Io>,
    pub recorder: &'a LineRecorder,
    pub limits: &'a Limits,
    pub cancel: &'a CancellationToken,
    /// Leave `Bind` parameter values out of the transcript.
    pub redact: bool,
}

pub struct Outcome {
    pub reason: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Longest parameter text kept in a transcript line.
const PARAM_CHARS: usize = 4096;

struct Stmt {
    protocol: &'static str,
    sql: Arc<str>,
    /// The parameters as a JSON array, rendered once at `Bind`.
    params: Option<Arc<str>>,
    /// When the statement was sent, from the session's start.
    t: Duration,
    start: Instant,
    /// Command tags, `; `-separated (a simple query may hold several statements).
    tag: String,
    rows: Option<u64>,
    error: Option<(String, String)>,
}

impl Stmt {
    fn complete(&mut self, tag: &str) {
        if !self.tag.is_empty() {
            self.tag.push_str("; ");
        }
        self.tag.push_str(tag);
        if let Some(n) = rows(tag) {
            self.rows = Some(self.rows.unwrap_or(0) + n);
        }
    }
}

enum Pending {
    Simple(Stmt),
    Exec(Stmt),
    Sync,
}

struct Tracker {
    start: Instant,
    redact: bool,
    pending: VecDeque<Pending>,
    statements: HashMap<String, Arc<str>>,
    portals: HashMap<String, (Arc<str>, Option<Arc<str>>)>,
}

/// A bounds-checked reader over a message body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn cstr(&mut self) -> Option<String> {
        wire::cstr(&mut self.0)
    }
    fn i16(&mut self) -> Option<i16> {
        (self.0.remaining() >= 2).then(|| self.0.get_i16())
    }
    fn i32(&mut self) -> Option<i32> {
        (self.0.remaining() >= 4).then(|| self.0.get_i32())
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.len() >= n).then(|| self.0.split_at(n))?;
        self.0 = b;
        Some(a)
    }
}

/// Appends one parameter as a JSON value: text (lossy UTF-8) or, for binary, `\x` hex;
/// long values are cut at `PARAM_CHARS` with an ellipsis.
fn push_param(out: &mut Vec<u8>, raw: &[u8], binary: bool) {
    if binary {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let shown = &raw[..raw.len().min(PARAM_CHARS / 2)];
        out.extend_from_slice(b"\"\\\\x");
        for b in shown {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        }
        if shown.len() < raw.len() {
            out.extend_from_slice("…".as_bytes());
        }
        out.push(b'"');
    } else {
        let text = String::from_utf8_lossy(raw);
        let cut = text
            .char_indices()
            .nth(PARAM_CHARS)
            .map_or(text.len(), |(i, _)| i);
        if cut < text.len() {
            let _ = serde_json::to_writer(&mut *out, &format!("{}…", &text[..cut]));
        } else {
            let _ = serde_json::to_writer(&mut *out, &*text);
        }
    }
}

/// A NUL-terminated name, borrowed (names are ASCII in practice; others read as empty).
fn name<'a>(r: &mut Reader<'a>) -> Option<&'a str> {
    let end = r.0.iter().position(|&b| b == 0)?;
    let (n, rest) = r.0.split_at(end);
    r.0 = &rest[1..];
    Some(std::str::from_utf8(n).unwrap_or(""))
}

/// `Bind`: (portal, statement, the parameters as a JSON array).
fn parse_bind(body: &[u8]) -> Option<(&str, &str, String)> {
    let mut r = Reader(body);
    let portal = name(&mut r)?;
    let stmt = name(&mut r)?;
    let nfmt = usize::try_from(r.i16()?).ok()?;
    let formats = r.bytes(nfmt * 2)?;
    let format = |i: usize| -> bool {
        let at = match nfmt {
            0 => return false,
            1 => 0,
            _ => i,
        };
        formats.get(at * 2..at * 2 + 2) == Some(&[0, 1])
    };
    let n = usize::try_from(r.i16()?).ok()?;
    let mut out = Vec::with_capacity(16 + r.0.len().min(1024));
    out.push(b'[');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        let len = r.i32()?;
        if len < 0 {
            out.extend_from_slice(b"null");
        } else {
            push_param(&mut out, r.bytes(len as usize)?, format(i));
        }
    }
    out.push(b']');
    Some((portal, stmt, String::from_utf8(out).ok()?))
}

/// Rows a command tag reports: the last number (`SELECT 3`, `INSERT 0 5`, `COPY 10`).
fn rows(tag: &str) -> Option<u64> {
    tag.rsplit(' ').next().and_then(|n| n.parse().ok())
}

impl Tracker {
    fn stmt(&self, protocol: &'static str, sql: Arc<str>, params: Option<Arc<str>>) -> Stmt {
        let start = Instant::now();
        Stmt {
            protocol,
            sql,
            params,
            t: start.saturating_duration_since(self.start),
            start,
            tag: String::new(),
            rows: None,
            error: None,
        }
    }

    fn client(&mut self, tag: u8, body: &[u8]) {
        let mut r = Reader(body);
        match tag {
            b'Q' => {
                let sql = text(&mut r);
                let s = self.stmt("simple", Arc::from(&*sql), None);
                self.pending.push_back(Pending::Simple(s));
            }
            b'P' => {
                if let (Some(name), Some(sql)) = (r.cstr(), r.cstr()) {
                    self.statements.insert(name, sql.into());
                }
            }
            b'B' => {
                if let Some((portal, stmt, params)) = parse_bind(body) {
                    let sql = self
                        .statements
                        .get(stmt)
                        .cloned()
                        .unwrap_or_else(|| "".into());
                    let params = (!self.redact).then(|| params.into());
                    match self.portals.get_mut(portal) {
                        Some(p) => *p = (sql, params),
                        None => {
                            self.portals.insert(portal.to_string(), (sql, params));
                        }
                    }
                }
            }
            b'E' => {
                let portal = name(&mut r).unwrap_or("");
                let (sql, params) = self
                    .portals
                    .get(portal)
                    .cloned()
                    .unwrap_or_else(|| ("".into(), None));
                let s = self.stmt("extended", sql, params);
                self.pending.push_back(Pending::Exec(s));
            }
            b'S' => self.pending.push_back(Pending::Sync),
            b'C' => {
                if let (Some(kind), Some(name)) = (r.bytes(1).map(|b| b[0]), r.cstr()) {
                    match kind {
                        b'S' => {
                            self.statements.remove(&name);
                        }
                        b'P' => {
                            self.portals.remove(&name);
                        }
                        _ => {}
                    }
                }
            }
            b'F' => {
                let oid = r.i32().unwrap_or(0);
                let s = self.stmt(
                    "function",
                    format!("function call (oid {oid})").into(),
                    None,
                );
                self.pending.push_back(Pending::Simple(s));
            }
            _ => {}
        }
    }

    /// Appends the statement's transcript line to `out`, written directly (this runs per
    /// statement).
    fn line(&self, s: Stmt, out: &mut Vec<u8>) {
        use std::io::Write;
        let json = |out: &mut Vec<u8>, v: &str| {
            if serde_json::to_writer(&mut *out, v).is_err() {
                out.extend_from_slice(b"\"\"");
            }
        };
        let took = s.start.elapsed();
        let _ = write!(
            out,
            "{{\"t\":{},\"type\":\"statement\",\"protocol\":\"{}\",\"sql\":",
            Thousandths(s.t.as_millis()),
            s.protocol
        );
        json(out, &s.sql);
        let _ = write!(out, ",\"duration_ms\":{}", Thousandths(took.as_micros()));
        if let Some(p) = &s.params {
            out.extend_from_slice(b",\"params\":");
            out.extend_from_slice(p.as_bytes());
        } else if self.redact && s.protocol == "extended" {
            out.extend_from_slice(b",\"params\":\"redacted\"");
        }
        if !s.tag.is_empty() {
            out.extend_from_slice(b",\"tag\":");
            json(out, &s.tag);
            if let Some(n) = s.rows {
                let _ = write!(out, ",\"rows\":{n}");
            }
        }
        if let Some((code, message)) = &s.error {
            out.extend_from_slice(b",\"error\":{\"code\":");
            json(out, code);
            out.extend_from_slice(b",\"message\":");
            json(out, message);
            out.push(b'}');
        }
        out.extend_from_slice(b"}\n");
    }

    /// A backend message; appends the transcript lines it completes to `out`.
    fn server(&mut self, tag: u8, body: &[u8], out: &mut Vec<u8>) {
        match tag {
            b'C' | b'I' | b's' => {
                let text = match tag {
                    b'C' => name(&mut Reader(body)).unwrap_or(""),
                    b's' => "(portal suspended)",
                    _ => "",
                };
                match self.pending.front_mut() {
                    Some(Pending::Simple(s)) if tag == b'C' => s.complete(text),
                    Some(Pending::Exec(_)) => {
                        if let Some(Pending::Exec(mut s)) = self.pending.pop_front() {
                            if !text.is_empty() {
                                s.complete(text);
                            }
                            self.line(s, out);
                        }
                    }
                    _ => {}
                }
            }
            b'E' => {
                let err = wire::error_fields(body);
                match self.pending.front_mut() {
                    Some(Pending::Simple(s)) => s.error = Some(err),
                    Some(Pending::Exec(_)) => {
                        if let Some(Pending::Exec(mut s)) = self.pending.pop_front() {
                            s.error = Some(err);
                            self.line(s, out);
                        }
                        // The server skips everything up to the next Sync.
                        while matches!(self.pending.front(), Some(Pending::Exec(_))) {
                            self.pending.pop_front();
                        }
                    }
                    _ => {
                        let mut line = json!({
                            "t": (self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                            "type": "error",
                            "error": { "code": err.0, "message": err.1 },
                        })
                        .to_string()
                        .into_bytes();
                        line.push(b'\n');
                        out.extend_from_slice(&line);
                    }
                }
            }
            b'Z' => {
                while let Some(p) = self.pending.pop_front() {
                    match p {
                        Pending::Simple(s) => {
                            self.line(s, out);
                            break;
                        }
                        Pending::Sync => break,
                        Pending::Exec(s) => self.line(s, out),
                    }
                }
            }
            _ => {}
        }
    }
}

/// A count of thousandths shown with three decimals (`1234` → `1.234`): seconds from
/// milliseconds, milliseconds from microseconds. Integer formatting keeps floats off the
/// per-statement path.
struct Thousandths(u128);

impl std::fmt::Display for Thousandths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// A NUL-terminated text, borrowed when it is UTF-8 (lossy otherwise).
fn text<'a>(r: &mut Reader<'a>) -> std::borrow::Cow<'a, str> {
    let Some(end) = r.0.iter().position(|&b| b == 0) else {
        return std::borrow::Cow::Borrowed("");
    };
    let (n, rest) = r.0.split_at(end);
    r.0 = &rest[1..];
    String::from_utf8_lossy(n)
}

/// The length of the complete messages at the front of `buf`, letting `each` see them.
fn complete(
    buf: &[u8],
    max: usize,
    mut each: impl FnMut(u8, &[u8]),
) -> Result<usize, wire::WireError> {
    let mut pos = 0;
    while let Some((tag, len)) = wire::frame(&buf[pos..], max)? {
        each(tag, wire::body(&buf[pos..pos + len]));
        pos += len;
    }
    Ok(pos)
}

/// Drops the first `n` bytes of `buf`, keeping room to read into.
fn consume(buf: &mut BytesMut, n: usize) {
    if n == buf.len() {
        buf.clear();
    } else {
        buf.advance(n);
    }
    if buf.capacity() - buf.len() < 8192 {
        buf.reserve(64 * 1024);
    }
}

/// What can interrupt a relay: its end, a failed recording, shutdown, or a notice for
/// the user. A watcher task waits on those sources and raises the alarm, so the relay's
/// hot path checks one atomic per wake-up instead of polling a notifier per source.
struct Alarm {
    state: AtomicU8,
    waker: AtomicWaker,
    notice: Mutex<Option<String>>,
}

const ENDED: u8 = 1;
const RECORDING_FAILED: u8 = 2;
const SHUTDOWN: u8 = 4;
const NOTICE: u8 = 8;
const STOPS: u8 = ENDED | RECORDING_FAILED | SHUTDOWN;

impl Alarm {
    fn raise(&self, bit: u8) {
        self.state.fetch_or(bit, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Ready with the raised bits among `mask`.
    fn poll(&self, cx: &mut Context<'_>, mask: u8) -> Poll<u8> {
        self.waker.register(cx.waker());
        match self.state.load(Ordering::Acquire) & mask {
            0 => Poll::Pending,
            bits => Poll::Ready(bits),
        }
    }

    async fn wait(&self, mask: u8) -> u8 {
        std::future::poll_fn(|cx| self.poll(cx, mask)).await
    }

    fn take_notice(&self) -> Option<String> {
        self.state.fetch_and(!NOTICE, Ordering::AcqRel);
        self.notice.lock().ok()?.take()
    }
}

async fn watch(
    alarm: Arc<Alarm>,
    end: CancellationToken,
    failed: CancellationToken,
    shutdown: CancellationToken,
    mut notices: tokio::sync::watch::Receiver<Option<String>>,
) {
    let mut notices_open = true;
    loop {
        tokio::select! {
            _ = end.cancelled() => return alarm.raise(ENDED),
            _ = failed.cancelled() => return alarm.raise(RECORDING_FAILED),
            _ = shutdown.cancelled() => return alarm.raise(SHUTDOWN),
            r = notices.changed(), if notices_open => match r {
                Ok(()) => {
                    let text = notices.borrow_and_update().clone();
                    if let Some(text) = text {
                        if let Ok(mut n) = alarm.notice.lock() {
                            *n = Some(text);
                        }
                        alarm.raise(NOTICE);
                    }
                }
                Err(_) => notices_open = false,
            },
        }
    }
}

pub async fn run(r: Relay<'_>) -> Outcome {
    let Relay {
        client,
        upstream,
        recorder,
        limits,
        cancel,
        redact,
    } = r;
    let tracker = Mutex::new(Tracker {
        start: Instant::now(),
        redact,
        pending: VecDeque::new(),
        statements: HashMap::new(),
        portals: HashMap::new(),
    });
    let alarm = Arc::new(Alarm {
        state: AtomicU8::new(0),
        waker: AtomicWaker::new(),
        notice: Mutex::new(None),
    });
    let watcher = tokio::spawn(watch(
        alarm.clone(),
        limits.end.clone(),
        recorder.failed(),
        cancel.clone(),
        limits.notices.subscribe(),
    ));
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut bytes_in = 0u64;
    let mut bytes_out = 0u64;

    let from_client = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            match cr.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return "client exit",
                Ok(_) => {}
            }
            limits.touch();
            let mut terminate = false;
            let ready = {
                let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
                complete(&buf, wire::MAX_MESSAGE, |tag, body| {
                    terminate |= tag == b'X';
                    t.client(tag, body);
                })
            };
            let Ok(ready) = ready else {
                return "protocol violation by the client";
            };
            if ready > 0 {
                bytes_in += ready as u64;
                if uw.write_all(&buf[..ready]).await.is_err() {
                    return "target closed the connection";
                }
            }
            if terminate {
                return "client exit";
            }
            consume(&mut buf, ready);
        }
    };

    let to_client = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut lines = Vec::with_capacity(4096);
        loop {
            tokio::select! {
                biased;
                bits = alarm.wait(STOPS | NOTICE) => {
                    if bits & ENDED != 0 {
                        return "ended";
                    }
                    if bits & RECORDING_FAILED != 0 {
                        return "recording failed";
                    }
                    if bits & SHUTDOWN != 0 {
                        limits.terminate("shutdown", "postern is shutting down".into());
                        return "ended";
                    }
                    if let Some(text) = alarm.take_notice()
                        && cw.write_all(&wire::notice(&format!("postern: {text}"))).await.is_err()
                    {
                        return "client exit";
                    }
                    continue;
                }
                r = ur.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return "target closed the connection",
                    Ok(_) => {}
                },
            }
            let ready = {
                let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
                complete(&buf, usize::MAX, |tag, body| {
                    t.server(tag, body, &mut lines)
                })
            };
            let Ok(ready) = ready else {
                return "protocol violation by the target";
            };
            if !lines.is_empty() {
                if recorder.append(&lines).await.is_err() {
                    return "recording failed";
                }
                lines.clear();
            }
            if ready > 0 {
                bytes_out += ready as u64;
                if cw.write_all(&buf[..ready]).await.is_err() {
                    return "client exit";
                }
            }
            consume(&mut buf, ready);
        }
    };

    let reason = tokio::select! {
        biased;
        r = from_client => r,
        r = to_client => r,
        // A client that stops reading cannot hold a session past its end.
        _ = async { alarm.wait(STOPS).await; tokio::time::sleep(Duration::from_secs(5)).await } => "ended",
    };
    watcher.abort();
    Outcome {
        reason: reason.to_string(),
        bytes_in,
        bytes_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn tracker() -> Tracker {
        Tracker {
            start: Instant::now(),
            redact: false,
            pending: VecDeque::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
        }
    }

    #[test]
    fn simple_and_extended_statements_pair_with_their_outcome() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.client(b'Q', b"select 1; select 2\0");
        t.server(b'C', b"SELECT 1\0", &mut out);
        t.server(b'C', b"SELECT 1\0", &mut out);
        assert!(out.is_empty());
        t.server(b'Z', b"I", &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        out.clear();
        assert_eq!(v["sql"], "select 1; select 2");
        assert_eq!(v["rows"], 2);

        // Parse/Bind/Execute ×2 in one pipeline; the second fails; then Sync.
        t.client(b'P', b"s1\0select $1::int\0\0\0");
        let mut bind = b"\0s1\0\0\0\0\x01\0\0\0\x0242".to_vec();
        bind.extend_from_slice(b"\0\0");
        t.client(b'B', &bind);
        t.client(b'E', b"\0\0\0\0\0");
        t.client(b'E', b"\0\0\0\0\0");
        t.client(b'S', b"");
        t.server(b'C', b"SELECT 1\0", &mut out);
        let mut err = b"SERROR\0C22P02\0Mbad\0".to_vec();
        err.push(0);
        t.server(b'E', &err, &mut out);
        t.server(b'Z', b"I", &mut out);
        let out = String::from_utf8(out).unwrap();
        let out: Vec<&str> = out.lines().collect();
        assert_eq!(out.len(), 2, "{out:?}");
        let a: Value = serde_json::from_str(out[0]).unwrap();
        assert_eq!(a["sql"], "select $1::int");
        assert_eq!(a["params"], json!(["42"]));
        assert_eq!(
            parse_bind(b"\0s\0\0\0\0\0").unwrap(),
            ("", "s", "[]".to_string())
        );
        let b: Value = serde_json::from_str(out[1]).unwrap();
        assert_eq!(b["error"]["code"], "22P02");
        assert!(t.pending.is_empty());
    }

    #[test]
    fn complete_frames_only() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&msg(b'Q', b"x\0"));
        buf.extend_from_slice(&msg(b'Q', b"yy\0")[..4]);
        let mut seen = Vec::new();
        let ready = complete(&buf, 100, |t, b| seen.push((t, b.to_vec()))).unwrap();
        assert_eq!(ready, 7);
        consume(&mut buf, ready);
        assert_eq!(buf.len(), 4);
        assert_eq!(seen, vec![(b'Q', b"x\0".to_vec())]);
    }

    #[test]
    fn bind_with_binary_and_null_parameters() {
        let mut b = b"p\0s\0".to_vec();
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(b"hi");
        b.extend_from_slice(&(-1i32).to_be_bytes());
        let (portal, stmt, params) = parse_bind(&b).unwrap();
        assert_eq!((portal, stmt), ("p", "s"));
        assert_eq!(params, r#"["hi",null]"#);
        let mut bin = b"\0\0".to_vec();
        bin.extend_from_slice(&1i16.to_be_bytes());
        bin.extend_from_slice(&1i16.to_be_bytes());
        bin.extend_from_slice(&1i16.to_be_bytes());
        bin.extend_from_slice(&2i32.to_be_bytes());
        bin.extend_from_slice(&[0x0a, 0xff]);
        assert_eq!(parse_bind(&bin).unwrap().2, r#"["\\x0aff"]"#);
        assert!(parse_bind(&b[..b.len() - 2]).is_none());
    }
}
