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
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = first_certificate(pem)?;
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

/// The common name of the first CA postern made; each rotation's CA has its own
/// (`postern TLS CA 2026-12-02 1a2b3c4d`), so clients trusting two tell them apart.
const FIRST_CA_NAME: &str = "postern TLS CA";

fn first_certificate(pem: &[u8]) -> Option<x509_cert::Certificate> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    use x509_cert::der::Decode;
    let der = CertificateDer::from_pem_slice(pem).ok()?;
    x509_cert::Certificate::from_der(&der).ok()
}

/// The common name of a certificate's subject (or issuer) that postern made: its only
/// attribute.
fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.to_string().strip_prefix("CN=").map(str::to_string)
}

/// True when the PEM certificate `server` was issued by the PEM certificate `ca`.
fn issued_by(server: &[u8], ca: &[u8]) -> bool {
    match (first_certificate(server), first_certificate(ca)) {
        (Some(s), Some(c)) => s.tbs_certificate.issuer == c.tbs_certificate.subject,
        _ => false,
    }
}

/// A new CA for a rotation: its private key and its certificate, as PEM.
pub fn new_ca() -> Result<(String, String), CredentialError> {
    let now = OffsetDateTime::now_utc();
    let tag: String = super::random_bytes::<4>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!(
        "{FIRST_CA_NAME} {:04}-{:02}-{:02} {tag}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
    let mut ca = ca_params(&name)?;
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(3650);
    let cert = ca.self_signed(&kp).map_err(tls_err)?;
    Ok((kp.serialize_pem(), cert.pem()))
}

/// The CA's parameters as they were when it was made (what a certificate it signs names as
/// its issuer).
fn ca_params(common_name: &str) -> Result<CertificateParams, CredentialError> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, common_name);
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
    srv.use_authority_key_identifier_extension = true;
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
    /// The CAs clients should trust, as one PEM bundle: the current one, and during a
    /// rotation the staged next one or the one before it.
    pub fn trusted_pem(&self) -> Result<String, CredentialError> {
        let mut pem = String::new();
        let dir = self.ca_cert.parent().unwrap_or(Path::new("."));
        let rotating = [super::rotate::TLS_CA_NEXT, super::rotate::TLS_CA_PREVIOUS];
        for (i, path) in std::iter::once(self.ca_cert.clone())
            .chain(
                rotating
                    .iter()
                    .filter_map(|r| Some(dir.join(Path::new(r).file_name()?))),
            )
            .enumerate()
        {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    pem.push_str(text.trim_end());
                    pem.push('\n');
                }
                Err(e) if i > 0 && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CredentialError::Io {
                        action: "read",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(pem)
    }

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
        let ca_pem = std::fs::read(&files.ca_cert).map_err(|source| CredentialError::Io {
            action: "read",
            path: files.ca_cert.clone(),
            source,
        })?;
        let current = before.is_some()
            && std::fs::read(&files.server_cert).is_ok_and(|pem| issued_by(&pem, &ca_pem));
        let reason = match &before {
            Some(_) if !current => "postern's TLS CA was rotated",
            Some(names) if canon(names) == canon(&want) => return Ok(files),
            Some(_) => "the configured [tls] hostnames changed",
            None if files.server_cert.exists() && files.server_key.exists() => {
                "the server certificate could not be read"
            }
            None => "the server certificate or its key is missing",
        };
        let ca_name = first_certificate(&ca_pem)
            .and_then(|c| common_name(&c.tbs_certificate.subject))
            .ok_or_else(|| {
                CredentialError::Tls(format!(
                    "cannot read postern's TLS CA certificate {}",
                    files.ca_cert.display()
                ))
            })?;
        let ca_key_pem = files::read_private(&ca_key)?;
        let ca_kp = KeyPair::from_pem(&ca_key_pem).map_err(|e| {
            CredentialError::Tls(format!(
                "cannot read the TLS CA key {}: {e}",
                ca_key.display()
            ))
        })?;
        let issuer = Issuer::new(ca_params(&ca_name)?, ca_kp);
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
        let mut ca = ca_params(FIRST_CA_NAME)?;
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
