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
    assert_eq!(u["Install"]["WantedBy"], ["multi-user.target"]);
}
