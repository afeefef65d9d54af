//! Just-in-time access requests end to end: refused with the request to make, filed,
//! approved by someone else (two people where the role says so), used with the stock
//! `ssh` and `psql`, and ended — revoked or run out — with the live session ending too.

use std::time::Duration;

use crate::harness::postern::Postern;
use crate::login::{Dev, PASSWORD};
use crate::pg::{PgBastion, running};
use crate::ssh::{Bastion, wait_child};

/// Adds users with the `sre` role (reviewers) and a password each.
fn reviewers(p: &Postern, names: &[&str]) {
    for n in names {
        p.cli(&["admin", "user", "add", n, "--role", "sre"]).ok();
        p.cli_stdin(
            &["admin", "user", "set-password", n, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        )
        .ok();
    }
}

/// Roles `sre` (reviewers, console audit) and `gpu-admin` (the test's login on t1),
/// requestable by `who` for at most `max_ttl`, reviewed by `sre`.
fn gpu_admin(b: &Bastion, who: &str, max_ttl: &str) {
    let p = &b.postern;
    p.cli(&["admin", "role", "add", "sre", "--console", "audit"])
        .ok();
    p.cli(&[
        "admin",
        "role",
        "add",
        "gpu-admin",
        "--allow",
        "env=test",
        "--logins",
        &b.login,
        "--requestable-by",
        who,
        "--reviewers",
        "sre",
        "--max-request-ttl",
        max_ttl,
    ])
    .ok();
}

fn logged_in(p: &Postern, user: &str) -> Dev {
    let dev = Dev::new();
    let ca = p.write("tls-ca.pem", p.cli(&["admin", "tls-ca"]).ok());
    dev.login_as(p, user, &["--ca-file", ca.to_str().unwrap()], PASSWORD)
        .ok();
    dev
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..150 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn a_requested_role_is_approved_used_over_ssh_and_revoked_mid_session() {
    let b = Bastion::start();
    let p = &b.postern;
    gpu_admin(&b, "user:alice", "1h");
    p.cli(&["admin", "user", "revoke", "alice", "dev"]).ok();
    crate::login::set_password(p);
    reviewers(p, &["bob"]);

    // Refused, with the request that would help.
    let out = b.ssh(&b.dest(), "echo hi");
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(&format!(
            "access to {}@t1 denied: no role allows it (default deny) — request it: postern request create --role gpu-admin --target t1",
            b.login
        )),
        "{}",
        out.stderr
    );

    // No standing role, but a requestable one: alice logs in to ask.
    let alice = logged_in(p, "alice");
    let roles = alice.run(p, &["request", "roles"], "");
    assert!(roles.ok().contains("gpu-admin"), "{}", roles.stdout);
    let out = alice.run(
        p,
        &[
            "request",
            "create",
            "--role",
            "gpu-admin",
            "--for",
            "2h",
            "--reason",
            "x",
        ],
        "",
    );
    assert!(
        out.fails(1).contains("at most 1h (max_request_ttl)"),
        "{}",
        out.stderr
    );
    let out = alice.run(
        p,
        &[
            "request", "create", "--role", "dev", "--for", "1h", "--reason", "x",
        ],
        "",
    );
    assert!(
        out.fails(1).contains("not requestable by you"),
        "{}",
        out.stderr
    );
    let out = alice.run(
        p,
        &[
            "request",
            "create",
            "--role",
            "gpu-admin",
            "--target",
            "t1",
            "--for",
            "1h",
            "--reason",
            "fix the driver on gpu-1",
        ],
        "",
    );
    assert!(
        out.ok()
            .contains("request #1 filed: gpu-admin on t1 for 1h (pending: 0 of 1 approvals"),
        "{}",
        out.stdout
    );
    // The same again is refused; one's own request cannot be approved.
    let again = alice.run(
        p,
        &[
            "request",
            "create",
            "--role",
            "gpu-admin",
            "--target",
            "t1",
            "--for",
            "1h",
            "--reason",
            "x",
        ],
        "",
    );
    assert!(
        again
            .fails(1)
            .contains("request #1 for the same access is already pending")
    );
    let own = alice.run(p, &["request", "approve", "1"], "");
    assert!(
        own.fails(1).contains("cannot decide your own request"),
        "{}",
        own.stderr
    );
    assert_ne!(b.ssh(&b.dest(), "echo hi").code, 0);

    // A reviewer sees it pending and approves it.
    let bob = logged_in(p, "bob");
    let pending = bob.run(p, &["request", "list", "--pending"], "");
    assert!(
        pending.ok().contains("fix the driver on gpu-1"),
        "{}",
        pending.stdout
    );
    let out = bob.run(
        p,
        &["request", "approve", "1", "--reason", "ticket OPS-7"],
        "",
    );
    assert!(out.ok().contains("request #1 approved"), "{}", out.stdout);
    assert!(
        out.stdout.contains("approved: granted until"),
        "{}",
        out.stdout
    );
    let ls = alice.run(p, &["ls"], "");
    assert!(ls.ok().contains("(by request, "), "{}", ls.stdout);
    let out = b.ssh(&b.dest(), "echo through-the-grant");
    assert_eq!(out.ok().trim(), "through-the-grant");

    // Revoked while a session runs on it: the session ends, saying why.
    let child = crate::ssh::sleeping_session(&b, &b.key, 2);
    let out = bob.run(p, &["request", "revoke", "1", "--reason", "done"], "");
    assert!(out.ok().contains("request #1 revoked"), "{}", out.stdout);
    let out = wait_child(child);
    assert!(!out.stdout.contains("never"));
    assert!(
        out.stderr
            .contains("access was withdrawn: the grant of request #1 was revoked or ended"),
        "{out:?}"
    );
    assert_ne!(b.ssh(&b.dest(), "echo hi").code, 0);

    // Every step is in the audit log, with who did it and why.
    let created = p.events("request.created");
    assert_eq!(created[0]["actor"], "user:alice");
    assert_eq!(created[0]["details"]["reason"], "fix the driver on gpu-1");
    let approved = p.events("request.approved");
    assert_eq!(approved[0]["actor"], "user:bob");
    assert_eq!(approved[0]["details"]["reason"], "ticket OPS-7");
    assert_eq!(approved[0]["target"], "t1");
    assert_eq!(p.events("request.revoked")[0]["details"]["reason"], "done");
    wait_for("session.revoked", || {
        !p.events("session.revoked").is_empty()
    });

    // A removed user's grants end with them: someone added later under the same name
    // inherits nothing.
    let out = alice.run(
        p,
        &[
            "request",
            "create",
            "--role",
            "gpu-admin",
            "--for",
            "1h",
            "--reason",
            "again",
        ],
        "",
    );
    out.ok();
    bob.run(p, &["request", "approve", "2"], "").ok();
    assert_eq!(b.ssh(&b.dest(), "echo granted").ok().trim(), "granted");
    p.cli(&["admin", "user", "rm", "alice"]).ok();
    let ended = p.events("request.revoked");
    assert_eq!(
        ended.last().unwrap()["details"]["reason"],
        "user `alice` was removed"
    );
    p.cli(&["admin", "user", "add", "alice"]).ok();
    p.cli(&[
        "admin",
        "user",
        "add-key",
        "alice",
        b.key.with_extension("pub").to_str().unwrap(),
    ])
    .ok();
    assert_ne!(b.ssh(&b.dest(), "echo inherited").code, 0);
}

#[test]
fn two_approvals_then_the_grant_runs_out_under_a_live_psql_session() {
    let b = PgBastion::start();
    let p = &b.postern;
    p.cli(&["admin", "role", "add", "sre", "--console", "audit"])
        .ok();
    p.cli(&[
        "admin",
        "role",
        "add",
        "db-admin",
        "--allow",
        "env=test",
        "--databases",
        "features",
        "--db-users",
        "app",
        "--requestable-by",
        "role:dev",
        "--reviewers",
        "sre",
        "--approvals-required",
        "2",
    ])
    .ok();
    // alice keeps `dev` (which may request) but it no longer reaches the database.
    p.cli(&[
        "admin",
        "role",
        "set",
        "dev",
        "--remove-rule",
        "allow#1",
        "--add-allow",
        "env=none",
        "--databases",
        "x",
        "--db-users",
        "x",
    ])
    .ok();
    reviewers(p, &["bob", "carol"]);

    let out = b.psql(&["-c", "select 1"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("denied: no role allows it (default deny) — request it: postern request create --role db-admin --target pg1"),
        "{}",
        out.stderr
    );

    let out = b.dev.run(
        p,
        &[
            "request", "create", "--role", "db-admin", "--target", "pg1", "--for", "6s",
            "--reason", "backfill",
        ],
        "",
    );
    out.ok();
    let bob = logged_in(p, "bob");
    let carol = logged_in(p, "carol");
    let first = bob.run(p, &["request", "approve", "1"], "");
    assert!(
        first.ok().contains("pending: 1 of 2 approvals"),
        "{}",
        first.stdout
    );
    let twice = bob.run(p, &["request", "approve", "1"], "");
    assert!(
        twice.fails(1).contains("already approved"),
        "{}",
        twice.stderr
    );
    assert_ne!(
        b.psql(&["-c", "select 1"]).code,
        0,
        "one approval of two grants nothing"
    );
    carol.run(p, &["request", "approve", "1"], "").ok();
    assert_eq!(b.psql(&["-c", "select 41 + 1"]).ok().trim(), "42");

    // The grant ends while a statement runs: the session ends with it, warned first.
    let child = running(&b, "select pg_sleep(60)");
    let out = wait_child(child);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("postern: the access granted by request #1 ends in"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("the access granted by request #1 has ended"),
        "{out:?}"
    );
    assert!(!p.events("session.grant_ended").is_empty());
    wait_for("request.grant_ended", || {
        !p.events("request.grant_ended").is_empty()
    });
    let mine = b.dev.run(p, &["request", "list"], "");
    assert!(mine.ok().contains("ended"), "{}", mine.stdout);
    assert_ne!(b.psql(&["-c", "select 1"]).code, 0);

    // A request nobody decides expires on its own.
    p.cli(&["admin", "role", "set", "db-admin", "--request-expiry", "1s"])
        .ok();
    b.dev
        .run(
            p,
            &[
                "request", "create", "--role", "db-admin", "--for", "1m", "--reason", "again",
            ],
            "",
        )
        .ok();
    wait_for("request.expired", || {
        !p.events("request.expired").is_empty()
    });
    let late = carol.run(p, &["request", "approve", "2"], "");
    assert!(
        late.fails(1).contains("request #2 is expired"),
        "{}",
        late.stderr
    );
    let approvals = p.events("request.approval");
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0]["actor"], "user:bob");
    assert_eq!(p.events("request.approved")[0]["actor"], "user:carol");
}

/// A local webhook receiver: records every body; answers 503 to the first delivery (so
/// postern must retry), 500 to any body containing `deny-me`, 200 otherwise.
fn receiver() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            let mut first = String::new();
            r.read_line(&mut first).ok();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).ok();
            let text = String::from_utf8_lossy(&body).to_string();
            let status = if n == 0 {
                "503 Busy"
            } else if text.contains("deny-me") {
                "500 Broken"
            } else {
                "200 OK"
            };
            assert!(first.starts_with("POST /hook "), "{first}");
            seen.lock()
                .unwrap()
                .push(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null));
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, got)
}

#[test]
fn request_events_reach_a_webhook_with_retries_and_failures_are_audited() {
    let (port, got) = receiver();
    let config =
        format!("[notify]\nwebhook = \"http://127.0.0.1:{port}/hook\"\ngrant_warning = \"1h\"\n");
    let b = Bastion::start_with(&[], Some(&config));
    let p = &b.postern;
    // A second replica follows the same log: each event is still announced once.
    let _replica = p.replica(Some(&p.root().join("postern.toml")));
    gpu_admin(&b, "*", "8h");
    crate::login::set_password(p);
    reviewers(p, &["bob"]);
    let alice = logged_in(p, "alice");
    let bob = logged_in(p, "bob");
    alice
        .run(
            p,
            &[
                "request",
                "create",
                "--role",
                "gpu-admin",
                "--target",
                "t1",
                "--for",
                "30m",
                "--reason",
                "fix <gpu> & go",
            ],
            "",
        )
        .ok();
    bob.run(p, &["request", "approve", "1", "--reason", "ok"], "")
        .ok();
    alice
        .run(
            p,
            &[
                "request",
                "create",
                "--role",
                "gpu-admin",
                "--for",
                "30m",
                "--reason",
                "deny-me",
            ],
            "",
        )
        .ok();
    bob.run(p, &["request", "deny", "2", "--reason", "not today"], "")
        .ok();

    let texts = || -> Vec<String> {
        got.lock()
            .unwrap()
            .iter()
            .filter_map(|v| v["text"].as_str().map(str::to_string))
            .collect()
    };
    for _ in 0..400 {
        // With two replicas the refused one need not hold the others back: wait for both.
        if texts().iter().any(|t| t.contains("denied by bob"))
            && !p.events("notify.failed").is_empty()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = texts();
    let created: Vec<&String> = t.iter().filter(|t| t.contains("request #1;")).collect();
    assert_eq!(created.len(), 2, "delivered again after the 503: {t:#?}");
    assert!(
        created[0].contains(
            "alice asks for role gpu-admin on t1 for 30m: \u{201c}fix &lt;gpu&gt; &amp; go\u{201d}"
        ),
        "{t:#?}"
    );
    assert!(t.iter().any(|t| t.contains("request #1 approved by bob: alice has role gpu-admin on t1 until")), "{t:#?}");
    assert!(
        t.iter()
            .any(|t| t.contains("alice's role gpu-admin on t1 (request #1) ends at")),
        "{t:#?}"
    );
    assert!(
        t.iter()
            .any(|t| t.contains("request #2 (alice, gpu-admin) denied by bob: not today")),
        "{t:#?}"
    );
    // The one the receiver kept refusing: five attempts, then audited.
    assert_eq!(
        t.iter().filter(|t| t.contains("request #2;")).count(),
        5,
        "{t:#?}"
    );
    let failed = p.events("notify.failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["details"]["type"], "request.created");
    assert!(
        failed[0]["details"]["error"]
            .as_str()
            .unwrap()
            .contains("HTTP 500")
    );
    // The event itself rides along for machines.
    let with_event = got
        .lock()
        .unwrap()
        .iter()
        .any(|v| v["event"]["type"] == "request.approved");
    assert!(with_event);
}

/// Plain HTTPS against the console: forms as a browser posts them.
const CONSOLE: &str = r#"
alice, a_csrf = login("alice")
bob, b_csrf = login("bob")
out["form"] = 'action="/requests"' in call("GET", "/requests", None, alice)[1]
out["ask"] = call("POST", "/requests", {"csrf": a_csrf, "role": "gpu-admin", "target": "t1", "for": "1h", "reason": "<script>x</script> night fix"}, alice)[0]
out["forged"] = call("POST", "/requests", {"csrf": "forged", "role": "gpu-admin", "for": "1h", "reason": "r"}, alice)[0]
out["too long"] = call("POST", "/requests", {"csrf": a_csrf, "role": "gpu-admin", "for": "9h", "reason": "r"}, alice)
out["self approve"] = call("POST", "/requests/1/approve", {"csrf": a_csrf, "reason": ""}, alice)[0]
page = call("GET", "/requests", None, bob)[1]
out["bob sees"] = "Waiting for your decision" in page and "&lt;script&gt;x&lt;/script&gt; night fix" in page
out["approve"] = call("POST", "/requests/1/approve", {"csrf": b_csrf, "reason": "ok"}, bob)[0]
out["alice sees grant"] = "granted until" in call("GET", "/requests", None, alice)[1]
out["revoke"] = call("POST", "/requests/1/revoke", {"csrf": b_csrf, "reason": "enough"}, bob)[0]
out["alice sees revoked"] = "revoked" in call("GET", "/requests", None, alice)[1]
print(json.dumps(out))
"#;

#[test]
fn the_console_files_approves_and_revokes_requests() {
    let b = Bastion::start();
    let p = &b.postern;
    gpu_admin(&b, "user:alice", "2h");
    crate::login::set_password(p);
    reviewers(p, &["bob"]);
    let r = crate::console::post_forms(p, PASSWORD, CONSOLE, &[]);
    assert_eq!(r["form"], true, "{r}");
    assert_eq!(r["ask"], 303, "{r}");
    assert_eq!(r["forged"], 403, "{r}");
    assert_eq!(r["too long"][0], 403, "{r}");
    assert!(
        r["too long"][1].as_str().unwrap().contains("at most 2h"),
        "{r}"
    );
    assert_eq!(r["self approve"], 403, "{r}");
    assert_eq!(r["bob sees"], true, "{r}");
    assert_eq!(r["approve"], 303, "{r}");
    assert_eq!(r["alice sees grant"], true, "{r}");
    assert_eq!(r["revoke"], 303, "{r}");
    assert_eq!(r["alice sees revoked"], true, "{r}");
    assert_eq!(p.events("request.approved")[0]["actor"], "user:bob");
    assert_eq!(
        p.events("request.revoked")[0]["details"]["reason"],
        "enough"
    );
}
