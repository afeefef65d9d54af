//! The audit key's rotation as files (`rotate-keys audit-key`, `cli/admin/rotate.rs`):
//! the new key is staged in this data dir first (`keys/audit_ed25519.next`), the handover
//! goes into the log, then the key is installed. Each step can be run again after a
//! failure: a staged key is reused, a handover already in the log is not written twice.

use std::path::Path;

use russh::keys::{PrivateKey, PublicKey};

use super::rotate::{
    AUDIT_KEY, AUDIT_KEY_NEXT, AUDIT_KEY_PREVIOUS, AUDIT_KEY_PUB, Changed, optional_public,
    private_text, public_text, read_key, remove,
};
use super::{CredentialError, files, new_ed25519};

fn same(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

/// The current audit key and the next one (made now, or staged by an earlier attempt).
/// Refused while the key before the last rotation still signs: one overlap at a time.
pub fn stage(dir: &Path) -> Result<(PrivateKey, PrivateKey), String> {
    let err = |e: CredentialError| e.to_string();
    let current = read_key(dir, AUDIT_KEY).map_err(err)?;
    let staged = dir.join(AUDIT_KEY_NEXT);
    if dir.join(AUDIT_KEY_PREVIOUS).exists() {
        // An installation that stopped before clearing its staged key.
        if staged.exists()
            && same(
                read_key(dir, AUDIT_KEY_NEXT).map_err(err)?.public_key(),
                current.public_key(),
            )
        {
            let mut changed = Changed::default();
            remove(dir, AUDIT_KEY_NEXT, &mut changed).map_err(err)?;
        }
        return Err(format!(
            "the audit key before the last rotation still signs ({AUDIT_KEY_PREVIOUS}); once every replica has restarted, run `postern admin rotate-keys audit-key --retire`, then rotate again"
        ));
    }
    if staged.exists() {
        return Ok((current, read_key(dir, AUDIT_KEY_NEXT).map_err(err)?));
    }
    let next = new_ed25519("postern audit key").map_err(err)?;
    files::replace_private(&staged, private_text(&next).map_err(err)?.as_bytes()).map_err(err)?;
    Ok((current, next))
}

/// The key the handover to `next` comes from, when the log already holds one (`last`:
/// the log's latest handover, from and to) or the current key already is `next`.
pub fn handed_over_from(
    current: &PrivateKey,
    next: &PrivateKey,
    last: Option<(PublicKey, PublicKey)>,
) -> Result<Option<PublicKey>, String> {
    let to_next = last.filter(|(_, to)| same(to, next.public_key()));
    if same(current.public_key(), next.public_key()) {
        return match to_next {
            Some((from, _)) => Ok(Some(from)),
            None => Err(format!(
                "{AUDIT_KEY_NEXT} is the audit key itself, but the log hands over to it from no key; remove {AUDIT_KEY_NEXT} and check the data dir's keys against a backup"
            )),
        };
    }
    Ok(to_next.map(|(from, _)| from))
}

/// Makes `next` the audit key, once the log holds the handover from `old` to it.
pub fn install(dir: &Path, old: &PublicKey, next: &PrivateKey) -> Result<Changed, String> {
    let mut changed = Changed::default();
    let old_line = format!("{}\n", old.to_openssh().map_err(|e| e.to_string())?);
    let step = |changed: &mut Changed| -> Result<(), CredentialError> {
        files::replace_private(&dir.join(AUDIT_KEY), private_text(next)?.as_bytes())?;
        changed.written.push(AUDIT_KEY);
        files::replace_public(&dir.join(AUDIT_KEY_PUB), public_text(next).as_bytes())?;
        changed.written.push(AUDIT_KEY_PUB);
        files::replace_public(&dir.join(AUDIT_KEY_PREVIOUS), old_line.as_bytes())?;
        changed.written.push(AUDIT_KEY_PREVIOUS);
        // Local only: not among the files replicas share.
        remove(dir, AUDIT_KEY_NEXT, &mut Changed::default())?;
        Ok(())
    };
    step(&mut changed).map_err(|e| e.to_string())?;
    Ok(changed)
}

/// The data dir's audit key as it is now (a rotation may have replaced the one this
/// process loaded).
pub fn current(dir: &Path) -> Result<PrivateKey, String> {
    read_key(dir, AUDIT_KEY).map_err(|e| e.to_string())
}

/// The audit key before the last rotation and the current one, to retire the first:
/// refused when they are the same key (a rotation that did not finish).
pub fn previous(dir: &Path) -> Result<(PublicKey, PublicKey), String> {
    let old = optional_public(dir, AUDIT_KEY_PREVIOUS)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "there is no earlier audit key to retire".to_string())?;
    let current = read_key(dir, AUDIT_KEY).map_err(|e| e.to_string())?;
    if same(&old, current.public_key()) {
        return Err(format!(
            "{AUDIT_KEY_PREVIOUS} names the current audit key: the last rotation did not finish; run `postern admin rotate-keys audit-key` again"
        ));
    }
    Ok((old, current.public_key().clone()))
}

/// Forgets the audit key before the last rotation, once the log holds its retirement.
pub fn forget_previous(dir: &Path) -> Result<Changed, String> {
    let mut changed = Changed::default();
    remove(dir, AUDIT_KEY_PREVIOUS, &mut changed).map_err(|e| e.to_string())?;
    Ok(changed)
}
