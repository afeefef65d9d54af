//! Per-session upstream certificates: an ephemeral Ed25519 key signed by the target CA,
//! valid for one login until the session's deadline. Targets trust the CA, not people.

use std::time::{SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::{Certificate, PrivateKey, PublicKey};

use super::{CredentialError, new_ed25519, random_bytes};

/// Clock skew tolerated between postern and targets.
pub const SKEW_SECS: u64 = 60;

pub struct SessionCert {
    pub key: PrivateKey,
    pub cert: Certificate,
    pub serial: u64,
}

pub struct CertRequest<'a> {
    pub login: &'a str,
    pub session_id: &'a str,
    pub user: &'a str,
    /// Unix seconds; the certificate is not valid after it.
    pub valid_before: u64,
    pub port_forwarding: bool,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What one certificate says; `sign` adds the serial, validity start and nonce.
struct Spec<'a> {
    key_id: String,
    principal: &'a str,
    valid_before: u64,
    port_forwarding: bool,
}

fn sign(
    ca: &PrivateKey,
    key: &russh::keys::ssh_key::public::KeyData,
    spec: &Spec,
) -> Result<(Certificate, u64), CredentialError> {
    let serial = u64::from_be_bytes(random_bytes::<8>()?) >> 1;
    let valid_after = now_secs().saturating_sub(SKEW_SECS);
    let enc = |e: russh::keys::ssh_key::Error| CredentialError::Encode(e.to_string());
    let mut b = Builder::new(
        random_bytes::<32>()?.to_vec(),
        key.clone(),
        valid_after,
        spec.valid_before.max(valid_after + 1),
    )
    .map_err(enc)?;
    b.serial(serial).map_err(enc)?;
    b.cert_type(CertType::User).map_err(enc)?;
    b.key_id(spec.key_id.clone()).map_err(enc)?;
    b.valid_principal(spec.principal).map_err(enc)?;
    b.extension("permit-pty", "").map_err(enc)?;
    if spec.port_forwarding {
        b.extension("permit-port-forwarding", "").map_err(enc)?;
    }
    Ok((b.sign(ca).map_err(enc)?, serial))
}

/// A per-session certificate for the upstream login, on a fresh key.
pub fn issue(ca: &PrivateKey, req: &CertRequest) -> Result<SessionCert, CredentialError> {
    let key = new_ed25519("postern session")?;
    let (cert, serial) = sign(
        ca,
        key.public_key().key_data(),
        &Spec {
            key_id: format!("postern session={} user={}", req.session_id, req.user),
            principal: req.login,
            valid_before: req.valid_before,
            port_forwarding: req.port_forwarding,
        },
    )?;
    Ok(SessionCert { key, cert, serial })
}

/// A developer's certificate from `postern login`: the client's key, the postern user as
/// the only principal. postern's SSH listener checks it (see `ssh::handler`).
pub fn issue_user(
    ca: &PrivateKey,
    key: &PublicKey,
    user: &str,
    valid_before: u64,
) -> Result<(Certificate, u64), CredentialError> {
    // The serial is only known once drawn; the key id names the user, the serial is in
    // the certificate itself (`ssh-keygen -L` shows both).
    sign(
        ca,
        key.key_data(),
        &Spec {
            key_id: format!("postern user={user}"),
            principal: user,
            valid_before,
            port_forwarding: true,
        },
    )
}
