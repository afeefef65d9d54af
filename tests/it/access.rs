//! `postern access check`: decisions explained with the rule that made them.

use crate::apply::policy;
use crate::harness::postern::Postern;

fn setup() -> Postern {
    let p = Postern::new();
    let file = p.write("policy.toml", &policy(&p));
    p.cli(&["apply", "-f", file.to_str().unwrap()]).ok();
    p
}

#[test]
fn allow_and_deny_name_the_rule_and_set_the_exit_code() {
    let p = setup();
    let check = |args: &[&str], code: i32, expect: &str| {
        let mut full = vec!["access", "check"];
        full.extend_from_slice(args);
        let out = p.cli(&full);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(
            out.stdout.contains(expect),
            "{args:?}: want {expect:?} in {}",
            out.stdout
        );
    };
    check(
        &["--user", "alice", "--target", "gpu-1", "--login", "ubuntu"],
        0,
        "ALLOW alice → ssh login `ubuntu` on gpu-1: allowed by role `ml` allow rule #1 (env=staging)",
    );
    check(
        &["--user", "alice", "--target", "gpu-1", "--login", "ubuntu"],
        0,
        "credential_ttl 8h, max_session_ttl 2h, idle_timeout 30m, port_forwarding off, file_transfer on",
    );
    check(
        &["--user", "alice", "--target", "gpu-1", "--login", "root"],
        1,
        "DENY alice → ssh login `root` on gpu-1: no role allows it (default deny)",
    );
    check(
        &[
            "--user", "alice", "--target", "vault-1", "--login", "ubuntu",
        ],
        1,
        "DENY alice → ssh login `ubuntu` on vault-1: denied by role `ml` deny rule #1 (pii)",
    );
    check(
        &[
            "--user",
            "alice",
            "--target",
            "gpu-1",
            "--database",
            "x",
            "--db-user",
            "y",
        ],
        1,
        "the target is of kind ssh",
    );

    // Locking refuses everything; unlocking restores it.
    p.cli(&["admin", "user", "lock", "alice"]).ok();
    check(
        &["--user", "alice", "--target", "gpu-1", "--login", "ubuntu"],
        1,
        "the user is locked",
    );
    p.cli(&["admin", "user", "unlock", "alice"]).ok();
    check(
        &["--user", "alice", "--target", "gpu-1", "--login", "ubuntu"],
        0,
        "ALLOW",
    );

    // JSON for programs.
    let out = p.cli(&[
        "access", "check", "--user", "alice", "--target", "vault-1", "--login", "ubuntu", "--json",
    ]);
    assert_eq!(out.code, 1);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["reason"], "denied_by_rule");
    assert_eq!(v["rule"]["role"], "ml");

    // Each decision is an audit event.
    let events: serde_json::Value = serde_json::from_str(
        p.cli(&["audit", "search", "--type", "access.check", "--json"])
            .ok(),
    )
    .unwrap();
    let results: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        [
            "allow", "allow", "deny", "deny", "deny", "deny", "allow", "deny"
        ]
    );
}

#[test]
fn unknown_user_or_target_is_an_error_not_a_decision() {
    let p = setup();
    let out = p.cli(&[
        "access", "check", "--user", "mallory", "--target", "gpu-1", "--login", "root",
    ]);
    assert!(out.fails(2).contains("user `mallory` not found"));
    let out = p.cli(&[
        "access", "check", "--user", "alice", "--target", "nope", "--login", "root",
    ]);
    assert!(out.fails(2).contains("target `nope` not found"));
}

#[test]
fn shortest_ttl_of_the_allowing_roles_applies() {
    let p = setup();
    p.cli(&[
        "admin",
        "role",
        "add",
        "short",
        "--allow",
        "*",
        "--logins",
        "ubuntu",
        "--max-session-ttl",
        "10m",
        "--credential-ttl",
        "1h",
    ])
    .ok();
    p.cli(&["admin", "user", "grant", "alice", "short"]).ok();
    let out = p.cli(&[
        "access", "check", "--user", "alice", "--target", "gpu-1", "--login", "ubuntu", "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(v["settings"]["max_session_ttl"], "10m");
    assert_eq!(v["settings"]["credential_ttl"], "1h");
    assert_eq!(v["roles"], serde_json::json!(["ml", "short"]));
}
