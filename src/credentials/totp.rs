//! One-time codes (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits), as every authenticator
//! app and `oathtool --totp` compute them.

use aws_lc_rs::hmac;

use super::{CredentialError, random_bytes};

pub const STEP_SECS: u64 = 30;
const DIGITS: u32 = 6;
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new 160-bit secret.
pub fn new_secret() -> Result<[u8; 20], CredentialError> {
    random_bytes::<20>()
}

/// RFC 4648 base32 without padding, as otpauth URIs carry it.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The `otpauth://` URI authenticator apps import (as text or a QR code).
pub fn uri(issuer: &str, user: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{issuer}:{user}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        base32(secret)
    )
}

/// The code for one time step (`unix_secs / 30`).
pub fn code(secret: &[u8], step: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    bin % 10u32.pow(DIGITS)
}

/// The time step a submitted code matches (the current one or one either side, for
/// clock drift), compared in constant time; `None` when it matches none.
pub fn check(secret: &[u8], submitted: &str, now_secs: u64) -> Option<u64> {
    let submitted = submitted.trim();
    if submitted.len() != DIGITS as usize || !submitted.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = now_secs / STEP_SECS;
    let mut found = None;
    for step in [now.saturating_sub(1), now, now + 1] {
        let want = format!("{:06}", code(secret, step));
        if aws_lc_rs::constant_time::verify_slices_are_equal(want.as_bytes(), submitted.as_bytes())
            .is_ok()
        {
            found = Some(step);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1 key, truncated to 6 digits.
        let secret = b"12345678901234567890";
        assert_eq!(code(secret, 59 / 30), 287082);
        assert_eq!(code(secret, 1111111109 / 30), 81804);
        assert_eq!(code(secret, 2000000000 / 30), 279037);
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }

    #[test]
    fn check_accepts_neighbouring_steps_only() {
        let secret = b"12345678901234567890";
        let now = 1_111_111_109;
        let c = format!("{:06}", code(secret, now / 30 - 1));
        assert_eq!(check(secret, &c, now), Some(now / 30 - 1));
        let far = format!("{:06}", code(secret, now / 30 - 3));
        assert_eq!(check(secret, &far, now), None);
        assert_eq!(check(secret, "12345", now), None);
        assert_eq!(check(secret, "abcdef", now), None);
    }
}
