//! The relay of an authenticated PostgreSQL session: both directions at once, forwarding
//! whole messages untouched, and a tracker that pairs each statement (simple `Query`, or
//! extended `Parse`/`Bind`/`Execute`) with its outcome (`CommandComplete`, `ErrorResponse`)
//! for the transcript. A statement's line is queued to the recorder before its completion
//! reaches the client.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    t: f64,
    start: Instant,
    tags: Vec<String>,
    error: Option<(String, String)>,
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
        Stmt {
            protocol,
            sql,
            params,
            t: self.start.elapsed().as_secs_f64(),
            start: Instant::now(),
            tags: Vec::new(),
            error: None,
        }
    }

    fn client(&mut self, tag: u8, body: &[u8]) {
        let mut r = Reader(body);
        match tag {
            b'Q' => {
                let sql = r.cstr().unwrap_or_default();
                let s = self.stmt("simple", sql.into(), None);
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

    /// The statement's transcript line, written directly (this runs per statement).
    fn line(&self, s: Stmt) -> String {
        use std::fmt::Write;
        let json = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
        let mut l = String::with_capacity(128 + s.sql.len());
        let _ = write!(
            l,
            "{{\"t\":{:.3},\"type\":\"statement\",\"protocol\":\"{}\",\"sql\":{},\"duration_ms\":{:.3}",
            s.t,
            s.protocol,
            json(&s.sql),
            s.start.elapsed().as_secs_f64() * 1000.0
        );
        if let Some(p) = &s.params {
            let _ = write!(l, ",\"params\":{p}");
        } else if self.redact && s.protocol == "extended" {
            l.push_str(",\"params\":\"redacted\"");
        }
        if !s.tags.is_empty() {
            let _ = write!(l, ",\"tag\":{}", json(&s.tags.join("; ")));
            let counted: Vec<u64> = s.tags.iter().filter_map(|t| rows(t)).collect();
            if !counted.is_empty() {
                let _ = write!(l, ",\"rows\":{}", counted.iter().sum::<u64>());
            }
        }
        if let Some((code, message)) = &s.error {
            let _ = write!(
                l,
                ",\"error\":{{\"code\":{},\"message\":{}}}",
                json(code),
                json(message)
            );
        }
        l.push('}');
        l
    }

    /// A backend message; returns the transcript lines it completes.
    fn server(&mut self, tag: u8, body: &[u8], out: &mut Vec<String>) {
        match tag {
            b'C' | b'I' | b's' => {
                let text = match tag {
                    b'C' => Reader(body).cstr().unwrap_or_default(),
                    b's' => "(portal suspended)".into(),
                    _ => String::new(),
                };
                match self.pending.front_mut() {
                    Some(Pending::Simple(s)) if tag == b'C' => s.tags.push(text),
                    Some(Pending::Exec(_)) => {
                        if let Some(Pending::Exec(mut s)) = self.pending.pop_front() {
                            if !text.is_empty() {
                                s.tags.push(text);
                            }
                            out.push(self.line(s));
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
                            out.push(self.line(s));
                        }
                        // The server skips everything up to the next Sync.
                        while matches!(self.pending.front(), Some(Pending::Exec(_))) {
                            self.pending.pop_front();
                        }
                    }
                    _ => out.push(
                        json!({
                            "t": (self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                            "type": "error",
                            "error": { "code": err.0, "message": err.1 },
                        })
                        .to_string(),
                    ),
                }
            }
            b'Z' => {
                while let Some(p) = self.pending.pop_front() {
                    match p {
                        Pending::Simple(s) => {
                            out.push(self.line(s));
                            break;
                        }
                        Pending::Sync => break,
                        Pending::Exec(s) => out.push(self.line(s)),
                    }
                }
            }
            _ => {}
        }
    }
}

/// Splits the complete messages off the front of `buf`, letting `each` see them.
fn complete(
    buf: &mut BytesMut,
    max: usize,
    mut each: impl FnMut(u8, &[u8]),
) -> Result<BytesMut, wire::WireError> {
    let mut pos = 0;
    while let Some((tag, len)) = wire::frame(&buf[pos..], max)? {
        each(tag, wire::body(&buf[pos..pos + len]));
        pos += len;
    }
    Ok(buf.split_to(pos))
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
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut bytes_in = 0u64;
    let mut bytes_out = 0u64;
    let end = limits.end.clone();
    let failed = recorder.failed();

    let from_client = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            if buf.capacity() - buf.len() < 8192 {
                buf.reserve(64 * 1024);
            }
            match cr.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return "client exit",
                Ok(_) => {}
            }
            limits.touch();
            let mut terminate = false;
            let ready = {
                let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
                complete(&mut buf, wire::MAX_MESSAGE, |tag, body| {
                    terminate |= tag == b'X';
                    t.client(tag, body);
                })
            };
            let Ok(ready) = ready else {
                return "protocol violation by the client";
            };
            if !ready.is_empty() {
                bytes_in += ready.len() as u64;
                if uw.write_all(&ready).await.is_err() {
                    return "target closed the connection";
                }
            }
            if terminate {
                return "client exit";
            }
        }
    };

    let to_client = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut notices = limits.notices.subscribe();
        let mut lines = Vec::new();
        // What can interrupt the relay, made once rather than per message (each
        // `cancelled()` future registers with its token).
        let stop = async {
            tokio::select! {
                _ = end.cancelled() => "ended",
                _ = failed.cancelled() => "recording failed",
                _ = cancel.cancelled() => {
                    limits.terminate("shutdown", "postern is shutting down".into());
                    "ended"
                }
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                r = &mut stop => return r,
                Ok(()) = notices.changed() => {
                    let text = notices.borrow_and_update().clone();
                    if let Some(text) = text
                        && cw.write_all(&wire::notice(&format!("postern: {text}"))).await.is_err()
                    {
                        return "client exit";
                    }
                    continue;
                }
                r = async {
                    if buf.capacity() - buf.len() < 8192 {
                        buf.reserve(64 * 1024);
                    }
                    ur.read_buf(&mut buf).await
                } => match r {
                    Ok(0) | Err(_) => return "target closed the connection",
                    Ok(_) => {}
                },
            }
            let ready = {
                let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
                complete(&mut buf, usize::MAX, |tag, body| {
                    t.server(tag, body, &mut lines)
                })
            };
            let Ok(ready) = ready else {
                return "protocol violation by the target";
            };
            for l in lines.drain(..) {
                if recorder.record(&l).await.is_err() {
                    return "recording failed";
                }
            }
            if !ready.is_empty() {
                bytes_out += ready.len() as u64;
                if cw.write_all(&ready).await.is_err() {
                    return "client exit";
                }
            }
        }
    };

    let reason = tokio::select! {
        biased;
        r = from_client => r,
        r = to_client => r,
        // A client that stops reading cannot hold a session past its end.
        _ = async { end.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => "ended",
    };
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
        let v: Value = serde_json::from_str(&out.remove(0)).unwrap();
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
        assert_eq!(out.len(), 2, "{out:?}");
        let a: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(a["sql"], "select $1::int");
        assert_eq!(a["params"], json!(["42"]));
        assert_eq!(
            parse_bind(b"\0s\0\0\0\0\0").unwrap(),
            ("", "s", "[]".to_string())
        );
        let b: Value = serde_json::from_str(&out[1]).unwrap();
        assert_eq!(b["error"]["code"], "22P02");
        assert!(t.pending.is_empty());
    }

    #[test]
    fn complete_frames_only() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&msg(b'Q', b"x\0"));
        buf.extend_from_slice(&msg(b'Q', b"yy\0")[..4]);
        let mut seen = Vec::new();
        let ready = complete(&mut buf, 100, |t, b| seen.push((t, b.to_vec()))).unwrap();
        assert_eq!(ready.len(), 7);
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
