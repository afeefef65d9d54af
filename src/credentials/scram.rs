//! SCRAM-SHA-256 (RFC 5802, RFC 7677) between a client and postern: the database token
//! never crosses the wire, not even inside TLS. A token's verifier (stored key, server
//! key) is computed when it is issued, with a salt derived from the user name, so postern
//! can answer the client's first message before it knows which of the user's tokens the
//! proof was made with; the proof then picks the token. Over TLS the exchange can be bound
//! to postern's certificate (`SCRAM-SHA-256-PLUS`, `tls-server-end-point`).

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

pub const SCRAM: &str = "SCRAM-SHA-256";
pub const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// PBKDF2 rounds, as PostgreSQL uses by default.
pub const ITERATIONS: u32 = 4096;

/// `tls-server-end-point` channel binding data (RFC 5929): the hash of the server's
/// certificate with its signature's hash function (SHA-1 raised to SHA-256); `None` for
/// signatures without one (Ed25519, RSA-PSS).
pub fn end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::digest::{SHA256, SHA384, SHA512, digest};
    use x509_cert::der::Decode;
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, SHA_1_WITH_RSA_ENCRYPTION,
        SHA_256_WITH_RSA_ENCRYPTION, SHA_384_WITH_RSA_ENCRYPTION, SHA_512_WITH_RSA_ENCRYPTION,
    };
    let oid = x509_cert::Certificate::from_der(cert)
        .ok()?
        .signature_algorithm
        .oid;
    let alg = match oid {
        SHA_1_WITH_RSA_ENCRYPTION | SHA_256_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_256 => &SHA256,
        SHA_384_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_384 => &SHA384,
        SHA_512_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_512 => &SHA512,
        _ => return None,
    };
    Some(digest(alg, cert).as_ref().to_vec())
}

/// What postern keeps of a token: enough to check a proof, not to make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding does not match this connection")]
    Binding,
    #[error("the client supports channel binding but postern offered it: a downgrade")]
    Downgrade,
}

/// The salt of a user's token verifiers: derived from the name, the same for every token
/// (salts are public; tokens are random, so nothing is gained by guessing).
pub fn salt(user: &str) -> [u8; 16] {
    let d = digest(&SHA256, format!("postern scram salt\0{user}").as_bytes());
    let mut s = [0u8; 16];
    s.copy_from_slice(&d.as_ref()[..16]);
    s
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// The verifier of `password` with `salt`.
pub fn verifier(password: &str, salt: &[u8]) -> Verifier {
    let mut salted = [0u8; 32];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(ITERATIONS).unwrap_or(std::num::NonZeroU32::MIN),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let client_key = mac(&salted, b"Client Key");
    Verifier {
        stored_key: digest(&SHA256, &client_key).as_ref().to_vec(),
        server_key: mac(&salted, b"Server Key"),
    }
}

/// An exchange in progress, after postern's first message.
pub struct Exchange {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// The channel binding data the client must have bound to (`p=` clients).
    binding: Option<Vec<u8>>,
}

/// Reads the client's first message for `mechanism`; returns postern's first message.
/// `ours` is this connection's `tls-server-end-point` data, when `-PLUS` was offered.
pub fn start(
    mechanism: &str,
    client_first: &[u8],
    salt: &[u8],
    ours: Option<&[u8]>,
) -> Result<(Exchange, String), ScramError> {
    let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let (flag, rest) = text
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    if !authzid.is_empty() {
        return Err(ScramError::Malformed(
            "authorization identities are not supported",
        ));
    }
    let binding = match (flag, mechanism) {
        ("p=tls-server-end-point", SCRAM_PLUS) => Some(ours.ok_or(ScramError::Binding)?.to_vec()),
        ("n", SCRAM) => None,
        // The client could bind, and thinks postern cannot: it was offered, so something
        // between them took it away.
        ("y", SCRAM) if ours.is_some() => return Err(ScramError::Downgrade),
        ("y", SCRAM) => None,
        _ => return Err(ScramError::Binding),
    };
    let client_nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
        .ok_or(ScramError::Malformed("no client nonce"))?;
    let mut ours_nonce = [0u8; 18];
    aws_lc_rs::rand::fill(&mut ours_nonce).map_err(|_| ScramError::Malformed("no randomness"))?;
    let nonce = format!("{client_nonce}{}", B64.encode(ours_nonce));
    let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(salt));
    let ex = Exchange {
        gs2_header: format!("{flag},{authzid},"),
        client_first_bare: bare.to_string(),
        server_first: server_first.clone(),
        nonce,
        binding,
    };
    Ok((ex, server_first))
}

impl Exchange {
    /// Checks the client's final message against each candidate verifier; returns the
    /// index of the one that made the proof and postern's final message, `Ok(None)` when
    /// none did.
    pub fn finish(
        &self,
        client_final: &[u8],
        candidates: &[Verifier],
    ) -> Result<Option<(usize, String)>, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let c = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let r = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        let mut want = self.gs2_header.as_bytes().to_vec();
        if let Some(b) = &self.binding {
            want.extend_from_slice(b);
        }
        let c = B64
            .decode(c)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if verify_slices_are_equal(&c, &want).is_err() {
            return Err(ScramError::Binding);
        }
        if r != self.nonce {
            return Err(ScramError::Malformed("the nonce changed"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof has the wrong length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        for (i, v) in candidates.iter().enumerate() {
            let signature = mac(&v.stored_key, auth_message.as_bytes());
            let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
            if verify_slices_are_equal(digest(&SHA256, &client_key).as_ref(), &v.stored_key).is_ok()
            {
                let server = mac(&v.server_key, auth_message.as_bytes());
                return Ok(Some((i, format!("v={}", B64.encode(server)))));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A full exchange with the client PostgreSQL's drivers use.
    fn exchange(
        token: &str,
        candidates: &[Verifier],
        cb: Option<&[u8]>,
        flip: bool,
    ) -> Result<Option<usize>, ScramError> {
        let binding = match cb {
            Some(b) => ChannelBinding::tls_server_end_point(b.to_vec()),
            None => ChannelBinding::unsupported(),
        };
        let mut client = ScramSha256::new(token.as_bytes(), binding);
        let mechanism = if cb.is_some() { SCRAM_PLUS } else { SCRAM };
        let ours: Option<Vec<u8>> = cb.map(|b| {
            let mut b = b.to_vec();
            if flip {
                b[0] ^= 1;
            }
            b
        });
        let (ex, first) = start(mechanism, client.message(), &salt("alice"), ours.as_deref())?;
        client.update(first.as_bytes()).unwrap();
        let Some((i, last)) = ex.finish(client.message(), candidates)? else {
            return Ok(None);
        };
        client.finish(last.as_bytes()).unwrap();
        Ok(Some(i))
    }

    #[test]
    fn channel_binding_hashes_the_certificate_with_its_signature_hash() {
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&p256)
            .unwrap();
        let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.der());
        assert_eq!(end_point(cert.der()).unwrap(), want.as_ref());
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&p384)
            .unwrap();
        assert_eq!(end_point(cert.der()).unwrap().len(), 48);
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&ed)
            .unwrap();
        assert_eq!(end_point(cert.der()), None);
        assert_eq!(end_point(b"not a certificate"), None);
    }

    #[test]
    fn the_proof_picks_the_token_and_the_server_proves_itself() {
        let s = salt("alice");
        let tokens = ["pgt_one", "pgt_two", "pgt_three"];
        let v: Vec<Verifier> = tokens.iter().map(|t| verifier(t, &s)).collect();
        assert_eq!(exchange("pgt_two", &v, None, false), Ok(Some(1)));
        assert_eq!(exchange("pgt_other", &v, None, false), Ok(None));
        // Bound to the channel: the same certificate data passes, another one does not.
        let cert = [7u8; 32];
        assert_eq!(exchange("pgt_three", &v, Some(&cert), false), Ok(Some(2)));
        assert_eq!(
            exchange("pgt_three", &v, Some(&cert), true),
            Err(ScramError::Binding)
        );
        assert_ne!(salt("alice"), salt("bob"));
    }

    #[test]
    fn malformed_and_downgraded_messages_are_refused() {
        let s = salt("alice");
        for m in [
            &b"n"[..],
            b"n,,",
            b"n,a=x,n=,r=abc",
            b"x,,n=,r=abc",
            b"\xff",
        ] {
            assert!(start(SCRAM, m, &s, None).is_err(), "{m:?}");
        }
        assert_eq!(
            start(SCRAM, b"y,,n=,r=abc", &s, Some(&[1])).err(),
            Some(ScramError::Downgrade)
        );
        let (ex, _) = start(SCRAM, b"n,,n=,r=abc", &s, None).unwrap();
        for m in [
            &b"c=biws,r=abc,p=AAAA"[..],
            b"c=biws",
            b"r=x,p=y",
            b"c=eHh4,r=abc,p=AAAA",
        ] {
            assert!(ex.finish(m, &[]).is_err(), "{m:?}");
        }
    }
}
