//! Replicas on one PostgreSQL store share their keys: when the store opens, the data
//! dir's key files are made the store's (sealed there with the master key; the first
//! replica's set is the one everyone uses). The master key itself never enters the store:
//! every replica brings it, as `keys/master.key` or `POSTERN_MASTER_KEY`.

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tracing::warn;

use crate::config::Config;
use crate::credentials::secrets::MasterKey;
use crate::credentials::{self, KeyStore};
use crate::store::{Opened, Store};

/// The files replicas share, relative to the data dir. A TLS server certificate is not
/// among them: each replica issues its own from the shared TLS CA, which clients trust.
pub const SHARED: &[&str] = &[
    "keys/ssh_host_ed25519_key",
    "keys/ssh_host_ed25519_key.pub",
    "keys/user_ca",
    "keys/user_ca.pub",
    "keys/target_ca",
    "keys/target_ca.pub",
    "keys/audit_ed25519",
    "keys/audit_ed25519.pub",
    "tls/ca.key",
    "tls/ca.crt",
];

/// Files a rotation adds for a while (`credentials::rotate`): shared when the store has
/// them, removed here when it no longer does. Only `admin rotate-keys` puts them in the
/// store, so a replica that missed a retirement cannot bring them back.
pub const SHARED_WHILE_ROTATING: &[&str] = &[
    crate::credentials::rotate::USER_CA_PREVIOUS,
    crate::credentials::rotate::TARGET_CA_NEXT,
    crate::credentials::rotate::TARGET_CA_NEXT_PUB,
    crate::credentials::rotate::TARGET_CA_PREVIOUS,
    crate::credentials::rotate::AUDIT_KEY_PREVIOUS,
    crate::credentials::rotate::HOST_KEY_NEXT,
    crate::credentials::rotate::HOST_KEY_NEXT_PUB,
    crate::credentials::rotate::HOST_KEY_PREVIOUS,
    crate::credentials::rotate::TLS_CA_NEXT_KEY,
    crate::credentials::rotate::TLS_CA_NEXT,
    crate::credentials::rotate::TLS_CA_PREVIOUS,
];

fn purpose(rel: &str) -> String {
    format!("shared-key:{rel}")
}

/// Opens the store for `serve` or a local command, `keys` loaded from the data dir. On a
/// PostgreSQL store the data dir's key files first become the store's shared set, and
/// when that replaced any of them `keys` is loaded again (`renew`: `serve` issues its TLS
/// server certificate from a shared CA that replaced its own).
pub async fn open(config: &Config, keys: &mut KeyStore, renew: bool) -> anyhow::Result<Store> {
    let dir = &config.data_dir;
    let opened = Store::connect(dir, &config.store.url)
        .await
        .with_context(|| format!("data dir {}", dir.display()))?;
    if !config.store.url.is_empty() && share(config, &keys.master_key, &opened).await? {
        *keys = KeyStore::load(dir, &config.tls.hostnames, renew)?.keys;
    }
    let signer = crate::audit::chain::Signer::new(&keys.audit_key)?;
    Ok(opened.start(Some(std::sync::Arc::new(signer))))
}

/// Makes the data dir's shared key files the store's (adding them when the store has
/// none); true when the store's replaced any file here.
pub async fn share(config: &Config, master: &MasterKey, store: &Opened) -> anyhow::Result<bool> {
    let dir = &config.data_dir;
    let mut local = Vec::with_capacity(SHARED.len());
    for rel in SHARED {
        let bytes = std::fs::read(dir.join(rel)).with_context(|| format!("reading {rel}"))?;
        local.push((rel.to_string(), master.seal(&purpose(rel), &bytes)?));
    }
    let stored = store.share_keys(&local).await?;
    let (mut replaced, mut new_tls_ca) = (false, false);
    for rel in SHARED_WHILE_ROTATING {
        let path = dir.join(rel);
        if path.exists() && !stored.iter().any(|(name, _)| name == rel) {
            std::fs::remove_file(&path).with_context(|| format!("removing {rel}"))?;
            warn!(file = %rel, "removed: the replicas of this store no longer share it");
            replaced = true;
        }
    }
    for (rel, sealed) in &stored {
        // A name a newer version shares is not this version's business.
        if !SHARED.contains(&rel.as_str()) && !SHARED_WHILE_ROTATING.contains(&rel.as_str()) {
            continue;
        }
        let bytes = master.open(&purpose(rel), sealed).map_err(|_| {
            anyhow!(
                "the store's shared key {rel} does not open with this data dir's master key ({}): every replica needs the same master key; copy keys/master.key from a replica already serving this store, or set POSTERN_MASTER_KEY to it",
                dir.join("keys/master.key").display()
            )
        })?;
        let path = dir.join(rel);
        if std::fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
            continue;
        }
        if rel.ends_with(".pub") || rel.ends_with(".crt") {
            credentials::replace_public(&path, &bytes)?;
        } else {
            credentials::replace_private(&path, &bytes)?;
        }
        warn!(file = %rel, "replaced by the key the replicas of this store share");
        replaced = true;
        new_tls_ca |= rel == crate::credentials::rotate::TLS_CA;
    }
    if new_tls_ca {
        // Issued by the replaced CA: `serve` issues a new one from the shared CA.
        for f in ["tls/server.crt", "tls/server.key"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    Ok(replaced)
}

/// Puts the files a rotation `written` into the store's shared set and takes out those
/// it `removed`: every replica uses them from its next start.
pub async fn publish(
    config: &Config,
    master: &MasterKey,
    store: &Store,
    written: &[&str],
    removed: &[&str],
) -> anyhow::Result<()> {
    if config.store.url.is_empty() {
        return Ok(());
    }
    let dir = &config.data_dir;
    let mut put = Vec::with_capacity(written.len());
    for rel in written {
        let bytes = std::fs::read(dir.join(rel)).with_context(|| format!("reading {rel}"))?;
        put.push((rel.to_string(), master.seal(&purpose(rel), &bytes)?));
    }
    let remove: Vec<String> = removed.iter().map(|r| r.to_string()).collect();
    store.replace_shared_keys(&put, &remove).await?;
    Ok(())
}

/// `POSTERN_MASTER_KEY` (32 bytes in base64) becomes `keys/master.key` when the data dir
/// has none; a different one already there is an error, never silently replaced.
pub fn master_from_env(config: &Config) -> anyhow::Result<()> {
    if config.store.url.is_empty() {
        return Ok(());
    }
    let Ok(text) = std::env::var("POSTERN_MASTER_KEY") else {
        return Ok(());
    };
    let text = text.trim();
    if B64.decode(text).map(|b| b.len()) != Ok(32) {
        bail!("POSTERN_MASTER_KEY is not 32 bytes in base64 (the contents of a keys/master.key)");
    }
    let keys = config.data_dir.join("keys");
    credentials::create_dir_private(&config.data_dir)?;
    credentials::create_dir_private(&keys)?;
    let path = keys.join("master.key");
    match std::fs::read_to_string(&path) {
        Ok(existing) if existing.trim() == text => Ok(()),
        Ok(_) => bail!(
            "POSTERN_MASTER_KEY differs from {}; unset it, or remove that file if the data dir's secrets may be lost",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            credentials::write_private(&path, format!("{text}\n").as_bytes())?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
