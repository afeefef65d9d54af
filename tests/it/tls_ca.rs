//! Rotating postern's TLS CA in three steps, with libpq (psql, OpenSSL) and postern's own
//! client (rustls): staged, the next CA reaches clients in the bundle; activated, the
//! server certificate comes from it and clients holding only the old CA are refused;
//! retired, the old CA leaves the bundle.

use std::process::Stdio;

use crate::harness::Out;
use crate::login::{Dev, PASSWORD};
use crate::pg::PgBastion;

fn certificates(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----")
        .filter(|c| c.contains("BEGIN CERTIFICATE"))
        .map(|c| c.trim().to_string())
        .collect()
}

/// `select 1` through postern with libpq trusting only `root`.
fn psql_trusting(b: &PgBastion, root: &std::path::Path) -> Out {
    b.psql_command(&format!("service=pg1 sslrootcert={}", root.display()))
        .args(["-c", "select 1"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

#[test]
fn the_tls_ca_is_staged_activated_and_retired_without_locking_clients_out() {
    let mut b = PgBastion::start();
    assert_eq!(b.psql(&["-c", "select 1"]).ok(), "1\n");
    let old = b.postern.cli(&["admin", "tls-ca"]).ok().to_string();
    assert_eq!(certificates(&old).len(), 1, "{old}");
    let old_file = b.postern.write("old-ca.pem", &old);

    let staged = b.postern.cli(&["admin", "rotate-keys", "tls-ca"]);
    assert!(staged.ok().contains("is staged"), "{}", staged.stdout);
    let again = b.postern.cli(&["admin", "rotate-keys", "tls-ca"]);
    assert!(again.fails(2).contains("--activate"), "{}", again.stderr);
    let bundle = b.postern.cli(&["admin", "tls-ca"]).ok().to_string();
    let certs = certificates(&bundle);
    assert_eq!(certs.len(), 2, "{bundle}");
    assert_eq!(certs[0], certificates(&old)[0]);
    let next = certs[1].clone();

    // From its next start serve hands the bundle out at login: a developer who trusted
    // the old CA (--ca-file) learns the next one by logging in again.
    b.postern.restart();
    b.refresh();
    let held = std::fs::read_to_string(b.dev.file("ca.crt")).unwrap();
    assert_eq!(certificates(&held), certs, "{held}");
    assert_eq!(psql_trusting(&b, &old_file).ok(), "1\n");

    b.postern
        .cli(&["admin", "rotate-keys", "tls-ca", "--activate"])
        .ok();
    b.postern.restart();
    let reissued = b.postern.events("tls.certificate_reissued");
    assert_eq!(
        reissued.last().unwrap()["details"]["reason"],
        "postern's TLS CA was rotated",
        "{reissued:?}"
    );
    // The developer's bundle holds both CAs: libpq and postern's client pick the new one.
    assert_eq!(b.psql(&["-c", "select 1"]).ok(), "1\n");
    b.refresh();
    assert_eq!(b.psql(&["-c", "select 2"]).ok(), "2\n");
    // A client that trusts only the old CA is refused, by libpq and by postern's client.
    let out = psql_trusting(&b, &old_file);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("certificate verify failed"),
        "{}",
        out.stderr
    );
    let stale = Dev::new();
    let out = stale.login(
        &b.postern,
        &["--ca-file", old_file.to_str().unwrap()],
        PASSWORD,
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("certificate"), "{}", out.stderr);
    let fresh = Dev::new();
    let new_file = b.postern.write("new-ca.pem", &format!("{next}\n"));
    fresh
        .login(
            &b.postern,
            &["--ca-file", new_file.to_str().unwrap()],
            PASSWORD,
        )
        .ok();

    b.postern
        .cli(&["admin", "rotate-keys", "tls-ca", "--retire"])
        .ok();
    let left = b.postern.cli(&["admin", "tls-ca"]).ok().to_string();
    assert_eq!(certificates(&left), std::slice::from_ref(&next), "{left}");
    // Handed out from the next start; a developer logging in again drops the old CA.
    b.postern.restart();
    b.refresh();
    let held = std::fs::read_to_string(b.dev.file("ca.crt")).unwrap();
    assert_eq!(certificates(&held), [next], "{held}");
    assert_eq!(b.psql(&["-c", "select 3"]).ok(), "3\n");
    assert_eq!(
        b.postern.rotation_steps(),
        ["tls_ca:stage", "tls_ca:activate", "tls_ca:retire"]
    );
}
