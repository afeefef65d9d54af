//! The tracker against message sequences PostgreSQL answers in known ways, including the
//! ones clients used to slip statements past the transcript.

use super::*;
use serde_json::{Value, json};

fn parse(name: &[u8], sql: &str) -> Vec<u8> {
    let mut b = name.to_vec();
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(b"\0\0\0");
    b
}

fn bind(portal: &[u8], stmt: &[u8], params: &[&str]) -> Vec<u8> {
    let mut b = portal.to_vec();
    b.push(0);
    b.extend_from_slice(stmt);
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

fn execute(portal: &[u8]) -> Vec<u8> {
    let mut b = portal.to_vec();
    b.extend_from_slice(b"\0\0\0\0\0");
    b
}

fn error(code: &str) -> Vec<u8> {
    format!("SERROR\0C{code}\0Mfailed\0\0").into_bytes()
}

/// Feeds client (`>`) and server (`<`) messages; returns the lines written.
struct T {
    t: Tracker,
    out: Vec<u8>,
}

impl T {
    fn new() -> T {
        T {
            t: Tracker::new(false),
            out: Vec::new(),
        }
    }
    fn c(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        self.t.client(tag, body, None, &mut self.out).unwrap();
        self
    }
    fn s(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        self.t.server(tag, body, &mut self.out);
        self
    }
    fn lines(&mut self) -> Vec<Value> {
        let out = std::mem::take(&mut self.out);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn pick(lines: &[Value], keys: &[&str]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            let mut v = serde_json::Map::new();
            for k in keys {
                if let Some(x) = l.get(*k) {
                    v.insert(k.to_string(), x.clone());
                }
            }
            Value::Object(v)
        })
        .collect()
}

#[test]
fn a_statement_is_written_when_sent_and_completed_when_answered() {
    let mut t = T::new();
    t.c(b'Q', b"select 1; select 2\0");
    let sent = t.lines();
    assert_eq!(
        pick(&sent, &["type", "n", "protocol", "sql"]),
        vec![
            json!({"type": "statement", "n": 1, "protocol": "simple", "sql": "select 1; select 2"})
        ]
    );
    t.s(b'T', b"").s(b'D', b"").s(b'C', b"SELECT 1\0");
    t.s(b'D', b"").s(b'C', b"SELECT 1\0");
    assert!(t.lines().is_empty());
    t.s(b'Z', b"I");
    assert_eq!(
        pick(&t.lines(), &["type", "n", "tag", "rows"]),
        vec![json!({"type": "result", "n": 1, "tag": "SELECT 1; SELECT 1", "rows": 2})]
    );
    assert!(t.t.idle());
}

#[test]
fn a_transaction_left_with_statements_unanswered_is_an_uncertain_rollback() {
    let mut t = T::new();
    t.c(b'Q', b"begin\0").s(b'C', b"BEGIN\0").s(b'Z', b"T");
    t.c(b'Q', b"delete from t\0")
        .s(b'C', b"DELETE 9\0")
        .s(b'Z', b"T");
    t.c(b'Q', b"commit\0");
    t.t.finish(&mut t.out);
    let l = t.lines();
    let rb = l.iter().find(|l| l["type"] == "rollback").unwrap();
    assert_eq!(
        (&rb["from"], &rb["to"], &rb["uncertain"]),
        (&json!(1), &json!(2), &json!(true))
    );
    // Statements pipelined without a Sync: the same.
    let mut t = T::new();
    t.c(b'P', b"\0delete from t\0\0\0")
        .c(b'B', b"\0\0\0\0\0\0\0\0")
        .c(b'E', b"\0\0\0\0\0")
        .c(b'S', b"");
    t.s(b'1', b"").s(b'2', b"").s(b'C', b"DELETE 3\0");
    t.t.finish(&mut t.out);
    let l = t.lines();
    let rb = l.iter().find(|l| l["type"] == "rollback").unwrap();
    assert_eq!(rb["uncertain"], true);
}

#[test]
fn statements_still_running_at_the_end_say_so() {
    let mut t = T::new();
    t.c(b'Q', b"insert into t values (1)\0");
    t.t.finish(&mut t.out);
    let l = t.lines();
    assert_eq!(l[0]["type"], "statement");
    assert_eq!(
        pick(&l[1..], &["type", "n", "completion"]),
        vec![json!({"type": "result", "n": 1, "completion": "none seen"})]
    );
}

#[test]
fn names_are_bytes_and_print_in_the_session_encoding() {
    let mut t = T::new();
    t.s(b'S', b"client_encoding\0LATIN1\0");
    t.c(b'P', &parse(b"\xff", "select 'decoy'"));
    t.c(b'P', &parse(b"\xfe", "delete from t"));
    t.c(b'S', b"");
    t.s(b'1', b"").s(b'1', b"").s(b'Z', b"I");
    t.lines();
    t.c(b'B', &bind(b"", b"\xfe", &[]))
        .c(b'E', &execute(b""))
        .c(b'S', b"");
    let l = t.lines();
    assert_eq!(l[0]["sql"], "delete from t");
    assert_eq!(l[0]["statement"], "\u{fe}");
}

#[test]
fn messages_the_server_skips_after_an_error_change_nothing() {
    let mut t = T::new();
    // The unnamed statement is the DELETE; then an error, a decoy re-Parse the server
    // skips, Sync, and an Execute of the unnamed statement.
    t.c(b'P', &parse(b"", "delete from t"))
        .c(b'B', &bind(b"", b"", &[]))
        .c(b'B', &bind(b"", b"nope", &[]))
        .c(b'P', &parse(b"", "select 'decoy'"))
        .c(b'S', b"")
        .c(b'B', &bind(b"", b"", &[]))
        .c(b'E', &execute(b""))
        .c(b'S', b"");
    let sent = t.lines();
    // Sent ahead of the server's answers, the line shows what the client asked for.
    assert_eq!(sent.last().unwrap()["sql"], "select 'decoy'");
    t.s(b'1', b"")
        .s(b'2', b"")
        .s(b'E', &error("26000"))
        .s(b'Z', b"I");
    t.s(b'2', b"").s(b'C', b"DELETE 3\0").s(b'Z', b"I");
    let l = t.lines();
    let result = l.iter().find(|l| l["type"] == "result").unwrap();
    // The result says what the server really ran.
    assert_eq!(result["sql"], "delete from t");
    assert_eq!(result["tag"], "DELETE 3");
    assert!(
        l.iter()
            .any(|l| l["type"] == "error" && l["during"] == "bind")
    );
}

#[test]
fn parse_text_is_recorded_and_execute_by_name_resolves() {
    let mut t = T::new();
    t.c(b'P', &parse(b"s9", "update t set x = 1"))
        .c(b'S', b"")
        .s(b'1', b"")
        .s(b'Z', b"I");
    t.c(b'Q', b"execute s9\0");
    let l = t.lines();
    assert_eq!(
        pick(&l, &["type", "name", "sql", "prepared"]),
        vec![
            json!({"type": "prepare", "name": "s9", "sql": "update t set x = 1"}),
            json!({"type": "statement", "sql": "execute s9", "prepared": "update t set x = 1"}),
        ]
    );
    // A Parse that fails is recorded with its SQL and error.
    t.s(b'C', b"UPDATE 1\0").s(b'Z', b"I").lines();
    t.c(b'P', &parse(b"s10", "selec 1")).c(b'S', b"");
    t.s(b'E', &error("42601")).s(b'Z', b"I");
    let l = t.lines();
    assert_eq!(l[0]["type"], "prepare");
    assert_eq!(l[0]["sql"], "selec 1");
    assert_eq!(l[0]["error"]["code"], "42601");
}

#[test]
fn copy_from_stdin_ignores_sync_and_flush_inside() {
    let mut t = T::new();
    // libpq's extended COPY: Bind/Execute/Sync, then data, CopyDone, Sync.
    t.c(b'P', &parse(b"", "copy t from stdin"))
        .c(b'B', &bind(b"", b"", &[]))
        .c(b'E', &execute(b""))
        .c(b'S', b"");
    t.s(b'1', b"").s(b'2', b"").s(b'G', b"");
    t.c(b'd', b"1\n")
        .c(b'H', b"")
        .c(b'd', b"2\n")
        .c(b'c', b"")
        .c(b'S', b"");
    t.s(b'C', b"COPY 2\0").s(b'Z', b"I");
    t.c(b'Q', b"select 1\0");
    t.s(b'C', b"SELECT 1\0").s(b'Z', b"I");
    let l = t.lines();
    let results: Vec<Value> = l
        .iter()
        .filter(|l| l["type"] == "result")
        .cloned()
        .collect();
    assert_eq!(
        pick(&results, &["n", "tag"]),
        vec![
            json!({"n": 1, "tag": "COPY 2"}),
            json!({"n": 2, "tag": "SELECT 1"})
        ]
    );
    assert!(t.t.idle());

    // Once the server is in COPY, anything but copy messages ends the session before it
    // is forwarded: whether the server would consume it or run it cannot be told.
    t.c(b'Q', b"copy t from stdin\0").s(b'G', b"");
    t.c(b'd', b"x\n");
    let e =
        t.t.client(b'Q', b"delete from t\0", None, &mut t.out)
            .unwrap_err();
    assert!(e.0.contains("during COPY"), "{}", e.0);

    // Sent ahead, before the server said COPY: the session ends, the statement uncertain.
    let mut t = T::new();
    t.c(b'Q', b"copy t from stdin\0")
        .c(b'Q', b"delete from t\0");
    t.s(b'G', b"");
    assert!(t.t.violation.is_some());
    let l = t.lines();
    assert_eq!(
        l.last().unwrap()["completion"],
        "uncertain: sent during COPY"
    );
}

#[test]
fn rows_come_from_data_rows_when_a_portal_suspends() {
    let mut t = T::new();
    t.c(b'P', &parse(b"", "select * from big"))
        .c(b'B', &bind(b"c1", b"", &[]))
        .c(b'E', &execute(b"c1"))
        .c(b'E', &execute(b"c1"))
        .c(b'S', b"");
    t.s(b'1', b"").s(b'2', b"");
    for _ in 0..5 {
        t.s(b'D', b"");
    }
    t.s(b's', b"");
    for _ in 0..2 {
        t.s(b'D', b"");
    }
    t.s(b'C', b"SELECT 2\0").s(b'Z', b"T");
    let l = t.lines();
    let r: Vec<Value> = l
        .iter()
        .filter(|l| l["type"] == "result")
        .cloned()
        .collect();
    assert_eq!(
        pick(&r, &["rows", "completion", "tag"]),
        vec![
            json!({"rows": 5, "completion": "suspended"}),
            json!({"rows": 2, "tag": "SELECT 2"})
        ]
    );
}

#[test]
fn statements_rolled_back_are_marked() {
    let mut t = T::new();
    // A pipeline without BEGIN is one implicit transaction: an error undoes it all.
    t.c(b'P', &parse(b"", "insert into t values (1)"))
        .c(b'B', &bind(b"", b"", &[]))
        .c(b'E', &execute(b""))
        .c(b'P', &parse(b"", "select 1/0"))
        .c(b'B', &bind(b"", b"", &[]))
        .c(b'E', &execute(b""))
        .c(b'S', b"");
    t.s(b'1', b"").s(b'2', b"").s(b'C', b"INSERT 0 1\0");
    t.s(b'1', b"")
        .s(b'2', b"")
        .s(b'E', &error("22012"))
        .s(b'Z', b"I");
    let l = t.lines();
    let rb = l.iter().find(|l| l["type"] == "rollback").unwrap();
    assert_eq!((rb["from"].clone(), rb["to"].clone()), (json!(1), json!(1)));

    // BEGIN; insert; COMMIT keeps it; BEGIN; insert; ROLLBACK does not.
    for (end, tag) in [("commit", "COMMIT"), ("rollback", "ROLLBACK")] {
        t.c(b'Q', b"begin\0").s(b'C', b"BEGIN\0").s(b'Z', b"T");
        t.c(b'Q', b"insert into t values (2)\0")
            .s(b'C', b"INSERT 0 1\0")
            .s(b'Z', b"T");
        t.c(b'Q', format!("{end}\0").as_bytes())
            .s(b'C', format!("{tag}\0").as_bytes())
            .s(b'Z', b"I");
        let rolled: Vec<Value> = t
            .lines()
            .into_iter()
            .filter(|l| l["type"] == "rollback")
            .collect();
        assert_eq!(rolled.len(), usize::from(end == "rollback"), "{end}");
    }
    // A session that ends inside a transaction: the server rolls it back.
    t.c(b'Q', b"begin\0").s(b'C', b"BEGIN\0").s(b'Z', b"T");
    t.c(b'Q', b"delete from t\0")
        .s(b'C', b"DELETE 9\0")
        .s(b'Z', b"T");
    t.t.finish(&mut t.out);
    assert!(t.lines().iter().any(|l| l["type"] == "rollback"));
}

#[test]
fn fast_path_calls_record_their_function_and_arguments() {
    let mut t = T::new();
    let mut body = 955i32.to_be_bytes().to_vec();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&2i32.to_be_bytes());
    body.extend_from_slice(b"42");
    body.extend_from_slice(&0i16.to_be_bytes());
    t.c(b'F', &body);
    t.s(b'V', b"").s(b'Z', b"I");
    let l = t.lines();
    assert_eq!(l[0]["function"], "lowrite");
    assert_eq!(l[0]["function_oid"], 955);
    assert_eq!(l[0]["params"], json!(["42"]));
    assert_eq!(l[1]["type"], "result");
    assert!(l[1].get("error").is_none());
}

#[test]
fn the_client_cannot_make_the_tracker_grow_without_bound() {
    let mut t = Tracker::new(false);
    let mut out = Vec::new();
    let mut refused = None;
    for i in 0..(MAX_IN_FLIGHT + 10) {
        if let Err(e) = t.client(
            b'P',
            &parse(format!("s{i}").as_bytes(), "select 1"),
            None,
            &mut out,
        ) {
            refused = Some((i, e.0));
            break;
        }
    }
    let (at, why) = refused.expect("the tracker took every message");
    assert!(at <= MAX_IN_FLIGHT, "{at}");
    assert!(
        why.contains("prepared statements") || why.contains("without reading"),
        "{why}"
    );
    let big = vec![b'x'; 1 << 20];
    let mut t = Tracker::new(false);
    let mut hit = false;
    for i in 0..200 {
        let mut body = format!("s{i}\0").into_bytes();
        body.extend_from_slice(&big);
        if t.client(b'P', &body, Some(100 << 20), &mut out).is_err() {
            hit = true;
            break;
        }
    }
    assert!(hit, "64 MiB of text were held without a refusal");
}

#[test]
fn sql_level_names_and_savepoints_are_not_mistaken() {
    let mut t = T::new();
    // A protocol statement replaced by SQL PREPARE under the same name: no stale SQL.
    t.c(b'P', &parse(b"s", "select 1"))
        .c(b'S', b"")
        .s(b'1', b"")
        .s(b'Z', b"I");
    t.c(b'Q', b"deallocate s\0")
        .s(b'C', b"DEALLOCATE\0")
        .s(b'Z', b"I");
    t.c(b'Q', b"prepare s as delete from t\0")
        .s(b'C', b"PREPARE\0")
        .s(b'Z', b"I");
    t.lines();
    t.c(b'B', &bind(b"", b"s", &[]))
        .c(b'E', &execute(b""))
        .c(b'S', b"");
    let l = t.lines();
    assert_eq!(l[0]["sql"], "", "{l:?}");
    assert_eq!(l[0]["statement"], "s");
    t.s(b'2', b"").s(b'C', b"DELETE 1\0").s(b'Z', b"I");

    // ROLLBACK TO SAVEPOINT has the tag ROLLBACK but keeps the transaction.
    t.lines();
    t.c(b'Q', b"begin\0").s(b'C', b"BEGIN\0").s(b'Z', b"T");
    t.c(b'Q', b"delete from t\0")
        .s(b'C', b"DELETE 1\0")
        .s(b'Z', b"T");
    t.c(b'Q', b"savepoint a\0")
        .s(b'C', b"SAVEPOINT\0")
        .s(b'Z', b"T");
    t.c(b'Q', b"rollback to savepoint a\0")
        .s(b'C', b"ROLLBACK\0")
        .s(b'Z', b"T");
    t.c(b'Q', b"commit\0").s(b'C', b"COMMIT\0").s(b'Z', b"I");
    assert!(t.lines().iter().all(|l| l["type"] != "rollback"));

    // Names PostgreSQL would cut to 63 bytes are refused.
    let long = vec![b'a'; 64];
    assert!(
        t.t.client(b'P', &parse(&long, "select 1"), None, &mut t.out)
            .is_err()
    );
}

#[test]
fn a_sync_between_copy_rows_is_refused() {
    // The server ignores it, unless a row before it failed: then it ends the skipped
    // region and what follows runs. Which one cannot be told from here.
    let mut t = T::new();
    t.c(b'P', &parse(b"", "copy t from stdin"))
        .c(b'B', &bind(b"", b"", &[]))
        .c(b'E', &execute(b""))
        .c(b'S', b"");
    t.s(b'1', b"").s(b'2', b"").s(b'G', b"");
    t.c(b'd', b"1\n");
    let e = t.t.client(b'S', b"", None, &mut t.out).unwrap_err();
    assert!(e.0.contains("CopyDone"), "{}", e.0);

    // A COPY that failed with rows sent and no CopyDone (libpq gives up on it): once the
    // server is ready and nothing is in flight, Sync is ordinary again.
    let mut t = T::new();
    t.c(b'Q', b"copy t from stdin\0").s(b'G', b"");
    t.c(b'd', b"bad\n");
    t.s(b'E', &error("22P02")).s(b'Z', b"I");
    t.c(b'P', &parse(b"", "select 1"))
        .c(b'B', &bind(b"", b"", &[]))
        .c(b'E', &execute(b""))
        .c(b'S', b"");
    t.s(b'1', b"")
        .s(b'2', b"")
        .s(b'C', b"SELECT 1\0")
        .s(b'Z', b"I");
    let l = t.lines();
    assert_eq!(l.last().unwrap()["tag"], "SELECT 1");
    assert!(t.t.idle());
}

#[test]
fn text_pipelined_behind_a_statement_is_not_read_in_an_encoding_it_may_change() {
    let mut t = T::new();
    t.s(b'S', b"client_encoding\0LATIN1\0");
    t.c(b'Q', b"set client_encoding to utf8\0")
        .c(b'Q', "select 'é'\0".as_bytes())
        .c(b'Q', b"select 'plain'\0");
    t.s(b'C', b"SET\0")
        .s(b'S', b"client_encoding\0UTF8\0")
        .s(b'Z', b"I");
    let l = t.lines();
    let sql: Vec<&Value> = l
        .iter()
        .filter(|l| l["type"] == "statement")
        .map(|l| &l["sql"])
        .collect();
    // Read as LATIN1 it would have said `select 'Ã©'`: the server read `select 'é'`.
    assert_eq!(
        sql,
        [
            &json!("set client_encoding to utf8"),
            &json!("select 'é'"),
            &json!("select 'plain'")
        ]
    );
    assert_eq!(l[1]["escaped"], true);
    assert!(l[2].get("escaped").is_none());
    // Nothing in flight: the encoding the server reported is used again.
    t.s(b'C', b"SELECT 1\0")
        .s(b'Z', b"I")
        .s(b'C', b"SELECT 1\0")
        .s(b'Z', b"I");
    t.lines();
    t.c(b'Q', "select 'é'\0".as_bytes());
    let l = t.lines();
    assert_eq!(l[0]["sql"], "select 'é'");
    assert!(l[0].get("escaped").is_none());
}

#[test]
fn a_portal_bound_and_not_executed_is_recorded() {
    let mut t = T::new();
    t.c(b'P', &parse(b"s1", "select f($1)"))
        .c(b'B', &bind(b"", b"s1", &["42"]))
        .c(b'S', b"");
    t.s(b'1', b"").s(b'2', b"").s(b'Z', b"I");
    let l = t.lines();
    let bind_lines: Vec<Value> = l.iter().filter(|l| l["type"] == "bind").cloned().collect();
    assert_eq!(
        pick(&bind_lines, &["sql", "statement", "params"]),
        vec![json!({"sql": "select f($1)", "statement": "s1", "params": ["42"]})]
    );

    // Bound then executed (with or without Describe between): the statement line only.
    for describe in [false, true] {
        t.c(b'B', &bind(b"p", b"s1", &["7"]));
        if describe {
            t.c(b'D', b"Pp\0");
        }
        t.c(b'E', &execute(b"p")).c(b'S', b"");
        t.s(b'2', b"");
        if describe {
            t.s(b'n', b"");
        }
        t.s(b'C', b"SELECT 1\0").s(b'Z', b"I");
        let l = t.lines();
        assert!(l.iter().all(|l| l["type"] != "bind"), "{l:?}");
        assert_eq!(l[0]["params"], json!(["7"]));
    }
}
