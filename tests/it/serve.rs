//! `postern serve`: first start, restart, refusal of readable private keys, signals,
//! listen address overrides, config checking.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::harness::postern::{BIN, Postern};
use crate::harness::{Out, free_port};

const PRIVATE: &[&str] = &[
    "keys/ssh_host_ed25519_key",
    "keys/user_ca",
    "keys/target_ca",
    "keys/master.key",
    "tls/ca.key",
    "tls/server.key",
    "postern.db",
];

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_creates_keys_then_restart_reuses_them() {
    let mut p = Postern::new().start();
    let out = p.stdout.join("\n");
    assert!(out.contains("postern initialised its data dir"), "{out}");
    assert!(out.contains("Next steps"), "{out}");
    assert!(out.contains("admin user add alice"), "{out}");
    for step in [
        "--scan-host-key",
        "admin target-ca",
        "TrustedUserCAKeys",
        "set-credential",
    ] {
        assert!(
            out.contains(step),
            "the first-start steps lack {step}:\n{out}"
        );
    }
    // The steps run as printed (the ones that need no target).
    for line in out.lines().map(str::trim) {
        let cmd = line.split_once(": ").map_or(line, |(_, c)| c).trim();
        let runs = [
            "admin role add",
            "admin user add alice --role",
            "access check",
        ];
        if !(cmd.starts_with("postern --data-dir") && runs.iter().any(|r| cmd.contains(r))) {
            continue;
        }
        let sh = cmd.replacen("postern", BIN, 1);
        let done = std::process::Command::new("sh")
            .arg("-c")
            .arg(&sh)
            .output()
            .unwrap();
        // access check names a target not added yet (an error, 2); the rest succeed.
        let want = if cmd.contains("access check") { 2 } else { 0 };
        assert!(
            done.status.code() == Some(0) || done.status.code() == Some(want),
            "{cmd}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    assert!(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{BIN} --data-dir {} admin user show alice",
                p.data_dir().display()
            ))
            .output()
            .unwrap()
            .status
            .success()
    );
    assert!(
        out.contains(&format!("postern ready: ssh {}", p.ssh)),
        "{out}"
    );
    let d = p.data_dir();
    assert_eq!(mode(&d), 0o700);
    for f in PRIVATE {
        assert_eq!(mode(&d.join(f)), 0o600, "{f}");
    }
    let host_key = std::fs::read(d.join("keys/ssh_host_ed25519_key")).unwrap();
    let ca_pem = std::fs::read_to_string(d.join("tls/ca.crt")).unwrap();
    assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    // The listeners are really bound.
    std::net::TcpStream::connect(p.ssh).expect("ssh listener");
    std::net::TcpStream::connect(p.pg).expect("pg listener");
    std::net::TcpStream::connect(p.api).expect("api listener");
    let status = p.stop();
    assert_eq!(status.code(), Some(0), "log:\n{}", p.log());

    // Second start: nothing regenerated, no first-start text.
    p.stdout.clear();
    let cmd = p.serve_command();
    p.spawn(cmd);
    let out = p.stdout.join("\n");
    assert!(!out.contains("initialised"), "{out}");
    assert_eq!(
        std::fs::read(d.join("keys/ssh_host_ed25519_key")).unwrap(),
        host_key
    );
    assert_eq!(
        std::fs::read_to_string(d.join("tls/ca.crt")).unwrap(),
        ca_pem
    );
    // SIGINT is as graceful as SIGTERM.
    let status = p.stop_with(libc::SIGINT, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    // Start and stop are on the audit record.
    let events = p.cli(&["audit", "search", "--type", "server"]);
    let text = events.ok();
    assert_eq!(text.matches("server.start").count(), 2, "{text}");
    assert_eq!(text.matches("server.stop").count(), 2, "{text}");
}

#[test]
fn refuses_a_private_key_readable_by_others() {
    let mut p = Postern::new().start();
    assert_eq!(p.stop().code(), Some(0));
    let key = p.data_dir().join("keys/user_ca");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out: Out = p.serve_command().output().unwrap().into();
    let err = out.fails(2);
    assert!(
        err.contains(&format!(
            "private file {} is readable by group or others (mode 0644)",
            key.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    // Admin commands refuse too: the same check guards every use of the data dir.
    let out = p.cli(&["admin", "user", "list"]);
    assert!(out.fails(2).contains("readable by group or others"));
}

#[test]
fn sigterm_during_idle_connections_still_exits_zero() {
    let mut p = Postern::new().start();
    // Open connections must not keep shutdown from finishing.
    let _a = std::net::TcpStream::connect(p.pg).unwrap();
    let _b = std::net::TcpStream::connect(p.api).unwrap();
    let status = p.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "signal {:?}; log:\n{}",
        status.signal(),
        p.log()
    );
}

#[test]
fn listen_addresses_come_from_env_and_a_taken_port_is_a_clear_error() {
    let p = Postern::new();
    let ssh_port = free_port();
    // Environment instead of flags.
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(p.data_dir())
        .env("POSTERN_SSH_LISTEN", format!("127.0.0.1:{ssh_port}"))
        .env("POSTERN_PG_LISTEN", p.pg.to_string())
        .env("POSTERN_API_LISTEN", p.api.to_string());
    let mut p = p;
    p.spawn(cmd);
    assert!(p.stdout.join("\n").contains(&format!(
        "postern ready: ssh 127.0.0.1:{ssh_port} postgres {}",
        p.pg
    )));

    // A second instance on the same ports fails and says which listener and flag.
    let other = Postern::new();
    let out: Out = std::process::Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(other.data_dir())
        .args(["--ssh-listen", &format!("127.0.0.1:{ssh_port}")])
        .args(["--pg-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .output()
        .unwrap()
        .into();
    let err = out.fails(2);
    assert!(
        err.contains(&format!("cannot listen for SSH on 127.0.0.1:{ssh_port}")),
        "{err}"
    );
    assert!(err.contains("--ssh-listen"), "{err}");
    assert_eq!(p.stop().code(), Some(0));
}

#[test]
fn config_file_sets_data_dir_and_listeners_and_check_config_validates() {
    let p = Postern::new();
    let cfg = p.write(
        "postern.toml",
        &format!(
            "data_dir = \"{}\"\nshutdown_grace = \"2s\"\n[ssh]\nlisten = \"{}\"\n[postgres]\nlisten = \"{}\"\n[api]\nlisten = \"{}\"\n",
            p.data_dir().display(),
            p.ssh,
            p.pg,
            p.api
        ),
    );
    let out: Out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap()
        .into();
    assert!(out.ok().contains(&format!("ssh {}", p.ssh)));

    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--config"]).arg(&cfg);
    let mut p = p;
    p.spawn(cmd);
    assert!(p.data_dir().join("postern.db").exists());
    assert_eq!(p.stop().code(), Some(0));

    // The shipped example is valid as it is.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/postern.toml");
    let out: Out = std::process::Command::new(BIN)
        .args(["check-config", "--config", example])
        .output()
        .unwrap()
        .into();
    assert!(out.ok().contains(": OK"));
}

#[test]
fn broken_config_files_are_rejected_with_file_line_and_key() {
    let p = Postern::new();
    let check = |name: &str, src: &str, expect: &str| {
        let path = p.write(name, src);
        let out: Out = std::process::Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap()
            .into();
        let err = out.fails(2);
        let want = format!("{}:{expect}", path.display());
        assert!(err.contains(&want), "{name}: want {want:?} in {err:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    };
    check(
        "unknown.toml",
        "[ssh]\nlisten = \"127.0.0.1:1\"\nport = 22\n",
        "3:1: unknown field `port`",
    );
    check(
        "duration.toml",
        "\n\nshutdown_grace = \"2 parsecs\"\n",
        "3:18: invalid duration `2 parsecs`",
    );
    check(
        "addr.toml",
        "[api]\nlisten = \"localhost\"\n",
        "2:10: invalid socket address",
    );
    check("syntax.toml", "data_dir = \n", "1:12:");
    check(
        "type.toml",
        "max_connections = \"many\"\n",
        "1:19: invalid type",
    );
    // A missing file names itself.
    let out: Out = std::process::Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent/postern.toml"])
        .output()
        .unwrap()
        .into();
    assert!(
        out.fails(2)
            .contains("cannot read config file /nonexistent/postern.toml")
    );
}

#[test]
fn refuses_open_directories_linked_keys_and_keeps_exports_private() {
    let mut p = Postern::new().start();
    assert_eq!(p.stop().code(), Some(0));
    let d = p.data_dir();
    // A data dir (or keys, tls) others can enter.
    for dir in [d.clone(), d.join("keys"), d.join("tls")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out: Out = p.serve_command().output().unwrap().into();
        let err = out.fails(2);
        assert!(
            err.contains(&format!(
                "directory {} is open to group or others (mode 0755)",
                dir.display()
            )) && err.contains(&format!("chmod 700 {}", dir.display())),
            "{err}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // A store others can read.
    let db = d.join("postern.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = p.cli(&["admin", "user", "list"]);
    assert!(out.fails(2).contains("chmod 600"), "{}", out.stderr);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A key that is a symbolic link (to a file that would pass every other check).
    let key = d.join("keys/user_ca");
    let moved = p.root().join("user_ca.elsewhere");
    std::fs::rename(&key, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &key).unwrap();
    let out: Out = p.serve_command().output().unwrap().into();
    let err = out.fails(2);
    assert!(
        err.contains(&format!(
            "private file {} is a symbolic link",
            key.display()
        )),
        "{err}"
    );
    std::fs::remove_file(&key).unwrap();
    std::fs::rename(&moved, &key).unwrap();
    // Exports are created 0600 and never through a planted link.
    let export = p.root().join("audit.jsonl");
    p.cli(&["audit", "export", "-o", export.to_str().unwrap()])
        .ok();
    assert_eq!(mode(&export), 0o600);
    let planted = p.root().join("planted");
    let victim = p.root().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let out = p.cli(&["audit", "export", "-o", planted.to_str().unwrap()]);
    assert!(out.fails(2).contains("symbolic link"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    // A data dir that belongs to someone else (only root can make one to test with).
    if crate::harness::is_root() {
        std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
        let out: Out = p.serve_command().output().unwrap().into();
        let err = out.fails(2);
        assert!(err.contains("belongs to uid 65534"), "{err}");
        std::os::unix::fs::chown(&d, Some(0), None).unwrap();
    }
    // Put right, it starts.
    let cmd = p.serve_command();
    p.spawn(cmd);
    assert_eq!(p.stop().code(), Some(0));
}

/// A low soft limit on open files (1024 is common) would refuse connections long before
/// the listeners' budgets: serve raises it to the hard limit.
#[test]
fn serve_raises_its_open_files_limit() {
    let mut p = Postern::new();
    let serve = p.serve_command();
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=256:")
        .arg(serve.get_program())
        .args(serve.get_args());
    for (k, v) in serve.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    p.spawn(cmd);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.pid().unwrap())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files SOFT HARD files"
    assert_eq!(fields[3], fields[4], "{line}");
    assert_ne!(fields[3], "256", "{line}");
    assert_eq!(p.stop().code(), Some(0));
}

#[test]
fn logs_can_be_json_lines_for_log_shippers() {
    let mut p = Postern::new();
    let mut cmd = p.serve_command();
    cmd.args(["--log-format", "json"]);
    p.spawn(cmd);
    p.stop();
    let log = p.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(log.contains("\"message\":\"created\""), "{log}");
    // A format it does not know is refused by name.
    let out = std::process::Command::new(BIN)
        .args(["serve", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: text, json"));
}
