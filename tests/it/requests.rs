//! Just-in-time access requests end to end: refused with the request to make, filed,
//! approved by someone else (two people where the role says so), used with the stock
//! `ssh` and `psql`, and ended — revoked or run out — with the live session ending too.

use std::process::Stdio;
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
        "user:alice",
        "--reviewers",
        "sre",
        "--max-request-ttl",
        "1h",
    ])
    .ok();
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
    let child = b
        .ssh_command("ssh")
        .args(["-p", &p.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("sleep 30; echo never")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the session", || p.events("session.start").len() >= 2);
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

    // The grant ends while a statement runs: the session ends with it.
    let child = running(&b, "select pg_sleep(60)");
    let out = wait_child(child);
    assert_ne!(out.code, 0);
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
