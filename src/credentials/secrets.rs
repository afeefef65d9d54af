//! Encryption of secrets at rest (brokered database passwords and the like) with the
//! master key: AES-256-GCM, a fresh random nonce per secret, the secret's purpose as
//! associated data so a ciphertext cannot be moved to another row.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::{CredentialError, files};

const PREFIX: &str = "v1:";

pub struct MasterKey {
    key: LessSafeKey,
}

impl MasterKey {
    pub fn create(path: &Path) -> Result<MasterKey, CredentialError> {
        let bytes = super::random_bytes::<32>()?;
        files::write_private(path, format!("{}\n", B64.encode(bytes)).as_bytes())?;
        Self::from_bytes(&bytes)
    }

    pub fn load(path: &Path) -> Result<MasterKey, CredentialError> {
        let text = files::read_private(path)?;
        let bytes = B64
            .decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| CredentialError::Corrupt {
                path: path.to_path_buf(),
                why: "expected 32 bytes in base64".into(),
            })?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<MasterKey, CredentialError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| CredentialError::Encode("master key".into()))?;
        Ok(MasterKey {
            key: LessSafeKey::new(key),
        })
    }

    /// Encrypts `secret` for `purpose` (e.g. `target:db1:user:app`); returns printable text.
    pub fn seal(&self, purpose: &str, secret: &[u8]) -> Result<String, CredentialError> {
        let nonce_bytes = super::random_bytes::<NONCE_LEN>()?;
        let mut buf = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(purpose.as_bytes()),
                &mut buf,
            )
            .map_err(|_| CredentialError::Encode("secret".into()))?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", B64.encode(out)))
    }

    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Vec<u8>, CredentialError> {
        let data = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .filter(|d| d.len() >= NONCE_LEN)
            .ok_or(CredentialError::Decrypt("not a postern sealed secret"))?;
        let (nonce, ct) = data.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| CredentialError::Decrypt("bad nonce"))?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buf)
            .map_err(|_| {
                CredentialError::Decrypt("wrong master key, wrong purpose, or altered data")
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let k = MasterKey::create(&path).unwrap();
        let sealed = k.seal("target:db:app", b"hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        let again = MasterKey::load(&path).unwrap();
        assert_eq!(again.open("target:db:app", &sealed).unwrap(), b"hunter2");
        assert!(again.open("target:other:app", &sealed).is_err());
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(
            again
                .open("target:db:app", &String::from_utf8(bytes).unwrap())
                .is_err()
        );
    }
}
