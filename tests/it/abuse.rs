//! Abuse: parallel guesses at the API's password login are counted before any is checked,
//! and password hashing is bounded, so memory stays small; SSH packets that answer nothing
//! cost postern no log line each.

use std::process::Command;

use crate::harness::postern::Postern;
use crate::login::set_password;

#[test]
fn a_hundred_parallel_wrong_passwords_are_mostly_refused_unchecked() {
    let p = Postern::new();
    p.cli(&[
        "admin", "role", "add", "dev", "--allow", "env=test", "--logins", "app",
    ])
    .ok();
    p.cli(&["admin", "user", "add", "alice", "--role", "dev"])
        .ok();
    set_password(&p);
    let p = p.start();
    let ca = p.write("tls-ca.pem", p.cli(&["admin", "tls-ca"]).ok());
    let key = p.root().join("k");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let pid = p.pid().unwrap();
    let before = crate::harness::rss_kib(pid);
    let script = format!(
        r#"
import json, ssl, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor
ctx = ssl.create_default_context(cafile={ca:?})
body = json.dumps({{"user": "alice", "password": "wrong", "public_key": {public:?}}}).encode()
def one(_):
    req = urllib.request.Request("https://127.0.0.1:{port}/v1/login", data=body, headers={{"content-type": "application/json"}})
    try:
        return urllib.request.urlopen(req, context=ctx, timeout=60).status
    except urllib.error.HTTPError as e:
        return e.code
with ThreadPoolExecutor(100) as ex:
    codes = list(ex.map(one, range(100)))
print(json.dumps({{str(c): codes.count(c) for c in set(codes)}}))
"#,
        ca = ca.display().to_string(),
        public = public.trim(),
        port = p.api.port()
    );
    let out: crate::harness::Out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap()
        .into();
    let counts: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    let limited = counts["429"].as_u64().unwrap_or(0);
    assert!(limited >= 90, "{counts}");
    assert_eq!(counts["200"], serde_json::Value::Null, "{counts}");
    let after = crate::harness::rss_kib(pid);
    assert!(after < 300 * 1024, "RSS {before} KiB -> {after} KiB");
}

/// Failed database logins with 8 KB names, each a different name: the audit log grows by a
/// handful of events, not one per attempt, and every attempt is still counted.
#[test]
fn a_stream_of_failed_logins_is_audited_in_summaries() {
    let mut b = crate::pg::PgBastion::start();
    b.postern.stop();
    let cfg = b
        .postern
        .write("repeat.toml", "[audit]\nrepeat_window = \"3s\"\n");
    let mut cmd = b.postern.serve_command();
    cmd.arg("--config").arg(cfg);
    b.postern.spawn(cmd);
    let auth_events = |p: &crate::harness::postern::Postern| {
        let mut all = p.events("auth.failure");
        all.extend(p.events("auth.rate_limited"));
        all.retain(|e| e["actor"] == "unknown");
        all
    };
    assert!(auth_events(&b.postern).is_empty());
    let script = format!(
        r#"
import json, random, string, psycopg
from concurrent.futures import ThreadPoolExecutor
def one(i):
    name = "".join(random.choice(string.ascii_letters) for _ in range(8000)) + str(i)
    try:
        psycopg.connect(host="127.0.0.1", port={port}, user=name, password="guess",
                        dbname="pg1/features", sslmode="require", connect_timeout=30).close()
        return "connected"
    except psycopg.OperationalError as e:
        return "refused"
with ThreadPoolExecutor(8) as ex:
    results = list(ex.map(one, range(150)))
print(json.dumps({{r: results.count(r) for r in set(results)}}))
"#,
        port = b.postern.pg.port()
    );
    let out = crate::pg::python(&script);
    let counts: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(counts["refused"], 150, "{counts}");
    // Each window's summary is written when it closes.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let events = auth_events(&b.postern);
    assert!(
        events.len() <= 40,
        "{} events for 150 failures",
        events.len()
    );
    // An attempt is an event of its own, or counted in a summary's `repeated`.
    let accounted: u64 = events
        .iter()
        .map(|e| e["details"]["repeated"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(accounted, 150, "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e["details"]["repeated"].as_u64() > Some(10)),
        "{events:#?}"
    );
    for e in &events {
        assert!(
            e.to_string().len() < 4096,
            "an event holds the whole name: {e}"
        );
    }
}

/// Replies to global requests nobody made (`REQUEST_SUCCESS`, `REQUEST_FAILURE`) are
/// ignored as OpenSSH ignores them: the session goes on, and a client cannot make postern
/// write a log line per packet.
#[test]
fn stray_global_request_replies_are_ignored_without_a_log_line_each() {
    let b = crate::ssh::Bastion::start();
    let out = crate::ssh_plane::paramiko(
        &b,
        r#"
from paramiko.common import cMSG_REQUEST_SUCCESS, cMSG_REQUEST_FAILURE
from paramiko.message import Message
t = c.get_transport()
for i in range(2000):
    m = Message()
    m.add_byte(cMSG_REQUEST_SUCCESS if i % 2 else cMSG_REQUEST_FAILURE)
    t._send_user_message(m)
_, out, _ = c.exec_command('echo still-here')
print(out.read().decode(), end='')
c.close()
"#,
    );
    assert_eq!(out.stdout, "still-here\n", "{out:?}\n{}", b.postern.log());
    let lines = b
        .postern
        .log()
        .lines()
        .filter(|l| l.contains("global request"))
        .count();
    assert!(lines < 10, "{lines} log lines for 2000 stray replies");
}
