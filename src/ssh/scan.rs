//! Fetching a target's host key, as `ssh-keyscan` does, for an admin to check and pin.
//!
//! The key is only ever pinned after the admin saw its fingerprint and agreed (or said
//! `--yes`, having checked it some other way): postern never trusts a key on first use.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{Algorithm, PublicKey, PublicKeyOrCertificate};
use tokio::net::TcpStream;

struct Scan {
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Scan {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if let (PublicKeyOrCertificate::PublicKey { key, .. }, Ok(mut seen)) =
            (key, self.seen.lock())
        {
            *seen = Some(key.clone());
        }
        // Nothing more is wanted from this server: the handshake stops here.
        Ok(false)
    }
}

/// The host key `address` presents, preferring Ed25519, then ECDSA, then RSA (the kinds
/// postern pins).
pub async fn host_key(address: &str, limit: Duration) -> Result<PublicKey, String> {
    host_key_of(address, limit, None).await
}

/// As `host_key`, asking for `kind` first (to compare with a pinned key of that kind).
pub async fn host_key_of(
    address: &str,
    limit: Duration,
    kind: Option<Algorithm>,
) -> Result<PublicKey, String> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(address))
        .await
        .map_err(|_| format!("{address} did not answer within {}s", limit.as_secs()))?
        .map_err(|e| format!("cannot reach {address}: {e}"))?;
    let mut config = client::Config::default();
    config.preferred.key = Cow::Owned(vec![
        Algorithm::Ed25519,
        Algorithm::Ecdsa {
            curve: russh::keys::EcdsaCurve::NistP256,
        },
        Algorithm::Ecdsa {
            curve: russh::keys::EcdsaCurve::NistP384,
        },
        Algorithm::Rsa {
            hash: Some(russh::keys::HashAlg::Sha512),
        },
        Algorithm::Rsa {
            hash: Some(russh::keys::HashAlg::Sha256),
        },
    ]);
    if let Some(k) = kind {
        let mut order = vec![k.clone()];
        order.extend(config.preferred.key.iter().filter(|a| **a != k).cloned());
        config.preferred.key = Cow::Owned(order);
    }
    let seen = Arc::new(Mutex::new(None));
    let handler = Scan { seen: seen.clone() };
    let handshake = client::connect_stream(Arc::new(config), stream, handler);
    let answer = tokio::time::timeout(limit, handshake).await;
    let key = seen.lock().ok().and_then(|s| s.clone());
    match (key, answer) {
        (Some(k), _) => Ok(k),
        (None, Err(_)) => Err(format!(
            "{address} did not finish the SSH key exchange within {}s",
            limit.as_secs()
        )),
        (None, Ok(Err(e))) => Err(format!(
            "{address} is not an SSH server postern can read: {e}"
        )),
        (None, Ok(Ok(_))) => Err(format!("{address} presented no host key")),
    }
}
