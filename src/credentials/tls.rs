//! postern's TLS CA and the server certificate it signs (for the PostgreSQL and HTTPS listeners).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use super::{CredentialError, files};

pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn tls_err(e: rcgen::Error) -> CredentialError {
    CredentialError::Tls(e.to_string())
}

/// The names a server certificate is issued for, as written in the config: an IP address
/// in its canonical form, a DNS name in lower case.
fn canonical(name: &str) -> String {
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

fn wanted(hostnames: &[String]) -> Vec<String> {
    if hostnames.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into()]
    } else {
        hostnames.to_vec()
    }
}

/// The DNS names and IP addresses a PEM certificate is issued for; `None` when it cannot
/// be read.
pub fn certificate_names(pem: &[u8]) -> Option<Vec<String>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let der = CertificateDer::from_pem_slice(pem).ok()?;
    let cert = x509_cert::Certificate::from_der(&der).ok()?;
    let (_, san) = cert.tbs_certificate.get::<SubjectAltName>().ok()??;
    let names = san
        .0
        .iter()
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.as_str().to_ascii_lowercase()),
            GeneralName::IpAddress(ip) => {
                let b = ip.as_bytes();
                let ip: std::net::IpAddr = match b.len() {
                    4 => <[u8; 4]>::try_from(b).ok()?.into(),
                    16 => <[u8; 16]>::try_from(b).ok()?.into(),
                    _ => return None,
                };
                Some(ip.to_string())
            }
            _ => None,
        })
        .collect();
    Some(names)
}

/// The CA's parameters as they were when it was made (what a certificate it signs names as
/// its issuer).
fn ca_params() -> Result<CertificateParams, CredentialError> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "postern TLS CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca)
}

/// A server certificate for `names`, signed by the CA.
fn issue_server(
    files: &TlsFiles,
    issuer: &Issuer<'_, KeyPair>,
    names: Vec<String>,
) -> Result<(), CredentialError> {
    let now = OffsetDateTime::now_utc();
    let srv_kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
    let mut srv = CertificateParams::new(names).map_err(tls_err)?;
    srv.distinguished_name = DistinguishedName::new();
    srv.distinguished_name
        .push(DnType::CommonName, "postern server");
    srv.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    srv.not_before = now - Duration::hours(1);
    srv.not_after = now + Duration::days(825);
    let srv_cert = srv.signed_by(&srv_kp, issuer).map_err(tls_err)?;
    // Replaced, not overwritten: the files are made anew (0600, never through a link). A
    // start cut short here finds them missing and issues them again.
    for p in [&files.server_key, &files.server_cert] {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CredentialError::Io {
                    action: "replace",
                    path: p.clone(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    files::write_private(&files.server_key, srv_kp.serialize_pem().as_bytes())?;
    files::write_public(&files.server_cert, srv_cert.pem().as_bytes())?;
    Ok(())
}

/// Why the server certificate was issued again at this start.
pub struct Reissued {
    pub before: Option<Vec<String>>,
    pub after: Vec<String>,
    pub reason: &'static str,
}

impl TlsFiles {
    /// The CA and server certificate in `dir`, made at first use. When `renew`, a server
    /// certificate that is missing or not issued for exactly `hostnames` is issued again
    /// by the same CA (clients keep trusting it). A missing CA with anything else present
    /// is an error: a new CA would silently break every client's trust.
    pub fn load_or_create(
        dir: &Path,
        hostnames: &[String],
        created: &mut Vec<PathBuf>,
        renew: bool,
        reissued: &mut Option<Reissued>,
    ) -> Result<TlsFiles, CredentialError> {
        let files = TlsFiles {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        let ca_key = dir.join("ca.key");
        let all = [
            &files.ca_cert,
            &ca_key,
            &files.server_cert,
            &files.server_key,
        ];
        if all.iter().all(|p| !p.exists()) {
            return Self::create(files, &ca_key, hostnames, created);
        }
        for ca in [&files.ca_cert, &ca_key] {
            if !ca.exists() {
                return Err(CredentialError::Tls(format!(
                    "postern's TLS CA file {} is missing while other TLS files in {} exist; clients trust that CA, so postern does not make a new one on its own. Restore it from a backup; or, to start over with a new CA (every client must then trust the new one: postern login --ca-file), remove the whole directory {}",
                    ca.display(),
                    dir.display(),
                    dir.display()
                )));
            }
        }
        if !renew {
            return Ok(files);
        }
        let want = wanted(hostnames);
        let canon = |names: &[String]| {
            let mut v: Vec<String> = names.iter().map(|n| canonical(n)).collect();
            v.sort();
            v.dedup();
            v
        };
        let before = if files.server_cert.exists() && files.server_key.exists() {
            let pem = std::fs::read(&files.server_cert).map_err(|source| CredentialError::Io {
                action: "read",
                path: files.server_cert.clone(),
                source,
            })?;
            certificate_names(&pem)
        } else {
            None
        };
        let reason = match &before {
            Some(names) if canon(names) == canon(&want) => return Ok(files),
            Some(_) => "the configured [tls] hostnames changed",
            None if files.server_cert.exists() && files.server_key.exists() => {
                "the server certificate could not be read"
            }
            None => "the server certificate or its key is missing",
        };
        let ca_pem = files::read_private(&ca_key)?;
        let ca_kp = KeyPair::from_pem(&ca_pem).map_err(|e| {
            CredentialError::Tls(format!(
                "cannot read the TLS CA key {}: {e}",
                ca_key.display()
            ))
        })?;
        let issuer = Issuer::new(ca_params()?, ca_kp);
        issue_server(&files, &issuer, want.clone())?;
        *reissued = Some(Reissued {
            before,
            after: want,
            reason,
        });
        Ok(files)
    }

    fn create(
        files: TlsFiles,
        ca_key: &Path,
        hostnames: &[String],
        created: &mut Vec<PathBuf>,
    ) -> Result<TlsFiles, CredentialError> {
        let now = OffsetDateTime::now_utc();
        let ca_kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
        let mut ca = ca_params()?;
        ca.not_before = now - Duration::hours(1);
        ca.not_after = now + Duration::days(3650);
        let ca_cert = ca.self_signed(&ca_kp).map_err(tls_err)?;
        let issuer = Issuer::new(ca, ca_kp);
        files::write_private(ca_key, issuer.key().serialize_pem().as_bytes())?;
        files::write_public(&files.ca_cert, ca_cert.pem().as_bytes())?;
        issue_server(&files, &issuer, wanted(hostnames))?;
        created.extend([ca_key.to_path_buf(), files.server_key.clone()]);
        Ok(files)
    }
}
