//! SCRAM-SHA-256 as a client (RFC 5802, RFC 7677), for postern's logins to targets.
//!
//! The salted password (PBKDF2 over the password, the target's salt and its iteration
//! count) is the expensive part of a login, and the same for every login with the same
//! password to the same role: it is computed once on aws-lc-rs (hardware SHA-256) and
//! kept in memory, keyed by a per-process MAC of the password, salt and count, so a
//! connection after the first costs a few hashes. The server's signature is checked.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// A target asking for more PBKDF2 rounds than this is refused (PostgreSQL's default is
/// 4,096): a fake server must not make postern burn seconds of CPU per login.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Salted passwords kept; past this the cache starts over.
const CACHE_ENTRIES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClientError {
    #[error("malformed SCRAM message from the server: {0}")]
    Malformed(&'static str),
    #[error("the server asks for {0} PBKDF2 rounds, more than postern computes ({MAX_ITERATIONS})")]
    TooManyRounds(u64),
    #[error("the server refused the proof: {0}")]
    Refused(String),
    #[error("the server's signature does not match: it does not know the password")]
    BadServerSignature,
}

fn mac(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The password as SCRAM hashes it: SASLprep'd, or as it is when it cannot be (as
/// PostgreSQL and libpq do).
fn prepared(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.as_bytes().to_vec(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// PBKDF2-HMAC-SHA-256, from the cache when this password, salt and count were seen
/// (keyed by a per-process MAC of the three, never the password).
fn salted_password(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], [u8; 32]>>> = OnceLock::new();
    let id = crate::credentials::process_mac(&[password, salt, &rounds.to_be_bytes()]);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&id).copied()) {
        return hit;
    }
    let mut out = [0u8; 32];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(rounds).unwrap_or(std::num::NonZeroU32::MIN),
        salt,
        password,
        &mut out,
    );
    if let Ok(mut c) = cache.lock() {
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(id, out);
    }
    out
}

/// One login's exchange, from the client's first message to the server's signature.
pub struct ScramClient {
    password: Vec<u8>,
    /// `n,,` or `p=tls-server-end-point,,`.
    gs2_header: &'static str,
    binding: Vec<u8>,
    nonce: String,
    client_first_bare: String,
    message: String,
    /// What the server must sign, once the proof went out.
    server_key_and_auth: Option<([u8; 32], String)>,
}

impl ScramClient {
    /// `binding`: the server certificate's `tls-server-end-point` data, for
    /// SCRAM-SHA-256-PLUS; `None` for SCRAM-SHA-256 without binding.
    pub fn new(password: &str, binding: Option<Vec<u8>>) -> Result<ScramClient, ClientError> {
        let mut raw = [0u8; 18];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| ClientError::Malformed("no randomness"))?;
        let nonce = B64.encode(raw);
        let client_first_bare = format!("n=,r={nonce}");
        let gs2_header = if binding.is_some() {
            "p=tls-server-end-point,,"
        } else {
            "n,,"
        };
        Ok(ScramClient {
            password: prepared(password),
            gs2_header,
            binding: binding.unwrap_or_default(),
            nonce,
            message: format!("{gs2_header}{client_first_bare}"),
            client_first_bare,
            server_key_and_auth: None,
        })
    }

    /// The message to send next.
    pub fn message(&self) -> &[u8] {
        self.message.as_bytes()
    }

    /// Reads the server's first message and makes the proof.
    pub fn update(&mut self, server_first: &[u8]) -> Result<(), ClientError> {
        let text =
            std::str::from_utf8(server_first).map_err(|_| ClientError::Malformed("not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut rounds = None;
        for attr in text.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => rounds = Some(v),
                _ => {}
            }
        }
        let nonce = nonce
            .filter(|n| n.len() > self.nonce.len() && n.starts_with(&self.nonce))
            .ok_or(ClientError::Malformed("the nonce does not extend ours"))?;
        let salt = salt
            .and_then(|s| B64.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or(ClientError::Malformed("no salt"))?;
        let rounds: u64 = rounds
            .and_then(|i| i.parse().ok())
            .filter(|&i| i > 0)
            .ok_or(ClientError::Malformed("no iteration count"))?;
        let rounds = u32::try_from(rounds)
            .ok()
            .filter(|&i| i <= MAX_ITERATIONS)
            .ok_or(ClientError::TooManyRounds(rounds))?;
        let salted = salted_password(&self.password, &salt, rounds);
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.binding);
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth = format!("{},{text},{without_proof}", self.client_first_bare);
        let client_key = mac(&salted, b"Client Key");
        let stored_key = digest(&SHA256, client_key.as_ref());
        let signature = mac(stored_key.as_ref(), auth.as_bytes());
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let mut server_key = [0u8; 32];
        server_key.copy_from_slice(mac(&salted, b"Server Key").as_ref());
        self.message = format!("{without_proof},p={}", B64.encode(proof));
        self.server_key_and_auth = Some((server_key, auth));
        Ok(())
    }

    /// Checks the server's final message: its signature proves it knew the password.
    pub fn finish(&self, server_final: &[u8]) -> Result<(), ClientError> {
        let (server_key, auth) = self
            .server_key_and_auth
            .as_ref()
            .ok_or(ClientError::Malformed("final message before the proof"))?;
        let text =
            std::str::from_utf8(server_final).map_err(|_| ClientError::Malformed("not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ClientError::Refused(crate::printable::safe(e)));
        }
        let v = text
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ClientError::Malformed("no server signature"))?;
        let want = mac(server_key, auth.as_bytes());
        verify_slices_are_equal(&v, want.as_ref()).map_err(|_| ClientError::BadServerSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange, with its nonce.
    #[test]
    fn rfc_7677_example() {
        let mut c = ScramClient::new("pencil", None).unwrap();
        c.nonce = "rOprNGfwEbeRWgbNEkqO".into();
        c.client_first_bare = format!("n=user,r={}", c.nonce);
        c.update(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            c.message,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.finish(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert_eq!(
            c.finish(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ClientError::BadServerSignature)
        );
        // The second time comes from the cache, with the same result.
        let mut again = ScramClient::new("pencil", None).unwrap();
        again.nonce = c.nonce.clone();
        again.client_first_bare = c.client_first_bare.clone();
        again
            .update(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(again.message, c.message);
    }

    #[test]
    fn hostile_first_messages_are_refused() {
        let c = || ScramClient::new("pw", None).unwrap();
        let n = c().nonce;
        for (msg, want) in [
            ("r=other,s=c2FsdA==,i=4096".to_string(), "nonce"),
            (format!("r={n}x,i=4096"), "salt"),
            (format!("r={n}x,s=c2FsdA==,i=0"), "iteration"),
            (format!("r={n}x,s=c2FsdA==,i=4294967296"), "rounds"),
            (format!("r={n}x,s=c2FsdA==,i=2000000"), "rounds"),
        ] {
            let mut s = c();
            s.nonce = n.clone();
            let e = s.update(msg.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{msg}: {e}");
        }
        assert!(matches!(
            c().finish(b"v=abc"),
            Err(ClientError::Malformed(_))
        ));
        let mut s = c();
        s.nonce = n.clone();
        s.update(format!("r={n}x,s=c2FsdA==,i=16").as_bytes())
            .unwrap();
        assert_eq!(
            s.finish(b"e=invalid-proof"),
            Err(ClientError::Refused("invalid-proof".into()))
        );
    }
}
