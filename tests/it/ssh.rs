//! SSH through postern with the stock OpenSSH client, to a throwaway sshd that trusts
//! only postern's target CA (no authorized_keys at all).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::apply::new_key;
use crate::harness::postern::Postern;
use crate::harness::sshd::{Options, Sshd};
use crate::harness::{Out, whoami};

pub struct Bastion {
    pub postern: Postern,
    pub sshd: Sshd,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub login: String,
}

impl Bastion {
    /// postern with user `alice` (role `dev`: env=test, login = the test's OS user) and
    /// target `t1` pointing at a throwaway sshd that trusts postern's target CA.
    pub fn start() -> Bastion {
        Self::start_with_role(&[])
    }

    pub fn start_with_role(extra: &[&str]) -> Bastion {
        Self::start_with(extra, None)
    }

    /// As `start_with_role`, with `serve` reading `config` (TOML) as its config file.
    pub fn start_with(extra: &[&str], config: Option<&str>) -> Bastion {
        Self::start_on(Postern::new(), extra, config)
    }

    /// As `start_with`, on a postern made by the caller (a data dir on a tmpfs).
    pub fn start_on(p: Postern, extra: &[&str], config: Option<&str>) -> Bastion {
        Self::start_full(p, extra, config, "")
    }

    /// As `start`, with a target whose sshd_config begins with `sshd_config`.
    pub fn start_with_target(sshd_config: &str) -> Bastion {
        Self::start_full(Postern::new(), &[], None, sshd_config)
    }

    fn start_full(p: Postern, extra: &[&str], config: Option<&str>, sshd_config: &str) -> Bastion {
        let ca = p.cli(&["admin", "target-ca"]);
        let ca_line = ca.ok().lines().next().unwrap().to_string();
        assert!(ca_line.starts_with("ssh-ed25519 "), "{ca_line}");
        let sshd = Sshd::start_with(Options {
            authorized_key: false,
            trusted_ca: Some(&ca_line),
            config: sshd_config,
        });
        let login = whoami();
        let mut role = vec![
            "admin", "role", "add", "dev", "--allow", "env=test", "--logins",
        ];
        role.push(&login);
        role.extend_from_slice(extra);
        p.cli(&role).ok();
        p.cli(&["admin", "user", "add", "alice", "--role", "dev"])
            .ok();
        new_key(&p, "alice_key");
        let key = p.root().join("alice_key");
        p.cli(&[
            "admin",
            "user",
            "add-key",
            "alice",
            key.with_extension("pub").to_str().unwrap(),
        ])
        .ok();
        p.cli(&[
            "admin",
            "target",
            "add",
            "t1",
            "--ssh",
            &format!("127.0.0.1:{}", sshd.port),
            "--host-key",
            &sshd.host_key,
            "--label",
            "env=test",
        ])
        .ok();
        let p = match config {
            Some(text) => {
                let cfg = p.write("postern.toml", text);
                let mut p = p;
                let mut cmd = p.serve_command();
                cmd.arg("--config").arg(cfg);
                p.spawn(cmd);
                p
            }
            None => p.start(),
        };
        let host_pub =
            std::fs::read_to_string(p.data_dir().join("keys/ssh_host_ed25519_key.pub")).unwrap();
        let known_hosts = p.write(
            "known_hosts",
            &format!("[127.0.0.1]:{} {}", p.ssh.port(), host_pub),
        );
        Bastion {
            postern: p,
            sshd,
            key,
            known_hosts,
            login,
        }
    }

    /// Adds postern's host key for another port (a replica, a balancer) to known_hosts.
    pub fn trust_host_key_at(&self, port: u16) {
        let host_key = std::fs::read_to_string(
            self.postern
                .data_dir()
                .join("keys/ssh_host_ed25519_key.pub"),
        )
        .unwrap();
        let mut known = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.known_hosts)
            .unwrap();
        std::io::Write::write_all(
            &mut known,
            format!("[127.0.0.1]:{port} {host_key}").as_bytes(),
        )
        .unwrap();
    }

    /// `ssh` arguments through postern, up to (not including) the destination.
    pub fn ssh_command(&self, program: &str) -> Command {
        self.ssh_command_with_key(program, &self.key)
    }

    /// The same client options, offering only `key` (and its `-cert.pub`, if any).
    pub fn ssh_command_with_key(&self, program: &str, key: &std::path::Path) -> Command {
        let mut c = self.person_command(program, key);
        c.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]);
        c
    }

    /// A client as a person runs it: no BatchMode, so keyboard-interactive notices show.
    fn person_command(&self, program: &str, key: &std::path::Path) -> Command {
        let mut c = Command::new(program);
        c.args(["-F", "/dev/null", "-i"])
            .arg(key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
            ]);
        c
    }

    /// `ssh` as a person runs it, offering only `key`, through postern, running `command`.
    pub fn ssh_as_a_person(&self, key: &std::path::Path, command: &str) -> Out {
        self.person_command("ssh", key)
            .args(["-p", &self.postern.ssh.port().to_string()])
            .arg(format!("{}@127.0.0.1", self.dest()))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }

    /// `ssh -p PORT USER@127.0.0.1 COMMAND` through postern.
    pub fn ssh(&self, user: &str, command: &str) -> Out {
        self.ssh_with_key(&self.key, user, command)
    }

    /// `ssh` through postern offering only `key`.
    pub fn ssh_with_key(&self, key: &std::path::Path, user: &str, command: &str) -> Out {
        self.ssh_command_with_key("ssh", key)
            .args(["-p", &self.postern.ssh.port().to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }

    pub fn dest(&self) -> String {
        format!("{}@t1", self.login)
    }
}

#[test]
fn exec_keeps_stdout_stderr_and_exit_status_apart() {
    let b = Bastion::start();
    let out = b.ssh(&b.dest(), "echo out; echo err >&2; exit 7");
    assert_eq!(
        out.code,
        7,
        "{out:?}\npostern log:\n{}\nsshd log:\n{}",
        b.postern.log(),
        b.sshd.log()
    );
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    // The default login (first login of the allowing rule) works with `ssh TARGET@bastion`.
    let out = b.ssh("t1", "id -un");
    assert_eq!(out.ok().trim(), b.login);
}

#[test]
fn refusals_are_one_line_messages_and_audited() {
    let b = Bastion::start();
    let check = |user: &str, expect: &str| {
        let out = b.ssh(user, "true");
        assert_ne!(out.code, 0, "{user}: {out:?}");
        assert!(
            out.stderr.contains(expect),
            "{user}: want {expect:?} in {:?}",
            out.stderr
        );
        assert!(out.stdout.is_empty());
    };
    check(
        "nobody@t1",
        "postern: access to nobody@t1 denied: no role allows it (default deny)",
    );
    // A target alice may reach nothing on, and one of another kind she may not reach,
    // are answered exactly like one that does not exist.
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            "secret",
            "--ssh",
            "127.0.0.1:1",
            "--host-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "--label",
            "env=prod",
        ])
        .ok();
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            "warehouse",
            "--postgres",
            "127.0.0.1:1",
            "--label",
            "env=test",
        ])
        .ok();
    let answer = |target: &str| {
        let out = b.ssh(&format!("{}@{target}", b.login), "true");
        assert_ne!(out.code, 0);
        out.stderr.replace(target, "NAME")
    };
    let unknown = answer("nope");
    assert!(
        unknown.contains("postern: no target `NAME` that you may reach"),
        "{unknown}"
    );
    assert_eq!(answer("secret"), unknown);
    assert_eq!(answer("warehouse"), unknown);
    check(
        "root@BAD_TARGET",
        "postern: cannot read a target from the SSH username",
    );
    // A locked user does not authenticate at all (scripts in BatchMode see only that;
    // a person is told why, see certs.rs).
    let successes = b.postern.events("auth.success").len();
    b.postern.cli(&["admin", "user", "lock", "alice"]).ok();
    check(&b.dest(), "Permission denied");
    // The refusal is not preceded by a success.
    assert_eq!(b.postern.events("auth.success").len(), successes);
    b.postern.cli(&["admin", "user", "unlock", "alice"]).ok();
    // The listener still serves others.
    assert_eq!(b.ssh(&b.dest(), "echo still").ok(), "still\n");
    let events: serde_json::Value = serde_json::from_str(
        b.postern
            .cli(&["audit", "search", "--type", "access.deny", "--json"])
            .ok(),
    )
    .unwrap();
    let reasons: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("no role allows it")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "unknown target"), "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "no role reaches the target")
            .count(),
        2,
        "{reasons:?}"
    );
    let locked = b.postern.events("auth.failure");
    assert!(
        locked
            .iter()
            .any(|e| e["actor"] == "user:alice" && e["details"]["reason"] == "user locked"),
        "{locked:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "malformed username"),
        "{reasons:?}"
    );
}

#[test]
fn an_unregistered_key_is_refused_at_authentication() {
    let b = Bastion::start();
    new_key(&b.postern, "mallory");
    let out = b.ssh_with_key(&b.postern.root().join("mallory"), &b.dest(), "true");
    assert_eq!(out.code, 255);
    assert!(
        out.stderr.contains("Permission denied (publickey)"),
        "{}",
        out.stderr
    );
}

#[test]
fn target_trusts_only_the_ca_and_only_for_the_allowed_login() {
    // The sshd has no authorized_keys: the session works only through the certificate,
    // whose single principal is the allowed login.
    let b = Bastion::start();
    assert_eq!(b.ssh(&b.dest(), "echo via-cert").ok(), "via-cert\n");
    let log = b.sshd.log();
    assert!(
        log.contains("Accepted publickey") && log.contains("ED25519-CERT"),
        "{log}"
    );
    assert!(
        log.contains("postern session="),
        "key id names the session: {log}"
    );
}

#[test]
fn a_rebuilt_host_is_pinned_again_by_scanning_after_confirmation() {
    let b = Bastion::start();
    let other = new_key(&b.postern, "old-host");
    // t1's host "was rebuilt": postern has the wrong key pinned and refuses.
    b.postern
        .cli(&["admin", "target", "set", "t1", "--host-key", &other])
        .ok();
    let out = b.ssh(&b.dest(), "true");
    assert!(
        out.stderr
            .contains("postern admin target set t1 --host-key"),
        "{}",
        out.stderr
    );
    // Scanning shows the fingerprint; without a terminal or --yes nothing is pinned.
    let fingerprint = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(b.sshd.dir().join("host_key.pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let out = b
        .postern
        .cli(&["admin", "target", "set", "t1", "--scan-host-key"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains(&fingerprint), "{}", out.stderr);
    assert!(out.stderr.contains("not pinned"), "{}", out.stderr);
    assert!(b.ssh(&b.dest(), "true").code != 0);
    // Confirmed: the scanned key is the sshd's, and sessions work again.
    let out = b
        .postern
        .cli(&["admin", "target", "set", "t1", "--scan-host-key", "--yes"]);
    assert!(out.stderr.contains(&fingerprint), "{out:?}");
    out.ok();
    let t: serde_json::Value = serde_json::from_str(
        b.postern
            .cli(&["admin", "target", "show", "t1", "--json"])
            .ok(),
    )
    .unwrap();
    assert_eq!(t["host_key"], b.sshd.host_key.as_str());
    assert_eq!(b.ssh(&b.dest(), "echo back").ok(), "back\n");
    // A new target scanned the same way; a port with nothing on it is a clear error.
    let port = b.sshd.port.to_string();
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            "t2",
            "--ssh",
            &format!("127.0.0.1:{port}"),
            "--scan-host-key",
            "--yes",
        ])
        .ok();
    let closed = crate::harness::free_port();
    let out = b.postern.cli(&[
        "admin",
        "target",
        "add",
        "t3",
        "--ssh",
        &format!("127.0.0.1:{closed}"),
        "--scan-host-key",
        "--yes",
    ]);
    assert!(
        out.fails(2)
            .contains("cannot fetch the host key of `t3`: cannot reach"),
        "{out:?}"
    );
}

#[test]
fn host_key_mismatch_and_target_down_are_refused_clearly() {
    let b = Bastion::start();
    let other = new_key(&b.postern, "impostor");
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            "t2",
            "--ssh",
            &format!("127.0.0.1:{}", b.sshd.port),
            "--host-key",
            &other,
            "--label",
            "env=test",
        ])
        .ok();
    let out = b.ssh(&format!("{}@t2", b.login), "true");
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains("presented host key SHA256:")
            && out.stderr.contains("refusing to connect"),
        "{}",
        out.stderr
    );
    let port = crate::harness::free_port();
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            "t3",
            "--ssh",
            &format!("127.0.0.1:{port}"),
            "--host-key",
            &other,
            "--label",
            "env=test",
        ])
        .ok();
    let out = b.ssh(&format!("{}@t3", b.login), "true");
    assert_eq!(out.code, 255);
    assert!(
        out.stderr
            .contains(&format!("cannot reach target `t3` at 127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    assert!(!b.postern.events("session.host_key_mismatch").is_empty());
    // The index says why each session ended, and the log warns of both.
    let reason = |target: &str| {
        for _ in 0..100 {
            let list: serde_json::Value = serde_json::from_str(
                b.postern
                    .cli(&["sessions", "list", "--json", "--target", target])
                    .ok(),
            )
            .unwrap();
            if let Some(r) = list[0]["end_reason"].as_str() {
                return r.to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("no ended session to {target}");
    };
    assert_eq!(reason("t2"), "host key mismatch");
    assert_eq!(reason("t3"), "upstream unreachable");
    let log = b.postern.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("cannot connect to the target"))
            .count()
            >= 2,
        "{log}"
    );
    let table = b.postern.cli(&["sessions", "list", "--target", "t2"]);
    assert!(table.ok().contains("host key mismatch"), "{table:?}");
}

/// Runs `ssh -tt` through postern, typing `lines` one by one.
fn interactive(b: &Bastion, lines: &[&str]) -> Out {
    use std::io::Write;
    let mut child = b
        .ssh_command("ssh")
        .args(["-tt", "-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        std::thread::sleep(std::time::Duration::from_millis(300));
        stdin.write_all(l.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    out.into()
}

pub fn only_session(b: &Bastion) -> serde_json::Value {
    let list: serde_json::Value =
        serde_json::from_str(b.postern.cli(&["sessions", "list", "--json"]).ok()).unwrap();
    let all = list.as_array().unwrap();
    all.last().cloned().unwrap()
}

/// The newest session once postern has closed it in the index (the client may exit first).
pub fn ended_session(b: &Bastion) -> serde_json::Value {
    for _ in 0..100 {
        let s = only_session(b);
        if !s["end_reason"].is_null() {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the session did not end; log:\n{}", b.postern.log());
}

#[test]
fn interactive_session_is_recorded_replayed_exported_and_searchable() {
    let b = Bastion::start();
    let out = interactive(&b, &["echo typed-$((6*7))", "exit 4"]);
    assert_eq!(out.code, 4, "{out:?}\n{}", b.postern.log());
    assert!(out.stdout.contains("typed-42"), "{}", out.stdout);

    let s = ended_session(&b);
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["user"], "alice");
    assert_eq!(s["target"], "t1");
    assert_eq!(s["exit_status"], 4);
    assert_eq!(s["end_reason"], "client exit");
    let rec = &s["recordings"][0];
    assert_eq!(
        rec["sha256"].as_str().unwrap().len(),
        64,
        "finished and hashed: {s}"
    );

    // The recording: header, keystrokes in, output out, in order.
    let cast = std::fs::read_to_string(rec["path"].as_str().unwrap()).unwrap();
    let mut lines = cast.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["env"]["TERM"], "xterm-256color");
    assert!(
        header["title"]
            .as_str()
            .unwrap()
            .contains(&format!("alice as {}@t1 (session {id}", b.login))
    );
    let events: Vec<(f64, String, String)> =
        lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let typed: String = events
        .iter()
        .filter(|e| e.1 == "i")
        .map(|e| e.2.as_str())
        .collect();
    assert!(typed.contains("echo typed-$((6*7))\n"), "{typed:?}");
    let shown: String = events
        .iter()
        .filter(|e| e.1 == "o")
        .map(|e| e.2.as_str())
        .collect();
    let input_at = events.iter().find(|e| e.1 == "i").unwrap().0;
    let output_at = events
        .iter()
        .find(|e| e.1 == "o" && e.2.contains("typed-42"))
        .unwrap()
        .0;
    assert!(input_at <= output_at);
    assert!(shown.contains("typed-42"));

    // Replay prints what the user saw.
    let replay = b
        .postern
        .cli(&["replay", &id, "--speed", "100", "--max-idle", "0s"]);
    assert!(replay.ok().contains("typed-42"), "{}", replay.stdout);

    // Export plays in the real asciinema.
    let file = b.postern.root().join("export.cast");
    b.postern
        .cli(&["sessions", "export", &id[..8], "-o", file.to_str().unwrap()])
        .ok();
    let cat = Command::new("asciinema")
        .arg("cat")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert!(String::from_utf8_lossy(&cat.stdout).contains("typed-42"));

    // grep finds the typed line in this session only.
    let other = interactive(&b, &["echo something-else", "exit"]);
    assert_eq!(other.code, 0);
    let grep = b
        .postern
        .cli(&["sessions", "grep", "typed-$((6*7))", "--json"]);
    let hits: serde_json::Value = serde_json::from_str(grep.ok()).unwrap();
    let sessions: std::collections::BTreeSet<&str> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.into_iter().collect::<Vec<_>>(), [id.as_str()]);
    assert_eq!(
        b.postern
            .cli(&["sessions", "grep", "never-typed-anywhere"])
            .code,
        1
    );

    // Auditors are audited.
    let events = b
        .postern
        .cli(&["audit", "search", "--type", "session"])
        .ok()
        .to_string();
    for t in [
        "session.start",
        "session.channel",
        "session.end",
        "session.replay",
        "session.export",
    ] {
        assert!(events.contains(t), "missing {t}: {events}");
    }
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn scp_sftp_and_rsync_move_files_intact() {
    let b = Bastion::start();
    let dir = b.postern.root().join("files");
    std::fs::create_dir(&dir).unwrap();
    let src = dir.join("model.bin");
    let status = Command::new("head")
        .args(["-c", "52428800", "/dev/urandom"])
        .stdout(std::fs::File::create(&src).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let want = sha256(&src);
    let port = b.postern.ssh.port().to_string();
    let remote = |p: &std::path::Path| format!("{}@127.0.0.1:{}", b.dest(), p.display());

    // scp (SFTP protocol, OpenSSH 9's default) up and down.
    let up = dir.join("scp-up.bin");
    let out: Out = b
        .ssh_command("scp")
        .args(["-q", "-P", &port])
        .arg(&src)
        .arg(remote(&up))
        .output()
        .unwrap()
        .into();
    out.ok();
    assert_eq!(sha256(&up), want);
    let down = dir.join("scp-down.bin");
    let out: Out = b
        .ssh_command("scp")
        .args(["-q", "-P", &port])
        .arg(remote(&up))
        .arg(&down)
        .output()
        .unwrap()
        .into();
    out.ok();
    assert_eq!(sha256(&down), want);

    // sftp in batch mode.
    let batch = b.postern.write(
        "batch",
        &format!(
            "put {} {}\nget {} {}\n",
            src.display(),
            dir.join("sftp-up.bin").display(),
            dir.join("sftp-up.bin").display(),
            dir.join("sftp-down.bin").display()
        ),
    );
    let out: Out = b
        .ssh_command("sftp")
        .args(["-q", "-P", &port, "-b"])
        .arg(&batch)
        .arg(format!("{}@127.0.0.1", b.dest()))
        .output()
        .unwrap()
        .into();
    out.ok();
    assert_eq!(sha256(&dir.join("sftp-down.bin")), want);

    // rsync over ssh.
    let ssh = format!(
        "ssh -F /dev/null -p {port} -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes",
        b.key.display(),
        b.known_hosts.display()
    );
    let out: Out = Command::new("rsync")
        .args(["-a", "-e", &ssh])
        .arg(&src)
        .arg(remote(&dir.join("rsync-up.bin")))
        .output()
        .unwrap()
        .into();
    out.ok();
    assert_eq!(sha256(&dir.join("rsync-up.bin")), want);

    // sftp sessions record byte counts, not contents.
    let sessions: serde_json::Value =
        serde_json::from_str(b.postern.cli(&["sessions", "list", "--json"]).ok()).unwrap();
    let first = &sessions[0]["recordings"][0]["path"];
    let cast = std::fs::read_to_string(first.as_str().unwrap()).unwrap();
    assert!(
        cast.contains("subsystem sftp"),
        "{}",
        &cast[..cast.len().min(400)]
    );
    assert!(cast.contains("bytes from client"), "byte counts recorded");
    assert!(cast.len() < 100_000, "file contents are not recorded");
}

#[test]
fn file_transfer_can_be_turned_off() {
    let b = Bastion::start_with_role(&["--file-transfer", "false"]);
    let src = b.postern.write("small.txt", "hello");
    let out: Out = b
        .ssh_command("scp")
        .args(["-q", "-P", &b.postern.ssh.port().to_string()])
        .arg(&src)
        .arg(format!(
            "{}@127.0.0.1:/tmp/never-written-{}",
            b.dest(),
            std::process::id()
        ))
        .output()
        .unwrap()
        .into();
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("file transfer (sftp, scp, rsync) is not allowed by your roles"),
        "{}",
        out.stderr
    );
    // Shell commands still work.
    assert_eq!(b.ssh(&b.dest(), "echo ok").ok(), "ok\n");
}

fn stdio_forward(b: &Bastion, port: u16) -> Out {
    b.ssh_command("ssh")
        .args([
            "-p",
            &b.postern.ssh.port().to_string(),
            "-W",
            &format!("127.0.0.1:{port}"),
        ])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

#[test]
fn port_forwarding_only_when_the_role_allows_it() {
    let b = Bastion::start();
    let out = stdio_forward(&b, b.sshd.port);
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains("administratively prohibited"),
        "{}",
        out.stderr
    );
    let denied = b.postern.cli(&["audit", "search", "--type", "access.deny"]);
    assert!(denied.ok().contains("port forwarding not allowed"));

    b.postern
        .cli(&["admin", "role", "set", "dev", "--port-forwarding", "true"])
        .ok();
    // `ssh -W` rides a direct-tcpip channel: the target's own banner comes back.
    let out = stdio_forward(&b, b.sshd.port);
    assert!(
        out.stdout.starts_with("SSH-2.0-OpenSSH"),
        "{out:?}\n{}",
        b.postern.log()
    );
    let s = ended_session(&b);
    let cast = std::fs::read_to_string(s["recordings"][0]["path"].as_str().unwrap()).unwrap();
    assert!(
        cast.contains(&format!("direct-tcpip 127.0.0.1:{}", b.sshd.port)),
        "{cast}"
    );
    assert!(cast.contains("bytes to client"), "{cast}");
}

/// Starts `ssh -tt` through postern with stdin held open; returns the child.
pub fn open_shell(b: &Bastion) -> std::process::Child {
    // Sessions from before may still be closing: only a new one counts.
    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = b.postern.cli(args);
        serde_json::from_str::<serde_json::Value>(out.ok())
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let before: Vec<serde_json::Value> = list(&["sessions", "list", "--json"])
        .into_iter()
        .map(|s| s["id"].clone())
        .collect();
    let mut child = b
        .ssh_command("ssh")
        .args(["-tt", "-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until postern lists it as active with its shell channel recording.
    for _ in 0..100 {
        if list(&["sessions", "list", "--active", "--json"])
            .iter()
            .any(|s| !before.contains(&s["id"]) && !s["recordings"].as_array().unwrap().is_empty())
        {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("session never became active; log:\n{}", b.postern.log());
}

/// `ssh … 'sleep 30; echo never'` through postern offering only `key`, started once the
/// session is indexed (`session.start` events reach `sessions`).
pub fn sleeping_session(
    b: &Bastion,
    key: &std::path::Path,
    sessions: usize,
) -> std::process::Child {
    let child = b
        .ssh_command_with_key("ssh", key)
        .args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("sleep 30; echo never")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..150 {
        if b.postern.events("session.start").len() >= sessions {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child
}

pub fn wait_child(mut child: std::process::Child) -> Out {
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap().into();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("ssh did not exit: {:?}", child.wait_with_output().unwrap());
}

#[test]
fn an_admin_kills_a_live_session_from_another_process() {
    let b = Bastion::start();
    let child = open_shell(&b);
    let s = only_session(&b);
    let id = s["id"].as_str().unwrap();
    let out = b.postern.cli(&["sessions", "kill", id]);
    assert_eq!(out.ok().trim(), format!("session {id} ended (killed)"));
    let client = wait_child(child);
    assert!(
        client.stderr.contains("an admin ended this session"),
        "{client:?}"
    );
    let s = only_session(&b);
    assert_eq!(s["end_reason"], "killed");
    assert_eq!(s["recordings"][0]["sha256"].as_str().unwrap().len(), 64);
    // Killing it again says so.
    assert!(
        b.postern
            .cli(&["sessions", "kill", id])
            .fails(2)
            .contains("already ended")
    );
    assert!(!b.postern.events("session.kill").is_empty());
}

#[test]
fn shutdown_ends_sessions_with_a_message_and_finalises_recordings() {
    let mut b = Bastion::start();
    let child = open_shell(&b);
    let status = b.postern.stop();
    assert_eq!(status.code(), Some(0), "{}", b.postern.log());
    let client = wait_child(child);
    assert!(
        client.stderr.contains("postern is shutting down"),
        "{client:?}"
    );
    let s = only_session(&b);
    assert_eq!(s["end_reason"], "shutdown");
    assert_eq!(s["recordings"][0]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn a_session_that_cannot_be_recorded_does_not_run() {
    let b = Bastion::start();
    // Something that is not a directory where recordings go (serve made the directory
    // at start: it is replaced behind its back).
    let dir = b.postern.data_dir().join("recordings");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let out = b.ssh(&b.dest(), "echo should-not-run");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr
            .contains("cannot be recorded, so it is not allowed to run"),
        "{}",
        out.stderr
    );
    assert!(!b.postern.events("session.recording_failed").is_empty());
}

#[test]
fn a_stalled_download_does_not_freeze_another_channel() {
    let b = Bastion::start();
    let sock = b.postern.root().join("mux.sock");
    let port = b.postern.ssh.port().to_string();
    let ctl = format!("ControlPath={}", sock.display());
    // Channel 1: a large download whose reader never reads (stdout is a pipe we ignore).
    let mut master = b
        .ssh_command("ssh")
        .args(["-p", &port, "-o", "ControlMaster=yes", "-o", &ctl])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("head -c 200000000 /dev/zero")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Channel 2 on the same connection: interactive echo must still come back.
    let mut second = b
        .ssh_command("ssh")
        .args(["-p", &port, "-o", "ControlMaster=no", "-o", &ctl])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = second.stdin.take().unwrap();
        stdin.write_all(b"typed while downloading\n").unwrap();
    }
    let out = wait_child(second);
    assert_eq!(out.stdout, "typed while downloading\n", "{out:?}");
    let _ = master.kill();
    let _ = master.wait();
}

#[test]
fn exit_signals_env_allowlist_and_vanishing_clients_behave_like_openssh() {
    let b = Bastion::start();
    // A signal death: the same exit code and message as straight to sshd.
    let direct = Sshd::start().ssh(&b.login, "kill -9 $$");
    let via = b.ssh(&b.dest(), "kill -9 $$");
    assert_eq!(via.code, direct.code, "direct {direct:?} via {via:?}");
    assert_eq!(via.stdout, direct.stdout);

    // Only LANG, LC_* and TERM reach the target.
    let out: Out = b
        .ssh_command("ssh")
        .args([
            "-p",
            &b.postern.ssh.port().to_string(),
            "-o",
            "SendEnv=LANG LC_TIME POSTERN_TEST_X",
        ])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("echo \"[$LANG][$LC_TIME][$POSTERN_TEST_X]\"")
        .env("LANG", "C.UTF-8")
        .env("LC_TIME", "C")
        .env("POSTERN_TEST_X", "leak")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.ok(), "[C.UTF-8][C][]\n");

    // A client that vanishes: the session ends, its recording is finalised.
    let mut child = open_shell(&b);
    child.kill().unwrap();
    let _ = child.wait();
    let mut ended = serde_json::Value::Null;
    for _ in 0..100 {
        ended = only_session(&b);
        if !ended["end_reason"].is_null() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !ended["end_reason"].is_null(),
        "session never ended: {ended}\n{}",
        b.postern.log()
    );
    assert_eq!(
        ended["recordings"][0]["sha256"]
            .as_str()
            .unwrap_or("")
            .len(),
        64,
        "{ended}"
    );
}

#[test]
fn max_session_ttl_warns_then_ends_the_session() {
    let b = Bastion::start_with_role(&["--max-session-ttl", "5s"]);
    // expiry_warning defaults to 1m, longer than the TTL: the warning comes at once.
    let out = b.ssh(&b.dest(), "sleep 30; echo never");
    assert_ne!(out.code, 0);
    assert!(!out.stdout.contains("never"));
    assert!(
        out.stderr.contains("postern: this session ends in"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("reached its time limit (5s, max_session_ttl)"),
        "{}",
        out.stderr
    );
    let s = ended_session(&b);
    assert_eq!(s["end_reason"], "expired");
    assert!(!b.postern.events("session.expired").is_empty());
}

#[test]
fn a_live_interactive_session_is_warned_then_cut_at_its_deadline() {
    let b = Bastion::start_with_role(&["--max-session-ttl", "4s"]);
    let shell = open_shell(&b);
    let out = wait_child(shell);
    let warned = out.stderr.find("this session ends in");
    let ended = out
        .stderr
        .find("reached its time limit (4s, max_session_ttl)");
    assert!(
        matches!((warned, ended), (Some(w), Some(e)) if w < e),
        "warning first, then the end: {out:?}"
    );
    // The deadline holds to within two seconds.
    let s = ended_session(&b);
    assert_eq!(s["end_reason"], "expired");
    let lasted = s["ended_ms"].as_i64().unwrap() - s["started_ms"].as_i64().unwrap();
    assert!((lasted - 4000).abs() <= 2000, "lasted {lasted} ms");
}

#[test]
fn idle_sessions_end_and_locks_reach_live_sessions() {
    let b = Bastion::start_with_role(&["--idle-timeout", "2s"]);
    let out = b.ssh(&b.dest(), "sleep 30");
    assert!(
        out.stderr.contains("no input for 2s (idle_timeout)"),
        "{}",
        out.stderr
    );
    assert_eq!(ended_session(&b)["end_reason"], "idle");

    // A lock applies to a session already running.
    b.postern
        .cli(&["admin", "role", "set", "dev", "--idle-timeout", "30m"])
        .ok();
    let child = open_shell(&b);
    b.postern.cli(&["admin", "user", "lock", "alice"]).ok();
    let client = wait_child(child);
    assert!(
        client
            .stderr
            .contains("access was withdrawn: the user is locked"),
        "{client:?}"
    );
    assert_eq!(ended_session(&b)["end_reason"], "revoked");
}

#[test]
fn doctor_checks_a_target_and_says_what_to_fix() {
    let b = Bastion::start();
    let out = b.postern.cli(&["doctor", "t1"]);
    let text = out.ok();
    assert!(text.contains("ok    t1 answers at 127.0.0.1:"), "{text}");
    assert!(
        text.contains("ok    host key is the pinned one (SHA256:"),
        "{text}"
    );
    assert!(
        text.contains(&format!("ok    login `{}` with a certificate", b.login)),
        "{text}"
    );
    // A target whose sshd does not trust postern's target CA.
    let plain = Sshd::start_with(Options {
        authorized_key: false,
        trusted_ca: None,
        config: "",
    });
    b.postern
        .cli(&[
            "admin",
            "target",
            "add",
            "t4",
            "--ssh",
            &format!("127.0.0.1:{}", plain.port),
            "--host-key",
            &plain.host_key,
            "--label",
            "env=test",
        ])
        .ok();
    let out = b.postern.cli(&["doctor", "t4"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("FAIL  login `"), "{out:?}");
    assert!(out.stdout.contains("TrustedUserCAKeys"), "{out:?}");
    // A wrong pinned key, and a target that does not answer.
    let other = new_key(&b.postern, "impostor");
    b.postern
        .cli(&["admin", "target", "set", "t4", "--host-key", &other])
        .ok();
    let out = b.postern.cli(&["doctor", "t4"]);
    assert!(out.stdout.contains("is not the pinned"), "{out:?}");
    assert!(out.stdout.contains("--scan-host-key"), "{out:?}");
    let closed = crate::harness::free_port();
    b.postern
        .cli(&[
            "admin",
            "target",
            "set",
            "t4",
            "--ssh",
            &format!("127.0.0.1:{closed}"),
        ])
        .ok();
    let out = b.postern.cli(&["doctor", "t4"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("FAIL  t4 answers at"), "{out:?}");
    let checked = b.postern.events("target.checked");
    assert_eq!(checked.len(), 4);
    assert_eq!(checked[0]["result"], "success");
    assert_eq!(checked[3]["result"], "failure");
}
