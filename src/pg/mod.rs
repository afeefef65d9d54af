//! PostgreSQL through postern: TLS and token authentication of the client, the access
//! decision, a brokered login to the target, and a relay that records every statement.
//!
//! The startup `user` is the postern user; the `database` is `TARGET/DATABASE` (or just
//! `TARGET` for the database `postern db login` chose). The password is the database
//! token from `postern db login`; it names the database user postern logs in as.

mod cancel;
mod link;
mod relay;
mod settings;
mod text;
mod tracker;
mod transcript;
mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

pub use cancel::CancelMap;

use crate::audit::{Actor, AuditEvent, Outcome, format_clock, now_ms};
use crate::credentials::token;
use crate::policy::{Decision, Request, Target, TargetKind, UserStatus, decide};
use crate::recording::{self, LineRecorder};
use crate::server::Shared;
use crate::server::limits::Limits;
use crate::store::{SessionEnd, SessionRow};
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

/// A client gets this long from connecting to being authenticated.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

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
) {
    let started = tokio::time::timeout(STARTUP_TIMEOUT, startup(stream, peer, &shared)).await;
    let (mut io, client) = match started {
        Ok(Some(Ok(x))) => x,
        Ok(Some(Err((mut io, r)))) => {
            let _ = io.write_all(&wire::fatal(r.code, &r.message)).await;
            let _ = io.shutdown().await;
            return;
        }
        Ok(None) => return,
        Err(_) => {
            debug!("client did not finish the startup in time");
            return;
        }
    };
    if let Err(r) = run(&mut io, client, peer, &shared, cancel).await {
        let _ = io.write_all(&wire::fatal(r.code, &r.message)).await;
        let _ = io.shutdown().await;
    }
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
                    shared.pg_cancel.forward(pid, secret).await;
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
            shared.pg_cancel.forward(pid, secret).await;
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

    fn review(&self, now: &crate::server::live::Current) {
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
    if let Err(err) = shared.store.append_audit(&e).await {
        warn!(error = %err, kind = %e.kind, "cannot write audit event");
    }
}

async fn run(
    io: &mut Box<dyn Io>,
    client: ClientStart,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    cancel: CancellationToken,
) -> Result<(), Refusal> {
    if !client.tls && !shared.config.postgres.allow_plaintext {
        return Err(refuse(
            "28000",
            "postern accepts PostgreSQL connections over TLS only: connect with sslmode=require (or verify-full with postern's CA, `postern admin tls-ca`)",
        ));
    }
    let user = client.param("user").unwrap_or_default().to_string();
    if user.is_empty() {
        return Err(refuse(
            "28000",
            "no user name given: the user is your postern user",
        ));
    }
    let dbparam = client.param("database").unwrap_or(&user).to_string();
    let (mut target_name, mut asked_db) = match dbparam.split_once('/') {
        Some((t, d)) => (t.to_string(), Some(d.to_string())),
        None => (dbparam.clone(), None),
    };
    let printable = crate::policy::names::printable;

    // The password is the database token.
    io.write_all(&wire::auth(3, &[]))
        .await
        .map_err(|_| refuse("08006", "client left"))?;
    let mut buf = BytesMut::with_capacity(1024);
    let secret = loop {
        match wire::frame(&buf, wire::MAX_STARTUP) {
            Ok(Some((b'p', len))) => {
                let frame = buf.split_to(len);
                let mut b = wire::body(&frame);
                break wire::cstr(&mut b).unwrap_or_default();
            }
            Ok(Some((t, _))) => {
                return Err(refuse(
                    "08P01",
                    format!("expected a password message, got `{}`", t as char),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(refuse("08P01", e.to_string())),
        }
        if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return Err(refuse("08006", "client left during authentication"));
        }
    };
    let ip = peer.ip();
    if let Err(wait) = shared.api.limiter.check(&user, ip) {
        audit(
            shared,
            AuditEvent::new("auth.rate_limited", &Actor("unknown".into()), Outcome::Deny, json!({ "method": "db_token", "user": printable(&user), "retry_after": wait.as_secs() + 1 })),
            peer,
        )
        .await;
        return Err(refuse(
            "28P01",
            format!(
                "too many failed logins; try again in {} s",
                wait.as_secs() + 1
            ),
        ));
    }
    let fail = |reason: &str| {
        AuditEvent::new(
            "auth.failure",
            &Actor::user(&user),
            Outcome::Failure,
            json!({ "method": "db_token", "reason": reason, "database": printable(&dbparam) }),
        )
    };
    let tok = shared
        .store
        .db_token(&token::hash(&secret))
        .await
        .map_err(|_| {
            refuse(
                "08006",
                "postern cannot reach its store right now; try again shortly",
            )
        })?;
    let again = format!("run postern db login {}", printable(&target_name));
    // A plain DATABASE names the database the token is bound to (drivers that query
    // catalogs with their connection's database name need it to be the real one).
    if let Some(t) = &tok
        && asked_db.is_none()
        && t.user == user
        && t.database == dbparam
        && t.target != dbparam
    {
        target_name = t.target.clone();
        asked_db = Some(t.database.clone());
    }
    let tok = match tok {
        Some(t)
            if t.user == user
                && t.target == target_name
                && asked_db.as_ref().is_none_or(|d| *d == t.database) =>
        {
            t
        }
        // A valid token of this user, for another target: say what is wrong with the
        // database name (an unknown target is only named to token holders).
        Some(t) if t.user == user && t.expires_ms > now_ms() && t.target != target_name => {
            let known = shared
                .store
                .load_policy()
                .await
                .map(|p| p.targets.contains_key(&target_name))
                .unwrap_or(true);
            if !known {
                return Err(refuse(
                    "3D000",
                    format!(
                        "no target named `{}`; connect with database TARGET/DATABASE",
                        printable(&target_name)
                    ),
                ));
            }
            shared.api.limiter.failed(&user, ip);
            audit(shared, fail("token for another target"), peer).await;
            return Err(refuse(
                "28P01",
                format!(
                    "password authentication failed for user \"{}\": this token is for `{}/{}`; {again}",
                    printable(&user),
                    t.target,
                    t.database
                ),
            ));
        }
        _ => {
            shared.api.limiter.failed(&user, ip);
            audit(
                shared,
                fail("not a database token for this user, target and database"),
                peer,
            )
            .await;
            return Err(refuse(
                "28P01",
                format!(
                    "password authentication failed for user \"{}\": the password must be a database token for this target and database; {again}",
                    printable(&user)
                ),
            ));
        }
    };
    if tok.expires_ms <= now_ms() {
        audit(shared, fail("token expired"), peer).await;
        return Err(refuse(
            "28P01",
            format!(
                "token expired at {} — {again}",
                format_clock(tok.expires_ms)
            ),
        ));
    }
    shared.api.limiter.succeeded(&user, ip);

    // The access decision, on the current policy.
    let policy = shared.store.load_policy().await.map_err(|_| {
        refuse(
            "08006",
            "postern cannot read its policy right now; try again shortly",
        )
    })?;
    let actor = Actor::user(&user);
    let Some(target) = policy.targets.get(&target_name).cloned() else {
        return Err(refuse(
            "3D000",
            format!("no target named `{}`", printable(&target_name)),
        ));
    };
    if target.kind != TargetKind::Postgres {
        return Err(refuse(
            "3D000",
            format!(
                "target `{}` is an {} target, not a database",
                target.name, target.kind
            ),
        ));
    }
    let Some(u) = policy.users.get(&user) else {
        return Err(refuse(
            "28000",
            format!("user `{}` no longer exists", printable(&user)),
        ));
    };
    let database = tok.database.clone();
    let db_user = tok.db_user.clone();
    let grant = match decide(
        u,
        &policy.roles_of(u),
        &target,
        &Request::Postgres {
            database: &database,
            db_user: &db_user,
        },
    ) {
        Decision::Allow(g) => g,
        Decision::Deny(reason) => {
            let mut e = AuditEvent::new(
                "access.deny",
                &actor,
                Outcome::Deny,
                json!({ "database": database, "db_user": db_user, "reason": reason.to_string(), "decision": reason }),
            );
            e.target = Some(target.name.clone());
            audit(shared, e, peer).await;
            let code = if u.status == UserStatus::Locked {
                "28000"
            } else {
                "42501"
            };
            return Err(refuse(
                code,
                format!(
                    "access to database `{database}` as `{db_user}` on `{}` denied: {reason}",
                    target.name
                ),
            ));
        }
    };
    audit(
        shared,
        AuditEvent::new(
            "auth.success",
            &actor,
            Outcome::Success,
            json!({ "method": "db_token", "database": database, "db_user": db_user }),
        ),
        peer,
    )
    .await;

    // The client's settings, then the brokered credential, then the target.
    let settings = settings::forwarded(&client.params).map_err(|r| refuse(r.code, r.message))?;
    let password = brokered(shared, &target, &db_user).await?;
    let up = upstream::connect(upstream::Connect {
        target: &target,
        database: &database,
        db_user: &db_user,
        password: &password,
        client_params: &settings,
        timeout: Duration::from_secs(shared.config.postgres.connect_timeout.as_secs().max(1)),
        ca_file: shared.config.postgres.target_ca_file.as_deref(),
    })
    .await;
    drop(password);
    let up = match up {
        Ok(u) => u,
        Err(e) => {
            let mut ev = AuditEvent::new(
                "session.upstream_error",
                &actor,
                Outcome::Failure,
                json!({ "error": e.to_string() }),
            );
            ev.target = Some(target.name.clone());
            audit(shared, ev, peer).await;
            return Err(refuse("08006", e.to_string()));
        }
    };

    // The session: index, recording, limits.
    let id = Uuid::new_v4().to_string();
    let started = now_ms();
    let row = SessionRow {
        id: id.clone(),
        kind: "postgres".into(),
        user: user.clone(),
        target: target.name.clone(),
        login: format!("{db_user}/{database}"),
        client_addr: peer.to_string(),
        started_ms: started,
        ended_ms: None,
        end_reason: None,
        bytes_in: 0,
        bytes_out: 0,
        exit_status: None,
        cert_serial: None,
        recordings: vec![],
    };
    let not_recorded = || {
        refuse(
            "58000",
            "postern cannot record this session right now, so it is not allowed to run; tell an admin",
        )
    };
    shared
        .store
        .start_session(&row)
        .await
        .map_err(|_| not_recorded())?;
    let path = recording::path_with(
        &shared.config.data_dir,
        started,
        &format!("{id}-0.pg.jsonl"),
    );
    let header = json!({
        "version": 1, "kind": "postgres", "session": id, "user": user, "target": target.name,
        "database": database, "db_user": db_user, "client": peer.to_string(), "started_ms": started,
    });
    let recorder = match LineRecorder::create(path.clone(), &header.to_string()).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot create the recording");
            let mut ev = AuditEvent::new(
                "session.recording_failed",
                &actor,
                Outcome::Failure,
                json!({ "channel": 0, "error": e.to_string() }),
            );
            ev.session_id = Some(id.clone());
            audit(shared, ev, peer).await;
            end_row(shared, &id, "recording failed", 0, 0).await;
            return Err(not_recorded());
        }
    };
    let path_text = recording::stored_path(&shared.config.data_dir, &path);
    let _ = shared.store.add_recording(&id, 0, &path_text).await;
    let end = CancellationToken::new();
    let session = Arc::new(PgSession {
        user: user.clone(),
        target: target.name.clone(),
        database: database.clone(),
        db_user: db_user.clone(),
        limits: Arc::new(Limits::new(
            grant.settings.max_session_ttl,
            grant.settings.idle_timeout,
            shared.config.ssh.expiry_warning,
            i64::MAX / 2,
            None,
            end.clone(),
        )),
    });
    let event = |kind: &str, result: Outcome, details: serde_json::Value| {
        let mut e = AuditEvent::new(kind, &actor, result, details);
        e.target = Some(target.name.clone());
        e.session_id = Some(id.clone());
        e
    };
    audit(shared, event("session.start", Outcome::Success, json!({ "kind": "postgres", "database": database, "db_user": db_user, "rule": grant.rule.to_string(), "roles": grant.roles, "recording": path_text })), peer).await;
    info!(session = %id, user = %user, target = %target.name, database = %database, db_user = %db_user, "postgres session started");
    shared.live.register(&id, session.clone());

    // Tell the client it is in: postern's own cancel key stands for the target's.
    let key = shared.pg_cancel.register(&target.address, up.key);
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&wire::auth(0, &[]));
    for p in &up.parameters {
        hello.extend_from_slice(p);
    }
    hello.extend_from_slice(&wire::backend_key(key.0, key.1));
    hello.extend_from_slice(&ready_idle());
    let result = match io.write_all(&hello).await {
        Ok(()) => {
            // The relay owns the connection while it runs and hands it back for a last
            // word (unless it had to abandon a peer that stopped reading).
            let client = std::mem::replace(io, closed());
            let dest = shared.pg_cancel.lookup(key.0, key.1);
            let mut outcome = relay::run(relay::Relay {
                client,
                upstream: up.io,
                recorder: recorder.sink(),
                limits: session.limits.clone(),
                cancel: cancel.clone(),
                redact: grant.settings.redact_parameters,
                parameters: up.parameters,
                cancel_target: Box::pin(async move {
                    if let Some(d) = dest {
                        d.send().await;
                    }
                }),
            })
            .await;
            if let Some(client) = outcome.client.take() {
                *io = client;
            }
            outcome
        }
        Err(_) => relay::Outcome {
            reason: "connection lost".into(),
            bytes_in: 0,
            bytes_out: 0,
            client: None,
            limit: None,
        },
    };
    shared.pg_cancel.unregister(key);
    shared.live.unregister(&id);
    let recording_failed = recorder.failed().is_cancelled();
    let finished = recorder.finish().await;
    let (reason, message) = match session.limits.ending() {
        Some(e) => (e.reason.to_string(), Some(e.message)),
        None if recording_failed => ("recording failed".into(), None),
        None => (result.reason.clone(), None),
    };
    let mut recordings = Vec::new();
    match finished {
        Ok(done) => {
            let _ = shared
                .store
                .finish_recording(&id, 0, &done.sha256, done.bytes)
                .await;
            let file = path.strip_prefix(&shared.config.data_dir).unwrap_or(&path);
            recordings.push(
                json!({ "channel": 0, "file": file.display().to_string(), "sha256": done.sha256 }),
            );
        }
        Err(e) => {
            warn!(session = %id, error = %e, "recording failed");
            audit(
                shared,
                event(
                    "session.recording_failed",
                    Outcome::Failure,
                    json!({ "channel": 0, "error": e.to_string() }),
                ),
                peer,
            )
            .await;
        }
    }
    if let (Some(kind), Some(m)) = (crate::server::limits::ending_event(&reason), &message) {
        audit(
            shared,
            event(kind, Outcome::Success, json!({ "message": m })),
            peer,
        )
        .await;
    }
    audit(shared, event("session.end", Outcome::Success, json!({ "reason": reason, "bytes_in": result.bytes_in, "bytes_out": result.bytes_out, "recordings": recordings })), peer).await;
    // The row is closed last: whoever sees the session ended finds its events.
    end_row(shared, &id, &reason, result.bytes_in, result.bytes_out).await;
    if let Some(limit) = result.limit {
        return Err(refuse(
            "54000",
            format!("postern: {limit}; the session ends"),
        ));
    }
    match message {
        // 57P05 is PostgreSQL's own idle-session timeout; the other endings are 57P01.
        Some(m) => Err(refuse(
            if reason == "idle" { "57P05" } else { "57P01" },
            format!("postern: {m}"),
        )),
        None => Ok(()),
    }
}

async fn end_row(shared: &Shared, id: &str, reason: &str, bytes_in: u64, bytes_out: u64) {
    let end = SessionEnd {
        reason: reason.to_string(),
        bytes_in,
        bytes_out,
        exit_status: None,
    };
    if let Err(e) = shared.store.end_session(id, &end).await {
        warn!(session = %id, error = %e, "cannot close the session row");
    }
}

/// A stand-in connection: reads nothing, discards writes.
fn closed() -> Box<dyn Io> {
    Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()))
}

/// `ReadyForQuery` (idle).
fn ready_idle() -> Bytes {
    Bytes::from_static(b"Z\0\0\0\x05I")
}

/// The target password postern logs in with, unsealed only for the connection.
async fn brokered(shared: &Shared, target: &Target, db_user: &str) -> Result<String, Refusal> {
    let missing = || {
        refuse(
            "28000",
            format!(
                "postern holds no credential for database user `{db_user}` on `{}`; an admin sets it with `postern admin target set-credential {} --db-user {db_user} --password-stdin`",
                target.name, target.name
            ),
        )
    };
    let sealed = shared
        .store
        .target_credential(&target.name, db_user)
        .await
        .map_err(|_| {
            refuse(
                "08006",
                "postern cannot reach its store right now; try again shortly",
            )
        })?
        .ok_or_else(missing)?;
    let plain = shared
        .keys
        .master_key
        .open(&credential_purpose(&target.name, db_user), &sealed)
        .map_err(|_| missing())?;
    String::from_utf8(plain).map_err(|_| missing())
}

/// The associated data a brokered credential is sealed with.
pub fn credential_purpose(target: &str, db_user: &str) -> String {
    format!("target:{target}:user:{db_user}")
}
