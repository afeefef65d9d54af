//! Passwords: Argon2id hashes in PHC form; verification compares in constant time
//! (inside the argon2 crate).

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use super::{CredentialError, random_bytes};

/// Shortest password accepted.
pub const MIN_LEN: usize = 12;

pub fn hash(password: &str) -> Result<String, CredentialError> {
    if password.chars().count() < MIN_LEN {
        return Err(CredentialError::WeakPassword(MIN_LEN));
    }
    let salt = random_bytes::<16>()?;
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CredentialError::Encode(e.to_string()))
}

pub fn verify(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// Spends the time of one verification for a user without a password, so a failed
/// login takes as long whether or not the user exists.
pub fn verify_nothing(password: &str) {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(h) = DUMMY.get_or_init(|| hash("postern: no such user").ok()) {
        let _ = verify(password, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("correct"));
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterx", &h));
        assert!(!verify("x", "not a phc string"));
        assert!(matches!(
            hash("short"),
            Err(CredentialError::WeakPassword(12))
        ));
    }
}
