//! The relay of an authenticated PostgreSQL session: both directions at once, forwarding
//! whole messages untouched, and a tracker that pairs each statement (simple `Query`, or
//! extended `Parse`/`Bind`/`Execute`) with its outcome (`CommandComplete`, `ErrorResponse`)
//! for the transcript. A statement's line is queued to the recorder before its completion
//! reaches the client.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{Buf, BytesMut};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{Io, wire};
use crate::recording::LineSink;
use crate::server::limits::Limits;

pub struct Relay {
    pub client: Box<dyn Io>,
    pub upstream: Box<dyn Io>,
    pub recorder: LineSink,
    pub limits: Arc<Limits>,
    /// Server shutdown.
    pub cancel: CancellationToken,
    /// Leave `Bind` parameter values out of the transcript.
    pub redact: bool,
}

pub struct Outcome {
    pub reason: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The client's connection, for a last word; `None` when a direction had to be
    /// abandoned (a peer that stopped reading).
    pub client: Option<Box<dyn Io>>,
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

/// A bound portal: its statement's SQL and parameters.
type Portal = (Arc<str>, Option<Arc<str>>);

struct Tracker {
    start: Instant,
    redact: bool,
    pending: VecDeque<Pending>,
    statements: HashMap<String, Arc<str>>,
    portals: HashMap<String, Portal>,
    /// The unnamed portal, which most drivers bind for every statement: kept apart from
    /// the map (no hashing per `Bind` and `Execute`).
    unnamed: Option<Portal>,
}

/// A bounds-checked reader over a message body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A NUL-terminated string (SQL, a statement or portal name, a command tag):
    /// borrowed when it is UTF-8, lossy otherwise.
    fn text(&mut self) -> Option<Cow<'a, str>> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let (n, rest) = self.0.split_at(end);
        self.0 = &rest[1..];
        Some(match std::str::from_utf8(n) {
            Ok(t) => Cow::Borrowed(t),
            Err(_) => String::from_utf8_lossy(n),
        })
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
        let text = match std::str::from_utf8(raw) {
            Ok(t) => Cow::Borrowed(t),
            Err(_) => String::from_utf8_lossy(raw),
        };
        if raw.len() <= PARAM_CHARS {
            // At most as many characters as bytes: nothing to cut.
            return json_str(out, &text);
        }
        let cut = text
            .char_indices()
            .nth(PARAM_CHARS)
            .map_or(text.len(), |(i, _)| i);
        if cut < text.len() {
            json_str(out, &format!("{}…", &text[..cut]));
        } else {
            json_str(out, &text);
        }
    }
}

/// `Bind`: (portal, statement, the parameters as a JSON array).
fn parse_bind(body: &[u8]) -> Option<(Cow<'_, str>, Cow<'_, str>, String)> {
    let mut r = Reader(body);
    let portal = r.text()?;
    let stmt = r.text()?;
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
                let sql = r.text().unwrap_or_default();
                let s = self.stmt("simple", Arc::from(&*sql), None);
                self.pending.push_back(Pending::Simple(s));
            }
            b'P' => {
                if let (Some(name), Some(sql)) = (r.text(), r.text()) {
                    self.statements.insert(name.into_owned(), Arc::from(&*sql));
                }
            }
            b'B' => {
                if let Some((portal, stmt, params)) = parse_bind(body) {
                    let sql = self
                        .statements
                        .get(&*stmt)
                        .cloned()
                        .unwrap_or_else(|| "".into());
                    let params = (!self.redact).then(|| params.into());
                    if portal.is_empty() {
                        self.unnamed = Some((sql, params));
                    } else {
                        match self.portals.get_mut(&*portal) {
                            Some(p) => *p = (sql, params),
                            None => {
                                self.portals.insert(portal.into_owned(), (sql, params));
                            }
                        }
                    }
                }
            }
            b'E' => {
                let portal = r.text().unwrap_or_default();
                let bound = match &*portal {
                    "" => self.unnamed.as_ref(),
                    p => self.portals.get(p),
                };
                let (sql, params) = bound.cloned().unwrap_or_else(|| ("".into(), None));
                let s = self.stmt("extended", sql, params);
                self.pending.push_back(Pending::Exec(s));
            }
            b'S' => self.pending.push_back(Pending::Sync),
            b'C' => {
                if let (Some(kind), Some(name)) = (r.bytes(1).map(|b| b[0]), r.text()) {
                    match kind {
                        b'S' => {
                            self.statements.remove(&*name);
                        }
                        b'P' if name.is_empty() => self.unnamed = None,
                        b'P' => {
                            self.portals.remove(&*name);
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
        let took = s.start.elapsed();
        out.extend_from_slice(b"{\"t\":");
        thousandths(out, s.t.as_millis());
        out.extend_from_slice(b",\"type\":\"statement\",\"protocol\":\"");
        out.extend_from_slice(s.protocol.as_bytes());
        out.extend_from_slice(b"\",\"sql\":");
        json_str(out, &s.sql);
        out.extend_from_slice(b",\"duration_ms\":");
        thousandths(out, took.as_micros());
        if let Some(p) = &s.params {
            out.extend_from_slice(b",\"params\":");
            out.extend_from_slice(p.as_bytes());
        } else if self.redact && s.protocol == "extended" {
            out.extend_from_slice(b",\"params\":\"redacted\"");
        }
        if !s.tag.is_empty() {
            out.extend_from_slice(b",\"tag\":");
            json_str(out, &s.tag);
            if let Some(n) = s.rows {
                out.extend_from_slice(b",\"rows\":");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            }
        }
        if let Some((code, message)) = &s.error {
            out.extend_from_slice(b",\"error\":{\"code\":");
            json_str(out, code);
            out.extend_from_slice(b",\"message\":");
            json_str(out, message);
            out.push(b'}');
        }
        out.extend_from_slice(b"}\n");
    }

    /// A backend message; appends the transcript lines it completes to `out`.
    fn server(&mut self, tag: u8, body: &[u8], out: &mut Vec<u8>) {
        match tag {
            b'C' | b'I' | b's' => {
                let text = match tag {
                    b'C' => Reader(body).text().unwrap_or_default(),
                    b's' => Cow::Borrowed("(portal suspended)"),
                    _ => Cow::Borrowed(""),
                };
                match self.pending.front_mut() {
                    Some(Pending::Simple(s)) if tag == b'C' => s.complete(&text),
                    Some(Pending::Exec(_)) => {
                        if let Some(Pending::Exec(mut s)) = self.pending.pop_front() {
                            if !text.is_empty() {
                                s.complete(&text);
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

/// A count of thousandths with three decimals (`1234` → `1.234`): seconds from
/// milliseconds, milliseconds from microseconds. Integers only: this runs per statement.
fn thousandths(out: &mut Vec<u8>, n: u128) {
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    out.extend_from_slice(itoa::Buffer::new().format(n / 1000).as_bytes());
    let frac = n % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// A JSON string, as `serde_json` writes it; text with nothing to escape (most SQL) is
/// copied as is.
fn json_str(out: &mut Vec<u8>, v: &str) {
    let plain = !v.bytes().fold(false, |esc, b| {
        esc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"\"\"");
    }
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

/// What the two directions of a relay share: an alarm for what can interrupt them (the
/// session's end, a failed recording, shutdown, a notice for the user, the other
/// direction finishing) and the byte counts. A watcher task waits on the outside sources
/// and raises the alarm, so the hot path checks one atomic per wake-up instead of polling
/// a notifier per source.
struct Link {
    state: AtomicU8,
    /// One per direction (each runs as its own task).
    wakers: [AtomicWaker; 2],
    notice: Mutex<Option<String>>,
    /// Bytes forwarded each way, kept here so a direction abandoned at the end still
    /// counts.
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

const ENDED: u8 = 1;
const RECORDING_FAILED: u8 = 2;
const SHUTDOWN: u8 = 4;
const NOTICE: u8 = 8;
const DONE: u8 = 16;
const STOPS: u8 = ENDED | RECORDING_FAILED | SHUTDOWN;

const FROM_CLIENT: usize = 0;
const TO_CLIENT: usize = 1;

impl Link {
    fn raise(&self, bit: u8) {
        self.state.fetch_or(bit, Ordering::AcqRel);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Ready with the raised bits among `mask`.
    fn poll(&self, cx: &mut Context<'_>, slot: usize, mask: u8) -> Poll<u8> {
        self.wakers[slot].register(cx.waker());
        match self.state.load(Ordering::Acquire) & mask {
            0 => Poll::Pending,
            bits => Poll::Ready(bits),
        }
    }

    async fn wait(&self, slot: usize, mask: u8) -> u8 {
        std::future::poll_fn(|cx| self.poll(cx, slot, mask)).await
    }

    fn take_notice(&self) -> Option<String> {
        self.state.fetch_and(!NOTICE, Ordering::AcqRel);
        self.notice.lock().ok()?.take()
    }
}

async fn watch(
    link: Arc<Link>,
    end: CancellationToken,
    failed: CancellationToken,
    shutdown: CancellationToken,
    mut notices: tokio::sync::watch::Receiver<Option<String>>,
) {
    let mut notices_open = true;
    loop {
        tokio::select! {
            _ = end.cancelled() => return link.raise(ENDED),
            _ = failed.cancelled() => return link.raise(RECORDING_FAILED),
            _ = shutdown.cancelled() => return link.raise(SHUTDOWN),
            r = notices.changed(), if notices_open => match r {
                Ok(()) => {
                    let text = notices.borrow_and_update().clone();
                    if let Some(text) = text {
                        if let Ok(mut n) = link.notice.lock() {
                            *n = Some(text);
                        }
                        link.raise(NOTICE);
                    }
                }
                Err(_) => notices_open = false,
            },
        }
    }
}

/// A connection's read half: TCP's own (no lock), or a shared half of anything else.
enum ReadSide {
    Tcp(OwnedReadHalf),
    Any(ReadHalf<Box<dyn Io>>),
}

enum WriteSide {
    Tcp(OwnedWriteHalf),
    Any(WriteHalf<Box<dyn Io>>),
}

fn split(io: Box<dyn Io>) -> (ReadSide, WriteSide) {
    match io.into_tcp() {
        Ok(tcp) => {
            let (r, w) = tcp.into_split();
            (ReadSide::Tcp(r), WriteSide::Tcp(w))
        }
        Err(io) => {
            let (r, w) = tokio::io::split(io);
            (ReadSide::Any(r), WriteSide::Any(w))
        }
    }
}

fn unsplit(r: ReadSide, w: WriteSide) -> Option<Box<dyn Io>> {
    match (r, w) {
        (ReadSide::Tcp(r), WriteSide::Tcp(w)) => {
            r.reunite(w).ok().map(|t| Box::new(t) as Box<dyn Io>)
        }
        (ReadSide::Any(r), WriteSide::Any(w)) => Some(r.unsplit(w)),
        _ => None,
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Any(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteSide::Any(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Any(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Any(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Client → target: forwards complete messages, noting statements as they go out.
async fn from_client(
    mut cr: ReadSide,
    mut uw: WriteSide,
    tracker: Arc<Mutex<Tracker>>,
    limits: Arc<Limits>,
    link: Arc<Link>,
) -> (ReadSide, &'static str) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason = loop {
        tokio::select! {
            biased;
            _ = link.wait(FROM_CLIENT, STOPS | DONE) => break "ended",
            r = cr.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break "client exit",
                Ok(_) => {}
            },
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
            break "protocol violation by the client";
        };
        if ready > 0 {
            link.bytes_in.fetch_add(ready as u64, Ordering::Relaxed);
            if uw.write_all(&buf[..ready]).await.is_err() {
                break "target closed the connection";
            }
        }
        if terminate {
            break "client exit";
        }
        consume(&mut buf, ready);
    };
    (cr, reason)
}

/// Target → client: forwards complete messages; a statement's transcript line is
/// recorded before its completion reaches the client.
async fn to_client(
    mut ur: ReadSide,
    mut cw: WriteSide,
    tracker: Arc<Mutex<Tracker>>,
    recorder: LineSink,
    limits: Arc<Limits>,
    link: Arc<Link>,
) -> (WriteSide, &'static str) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut lines = Vec::with_capacity(4096);
    let reason = loop {
        tokio::select! {
            biased;
            bits = link.wait(TO_CLIENT, STOPS | NOTICE | DONE) => {
                if bits & ENDED != 0 {
                    break "ended";
                }
                if bits & RECORDING_FAILED != 0 {
                    break "recording failed";
                }
                if bits & SHUTDOWN != 0 {
                    limits.terminate("shutdown", "postern is shutting down".into());
                    break "ended";
                }
                if bits & DONE != 0 {
                    break "client exit";
                }
                if let Some(text) = link.take_notice()
                    && cw.write_all(&wire::notice(&format!("postern: {text}"))).await.is_err()
                {
                    break "client exit";
                }
                continue;
            }
            r = ur.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break "target closed the connection",
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
            break "protocol violation by the target";
        };
        if !lines.is_empty() {
            if recorder.append(&lines).await.is_err() {
                break "recording failed";
            }
            lines.clear();
        }
        if ready > 0 {
            link.bytes_out.fetch_add(ready as u64, Ordering::Relaxed);
            if cw.write_all(&buf[..ready]).await.is_err() {
                break "client exit";
            }
        }
        consume(&mut buf, ready);
    };
    (cw, reason)
}

/// Relays until either side leaves or the session ends. Each direction runs as its own
/// task (on the connection's thread), so a message wakes and polls only its direction.
pub async fn run(r: Relay) -> Outcome {
    let Relay {
        client,
        upstream,
        recorder,
        limits,
        cancel,
        redact,
    } = r;
    let tracker = Arc::new(Mutex::new(Tracker {
        start: Instant::now(),
        redact,
        pending: VecDeque::new(),
        statements: HashMap::new(),
        portals: HashMap::new(),
        unnamed: None,
    }));
    let link = Arc::new(Link {
        state: AtomicU8::new(0),
        wakers: [AtomicWaker::new(), AtomicWaker::new()],
        notice: Mutex::new(None),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
    });
    let _watcher = AbortOnDropHandle::new(tokio::spawn(watch(
        link.clone(),
        limits.end.clone(),
        recorder.failed(),
        cancel,
        limits.notices.subscribe(),
    )));
    let (cr, cw) = split(client);
    let (ur, uw) = split(upstream);
    let mut up = AbortOnDropHandle::new(tokio::spawn(from_client(
        cr,
        uw,
        tracker.clone(),
        limits.clone(),
        link.clone(),
    )));
    let mut down = AbortOnDropHandle::new(tokio::spawn(to_client(
        ur,
        cw,
        tracker,
        recorder,
        limits,
        link.clone(),
    )));
    // The first direction to finish gives the reason; the other is told and has a few
    // seconds to return its half (a peer that stopped reading cannot hold it longer).
    let grace = Duration::from_secs(5);
    let (up_first, up, down) = tokio::select! {
        r = &mut up => {
            link.raise(DONE);
            (true, r.ok(), tokio::time::timeout(grace, down).await.ok().and_then(Result::ok))
        }
        r = &mut down => {
            link.raise(DONE);
            (false, tokio::time::timeout(grace, up).await.ok().and_then(Result::ok), r.ok())
        }
    };
    let reason = match (up_first, &up, &down) {
        (true, Some((_, r)), _) | (false, _, Some((_, r))) => *r,
        _ => "relay failed",
    };
    Outcome {
        reason: reason.to_string(),
        bytes_in: link.bytes_in.load(Ordering::Relaxed),
        bytes_out: link.bytes_out.load(Ordering::Relaxed),
        client: match (up, down) {
            (Some((cr, _)), Some((cw, _))) => unsplit(cr, cw),
            _ => None,
        },
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
            unnamed: None,
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
            ("".into(), "s".into(), "[]".to_string())
        );
        let b: Value = serde_json::from_str(out[1]).unwrap();
        assert_eq!(b["error"]["code"], "22P02");
        assert!(t.pending.is_empty());

        // A named portal next to the unnamed one; each Execute finds its own.
        t.client(b'P', b"s2\0select 'named'\0\0\0");
        t.client(b'B', b"p1\0s2\0\0\0\0\0\0\0");
        t.client(b'B', b"\0s1\0\0\0\0\0\0\0");
        t.client(b'E', b"p1\0\0\0\0\0");
        t.client(b'E', b"\0\0\0\0\0");
        t.client(b'S', b"");
        let mut out = Vec::new();
        t.server(b'C', b"SELECT 1\0", &mut out);
        t.server(b'C', b"SELECT 1\0", &mut out);
        t.server(b'Z', b"I", &mut out);
        let out = String::from_utf8(out).unwrap();
        let sql: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["sql"].clone())
            .collect();
        assert_eq!(sql, vec![json!("select 'named'"), json!("select $1::int")]);
    }

    #[test]
    fn numbers_and_strings_are_written_as_json() {
        let mut out = Vec::new();
        for n in [0u128, 5, 1234, 60_000_001] {
            out.clear();
            thousandths(&mut out, n);
            let want = format!("{:.3}", n as f64 / 1000.0);
            assert_eq!(String::from_utf8_lossy(&out), want);
        }
        for v in [
            "select 1",
            "say \"hi\"",
            "a\\b",
            "line\nbreak\t",
            "caf\u{e9} \u{1}",
            "",
        ] {
            out.clear();
            json_str(&mut out, v);
            assert_eq!(out, serde_json::to_vec(v).unwrap(), "{v}");
        }
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
        assert_eq!((portal, stmt), ("p".into(), "s".into()));
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
