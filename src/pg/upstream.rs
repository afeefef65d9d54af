//! postern's connection to a PostgreSQL target: TCP, TLS as the target record says, the
//! startup message, and authentication with the brokered credential (SCRAM-SHA-256, MD5 or
//! cleartext, whichever the server asks for), up to the first `ReadyForQuery`.

use std::sync::Arc;
use std::time::Duration;

use super::scram::ScramClient;
use crate::credentials::scram::{SCRAM as SCRAM_SHA_256, SCRAM_PLUS as SCRAM_SHA_256_PLUS};
use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::message::frontend;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::Io;
use super::wire::{self, error_fields};
use crate::policy::{Target, TlsMode};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach target `{target}` at {addr}: {why}")]
    Unreachable {
        target: String,
        addr: String,
        why: String,
    },
    #[error("target `{target}` refused postern: {message} ({code})")]
    Refused {
        target: String,
        code: String,
        message: String,
    },
    #[error("TLS with target `{target}` failed: {why}")]
    Tls { target: String, why: String },
    #[error("target `{target}` broke the protocol: {why}")]
    Protocol { target: String, why: String },
    #[error("postern did not log in to target `{target}`: {why}")]
    Unsafe { target: String, why: String },
}

pub struct Upstream {
    pub io: Box<dyn Io>,
    /// The target's `ParameterStatus` messages, as sent.
    pub parameters: Vec<Bytes>,
    /// The target backend's cancel key.
    pub key: Option<(i32, i32)>,
}

pub struct Connect<'a> {
    pub target: &'a Target,
    pub database: &'a str,
    pub db_user: &'a str,
    pub password: &'a str,
    pub client_params: &'a [(String, String)],
    pub timeout: Duration,
    pub ca_file: Option<&'a std::path::Path>,
}

pub async fn connect(c: Connect<'_>) -> Result<Upstream, UpstreamError> {
    let name = c.target.name.clone();
    let timeout = c.timeout;
    tokio::time::timeout(timeout, handshake(c))
        .await
        .unwrap_or_else(|_| {
            Err(UpstreamError::Unreachable {
                target: name,
                addr: String::new(),
                why: format!(
                    "no answer within {}",
                    crate::duration::Dur::from_secs(timeout.as_secs())
                ),
            })
        })
}

/// Reads one message: (type, whole frame).
pub(super) async fn read_message(
    io: &mut Box<dyn Io>,
    buf: &mut BytesMut,
) -> std::io::Result<(u8, Bytes)> {
    loop {
        match wire::frame(buf, wire::MAX_MESSAGE) {
            Ok(Some((tag, len))) => return Ok((tag, buf.split_to(len).freeze())),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        if io.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn handshake(c: Connect<'_>) -> Result<Upstream, UpstreamError> {
    let target = c.target.name.clone();
    let addr = c.target.address.clone();
    let unreachable = |why: String| UpstreamError::Unreachable {
        target: target.clone(),
        addr: addr.clone(),
        why,
    };
    let protocol = |why: String| UpstreamError::Protocol {
        target: target.clone(),
        why,
    };
    let mut tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mode = c.target.tls_mode.unwrap_or_default();
    // Only a server whose certificate postern verified may see the password itself.
    let verified = mode == TlsMode::VerifyFull;
    let mut binding: Option<Vec<u8>> = None;
    let mut io: Box<dyn Io> = if mode == TlsMode::Disable {
        Box::new(tcp)
    } else {
        let mut b = BytesMut::new();
        frontend::ssl_request(&mut b);
        tcp.write_all(&b)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = tcp
            .read_u8()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if answer != b'S' {
            return Err(UpstreamError::Tls {
                target: target.clone(),
                why: "the server does not accept TLS; set the target's tls_mode to disable only on a trusted network".into(),
            });
        }
        let tls_err = |why: String| UpstreamError::Tls {
            target: target.clone(),
            why,
        };
        let builder = rustls::ClientConfig::builder_with_provider(crate::api::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?;
        let config = if mode == TlsMode::VerifyFull {
            let path = c.ca_file.ok_or_else(|| {
                tls_err("tls_mode verify-full needs postgres.target_ca_file in postern.toml".into())
            })?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_err(format!("cannot read {}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(crate::client::https::accept_any())
                .with_no_client_auth()
        };
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name =
            ServerName::try_from(host.to_string()).map_err(|e| tls_err(e.to_string()))?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| match (mode, c.ca_file) {
                (TlsMode::VerifyFull, Some(ca)) => tls_err(format!(
                    "{e} (verified against postgres.target_ca_file {})",
                    ca.display()
                )),
                _ => tls_err(e.to_string()),
            })?;
        binding = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::credentials::scram::end_point(c));
        Box::new(tls)
    };
    let tls = mode != TlsMode::Disable;
    let unsafe_ = |why: String| UpstreamError::Unsafe {
        target: target.clone(),
        why,
    };

    let mut params: Vec<(&str, &str)> = vec![("user", c.db_user), ("database", c.database)];
    for (k, v) in c.client_params {
        params.push((k, v));
    }
    let mut out = BytesMut::new();
    frontend::startup_message(params, &mut out).map_err(|e| protocol(e.to_string()))?;
    io.write_all(&out)
        .await
        .map_err(|e| unreachable(e.to_string()))?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramClient> = None;
    let refused = |frame: &[u8]| {
        let (code, message) = error_fields(wire::body(frame));
        UpstreamError::Refused {
            target: target.clone(),
            code,
            message,
        }
    };
    // Authentication.
    loop {
        let (tag, frame) = read_message(&mut io, &mut buf)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match tag {
            b'E' => return Err(refused(&frame)),
            b'R' => {}
            b'N' | b'v' => continue,
            t => {
                return Err(protocol(format!(
                    "unexpected message `{}` during authentication",
                    t as char
                )));
            }
        }
        let body = wire::body(&frame);
        if body.len() < 4 {
            return Err(protocol("short authentication message".into()));
        }
        let kind = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let rest = &body[4..];
        out.clear();
        match kind {
            0 => break,
            3 | 5 if !verified => {
                let method = if kind == 3 { "a cleartext" } else { "an MD5" };
                return Err(unsafe_(format!(
                    "it asks for {method} password, which postern sends only to a target whose certificate it verified (tls_mode = verify-full); configure the target for SCRAM-SHA-256 or set tls_mode = verify-full with postgres.target_ca_file"
                )));
            }
            3 => frontend::password_message(c.password.as_bytes(), &mut out)
                .map_err(|e| protocol(e.to_string()))?,
            5 => {
                let salt: [u8; 4] = rest
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| protocol("short MD5 salt".into()))?;
                let hash = md5_hash(c.db_user.as_bytes(), c.password.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut out)
                    .map_err(|e| protocol(e.to_string()))?;
            }
            10 => {
                let mechanisms: Vec<String> = rest
                    .split(|&b| b == 0)
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .collect();
                let plus = mechanisms.iter().any(|m| m == SCRAM_SHA_256_PLUS);
                let (mechanism, cb) = match &binding {
                    // Over TLS, the proof is bound to the certificate this server showed:
                    // a server relaying it to another cannot use it.
                    Some(b) if plus => (SCRAM_SHA_256_PLUS, Some(b.clone())),
                    _ if tls && !verified => {
                        return Err(unsafe_(format!(
                            "over TLS without certificate verification (tls_mode = require), postern logs in only with SCRAM channel binding (SCRAM-SHA-256-PLUS), and the server offers {mechanisms:?}{}; set tls_mode = verify-full with postgres.target_ca_file",
                            if plus {
                                " with a certificate whose signature has no hash to bind to"
                            } else {
                                ""
                            }
                        )));
                    }
                    _ if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) => {
                        return Err(protocol(format!(
                            "the server offers SASL mechanisms {mechanisms:?}, not SCRAM-SHA-256"
                        )));
                    }
                    _ => (SCRAM_SHA_256, None),
                };
                let s = ScramClient::new(c.password, cb).map_err(|e| protocol(e.to_string()))?;
                frontend::sasl_initial_response(mechanism, s.message(), &mut out)
                    .map_err(|e| protocol(e.to_string()))?;
                scram = Some(s);
            }
            11 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| protocol("SASL continue before SASL start".into()))?;
                s.update(rest)
                    .map_err(|e| protocol(format!("SCRAM: {e}")))?;
                frontend::sasl_response(s.message(), &mut out)
                    .map_err(|e| protocol(e.to_string()))?;
            }
            12 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| protocol("SASL final before SASL start".into()))?;
                s.finish(rest)
                    .map_err(|e| protocol(format!("SCRAM server signature: {e}")))?;
                continue;
            }
            k => {
                return Err(protocol(format!(
                    "the server asks for authentication method {k}, which postern does not speak"
                )));
            }
        }
        io.write_all(&out)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    }
    // Up to the first ReadyForQuery.
    let mut parameters = Vec::new();
    let mut key = None;
    loop {
        let (tag, frame) = read_message(&mut io, &mut buf)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match tag {
            b'S' => parameters.push(frame),
            b'K' => {
                let b = wire::body(&frame);
                if b.len() >= 8 {
                    key = Some((
                        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                    ));
                }
            }
            b'Z' => break,
            b'E' => return Err(refused(&frame)),
            _ => {}
        }
    }
    if !buf.is_empty() {
        return Err(protocol(
            "the server sent data before the first query".into(),
        ));
    }
    Ok(Upstream {
        io,
        parameters,
        key,
    })
}
