//! The harness's own helpers work: `ssh` reaches the throwaway sshd with host key
//! verification, and `psql` reaches the throwaway cluster with a SCRAM password.

use crate::harness::postgres::Postgres;
use crate::harness::sshd::Sshd;
use crate::harness::whoami;

#[test]
fn ssh_reaches_throwaway_sshd_and_keeps_exit_status() {
    let sshd = Sshd::start();
    assert!(sshd.host_key.starts_with("ssh-ed25519 AAAA"));
    let me = whoami();
    let out = sshd.ssh(&me, "echo hello from sshd; echo to-stderr >&2");
    assert_eq!(out.ok(), "hello from sshd\n", "sshd log:\n{}", sshd.log());
    assert_eq!(out.stderr.trim(), "to-stderr");
    assert_eq!(sshd.ssh(&me, "exit 3").code, 3);
}

#[test]
fn sshd_without_authorized_keys_refuses_keys() {
    let sshd = Sshd::start_with(crate::harness::sshd::Options {
        authorized_key: false,
        trusted_ca: None,
        config: "",
    });
    // No key was made for the client: ssh has nothing to offer and is refused.
    let out = sshd.ssh(&whoami(), "true");
    assert_eq!(out.code, 255);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
}

#[test]
fn psql_reaches_throwaway_postgres_with_scram() {
    let pg = Postgres::start();
    let out = pg.psql("select 40 + 2");
    assert_eq!(out.ok().trim(), "42", "postgres log:\n{}", pg.log());
    let out = pg.psql("show password_encryption");
    assert_eq!(out.ok().trim(), "scram-sha-256");
    // The stored verifier is SCRAM, and a wrong password is refused.
    let out = pg.psql(
        "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'postgres'",
    );
    assert_eq!(out.ok().trim(), "t");
    let out = pg.psql_as("postgres", "wrong", "select 1");
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("password authentication failed"),
        "{}",
        out.stderr
    );
}
