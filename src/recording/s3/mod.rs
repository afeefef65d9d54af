//! A client for S3-compatible object storage (AWS S3, MinIO, Ceph, R2): PUT and GET of
//! whole objects, signed with SigV4, over hyper HTTP/1.1 with rustls (aws-lc-rs). Only
//! what recordings need; connections are kept and reused, every attempt has a deadline,
//! failures are retried with back-off and then reported with what S3 said.

pub mod sigv4;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::S3 as S3Config;
use crate::http::Endpoint;
pub use sigv4::Credentials;

/// One attempt: connect, TLS, request and answer.
const ATTEMPT: Duration = Duration::from_secs(30);
/// Waits before the second and third attempts.
const BACKOFF: [u64; 2] = [200, 1000];
/// The largest object read back (chunks are at most `recording::store::CHUNK_MAX`).
const MAX_OBJECT: usize = 64 << 20;
/// Idle connections kept for reuse.
const IDLE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("{0}")]
    Config(String),
    #[error("object storage {what} {key}: {why}")]
    Request {
        what: &'static str,
        key: String,
        why: String,
    },
}

/// A bucket, and where and how to reach it.
pub struct Bucket {
    endpoint: Endpoint,
    /// The `Host` header (and what TLS names).
    host: String,
    /// Path before the key: `/` (virtual-hosted) or `/BUCKET/` (path style).
    base: String,
    prefix: String,
    region: String,
    creds: Credentials,
    tls: Option<Arc<ClientConfig>>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    pub name: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.name, self.prefix)
    }
}

impl Bucket {
    /// The bucket of `[recordings.s3]`, with credentials from the environment.
    pub fn from_config(cfg: &S3Config) -> Result<Bucket, S3Error> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (Some(access_key), Some(secret_key)) =
            (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(S3Error::Config(format!(
                "recordings.s3.bucket is `{}`, but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set: set them in postern's environment",
                cfg.bucket
            )));
        };
        let creds = Credentials {
            access_key,
            secret_key,
            session_token: var("AWS_SESSION_TOKEN"),
        };
        Bucket::new(cfg, creds)
    }

    pub fn new(cfg: &S3Config, creds: Credentials) -> Result<Bucket, S3Error> {
        let bad = |e: String| S3Error::Config(format!("recordings.s3: {e}"));
        if cfg.bucket.is_empty()
            || cfg.bucket.len() > 63
            || !cfg
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(bad(format!(
                "`{}` is not a bucket name (3-63 lower-case letters, digits, `-` and `.`)",
                cfg.bucket
            )));
        }
        let path_style = cfg.path_style.unwrap_or(!cfg.endpoint.is_empty());
        let endpoint = if cfg.endpoint.is_empty() {
            let host = if path_style {
                format!("s3.{}.amazonaws.com", cfg.region)
            } else {
                format!("{}.s3.{}.amazonaws.com", cfg.bucket, cfg.region)
            };
            Endpoint::parse(&format!("https://{host}")).map_err(bad)?
        } else {
            let mut e =
                Endpoint::parse(&cfg.endpoint).map_err(|e| bad(format!("endpoint: {e}")))?;
            if !path_style {
                e.host = format!("{}.{}", cfg.bucket, e.host);
            }
            e
        };
        let mut base = endpoint.path.trim_end_matches('/').to_string();
        base.push('/');
        if path_style {
            base.push_str(&sigv4::uri_encode(&cfg.bucket, false));
            base.push('/');
        }
        let default_port = if endpoint.tls { 443 } else { 80 };
        let host = if endpoint.port == default_port {
            endpoint.host.clone()
        } else {
            endpoint.authority()
        };
        let tls = if endpoint.tls {
            Some(crate::http::tls_config("recordings.s3.ca_file", &cfg.ca_file).map_err(bad)?)
        } else {
            None
        };
        Ok(Bucket {
            endpoint,
            host,
            base,
            prefix: cfg.prefix.clone(),
            region: cfg.region.clone(),
            creds,
            tls,
            idle: Mutex::new(Vec::new()),
            name: cfg.bucket.clone(),
        })
    }

    /// Stores `body` as `key` (under the prefix), replacing any object of that name.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), S3Error> {
        match self.send("PUT", key, body).await {
            Ok((200..=299, _)) => Ok(()),
            Ok((status, answer)) => Err(self.refused("PUT", key, status, &answer)),
            Err(why) => Err(S3Error::Request {
                what: "PUT",
                key: self.full(key),
                why,
            }),
        }
    }

    /// The object `key`, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, S3Error> {
        match self.send("GET", key, Bytes::new()).await {
            Ok((200..=299, body)) => Ok(Some(body)),
            Ok((404, _)) => Ok(None),
            Ok((status, answer)) => Err(self.refused("GET", key, status, &answer)),
            Err(why) => Err(S3Error::Request {
                what: "GET",
                key: self.full(key),
                why,
            }),
        }
    }

    fn full(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.name, self.prefix)
    }

    /// What an answer other than success says: S3's error code and message.
    fn refused(&self, what: &'static str, key: &str, status: u16, body: &[u8]) -> S3Error {
        let text = String::from_utf8_lossy(body);
        let tag = |t: &str| {
            let open = format!("<{t}>");
            let start = text.find(&open)? + open.len();
            let end = text[start..].find('<')? + start;
            Some(crate::printable::safe(&text[start..end]))
        };
        let why = match (tag("Code"), tag("Message")) {
            (Some(c), Some(m)) => format!("HTTP {status}, {c}: {m}"),
            (Some(c), None) => format!("HTTP {status}, {c}"),
            _ => format!("HTTP {status}"),
        };
        let advice = match status {
            403 => " (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket policy)",
            404 => " (check recordings.s3.bucket, endpoint and region)",
            _ => "",
        };
        S3Error::Request {
            what,
            key: self.full(key),
            why: format!("{why}{advice}"),
        }
    }

    /// One request, tried up to three times on connection errors and 5xx answers.
    async fn send(&self, method: &str, key: &str, body: Bytes) -> Result<(u16, Bytes), String> {
        let mut last = String::new();
        for attempt in 0..=BACKOFF.len() {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(BACKOFF[attempt - 1])).await;
            }
            match tokio::time::timeout(ATTEMPT, self.once(method, key, body.clone())).await {
                Ok(Ok((status, answer))) if status < 500 => return Ok((status, answer)),
                Ok(Ok((status, answer))) => {
                    last = format!("HTTP {status}: {}", String::from_utf8_lossy(&answer));
                    last.truncate(300);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("no answer within {} s", ATTEMPT.as_secs()),
            }
        }
        Err(last)
    }

    async fn once(&self, method: &str, key: &str, body: Bytes) -> Result<(u16, Bytes), String> {
        let path = format!(
            "{}{}",
            self.base,
            sigv4::uri_encode(&format!("{}{key}", self.prefix), true)
        );
        let payload = sigv4::sha256_hex(&body);
        let date = sigv4::amz_date(crate::clock::now_ms());
        let mut headers = vec![
            ("host".to_string(), self.host.clone()),
            ("x-amz-content-sha256".to_string(), payload.clone()),
            ("x-amz-date".to_string(), date.clone()),
        ];
        if let Some(t) = &self.creds.session_token {
            headers.push(("x-amz-security-token".to_string(), t.clone()));
        }
        let auth = sigv4::authorization(
            &self.creds,
            &self.region,
            &date,
            &sigv4::Request {
                method,
                path: &path,
                query: "",
                headers: &headers,
                payload_sha256: &payload,
            },
        );
        let mut req = hyper::Request::builder().method(method).uri(path.as_str());
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .header("authorization", auth)
            .header("content-length", body.len())
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let mut sender = self.connection().await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status().as_u16();
        let reusable = !resp
            .headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = Limited::new(resp.into_body(), MAX_OBJECT)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if reusable
            && !sender.is_closed()
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE
        {
            idle.push(sender);
        }
        Ok((status, body))
    }

    /// An idle connection that is still open, or a new one.
    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let reused = self.idle.lock().ok().and_then(|mut v| v.pop());
            match reused {
                Some(mut s) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let e = &self.endpoint;
        let tcp = TcpStream::connect((e.host.as_str(), e.port))
            .await
            .map_err(|err| format!("cannot connect to {}: {err}", e.authority()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(e.host.clone())
                    .map_err(|_| format!("`{}` is not a valid host name", e.host))?;
                let stream = TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|err| format!("TLS with {}: {err}", e.authority()))?;
                handshake(TokioIo::new(stream)).await
            }
            None => handshake(TokioIo::new(tcp)).await,
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection task ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
