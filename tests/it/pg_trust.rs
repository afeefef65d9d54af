//! Whom postern trusts with a brokered PostgreSQL password, and which names it accepts:
//! a target it cannot verify never sees the password (cleartext or MD5 are refused,
//! SCRAM must be bound to the TLS channel), and database names PostgreSQL would read as
//! another name never get a token.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::free_port;
use crate::pg::PgBastion;

const FAKE_SECRET: &str = "brokered-secret-9f3a1c";

/// An impostor: accepts TLS with any certificate, asks for a password with `method`
/// (3 cleartext, 5 MD5, 10 SCRAM without channel binding), and keeps every byte it is
/// sent.
fn impostor(method: i32) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let port = free_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap(),
        )
        .unwrap();
        let config = Arc::new(config);
        for conn in listener.incoming() {
            let Ok(mut tcp) = conn else { return };
            tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut ssl = [0u8; 8];
            if tcp.read_exact(&mut ssl).is_err() || tcp.write_all(b"S").is_err() {
                continue;
            }
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut len = [0u8; 4];
            if tls.read_exact(&mut len).is_err() {
                continue;
            }
            let mut startup = vec![0u8; i32::from_be_bytes(len) as usize - 4];
            let _ = tls.read_exact(&mut startup);
            let extra: &[u8] = match method {
                5 => b"salt",
                10 => b"SCRAM-SHA-256\0\0",
                _ => b"",
            };
            let mut ask = vec![b'R'];
            ask.extend_from_slice(&(8 + extra.len() as i32).to_be_bytes());
            ask.extend_from_slice(&method.to_be_bytes());
            ask.extend_from_slice(extra);
            let _ = tls.write_all(&ask);
            let _ = tls.flush();
            let mut buf = [0u8; 4096];
            while let Ok(n) = tls.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    (port, got)
}

fn add_target(b: &PgBastion, name: &str, port: u16, mode: &str, password: &str) {
    let addr = format!("127.0.0.1:{port}");
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            name,
            "--postgres",
            &addr,
            "--tls-mode",
            mode,
            "--label",
            "env=test",
        ])
        .ok();
    b.postern
        .cli_stdin(
            &[
                "admin",
                "target",
                "set-credential",
                name,
                "--db-user",
                "app",
                "--password-stdin",
            ],
            &format!("{password}\n"),
        )
        .ok();
    b.dev.run(&b.postern, &["db", "login", name], "").ok();
}

#[test]
fn a_target_postern_cannot_verify_never_sees_the_password() {
    let b = PgBastion::start_tls();
    for (name, method, what) in [
        ("fake-clear", 3, "it asks for a cleartext password"),
        ("fake-md5", 5, "it asks for an MD5 password"),
        (
            "fake-scram",
            10,
            "postern logs in only with SCRAM channel binding",
        ),
    ] {
        let (port, got) = impostor(method);
        add_target(&b, name, port, "require", FAKE_SECRET);
        let out = b
            .psql_command(&format!("service={name}"))
            .args(["-c", "select 1"])
            .output()
            .unwrap();
        let out: crate::harness::Out = out.into();
        assert!(
            out.fails(2)
                .contains(&format!("postern did not log in to target `{name}`: "))
                && out.stderr.contains(what),
            "{}",
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(300));
        let seen = got.lock().unwrap().clone();
        assert!(
            !String::from_utf8_lossy(&seen).contains(FAKE_SECRET),
            "the impostor got the password"
        );
        assert!(
            !seen.contains(&b'p'),
            "the impostor got a password message: {seen:?}"
        );
    }

    // The real cluster, unverified (require): SCRAM bound to its TLS certificate.
    add_target(
        &b,
        "pg-require",
        b.pg.port,
        "require",
        crate::pg::APP_PASSWORD,
    );
    let out = b
        .psql_command("service=pg-require")
        .args(["-c", "select current_user"])
        .output()
        .unwrap();
    let out: crate::harness::Out = out.into();
    assert_eq!(out.ok(), "app\n");
}

#[test]
fn database_names_postgres_would_alias_get_no_token() {
    let b = PgBastion::start();
    for (db, why) in [
        ("", "invalid database name"),
        ("*", "invalid database name"),
        (&"f".repeat(64), "invalid database name"),
    ] {
        let out = b
            .dev
            .run(&b.postern, &["db", "login", "pg1", "--database", db], "");
        assert!(out.fails(1).contains(why), "{db:?}: {}", out.stderr);
    }
    let out = b
        .dev
        .run(&b.postern, &["db", "login", "pg1", "--db-user", ""], "");
    assert!(
        out.fails(1).contains("invalid database user name"),
        "{}",
        out.stderr
    );
}

#[test]
fn revoking_a_login_revokes_its_database_tokens_and_ends_their_sessions() {
    let b = PgBastion::start();
    let child = crate::pg::running(&b, "select pg_sleep(20)");
    let serial = b.postern.events("auth.login")[0]["details"]["serial"]
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
    assert!(
        out.stderr.contains(&format!(
            "the postern login this session's token was issued under (serial {serial}) was revoked"
        )),
        "{out:?}"
    );
    let out = b.psql(&["-c", "select 1"]);
    assert!(
        out.fails(2)
            .contains(&format!("(serial {serial}) was revoked; run postern login")),
        "{}",
        out.stderr
    );
}

#[test]
fn failed_database_logins_never_lock_the_password_login() {
    let b = PgBastion::start();
    let port = b.postern.pg.port();
    let wrong = |user: &str| -> crate::harness::Out {
        let mut c = std::process::Command::new("psql");
        c.arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname=pg1/features sslmode=require password=pgt_wrong connect_timeout=15"
        ))
        .args(["-X", "-c", "select 1"])
        .env("PGPASSFILE", "/nonexistent")
        .env_remove("PGSERVICE");
        c.output().unwrap().into()
    };
    for _ in 0..3 {
        assert!(
            wrong("alice")
                .fails(2)
                .contains("password authentication failed")
        );
    }
    // The database door now makes alice wait, from this address ...
    assert!(wrong("alice").fails(2).contains("too many failed logins"));
    // ... but the password login is another door.
    b.dev.login(&b.postern, &[], crate::login::PASSWORD).ok();
    // Names that are not users are no keys and no actors.
    wrong(&"x".repeat(5000));
    let failures = b.postern.events("auth.failure");
    let last = failures.last().unwrap();
    assert_eq!(last["actor"], "unknown", "{last}");
    assert!(
        last["details"]["user"].as_str().unwrap().chars().count() <= 65,
        "{last}"
    );
}

/// psycopg (libpq 17) connecting with `require_auth` and `channel_binding` as given.
fn connect_with(b: &PgBastion, auth: &str) -> crate::harness::Out {
    let script = format!(
        "import psycopg\nc = psycopg.connect(host='127.0.0.1', port={}, user='alice', password='{}', dbname='pg1/features', sslmode='verify-full', sslrootcert='{}', {auth})\nprint(c.execute('select 1').fetchone()[0])\n",
        b.postern.pg.port(),
        b.token(),
        b.dev.home().join(".postern/ca.crt").display()
    );
    crate::pg::python(&script)
}

#[test]
fn clients_prove_the_token_with_scram_bound_to_the_certificate_unless_configured() {
    let mut b = PgBastion::start();
    // By default the token never crosses the wire: SCRAM, bound to postern's certificate.
    let strict = "require_auth='scram-sha-256', channel_binding='require'";
    assert_eq!(connect_with(&b, strict).ok(), "1\n");
    let out = connect_with(&b, "require_auth='password'");
    assert!(
        out.fails(1)
            .contains("server requested SASL authentication"),
        "{}",
        out.stderr
    );

    // For clients without SCRAM, an admin can ask for the token inside TLS instead.
    b.postern.stop();
    let cfg = b
        .postern
        .write("postern.toml", "[postgres]\nclient_auth = \"password\"\n");
    let mut cmd = b.postern.serve_command();
    cmd.arg("--config").arg(cfg);
    b.postern.spawn(cmd);
    assert_eq!(connect_with(&b, "require_auth='password'").ok(), "1\n");
    assert!(connect_with(&b, strict).fails(1).contains("password"));
}
