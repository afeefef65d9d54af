//! A user certificate presented to postern, checked for everything the SSH library does
//! not check: the issuing CA, the type, critical options, the validity window (with skew)
//! and a single principal.

use russh::keys::Certificate;
use russh::keys::ssh_key::certificate::CertType;

use super::username::printable;
use crate::credentials::ssh_cert;

/// Everything about a user certificate that russh does not check: the issuing CA, the
/// type, critical options, the validity window (with skew) and a single principal.
/// `previous` is the user CA before a rotation, trusted until it is retired.
pub fn check_certificate(
    cert: &Certificate,
    user_ca: &russh::keys::PrivateKey,
    previous: Option<&russh::keys::PublicKey>,
) -> Result<String, String> {
    let by = cert.signature_key();
    if by != user_ca.public_key().key_data() && previous.is_none_or(|p| by != p.key_data()) {
        return Err("not signed by postern's user CA".into());
    }
    if cert.cert_type() != CertType::User {
        return Err("not a user certificate".into());
    }
    if let Some((name, _)) = cert.critical_options().iter().next() {
        return Err(format!("unsupported critical option `{}`", printable(name)));
    }
    let now = ssh_cert::now_secs();
    if now + ssh_cert::SKEW_SECS < cert.valid_after() || now >= cert.valid_before() {
        let until = crate::audit::secs_to_ms(cert.valid_before());
        return Err(format!(
            "expired or not yet valid (valid until {})",
            crate::audit::format_ms(until)
        ));
    }
    match cert.valid_principals() {
        [one] => Ok(one.clone()),
        _ => Err("a postern certificate names exactly one principal, the postern user".into()),
    }
}

#[cfg(test)]
mod tests {
    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::certificate::{Builder, CertType};
    use russh::keys::ssh_key::private::Ed25519Keypair;

    use super::check_certificate;
    use crate::credentials::ssh_cert::now_secs;

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
    }

    fn cert(
        ca: &PrivateKey,
        kind: CertType,
        principals: &[&str],
        from: u64,
        to: u64,
        option: bool,
    ) -> russh::keys::Certificate {
        let mut b = Builder::new(
            [1u8; 16].to_vec(),
            key(2).public_key().key_data().clone(),
            from,
            to,
        )
        .unwrap();
        b.cert_type(kind).unwrap();
        b.serial(7).unwrap();
        b.key_id("t").unwrap();
        for p in principals {
            b.valid_principal(*p).unwrap();
        }
        if principals.is_empty() {
            // "Valid for every principal": postern must refuse it.
            b.all_principals_valid().unwrap();
        }
        if option {
            b.critical_option("force-command", "/bin/true").unwrap();
        }
        b.sign(ca).unwrap()
    }

    #[test]
    fn user_certificate_checks() {
        let ca = key(1);
        let now = now_secs();
        let ok = cert(&ca, CertType::User, &["alice"], now - 10, now + 3600, false);
        assert_eq!(check_certificate(&ok, &ca, None).unwrap(), "alice");
        for (c, why) in [
            (
                cert(
                    &key(9),
                    CertType::User,
                    &["alice"],
                    now - 10,
                    now + 3600,
                    false,
                ),
                "user CA",
            ),
            (
                cert(&ca, CertType::Host, &["alice"], now - 10, now + 3600, false),
                "not a user certificate",
            ),
            (
                cert(
                    &ca,
                    CertType::User,
                    &["alice"],
                    now - 7200,
                    now - 3600,
                    false,
                ),
                "expired",
            ),
            (
                cert(
                    &ca,
                    CertType::User,
                    &["alice"],
                    now + 3600,
                    now + 7200,
                    false,
                ),
                "not yet valid",
            ),
            (
                cert(
                    &ca,
                    CertType::User,
                    &["alice", "bob"],
                    now - 10,
                    now + 3600,
                    false,
                ),
                "exactly one principal",
            ),
            (
                cert(&ca, CertType::User, &[], now - 10, now + 3600, false),
                "exactly one principal",
            ),
            (
                cert(&ca, CertType::User, &["alice"], now - 10, now + 3600, true),
                "critical option",
            ),
        ] {
            let e = check_certificate(&c, &ca, None).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
