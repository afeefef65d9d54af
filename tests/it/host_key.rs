//! Rotating postern's SSH host key in three steps with stock OpenSSH: staged, it is
//! announced after authentication (hostkeys-00@openssh.com) and proven on request, so a
//! client with UpdateHostKeys adds it to known_hosts; activated, those clients connect
//! without a prompt while one that never learnt it is refused; retired, it is no longer
//! announced and those clients drop the old key.

use std::process::Stdio;

use crate::harness::Out;
use crate::ssh::Bastion;

/// The key part (`ssh-ed25519 AAAA…`) of a public key line.
fn key_of(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn known(b: &Bastion) -> String {
    std::fs::read_to_string(&b.known_hosts).unwrap()
}

fn ssh(b: &Bastion, options: &[&str], command: &str) -> Out {
    let mut c = b.ssh_command("ssh");
    for o in options {
        c.args(["-o", o]);
    }
    c.args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

#[test]
fn the_host_key_is_announced_then_activated_then_retired_and_openssh_follows() {
    let mut b = Bastion::start();
    let old = key_of(b.postern.cli(&["admin", "host-key"]).ok());
    let staged = b.postern.cli(&["admin", "rotate-keys", "host-key"]);
    let next = key_of(staged.ok().lines().next().unwrap());
    assert!(
        next.starts_with("ssh-ed25519 ") && next != old,
        "{}",
        staged.stdout
    );
    let again = b.postern.cli(&["admin", "rotate-keys", "host-key"]);
    assert!(again.fails(2).contains("--activate"), "{}", again.stderr);
    let printed = b.postern.cli(&["admin", "host-key"]).ok().to_string();
    let printed: Vec<String> = printed.lines().map(key_of).collect();
    assert_eq!(printed, [old.clone(), next.clone()]);

    // Announced from the next start: a client that asks for updates learns it (after
    // postern proves it holds the key); one that does not is left alone.
    b.postern.restart();
    let before = known(&b);
    assert_eq!(ssh(&b, &[], "echo plain").ok(), "plain\n");
    assert_eq!(known(&b), before);
    assert!(!known(&b).contains(&next));
    let out = ssh(&b, &["UpdateHostKeys=yes"], "sleep 1; echo learning");
    assert_eq!(out.ok(), "learning\n");
    let learnt = known(&b);
    assert!(learnt.contains(&next), "{learnt}\n{}", out.stderr);
    assert!(learnt.contains(&old), "{learnt}");
    let stale = std::fs::read_to_string(&b.known_hosts).unwrap();

    b.postern
        .cli(&["admin", "rotate-keys", "host-key", "--activate"])
        .ok();
    // serve, started before the activation, still offers the old key in key exchange:
    // retiring it now would have updating clients drop the key it shows them.
    let early = b
        .postern
        .cli(&["admin", "rotate-keys", "host-key", "--retire"]);
    let why = early.fails(2);
    assert!(
        why.contains("still offer(s) the old host key") && why.contains("restart"),
        "{}",
        early.stderr
    );
    b.postern.restart();
    // The client that learnt the key connects as before, strictly checked.
    assert_eq!(ssh(&b, &[], "echo new-key").ok(), "new-key\n");
    // One that knows only the old key is refused: the host key changed.
    std::fs::write(&b.known_hosts, before.as_bytes()).unwrap();
    let out = ssh(&b, &[], "true");
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains("HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        out.stderr
    );
    std::fs::write(&b.known_hosts, stale.as_bytes()).unwrap();

    b.postern
        .cli(&["admin", "rotate-keys", "host-key", "--retire"])
        .ok();
    b.postern.restart();
    let printed = b.postern.cli(&["admin", "host-key"]).ok().to_string();
    assert_eq!(
        printed.lines().map(key_of).collect::<Vec<_>>(),
        [next.as_str()]
    );
    // No longer announced: the client asking for updates drops the old key.
    let out = ssh(&b, &["UpdateHostKeys=yes"], "sleep 1; echo dropping");
    assert_eq!(out.ok(), "dropping\n");
    let left = known(&b);
    assert!(
        left.contains(&next) && !left.contains(&old),
        "{left}\n{}",
        out.stderr
    );
    assert_eq!(
        b.postern.rotation_steps(),
        ["host_key:stage", "host_key:activate", "host_key:retire"]
    );
}
