//! postern on a PostgreSQL store (`[store] url`, `POSTERN_STORE_URL`), on a throwaway
//! cluster: sessions, recordings and the audit chain land there and not in the data dir,
//! concurrent writers keep one chain, and a store that cannot be reached is named clearly.
//! (`script/test` also runs a part of the whole suite on this backend.)

use std::process::Command;

use crate::harness::Out;
use crate::harness::postern::{BIN, Postern, create_store_database};
use crate::harness::postgres::Postgres;
use crate::harness::s3::S3;
use crate::ssh::{Bastion, ended_session};

pub fn base(pg: &Postgres) -> String {
    format!("postgres://postgres:{}@127.0.0.1:{}", pg.password, pg.port)
}

/// `psql -qAt` against the store database.
fn store_sql(url: &str, sql: &str) -> String {
    let out: Out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .unwrap()
        .into();
    out.ok().trim().to_string()
}

#[test]
fn an_ssh_session_its_recording_and_the_audit_chain_live_in_the_postgres_store() {
    let pg = Postgres::start();
    let url = create_store_database(&base(&pg));
    let b = Bastion::start_on(Postern::on_store(&url), &[], None);
    assert_eq!(
        b.ssh(&b.dest(), "echo on-the-pg-store").ok(),
        "on-the-pg-store\n"
    );
    let s = ended_session(&b);
    assert_eq!(s["exit_status"], 0, "{s}");
    let id = s["id"].as_str().unwrap();
    let replay = b.postern.cli(&["replay", id, "--max-idle", "0s"]);
    assert!(replay.ok().contains("on-the-pg-store"), "{}", replay.stdout);
    let verified = b.postern.cli(&["audit", "verify"]);
    assert!(verified.ok().contains("OK"), "{}", verified.stdout);
    // The rows are in PostgreSQL, and the data dir holds no SQLite store.
    assert_eq!(
        store_sql(
            &url,
            &format!("SELECT count(*) FROM sessions WHERE id = '{id}'")
        ),
        "1"
    );
    assert_eq!(
        store_sql(&url, "SELECT count(*) FROM users WHERE name = 'alice'"),
        "1"
    );
    let events: i64 = store_sql(&url, "SELECT count(*) FROM audit_events")
        .parse()
        .unwrap();
    assert!(events > 5, "{events} audit events in the store");
    assert!(
        !b.postern.data_dir().join("postern.db").exists(),
        "a SQLite store was created beside the PostgreSQL one"
    );
    // serve listens for session commands (kills reach it at once, not at its next poll).
    assert_eq!(
        store_sql(
            &url,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"postern_commands\"'"
        ),
        "1"
    );
}

/// A store reached over TLS with `sslmode=verify-full`: the connections are encrypted and
/// the server's certificate is checked against `sslrootcert`; a certificate from another
/// CA is refused, saying so.
#[test]
fn a_store_over_tls_is_verified_against_its_ca() {
    let pg = Postgres::start_tls();
    let ca = pg.ca_file.clone().unwrap();
    let plain = create_store_database(&base(&pg));
    let url = format!("{plain}?sslmode=verify-full&sslrootcert={}", ca.display());
    let b = Bastion::start_on(Postern::on_store(&url), &[], None);
    assert_eq!(b.ssh(&b.dest(), "echo over-tls").ok(), "over-tls\n");
    let id = ended_session(&b)["id"].as_str().unwrap().to_string();
    assert_eq!(
        store_sql(
            &url,
            &format!("SELECT count(*) FROM sessions WHERE id = '{id}'")
        ),
        "1"
    );
    // Every connection postern holds to its store is encrypted.
    assert_eq!(
        store_sql(
            &url,
            "SELECT count(*) > 0 AND bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
        ),
        "t"
    );
    // Another CA's view of the same server: refused, and said why.
    let other = tempfile::tempdir().unwrap();
    crate::harness::postgres::make_certificates(other.path());
    let wrong = format!(
        "{plain}?sslmode=verify-full&sslrootcert={}",
        other.path().join("ca.crt").display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let out: Out = Command::new(BIN)
        .args(["admin", "user", "list", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("POSTERN_STORE_URL", &wrong)
        .env_remove("POSTERN_CONFIG")
        .output()
        .unwrap()
        .into();
    let err = out.fails(2);
    assert!(err.contains("cannot open the store at"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains(&pg.password), "{err}");
}

/// Two processes appending to the chain at once (each its own group-commit writer) leave
/// one chain: contiguous sequence numbers, every link intact.
#[test]
fn concurrent_writers_on_the_postgres_store_keep_one_chain() {
    let pg = Postgres::start();
    let url = create_store_database(&base(&pg));
    let p = Postern::on_store(&url).start();
    p.cli(&[
        "admin", "role", "add", "dev", "--allow", "env=test", "--logins", "x",
    ])
    .ok();
    let dir = p.data_dir();
    std::thread::scope(|s| {
        for w in 0..3 {
            let (dir, url) = (&dir, &url);
            s.spawn(move || {
                for i in 0..8 {
                    let out: Out = Command::new(BIN)
                        .args([
                            "admin",
                            "user",
                            "add",
                            &format!("u{w}x{i}"),
                            "--role",
                            "dev",
                        ])
                        .arg("--data-dir")
                        .arg(dir)
                        .env("POSTERN_STORE_URL", url)
                        .env_remove("POSTERN_CONFIG")
                        .output()
                        .unwrap()
                        .into();
                    out.ok();
                }
            });
        }
    });
    let (n, lo, hi) = {
        let row = store_sql(
            &url,
            "SELECT count(*), min(seq), max(seq) FROM audit_events",
        );
        let v: Vec<i64> = row.split('|').map(|x| x.parse().unwrap()).collect();
        (v[0], v[1], v[2])
    };
    assert_eq!((lo, hi), (1, n), "sequence numbers have gaps");
    assert_eq!(
        store_sql(&url, "SELECT count(*) FROM users WHERE name LIKE 'u%x%'"),
        "24"
    );
    let verified = p.cli(&["audit", "verify"]);
    assert!(verified.ok().contains("OK"), "{}", verified.stdout);
}

/// A store that is down, or refuses the password, is named (without the password) with
/// what to check; nothing falls back to a local store.
#[test]
fn an_unreachable_postgres_store_is_a_clear_error_without_the_password() {
    let pg = Postgres::start();
    let closed = crate::harness::free_port();
    let cases = [
        (
            format!("postgres://postgres:sekrit-word@127.0.0.1:{closed}/nothing"),
            "check that the PostgreSQL server is up",
        ),
        (
            format!(
                "postgres://postgres:sekrit-word@127.0.0.1:{}/postgres",
                pg.port
            ),
            "password authentication failed",
        ),
        (
            "mysql://root:sekrit-word@127.0.0.1/x".to_string(),
            "not a postgres:// URL",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    for (url, says) in cases {
        let out: Out = Command::new(BIN)
            .args(["admin", "user", "list", "--data-dir"])
            .arg(&dir)
            .env("POSTERN_STORE_URL", &url)
            .env_remove("POSTERN_CONFIG")
            .output()
            .unwrap()
            .into();
        let err = out.fails(2);
        assert!(err.contains("cannot open the store at"), "{url}: {err}");
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains("sekrit-word"), "{url}: {err}");
        assert!(!dir.join("postern.db").exists());
    }
}

/// Two replicas with data dirs of their own on one store present the same host key, sign
/// with the same CAs and audit key and serve TLS from the same CA; the store holds them
/// sealed, never in clear; a replica with another master key is refused, saying why.
#[test]
fn replicas_on_one_store_share_their_keys_sealed_in_the_store() {
    let pg = Postgres::start();
    let url = create_store_database(&base(&pg));
    let first = Postern::on_store(&url).start();
    let master = std::fs::read_to_string(first.data_dir().join("keys/master.key")).unwrap();
    // The second brings the master key by environment, as a deployment would.
    let second = Postern::on_store(&url).start_with(|cmd| {
        cmd.env("POSTERN_MASTER_KEY", master.trim());
    });
    for f in [
        "keys/ssh_host_ed25519_key.pub",
        "keys/user_ca.pub",
        "keys/target_ca.pub",
        "keys/audit_ed25519.pub",
        "tls/ca.crt",
    ] {
        let a = std::fs::read_to_string(first.data_dir().join(f)).unwrap();
        let b = std::fs::read_to_string(second.data_dir().join(f)).unwrap();
        assert_eq!(a, b, "{f} differs between the replicas");
    }
    assert_eq!(
        first.cli(&["admin", "target-ca"]).ok(),
        second.cli(&["admin", "target-ca"]).ok()
    );
    // Sealed: no private key's text is in the store.
    let host_key =
        std::fs::read_to_string(first.data_dir().join("keys/ssh_host_ed25519_key")).unwrap();
    let body = host_key.lines().nth(1).unwrap();
    assert_eq!(
        store_sql(
            &url,
            &format!("SELECT count(*) FROM shared_keys WHERE sealed LIKE '%{body}%'")
        ),
        "0"
    );
    assert_eq!(store_sql(&url, "SELECT count(*) FROM shared_keys"), "10");
    // A rotation on one replica reaches the other through the store (at its next opening
    // of the store), and so does its retirement.
    first.cli(&["admin", "rotate-keys", "target-ca"]).ok();
    second.cli(&["admin", "user", "list"]).ok();
    assert_eq!(
        first.cli(&["admin", "target-ca"]).ok(),
        second.cli(&["admin", "target-ca"]).ok()
    );
    first
        .cli(&["admin", "rotate-keys", "target-ca", "--activate"])
        .ok();
    first
        .cli(&["admin", "rotate-keys", "target-ca", "--retire"])
        .ok();
    second.cli(&["admin", "user", "list"]).ok();
    let now = second.cli(&["admin", "target-ca"]);
    assert_eq!(first.cli(&["admin", "target-ca"]).ok(), now.ok());
    assert_eq!(
        now.stdout.lines().filter(|l| l.starts_with("ssh-")).count(),
        1
    );
    assert!(!second.data_dir().join("keys/target_ca.next").exists());
    assert_eq!(store_sql(&url, "SELECT count(*) FROM shared_keys"), "10");
    // The TLS CA and the audit key likewise: the second replica's server certificate
    // comes from the new CA, and it signs with the new audit key.
    first.cli(&["admin", "rotate-keys", "tls-ca"]).ok();
    second.cli(&["admin", "user", "list"]).ok();
    let bundle = second.cli(&["admin", "tls-ca"]);
    assert_eq!(bundle.ok().matches("BEGIN CERTIFICATE").count(), 2);
    first
        .cli(&["admin", "rotate-keys", "tls-ca", "--activate"])
        .ok();
    first.cli(&["admin", "rotate-keys", "audit-key"]).ok();
    second.cli(&["admin", "user", "list"]).ok();
    for f in [
        "tls/ca.crt",
        "tls/ca.previous.crt",
        "keys/audit_ed25519.pub",
    ] {
        assert_eq!(
            std::fs::read(first.data_dir().join(f)).unwrap(),
            std::fs::read(second.data_dir().join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(!second.data_dir().join("tls/server.crt").exists());
    let out = second.cli(&["audit", "verify"]);
    assert!(out.ok().starts_with("OK: "), "{out:?}");
    // A third data dir with a master key of its own cannot open them.
    let third = Postern::on_store(&url);
    let out = third.cli(&["admin", "user", "list"]);
    let err = out.fails(2);
    assert!(
        err.contains("does not open with this data dir's master key"),
        "{err}"
    );
    assert!(err.contains("POSTERN_MASTER_KEY"), "{err}");
}

/// `postern store migrate` copies an embedded store (users, keys, targets, a recorded
/// session, the chain with its checkpoints) into an empty PostgreSQL database, verifies
/// it there, refuses to run twice or under a running `serve`, and `serve` then carries on
/// from the new store.
#[test]
fn store_migrate_moves_an_embedded_store_into_postgres() {
    let pg = Postgres::start();
    let url = create_store_database(&base(&pg));
    let mut b = Bastion::start();
    assert_eq!(
        b.ssh(&b.dest(), "echo before-the-move").ok(),
        "before-the-move\n"
    );
    let id = ended_session(&b)["id"].as_str().unwrap().to_string();
    let running = b.postern.cli(&["store", "migrate", "--to", &url]);
    assert!(
        running.fails(2).contains("stop every replica first"),
        "{}",
        running.stderr
    );
    assert_eq!(b.postern.stop().code(), Some(0));

    // The recordings move to a bucket on the way.
    let s3 = S3::start();
    s3.create_bucket("moved");
    b.postern
        .env
        .extend(s3.env().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = b.postern.write("postern.toml", &s3.config("moved", "r/"));
    let out = b
        .postern
        .cli_config(&["store", "migrate", "--to", &url], &config);
    let text = out.ok();
    assert!(text.contains("audit_events"), "{text}");
    assert!(
        text.contains("copied 1 recording files to s3://moved/r/"),
        "{text}"
    );
    assert!(
        s3.keys("moved", "r/")
            .iter()
            .any(|k| k.contains(&id) && k.ends_with("/00000000")),
        "{:?}",
        s3.keys("moved", "r/")
    );
    assert!(
        text.contains("verified on postgres://postgres:***@"),
        "{text}"
    );
    assert!(!text.contains(&pg.password), "{text}");
    let again = b.postern.cli(&["store", "migrate", "--to", &url]);
    assert!(again.fails(2).contains("is not empty"), "{}", again.stderr);

    // serve on the new store, from the same data dir.
    b.postern.store_url = Some(url.clone());
    let mut cmd = b.postern.serve_command();
    cmd.arg("--config").arg(&config);
    b.postern.spawn(cmd);
    // The data dir's copy is gone: replay reads the bucket.
    std::fs::remove_dir_all(b.postern.data_dir().join("recordings")).unwrap();
    let replay = b
        .postern
        .cli_config(&["replay", &id, "--max-idle", "0s"], &config);
    assert!(replay.ok().contains("before-the-move"), "{}", replay.stdout);
    assert_eq!(
        b.ssh(&b.dest(), "echo after-the-move").ok(),
        "after-the-move\n"
    );
    let verified = b.postern.cli_config(&["audit", "verify"], &config);
    assert!(verified.ok().contains("OK"), "{}", verified.stdout);
    assert_eq!(
        store_sql(
            &url,
            &format!("SELECT count(*) FROM sessions WHERE id = '{id}'")
        ),
        "1"
    );
}

/// The PostgreSQL store goes away: new sessions are refused (fail closed) and `/v1/ready`
/// says 503 while a live session runs on; when the store is back, new sessions work again
/// without a restart and the live session's end is recorded.
#[test]
fn a_store_outage_fails_new_sessions_closed_and_heals_without_a_restart() {
    let pg = Postgres::start();
    let url = create_store_database(&base(&pg));
    let b = Bastion::start_on(Postern::on_store(&url), &[], None);
    let live = b
        .ssh_command("ssh")
        .args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("sleep 8; echo lived-through-it")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while store_sql(&url, "SELECT count(*) FROM sessions WHERE ended_ms IS NULL") != "1" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "no live session"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    pg.stop();
    let refused = b.ssh_as_a_person(&b.key, "echo should-not-run");
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(!refused.stdout.contains("should-not-run"), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("postern cannot read its store right now"),
        "{refused:?}"
    );
    assert_eq!(ready(&b.postern), "503");
    pg.start_again();
    // Healed without a restart: new sessions run again.
    let start = std::time::Instant::now();
    loop {
        let out = b.ssh(&b.dest(), "echo back-again");
        if out.code == 0 {
            assert_eq!(out.stdout, "back-again\n");
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "not back: {out:?}; log:\n{}",
            b.postern.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(ready(&b.postern), "200");
    let out: Out = live.wait_with_output().unwrap().into();
    assert_eq!(out.ok(), "lived-through-it\n");
    let start = std::time::Instant::now();
    while store_sql(&url, "SELECT count(*) FROM sessions WHERE ended_ms IS NULL") != "0" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "the live session's end was not recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The HTTP status of `GET /v1/ready`.
fn ready(p: &Postern) -> String {
    let script = format!(
        "import ssl, urllib.request, urllib.error\nctx = ssl._create_unverified_context()\ntry:\n    print(urllib.request.urlopen('https://127.0.0.1:{}/v1/ready', context=ctx, timeout=10).status)\nexcept urllib.error.HTTPError as e:\n    print(e.code)\n",
        p.api.port()
    );
    let out: Out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap()
        .into();
    out.ok().trim().to_string()
}
