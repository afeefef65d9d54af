//! The developer's side of postern: `postern login`, `postern status`, `postern db login`.
//! Everything it keeps lives in `~/.postern/` (0700; files 0600):
//!
//! - `id_ed25519`, `id_ed25519.pub`, `id_ed25519-cert.pub`: the key made at login and
//!   its certificate, named as OpenSSH expects so `ssh -i ~/.postern/id_ed25519` works;
//! - `profile.json`: server, user, roles, API token and when they expire;
//! - `ca.crt`: the CA that signs postern's TLS certificate (for `sslmode=verify-full`);
//! - `known_servers`: `host:port SHA256:…` for servers trusted on first use.

pub mod https;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::credentials::{create_dir_private, replace_private};

/// What `postern login` remembers for the commands after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub server: String,
    pub user: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub token: String,
    /// Unix seconds: the certificate's and the token's end.
    pub valid_before: u64,
    pub serial: String,
    pub ssh_port: u16,
    pub postgres_port: u16,
    /// `ca` when `ca.crt` is the trust anchor, `pin` when `known_servers` is.
    pub trust: String,
}

/// `~/.postern`, from `$HOME`.
pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn locate() -> Result<Home, String> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or("HOME is not set; postern keeps its credentials in $HOME/.postern")?;
        Ok(Home {
            dir: Path::new(&home).join(".postern"),
        })
    }

    pub fn create(&self) -> Result<(), String> {
        create_dir_private(&self.dir).map_err(|e| e.to_string())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, data: &[u8]) -> Result<PathBuf, String> {
        let p = self.path(name);
        replace_private(&p, data).map_err(|e| e.to_string())?;
        Ok(p)
    }

    pub fn profile(&self) -> Result<Profile, String> {
        let p = self.path("profile.json");
        let text = std::fs::read_to_string(&p).map_err(|_| {
            "not logged in; run postern login --server https://HOST:8443 --user NAME".to_string()
        })?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is damaged ({e}); run postern login again", p.display()))
    }

    pub fn save_profile(&self, p: &Profile) -> Result<(), String> {
        let text = serde_json::to_string_pretty(p).map_err(|e| e.to_string())?;
        self.write("profile.json", format!("{text}\n").as_bytes())
            .map(|_| ())
    }

    /// The pinned fingerprint for `authority`, from `known_servers`.
    pub fn pinned(&self, authority: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path("known_servers")).ok()?;
        text.lines().find_map(|l| {
            let (a, fp) = l.trim().split_once(' ')?;
            (a == authority).then(|| fp.trim().to_string())
        })
    }

    pub fn pin(&self, authority: &str, fp: &str) -> Result<(), String> {
        let old = std::fs::read_to_string(self.path("known_servers")).unwrap_or_default();
        let mut text: String = old
            .lines()
            .filter(|l| l.split_once(' ').map(|(a, _)| a) != Some(authority))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("{authority} {fp}\n"));
        self.write("known_servers", text.as_bytes()).map(|_| ())
    }
}

/// Replaces (or adds) the `.pgpass` line for host:port:database:user; other lines stay.
pub fn pgpass_upsert(
    old: &str,
    host: &str,
    port: u16,
    db: &str,
    user: &str,
    secret: &str,
) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let key = format!("{}:{}:{}:{}:", esc(host), port, esc(db), esc(user));
    let mut out: String = old
        .lines()
        .filter(|l| !l.starts_with(&key))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("{key}{}\n", esc(secret)));
    out
}

/// Replaces (or adds) one `[service]` section of a `pg_service.conf`; others stay.
pub fn service_upsert(old: &str, service: &str, body: &[(&str, String)]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in old.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            skipping = t[1..t.len() - 1].trim() == service;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&format!("[{service}]\n"));
    for (k, v) in body {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_replaces_its_own_line_only() {
        let old = "other:5432:*:bob:pw\nh:6432:db1/x:alice:old\n";
        let new = pgpass_upsert(old, "h", 6432, "db1/x", "alice", "pgt_new");
        assert_eq!(new, "other:5432:*:bob:pw\nh:6432:db1/x:alice:pgt_new\n");
        assert_eq!(
            pgpass_upsert("", "h", 1, "a:b", "u\\", "t"),
            "h:1:a\\:b:u\\\\:t\n"
        );
    }

    #[test]
    fn service_file_replaces_one_section() {
        let old = "[a]\nhost=x\n\n[db1]\nhost=old\nport=1\n\n[c]\nhost=y\n";
        let new = service_upsert(old, "db1", &[("host", "h".into()), ("port", "2".into())]);
        assert_eq!(new, "[a]\nhost=x\n\n[c]\nhost=y\n\n[db1]\nhost=h\nport=2\n");
        assert_eq!(service_upsert("", "s", &[("k", "v".into())]), "[s]\nk=v\n");
    }
}
