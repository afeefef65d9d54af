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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::text::Charset;
use super::transcript::Line;

/// Client messages awaiting the server at once.
pub const MAX_IN_FLIGHT: usize = 65_536;
/// Named prepared statements, and named portals, a session may hold.
pub const MAX_NAMES: usize = 10_000;
/// Text (SQL, parameters) the tracker keeps for one session.
pub const MAX_TEXT: usize = 64 << 20;

/// A limit the client went past: the session ends with this message.
#[derive(Debug)]
pub struct Limit(pub String);

mod client;
mod names;
mod server;

use names::{Names, Portal, Sql, Weight};

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
        // A simple query may hold any number of statements: their tags are kept to 4 KiB.
        if self.tags.len() < 4096 {
            if !self.tags.is_empty() {
                self.tags.push_str("; ");
            }
            self.tags.push_str(tag);
        } else if !self.tags.ends_with('…') {
            self.tags.push('…');
        }
        let last = tag.rfind(' ').map_or(tag, |i| &tag[i + 1..]);
        if let Ok(n) = last.parse::<u64>() {
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
    /// A `ROLLBACK` tag since the last `ReadyForQuery` (a whole rollback when the status
    /// goes back to idle; otherwise to a savepoint).
    rollback: bool,
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
    /// Copy data sent and not yet ended by `CopyDone` or `CopyFail`: a `Sync` now would be
    /// ignored by the server or end an error's skipped region, depending on whether a row
    /// before it failed, which cannot be told from here.
    copy_data: bool,
    /// Statements in flight (`Query`, `Execute`, fast-path calls): any of them may change
    /// `client_encoding`, so text sent meanwhile is not decoded with the one known now.
    runs: usize,
    tx: Tx,
    /// Why the model can no longer tell what the server does: the session must end.
    pub violation: Option<String>,
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
            copy_data: false,
            runs: 0,
            violation: None,
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

    /// The connection is where a new session would find it: everything answered, outside
    /// a transaction and COPY, nothing being skipped, the model intact.
    pub fn at_rest(&self) -> bool {
        self.idle()
            && self.tx.status == b'I'
            && !self.copy_in
            && !self.skip
            && self.violation.is_none()
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
        if matches!(op, Op::Query(_) | Op::Func(_) | Op::Execute { .. }) {
            self.runs += 1;
        }
        self.ops.push_back(op);
    }

    /// A client message on its way to the target (`cut`: its whole length, when only a
    /// prefix of it is here). Writes the lines of statements it starts into `out`.
    fn pop(&mut self) -> Option<Op> {
        self.take(0)
    }

    fn take(&mut self, i: usize) -> Option<Op> {
        let op = self.ops.remove(i)?;
        if matches!(op, Op::Query(_) | Op::Func(_) | Op::Execute { .. }) {
            self.runs -= 1;
        }
        let size = match &op {
            Op::Query(r) | Op::Func(r) => r.size,
            Op::Parse { sql, .. } => sql.weight(),
            Op::Bind { portal, .. } => portal.weight(),
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
                    // Whether the server consumes it as a COPY error or runs it after the
                    // COPY failed for another reason cannot be told from here.
                    _ => {
                        self.violation.get_or_insert_with(|| {
                            "a message other than COPY data was sent during COPY FROM STDIN".into()
                        });
                        if let Some(op) = self.take(1) {
                            self.unanswered(op, "uncertain: sent during COPY", out);
                        }
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
        let now = Instant::now();
        let mut l = Line::new(out, now.saturating_duration_since(self.start), "result");
        l.num("n", r.n)
            .ms("duration_ms", now.saturating_duration_since(r.start));
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
        if r.error.is_none()
            && r.completion.is_none_or(|c| c == "suspended")
            && r.tags != "ROLLBACK"
        {
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
            let now = self.portals.held(&name);
            let differs = match (&portal, &now) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (None, None) => false,
                _ => true,
            };
            self.result(run, differs.then_some(now.as_deref()).flatten(), out);
        }
    }

    /// The session is over: statements still in flight get a result line saying no
    /// completion was seen, and an open transaction is rolled back by the server. With
    /// statements unanswered, one of them may have committed it (a `COMMIT`, or the `Sync`
    /// ending a pipeline): the rollback line then says it is uncertain.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let settled = self.ops.is_empty();
        while let Some(op) = self.pop() {
            self.unanswered(op, "none seen", out);
        }
        if self.tx.status == b'I' && self.tx.first.is_none() {
            return;
        }
        if settled {
            self.rollback(out, "the connection closed inside a transaction");
        } else if let Some(first) = self.tx.first.take() {
            Line::new(out, self.t(), "rollback")
                .num("from", first)
                .num("to", self.tx.last)
                .str(
                    "reason",
                    "the connection closed with statements unanswered: undone unless one of them committed",
                )
                .json("uncertain", "true")
                .end();
        }
    }
}

#[cfg(test)]
mod tests;
