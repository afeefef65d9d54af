//! The server side of the tracker: each reply resolves the messages in flight, in order,
//! and writes the lines it completes.

use std::sync::Arc;

use super::{Op, Portal, Tracker};
use crate::pg::text::Charset;
use crate::pg::transcript::{Line, Reader};
use crate::pg::wire;

impl Tracker {
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
                self.command_tag(&text);
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
                    let held = self.statements.held(&portal.raw);
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
                    self.bound(&name, &portal, out);
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

    /// A portal the server created, planning its statement (which can run functions):
    /// unless an `Execute` of it is next in flight, whose statement line says the same,
    /// a `bind` line records it, so nothing the server ran for it goes unwritten.
    fn bound(&self, name: &[u8], portal: &Portal, out: &mut Vec<u8>) {
        let next = self.ops.iter().find(|op| !matches!(op, Op::Describe));
        if let Some(Op::Execute { name: e, .. }) = next
            && **e == *name
        {
            return;
        }
        let mut l = Line::new(out, self.t(), "bind");
        match &portal.sql {
            Some(sql) => l.text("sql", &sql.text, sql.escaped),
            None => l.str("sql", ""),
        };
        if !portal.statement.is_empty() {
            l.text("statement", &portal.statement, false);
        }
        if !name.is_empty() {
            l.bytes("portal", name, self.charset);
        }
        match &portal.params {
            Some(p) => l.json("params", p),
            None => l.str("params", "redacted"),
        };
        l.end();
    }

    /// A command tag ends or keeps the transaction.
    fn command_tag(&mut self, tag: &str) {
        match tag {
            "COMMIT" | "PREPARE TRANSACTION" => self.tx.first = None,
            // Also the tag of ROLLBACK TO SAVEPOINT: the next ReadyForQuery tells which.
            "ROLLBACK" => self.tx.rollback = true,
            // SQL-level statements in the namespace protocol messages use: what postern
            // knew of the names may no longer hold.
            "DEALLOCATE ALL" | "DEALLOCATE" | "PREPARE" => self.statements.clear_named(),
            "DISCARD ALL" => {
                self.statements.clear_named();
                self.portals.clear_done();
            }
            "DECLARE CURSOR" | "CLOSE CURSOR" | "CLOSE CURSOR ALL" => self.portals.clear_named(),
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
                Op::Query(r) => {
                    // A simple query drops the unnamed statement and portal.
                    self.statements.settle_unnamed_gone();
                    self.portals.settle_unnamed_gone();
                    self.result(r, None, out);
                    break;
                }
                Op::Func(r) => {
                    self.result(r, None, out);
                    break;
                }
                Op::Sync => break,
                other => self.unanswered(other, "none seen", out),
            }
        }
        self.skip = false;
        self.copy_in = false;
        if self.ops.is_empty() {
            // Nothing in flight: the server is not in COPY and will not enter it before
            // the client's next message.
            self.copy_data = false;
        }
        if status == b'I' {
            if self.tx.rollback {
                self.rollback(out, "rolled back");
            }
            if self.tx.error {
                self.rollback(out, "the transaction failed");
            }
            self.tx.first = None;
            self.portals.clear_done();
        }
        self.tx.error = false;
        self.tx.rollback = false;
        self.tx.status = status;
    }
}
