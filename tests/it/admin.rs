//! `postern admin …`: users, keys, roles, targets; each change audited; bad input refused.

use crate::apply::new_key;
use crate::harness::postern::Postern;

#[test]
fn users_roles_targets_round_trip() {
    let p = Postern::new();
    p.cli(&[
        "admin",
        "role",
        "add",
        "dev",
        "--allow",
        "env=dev",
        "--deny",
        "pii",
        "--logins",
        "ubuntu,root",
        "--idle-timeout",
        "15m",
    ])
    .ok();
    let out = p.cli(&["admin", "user", "add", "alice", "--role", "dev"]);
    assert_eq!(out.ok().trim(), "+ user alice");

    let key = new_key(&p, "alice_key");
    let keyfile = p.write("alice.pub", &key);
    let out = p.cli(&[
        "admin",
        "user",
        "add-key",
        "alice",
        keyfile.to_str().unwrap(),
    ]);
    assert!(out.ok().contains("~ user alice: keys"), "{}", out.stdout);
    // The same key for another user is refused: a key identifies exactly one user.
    p.cli(&["admin", "user", "add", "bob"]).ok();
    let out = p.cli_stdin(&["admin", "user", "add-key", "bob", "-"], &key);
    assert!(
        out.fails(2).contains("already belongs to user `alice`"),
        "{}",
        out.stderr
    );

    let show: serde_json::Value =
        serde_json::from_str(p.cli(&["admin", "user", "show", "alice", "--json"]).ok()).unwrap();
    assert_eq!(show["status"], "active");
    assert!(
        show["keys"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );
    assert_eq!(show["keys"][0]["comment"], "alice_key");

    let out = p.cli(&[
        "admin",
        "role",
        "set",
        "dev",
        "--max-session-ttl",
        "2h",
        "--port-forwarding",
        "true",
    ]);
    let text = out.ok();
    assert!(
        text.contains("max_session_ttl 8h → 2h") && text.contains("port_forwarding false → true"),
        "{text}"
    );
    let role: serde_json::Value =
        serde_json::from_str(p.cli(&["admin", "role", "show", "dev", "--json"]).ok()).unwrap();
    assert_eq!(role["idle_timeout"], "15m");
    assert_eq!(
        role["allow"][0]["logins"],
        serde_json::json!(["ubuntu", "root"])
    );
    assert_eq!(role["deny"][0]["targets"], "pii");

    let host = new_key(&p, "host");
    p.cli(&[
        "admin",
        "target",
        "add",
        "gpu-1",
        "--ssh",
        "10.0.0.5:22",
        "--host-key",
        &host,
        "--label",
        "env=dev",
        "--label",
        "gpu=a100",
    ])
    .ok();
    p.cli(&[
        "admin",
        "target",
        "add",
        "feats",
        "--postgres",
        "db.internal:5432",
        "--tls-mode",
        "verify-full",
    ])
    .ok();
    let list = p.cli(&["admin", "target", "list"]);
    let text = list.ok();
    assert!(
        text.contains("gpu-1") && text.contains("env=dev,gpu=a100") && text.contains("feats"),
        "{text}"
    );
    let t: serde_json::Value =
        serde_json::from_str(p.cli(&["admin", "target", "show", "gpu-1", "--json"]).ok()).unwrap();
    assert_eq!(
        t["host_key"].as_str().unwrap(),
        host.rsplit_once(' ').unwrap().0,
        "pinned key without comment"
    );

    // A role in use cannot be removed; after revoking it can.
    let out = p.cli(&["admin", "role", "rm", "dev"]);
    assert!(
        out.fails(2)
            .contains("role `dev` is still granted to alice")
    );
    p.cli(&["admin", "user", "revoke", "alice", "dev"]).ok();
    assert_eq!(
        p.cli(&["admin", "role", "rm", "dev"]).ok().trim(),
        "- role dev"
    );
    assert_eq!(
        p.cli(&["admin", "user", "rm", "alice"]).ok().trim(),
        "- user alice"
    );

    // Every change above is in the audit log, in order, by the OS user.
    let events: serde_json::Value =
        serde_json::from_str(p.cli(&["audit", "search", "--json"]).ok()).unwrap();
    let types: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "role.create",
            "user.create",
            "user.update",
            "user.create",
            "role.update",
            "target.create",
            "target.create",
            "user.update",
            "role.delete",
            "user.delete"
        ]
    );
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

#[test]
fn targets_are_edited_in_place() {
    let p = Postern::new();
    p.cli(&[
        "admin",
        "target",
        "add",
        "gpu",
        "--ssh",
        "h:22",
        "--host-key",
        KEY,
        "--label",
        "env=dev",
        "--label",
        "team=a",
    ])
    .ok();
    p.cli(&["admin", "target", "add", "db", "--postgres", "h:5432"])
        .ok();
    let out = p.cli(&[
        "admin",
        "target",
        "set",
        "gpu",
        "--ssh",
        "h2:2222",
        "--label",
        "env=prod",
        "--unlabel",
        "team",
    ]);
    assert!(out.ok().contains("gpu"), "{out:?}");
    let t: serde_json::Value =
        serde_json::from_str(p.cli(&["admin", "target", "show", "gpu", "--json"]).ok()).unwrap();
    assert_eq!(t["address"], "h2:2222");
    assert_eq!(t["labels"], serde_json::json!({ "env": "prod" }));
    assert_eq!(t["host_key"], KEY);
    p.cli(&["admin", "target", "set", "db", "--tls-mode", "require"])
        .ok();
    let t: serde_json::Value =
        serde_json::from_str(p.cli(&["admin", "target", "show", "db", "--json"]).ok()).unwrap();
    assert_eq!(t["tls_mode"], "require");
    // Each change is audited like any policy change.
    assert_eq!(p.events("target.update").len(), 2);
    for (args, expect) in [
        (
            vec!["gpu", "--postgres", "h:5432"],
            "`gpu` is an SSH target; --postgres applies to PostgreSQL targets",
        ),
        (
            vec!["gpu", "--tls-mode", "disable"],
            "--tls-mode applies to PostgreSQL targets",
        ),
        (
            vec!["db", "--host-key", KEY],
            "--host-key applies to SSH targets",
        ),
        (vec!["gpu", "--unlabel", "nope"], "has no label `nope`"),
        (vec!["gpu"], "nothing to change"),
        (vec!["nope", "--label", "a=b"], "target `nope` not found"),
        (vec!["gpu", "--ssh", "nohost"], "invalid address `nohost`"),
        (
            vec!["gpu", "--label", "env==prod"],
            "invalid label `env==prod`",
        ),
    ] {
        let mut a = vec!["admin", "target", "set"];
        a.extend(args.iter());
        let out = p.cli(&a);
        assert_ne!(out.code, 0, "{a:?}");
        assert!(
            out.stderr.contains(expect),
            "{a:?}: want {expect:?} in {}",
            out.stderr
        );
    }
    assert_eq!(
        p.events("target.update").len(),
        2,
        "refused edits change nothing"
    );
}

#[test]
fn role_rules_are_added_and_removed_in_place() {
    let p = Postern::new();
    p.cli(&[
        "admin", "role", "add", "ml", "--allow", "env=dev", "--logins", "ubuntu",
    ])
    .ok();
    p.cli(&["admin", "user", "add", "alice", "--role", "ml"])
        .ok();
    for (name, env) in [("dev-1", "env=dev"), ("prod-1", "env=prod")] {
        p.cli(&[
            "admin",
            "target",
            "add",
            name,
            "--ssh",
            "h:22",
            "--host-key",
            KEY,
            "--label",
            env,
        ])
        .ok();
    }
    let check = |target: &str| {
        p.cli(&[
            "access", "check", "--user", "alice", "--target", target, "--login", "ubuntu",
        ])
        .code
    };
    assert_eq!((check("dev-1"), check("prod-1")), (0, 1));
    // A second allow rule, then a deny rule that beats it.
    p.cli(&[
        "admin",
        "role",
        "set",
        "ml",
        "--add-allow",
        "env=prod",
        "--logins",
        "ubuntu",
    ])
    .ok();
    assert_eq!((check("dev-1"), check("prod-1")), (0, 0));
    p.cli(&["admin", "role", "set", "ml", "--add-deny", "env=prod"])
        .ok();
    assert_eq!(check("prod-1"), 1);
    let show = p.cli(&["admin", "role", "show", "ml"]);
    assert!(
        show.ok().contains("allow #2  targets [env=prod]"),
        "{show:?}"
    );
    assert!(
        show.ok().contains("deny #1  targets [env=prod]"),
        "{show:?}"
    );
    // Rules go by the names role show gives them.
    p.cli(&[
        "admin",
        "role",
        "set",
        "ml",
        "--remove-rule",
        "deny#1",
        "--remove-rule",
        "allow#1",
    ])
    .ok();
    assert_eq!((check("dev-1"), check("prod-1")), (1, 0));
    for (args, expect) in [
        (vec!["--remove-rule", "3"], "write allow#N or deny#N"),
        (
            vec!["--remove-rule", "deny#1"],
            "has no deny#1: it has 0 deny rules",
        ),
        (
            vec!["--remove-rule", "allow#1"],
            "would grant nothing: no allow rule",
        ),
        (
            vec!["--add-allow", "env==dev", "--logins", "x"],
            "`==` in `env==dev` is not an operator",
        ),
        (vec!["--logins", "x"], "--add-allow"),
    ] {
        let mut a = vec!["admin", "role", "set", "ml"];
        a.extend(args.iter());
        let out = p.cli(&a);
        assert_ne!(out.code, 0, "{a:?}");
        assert!(
            out.stderr.contains(expect),
            "{a:?}: want {expect:?} in {}",
            out.stderr
        );
    }
    assert_eq!(p.events("role.update").len(), 3);
}

#[test]
fn bad_input_gets_one_line_errors() {
    let p = Postern::new();
    let check = |args: &[&str], expect: &str| {
        let out = p.cli(args);
        assert_ne!(out.code, 0, "{args:?} should fail");
        assert!(
            out.stderr.contains(expect),
            "{args:?}: want {expect:?} in {}",
            out.stderr
        );
    };
    check(
        &["admin", "user", "add", "al ice"],
        "invalid user name `al ice`",
    );
    check(
        &["admin", "user", "add", "bob", "--role", "nope"],
        "role `nope` not found",
    );
    check(
        &["admin", "user", "lock", "nobody"],
        "user `nobody` not found",
    );
    check(
        &["admin", "role", "add", "r", "--allow", "env in prod"],
        "invalid label selector `env in prod`",
    );
    check(
        &[
            "admin",
            "role",
            "add",
            "r",
            "--allow",
            "*",
            "--max-session-ttl",
            "2 parsecs",
        ],
        "invalid duration `2 parsecs`",
    );
    check(
        &[
            "admin", "role", "add", "r", "--allow", "*", "--logins", "ro ot",
        ],
        "invalid login name `ro ot`",
    );
    check(
        &["admin", "target", "add", "Bad_Name", "--ssh", "h:22"],
        "invalid target name `Bad_Name`",
    );
    check(
        &["admin", "target", "add", "t1", "--ssh", "h"],
        "invalid address `h`",
    );
    check(
        &[
            "admin",
            "target",
            "add",
            "t1",
            "--ssh",
            "h:22",
            "--host-key",
            "ssh-ed25519 AAAAnope",
        ],
        "invalid SSH public key",
    );
    check(
        &[
            "admin", "target", "add", "t1", "--ssh", "h:22", "--label", "env",
        ],
        "invalid label `env`",
    );
    let out = p.cli_stdin(&["admin", "user", "add-key", "x", "-"], "not a key\n");
    assert!(out.fails(2).contains("invalid SSH public key"));
    // An SSH target is never added without a pinned host key.
    check(
        &["admin", "target", "add", "t1", "--ssh", "h:22"],
        "needs its host key pinned",
    );
    check(
        &["admin", "target", "add", "t1", "--ssh", "h:22", "--yes"],
        "--scan-host-key",
    );
    // Duplicates are refused.
    p.cli(&[
        "admin",
        "target",
        "add",
        "t1",
        "--ssh",
        "h:22",
        "--host-key",
        KEY,
    ])
    .ok();
    check(
        &[
            "admin",
            "target",
            "add",
            "t1",
            "--ssh",
            "h:22",
            "--host-key",
            KEY,
        ],
        "target `t1` already exists",
    );
    // None of the failures reached the store: only t1 exists, and one audit event.
    let events: serde_json::Value =
        serde_json::from_str(p.cli(&["audit", "search", "--json"]).ok()).unwrap();
    assert_eq!(events.as_array().unwrap().len(), 1);
}

#[test]
fn passwords_are_stored_as_argon2id_and_never_shown() {
    let p = Postern::new();
    p.cli(&["admin", "user", "add", "alice"]).ok();
    let secret = "tr0ub4dor-and-3-more-words";
    let out = p.cli_stdin(
        &["admin", "user", "set-password", "alice", "--password-stdin"],
        &format!("{secret}\n"),
    );
    assert_eq!(out.ok().trim(), "password set for user alice");
    let db = p.data_dir().join("postern.db");
    let hash = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT hash FROM user_passwords WHERE user_name = 'alice'")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&hash.stdout).starts_with("$argon2id$"),
        "{hash:?}"
    );
    // The password is nowhere: not in the store files, the audit log or the user's JSON.
    assert_eq!(p.files_holding(secret), Vec::<std::path::PathBuf>::new());
    let audit = p.cli(&["audit", "search", "--json"]);
    assert!(audit.ok().contains("user.password_set") && !audit.stdout.contains(secret));
    assert!(
        !p.cli(&["admin", "user", "show", "alice", "--json"])
            .ok()
            .contains("argon2")
    );
    // Bad input.
    let out = p.cli_stdin(
        &["admin", "user", "set-password", "alice", "--password-stdin"],
        "short\n",
    );
    assert!(
        out.fails(2)
            .contains("too short: use at least 12 characters")
    );
    let out = p.cli_stdin(
        &[
            "admin",
            "user",
            "set-password",
            "nobody",
            "--password-stdin",
        ],
        &format!("{secret}\n"),
    );
    assert!(out.fails(2).contains("user `nobody` not found"));
}
