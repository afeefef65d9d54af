//! The TLS server configuration shared by the HTTPS API and the PostgreSQL listener:
//! postern's generated certificate, or the configured `tls.cert_file`/`tls.key_file`.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::credentials::KeyStore;

/// The one crypto provider of every TLS endpoint postern has.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read TLS certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds the server configuration; errors name the file and what is wrong with it.
pub fn server_config(config: &Config, keys: &KeyStore) -> Result<ServerConfig, String> {
    let (cert, key) = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(c), Some(k)) => (c.as_path(), k.as_path()),
        _ => (
            keys.tls.server_cert.as_path(),
            keys.tls.server_key.as_path(),
        ),
    };
    let chain = read_chain(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the TLS private key {}: {e}", key.display()))?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "the TLS certificate {} and its key do not work together: {e}",
                cert.display()
            )
        })
}

/// An acceptor for `config` announcing one ALPN protocol (`http/1.1`, `postgresql`).
pub fn with_alpn(config: &Arc<ServerConfig>, protocol: &[u8]) -> tokio_rustls::TlsAcceptor {
    let mut cfg = (**config).clone();
    cfg.alpn_protocols = vec![protocol.to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// The acceptor of the PostgreSQL listener: ALPN `postgresql` and, as PostgreSQL's own
/// server does, no session tickets and no session cache: libpq never resumes a session,
/// so each ticket would be work for both sides at every connection.
pub fn for_postgres(config: &Arc<ServerConfig>) -> tokio_rustls::TlsAcceptor {
    let mut cfg = (**config).clone();
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    with_alpn(&Arc::new(cfg), b"postgresql")
}
