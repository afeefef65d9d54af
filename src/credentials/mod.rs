//! postern's own keys and certificates: made at first start, kept 0600 in the data dir.
//!
//! - `keys/ssh_host_ed25519_key`: the SSH listener's host key;
//! - `keys/user_ca`: signs developers' short-lived certificates;
//! - `keys/target_ca`: signs per-session certificates postern presents to SSH targets;
//! - `tls/ca.{crt,key}`, `tls/server.{crt,key}`: TLS for the PostgreSQL and HTTPS listeners;
//! - `keys/master.key`: encrypts secrets in the store (see [`secrets`]);
//! - `keys/audit_ed25519`: signs audit checkpoints (`.pub` verifies them offline).

pub mod audit_key;
pub mod error;
mod files;
pub mod password;
pub mod rotate;
pub mod scram;
pub mod secrets;
pub mod ssh_cert;
pub mod tls;
pub mod token;
pub mod totp;

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};

pub use error::CredentialError;
pub use files::{
    check_private, create_dir_private, open_private_append, replace_private, replace_public,
    write_private,
};
use secrets::MasterKey;

/// Every private file postern keeps, relative to the data dir.
pub const PRIVATE_FILES: &[&str] = &[
    "keys/ssh_host_ed25519_key",
    "keys/user_ca",
    "keys/target_ca",
    "keys/target_ca.next",
    "keys/ssh_host_ed25519_key.next",
    "keys/ssh_host_ed25519_key.previous",
    "keys/master.key",
    "keys/audit_ed25519",
    "keys/audit_ed25519.next",
    "tls/ca.key",
    "tls/ca.next.key",
    "tls/server.key",
];

pub struct KeyStore {
    pub host_key: PrivateKey,
    /// Host keys a rotation announces beside it (the next one, or the one before it),
    /// which OpenSSH clients with `UpdateHostKeys` learn (`rotate`).
    pub host_key_announced: Vec<PrivateKey>,
    pub user_ca: PrivateKey,
    /// The user CA before the last rotation, still trusted (`rotate`).
    pub user_ca_previous: Option<russh::keys::PublicKey>,
    pub target_ca: PrivateKey,
    /// A staged target CA and the one before the last rotation, printed for targets.
    pub target_ca_next: Option<russh::keys::PublicKey>,
    pub target_ca_previous: Option<russh::keys::PublicKey>,
    /// Signs audit checkpoints; its public half verifies them offline.
    pub audit_key: PrivateKey,
    pub master_key: MasterKey,
    pub tls: tls::TlsFiles,
}

/// What `load_or_create` did, so `serve` can tell the admin.
pub struct Loaded {
    pub keys: KeyStore,
    pub created: Vec<PathBuf>,
    /// The TLS server certificate was issued again (by the same CA).
    pub reissued: Option<tls::Reissued>,
}

/// HMAC-SHA-256 of `parts` (each length-prefixed, so no two lists collide) under a key
/// made for this process and never stored: an identifier for a secret (a cache or map
/// key) that says nothing about it outside this process.
pub fn process_mac(parts: &[&[u8]]) -> [u8; 32] {
    use aws_lc_rs::hmac;
    static KEY: std::sync::OnceLock<hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        // Without randomness the key is zero: identifiers still never leave the process.
        let k = random_bytes::<32>().unwrap_or([0u8; 32]);
        hmac::Key::new(hmac::HMAC_SHA256, &k)
    });
    let mut ctx = hmac::Context::with_key(key);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(ctx.sign().as_ref());
    id
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CredentialError> {
    let mut buf = [0u8; N];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| CredentialError::Random)?;
    Ok(buf)
}

pub fn new_ed25519(comment: &str) -> Result<PrivateKey, CredentialError> {
    let seed = random_bytes::<32>()?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    Ok(key)
}

/// Loads an Ed25519 key, or makes and saves one (with its `.pub` beside it).
fn ssh_key(
    dir: &Path,
    rel: &str,
    comment: &str,
    created: &mut Vec<PathBuf>,
) -> Result<PrivateKey, CredentialError> {
    let path = dir.join(rel);
    if path.exists() {
        let text = files::read_private(&path)?;
        return PrivateKey::from_openssh(text.trim()).map_err(|e| CredentialError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        });
    }
    let key = new_ed25519(comment)?;
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| CredentialError::Encode(e.to_string()))?;
    write_private(&path, text.as_bytes())?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| CredentialError::Encode(e.to_string()))?;
    files::write_public(
        &path.with_extension("pub"),
        format!("{public}\n").as_bytes(),
    )?;
    created.push(path);
    Ok(key)
}

impl KeyStore {
    /// Checks the permissions of every private file that exists, then loads what is
    /// there and makes what is missing. Refuses group- or world-readable private files.
    pub fn load_or_create(
        data_dir: &Path,
        hostnames: &[String],
    ) -> Result<Loaded, CredentialError> {
        Self::load(data_dir, hostnames, false)
    }

    /// As `load_or_create`; with `renew` (`serve` at its start), a TLS server certificate
    /// that is missing or not issued for the configured hostnames is issued again.
    pub fn load(
        data_dir: &Path,
        hostnames: &[String],
        renew: bool,
    ) -> Result<Loaded, CredentialError> {
        create_dir_private(data_dir)?;
        create_dir_private(&data_dir.join("keys"))?;
        create_dir_private(&data_dir.join("tls"))?;
        files::check_dir_private(data_dir)?;
        for dir in ["keys", "tls", "recordings"] {
            let p = data_dir.join(dir);
            // Something else in place of `recordings` fails the sessions that would
            // record there (fail closed), not the commands that read the audit log.
            if p.is_dir() {
                files::check_dir_private(&p)?;
            }
        }
        for rel in PRIVATE_FILES
            .iter()
            .chain(&["postern.db", "postern.db-wal"])
        {
            let p = data_dir.join(rel);
            if p.symlink_metadata().is_ok() {
                check_private(&p)?;
            }
        }
        let mut created = Vec::new();
        let host_key = ssh_key(
            data_dir,
            "keys/ssh_host_ed25519_key",
            "postern host key",
            &mut created,
        )?;
        let user_ca = ssh_key(data_dir, "keys/user_ca", "postern user CA", &mut created)?;
        let target_ca = ssh_key(
            data_dir,
            "keys/target_ca",
            "postern target CA",
            &mut created,
        )?;
        let audit_key = ssh_key(
            data_dir,
            "keys/audit_ed25519",
            "postern audit key",
            &mut created,
        )?;
        let master_path = data_dir.join("keys/master.key");
        let master_key = if master_path.exists() {
            MasterKey::load(&master_path)?
        } else {
            let key = MasterKey::create(&master_path)?;
            created.push(master_path);
            key
        };
        let mut reissued = None;
        let tls = tls::TlsFiles::load_or_create(
            &data_dir.join("tls"),
            hostnames,
            &mut created,
            renew,
            &mut reissued,
        )?;
        Ok(Loaded {
            keys: KeyStore {
                host_key,
                host_key_announced: rotate::announced_host_keys(data_dir)?,
                user_ca,
                user_ca_previous: rotate::optional_public(data_dir, rotate::USER_CA_PREVIOUS)?,
                target_ca,
                target_ca_next: rotate::optional_public(data_dir, rotate::TARGET_CA_NEXT_PUB)?,
                target_ca_previous: rotate::optional_public(data_dir, rotate::TARGET_CA_PREVIOUS)?,
                audit_key,
                master_key,
                tls,
            },
            created,
            reissued,
        })
    }
}

/// The OpenSSH public key line of a key, e.g. for `TrustedUserCAKeys`.
/// What a person is told when their `postern login` credential has expired.
pub fn expired_message(valid_before_ms: i64) -> String {
    format!(
        "your postern credential expired at {} — run postern login",
        crate::audit::format_clock(valid_before_ms)
    )
}

pub fn public_line(key: &PrivateKey) -> String {
    key.public_key().to_openssh().unwrap_or_default()
}

pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}
