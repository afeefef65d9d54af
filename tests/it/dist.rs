//! What ships beside the binary: the systemd unit in `dist/`. No systemd runs here, so
//! the unit is read as systemd would read it and checked against the binary it starts.

use std::collections::BTreeMap;
use std::process::Command;

use crate::harness::postern::BIN;

/// `[Section]` → key → values (a key may repeat).
fn unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

/// `config/postern.toml`, which the unit and the image install, passes `check-config`.
fn example_config_loads(root: &std::path::Path) {
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(root.join("config/postern.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_systemd_unit_is_hardened_and_starts_what_the_binary_has() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let u = unit(&std::fs::read_to_string(root.join("dist/postern.service")).unwrap());
    let service = &u["Service"];
    let one = |k: &str| -> &str {
        let v = service
            .get(k)
            .unwrap_or_else(|| panic!("[Service] {k} missing"));
        assert_eq!(v.len(), 1, "{k}: {v:?}");
        &v[0]
    };
    for (k, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("StateDirectory", "postern"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("KillSignal", "SIGTERM"),
        ("User", "postern"),
    ] {
        assert_eq!(one(k), want, "[Service] {k}");
    }
    // It runs `postern serve` on the state directory with the documented config, through
    // variables the binary reads.
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(exec, ["/usr/local/bin/postern", "serve"]);
    let env: BTreeMap<&str, &str> = service["Environment"]
        .iter()
        .map(|e| e.split_once('=').unwrap())
        .collect();
    assert_eq!(env["POSTERN_DATA_DIR"], "/var/lib/postern");
    assert_eq!(env["POSTERN_CONFIG"], "/etc/postern/postern.toml");
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for name in env.keys() {
        assert!(
            help.contains(&format!("env: {name}=")),
            "serve does not read {name}:\n{help}"
        );
    }
    // The config it names is the example the repository installs there, and it loads.
    example_config_loads(root);
    assert_eq!(u["Install"]["WantedBy"], ["multi-user.target"]);
}

#[test]
fn the_dockerfile_copies_what_exists_and_reads_its_config() {
    // No docker here: the file is read for what a build and a start would need.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    // Continuation lines joined, comments dropped.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let mut env = BTreeMap::new();
    let mut copied = BTreeMap::new();
    let mut health = None;
    let mut expose = Vec::new();
    for line in joined.lines().map(str::trim) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "COPY" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let (sources, dest) = parts.split_at(parts.len() - 1);
                for src in sources.iter().filter(|s| !s.starts_with("--")) {
                    if !rest.contains("--from=") {
                        assert!(root.join(src).exists(), "COPY {src}: no such path");
                    }
                    copied.insert(dest[0].to_string(), src.to_string());
                }
            }
            "ENV" => {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').unwrap();
                    env.insert(k.to_string(), v.to_string());
                }
            }
            "HEALTHCHECK" => health = Some(rest.to_string()),
            "EXPOSE" => expose.extend(rest.split_whitespace().map(str::to_string)),
            _ => {}
        }
    }
    // The config the image reads is the one it copies, and it loads.
    let config = &env["POSTERN_CONFIG"];
    assert_eq!(copied[config], "config/postern.toml");
    example_config_loads(root);
    // Every listener is exposed; the health check asks the API listener.
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    for var in [
        "POSTERN_SSH_LISTEN",
        "POSTERN_PG_LISTEN",
        "POSTERN_API_LISTEN",
    ] {
        assert!(
            help.contains(&format!("env: {var}=")),
            "serve does not read {var}"
        );
        let port = env[var].rsplit(':').next().unwrap().to_string();
        assert!(
            expose.contains(&port),
            "{var} port {port} not exposed: {expose:?}"
        );
    }
    let health = health.expect("a HEALTHCHECK");
    let api_port = env["POSTERN_API_LISTEN"].rsplit(':').next().unwrap();
    assert!(
        health.contains(&format!(":{api_port}/v1/health")),
        "{health}"
    );
    assert!(
        health.contains(&format!("{}/tls/ca.crt", env["POSTERN_DATA_DIR"])),
        "{health}"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_itself() {
    let dir = tempfile::tempdir().unwrap();
    // A broken config does not stand in their way.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[ssh\n").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("POSTERN_CONFIG", &bad)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F _postern"), "{bash}");
    for word in [
        "admin",
        "scan-host-key",
        "remove-rule",
        "sessions",
        "completions",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    assert!(run(&["completions", "zsh"]).starts_with("#compdef postern"));
    assert!(run(&["completions", "fish"]).contains("complete -c postern"));
    let page = run(&["man"]);
    assert!(page.contains(".TH postern 1"), "{page}");
    assert!(page.contains("Session\\-brokering bastion"), "{page}");
    run(&["man", "--dir", dir.path().join("man").to_str().unwrap()]);
    let set = std::fs::read_to_string(dir.path().join("man/postern-admin-target-set.1")).unwrap();
    assert!(set.contains("scan\\-host\\-key"), "{set}");
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}
