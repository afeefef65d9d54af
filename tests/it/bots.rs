//! Machine identities: a bot trades its join token for the same short-lived credentials a
//! person gets (capped), uses them with the stock `ssh` and `psql`, acts as `bot:NAME`,
//! cannot request access, and loses everything when its token is rotated or revoked.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::Out;
use crate::harness::postern::Postern;
use crate::login::Dev;
use crate::pg::PgBastion;
use crate::ssh::{Bastion, wait_child};

/// The join token `admin bot add` or `rotate` printed.
fn token_of(out: &Out) -> String {
    out.ok()
        .lines()
        .find(|l| l.starts_with("pbt_"))
        .unwrap_or_else(|| panic!("no token in {}", out.stdout))
        .to_string()
}

fn bot_login(p: &Postern, dev: &Dev, bot: &str, token: &str) -> Out {
    let server = format!("https://127.0.0.1:{}", p.api.port());
    let ca = p.write("tls-ca.pem", p.cli(&["admin", "tls-ca"]).ok());
    dev.run(
        p,
        &[
            "login",
            "--server",
            &server,
            "--ca-file",
            ca.to_str().unwrap(),
            "--bot",
            bot,
            "--token-stdin",
        ],
        &format!("{token}\n"),
    )
}

fn ssh_as(b: &Bastion, home: &Path, command: &str) -> Command {
    let mut c = b.ssh_command_with_key("ssh", &home.join(".postern/id_ed25519"));
    c.args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg(command)
        .stdin(Stdio::null());
    c
}

#[test]
fn a_bot_logs_in_with_its_join_token_reaches_ssh_and_loses_it_on_rotate_and_revoke() {
    let b = Bastion::start();
    let p = &b.postern;
    let added = p.cli(&["admin", "bot", "add", "ci", "--role", "dev"]);
    let token = token_of(&added);
    assert!(p.files_holding(&token).is_empty(), "only a hash is kept");
    let refused = p.cli_stdin(
        &["admin", "user", "set-password", "ci", "--password-stdin"],
        "secret\n",
    );
    assert!(refused.fails(2).contains("is a bot"), "{}", refused.stderr);

    let dev = Dev::new();
    let wrong = bot_login(p, &dev, "ci", "pbt_not-the-token");
    assert!(
        wrong.fails(1).contains("wrong bot name or join token"),
        "{}",
        wrong.stderr
    );
    let out = bot_login(p, &dev, "ci", &token);
    // The role gives 8h; a bot's credentials are capped at 15 minutes.
    assert!(out.ok().contains("(15m)"), "{}", out.stdout);
    let out: Out = ssh_as(&b, dev.home(), "echo bot-was-here")
        .output()
        .unwrap()
        .into();
    assert_eq!(out.ok().trim(), "bot-was-here");
    let start = p.events("session.start");
    assert_eq!(start.last().unwrap()["actor"], "bot:ci");
    assert_eq!(
        p.events("auth.login").last().unwrap()["details"]["method"],
        "join_token"
    );

    // Bots do not ask for access.
    let ask = dev.run(
        p,
        &[
            "request", "create", "--role", "dev", "--for", "1h", "--reason", "x",
        ],
        "",
    );
    assert!(
        ask.fails(1).contains("bots cannot request access"),
        "{}",
        ask.stderr
    );

    // Rotated: the old token stops working, the new one works.
    let new_token = token_of(&p.cli(&["admin", "bot", "rotate", "ci"]));
    assert_ne!(new_token, token);
    assert_eq!(bot_login(p, &Dev::new(), "ci", &token).code, 1);
    bot_login(p, &dev, "ci", &new_token).ok();

    // Revoked: a live session ends, new ones and logins are refused.
    let child = crate::ssh::sleeping_session(&b, &dev.home().join(".postern/id_ed25519"), 2);
    p.cli(&["admin", "bot", "revoke", "ci"]).ok();
    let out = wait_child(child);
    assert!(!out.stdout.contains("never"));
    assert!(
        out.stderr
            .contains("access was withdrawn: the user is locked"),
        "{out:?}"
    );
    let out: Out = ssh_as(&b, dev.home(), "true").output().unwrap().into();
    assert_ne!(out.code, 0);
    assert_eq!(bot_login(p, &Dev::new(), "ci", &new_token).code, 1);
    let list = p.cli(&["admin", "bot", "list"]);
    assert!(list.ok().contains("locked"), "{}", list.stdout);
    for kind in ["bot.token_issued", "bot.token_rotated", "bot.token_revoked"] {
        assert_eq!(p.events(kind).len(), 1, "{kind}");
    }
}

#[test]
fn a_bot_gets_database_tokens_and_a_revoked_bot_is_refused_by_postgres() {
    let b = PgBastion::start();
    let p = &b.postern;
    let token = token_of(&p.cli(&[
        "admin",
        "bot",
        "add",
        "etl",
        "--role",
        "dev",
        "--credential-ttl",
        "5m",
    ]));
    let dev = Dev::new();
    assert!(bot_login(p, &dev, "etl", &token).ok().contains("(5m)"));
    let issued = dev.run(p, &["db", "login", "pg1"], "");
    assert!(issued.ok().contains("valid until"), "{}", issued.stdout);
    let psql = |sql: &str| -> Out {
        let home = dev.home();
        Command::new("psql")
            .args(["service=pg1", "-X", "-A", "-t", "-c", sql])
            .env("HOME", home)
            .env("PGSERVICEFILE", home.join(".pg_service.conf"))
            .env("PGPASSFILE", home.join(".pgpass"))
            .env("PGCONNECT_TIMEOUT", "15")
            .env_remove("PGSERVICE")
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
            .into()
    };
    assert_eq!(psql("select current_user").ok().trim(), "app");
    let started = p.events("session.start");
    assert_eq!(started.last().unwrap()["actor"], "bot:etl");
    assert_eq!(
        p.events("credential.db_token").last().unwrap()["actor"],
        "bot:etl"
    );

    p.cli(&["admin", "bot", "revoke", "etl"]).ok();
    let out = psql("select 1");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("the user is locked"), "{}", out.stderr);
}
