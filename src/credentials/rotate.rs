//! Rotating postern's CAs with an overlap, as files in the data dir.
//!
//! - The user CA (signs developers' certificates, which only postern checks): a new CA
//!   signs from the next start; the old one's public key stays trusted
//!   (`keys/user_ca.previous.pub`) so certificates it issued keep working until they
//!   expire, or until the rotation is retired.
//! - The target CA (targets trust it through `TrustedUserCAKeys`): a new CA is staged
//!   first (`keys/target_ca.next`), printed beside the current one by `admin target-ca`
//!   so targets can trust both; activated, it signs from the next start and the old
//!   one's public key is still printed (`keys/target_ca.previous.pub`) until retired.
//! - The SSH host key (clients pin it in `known_hosts`): a new key is staged
//!   (`keys/ssh_host_ed25519_key.next`) and announced after authentication beside the
//!   current one (OpenSSH's `hostkeys-00@openssh.com`), so clients with `UpdateHostKeys`
//!   learn it; activated, it is the key of the key exchange and the old one is still
//!   announced (`….previous`) while replicas restart; retired, it is no longer announced,
//!   and those clients drop it.
//! - The TLS CA (clients trust it for the HTTPS API and PostgreSQL): like the target CA, a
//!   new CA is staged (`tls/ca.next.crt`, in the bundle `admin tls-ca` prints and logins
//!   hand out), activated (the server certificate is issued again by it at the next
//!   start; the old certificate stays in the bundle as `tls/ca.previous.crt`), retired.
//! - The audit key (signs checkpoints): the log records a handover signed by both keys
//!   (`audit::lineage`) before the new key is written; both sign until the old one is
//!   retired, and `keys/audit_ed25519.previous.pub` names it meanwhile.

use std::path::Path;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;

use super::{CredentialError, files, new_ed25519};

pub const USER_CA_PREVIOUS: &str = "keys/user_ca.previous.pub";
pub const TARGET_CA_NEXT: &str = "keys/target_ca.next";
pub const TARGET_CA_NEXT_PUB: &str = "keys/target_ca.next.pub";
pub const TARGET_CA_PREVIOUS: &str = "keys/target_ca.previous.pub";
pub const HOST_KEY: &str = "keys/ssh_host_ed25519_key";
pub const HOST_KEY_PUB: &str = "keys/ssh_host_ed25519_key.pub";
pub const HOST_KEY_NEXT: &str = "keys/ssh_host_ed25519_key.next";
pub const HOST_KEY_NEXT_PUB: &str = "keys/ssh_host_ed25519_key.next.pub";
pub const HOST_KEY_PREVIOUS: &str = "keys/ssh_host_ed25519_key.previous";
pub const TLS_CA_KEY: &str = "tls/ca.key";
pub const TLS_CA: &str = "tls/ca.crt";
pub const TLS_CA_NEXT_KEY: &str = "tls/ca.next.key";
pub const TLS_CA_NEXT: &str = "tls/ca.next.crt";
pub const TLS_CA_PREVIOUS: &str = "tls/ca.previous.crt";
pub const AUDIT_KEY: &str = "keys/audit_ed25519";
pub const AUDIT_KEY_PUB: &str = "keys/audit_ed25519.pub";
pub const AUDIT_KEY_PREVIOUS: &str = "keys/audit_ed25519.previous.pub";
/// A new audit key between its making and its installation (this data dir only).
pub const AUDIT_KEY_NEXT: &str = "keys/audit_ed25519.next";

/// What a rotation step changed, relative to the data dir.
#[derive(Debug, Default)]
pub struct Changed {
    pub written: Vec<&'static str>,
    pub removed: Vec<&'static str>,
}

pub(super) fn private_text(key: &PrivateKey) -> Result<String, CredentialError> {
    key.to_openssh(LineEnding::LF)
        .map(|t| t.to_string())
        .map_err(|e| CredentialError::Encode(e.to_string()))
}

pub(super) fn public_text(key: &PrivateKey) -> String {
    format!("{}\n", super::public_line(key))
}

pub(super) fn read_key(dir: &Path, rel: &str) -> Result<PrivateKey, CredentialError> {
    let path = dir.join(rel);
    let text = files::read_private(&path)?;
    PrivateKey::from_openssh(text.trim()).map_err(|e| CredentialError::Corrupt {
        path,
        why: e.to_string(),
    })
}

pub(super) fn remove(
    dir: &Path,
    rel: &'static str,
    changed: &mut Changed,
) -> Result<(), CredentialError> {
    match std::fs::remove_file(dir.join(rel)) {
        Ok(()) => {
            changed.removed.push(rel);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CredentialError::Io {
            action: "remove",
            path: dir.join(rel),
            source,
        }),
    }
}

/// Ends an overlap: removes `previous`, the kept key of the `what` before the last rotation.
fn retire(dir: &Path, previous: &'static str, what: &str) -> Result<Changed, String> {
    let mut changed = Changed::default();
    remove(dir, previous, &mut changed).map_err(|e| e.to_string())?;
    if changed.removed.is_empty() {
        return Err(format!("there is no earlier {what} to retire"));
    }
    Ok(changed)
}

/// A new user CA; the current one's public key stays trusted. Refused while an earlier
/// rotation's old CA is still trusted (retire it first: one overlap at a time).
pub fn rotate_user_ca(dir: &Path) -> Result<(PrivateKey, Changed), String> {
    if dir.join(USER_CA_PREVIOUS).exists() {
        return Err(format!(
            "the user CA before the last rotation is still trusted ({USER_CA_PREVIOUS}); once the certificates it issued have expired, run `postern admin rotate-keys user-ca --retire`, then rotate again"
        ));
    }
    let old = read_key(dir, "keys/user_ca").map_err(|e| e.to_string())?;
    let new = new_ed25519("postern user CA").map_err(|e| e.to_string())?;
    let mut changed = Changed::default();
    let step = |changed: &mut Changed| -> Result<(), CredentialError> {
        files::replace_public(&dir.join(USER_CA_PREVIOUS), public_text(&old).as_bytes())?;
        changed.written.push(USER_CA_PREVIOUS);
        files::replace_private(&dir.join("keys/user_ca"), private_text(&new)?.as_bytes())?;
        changed.written.push("keys/user_ca");
        files::replace_public(&dir.join("keys/user_ca.pub"), public_text(&new).as_bytes())?;
        changed.written.push("keys/user_ca.pub");
        Ok(())
    };
    step(&mut changed).map_err(|e| e.to_string())?;
    Ok((new, changed))
}

/// Stops trusting the user CA before the last rotation.
pub fn retire_user_ca(dir: &Path) -> Result<Changed, String> {
    retire(dir, USER_CA_PREVIOUS, "user CA")
}

/// Makes the next target CA, for targets to trust before it signs.
pub fn stage_target_ca(dir: &Path) -> Result<(PrivateKey, Changed), String> {
    if dir.join(TARGET_CA_NEXT).exists() {
        return Err(format!(
            "a next target CA is staged already ({TARGET_CA_NEXT}); activate it with `postern admin rotate-keys target-ca --activate`"
        ));
    }
    if dir.join(TARGET_CA_PREVIOUS).exists() {
        return Err(format!(
            "the target CA before the last rotation is still printed for targets ({TARGET_CA_PREVIOUS}); run `postern admin rotate-keys target-ca --retire` first"
        ));
    }
    let next = new_ed25519("postern target CA").map_err(|e| e.to_string())?;
    let mut changed = Changed::default();
    let step = |changed: &mut Changed| -> Result<(), CredentialError> {
        files::replace_private(&dir.join(TARGET_CA_NEXT), private_text(&next)?.as_bytes())?;
        changed.written.push(TARGET_CA_NEXT);
        files::replace_public(&dir.join(TARGET_CA_NEXT_PUB), public_text(&next).as_bytes())?;
        changed.written.push(TARGET_CA_NEXT_PUB);
        Ok(())
    };
    step(&mut changed).map_err(|e| e.to_string())?;
    Ok((next, changed))
}

/// The staged target CA becomes the one that signs; the old one's public key is kept.
pub fn activate_target_ca(dir: &Path) -> Result<(PrivateKey, Changed), String> {
    if !dir.join(TARGET_CA_NEXT).exists() {
        return Err(
            "no next target CA is staged: run `postern admin rotate-keys target-ca` first, then give its public key to every target".into(),
        );
    }
    let old = read_key(dir, "keys/target_ca").map_err(|e| e.to_string())?;
    let next = read_key(dir, TARGET_CA_NEXT).map_err(|e| e.to_string())?;
    let mut changed = Changed::default();
    if old.public_key() == next.public_key() {
        // Activated already, stopped before the staged files were removed.
        remove(dir, TARGET_CA_NEXT, &mut changed).map_err(|e| e.to_string())?;
        remove(dir, TARGET_CA_NEXT_PUB, &mut changed).map_err(|e| e.to_string())?;
        return Ok((next, changed));
    }
    let step = |changed: &mut Changed| -> Result<(), CredentialError> {
        files::replace_public(&dir.join(TARGET_CA_PREVIOUS), public_text(&old).as_bytes())?;
        changed.written.push(TARGET_CA_PREVIOUS);
        files::replace_private(&dir.join("keys/target_ca"), private_text(&next)?.as_bytes())?;
        changed.written.push("keys/target_ca");
        files::replace_public(
            &dir.join("keys/target_ca.pub"),
            public_text(&next).as_bytes(),
        )?;
        changed.written.push("keys/target_ca.pub");
        remove(dir, TARGET_CA_NEXT, changed)?;
        remove(dir, TARGET_CA_NEXT_PUB, changed)?;
        Ok(())
    };
    step(&mut changed).map_err(|e| e.to_string())?;
    Ok((next, changed))
}

/// Stops printing the target CA before the last rotation.
pub fn retire_target_ca(dir: &Path) -> Result<Changed, String> {
    retire(dir, TARGET_CA_PREVIOUS, "target CA")
}

/// The host keys announced beside the current one: the staged next key, the previous one.
pub fn announced_host_keys(dir: &Path) -> Result<Vec<PrivateKey>, CredentialError> {
    let mut keys = Vec::new();
    for rel in [HOST_KEY_NEXT, HOST_KEY_PREVIOUS] {
        if dir.join(rel).exists() {
            keys.push(read_key(dir, rel)?);
        }
    }
    Ok(keys)
}

/// Makes the next host key, announced to clients from the next start of serve.
pub fn stage_host_key(dir: &Path) -> Result<(PrivateKey, Changed), String> {
    if dir.join(HOST_KEY_NEXT).exists() {
        return Err(format!(
            "a next host key is staged already ({HOST_KEY_NEXT}); activate it with `postern admin rotate-keys host-key --activate`"
        ));
    }
    if dir.join(HOST_KEY_PREVIOUS).exists() {
        return Err(format!(
            "the host key before the last rotation is still announced ({HOST_KEY_PREVIOUS}); run `postern admin rotate-keys host-key --retire` first"
        ));
    }
    let next = new_ed25519("postern host key").map_err(|e| e.to_string())?;
    let mut changed = Changed::default();
    let step = |changed: &mut Changed| -> Result<(), CredentialError> {
        files::replace_private(&dir.join(HOST_KEY_NEXT), private_text(&next)?.as_bytes())?;
        changed.written.push(HOST_KEY_NEXT);
        files::replace_public(&dir.join(HOST_KEY_NEXT_PUB), public_text(&next).as_bytes())?;
        changed.written.push(HOST_KEY_NEXT_PUB);
        Ok(())
    };
    step(&mut changed).map_err(|e| e.to_string())?;
    Ok((next, changed))
}

/// The staged host key becomes the one of the key exchange; the old one is announced.
pub fn activate_host_key(dir: &Path) -> Result<(PrivateKey, Changed), String> {
    if !dir.join(HOST_KEY_NEXT).exists() {
        return Err(
            "no next host key is staged: run `postern admin rotate-keys host-key` first, and let clients learn it".into(),
        );
    }
    let old = read_key(dir, HOST_KEY).map_err(|e| e.to_string())?;
    let next = read_key(dir, HOST_KEY_NEXT).map_err(|e| e.to_string())?;
    let mut changed = Changed::default();
    if old.public_key() == next.public_key() {
        // Activated already, stopped before the staged files were removed.
        remove(dir, HOST_KEY_NEXT, &mut changed).map_err(|e| e.to_string())?;
        remove(dir, HOST_KEY_NEXT_PUB, &mut changed).map_err(|e| e.to_string())?;
        return Ok((next, changed));
    }
    let step = |changed: &mut Changed| -> Result<(), CredentialError> {
        files::replace_private(&dir.join(HOST_KEY_PREVIOUS), private_text(&old)?.as_bytes())?;
        changed.written.push(HOST_KEY_PREVIOUS);
        files::replace_private(&dir.join(HOST_KEY), private_text(&next)?.as_bytes())?;
        changed.written.push(HOST_KEY);
        files::replace_public(&dir.join(HOST_KEY_PUB), public_text(&next).as_bytes())?;
        changed.written.push(HOST_KEY_PUB);
        remove(dir, HOST_KEY_NEXT, changed)?;
        remove(dir, HOST_KEY_NEXT_PUB, changed)?;
        Ok(())
    };
    step(&mut changed).map_err(|e| e.to_string())?;
    Ok((next, changed))
}

/// Stops announcing the host key before the last rotation.
/// The host key before the last rotation, while it is still announced.
pub fn previous_host_key(dir: &Path) -> Result<Option<PrivateKey>, CredentialError> {
    if !dir.join(HOST_KEY_PREVIOUS).exists() {
        return Ok(None);
    }
    read_key(dir, HOST_KEY_PREVIOUS).map(Some)
}

pub fn retire_host_key(dir: &Path) -> Result<Changed, String> {
    retire(dir, HOST_KEY_PREVIOUS, "host key")
}

fn read_text(dir: &Path, rel: &str) -> Result<String, CredentialError> {
    let path = dir.join(rel);
    std::fs::read_to_string(&path).map_err(|source| CredentialError::Io {
        action: "read",
        path,
        source,
    })
}

/// Makes the next TLS CA, for clients to trust before it signs.
pub fn stage_tls_ca(dir: &Path) -> Result<Changed, String> {
    if dir.join(TLS_CA_NEXT).exists() {
        return Err(format!(
            "a next TLS CA is staged already ({TLS_CA_NEXT}); activate it with `postern admin rotate-keys tls-ca --activate`"
        ));
    }
    if dir.join(TLS_CA_PREVIOUS).exists() {
        return Err(format!(
            "the TLS CA before the last rotation is still in the bundle for clients ({TLS_CA_PREVIOUS}); run `postern admin rotate-keys tls-ca --retire` first"
        ));
    }
    let (key, cert) = super::tls::new_ca().map_err(|e| e.to_string())?;
    files::replace_private(&dir.join(TLS_CA_NEXT_KEY), key.as_bytes())
        .and_then(|()| files::replace_public(&dir.join(TLS_CA_NEXT), cert.as_bytes()))
        .map_err(|e| e.to_string())?;
    Ok(Changed {
        written: vec![TLS_CA_NEXT_KEY, TLS_CA_NEXT],
        removed: Vec::new(),
    })
}

/// The staged TLS CA becomes the one that signs; the old certificate stays in the bundle.
/// The server certificate is issued again at the next start ([`super::tls`] sees it was
/// issued by another CA).
pub fn activate_tls_ca(dir: &Path) -> Result<Changed, String> {
    if !dir.join(TLS_CA_NEXT).exists() || !dir.join(TLS_CA_NEXT_KEY).exists() {
        return Err(
            "no next TLS CA is staged: run `postern admin rotate-keys tls-ca` first, then give clients the bundle `postern admin tls-ca` prints".into(),
        );
    }
    let read = |rel: &str| read_text(dir, rel).map_err(|e| e.to_string());
    let (old, next_key, next) = (read(TLS_CA)?, read(TLS_CA_NEXT_KEY)?, read(TLS_CA_NEXT)?);
    let mut changed = Changed::default();
    if old == next {
        // Activated already, stopped before the staged files were removed.
        remove(dir, TLS_CA_NEXT_KEY, &mut changed).map_err(|e| e.to_string())?;
        remove(dir, TLS_CA_NEXT, &mut changed).map_err(|e| e.to_string())?;
        return Ok(changed);
    }
    let step = |changed: &mut Changed| -> Result<(), CredentialError> {
        files::replace_public(&dir.join(TLS_CA_PREVIOUS), old.as_bytes())?;
        changed.written.push(TLS_CA_PREVIOUS);
        files::replace_private(&dir.join(TLS_CA_KEY), next_key.as_bytes())?;
        changed.written.push(TLS_CA_KEY);
        files::replace_public(&dir.join(TLS_CA), next.as_bytes())?;
        changed.written.push(TLS_CA);
        remove(dir, TLS_CA_NEXT_KEY, changed)?;
        remove(dir, TLS_CA_NEXT, changed)?;
        Ok(())
    };
    step(&mut changed).map_err(|e| e.to_string())?;
    Ok(changed)
}

/// Takes the TLS CA before the last rotation out of the bundle.
pub fn retire_tls_ca(dir: &Path) -> Result<Changed, String> {
    retire(dir, TLS_CA_PREVIOUS, "TLS CA")
}

/// The public key in `rel`, when the file is there.
pub fn optional_public(
    dir: &Path,
    rel: &str,
) -> Result<Option<russh::keys::PublicKey>, CredentialError> {
    let path = dir.join(rel);
    match std::fs::read_to_string(&path) {
        Ok(text) => russh::keys::PublicKey::from_openssh(text.trim())
            .map(Some)
            .map_err(|e| CredentialError::Corrupt {
                path,
                why: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CredentialError::Io {
            action: "read",
            path,
            source,
        }),
    }
}
