//! PostgreSQL through postern: TLS and token authentication of the client, the access
//! decision, a brokered login to the target, and a relay that records every statement.
//!
//! The startup `user` is the postern user; the `database` is `TARGET/DATABASE` (or just
//! `TARGET` for the database `postern db login` chose). The password is the database
//! token from `postern db login`; it names the database user postern logs in as.

mod auth;
pub mod backends;
mod cancel;
mod framer;
mod link;
mod proof;
mod relay;
mod scram;
mod session;
mod settings;
mod text;
pub(crate) mod tracker;
mod transcript;
mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use backends::Backends;
pub use cancel::CancelMap;

use crate::audit::AuditEvent;
use crate::policy::Request;
use crate::server::Shared;
use crate::server::admission::Gate;
use crate::server::limits::Limits;
use wire::Startup;

/// Any byte stream a session runs over: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP connection itself when nothing is layered on it (the relay then splits
    /// it into halves that need no lock).
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Box<dyn Io>>;
}

impl Io for TcpStream {
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Box<dyn Io>> {
        Ok(*self)
    }
}

macro_rules! layered_io {
    ($($t:ty),*) => {$(
        impl Io for $t {
            fn into_tcp(self: Box<Self>) -> Result<TcpStream, Box<dyn Io>> {
                Err(self)
            }
        }
    )*};
}

layered_io!(
    tokio_rustls::server::TlsStream<TcpStream>,
    tokio_rustls::client::TlsStream<TcpStream>,
    tokio::io::Join<tokio::io::Empty, tokio::io::Sink>
);
#[cfg(test)]
layered_io!(tokio::io::DuplexStream);

/// A refusal sent to the client as a FATAL `ErrorResponse`.
struct Refusal {
    code: &'static str,
    message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Serves one PostgreSQL client connection.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    gate: Gate,
) {
    // From connecting to authenticated, the client has `authentication_timeout` (the
    // gate's deadline); a displaced or late client is dropped.
    let started = tokio::select! {
        s = startup(stream, peer, &shared) => s,
        why = gate.expired() => {
            debug!(reason = why, "client did not finish the startup");
            return;
        }
    };
    let (mut io, client) = match started {
        Some(Ok(x)) => x,
        Some(Err((io, r))) => return send_fatal(io, r).await,
        None => return,
    };
    let authorized = tokio::select! {
        a = auth::authorize(&mut io, &client, peer, &shared) => a,
        why = gate.expired() => {
            debug!(reason = why, "client did not finish authenticating");
            Err(refuse(
                "08006",
                format!(
                    "authentication not finished within {} ({why}); connect again",
                    shared.config.postgres.authentication_timeout
                ),
            ))
        }
    };
    let result = match authorized {
        Ok(a) => {
            gate.passed();
            session::run(&mut io, client, a, peer, &shared, cancel).await
        }
        Err(r) => Err(r),
    };
    if let Err(r) = result {
        send_fatal(io, r).await;
    }
}

/// Ends a connection with a FATAL error, without waiting long on a client that does not read.
async fn send_fatal(mut io: Box<dyn Io>, r: Refusal) {
    let bye = async {
        let _ = io.write_all(&wire::fatal(r.code, &r.message)).await;
        let _ = io.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), bye).await;
}

/// What the client asked for at startup.
struct ClientStart {
    params: Vec<(String, String)>,
    tls: bool,
}

impl ClientStart {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Started = Result<(Box<dyn Io>, ClientStart), (Box<dyn Io>, Refusal)>;

/// Reads one startup packet: `None` when the client left or sent too little.
async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> Option<Result<Startup, Refusal>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.ok()?;
    let len = match wire::startup_len(head) {
        Ok(l) => l,
        Err(e) => return Some(Err(refuse("08P01", format!("invalid startup packet: {e}")))),
    };
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.ok()?;
    Some(wire::parse_startup(&body).map_err(|e| refuse("08P01", e.to_string())))
}

/// Answers a startup message asking for a newer minor version or protocol options.
async fn accept_startup(
    mut io: Box<dyn Io>,
    minor: u16,
    params: Vec<(String, String)>,
    tls: bool,
) -> Option<Started> {
    if minor > 0 || params.iter().any(|(k, _)| k.starts_with("_pq_.")) {
        let unknown: Vec<String> = params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect();
        io.write_all(&wire::negotiate(0, &unknown)).await.ok()?;
    }
    Some(Ok((io, ClientStart { params, tls })))
}

/// Negotiates TLS and reads the startup message. `None`: nothing to answer (a cancel
/// request, or a client that left).
async fn startup(mut tcp: TcpStream, peer: SocketAddr, shared: &Arc<Shared>) -> Option<Started> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.ok()? == 0 {
        return None;
    }
    // PostgreSQL 17's direct TLS starts with a ClientHello (ALPN `postgresql`); everyone
    // else sends SSLRequest first, answered before the handshake.
    if first[0] != 0x16 {
        loop {
            match read_packet(&mut tcp).await? {
                Ok(Startup::Ssl) => {
                    tcp.write_all(b"S").await.ok()?;
                    break;
                }
                Ok(Startup::GssEnc) => tcp.write_all(b"N").await.ok()?,
                Ok(Startup::Cancel { pid, secret }) => {
                    shared
                        .pg_cancel
                        .forward(pid, secret, &shared.store, &shared.keys.master_key)
                        .await;
                    return None;
                }
                Ok(Startup::Startup { minor, params }) => {
                    return accept_startup(Box::new(tcp), minor, params, false).await;
                }
                Err(r) => {
                    debug!(peer = %peer, error = %r.message, "not a PostgreSQL client");
                    return Some(Err((Box::new(tcp), r)));
                }
            }
        }
    }
    let mut io: Box<dyn Io> = Box::new(shared.pg_tls.accept(tcp).await.ok()?);
    match read_packet(&mut io).await? {
        Ok(Startup::Startup { minor, params }) => accept_startup(io, minor, params, true).await,
        Ok(Startup::Cancel { pid, secret }) => {
            shared
                .pg_cancel
                .forward(pid, secret, &shared.store, &shared.keys.master_key)
                .await;
            // close_notify: libpq's cancel API reports a bare EOF as a failure.
            let _ = io.shutdown().await;
            None
        }
        Ok(_) => Some(Err((
            io,
            refuse("08P01", "encryption was already negotiated"),
        ))),
        Err(r) => Some(Err((io, r))),
    }
}

/// The live session as the server's watcher sees it.
struct PgSession {
    cert_serial: Option<u64>,
    user: String,
    target: String,
    database: String,
    db_user: String,
    limits: Arc<Limits>,
}

impl crate::server::live::LiveSession for PgSession {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn protocol(&self) -> &'static str {
        "postgres"
    }

    fn review(&self, now: &crate::server::live::Current) {
        if let Some(serial) = self.cert_serial
            && now.revoked.contains(&serial)
        {
            self.limits.terminate(
                "revoked",
                format!(
                    "access was withdrawn: the postern login this session's token was issued under (serial {serial}) was revoked"
                ),
            );
            return;
        }
        self.limits.review(
            &now.policy,
            &self.user,
            &self.target,
            &Request::Postgres {
                database: &self.database,
                db_user: &self.db_user,
            },
        );
    }
}

async fn audit(shared: &Shared, mut e: AuditEvent, peer: SocketAddr) {
    e.source = Some(peer.to_string());
    shared.audit(e).await;
}

pub use session::credential_purpose;

/// Logs in to a PostgreSQL target as postern would for a session, and leaves (for
/// `postern doctor`): `Err` is the message a session would have been refused with.
pub async fn probe(
    target: &crate::policy::Target,
    database: &str,
    db_user: &str,
    password: &str,
    timeout: std::time::Duration,
    ca_file: Option<&std::path::Path>,
) -> Result<Option<i32>, String> {
    let up = upstream::connect(upstream::Connect {
        target,
        database,
        db_user,
        password,
        client_params: &[],
        timeout,
        ca_file,
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut io = up.io;
    let _ = io.write_all(b"X\0\0\0\x04").await;
    let _ = io.shutdown().await;
    Ok(up.key.map(|k| k.0))
}
