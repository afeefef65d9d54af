//! postern accepts user certificates signed by its user CA, and checks everything russh
//! does not: the CA, the type, the principal, the validity, revocation, the user's state.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::Out;
use crate::ssh::Bastion;

/// A new key and a certificate for it (`KEY-cert.pub`), made with ssh-keygen.
fn cert(b: &Bastion, name: &str, ca: &Path, extra: &[&str]) -> PathBuf {
    let key = b.postern.root().join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", &format!("test-{name}")])
        .args(extra)
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

fn ssh_with(b: &Bastion, key: &Path, command: &str) -> Out {
    b.ssh_with_key(key, &b.dest(), command)
}

#[test]
fn certificates_from_the_user_ca_work_and_every_bad_one_is_refused() {
    let b = Bastion::start();
    let ca = b.postern.data_dir().join("keys/user_ca");
    let good = cert(
        &b,
        "good",
        &ca,
        &["-n", "alice", "-V", "-5m:+1h", "-z", "1001"],
    );
    assert_eq!(
        ssh_with(&b, &good, "echo via-user-cert").ok(),
        "via-user-cert\n"
    );

    // Another CA.
    let other_ca = b.postern.root().join("other_ca");
    Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_ca)
        .output()
        .unwrap();
    let refused = |name: &str, key: &Path, reason: &str| {
        let out = ssh_with(&b, key, "true");
        assert_eq!(out.code, 255, "{name}: {out:?}");
        assert!(
            out.stderr.contains("Permission denied"),
            "{name}: {}",
            out.stderr
        );
        let events: serde_json::Value = serde_json::from_str(
            b.postern
                .cli(&["audit", "search", "--type", "auth.failure", "--json"])
                .ok(),
        )
        .unwrap();
        let reasons: Vec<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["details"]["reason"].as_str())
            .collect();
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "{name}: want {reason:?} in {reasons:?}"
        );
    };
    refused(
        "wrong CA",
        &cert(&b, "wrongca", &other_ca, &["-n", "alice"]),
        "not signed by postern's user CA",
    );
    // OpenSSH's client will not present a host certificate for user authentication; it
    // falls back to the bare key, which no user registered. (postern's own refusal of
    // host-type certificates is unit-tested in ssh::handler.)
    refused(
        "host certificate",
        &cert(&b, "hostcert", &ca, &["-h", "-n", "alice"]),
        "key not registered",
    );
    refused(
        "wrong principal",
        &cert(&b, "mallory", &ca, &["-n", "mallory"]),
        "its principal names no postern user",
    );
    refused(
        "two principals",
        &cert(&b, "two", &ca, &["-n", "alice,bob"]),
        "exactly one principal",
    );
    refused(
        "critical option",
        &cert(
            &b,
            "forced",
            &ca,
            &["-n", "alice", "-O", "force-command=/bin/true"],
        ),
        "unsupported critical option",
    );
    // Expired and not yet valid certificates are refused, and the refusal is audited.
    refused(
        "expired",
        &cert(&b, "expired", &ca, &["-n", "alice", "-V", "-2h:-1h"]),
        "expired or not yet valid",
    );
    let failures = b.postern.events("auth.failure").len();
    refused(
        "not yet valid",
        &cert(&b, "future", &ca, &["-n", "alice", "-V", "+1h:+2h"]),
        "expired or not yet valid",
    );
    assert!(b.postern.events("auth.failure").len() > failures);
    // A certificate valid forever (OpenSSH's `always:forever`) works; the session still
    // ends by the role's limits.
    let forever = cert(&b, "forever", &ca, &["-n", "alice", "-V", "always:forever"]);
    assert_eq!(ssh_with(&b, &forever, "echo forever").ok(), "forever\n");

    // Revocation applies at once.
    assert_eq!(
        b.postern
            .cli(&["admin", "cert", "revoke", "1001", "--reason", "laptop lost"])
            .ok()
            .trim(),
        "revoked certificate serial 1001"
    );
    refused("revoked", &good, "serial revoked");
    assert!(
        b.postern
            .cli(&["audit", "search", "--type", "credential.revoke"])
            .ok()
            .contains("laptop lost")
    );

    // A locked user's valid certificate does not authenticate; a person (not in
    // BatchMode) is told why.
    let fresh = cert(&b, "fresh", &ca, &["-n", "alice", "-z", "1002"]);
    let successes = b.postern.events("auth.success").len();
    b.postern.cli(&["admin", "user", "lock", "alice"]).ok();
    let out = b.ssh_as_a_person(&fresh, "true");
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr
            .contains("access denied: the user `alice` is locked"),
        "{}",
        out.stderr
    );
    assert_eq!(b.postern.events("auth.success").len(), successes);
    let locked = b.postern.events("auth.failure");
    assert!(
        locked
            .iter()
            .any(|e| e["details"]["reason"] == "user locked" && e["details"]["serial"] == "1002"),
        "{locked:?}"
    );
}

/// A new key of `ssh-keygen` type and size, or `None` when this ssh-keygen cannot make it.
fn keygen(dir: &Path, name: &str, args: &[&str]) -> Option<String> {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-f"])
        .arg(&key)
        .args(args)
        .output()
        .unwrap();
    out.status.success().then(|| {
        std::fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()
    })
}

#[test]
fn only_strong_key_types_are_registered_or_certified() {
    let p = crate::harness::postern::Postern::new();
    p.cli(&[
        "admin", "role", "add", "dev", "--allow", "env=test", "--logins", "app",
    ])
    .ok();
    p.cli(&["admin", "user", "add", "alice", "--role", "dev"])
        .ok();
    crate::login::set_password(&p);
    let dir = p.root().to_path_buf();
    let weak: Vec<(&str, String)> = [
        ("rsa-1024", &["-t", "rsa", "-b", "1024"][..]),
        ("rsa-2048", &["-t", "rsa", "-b", "2048"]),
        ("ecdsa-521", &["-t", "ecdsa", "-b", "521"]),
        ("dsa", &["-t", "dsa"]),
    ]
    .iter()
    .filter_map(|(n, a)| keygen(&dir, n, a).map(|k| (*n, k)))
    .collect();
    assert!(weak.len() >= 3, "{weak:?}");
    let strong: Vec<(&str, String)> = [
        ("ed25519", &["-t", "ed25519"][..]),
        ("ecdsa-256", &["-t", "ecdsa", "-b", "256"]),
        ("ecdsa-384", &["-t", "ecdsa", "-b", "384"]),
        ("rsa-3072", &["-t", "rsa", "-b", "3072"]),
    ]
    .iter()
    .map(|(n, a)| (*n, keygen(&dir, n, a).unwrap()))
    .collect();
    // An admin cannot register them.
    for (name, key) in &weak {
        let file = p.write(&format!("{name}.txt"), key);
        let out = p.cli(&["admin", "user", "add-key", "alice", file.to_str().unwrap()]);
        assert!(
            out.fails(2).contains("ssh-keygen -t ed25519"),
            "{name}: {}",
            out.stderr
        );
    }
    for (name, key) in &strong {
        let user = format!("u-{name}");
        let file = p.write(&format!("{name}.txt"), key);
        p.cli(&["admin", "user", "add", &user]).ok();
        p.cli(&["admin", "user", "add-key", &user, file.to_str().unwrap()])
            .ok();
    }
    // The login API does not certify them.
    let p = p.start();
    let ca = p.write("tls-ca.pem", p.cli(&["admin", "tls-ca"]).ok());
    let keys: Vec<&str> = weak
        .iter()
        .chain(strong.iter())
        .map(|(_, k)| k.as_str())
        .collect();
    let script = format!(
        r#"
import json, ssl, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile={ca:?})
out = []
for key in json.loads({keys:?}):
    body = json.dumps({{"user": "alice", "password": {password:?}, "public_key": key}}).encode()
    req = urllib.request.Request("https://127.0.0.1:{port}/v1/login", data=body, headers={{"content-type": "application/json"}})
    try:
        out.append(urllib.request.urlopen(req, context=ctx, timeout=60).status)
    except urllib.error.HTTPError as e:
        out.append(e.code)
print(json.dumps(out))
"#,
        ca = ca.display().to_string(),
        keys = serde_json::to_string(&keys).unwrap(),
        password = crate::login::PASSWORD,
        port = p.api.port()
    );
    let out = crate::pg::python(&script);
    let codes: Vec<u16> = serde_json::from_str(out.ok()).unwrap();
    let (w, s) = codes.split_at(weak.len());
    assert!(w.iter().all(|c| *c == 400), "{codes:?}");
    assert!(s.iter().all(|c| *c == 200), "{codes:?}");
}

/// Restarts `serve` on the same data dir (what a rotation asks for).
fn restart(b: &mut Bastion) {
    assert_eq!(b.postern.stop().code(), Some(0));
    let cmd = b.postern.serve_command();
    b.postern.spawn(cmd);
}

fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// A new user CA signs from the next start; certificates from the old one work on until
/// the rotation is retired; each step is audited.
#[test]
fn the_user_ca_rotates_and_the_old_one_is_honoured_until_retired() {
    let mut b = Bastion::start();
    let keys = b.postern.data_dir().join("keys");
    let old_ca = b.postern.root().join("old_user_ca");
    std::fs::copy(keys.join("user_ca"), &old_ca).unwrap();
    let old_fp = fingerprint(&keys.join("user_ca.pub"));
    let from_old = cert(&b, "from_old", &old_ca, &["-n", "alice", "-V", "-5m:+1h"]);
    assert_eq!(ssh_with(&b, &from_old, "echo old-ca").ok(), "old-ca\n");

    let out = b.postern.cli(&["admin", "rotate-keys", "user-ca"]);
    let new_fp = fingerprint(&keys.join("user_ca.pub"));
    assert_ne!(new_fp, old_fp);
    assert!(out.ok().contains(&new_fp), "{}", out.stdout);
    // One overlap at a time.
    let again = b.postern.cli(&["admin", "rotate-keys", "user-ca"]);
    assert!(again.fails(2).contains("--retire"), "{}", again.stderr);
    let printed = b.postern.cli(&["admin", "user-ca"]);
    assert_eq!(printed.ok().lines().count(), 2, "{}", printed.stdout);
    restart(&mut b);
    // The overlap: the old CA's certificate still works, the new CA's works too.
    assert_eq!(
        ssh_with(&b, &from_old, "echo still-old").ok(),
        "still-old\n"
    );
    let from_new = cert(
        &b,
        "from_new",
        &keys.join("user_ca"),
        &["-n", "alice", "-V", "-5m:+1h"],
    );
    assert_eq!(ssh_with(&b, &from_new, "echo new-ca").ok(), "new-ca\n");

    b.postern
        .cli(&["admin", "rotate-keys", "user-ca", "--retire"])
        .ok();
    restart(&mut b);
    let out = ssh_with(&b, &from_old, "true");
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(ssh_with(&b, &from_new, "echo new-only").ok(), "new-only\n");
    assert_eq!(
        b.postern.rotation_steps(),
        ["user_ca:rotate", "user_ca:retire"]
    );
    let nothing = b
        .postern
        .cli(&["admin", "rotate-keys", "user-ca", "--retire"]);
    assert!(
        nothing.fails(2).contains("no earlier user CA"),
        "{}",
        nothing.stderr
    );
}

/// The key lines `admin target-ca` prints for targets' TrustedUserCAKeys.
fn trusted_lines(b: &Bastion) -> Vec<String> {
    b.postern
        .cli(&["admin", "target-ca"])
        .ok()
        .lines()
        .filter(|l| l.starts_with("ssh-"))
        .map(str::to_string)
        .collect()
}

/// The target CA in three steps: staged (targets learn it beside the current one, which
/// still signs), activated (it signs from the next start: a target that trusts only the
/// old one refuses, one that trusts both accepts), retired (no longer printed).
#[test]
fn the_target_ca_is_staged_activated_and_retired() {
    use crate::harness::sshd::{Options, Sshd};
    let mut b = Bastion::start();
    let staged = b.postern.cli(&["admin", "rotate-keys", "target-ca"]);
    let next_line = staged.ok().lines().next().unwrap().to_string();
    assert!(next_line.starts_with("ssh-ed25519 "), "{}", staged.stdout);
    let lines = trusted_lines(&b);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1], next_line);
    // Staged only: the current CA still signs.
    assert_eq!(b.ssh(&b.dest(), "echo staged").ok(), "staged\n");
    let both = Sshd::start_with(Options {
        authorized_key: false,
        trusted_ca: Some(&lines.join("\n")),
        config: "",
    });
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            "t2",
            "--ssh",
            &format!("127.0.0.1:{}", both.port),
            "--host-key",
            &both.host_key,
            "--label",
            "env=test",
        ])
        .ok();

    b.postern
        .cli(&["admin", "rotate-keys", "target-ca", "--activate"])
        .ok();
    restart(&mut b);
    // t1 trusts only the old CA now; t2 trusts both.
    let refused = b.ssh(&b.dest(), "true");
    assert_ne!(refused.code, 0, "{refused:?}");
    let t2 = format!("{}@t2", b.login);
    assert_eq!(b.ssh(&t2, "echo rotated").ok(), "rotated\n");
    assert_eq!(trusted_lines(&b), [next_line.clone(), lines[0].clone()]);

    b.postern
        .cli(&["admin", "rotate-keys", "target-ca", "--retire"])
        .ok();
    assert_eq!(trusted_lines(&b), vec![next_line.clone()]);
    assert_eq!(b.ssh(&t2, "echo after-retire").ok(), "after-retire\n");
}
