//! Per-session upstream certificates: an ephemeral Ed25519 key signed by the target CA,
//! valid for one login until the session's deadline. Targets trust the CA, not people.

use std::time::{SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::{Certificate, PrivateKey};

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

pub fn issue(ca: &PrivateKey, req: &CertRequest) -> Result<SessionCert, CredentialError> {
    let key = new_ed25519("postern session")?;
    let serial = u64::from_be_bytes(random_bytes::<8>()?) >> 1;
    let valid_after = now_secs().saturating_sub(SKEW_SECS);
    let enc = |e: russh::keys::ssh_key::Error| CredentialError::Encode(e.to_string());
    let mut b = Builder::new(
        random_bytes::<32>()?.to_vec(),
        key.public_key().key_data().clone(),
        valid_after,
        req.valid_before.max(valid_after + 1),
    )
    .map_err(enc)?;
    b.serial(serial).map_err(enc)?;
    b.cert_type(CertType::User).map_err(enc)?;
    b.key_id(format!(
        "postern session={} user={}",
        req.session_id, req.user
    ))
    .map_err(enc)?;
    b.valid_principal(req.login).map_err(enc)?;
    b.extension("permit-pty", "").map_err(enc)?;
    if req.port_forwarding {
        b.extension("permit-port-forwarding", "").map_err(enc)?;
    }
    let cert = b.sign(ca).map_err(enc)?;
    Ok(SessionCert { key, cert, serial })
}
