//! Rotating the audit key: the log carries a handover signed by both keys, so the whole
//! log verifies with either key, through the overlap and after the old key is retired;
//! a checkpoint the retired key signs later is refused.

use crate::harness::Out;
use crate::ssh::Bastion;

fn verify(b: &Bastion, args: &[&str]) -> Out {
    b.postern.cli(&[&["audit", "verify"], args].concat())
}

/// `audit verify` (of the store, or of an export `file`) is OK with each of `keys`.
fn verifies_with_each(b: &Bastion, file: Option<&std::path::Path>, keys: &[&std::path::Path]) {
    for key in keys {
        let mut args = vec!["--pubkey", key.to_str().unwrap()];
        if let Some(f) = file {
            args.extend(["--file", f.to_str().unwrap()]);
        }
        let out = verify(b, &args);
        assert!(out.ok().starts_with("OK: "), "{}: {out:?}", key.display());
    }
}

fn file(b: &Bastion, rel: &str) -> String {
    std::fs::read_to_string(b.postern.data_dir().join(rel)).unwrap()
}

/// Appends an event and signs the store's head with `key` (an OpenSSH private key), as a
/// process holding it would.
fn sign_with(b: &Bastion, key: &str) {
    use postern::audit::chain::Signer;
    let key = russh::keys::PrivateKey::from_openssh(key.trim()).unwrap();
    let signer = std::sync::Arc::new(Signer::new(&key).unwrap());
    let url = b.postern.store_url.clone().unwrap_or_default();
    let dir = b.postern.data_dir();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = postern::store::Store::open(&dir, &url, Some(signer))
            .await
            .unwrap();
        let event = postern::audit::AuditEvent::new(
            "user.update",
            &postern::audit::Actor::system(),
            postern::audit::Outcome::Success,
            serde_json::json!({ "user": "alice" }),
        );
        store.append_audit(&event).await.unwrap();
        store.audit_checkpoint().await.unwrap();
        store.close().await;
    });
}

/// Signs an export's trailer again with `key`, as someone holding it would.
fn sign_trailer_with(file: &std::path::Path, key: &str) {
    use postern::audit::chain::{Signer, Trailer};
    let key = russh::keys::PrivateKey::from_openssh(key.trim()).unwrap();
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let mut t: Trailer = serde_json::from_value(last["trailer"].clone()).unwrap();
    t.signature = Signer::new(&key).unwrap().sign_message(&t.message());
    *lines.last_mut().unwrap() = serde_json::json!({ "trailer": t }).to_string();
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
}

#[test]
fn the_audit_key_is_handed_over_in_the_log_and_either_key_verifies_all_of_it() {
    let mut b = Bastion::start();
    let root = b.postern.root().to_path_buf();
    assert_eq!(b.ssh(&b.dest(), "echo before").ok(), "before\n");
    let old_pub = root.join("old_audit.pub");
    std::fs::write(&old_pub, file(&b, "keys/audit_ed25519.pub")).unwrap();
    let old_private = file(&b, "keys/audit_ed25519");

    let out = b.postern.cli(&["admin", "rotate-keys", "audit-key"]);
    assert!(out.ok().contains("new audit key SHA256:"), "{}", out.stdout);
    let new_pub = root.join("new_audit.pub");
    std::fs::write(&new_pub, file(&b, "keys/audit_ed25519.pub")).unwrap();
    assert_ne!(
        file(&b, "keys/audit_ed25519.pub"),
        file(&b, "keys/audit_ed25519.previous.pub")
    );
    assert_eq!(
        std::fs::read_to_string(&old_pub).unwrap(),
        file(&b, "keys/audit_ed25519.previous.pub")
    );
    // One overlap at a time; and serve, started before the rotation, still signs with
    // the old key, so the old key cannot be retired yet.
    let again = b.postern.cli(&["admin", "rotate-keys", "audit-key"]);
    assert!(again.fails(2).contains("--retire"), "{}", again.stderr);
    let early = b
        .postern
        .cli(&["admin", "rotate-keys", "audit-key", "--retire"]);
    assert!(
        early
            .fails(2)
            .contains("still sign(s) with the old audit key"),
        "{}",
        early.stderr
    );
    // The running serve signs after the handover with the old key: the overlap.
    assert_eq!(b.ssh(&b.dest(), "echo overlap").ok(), "overlap\n");
    b.postern.restart();
    assert_eq!(b.ssh(&b.dest(), "echo after").ok(), "after\n");
    b.postern.cli(&["audit", "head"]).ok();

    let handover = b.postern.events("audit.key_rotated");
    assert_eq!(handover.len(), 1, "{handover:?}");
    assert_eq!(
        handover[0]["details"]["from"].as_str().unwrap(),
        std::fs::read_to_string(&old_pub)
            .unwrap()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // The whole log verifies with the new key, and with the old one an auditor pinned.
    verifies_with_each(&b, None, &[&new_pub, &old_pub]);
    let export = root.join("export.jsonl");
    b.postern
        .cli(&["audit", "export", "-o", export.to_str().unwrap()])
        .ok();
    verifies_with_each(&b, Some(&export), &[&new_pub, &old_pub]);
    // An export that begins after the handover still verifies with either key: it names
    // the audit key's handovers ahead of its events.
    let since = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    b.postern.cli(&["admin", "user", "lock", "alice"]).ok();
    b.postern.cli(&["admin", "user", "unlock", "alice"]).ok();
    let recent = root.join("recent.jsonl");
    b.postern
        .cli(&[
            "audit",
            "export",
            "--since",
            &since,
            "-o",
            recent.to_str().unwrap(),
        ])
        .ok();
    let text = std::fs::read_to_string(&recent).unwrap();
    assert!(text.starts_with("{\"lineage\""), "{text}");
    assert!(!text.contains("\"type\":\"server.start\""), "{text}");
    verifies_with_each(&b, Some(&recent), &[&new_pub, &old_pub]);
    // Its trailer signed again with the old key (all else kept) is refused.
    sign_trailer_with(&recent, &old_private);
    let out = verify(&b, &["--file", recent.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("not by the newest key"),
        "{}",
        out.stdout
    );

    // A key from elsewhere vouches for none of it.
    let other = crate::harness::postern::Postern::new();
    other.cli(&["admin", "user", "list"]).ok();
    let foreign = other.data_dir().join("keys/audit_ed25519.pub");
    let out = verify(&b, &["--pubkey", foreign.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("neither the key given to verify with nor one the log hands over to"),
        "{}",
        out.stdout
    );

    // Pruning within the overlap keeps the handover: what the old key signed after the
    // cut still verifies.
    let cutoff = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let cutoff = cutoff
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    b.postern
        .cli(&["audit", "prune", "--before", &cutoff, "--yes"])
        .ok();
    assert_eq!(b.postern.events("audit.key_rotated").len(), 1);
    let out = verify(&b, &["--pubkey", old_pub.to_str().unwrap()]);
    assert!(out.ok().starts_with("OK: "), "{out:?}");

    // serve restarted: the old key can be retired, and the log still verifies.
    let out = b
        .postern
        .cli(&["admin", "rotate-keys", "audit-key", "--retire"]);
    assert!(out.ok().contains("retired"), "{}", out.stdout);
    assert!(
        !b.postern
            .data_dir()
            .join("keys/audit_ed25519.previous.pub")
            .exists()
    );
    assert_eq!(b.ssh(&b.dest(), "echo retired").ok(), "retired\n");
    assert_eq!(b.postern.stop().code(), Some(0));
    verifies_with_each(&b, None, &[&new_pub, &old_pub]);

    // Someone holding the retired key signs a checkpoint over a new event: refused.
    sign_with(&b, &old_private);
    let out = verify(&b, &["--pubkey", new_pub.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("was retired at seq"), "{}", out.stdout);
}

/// A rotation that stopped half way (here: the file naming the old key cannot be
/// written) is finished by running it again: the staged key is reused and the handover
/// is not written twice.
#[test]
fn an_interrupted_audit_key_rotation_finishes_when_run_again() {
    let b = Bastion::start();
    let blocker = b
        .postern
        .data_dir()
        .join("keys/audit_ed25519.previous.pub.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let failed = b.postern.cli(&["admin", "rotate-keys", "audit-key"]);
    assert_ne!(failed.code, 0, "{failed:?}");
    assert_eq!(b.postern.events("audit.key_rotated").len(), 1);
    std::fs::remove_dir(&blocker).unwrap();
    let out = b.postern.cli(&["admin", "rotate-keys", "audit-key"]);
    assert!(out.ok().contains("new audit key"), "{}", out.stdout);
    let handovers = b.postern.events("audit.key_rotated");
    assert_eq!(handovers.len(), 1, "{handovers:?}");
    assert!(
        !b.postern
            .data_dir()
            .join("keys/audit_ed25519.next")
            .exists()
    );
    assert_eq!(
        file(&b, "keys/audit_ed25519.previous.pub")
            .split_whitespace()
            .nth(1),
        handovers[0]["details"]["from"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .nth(1)
    );
    let out = verify(&b, &[]);
    assert!(out.ok().starts_with("OK: "), "{out:?}");
}
