//! The client side towards a target: TCP connect with a timeout, the host key checked
//! against the pinned key (never trust-on-first-use), and authentication with the
//! session's certificate from the target CA.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{Certificate, PublicKeyOrCertificate};
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use tokio::net::TcpStream;

use crate::policy::Target;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "target `{target}` has no pinned host key; an admin must pin it: postern admin target set {target} --scan-host-key (or --host-key KEY, as ssh-keyscan prints it)"
    )]
    NoPinnedKey { target: String },
    #[error("cannot reach target `{target}` at {address}: {why}")]
    Unreachable {
        target: String,
        address: String,
        why: String,
    },
    #[error(
        "target `{target}` presented host key {presented}, but the pinned key is {pinned}; refusing to connect (possible man-in-the-middle, or the host was rebuilt: after checking the new key out of band, an admin updates it with postern admin target set {target} --host-key KEY)"
    )]
    HostKeyMismatch {
        target: String,
        presented: String,
        pinned: String,
    },
    #[error(
        "target `{target}` refused login `{login}` with postern's certificate; does it trust the target CA (postern admin target-ca) and have that unix user?"
    )]
    AuthRefused { target: String, login: String },
    #[error("SSH error talking to target `{target}`: {why}")]
    Protocol { target: String, why: String },
}

pub struct Up {
    pinned: PublicKey,
    /// The fingerprint of a key that did not match, for the error message.
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Up {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        if key.key_data() == self.pinned.key_data() {
            return Ok(true);
        }
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key.fingerprint(HashAlg::Sha256).to_string());
        }
        Ok(false)
    }
}

pub type UpHandle = client::Handle<Up>;

const UPSTREAM_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

pub struct Credentials {
    pub login: String,
    pub key: Arc<PrivateKey>,
    pub cert: Certificate,
}

pub async fn connect(
    target: &Target,
    creds: &Credentials,
    connect_timeout: Duration,
) -> Result<UpHandle, UpstreamError> {
    let pinned = target
        .host_key
        .as_deref()
        .and_then(|k| PublicKey::from_openssh(k).ok())
        .ok_or_else(|| UpstreamError::NoPinnedKey {
            target: target.name.clone(),
        })?;
    let unreachable = |why: String| UpstreamError::Unreachable {
        target: target.name.clone(),
        address: target.address.clone(),
        why,
    };
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(&target.address))
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", connect_timeout.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut config = client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    };
    // Only the pinned key's algorithm is acceptable as the host key.
    config.preferred.key = Cow::Owned(vec![pinned.algorithm()]);
    // AES-GCM (hardware-accelerated through aws-lc-rs) before ChaCha20 on the leg postern
    // chooses: the relay encrypts every byte twice, so the cipher is its main cost.
    config.preferred.cipher = Cow::Borrowed(UPSTREAM_CIPHERS);
    let seen = Arc::new(Mutex::new(None));
    let handler = Up {
        pinned: pinned.clone(),
        seen: seen.clone(),
    };
    let handshake =
        client::connect_stream(Arc::new(config), super::quickack::QuickAck(stream), handler);
    let mut handle = match tokio::time::timeout(connect_timeout, handshake).await {
        Err(_) => {
            return Err(unreachable(
                "the SSH handshake did not finish in time".into(),
            ));
        }
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let presented = seen.lock().ok().and_then(|s| s.clone());
            return Err(match presented {
                Some(presented) => UpstreamError::HostKeyMismatch {
                    target: target.name.clone(),
                    presented,
                    pinned: pinned.fingerprint(HashAlg::Sha256).to_string(),
                },
                None => unreachable(e.to_string()),
            });
        }
    };
    let result = handle
        .authenticate_openssh_cert(creds.login.clone(), creds.key.clone(), creds.cert.clone())
        .await
        .map_err(|e| UpstreamError::Protocol {
            target: target.name.clone(),
            why: e.to_string(),
        })?;
    if !result.success() {
        return Err(UpstreamError::AuthRefused {
            target: target.name.clone(),
            login: creds.login.clone(),
        });
    }
    Ok(handle)
}
