//! Validation of the names and values admins type: users, targets, logins, addresses, keys.

use russh::keys::{HashAlg, PublicKey};

use super::{PolicyError, UserKey};

/// Postern user names: 1–64 of `a-z A-Z 0-9 . _ -`, starting with a letter or digit.
/// They become certificate principals and appear in the SSH username, so `@` is excluded.
pub fn check_user_name(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadName {
            what: "user",
            name: name.to_string(),
            rule: "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        })
    }
}

/// Role names follow the same rule as user names.
pub fn check_role_name(name: &str) -> Result<(), PolicyError> {
    check_user_name(name).map_err(|_| PolicyError::BadName {
        what: "role",
        name: name.to_string(),
        rule: "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    })
}

/// Target names are DNS labels: 1–63 of `a-z 0-9 -`, not starting or ending with `-`.
pub fn check_target_name(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadName {
            what: "target",
            name: name.to_string(),
            rule: "a DNS label: 1-63 lowercase letters, digits or '-', not starting or ending with '-'",
        })
    }
}

/// Unix logins (`root`, `ubuntu`, `svc-train`), database names and database users.
/// `*` stands for any.
pub fn check_account_name(what: &'static str, name: &str) -> Result<(), PolicyError> {
    let ok = name == "*"
        || (!name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadName {
            what,
            name: name.to_string(),
            rule: "1-63 letters, digits, '.', '_' or '-' (or `*` for any)",
        })
    }
}

/// A login, database or database user asked for by name (never `*`, never empty): names
/// PostgreSQL would read as another (an empty database is the user's name; a name of 64
/// bytes or more is cut to 63) never reach a decision.
pub fn check_requested_name(what: &'static str, name: &str) -> Result<(), PolicyError> {
    if name == "*" {
        return Err(PolicyError::BadName {
            what,
            name: name.to_string(),
            rule: "a name, not `*`",
        });
    }
    check_account_name(what, name)
}

/// `host:port` with a non-empty host and a port in 1–65535; IPv6 hosts in brackets.
pub fn check_address(address: &str) -> Result<(), PolicyError> {
    let bad = |why: &str| PolicyError::BadAddress {
        address: address.to_string(),
        why: why.to_string(),
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    if port == 0 {
        return Err(bad("port 0 is not a destination"));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !host_ok {
        return Err(bad(
            "the host is empty or has characters a host name cannot have",
        ));
    }
    Ok(())
}

/// Parses one OpenSSH public key line (`algorithm base64 [comment]`).
pub fn parse_public_key(line: &str) -> Result<UserKey, PolicyError> {
    let line = line.trim();
    let key = PublicKey::from_openssh(line).map_err(|e| PolicyError::BadKey {
        key: abbreviate(line),
        why: e.to_string(),
    })?;
    let comment = key.comment().to_string();
    let mut bare = key.clone();
    bare.set_comment("");
    let public_key = bare.to_openssh().map_err(|e| PolicyError::BadKey {
        key: abbreviate(line),
        why: e.to_string(),
    })?;
    Ok(UserKey {
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        public_key: public_key.trim().to_string(),
        comment,
    })
}

/// Parses a user's key: [`parse_public_key`], and only the key types postern certifies
/// (Ed25519, ECDSA P-256 / P-384, RSA of at least 3072 bits).
pub fn parse_user_key(line: &str) -> Result<UserKey, PolicyError> {
    let parsed = parse_public_key(line)?;
    let key = PublicKey::from_openssh(&parsed.public_key).map_err(|e| PolicyError::BadKey {
        key: abbreviate(line.trim()),
        why: e.to_string(),
    })?;
    check_user_key_type(&key).map_err(|why| PolicyError::BadKey {
        key: abbreviate(line.trim()),
        why,
    })?;
    Ok(parsed)
}

/// Ed25519, ECDSA P-256 / P-384 and RSA ≥ 3072 bits; anything else (DSA, short RSA,
/// P-521, security-key types) is refused with what to make instead.
pub fn check_user_key_type(key: &PublicKey) -> Result<(), String> {
    use russh::keys::ssh_key::EcdsaCurve;
    use russh::keys::ssh_key::public::KeyData;
    let make = "make one with `ssh-keygen -t ed25519`";
    match key.key_data() {
        KeyData::Ed25519(_) => Ok(()),
        KeyData::Ecdsa(e) if matches!(e.curve(), EcdsaCurve::NistP256 | EcdsaCurve::NistP384) => {
            Ok(())
        }
        KeyData::Rsa(r) if r.key_size() >= 3072 => Ok(()),
        KeyData::Rsa(r) => Err(format!(
            "an RSA key of {} bits is too short (at least 3072); {make}",
            r.key_size()
        )),
        other => Err(format!(
            "key type {} is not accepted (Ed25519, ECDSA P-256/P-384 or RSA of 3072 bits or more); {make}",
            other.algorithm()
        )),
    }
}

/// Keeps error messages about keys on one readable line.
fn abbreviate(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Keeps control characters out of messages and logs, and long input short.
pub fn printable(s: &str) -> String {
    let head: String = s.chars().take(100).collect();
    crate::printable::cell(&head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["alice", "a.b-c_d", "svc-agent-7"] {
            check_user_name(ok).unwrap();
        }
        for bad in ["", "-x", "a@b", "a b", "ålice", &"x".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
        for ok in ["gpu-1", "db", "a1"] {
            check_target_name(ok).unwrap();
        }
        for bad in ["GPU", "-a", "a-", "a_b", "a.b", ""] {
            assert!(check_target_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for ok in ["10.0.0.5:22", "gpu-1.internal:2222", "[::1]:5432"] {
            check_address(ok).unwrap();
        }
        for bad in ["10.0.0.5", ":22", "h:0", "h:99999", "h o:22", "h:x"] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        let k = parse_public_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop",
        )
        .unwrap();
        assert!(k.fingerprint.starts_with("SHA256:"));
        assert_eq!(k.comment, "alice@laptop");
        assert!(!k.public_key.contains("alice"));
        assert!(parse_public_key("ssh-ed25519 AAAAnotakey").is_err());
    }
}
