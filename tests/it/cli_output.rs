//! What the command line prints is safe for the terminal reading it and honest about who
//! ran it: hostile names are shown escaped, the admin actor comes from the real uid, a
//! closed stdout ends a command quietly, and cut or destructive answers say so.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::postern::{BIN, Postern};
use crate::harness::{is_root, whoami};
use crate::pg::PgBastion;

/// Runs `postern ARGS…` with its stdout closed before it prints anything.
fn with_closed_stdout(p: &Postern, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(p.data_dir())
        .args(args)
        .env_remove("POSTERN_CONFIG")
        .env_remove("POSTERN_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away, as `| head -1` does once it has its line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let p = Postern::new();
    for name in ["u1", "u2", "u3"] {
        p.cli(&["admin", "user", "add", name]).ok();
    }
    for args in [
        &["audit", "search"][..],
        &["admin", "target-ca"],
        &["admin", "user", "list"],
        &["audit", "export"],
    ] {
        let (status, stderr) = with_closed_stdout(&p, args);
        assert!(
            status.success() || status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {status:?}\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn the_admin_actor_is_the_real_account_not_the_environment() {
    let p = Postern::new();
    let forged = Path::new("mallory\nos:forged");
    let mut env = vec![
        ("USER", forged),
        ("LOGNAME", forged),
        ("SUDO_USER", Path::new("mallory")),
    ];
    // Under sudo (uid 0 with SUDO_UID) the account that ran sudo is the actor.
    let expected = if is_root() {
        env.push(("SUDO_UID", Path::new("65534")));
        "os:nobody".to_string()
    } else {
        format!("os:{}", whoami())
    };
    p.cli_env(&["admin", "user", "add", "bob"], "", &env).ok();
    let created = p.events("user.create");
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["actor"], expected.as_str());
    let table = p.cli(&["audit", "search", "--type", "user.create"]);
    assert!(!table.ok().contains("forged"), "{}", table.stdout);
}

#[test]
fn a_hostile_database_login_name_is_shown_escaped() {
    let b = PgBastion::start();
    let hostile = "ev\u{1b}[2J\u{1b}]0;owned\u{7}il\u{202e}txt.exe\nFAKE os:root user.delete";
    let out: crate::harness::Out = b
        .psql_command(&format!(
            "host=127.0.0.1 port={} sslmode=require dbname=pg1/features",
            b.postern.pg.port()
        ))
        .env("PGUSER", hostile)
        .env("PGPASSWORD", "not-a-token")
        .args(["-c", "SELECT 1"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_ne!(out.code, 0, "{out:?}");
    let table = b.postern.cli(&["audit", "search", "--type", "auth"]);
    let text = table.ok();
    for bad in ['\u{1b}', '\u{7}', '\u{202e}'] {
        assert!(!text.contains(bad), "{bad:?} printed raw:\n{text}");
    }
    assert!(text.contains("\\x1b[2J"), "{text}");
    assert!(text.contains("\\u{202e}"), "{text}");
    // Every line is the header or one event: the name could not start a line of its own.
    assert!(text.lines().skip(1).all(|l| l.starts_with("20")), "{text}");
    // The attempt was made by nobody postern knows.
    let failures = b.postern.events("auth.failure");
    let last = failures.last().unwrap();
    assert_eq!(last["actor"], "unknown", "{last}");
}

#[test]
fn search_says_when_it_cut_the_answer() {
    let p = Postern::new();
    for name in ["u1", "u2", "u3", "u4"] {
        p.cli(&["admin", "user", "add", name]).ok();
    }
    let cut = p.cli(&["audit", "search", "--type", "user", "--limit", "2"]);
    assert_eq!(cut.ok().lines().count(), 3, "{}", cut.stdout);
    assert!(
        cut.stdout.contains("u4") && !cut.stdout.contains("u2"),
        "{}",
        cut.stdout
    );
    assert!(
        cut.stderr.contains("showing the newest 2"),
        "{}",
        cut.stderr
    );
    let whole = p.cli(&["audit", "search", "--type", "user", "--limit", "4"]);
    assert_eq!(whole.ok().lines().count(), 5, "{}", whole.stdout);
    assert!(whole.stderr.is_empty(), "{}", whole.stderr);
}
