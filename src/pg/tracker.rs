//! The statement tracker: a model of what the target does with each client message, so
//! the transcript holds every statement the server executed, as executed.
//!
//! Client messages are queued as they go out (`client`); the server's replies resolve them
//! in order (`server`). The model follows PostgreSQL's own rules: `Parse`, `Bind` and
//! `Close` take effect when the server confirms them; after an error in an extended-query
//! message the server skips everything up to `Sync`; inside `COPY FROM STDIN` the server
//! consumes copy messages and ignores `Sync` and `Flush`; outside it, copy messages are
//! ignored. A statement's line is written when it is sent, its result line when the
//! server answers it (or `finish` says none was seen).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::text::Charset;
use super::transcript::{Line, Reader, params};
use super::wire;

/// Client messages awaiting the server at once.
pub const MAX_IN_FLIGHT: usize = 65_536;
/// Named prepared statements, and named portals, a session may hold.
pub const MAX_NAMES: usize = 10_000;
/// Text (SQL, parameters) the tracker keeps for one session.
pub const MAX_TEXT: usize = 64 << 20;

/// A limit the client went past: the session ends with this message.
#[derive(Debug)]
pub struct Limit(pub String);

/// A statement's text, decoded once.
pub struct Sql {
    text: String,
    escaped: bool,
    /// The statement's whole length, when only a prefix was kept.
    cut: Option<usize>,
}

impl Sql {
    fn new(raw: &[u8], cs: Charset, cut: Option<usize>) -> Arc<Sql> {
        let (text, escaped) = cs.decode(raw);
        Arc::new(Sql {
            text: text.into_owned(),
            escaped,
            cut,
        })
    }
}

/// Bytes of text a value holds, for the session's budget.
trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for Sql {
    fn weight(&self) -> usize {
        self.text.len() + 32
    }
}

/// A bound portal: its statement (raw name, shown name, SQL) and parameters (JSON).
pub struct Portal {
    raw: Box<[u8]>,
    statement: String,
    sql: Option<Arc<Sql>>,
    params: Option<String>,
}

impl Weight for Portal {
    fn weight(&self) -> usize {
        self.statement.len() + self.params.as_ref().map_or(0, String::len) + 48
    }
}

/// What messages in flight will make of a name, and how many of them there are.
type Ahead<T> = (Option<Arc<T>>, u32);

/// Statement or portal names: what the server holds (`done`) and what messages in flight
/// will make of them if the server accepts them (`ahead`, with how many such messages).
struct Names<T> {
    done: HashMap<Box<[u8]>, Arc<T>>,
    ahead: HashMap<Box<[u8]>, Ahead<T>>,
    bytes: usize,
}

impl<T: Weight> Names<T> {
    fn new() -> Self {
        Names {
            done: HashMap::new(),
            ahead: HashMap::new(),
            bytes: 0,
        }
    }

    /// What the name will mean once the messages sent so far are processed.
    fn lookup(&self, name: &[u8]) -> Option<Arc<T>> {
        match self.ahead.get(name) {
            Some((v, _)) => v.clone(),
            None => self.done.get(name).cloned(),
        }
    }

    fn len(&self) -> usize {
        self.done.len() + self.ahead.len()
    }

    /// A message in flight will set (or, with `None`, remove) the name.
    fn plan(&mut self, name: &[u8], v: Option<Arc<T>>) {
        self.bytes += v.as_ref().map_or(0, |v| v.weight());
        match self.ahead.get_mut(name) {
            Some(e) => {
                if let Some(old) = &e.0 {
                    self.bytes -= old.weight().min(self.bytes);
                }
                *e = (v, e.1 + 1);
            }
            None => {
                self.ahead.insert(name.into(), (v, 1));
            }
        }
    }

    /// The server answered a message that planned `name`: `Some(v)` when it took effect.
    fn settle(&mut self, name: &[u8], took: Option<Option<Arc<T>>>) {
        if let Some(v) = took {
            let old = match v {
                Some(v) => {
                    self.bytes += v.weight();
                    self.done.insert(name.into(), v)
                }
                None => self.done.remove(name),
            };
            if let Some(old) = old {
                self.bytes -= old.weight().min(self.bytes);
            }
        }
        if let Some(e) = self.ahead.get_mut(name) {
            e.1 -= 1;
            if e.1 == 0
                && let Some((Some(v), _)) = self.ahead.remove(name)
            {
                self.bytes -= v.weight().min(self.bytes);
            }
        }
    }

    fn clear_done(&mut self) {
        for v in self.done.values() {
            self.bytes -= v.weight().min(self.bytes);
        }
        self.done.clear();
    }
}

/// A statement that runs: a simple query, an `Execute` or a function call.
struct Run {
    n: u64,
    start: Instant,
    tags: String,
    tag_rows: Option<u64>,
    data_rows: u64,
    error: Option<(String, String)>,
    /// What ended it when no command tag did (`suspended`, `empty`, `skipped`, …).
    completion: Option<&'static str>,
    size: usize,
}

impl Run {
    fn tag(&mut self, tag: &str) {
        if !self.tags.is_empty() {
            self.tags.push_str("; ");
        }
        self.tags.push_str(tag);
        if let Some(n) = tag.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) {
            self.tag_rows = Some(self.tag_rows.unwrap_or(0) + n);
        }
    }
}

enum Op {
    Query(Run),
    Func(Run),
    Execute {
        run: Run,
        name: Box<[u8]>,
        portal: Option<Arc<Portal>>,
    },
    Parse {
        name: Box<[u8]>,
        sql: Arc<Sql>,
    },
    Bind {
        name: Box<[u8]>,
        portal: Arc<Portal>,
    },
    Close {
        statement: bool,
        name: Box<[u8]>,
    },
    Describe,
    Sync,
    /// `CopyData` messages in a row.
    CopyData,
    /// `CopyDone` or `CopyFail`.
    CopyEnd,
}

/// The statements of the current transaction that completed, for marking them rolled
/// back when it ends in a rollback.
#[derive(Default)]
struct Tx {
    first: Option<u64>,
    last: u64,
    /// An error since the last `ReadyForQuery`.
    error: bool,
    /// The last `ReadyForQuery` status.
    status: u8,
}

pub struct Tracker {
    start: Instant,
    redact: bool,
    charset: Charset,
    next: u64,
    ops: VecDeque<Op>,
    op_bytes: usize,
    statements: Names<Sql>,
    portals: Names<Portal>,
    /// The server skips messages until `Sync` (an extended-query message failed).
    skip: bool,
    /// The statement at the front is in `COPY FROM STDIN`: the server reads copy messages.
    copy_in: bool,
    tx: Tx,
}

/// Large-object functions clients call by fast path, by their fixed catalog OIDs.
fn function_name(oid: i32) -> Option<&'static str> {
    Some(match oid {
        715 => "lo_create",
        952 => "lo_open",
        953 => "lo_close",
        954 => "loread",
        955 => "lowrite",
        956 => "lo_lseek",
        957 => "lo_creat",
        958 => "lo_tell",
        964 => "lo_unlink",
        1004 => "lo_truncate",
        3170 => "lo_lseek64",
        3171 => "lo_tell64",
        3172 => "lo_truncate64",
        _ => return None,
    })
}

/// The statement name in `EXECUTE name …`, folded as PostgreSQL folds identifiers.
fn executed_name(sql: &str) -> Option<Vec<u8>> {
    let s = sql.trim_start();
    let head = s.get(..7)?;
    if !head.eq_ignore_ascii_case("execute") {
        return None;
    }
    let rest = &s[7..];
    if !rest.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let rest = rest.trim_start();
    if let Some(q) = rest.strip_prefix('"') {
        let end = q.find('"')?;
        return Some(q.as_bytes()[..end].to_vec());
    }
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_lowercase().into_bytes())
}

impl Tracker {
    pub fn new(redact: bool) -> Tracker {
        Tracker {
            start: Instant::now(),
            redact,
            charset: Charset::Utf8,
            next: 1,
            ops: VecDeque::new(),
            op_bytes: 0,
            statements: Names::new(),
            portals: Names::new(),
            skip: false,
            copy_in: false,
            tx: Tx {
                status: b'I',
                ..Tx::default()
            },
        }
    }

    /// Nothing the server has yet to answer.
    pub fn idle(&self) -> bool {
        self.ops.is_empty()
    }

    fn t(&self) -> Duration {
        self.start.elapsed()
    }

    fn run(&mut self, size: usize) -> Run {
        let n = self.next;
        self.next += 1;
        Run {
            n,
            start: Instant::now(),
            tags: String::new(),
            tag_rows: None,
            data_rows: 0,
            error: None,
            completion: None,
            size,
        }
    }

    fn check(&self, extra: usize) -> Result<(), Limit> {
        if self.ops.len() >= MAX_IN_FLIGHT {
            return Err(Limit(format!(
                "more than {MAX_IN_FLIGHT} messages sent without reading the server's replies"
            )));
        }
        let text = self.op_bytes + self.statements.bytes + self.portals.bytes + extra;
        if text > MAX_TEXT {
            return Err(Limit(format!(
                "more than {} MiB of statements and parameters held at once",
                MAX_TEXT >> 20
            )));
        }
        Ok(())
    }

    fn push(&mut self, op: Op, size: usize) {
        self.op_bytes += size;
        self.ops.push_back(op);
    }

    /// A client message on its way to the target (`cut`: its whole length, when only a
    /// prefix of it is here). Writes the lines of statements it starts into `out`.
    pub fn client(
        &mut self,
        tag: u8,
        body: &[u8],
        cut: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), Limit> {
        let cs = self.charset;
        let mut r = Reader(body);
        let trunc = cut.is_some();
        match tag {
            b'Q' => {
                let sql = r.cstr(trunc).unwrap_or_default();
                self.check(sql.len())?;
                let run = self.run(sql.len());
                let mut l = Line::new(out, self.t(), "statement");
                l.num("n", run.n)
                    .str("protocol", "simple")
                    .bytes("sql", sql, cs);
                if let Some(len) = cut {
                    l.num("bytes", len as u64);
                }
                let (text, _) = cs.decode(sql);
                if let Some(p) = executed_name(&text).and_then(|n| self.statements.lookup(&n)) {
                    l.text("prepared", &p.text, p.escaped);
                }
                l.end();
                let size = run.size;
                self.push(Op::Query(run), size);
            }
            b'P' => {
                let name = r.cstr(trunc).unwrap_or_default();
                let raw = r.cstr(trunc).unwrap_or_default();
                let sql = Sql::new(raw, cs, cut);
                self.check(2 * sql.weight())?;
                if self.statements.len() >= MAX_NAMES && !name.is_empty() {
                    return Err(Limit(format!("more than {MAX_NAMES} prepared statements")));
                }
                self.statements.plan(name, Some(sql.clone()));
                let size = sql.weight();
                self.push(
                    Op::Parse {
                        name: name.into(),
                        sql,
                    },
                    size,
                );
            }
            b'B' => {
                let name = r.cstr(trunc).unwrap_or_default();
                let stmt = r.cstr(trunc).unwrap_or_default();
                let rendered = params(&mut r, trunc, cs).unwrap_or_else(|| "[]".into());
                let portal = Arc::new(Portal {
                    raw: stmt.into(),
                    statement: cs.decode(stmt).0.into_owned(),
                    sql: self.statements.lookup(stmt),
                    params: (!self.redact).then_some(rendered),
                });
                self.check(2 * portal.weight())?;
                if self.portals.len() >= MAX_NAMES && !name.is_empty() {
                    return Err(Limit(format!("more than {MAX_NAMES} open portals")));
                }
                self.portals.plan(name, Some(portal.clone()));
                self.push(
                    Op::Bind {
                        name: name.into(),
                        portal,
                    },
                    0,
                );
            }
            b'E' => {
                self.check(0)?;
                let name = r.cstr(trunc).unwrap_or_default();
                let portal = self.portals.lookup(name);
                let run = self.run(0);
                let mut l = Line::new(out, self.t(), "statement");
                l.num("n", run.n).str("protocol", "extended");
                self.describe(&mut l, name, portal.as_deref());
                l.end();
                self.push(
                    Op::Execute {
                        run,
                        name: name.into(),
                        portal,
                    },
                    0,
                );
            }
            b'C' => {
                self.check(0)?;
                let statement = r.bytes(1) == Some(b"S");
                let name = r.cstr(trunc).unwrap_or_default();
                if statement {
                    self.statements.plan(name, None);
                } else {
                    self.portals.plan(name, None);
                }
                self.push(
                    Op::Close {
                        statement,
                        name: name.into(),
                    },
                    0,
                );
            }
            b'D' => {
                self.check(0)?;
                self.push(Op::Describe, 0);
            }
            b'S' => {
                self.check(0)?;
                self.push(Op::Sync, 0);
            }
            b'F' => {
                self.check(0)?;
                let oid = r.i32().unwrap_or(0);
                let args = params(&mut r, trunc, cs).unwrap_or_else(|| "[]".into());
                let run = self.run(args.len());
                let mut l = Line::new(out, self.t(), "statement");
                l.num("n", run.n)
                    .str("protocol", "function")
                    .str("sql", "")
                    .num("function_oid", u64::from(oid.unsigned_abs()));
                if let Some(name) = function_name(oid) {
                    l.str("function", name);
                }
                if self.redact {
                    l.str("params", "redacted");
                } else {
                    l.json("params", &args);
                }
                l.end();
                let size = run.size;
                self.push(Op::Func(run), size);
            }
            b'd' if matches!(self.ops.back(), Some(Op::CopyData)) => {}
            b'd' => {
                self.check(0)?;
                self.push(Op::CopyData, 0);
            }
            b'c' | b'f' => {
                self.check(0)?;
                self.push(Op::CopyEnd, 0);
            }
            // Flush has no reply and no effect; Terminate ends the session.
            _ => {}
        }
        self.settle(out);
        Ok(())
    }

    /// The statement an `Execute` runs: SQL, names and parameters.
    fn describe(&self, l: &mut Line<'_>, portal_name: &[u8], portal: Option<&Portal>) {
        match portal.and_then(|p| p.sql.as_deref()) {
            Some(sql) => {
                l.text("sql", &sql.text, sql.escaped);
                if let Some(len) = sql.cut {
                    l.num("bytes", len as u64);
                }
            }
            None => {
                l.str("sql", "");
            }
        }
        if let Some(p) = portal
            && !p.statement.is_empty()
        {
            l.text("statement", &p.statement, false);
        }
        if !portal_name.is_empty() {
            l.bytes("portal", portal_name, self.charset);
        }
        match portal.and_then(|p| p.params.as_deref()) {
            Some(p) => {
                l.json("params", p);
            }
            None if self.redact => {
                l.str("params", "redacted");
            }
            None => {}
        }
    }

    fn pop(&mut self) -> Option<Op> {
        self.take(0)
    }

    fn take(&mut self, i: usize) -> Option<Op> {
        let op = self.ops.remove(i)?;
        let size = match &op {
            Op::Query(r) | Op::Func(r) => r.size,
            Op::Parse { sql, .. } => sql.weight(),
            _ => 0,
        };
        self.op_bytes -= size.min(self.op_bytes);
        Some(op)
    }

    /// Resolves messages the server consumes without a reply.
    fn settle(&mut self, out: &mut Vec<u8>) {
        if self.copy_in {
            while let Some(op) = self.ops.get(1) {
                match op {
                    Op::CopyData | Op::Sync => {
                        self.take(1);
                    }
                    Op::CopyEnd => {
                        self.take(1);
                        self.copy_in = false;
                        break;
                    }
                    // Anything else ends the COPY with an error and is not executed.
                    _ => {
                        if let Some(op) = self.take(1) {
                            self.unanswered(op, "not executed: sent during COPY", out);
                        }
                        self.copy_in = false;
                        break;
                    }
                }
            }
            return;
        }
        while let Some(op) = self.ops.front() {
            match op {
                Op::CopyData | Op::CopyEnd => {}
                Op::Sync => return,
                _ if self.skip => {}
                _ => return,
            }
            if let Some(op) = self.pop() {
                let why = "skipped: an earlier message in the pipeline failed";
                self.unanswered(op, why, out);
            }
        }
    }

    /// A message the server did not (or will never be seen to) carry out.
    fn unanswered(&mut self, op: Op, why: &'static str, out: &mut Vec<u8>) {
        match op {
            Op::Query(mut r) | Op::Func(mut r) | Op::Execute { run: mut r, .. } => {
                r.completion = Some(why);
                self.result(r, None, out);
            }
            Op::Parse { name, .. } => self.statements.settle(&name, None),
            Op::Bind { name, .. } => self.portals.settle(&name, None),
            Op::Close {
                statement: true,
                name,
            } => self.statements.settle(&name, None),
            Op::Close { name, .. } => self.portals.settle(&name, None),
            _ => {}
        }
    }

    /// A statement's result line; `resolved` is what the server really ran when it differs
    /// from what the statement line said.
    fn result(&mut self, r: Run, resolved: Option<&Portal>, out: &mut Vec<u8>) {
        let mut l = Line::new(out, self.t(), "result");
        l.num("n", r.n).ms("duration_ms", r.start.elapsed());
        if !r.tags.is_empty() {
            l.str("tag", &r.tags);
        }
        if let Some(n) = r.tag_rows.or((r.data_rows > 0).then_some(r.data_rows)) {
            l.num("rows", n);
        }
        if let Some(e) = &r.error {
            l.error(e);
        }
        if let Some(c) = r.completion {
            l.str("completion", c);
        }
        if let Some(p) = resolved {
            match &p.sql {
                Some(sql) => l.text("sql", &sql.text, sql.escaped),
                None => l.str("sql", ""),
            };
            if let Some(params) = &p.params {
                l.json("params", params);
            }
        }
        l.end();
        if r.error.is_none() && r.completion.is_none_or(|c| c == "suspended") {
            self.tx.first.get_or_insert(r.n);
            self.tx.last = r.n;
        }
    }

    fn rollback(&mut self, out: &mut Vec<u8>, why: &str) {
        if let Some(first) = self.tx.first.take() {
            Line::new(out, self.t(), "rollback")
                .num("from", first)
                .num("to", self.tx.last)
                .str("reason", why)
                .end();
        }
    }

    /// The statement at the front, when it is one that runs.
    fn running(&mut self) -> Option<&mut Run> {
        match self.ops.front_mut()? {
            Op::Query(r) | Op::Func(r) | Op::Execute { run: r, .. } => Some(r),
            _ => None,
        }
    }

    /// An `Execute` at the front finished (tag, suspension, empty, error).
    fn executed(&mut self, out: &mut Vec<u8>) {
        if let Some(Op::Execute { run, name, portal }) = self.pop() {
            let now = self.portals.done.get(&*name).cloned();
            let differs = match (&portal, &now) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (None, None) => false,
                _ => true,
            };
            self.result(run, differs.then_some(now.as_deref()).flatten(), out);
        }
    }

    /// A backend message; writes the lines it completes into `out`.
    pub fn server(&mut self, tag: u8, body: &[u8], out: &mut Vec<u8>) {
        let mut r = Reader(body);
        match tag {
            b'D' => {
                if let Some(run) = self.running() {
                    run.data_rows += 1;
                }
            }
            b'C' => {
                let text = r.cstr(true).unwrap_or_default();
                let text = String::from_utf8_lossy(text);
                self.command_tag(&text, out);
                if let Some(run) = self.running() {
                    run.tag(&text);
                }
                if matches!(self.ops.front(), Some(Op::Execute { .. })) {
                    self.executed(out);
                }
            }
            b'I' | b's' => {
                if let Some(run) = self.running() {
                    if tag == b's' {
                        run.completion = Some("suspended");
                    } else if run.tags.is_empty() {
                        run.completion = Some("empty");
                    }
                }
                if matches!(self.ops.front(), Some(Op::Execute { .. })) {
                    self.executed(out);
                }
            }
            b'1' => {
                if let Some(Op::Parse { name, sql }) = self.pop() {
                    if !name.is_empty() {
                        let mut l = Line::new(out, self.t(), "prepare");
                        l.bytes("name", &name, self.charset)
                            .text("sql", &sql.text, sql.escaped);
                        if let Some(len) = sql.cut {
                            l.num("bytes", len as u64);
                        }
                        l.end();
                    }
                    self.statements.settle(&name, Some(Some(sql)));
                }
            }
            b'2' => {
                if let Some(Op::Bind { name, mut portal }) = self.pop() {
                    // The statement as the server holds it now (a Parse it was bound
                    // ahead of may have failed).
                    let held = self.statements.done.get(&*portal.raw).cloned();
                    let same = match (&held, &portal.sql) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    };
                    if !same {
                        portal = Arc::new(Portal {
                            raw: portal.raw.clone(),
                            statement: portal.statement.clone(),
                            sql: held,
                            params: portal.params.clone(),
                        });
                    }
                    self.portals.settle(&name, Some(Some(portal)));
                }
            }
            b'3' => {
                if let Some(Op::Close { statement, name }) = self.pop() {
                    if statement {
                        self.statements.settle(&name, Some(None));
                    } else {
                        self.portals.settle(&name, Some(None));
                    }
                }
            }
            b'T' | b'n' => {
                if matches!(self.ops.front(), Some(Op::Describe)) {
                    self.pop();
                }
            }
            b'G' | b'W' => self.copy_in = true,
            b'S' => {
                if r.cstr(false) == Some(b"client_encoding")
                    && let Some(v) = r.cstr(false)
                {
                    self.charset = Charset::from_pg(&String::from_utf8_lossy(v));
                }
            }
            b'E' => self.error(body, out),
            b'Z' => self.ready(body.first().copied().unwrap_or(b'I'), out),
            _ => {}
        }
        self.settle(out);
    }

    /// A command tag ends or keeps the transaction.
    fn command_tag(&mut self, tag: &str, out: &mut Vec<u8>) {
        match tag {
            "COMMIT" | "PREPARE TRANSACTION" => self.tx.first = None,
            "ROLLBACK" => self.rollback(out, "rolled back"),
            "DISCARD ALL" | "DEALLOCATE ALL" => {
                self.statements.clear_done();
                self.portals.clear_done();
            }
            _ => {}
        }
    }

    fn error(&mut self, body: &[u8], out: &mut Vec<u8>) {
        let err = wire::error_fields(body);
        self.tx.error = true;
        self.copy_in = false;
        let t = self.t();
        match self.ops.front_mut() {
            Some(Op::Query(r) | Op::Func(r)) => {
                r.error.get_or_insert(err);
            }
            Some(Op::Execute { run, .. }) => {
                run.error = Some(err);
                self.executed(out);
                self.skip = true;
            }
            Some(Op::Parse { .. }) => {
                if let Some(Op::Parse { name, sql }) = self.pop() {
                    let mut l = Line::new(out, t, "prepare");
                    l.bytes("name", &name, self.charset)
                        .text("sql", &sql.text, sql.escaped)
                        .error(&err)
                        .end();
                    self.statements.settle(&name, None);
                }
                self.skip = true;
            }
            Some(Op::Bind { .. } | Op::Close { .. } | Op::Describe) => {
                let (during, name) = match self.pop() {
                    Some(Op::Bind { name, portal }) => {
                        self.portals.settle(&name, None);
                        ("bind", portal.statement.clone())
                    }
                    Some(Op::Close { statement, name }) => {
                        let shown = self.charset.decode(&name).0.into_owned();
                        if statement {
                            self.statements.settle(&name, None);
                        } else {
                            self.portals.settle(&name, None);
                        }
                        ("close", shown)
                    }
                    _ => ("describe", String::new()),
                };
                let mut l = Line::new(out, t, "error");
                l.str("during", during);
                if !name.is_empty() {
                    l.str("statement", &name);
                }
                l.error(&err).end();
                self.skip = true;
            }
            _ => {
                Line::new(out, t, "error").error(&err).end();
            }
        }
    }

    fn ready(&mut self, status: u8, out: &mut Vec<u8>) {
        while let Some(op) = self.pop() {
            match op {
                Op::Query(r) | Op::Func(r) => {
                    self.result(r, None, out);
                    break;
                }
                Op::Sync => break,
                other => self.unanswered(other, "none seen", out),
            }
        }
        self.skip = false;
        self.copy_in = false;
        if status == b'I' {
            if self.tx.error {
                self.rollback(out, "the transaction failed");
            }
            self.tx.first = None;
            self.portals.clear_done();
        }
        self.tx.error = false;
        self.tx.status = status;
    }

    /// The session is over: statements still in flight get a result line saying no
    /// completion was seen, and an open transaction is rolled back by the server.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let settled = self.ops.is_empty();
        while let Some(op) = self.pop() {
            self.unanswered(op, "none seen", out);
        }
        if settled && (self.tx.status != b'I' || self.tx.first.is_some()) {
            self.rollback(out, "the connection closed inside a transaction");
        }
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
