//! The client side of the tracker: each message as it goes out, and the statement line of
//! each statement it starts.

use std::sync::Arc;

use super::names::{Portal, Sql, Weight};
use super::{Limit, MAX_NAMES, Op, Tracker};
use crate::pg::text::Charset;
use crate::pg::transcript::{Line, Reader, params};

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
    pub fn client(
        &mut self,
        tag: u8,
        body: &[u8],
        cut: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), Limit> {
        if let Some(v) = &self.violation {
            return Err(Limit(v.clone()));
        }
        if self.copy_in && !matches!(tag, b'd' | b'c' | b'f' | b'H' | b'S') {
            return Err(Limit(format!(
                "message `{}` sent during COPY FROM STDIN (only copy data, CopyDone, CopyFail, Flush and Sync may be)",
                tag.escape_ascii()
            )));
        }
        // While a statement that may set `client_encoding` is in flight, text is decoded
        // as ASCII: the same in every encoding PostgreSQL accepts from clients, and any
        // other byte escaped rather than read in an encoding that may no longer hold.
        let cs = if self.runs == 0 {
            self.charset
        } else {
            Charset::Ascii
        };
        let mut r = Reader(body);
        let trunc = cut.is_some();
        // PostgreSQL keeps the first 63 bytes of a name: longer ones could alias.
        if matches!(tag, b'P' | b'B' | b'E' | b'C') {
            let mut names = Reader(body);
            if tag == b'C' {
                names.bytes(1);
            }
            let first = names.cstr(trunc).unwrap_or_default();
            let second = if matches!(tag, b'B') {
                names.cstr(trunc).unwrap_or_default()
            } else {
                &[]
            };
            if first.len() > 63 || second.len() > 63 {
                return Err(Limit(
                    "prepared statement and portal names longer than 63 bytes are not accepted"
                        .into(),
                ));
            }
        }
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
                let size = portal.weight();
                self.push(
                    Op::Bind {
                        name: name.into(),
                        portal,
                    },
                    size,
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
            b'S' if self.copy_data => {
                return Err(Limit(
                    "Sync sent between COPY data and CopyDone (send CopyDone or CopyFail first)"
                        .into(),
                ));
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
                self.copy_data = true;
                self.push(Op::CopyData, 0);
            }
            b'c' | b'f' => {
                self.check(0)?;
                self.copy_data = false;
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
}
