//! `postern login`, `postern status` and `postern db login` over the HTTPS API, with the
//! certificates they issue used by the stock `ssh` client.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::Out;
use crate::harness::postern::Postern;
use crate::ssh::Bastion;

pub const PASSWORD: &str = "correct horse battery staple";

/// A developer's machine: its own HOME, where `~/.postern` goes.
pub struct Dev {
    home: tempfile::TempDir,
}

impl Dev {
    pub fn new() -> Dev {
        Dev {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.home().join(".postern").join(name)
    }

    pub fn run(&self, p: &Postern, args: &[&str], stdin: &str) -> Out {
        p.cli_env(args, stdin, &[("HOME", self.home())])
    }

    pub fn login(&self, p: &Postern, extra: &[&str], password: &str) -> Out {
        self.login_as(p, "alice", extra, password)
    }

    pub fn login_as(&self, p: &Postern, user: &str, extra: &[&str], password: &str) -> Out {
        let server = format!("https://127.0.0.1:{}", p.api.port());
        let mut args = vec![
            "login",
            "--server",
            &server,
            "--user",
            user,
            "--password-stdin",
        ];
        args.extend_from_slice(extra);
        self.run(p, &args, &format!("{password}\n"))
    }
}

fn with_password(b: &Bastion) {
    set_password(&b.postern);
}

pub fn set_password(p: &Postern) {
    p.cli_stdin(
        &["admin", "user", "set-password", "alice", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    )
    .ok();
}

fn ca_file(b: &Bastion) -> PathBuf {
    let pem = b.postern.cli(&["admin", "tls-ca"]);
    b.postern.write("tls-ca.pem", pem.ok())
}

fn events(b: &Bastion, kind: &str) -> Vec<serde_json::Value> {
    b.postern.events(kind)
}

/// The events of one type once there are at least `n` of them.
fn wait_events(b: &Bastion, kind: &str, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let e = events(b, kind);
        if e.len() >= n {
            return e;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("fewer than {n} {kind} events; log:\n{}", b.postern.log());
}

/// `ssh-keygen -L`'s validity, in seconds.
fn validity_secs(cert: &Path) -> i64 {
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.trim().starts_with("Valid:"))
        .unwrap()
        .to_string();
    let words: Vec<&str> = line.split_whitespace().collect();
    // Valid: from 2026-11-25T15:06:19 to 2026-11-25T17:07:19
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let from = time::PrimitiveDateTime::parse(words[2], &fmt).unwrap();
    let to = time::PrimitiveDateTime::parse(words[4], &fmt).unwrap();
    (to - from).whole_seconds()
}

#[test]
fn login_issues_a_certificate_plain_ssh_uses_with_the_shortest_role_ttl() {
    // alice's two roles: dev (credential_ttl 2h) and ops (credential_ttl 90m but sessions
    // capped at 45m): her certificate lives 45m, never beyond a session cap.
    let b = Bastion::start_with_role(&["--credential-ttl", "2h"]);
    b.postern
        .cli(&[
            "admin",
            "role",
            "add",
            "ops",
            "--allow",
            "env=none",
            "--credential-ttl",
            "90m",
            "--max-session-ttl",
            "45m",
        ])
        .ok();
    b.postern
        .cli(&["admin", "user", "grant", "alice", "ops"])
        .ok();
    with_password(&b);
    let dev = Dev::new();
    let ca = ca_file(&b);
    let out = dev.login(&b.postern, &["--ca-file", ca.to_str().unwrap()], PASSWORD);
    let printed = out.ok();
    assert!(
        printed.starts_with("logged in to https://127.0.0.1:"),
        "{printed}"
    );
    assert!(printed.contains("as alice (roles: dev, ops)"), "{printed}");
    assert!(printed.contains("(45m)"), "{printed}");

    for f in [
        "id_ed25519",
        "id_ed25519-cert.pub",
        "profile.json",
        "ca.crt",
    ] {
        let mode = std::fs::metadata(dev.file(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let cert = dev.file("id_ed25519-cert.pub");
    let listing = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(listing.contains("user certificate"), "{listing}");
    assert!(
        listing.contains("Principals: \n                alice\n"),
        "{listing}"
    );
    assert!(
        listing.contains("Key ID: \"postern user=alice\""),
        "{listing}"
    );
    // 45 minutes, plus the minute of clock skew allowed before now.
    assert_eq!(validity_secs(&cert), 45 * 60 + 60);

    // The printed ~/.ssh/config block is all plain ssh needs.
    let block: String = printed
        .lines()
        .skip_while(|l| !l.starts_with("Host "))
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(block.contains("CertificateFile"), "{printed}");
    let config = b.postern.write(
        "ssh_config",
        &format!(
            "{block}    UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n    BatchMode yes\n",
            b.known_hosts.display()
        ),
    );
    let out: Out = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("echo via-login-cert")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.ok(), "via-login-cert\n");

    // The login and the certificate's use are on the record, tied by the serial.
    let login = &events(&b, "auth.login")[0];
    assert_eq!(login["actor"], "user:alice");
    assert_eq!(login["details"]["ttl"], "45m");
    let serial = login["details"]["serial"].as_str().unwrap().to_string();
    assert!(listing.contains(&format!("Serial: {serial}")), "{listing}");
    let used = events(&b, "auth.success");
    assert!(
        used.iter().any(|e| e["details"]["method"] == "certificate"
            && e["details"]["serial"] == serial.as_str()),
        "{used:?}"
    );
    // The password never reaches the store or the audit log.
    assert_eq!(b.postern.files_holding(PASSWORD), Vec::<PathBuf>::new());

    let status = dev.run(&b.postern, &["status"], "");
    let s = status.ok();
    assert!(s.contains("user:         alice"), "{s}");
    assert!(s.contains("roles:        dev, ops"), "{s}");
    assert!(s.contains("left)"), "{s}");
    assert!(s.contains(&format!("serial {serial}")), "{s}");
}

/// Runs `postern ARGS…` on a pseudo-terminal with HOME set, answering the first prompt
/// that contains `prompt` with `answer` once echo is off (a hidden prompt); returns the
/// exit code and what the terminal showed.
fn on_terminal(home: &Path, args: &[&str], prompt: &str, answer: &str) -> (i32, String) {
    const SCRIPT: &str = r#"
import json, os, pty, select, sys, termios, time
home, prompt, answer, argv = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode(), sys.argv[4:]
pid, fd = pty.fork()
if pid == 0:
    os.environ["HOME"] = home
    os.execv(argv[0], argv)
shown, sent = b"", False
while True:
    ready, _, _ = select.select([fd], [], [], 30)
    if not ready:
        break
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    shown += data
    if not sent and prompt in shown:
        # Type only once the program has turned echo off, as a person would after
        # reading the prompt; never turning it off fails the test.
        for _ in range(1000):
            if not termios.tcgetattr(fd)[3] & termios.ECHO:
                break
            time.sleep(0.01)
        else:
            shown += b"[echo was never turned off]"
        os.write(fd, answer + b"\n")
        sent = True
_, status = os.waitpid(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "shown": shown.decode("utf-8", "replace")}))
"#;
    let out: Out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(home)
        .args([prompt, answer, crate::harness::postern::BIN])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    (
        v["code"].as_i64().unwrap() as i32,
        v["shown"].as_str().unwrap().to_string(),
    )
}

#[test]
fn login_asks_for_the_password_on_a_terminal_without_echo() {
    let b = Bastion::start();
    with_password(&b);
    let ca = ca_file(&b);
    let dev = Dev::new();
    let server = format!("https://127.0.0.1:{}", b.postern.api.port());
    let args = [
        "login",
        "--server",
        &server,
        "--user",
        "alice",
        "--ca-file",
        ca.to_str().unwrap(),
    ];
    let (code, shown) = on_terminal(dev.home(), &args, "password for alice", PASSWORD);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains(&format!("password for alice at {server}: ")),
        "{shown}"
    );
    // The terminal never showed what was typed.
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(!shown.contains("echo was never turned off"), "{shown}");
    assert!(dev.file("id_ed25519-cert.pub").exists(), "{shown}");

    // A wrong password typed at the prompt is refused like any other.
    let (code, shown) = on_terminal(dev.home(), &args, "password for alice", "not it");
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("wrong user name or password"), "{shown}");
    assert!(!shown.contains("not it"), "{shown}");
}

#[test]
fn the_server_is_trusted_on_first_use_then_pinned() {
    let b = Bastion::start();
    with_password(&b);
    let dev = Dev::new();
    let first = dev.login(&b.postern, &[], PASSWORD);
    first.ok();
    assert!(
        first
            .stderr
            .contains("on first use: its TLS certificate is SHA256:"),
        "{}",
        first.stderr
    );
    let pinned = std::fs::read_to_string(dev.file("known_servers")).unwrap();
    assert!(pinned.starts_with(&format!("127.0.0.1:{} SHA256:", b.postern.api.port())));
    let again = dev.login(&b.postern, &[], PASSWORD);
    again.ok();
    assert!(!again.stderr.contains("first use"), "{}", again.stderr);

    // A different certificate at the same address is refused, loudly.
    std::fs::write(
        dev.file("known_servers"),
        format!(
            "127.0.0.1:{} SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
            b.postern.api.port()
        ),
    )
    .unwrap();
    let out = dev.login(&b.postern, &[], PASSWORD);
    assert!(
        out.fails(1).contains("someone may be intercepting"),
        "{}",
        out.stderr
    );
    // A CA that did not sign the server's certificate is refused too.
    let other = tempfile::tempdir().unwrap();
    let other_data = other.path().join("data");
    let made = Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("--data-dir")
        .arg(&other_data)
        .args(["admin", "tls-ca"])
        .output()
        .unwrap();
    let wrong_ca = b
        .postern
        .write("wrong-ca.pem", &String::from_utf8_lossy(&made.stdout));
    let out = dev.login(
        &b.postern,
        &["--ca-file", wrong_ca.to_str().unwrap()],
        PASSWORD,
    );
    assert!(
        out.fails(1).contains("TLS with https://127.0.0.1:"),
        "{}",
        out.stderr
    );
}

#[test]
fn failed_logins_are_audited_and_slowed_down() {
    let b = Bastion::start();
    with_password(&b);
    let dev = Dev::new();
    // An unknown user and a wrong password read the same.
    let server = format!("https://127.0.0.1:{}", b.postern.api.port());
    let unknown = dev.run(
        &b.postern,
        &[
            "login",
            "--server",
            &server,
            "--user",
            "nobody",
            "--password-stdin",
        ],
        "whatever-password\n",
    );
    assert_eq!(
        unknown.fails(1).trim_end(),
        "postern login: wrong user name or password"
    );
    for _ in 0..3 {
        let out = dev.login(&b.postern, &[], "not the password");
        assert_eq!(
            out.fails(1).trim_end(),
            "postern login: wrong user name or password"
        );
    }
    // The right password now waits its turn.
    let out = dev.login(&b.postern, &[], PASSWORD);
    assert!(
        out.fails(1)
            .contains("too many failed logins; try again in"),
        "{}",
        out.stderr
    );
    let failures = events(&b, "auth.failure");
    assert_eq!(
        failures
            .iter()
            .filter(|e| e["actor"] == "user:alice" && e["details"]["reason"] == "wrong password")
            .count(),
        3,
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|e| e["details"]["reason"] == "unknown user")
    );
    let limited = events(&b, "auth.rate_limited");
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert!(
        limited[0]["source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    // The first delay is a second; after it the password works again.
    std::thread::sleep(Duration::from_millis(1500));
    dev.login(&b.postern, &[], PASSWORD).ok();
}

/// Guesses spread over replicas behind a balancer count together: wrong passwords at one
/// replica, and a second later the other refuses even the right one for a while.
#[test]
fn failed_logins_at_one_replica_throttle_the_others() {
    let b = Bastion::start();
    with_password(&b);
    let replica = b.postern.replica(None);
    let dev = Dev::new();
    let login_at = |port: u16, password: &str| {
        let server = format!("https://127.0.0.1:{port}");
        dev.run(
            &b.postern,
            &[
                "login",
                "--server",
                &server,
                "--user",
                "alice",
                "--password-stdin",
            ],
            &format!("{password}\n"),
        )
    };
    // Six wrong passwords at the first replica, each waiting out the block before it.
    let mut wrong = 0;
    let start = std::time::Instant::now();
    while wrong < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "guessing took too long"
        );
        let out = login_at(b.postern.api.port(), "not the password");
        let err = out.fails(1);
        if err.contains("wrong user name or password") {
            wrong += 1;
        } else {
            assert!(err.contains("too many failed logins"), "{err}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // The other replica has seen none of them itself.
    std::thread::sleep(Duration::from_millis(2500));
    let out = login_at(replica.api, PASSWORD);
    assert!(
        out.fails(1)
            .contains("too many failed logins; try again in"),
        "{}",
        out.stderr
    );
}

fn oathtool(secret: &str) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", secret])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_enrolled_user_needs_a_fresh_one_time_code() {
    let b = Bastion::start();
    with_password(&b);
    let out = b.postern.cli(&["admin", "user", "totp", "alice"]);
    let uri = out
        .ok()
        .lines()
        .find(|l| l.starts_with("otpauth://totp/postern:alice?secret="))
        .unwrap()
        .to_string();
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    // The secret is sealed in the store, never in the audit log.
    assert!(!events(&b, "user.totp_enrolled").is_empty());
    assert!(!b.postern.cli(&["audit", "export"]).ok().contains(&secret));

    let dev = Dev::new();
    let out = dev.login(&b.postern, &[], PASSWORD);
    assert!(
        out.fails(1)
            .contains("needs a one-time code: pass --totp CODE"),
        "{}",
        out.stderr
    );
    let out = dev.login(&b.postern, &["--totp", "000000"], PASSWORD);
    let wrong = out.fails(1).to_string();
    let code = oathtool(&secret);
    if code != "000000" {
        assert!(wrong.contains("the one-time code is wrong"), "{wrong}");
    }
    dev.login(&b.postern, &["--totp", &code], PASSWORD).ok();
    assert_eq!(
        events(&b, "auth.login")[0]["details"]["method"],
        "password+totp"
    );
    // The same code twice is a replay.
    let out = dev.login(&b.postern, &["--totp", &code], PASSWORD);
    assert!(out.fails(1).contains("already used"), "{}", out.stderr);

    b.postern
        .cli(&["admin", "user", "totp", "alice", "--remove"])
        .ok();
    dev.login(&b.postern, &[], PASSWORD).ok();
}

#[test]
fn sessions_can_outlive_the_login_certificate_when_configured() {
    let b = Bastion::start_with(
        &["--credential-ttl", "3s"],
        Some("[ssh]\ndisconnect_on_credential_expiry = false\n"),
    );
    with_password(&b);
    let dev = Dev::new();
    dev.login(&b.postern, &[], PASSWORD).ok();
    let key = dev.file("id_ed25519");
    let out = b.ssh_with_key(&key, &b.dest(), "sleep 6; echo survived");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "survived");
    assert!(!out.stderr.contains("credential"), "{}", out.stderr);
    let ended = wait_events(&b, "session.end", 1);
    assert_ne!(ended[0]["details"]["reason"], "credential_expired");
    assert!(events(&b, "session.credential_expired").is_empty());
}

#[test]
fn sessions_end_with_the_login_certificate_and_an_expired_one_says_so() {
    let b = Bastion::start_with_role(&["--credential-ttl", "4s"]);
    with_password(&b);
    let dev = Dev::new();
    dev.login(&b.postern, &[], PASSWORD).ok();
    let key = dev.file("id_ed25519");
    // A session opened with the certificate ends when it expires.
    let out = b.ssh_with_key(&key, &b.dest(), "sleep 30; echo never");
    assert_ne!(out.code, 0);
    assert!(!out.stdout.contains("never"));
    assert!(
        out.stderr.contains("your postern credential expires in"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("your postern credential expired at")
            && out.stderr.contains("UTC — run postern login"),
        "{}",
        out.stderr
    );
    // The client may exit before postern has written the session's end.
    let ended = wait_events(&b, "session.end", 1);
    assert_eq!(ended[0]["details"]["reason"], "credential_expired");
    let ended = events(&b, "session.credential_expired");
    assert_eq!(ended.len(), 1, "{ended:?}");

    // Connecting again with the expired certificate: a human message, not just
    // "Permission denied" (needs keyboard-interactive, which BatchMode turns off).
    let out = b.ssh_as_a_person(&key, "true");
    assert_eq!(out.code, 255);
    assert!(
        out.stderr.contains("your postern credential expired at")
            && out.stderr.contains("UTC - run postern login"),
        "{}",
        out.stderr
    );
    let status = dev.run(&b.postern, &["status"], "");
    assert!(
        status
            .fails(1)
            .contains("your postern credential expired at")
    );

    // A fresh login works again.
    dev.login(&b.postern, &[], PASSWORD).ok();
    assert_eq!(b.ssh_with_key(&key, &b.dest(), "echo back").ok(), "back\n");
}

#[test]
fn db_login_issues_a_scoped_token_and_writes_pgpass_and_the_service_file() {
    let b = Bastion::start_with_role(&["--databases", "features", "--db-users", "app,reader"]);
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            "pg1",
            "--postgres",
            "127.0.0.1:5999",
            "--label",
            "env=test",
        ])
        .ok();
    with_password(&b);
    let dev = Dev::new();
    // Without a login there is nothing to present.
    let out = dev.run(&b.postern, &["db", "login", "pg1"], "");
    assert!(
        out.fails(1).contains("not logged in; run postern login"),
        "{}",
        out.stderr
    );
    let ca = ca_file(&b);
    dev.login(&b.postern, &["--ca-file", ca.to_str().unwrap()], PASSWORD)
        .ok();

    let out = dev.run(&b.postern, &["db", "login", "pg1"], "");
    let printed = out.ok();
    assert!(printed.contains("on pg1 (features as app)"), "{printed}");
    assert!(
        printed.trim_end().ends_with("psql \"service=pg1\""),
        "{printed}"
    );
    let pgpass_path = dev.home().join(".pgpass");
    assert_eq!(
        std::fs::metadata(&pgpass_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let pgpass = std::fs::read_to_string(&pgpass_path).unwrap();
    let prefix = format!("127.0.0.1:{}:pg1/features:alice:pgt_", b.postern.pg.port());
    assert!(pgpass.starts_with(&prefix), "{pgpass}");
    let token = pgpass.trim_end().rsplit(':').next().unwrap().to_string();
    assert!(token.len() >= 4 + 43, "256 bits: {token}");
    let service = std::fs::read_to_string(dev.home().join(".pg_service.conf")).unwrap();
    assert!(service.starts_with("[pg1]\nhost=127.0.0.1\n"), "{service}");
    assert!(
        service.contains("dbname=pg1/features\nuser=alice\nsslmode=verify-full\n"),
        "{service}"
    );

    // Another database user the role lists: the pgpass line is replaced, not duplicated.
    dev.run(
        &b.postern,
        &["db", "login", "pg1", "--db-user", "reader"],
        "",
    )
    .ok();
    let pgpass = std::fs::read_to_string(&pgpass_path).unwrap();
    assert_eq!(pgpass.lines().count(), 1, "{pgpass}");

    // Denied: a database user no role lists; unknown target; an SSH target.
    let out = dev.run(
        &b.postern,
        &["db", "login", "pg1", "--db-user", "postgres"],
        "",
    );
    assert!(
        out.fails(1).contains(
            "access to database `features` as `postgres` on `pg1` denied: no role allows it"
        ),
        "{}",
        out.stderr
    );
    let out = dev.run(&b.postern, &["db", "login", "nope"], "");
    assert!(
        out.fails(1).contains("no target `nope` that you may reach"),
        "{}",
        out.stderr
    );
    // A database alice may not reach is answered the same way.
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            "vault",
            "--postgres",
            "127.0.0.1:1",
            "--label",
            "env=prod",
        ])
        .ok();
    let out = dev.run(&b.postern, &["db", "login", "vault"], "");
    assert_eq!(
        out.fails(1).replace("vault", "nope"),
        dev.run(&b.postern, &["db", "login", "nope"], "").stderr
    );
    let out = dev.run(&b.postern, &["db", "login", "t1"], "");
    assert!(
        out.fails(1).contains("is for postgres targets"),
        "{}",
        out.stderr
    );

    // The store keeps only a hash of the token; the audit log records the issue.
    assert_eq!(b.postern.files_holding(&token), Vec::<PathBuf>::new());
    let issued = events(&b, "credential.db_token");
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!(issued[0]["details"]["db_user"], "app");
    assert_eq!(issued[1]["target"], "pg1");
    assert!(!events(&b, "access.deny").is_empty());
}

#[test]
fn revoking_a_login_certificate_ends_its_live_sessions() {
    let b = Bastion::start();
    with_password(&b);
    let dev = Dev::new();
    dev.login(&b.postern, &[], PASSWORD).ok();
    let key = dev.file("id_ed25519");
    let child = crate::ssh::sleeping_session(&b, &key, 1);
    let serial = events(&b, "auth.login")[0]["details"]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    b.postern
        .cli(&[
            "admin",
            "cert",
            "revoke",
            &serial,
            "--reason",
            "laptop stolen",
        ])
        .ok();
    let out = crate::ssh::wait_child(child);
    assert!(!out.stdout.contains("never"));
    assert!(
        out.stderr.contains(&format!(
            "access was withdrawn: your postern credential (serial {serial}) was revoked"
        )),
        "{out:?}"
    );
    assert_eq!(crate::ssh::ended_session(&b)["end_reason"], "revoked");
    // And the API no longer honours the login's token.
    let out = dev.run(&b.postern, &["db", "login", "t1"], "");
    assert!(out.fails(1).contains("was revoked"), "{}", out.stderr);
}

#[test]
fn a_configured_tls_certificate_replaces_the_generated_one() {
    // Another CA and a server certificate it signed: those of a second data dir.
    let other = Postern::new();
    let other_ca = other.cli(&["admin", "tls-ca"]);
    let other_ca = other.write("other-ca.pem", other_ca.ok());
    let tls = other.data_dir().join("tls");

    let mut p = Postern::new();
    p.cli(&["admin", "role", "add", "dev", "--allow", "*"]).ok();
    p.cli(&["admin", "user", "add", "alice", "--role", "dev"])
        .ok();
    set_password(&p);
    let own_ca = p.write("own-ca.pem", p.cli(&["admin", "tls-ca"]).ok());
    let cfg = p.write(
        "postern.toml",
        &format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            tls.join("server.crt").display(),
            tls.join("server.key").display()
        ),
    );
    let mut cmd = p.serve_command();
    cmd.arg("--config").arg(&cfg);
    p.spawn(cmd);

    let dev = Dev::new();
    dev.login(&p, &["--ca-file", other_ca.to_str().unwrap()], PASSWORD)
        .ok();
    let dev = Dev::new();
    let out = dev.login(&p, &["--ca-file", own_ca.to_str().unwrap()], PASSWORD);
    assert!(out.fails(1).contains("TLS with"), "{}", out.stderr);

    // Half a configuration is an error at start, not a silent fallback.
    let half = p.write("half.toml", "[tls]\ncert_file = \"/etc/hostname\"\n");
    let out: Out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["check-config", "--config"])
        .arg(&half)
        .output()
        .unwrap()
        .into();
    assert!(
        out.fails(2)
            .contains("tls.cert_file and tls.key_file go together"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_api_answers_bad_requests_with_json_errors_and_survives_garbage() {
    use postern::client::https::{Client, ServerUrl, Trust};
    use std::io::{Read, Write};

    let b = Bastion::start();
    let pem = std::fs::read(ca_file(&b)).unwrap();
    let url = ServerUrl::parse(&format!("https://127.0.0.1:{}", b.postern.api.port())).unwrap();
    let client = Client::new(url, &Trust::Ca(pem)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = |method: &str, path: &str, bearer: Option<&str>, body: Option<serde_json::Value>| {
        let r = rt
            .block_on(client.call(method, path, bearer, body.as_ref()))
            .unwrap();
        (r.status, r.body)
    };

    // Garbage instead of a TLS handshake, and a connection that sends nothing: neither
    // stops the API from serving others.
    let mut raw = std::net::TcpStream::connect(b.postern.api).unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff garbage")
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    let _idle = std::net::TcpStream::connect(b.postern.api).unwrap();

    let (status, body) = call("GET", "/v1/health", None, None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = call("GET", "/v2/nothing", None, None);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = call(
        "POST",
        "/v1/login",
        None,
        Some(serde_json::json!({"user": 1})),
    );
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    assert!(
        body["message"].as_str().unwrap().contains("not valid"),
        "{body}"
    );
    let big = serde_json::json!({ "user": "x".repeat(100_000) });
    let (status, body) = call("POST", "/v1/login", None, Some(big));
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("bad_request")),
        "{body}"
    );
    let bad_key =
        serde_json::json!({ "user": "alice", "password": "p", "public_key": "ssh-ed25519 nope" });
    let (status, body) = call("POST", "/v1/login", None, Some(bad_key));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("public_key:"),
        "{body}"
    );
    let (status, body) = call("GET", "/v1/whoami", None, None);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("not_logged_in"))
    );
    let (status, body) = call("GET", "/v1/whoami", Some("pst_forged"), None);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_token"))
    );
}

#[test]
fn tls_names_follow_the_config_and_the_ca_stays() {
    let mut p = Postern::new();
    p.cli(&["admin", "role", "add", "dev", "--allow", "*"]).ok();
    p.cli(&["admin", "user", "add", "alice", "--role", "dev"])
        .ok();
    set_password(&p);
    let tls = p.data_dir().join("tls");
    let ca = std::fs::read(tls.join("ca.crt")).unwrap();
    let ca_file = p.write("ca.pem", p.cli(&["admin", "tls-ca"]).ok());
    let serve_with = |p: &mut Postern, names: &str| {
        let cfg = p.write("postern.toml", &format!("[tls]\nhostnames = [{names}]\n"));
        let mut cmd = p.serve_command();
        cmd.arg("--config").arg(&cfg);
        p.spawn(cmd);
    };
    let login =
        |p: &Postern| Dev::new().login(p, &["--ca-file", ca_file.to_str().unwrap()], PASSWORD);

    // Names without 127.0.0.1: the certificate is issued again at start, by the same CA,
    // and a login to 127.0.0.1 is told which names it covers and how to add one.
    serve_with(&mut p, "\"localhost\"");
    let out = login(&p);
    assert!(
        out.fails(1)
            .contains("has a certificate for localhost, not for `127.0.0.1`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("[tls] hostnames"), "{}", out.stderr);
    let e = p.events("tls.certificate_reissued");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["details"]["names"], serde_json::json!(["localhost"]));
    assert_eq!(
        e[0]["details"]["names_before"],
        serde_json::json!(["localhost", "127.0.0.1"])
    );
    p.stop();

    // The name added: the same CA file works.
    serve_with(&mut p, "\"localhost\", \"127.0.0.1\"");
    login(&p).ok();
    // Unchanged names: nothing issued again.
    p.stop();
    serve_with(&mut p, "\"127.0.0.1\", \"localhost\"");
    assert_eq!(p.events("tls.certificate_reissued").len(), 2);
    p.stop();

    // The server certificate deleted: issued again from the same CA.
    std::fs::remove_file(tls.join("server.crt")).unwrap();
    std::fs::remove_file(tls.join("server.key")).unwrap();
    serve_with(&mut p, "\"localhost\", \"127.0.0.1\"");
    login(&p).ok();
    let e = p.events("tls.certificate_reissued");
    assert_eq!(e.len(), 3);
    assert_eq!(
        e[2]["details"]["reason"],
        "the server certificate or its key is missing"
    );
    p.stop();
    assert_eq!(
        std::fs::read(tls.join("ca.crt")).unwrap(),
        ca,
        "the CA never changed"
    );

    // The CA's key gone: postern does not start, and says which file and what to do.
    std::fs::remove_file(tls.join("ca.key")).unwrap();
    let out: Out = p.serve_command().output().unwrap().into();
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(&format!(
            "TLS CA file {} is missing",
            tls.join("ca.key").display()
        )),
        "{}",
        out.stderr
    );
    assert!(!tls.join("ca.key").exists(), "no new CA was made");
    assert_eq!(std::fs::read(tls.join("ca.crt")).unwrap(), ca);
}

#[test]
fn status_asks_the_server_and_shows_what_changed_since_login() {
    let mut b = Bastion::start();
    with_password(&b);
    let dev = Dev::new();
    dev.login(
        &b.postern,
        &["--ca-file", ca_file(&b).to_str().unwrap()],
        PASSWORD,
    )
    .ok();
    let s = dev.run(&b.postern, &["status"], "");
    assert!(s.ok().contains("roles:        dev"), "{s:?}");
    // A role granted since the login shows at once: the server answers, not the copy.
    b.postern
        .cli(&["admin", "role", "add", "ops", "--allow", "env=none"])
        .ok();
    b.postern
        .cli(&["admin", "user", "grant", "alice", "ops"])
        .ok();
    let s = dev.run(&b.postern, &["status"], "");
    assert!(s.ok().contains("roles:        dev, ops"), "{s:?}");
    // Locked: the server says so.
    b.postern.cli(&["admin", "user", "lock", "alice"]).ok();
    let s = dev.run(&b.postern, &["status"], "");
    assert!(s.fails(1).contains("user `alice` is locked"), "{s:?}");
    b.postern.cli(&["admin", "user", "unlock", "alice"]).ok();
    // Revoked: shown as revoked, although the local certificate is still in date.
    let serial = events(&b, "auth.login")[0]["details"]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    b.postern.cli(&["admin", "cert", "revoke", &serial]).ok();
    let s = dev.run(&b.postern, &["status"], "");
    assert!(
        s.fails(1).contains(&format!(
            "your postern credential (serial {serial}) was revoked"
        )),
        "{s:?}"
    );
    // The server down: the local copy, said to be one, and not a success.
    b.postern.stop();
    let s = dev.run(&b.postern, &["status"], "");
    assert_eq!(s.code, 2, "{s:?}");
    assert!(s.stdout.contains("(local copy)"), "{s:?}");
    assert!(
        s.stderr.contains("the server may have revoked since"),
        "{s:?}"
    );
}
