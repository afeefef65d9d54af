//! Bearer and database tokens: 256 random bits, shown once, stored as a SHA-256 hash.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{CredentialError, random_bytes};

/// A new token (URL-safe base64: no `:` or `\`, so it fits a `.pgpass` line) and its hash.
pub fn new_token(prefix: &str) -> Result<(String, String), CredentialError> {
    let token = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()?));
    let hash = hash(&token);
    Ok((token, hash))
}

/// The hex SHA-256 the store keeps; a token is high-entropy, so no salt or stretching.
pub fn hash(token: &str) -> String {
    crate::audit::chain::sha256_hex(token.as_bytes())
}
