//! A small HTTPS JSON client for postern's API: rustls (aws-lc-rs) and hyper, verifying
//! the server against a CA file or a pinned certificate fingerprint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::api::tls::provider;

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BODY: usize = 1 << 20;

/// `https://HOST[:PORT]`, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    pub host: String,
    pub port: u16,
}

impl ServerUrl {
    pub fn parse(s: &str) -> Result<ServerUrl, String> {
        let rest = s.trim().trim_end_matches('/');
        let Some(rest) = rest.strip_prefix("https://") else {
            return Err(format!(
                "`{s}` is not an https:// URL; postern's API is only served over TLS (e.g. https://bastion:8443)"
            ));
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: unclosed [ in the host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("`{s}` is not https://HOST[:PORT]"));
        }
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| format!("`{s}`: `{p}` is not a port number"))?,
            None => 8443,
        };
        Ok(ServerUrl { host, port })
    }

    /// `host:port`, the key of `known_servers`.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

/// How the client decides to trust the server.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Certificates chaining to these CAs (PEM), for the URL's host name.
    Ca(Vec<u8>),
    /// Exactly this server certificate (`SHA256:…`), from an earlier first use.
    Pinned(String),
    /// Anything, once: the fingerprint is shown and saved by the caller.
    FirstUse,
}

/// `SHA256:` and the unpadded base64 of the certificate's SHA-256, like OpenSSH prints keys.
pub fn fingerprint(cert: &[u8]) -> String {
    use base64::Engine;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(d.as_ref())
    )
}

#[derive(Debug)]
struct Pin {
    want: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(fp.clone());
        }
        match &self.want {
            Some(w) if *w != fp => Err(rustls::Error::General(
                "the server certificate does not match the pinned fingerprint".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A verifier that accepts any certificate (still checking the handshake signatures):
/// libpq's `sslmode=require`, encryption without authentication of the server.
pub fn accept_any() -> Arc<dyn ServerCertVerifier> {
    Arc::new(Pin {
        want: None,
        seen: Arc::new(Mutex::new(None)),
        algs: provider().signature_verification_algorithms,
    })
}

pub struct Client {
    url: ServerUrl,
    config: Arc<ClientConfig>,
    seen: Arc<Mutex<Option<String>>>,
    pinned: Option<String>,
}

/// A reply: the HTTP status and the JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Client {
    pub fn new(url: ServerUrl, trust: &Trust) -> Result<Client, String> {
        let p = provider();
        let builder = ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let seen = Arc::new(Mutex::new(None));
        let (config, pinned) = match trust {
            Trust::Ca(pem) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| format!("the CA file is not PEM: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("the CA file holds no certificate (-----BEGIN CERTIFICATE-----); `postern admin tls-ca` prints the right one".into());
                }
                (
                    builder.with_root_certificates(roots).with_no_client_auth(),
                    None,
                )
            }
            Trust::Pinned(_) | Trust::FirstUse => {
                let want = match trust {
                    Trust::Pinned(fp) => Some(fp.clone()),
                    _ => None,
                };
                let pin = Pin {
                    want: want.clone(),
                    seen: seen.clone(),
                    algs: p.signature_verification_algorithms,
                };
                (
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(pin))
                        .with_no_client_auth(),
                    want,
                )
            }
        };
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            url,
            config: Arc::new(config),
            seen,
            pinned,
        })
    }

    /// The server certificate's fingerprint seen in the last handshake.
    pub fn seen(&self) -> Option<String> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, bearer, body))
            .await
            .map_err(|_| format!("{} did not answer within {} s", self.url, TIMEOUT.as_secs()))?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let url = &self.url;
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| {
                format!("cannot connect to {url}: {e}; is postern serving its API there?")
            })?;
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| format!("`{}` is not a valid host name", url.host))?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| self.tls_error(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP to {url} failed: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, url.authority())
            .header(CONTENT_TYPE, "application/json");
        if let Some(t) = bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP to {url} failed: {e}"))?;
        let status = resp.status().as_u16();
        let raw = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("cannot read the answer of {url}: {e}"))?
            .to_bytes();
        let body = serde_json::from_slice(&raw).map_err(|_| {
            format!("{url} answered HTTP {status} without JSON; is this a postern API address?")
        })?;
        Ok(Reply { status, body })
    }

    fn tls_error(&self, e: std::io::Error) -> String {
        let url = &self.url;
        let cert_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(|r| match r {
                rustls::Error::InvalidCertificate(c) => Some(c),
                _ => None,
            });
        match cert_error {
            Some(rustls::CertificateError::NotValidForNameContext {
                expected,
                presented,
            }) => {
                let expected = crate::printable::safe(&expected.to_str());
                // webpki writes them as `DnsName("x")` and `IpAddress(1.2.3.4)`.
                let bare = |n: &str| {
                    let n = n
                        .strip_prefix("DnsName(")
                        .or_else(|| n.strip_prefix("IpAddress("))
                        .and_then(|n| n.strip_suffix(')'))
                        .unwrap_or(n);
                    crate::printable::safe(n.trim_matches('"'))
                };
                let presented: Vec<String> = presented.iter().map(|n| bare(n)).collect();
                return format!(
                    "the server at {url} has a certificate for {}, not for `{expected}`: connect with one of those names, or have an admin add `{expected}` to [tls] hostnames in the server's config and restart postern (it issues the certificate again from the same CA, so --ca-file stays valid)",
                    presented.join(", ")
                );
            }
            Some(rustls::CertificateError::NotValidForName) => {
                return format!(
                    "the server at {url} has a certificate that does not cover this name: have an admin add it to [tls] hostnames in the server's config and restart postern"
                );
            }
            _ => {}
        }
        match (&self.pinned, self.seen()) {
            (Some(want), Some(seen)) if *want != seen => format!(
                "the server at {url} presents certificate {seen}, but ~/.postern/known_servers pins {want}: \
                 someone may be intercepting the connection. If the server's certificate was replaced on purpose, \
                 remove its line from ~/.postern/known_servers (or log in with --ca-file)"
            ),
            _ => format!(
                "TLS with {url} failed: {e}; pass the server's CA with --ca-file (`postern admin tls-ca` prints it)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ServerUrl::parse("https://bastion:9443/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("bastion", 9443));
        assert_eq!(ServerUrl::parse("https://b").unwrap().port, 8443);
        assert_eq!(
            ServerUrl::parse("https://[::1]:1").unwrap().authority(),
            "[::1]:1"
        );
        assert!(
            ServerUrl::parse("http://b:1")
                .unwrap_err()
                .contains("https://")
        );
        assert!(ServerUrl::parse("https://b:x").is_err());
        assert!(ServerUrl::parse("https://").is_err());
    }
}
