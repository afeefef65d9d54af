//! PostgreSQL through postern with a raw-protocol client: message sequences stock clients
//! rarely send but an adversary will (statements with Terminate in the same write, a
//! client vanishing mid-statement, names that collide when decoded, skipped regions,
//! Sync inside COPY), and a reader too slow to keep up. Each checks the transcript.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::client::ClientSessionStore;
use rustls::pki_types::ServerName;
use serde_json::Value;

use crate::pg::PgBastion;

/// A client speaking the wire protocol by hand, over TLS to postern.
pub struct Raw {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    /// Where rustls keeps the session tickets postern sends.
    pub tickets: Arc<rustls::client::ClientSessionMemoryCache>,
    /// `BackendKeyData`.
    pub pid: i32,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(b: &PgBastion, extra: &[(&str, &str)]) -> Raw {
        let mut raw = Raw::start(b, extra);
        raw.scram(&b.token());
        for (tag, body) in raw.until_ready() {
            assert_ne!(tag, b'E', "{}", String::from_utf8_lossy(&body));
            if tag == b'K' {
                raw.pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            }
        }
        raw
    }

    /// TLS and the startup message as alice, authentication not begun.
    pub fn start(b: &PgBastion, extra: &[(&str, &str)]) -> Raw {
        let mut tcp = TcpStream::connect(b.postern.pg).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut ssl = BytesMut::new();
        frontend::ssl_request(&mut ssl);
        tcp.write_all(&ssl).unwrap();
        let mut yes = [0u8; 1];
        tcp.read_exact(&mut yes).unwrap();
        assert_eq!(&yes, b"S");
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tickets = Arc::new(rustls::client::ClientSessionMemoryCache::new(8));
        let mut tls = b.tls_client();
        tls.resumption = rustls::client::Resumption::store(tickets.clone());
        let conn = rustls::ClientConnection::new(Arc::new(tls), name).unwrap();
        let mut raw = Raw {
            s: rustls::StreamOwned::new(conn, tcp),
            tickets,
            pid: 0,
            buf: Vec::new(),
        };
        let mut params = vec![("user", "alice"), ("database", "pg1/features")];
        params.extend_from_slice(extra);
        let mut m = BytesMut::new();
        frontend::startup_message(params, &mut m).unwrap();
        raw.send(&m);
        raw
    }

    /// SCRAM-SHA-256-PLUS with the token, bound to the certificate postern showed.
    fn scram(&mut self, token: &str) {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let (tag, body) = self.next();
        assert_eq!((tag, &body[..4]), (b'R', &10i32.to_be_bytes()[..]));
        assert!(
            body.starts_with(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0"),
            "{body:?}"
        );
        let cert = self.s.conn.peer_certificates().unwrap()[0].to_vec();
        let end_point = postern::credentials::scram::end_point(&cert).unwrap();
        let mut scram = ScramSha256::new(
            token.as_bytes(),
            ChannelBinding::tls_server_end_point(end_point),
        );
        let mut m = BytesMut::new();
        frontend::sasl_initial_response("SCRAM-SHA-256-PLUS", scram.message(), &mut m).unwrap();
        self.send(&m);
        let (tag, body) = self.next();
        assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
        scram.update(&body[4..]).unwrap();
        let mut m = BytesMut::new();
        frontend::sasl_response(scram.message(), &mut m).unwrap();
        self.send(&m);
        let (tag, body) = self.next();
        assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
        scram.finish(&body[4..]).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
        self.s.flush().unwrap();
    }

    /// The next message: (type, body).
    pub fn next(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let msg: Vec<u8> = self.buf.drain(..total).collect();
                    return (msg[0], msg[5..].to_vec());
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).expect("read from postern");
            assert!(n > 0, "postern closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Messages up to and including `ReadyForQuery`.
    pub fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let m = self.next();
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// A simple query's rows, first column, as text.
    pub fn query(&mut self, sql: &str) -> Vec<String> {
        let mut m = BytesMut::new();
        frontend::query(sql, &mut m).unwrap();
        self.send(&m);
        let mut rows = Vec::new();
        for (tag, body) in self.until_ready() {
            assert_ne!(tag, b'E', "{sql}: {}", String::from_utf8_lossy(&body));
            if tag == b'D' {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                rows.push(String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned());
            }
        }
        rows
    }
}

/// Message builders; names are bytes, as on the wire.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(v: &mut Vec<u8>, s: &[u8]) {
    v.extend_from_slice(s);
    v.push(0);
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql.as_bytes());
    msg(b'Q', &b)
}

pub fn parse(name: &[u8], sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql.as_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &b)
}

pub fn bind(portal: &[u8], stmt: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}

pub fn execute(portal: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &b)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

pub fn terminate() -> Vec<u8> {
    msg(b'X', b"")
}

/// The transcript of the session that ended last, waiting for it to end.
pub fn ended_transcript(b: &PgBastion, before: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sessions = b.sessions();
        if sessions.len() > before
            && let Some(s) = sessions.last()
            && !s["end_reason"].is_null()
        {
            return b.transcript(s);
        }
        assert!(
            Instant::now() < deadline,
            "no session ended: {}",
            b.postern.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn statement<'a>(t: &'a [Value], sql: &str) -> &'a Value {
    t.iter()
        .find(|l| l["type"] == "statement" && l["sql"] == sql)
        .unwrap_or_else(|| panic!("no statement `{sql}` in {t:#?}"))
}

#[test]
fn statements_sent_with_terminate_or_by_a_vanishing_client_are_recorded() {
    let b = PgBastion::start();
    b.psql(&["-c", "create table t (id int)"]).ok();

    // A Query and Terminate in one write.
    let n = b.sessions().len();
    let mut c = Raw::connect(&b, &[]);
    let mut w = query("insert into t values (1)");
    w.extend(terminate());
    c.send(&w);
    let t = ended_transcript(&b, n);
    assert_eq!(
        statement(&t, "insert into t values (1)")["tag"],
        "INSERT 0 1"
    );

    // Parse/Bind/Execute/Sync and Terminate in one write.
    let n = b.sessions().len();
    let mut c = Raw::connect(&b, &[]);
    let mut w = parse(b"", "insert into t values (2)");
    w.extend(bind(b"", b""));
    w.extend(execute(b""));
    w.extend(sync());
    w.extend(terminate());
    c.send(&w);
    let t = ended_transcript(&b, n);
    let s = statement(&t, "insert into t values (2)");
    assert_eq!(
        (s["protocol"].clone(), s["tag"].clone()),
        ("extended".into(), "INSERT 0 1".into())
    );

    // A client that vanishes while its statement runs: the INSERT commits, and says so.
    let n = b.sessions().len();
    let mut c = Raw::connect(&b, &[]);
    c.send(&query("select pg_sleep(0.5); insert into t values (3)"));
    drop(c);
    let t = ended_transcript(&b, n);
    let s = statement(&t, "select pg_sleep(0.5); insert into t values (3)");
    assert_eq!(s["tag"], "SELECT 1; INSERT 0 1", "{s}");

    // One that vanishes during a statement that would run on and on: postern cancels it.
    let n = b.sessions().len();
    let mut c = Raw::connect(&b, &[]);
    c.send(&query("select pg_sleep(60)"));
    drop(c);
    let t = ended_transcript(&b, n);
    let s = statement(&t, "select pg_sleep(60)");
    assert_eq!(s["error"]["code"], "57014", "{s}");
    let active =
        b.pg.psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'");
    assert_eq!(active.ok().trim(), "0");
    let rows = b.psql(&["-c", "select string_agg(id::text, ',' order by id) from t"]);
    assert_eq!(rows.ok(), "1,2,3\n");
}

#[test]
fn the_transcript_records_what_the_server_ran() {
    let b = PgBastion::start();
    b.psql(&[
        "-c",
        "create table t (id int); insert into t select generate_series(1, 5)",
    ])
    .ok();
    let n = b.sessions().len();
    let mut c = Raw::connect(&b, &[("client_encoding", "LATIN1")]);

    // Names that decode to the same text in a careless reader: keyed by their bytes.
    let mut w = parse(b"\xff", "select 'decoy'");
    w.extend(parse(b"\xfe", "delete from t where id = 1"));
    w.extend(sync());
    w.extend(bind(b"", b"\xfe"));
    w.extend(execute(b""));
    w.extend(sync());
    c.send(&w);
    c.until_ready();
    c.until_ready();

    // A re-Parse in the region the server skips after an error changes nothing.
    let mut w = parse(b"", "delete from t where id = 2");
    w.extend(bind(b"", b""));
    w.extend(bind(b"", b"no_such_statement"));
    w.extend(parse(b"", "select 'decoy two'"));
    w.extend(sync());
    w.extend(bind(b"", b""));
    w.extend(execute(b""));
    w.extend(sync());
    c.send(&w);
    c.until_ready();
    c.until_ready();

    // A statement prepared by protocol and run by SQL `EXECUTE`.
    let mut w = parse(b"s9", "update t set id = 30 where id = 3");
    w.extend(sync());
    c.send(&w);
    c.until_ready();
    c.query("execute s9");

    // Sync sent with the COPY, before any data, is ignored by the server, and by the
    // transcript; so is Flush between rows.
    let mut w = parse(b"", "copy t from stdin");
    w.extend(bind(b"", b""));
    w.extend(execute(b""));
    w.extend(sync());
    c.send(&w);
    let (tag, _) = c.next();
    assert_eq!(tag, b'1');
    let (tag, _) = c.next();
    assert_eq!(tag, b'2');
    let (tag, _) = c.next();
    assert_eq!(tag, b'G');
    let mut w = msg(b'd', b"40\n");
    w.extend(msg(b'H', b""));
    w.extend(msg(b'd', b"41\n"));
    w.extend(msg(b'c', b""));
    w.extend(sync());
    c.send(&w);
    c.until_ready();
    assert_eq!(
        c.query("select string_agg(id::text, ',' order by id) from t"),
        ["4,5,30,40,41"]
    );

    // Bound and never executed: binding plans the statement, which can run functions.
    let mut w = parse(b"", "select 'bound only'");
    w.extend(bind(b"", b""));
    w.extend(sync());
    c.send(&w);
    c.until_ready();

    // Pipelined behind the statement that changes client_encoding: the server reads it
    // in the new encoding, so it is not decoded in the old one (LATIN1: `select 'Ã©'`).
    let mut w = query("set client_encoding to 'UTF8'");
    w.extend(query("select 'é' as pipelined"));
    c.send(&w);
    c.until_ready();
    c.until_ready();
    c.send(&terminate());

    let t = ended_transcript(&b, n);
    let del = statement(&t, "delete from t where id = 1");
    assert_eq!(
        (del["tag"].clone(), del["statement"].clone()),
        ("DELETE 1".into(), "\u{fe}".into())
    );
    // Sent ahead of the error, the line first named the decoy; the result corrects it.
    let del2 = statement(&t, "delete from t where id = 2");
    assert_eq!(del2["tag"], "DELETE 1", "{del2}");
    assert!(
        t.iter()
            .all(|l| l["sql"] != "select 'decoy two'" || l["type"] != "statement")
    );
    assert!(t.iter().any(|l| l["type"] == "prepare"
        && l["name"] == "s9"
        && l["sql"] == "update t set id = 30 where id = 3"));
    assert_eq!(
        statement(&t, "execute s9")["prepared"],
        "update t set id = 30 where id = 3"
    );
    assert_eq!(statement(&t, "copy t from stdin")["tag"], "COPY 2");
    let last = statement(&t, "select string_agg(id::text, ',' order by id) from t");
    assert_eq!(last["rows"], 1);
    assert!(
        t.iter()
            .any(|l| l["type"] == "bind" && l["sql"] == "select 'bound only'"),
        "{t:#?}"
    );
    assert_eq!(statement(&t, "select 'é' as pipelined")["escaped"], true);
    assert!(t.iter().all(|l| l["completion"] != "none seen"), "{t:#?}");

    // Sync between COPY rows: the server ignores it unless a row before it failed, when
    // it would end the skipped region instead. postern refuses it and ends the session
    // before forwarding it; the COPY never completes.
    let mut c = Raw::connect(&b, &[]);
    c.send(&query("copy t from stdin"));
    assert_eq!(c.next().0, b'G');
    let mut w = msg(b'd', b"50\n");
    w.extend(sync());
    c.send(&w);
    let (tag, body) = c.next();
    assert_eq!(tag, b'E');
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("Sync sent between COPY data and CopyDone"),
        "{body}"
    );
    assert_eq!(
        b.psql(&["-tAc", "select count(*) from t where id = 50"])
            .ok()
            .trim(),
        "0"
    );
}

#[test]
fn a_slow_reader_gets_every_byte_of_a_large_result() {
    let b = PgBastion::start();
    let mut c = Raw::connect(&b, &[]);
    for _ in 0..3 {
        let mut m = BytesMut::new();
        frontend::query(
            "select repeat('x', 1000) from generate_series(1, 30000)",
            &mut m,
        )
        .unwrap();
        c.send(&m);
        // The reader pauses while postern writes: its socket fills, and whatever TLS
        // still holds must be flushed without a further write to carry it.
        std::thread::sleep(Duration::from_millis(1500));
        let msgs = c.until_ready();
        let rows = msgs.iter().filter(|(t, _)| *t == b'D').count();
        assert_eq!(rows, 30000);
    }
}

#[test]
fn clients_see_the_target_backend_pid() {
    let b = PgBastion::start();
    let mut c = Raw::connect(&b, &[]);
    assert_eq!(c.query("select pg_backend_pid()"), [c.pid.to_string()]);
    // Nor session tickets, as from PostgreSQL's own server (libpq never resumes).
    let name = ServerName::try_from("127.0.0.1").unwrap();
    assert!(c.tickets.take_tls13_ticket(&name).is_none());
    // A notification this session sends to itself carries the same PID.
    c.query("listen ch");
    let mut m = BytesMut::new();
    frontend::query("notify ch, 'hi'", &mut m).unwrap();
    c.send(&m);
    let msgs = c.until_ready();
    let (_, note) = msgs
        .iter()
        .find(|(t, _)| *t == b'A')
        .expect("a notification");
    assert_eq!(
        i32::from_be_bytes([note[0], note[1], note[2], note[3]]),
        c.pid
    );
}

#[test]
fn a_huge_message_passes_through_in_pieces_and_is_recorded_in_part() {
    let b = PgBastion::start();
    let pid = b.postern.pid().unwrap();
    let before = crate::harness::rss_kib(pid);
    let n = b.sessions().len();
    let mut c = Raw::connect(&b, &[]);
    // A Query declared at (nearly) 1 GiB, the most PostgreSQL takes, of which 160 MiB are
    // sent: postern forwards it as it comes and keeps only the first MiB for the
    // transcript.
    let length: usize = (1 << 30) - 2;
    let mut head = vec![b'Q'];
    head.extend_from_slice(&(length as i32).to_be_bytes());
    head.extend_from_slice(b"select '");
    c.send(&head);
    let chunk = vec![b'x'; 1 << 20];
    let mut peak = 0;
    for i in 0..160 {
        c.send(&chunk);
        if i % 20 == 19 {
            peak = peak.max(crate::harness::rss_kib(pid));
        }
    }
    drop(c);
    let t = ended_transcript(&b, n);
    let s = t
        .iter()
        .find(|l| l["type"] == "statement")
        .unwrap_or_else(|| panic!("{t:#?}"));
    assert_eq!(s["bytes"], length - 4);
    assert!(s["sql"].as_str().unwrap().len() <= 1 << 20);
    assert_eq!(s["completion"], "none seen");
    assert!(
        peak < before + 64 * 1024,
        "postern grew from {before} KiB to {peak} KiB"
    );
}
