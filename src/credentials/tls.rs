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

impl TlsFiles {
    pub fn load_or_create(
        dir: &Path,
        hostnames: &[String],
        created: &mut Vec<PathBuf>,
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
        if all.iter().all(|p| p.exists()) {
            return Ok(files);
        }
        // A partial set is replaced as a whole: the server certificate must chain to the CA.
        for p in all {
            if p.exists() {
                std::fs::remove_file(p).map_err(|source| CredentialError::Io {
                    action: "replace",
                    path: p.clone(),
                    source,
                })?;
            }
        }
        let now = OffsetDateTime::now_utc();

        let ca_kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, "postern TLS CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now - Duration::hours(1);
        ca.not_after = now + Duration::days(3650);
        let ca_cert = ca.self_signed(&ca_kp).map_err(tls_err)?;

        let names: Vec<String> = if hostnames.is_empty() {
            vec!["localhost".into(), "127.0.0.1".into()]
        } else {
            hostnames.to_vec()
        };
        let srv_kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
        let mut srv = CertificateParams::new(names).map_err(tls_err)?;
        srv.distinguished_name = DistinguishedName::new();
        srv.distinguished_name
            .push(DnType::CommonName, "postern server");
        srv.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        srv.not_before = now - Duration::hours(1);
        srv.not_after = now + Duration::days(825);
        let issuer = Issuer::new(ca, ca_kp);
        let srv_cert = srv.signed_by(&srv_kp, &issuer).map_err(tls_err)?;

        files::write_private(&ca_key, issuer.key().serialize_pem().as_bytes())?;
        files::write_public(&files.ca_cert, ca_cert.pem().as_bytes())?;
        files::write_private(&files.server_key, srv_kp.serialize_pem().as_bytes())?;
        files::write_public(&files.server_cert, srv_cert.pem().as_bytes())?;
        created.extend([ca_key, files.server_key.clone()]);
        Ok(files)
    }
}
