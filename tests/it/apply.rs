//! `postern apply`: idempotent, transactional, dry-run, prune, located errors.

use crate::harness::postern::Postern;

pub const POLICY: &str = r#"
[[roles]]
name = "ml"
credential_ttl = "8h"
max_session_ttl = "2h"

[[roles.allow]]
targets = "env=staging"
logins = ["ubuntu"]

[[roles.deny]]
targets = "pii"

[[targets]]
name = "gpu-1"
kind = "ssh"
address = "10.0.0.5:22"
host_key = "HOSTKEY"
labels = { env = "staging" }

[[targets]]
name = "vault-1"
kind = "ssh"
address = "10.0.0.6:22"
host_key = "HOSTKEY"
labels = { env = "staging", pii = "yes" }

[[users]]
name = "alice"
roles = ["ml"]
keys = ["ALICEKEY"]
"#;

/// A fresh Ed25519 public key line from ssh-keygen.
pub fn new_key(p: &Postern, name: &str) -> String {
    let path = p.root().join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

pub fn policy(p: &Postern) -> String {
    POLICY
        .replace("HOSTKEY", &new_key(p, "host"))
        .replace("ALICEKEY", &new_key(p, "alice"))
}

fn users_json(p: &Postern) -> serde_json::Value {
    serde_json::from_str(p.cli(&["admin", "user", "list", "--json"]).ok()).unwrap()
}

#[test]
fn apply_twice_changes_nothing_the_second_time() {
    let p = Postern::new();
    let file = p.write("policy.toml", &policy(&p));
    let f = file.to_str().unwrap();

    let dry = p.cli(&["apply", "-f", f, "--dry-run"]);
    let text = dry.ok();
    assert!(text.contains("+ role ml"), "{text}");
    assert!(text.contains("would apply 4 change(s)"), "{text}");
    assert_eq!(
        users_json(&p),
        serde_json::json!([]),
        "dry run changed nothing"
    );

    let first = p.cli(&["apply", "-f", f]);
    let text = first.ok();
    for line in [
        "+ role ml",
        "+ target gpu-1",
        "+ target vault-1",
        "+ user alice",
        "applied 4 change(s)",
    ] {
        assert!(text.contains(line), "missing {line:?} in {text}");
    }
    let second = p.cli(&["apply", "-f", f]);
    assert!(
        second.ok().starts_with("nothing to change"),
        "{}",
        second.stdout
    );

    let users = users_json(&p);
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["roles"], serde_json::json!(["ml"]));
    assert_eq!(users[0]["keys"].as_array().unwrap().len(), 1);

    // An edit shows up as a field-level change, and is audited with the acting OS user.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("max_session_ttl = \"2h\"", "max_session_ttl = \"1h\""),
    )
    .unwrap();
    let third = p.cli(&["apply", "-f", f]);
    assert!(
        third.ok().contains("~ role ml: max_session_ttl 2h → 1h"),
        "{}",
        third.stdout
    );
    let events: serde_json::Value = serde_json::from_str(
        p.cli(&["audit", "search", "--type", "role.update", "--json"])
            .ok(),
    )
    .unwrap();
    assert_eq!(events.as_array().unwrap().len(), 1);
    let e = &events[0];
    assert!(e["actor"].as_str().unwrap().starts_with("os:"), "{e}");
    assert_eq!(
        e["details"]["max_session_ttl"],
        serde_json::json!({"before": "2h", "after": "1h"})
    );
}

#[test]
fn prune_removes_what_the_file_no_longer_names() {
    let p = Postern::new();
    let file = p.write("policy.toml", &policy(&p));
    let f = file.to_str().unwrap();
    p.cli(&["apply", "-f", f]).ok();
    p.cli(&[
        "admin",
        "target",
        "add",
        "extra",
        "--postgres",
        "10.0.0.9:5432",
    ])
    .ok();

    // Without --prune the extra target stays.
    assert!(
        p.cli(&["apply", "-f", f])
            .ok()
            .starts_with("nothing to change")
    );
    let out = p.cli(&["apply", "-f", f, "--prune", "--dry-run"]);
    assert!(out.ok().contains("- target extra"), "{}", out.stdout);
    assert!(
        p.cli(&["admin", "target", "show", "extra"]).code == 0,
        "dry run kept it"
    );
    let out = p.cli(&["apply", "-f", f, "--prune"]);
    assert!(out.ok().contains("- target extra"));
    assert!(
        p.cli(&["admin", "target", "show", "extra"])
            .fails(2)
            .contains("target `extra` not found")
    );
}

#[test]
fn broken_policy_files_change_nothing_and_name_the_line() {
    let p = Postern::new();
    let good = policy(&p);
    let file = p.write("policy.toml", &good);
    p.cli(&["apply", "-f", file.to_str().unwrap()]).ok();
    let before = p.cli(&["admin", "role", "list", "--json"]).ok().to_string();

    let line_of =
        |src: &str, needle: &str| src.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let check_at = |name: &str, src: String, line: usize, message: &str| {
        let path = p.write(name, &src);
        let out = p.cli(&["apply", "-f", path.to_str().unwrap()]);
        let err = out.fails(2);
        let want = format!("{}:{line}:", path.display());
        assert!(err.contains(&want), "{name}: want {want:?} in {err}");
        assert!(err.contains(message), "{name}: want {message:?} in {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
    };
    let check = |name: &str, src: String, needle: &str, message: &str| {
        let line = line_of(&src, needle);
        check_at(name, src, line, message)
    };
    check(
        "unknown-key.toml",
        good.replace(
            "logins = [\"ubuntu\"]",
            "logins = [\"ubuntu\"]\nlogin_as = \"root\"",
        ),
        "login_as",
        "unknown field `login_as`",
    );
    check(
        "duration.toml",
        good.replace("\"8h\"", "\"2 parsecs\""),
        "2 parsecs",
        "invalid duration `2 parsecs`",
    );
    check(
        "selector.toml",
        good.replace("\"env=staging\"", "\"env in staging\""),
        "env in staging",
        "invalid label selector",
    );
    check(
        "missing-role.toml",
        good.replace("roles = [\"ml\"]", "roles = [\"ml\", \"admins\"]"),
        "admins",
        "names role `admins`, which this file does not define",
    );
    let dup = good.replace("name = \"vault-1\"", "name = \"gpu-1\"");
    let second = dup
        .lines()
        .collect::<Vec<_>>()
        .iter()
        .rposition(|l| l.contains("name = \"gpu-1\""))
        .unwrap()
        + 1;
    check_at("dup-target.toml", dup, second, "duplicate target `gpu-1`");
    check(
        "host-key.toml",
        good.replacen(
            "host_key = \"ssh-ed25519 ",
            "host_key = \"ssh-ed25519 AAAAbroken",
            1,
        ),
        "AAAAbroken",
        "invalid SSH public key",
    );
    check(
        "target-name.toml",
        good.replace("name = \"gpu-1\"", "name = \"GPU_1\""),
        "GPU_1",
        "invalid target name `GPU_1`",
    );
    check(
        "address.toml",
        good.replace("10.0.0.5:22", "10.0.0.5"),
        "\"10.0.0.5\"",
        "invalid address `10.0.0.5`",
    );
    check(
        "kind.toml",
        good.replacen("kind = \"ssh\"", "kind = \"telnet\"", 1),
        "telnet",
        "unknown variant `telnet`",
    );

    // Nothing was half-applied.
    assert_eq!(p.cli(&["admin", "role", "list", "--json"]).ok(), before);
}

#[test]
fn a_lock_set_by_an_admin_survives_apply_unless_the_file_says_otherwise() {
    let p = Postern::new();
    let text = policy(&p);
    let file = p.write("policy.toml", &text);
    let f = file.to_str().unwrap();
    p.cli(&["apply", "-f", f]).ok();
    p.cli(&["admin", "user", "lock", "alice"]).ok();
    // The file says nothing about locking: the lock stays.
    let again = p.cli(&["apply", "-f", f]);
    assert!(
        again.ok().starts_with("nothing to change"),
        "{}",
        again.stdout
    );
    assert_eq!(users_json(&p)[0]["status"], "locked");
    // `locked = false` unlocks, and the diff says so.
    let unlock = p.write(
        "unlock.toml",
        &text.replace("roles = [\"ml\"]\n", "roles = [\"ml\"]\nlocked = false\n"),
    );
    let dry = p.cli(&["apply", "-f", unlock.to_str().unwrap(), "--dry-run"]);
    assert!(
        dry.ok().contains("~ user alice") && dry.stdout.contains("locked"),
        "{}",
        dry.stdout
    );
    assert_eq!(users_json(&p)[0]["status"], "locked");
    p.cli(&["apply", "-f", unlock.to_str().unwrap()]).ok();
    assert_eq!(users_json(&p)[0]["status"], "active");
    // And `locked = true` locks.
    let lock = p.write(
        "lock.toml",
        &text.replace("roles = [\"ml\"]\n", "roles = [\"ml\"]\nlocked = true\n"),
    );
    p.cli(&["apply", "-f", lock.to_str().unwrap()]).ok();
    assert_eq!(users_json(&p)[0]["status"], "locked");
}

#[test]
fn a_pipeline_tests_the_policy_and_sees_whether_apply_would_change_anything() {
    let p = Postern::new();
    let file = p.write("policy.toml", &policy(&p));
    // `policy test`: no data dir, no server; every expectation holds.
    let tests = p.write(
        "expect.toml",
        r#"
[[expect]]
user = "alice"
target = "gpu-1"
login = "ubuntu"
decision = "allow"
because = "role `ml` allow rule #1"

[[expect]]
user = "alice"
target = "vault-1"
login = "ubuntu"
decision = "deny"
because = "deny rule #1"
"#,
    );
    let (f, t) = (file.to_str().unwrap(), tests.to_str().unwrap());
    let out = p.cli(&["policy", "test", "-f", f, "-t", t]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ok    alice → ssh login `ubuntu` on gpu-1: allow (allowed by role `ml` allow rule #1 (env=staging))"), "{out:?}");
    assert!(
        out.stdout.ends_with("all 2 expectation(s) hold\n"),
        "{out:?}"
    );
    // Nothing was created: no data dir, no store.
    assert!(!p.data_dir().exists());

    // One that does not hold: named, with the rule that decided and where it is written.
    let wrong = p.write(
        "wrong.toml",
        "[[expect]]\nuser = \"alice\"\ntarget = \"gpu-1\"\nlogin = \"root\"\ndecision = \"allow\"\n\n[[expect]]\nuser = \"nobody\"\ntarget = \"gpu-1\"\nlogin = \"ubuntu\"\ndecision = \"deny\"\n",
    );
    let out = p.cli(&["policy", "test", "-f", f, "-t", wrong.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    let fail = format!(
        "FAIL  alice → ssh login `root` on gpu-1: expected allow, got deny (denied: no role allows it (default deny))  ({}:1)",
        wrong.display()
    );
    assert!(out.stdout.contains(&fail), "{out:?}");
    assert!(
        out.stdout.contains("the policy has no user `nobody`"),
        "{out:?}"
    );
    assert!(
        out.stdout.ends_with("2 of 2 expectation(s) failed\n"),
        "{out:?}"
    );

    // A mistake in the expectations is an error with its place.
    let bad = p.write("bad.toml", "[[expect]]\nuser = \"alice\"\nwho = 1\n");
    let out = p.cli(&["policy", "test", "-f", f, "-t", bad.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!("{}:3", bad.display())),
        "{out:?}"
    );

    // `apply --dry-run --exit-code`: 2 while there are changes, 0 once applied.
    let out = p.cli(&["apply", "-f", f, "--dry-run", "--exit-code"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.contains("would apply"), "{out:?}");
    p.cli(&["apply", "-f", f]).ok();
    let out = p.cli(&["apply", "-f", f, "--dry-run", "--exit-code"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = p.cli(&[
        "apply",
        "-f",
        "/nonexistent.toml",
        "--dry-run",
        "--exit-code",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    let out = p.cli(&["apply", "-f", f, "--exit-code"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--dry-run"), "{out:?}");
}
