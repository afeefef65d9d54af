//! A PostgreSQL session once its client is let in: the brokered login to the target, the
//! session's row, recording and limits, the relay, and the end, recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::auth::Authorized;
use super::transcript::Line;
use super::{
    ClientStart, Io, PgSession, Refusal, audit, backends, refuse, relay, settings, upstream, wire,
};
use crate::audit::{AuditEvent, Outcome, now_ms};
use crate::policy::Target;
use crate::recording::{self, LineRecorder};
use crate::server::Shared;
use crate::server::limits::Limits;
use crate::store::{RecordingRow, SessionEnd, SessionRow};

pub async fn run(
    io: &mut Box<dyn Io>,
    client: ClientStart,
    mut auth: Authorized,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    cancel: CancellationToken,
) -> Result<(), Refusal> {
    let mut pending = auth.success.take();
    let r = session(io, client, auth, peer, shared, cancel, &mut pending).await;
    // Refused before anything else was written.
    if let Some(e) = pending {
        shared.audit(e).await;
    }
    r
}

/// Writes `e` with the `auth.success` still pending before it, in one commit.
async fn audit_after(
    shared: &Shared,
    pending: &mut Option<AuditEvent>,
    mut e: AuditEvent,
    peer: SocketAddr,
) {
    e.source = Some(peer.to_string());
    let mut all: Vec<AuditEvent> = pending.take().into_iter().collect();
    all.push(e);
    shared.audit_all(all).await;
}

async fn session(
    io: &mut Box<dyn Io>,
    client: ClientStart,
    auth: Authorized,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    cancel: CancellationToken,
    pending: &mut Option<AuditEvent>,
) -> Result<(), Refusal> {
    let Authorized {
        user,
        actor,
        target,
        database,
        db_user,
        grant,
        resting,
        cert_serial,
        success: _,
    } = auth;
    // The client's settings, then the brokered credential, then the target.
    let settings = settings::forwarded(&client.params).map_err(|r| refuse(r.code, r.message))?;
    let password = brokered(shared, &target, &db_user).await?;
    // A connection this user's last session left at rest, or a new one.
    let keep_for = shared.config.postgres.backend_idle_timeout.0;
    let backend_key = backends::Key {
        user: user.clone(),
        target: target.name.clone(),
        address: target.address.clone(),
        database: database.clone(),
        db_user: db_user.clone(),
        settings: settings.clone(),
        credential: backends::credential_id(&password),
        thread: std::thread::current().id(),
    };
    let kept = if keep_for.is_zero() {
        None
    } else {
        shared.pg_backends.take(&backend_key, keep_for)
    };
    let reused = kept.is_some();
    let up = match kept {
        Some(b) => Ok(upstream::Upstream {
            io: b.io,
            parameters: b.parameters,
            key: b.key,
        }),
        None => {
            upstream::connect(upstream::Connect {
                target: &target,
                database: &database,
                db_user: &db_user,
                password: &password,
                client_params: &settings,
                timeout: Duration::from_secs(
                    shared.config.postgres.connect_timeout.as_secs().max(1),
                ),
                ca_file: shared.config.postgres.target_ca_file.as_deref(),
            })
            .await
        }
    };
    drop(password);
    let up = match up {
        Ok(u) => u,
        Err(e) => {
            warn!(user = %user, target = %target.name, error = %e, "cannot connect to the target");
            let mut ev = AuditEvent::new(
                "session.upstream_error",
                &actor,
                Outcome::Failure,
                json!({ "error": e.to_string() }),
            );
            ev.target = Some(target.name.clone());
            audit_after(shared, pending, ev, peer).await;
            return Err(refuse("08006", e.to_string()));
        }
    };

    // The session: index, recording, limits.
    let id = Uuid::new_v4().to_string();
    let started = now_ms();
    let path_text = recording::place(started, &format!("{id}-0.pg.jsonl"));
    // The session's row and its recording's, in one commit.
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
        cert_serial: cert_serial.map(|s| s.to_string()),
        roles: grant.roles.clone(),
        replica: shared.replica().map(str::to_string),
        recordings: vec![RecordingRow {
            channel: 0,
            path: path_text.clone(),
            sha256: None,
            bytes: 0,
        }],
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
    let header = json!({
        "version": 1, "kind": "postgres", "session": id, "user": user, "target": target.name,
        "database": database, "db_user": db_user, "client": peer.to_string(), "started_ms": started,
        "backend_pid": up.key.map(|k| k.0), "reused_backend": reused,
    });
    let recorder =
        match LineRecorder::create(&shared.recordings, &path_text, &header.to_string()).await {
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
                audit_after(shared, pending, ev, peer).await;
                end_row(shared, &id, "recording failed", 0, 0).await;
                return Err(not_recorded());
            }
        };
    let _sealed = shared.seals.watch(&path_text, &id, recorder.seal());
    let end = CancellationToken::new();
    let session = Arc::new(PgSession {
        cert_serial,
        user: user.clone(),
        target: target.name.clone(),
        database: database.clone(),
        db_user: db_user.clone(),
        limits: Arc::new(
            Limits::new(
                grant.settings.max_session_ttl,
                grant.settings.idle_timeout,
                shared.config.ssh.expiry_warning,
                i64::MAX / 2,
                None,
                end.clone(),
            )
            .resting_on(resting.as_ref()),
        ),
    });
    let event = |kind: &str, result: Outcome, details: serde_json::Value| {
        let mut e = AuditEvent::new(kind, &actor, result, details);
        e.target = Some(target.name.clone());
        e.session_id = Some(id.clone());
        e
    };
    audit_after(shared, pending, event("session.start", Outcome::Success, json!({ "kind": "postgres", "database": database, "db_user": db_user, "rule": grant.rule.to_string(), "roles": grant.roles, "recording": path_text, "backend_pid": up.key.map(|k| k.0), "reused_backend": reused })), peer).await;
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
            let backend_parameters = up.parameters.clone();
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
                keep_upstream: !keep_for.is_zero(),
            })
            .await;
            if let Some(client) = outcome.client.take() {
                *io = client;
            }
            // The target connection, at rest, waits for this user's next session: reset
            // first, and the reset is in this session's transcript.
            if let Some(upstream) = outcome.upstream.take() {
                let backend = backends::Backend {
                    io: upstream,
                    parameters: backend_parameters,
                    key: up.key,
                };
                let t = Duration::from_millis(
                    u64::try_from(now_ms().saturating_sub(started)).unwrap_or(0),
                );
                let done = shared.pg_backends.keep(backend_key, backend).await;
                let mut line = Vec::new();
                Line::new(&mut line, t, "reset")
                    .str("ran", "DISCARD ALL")
                    .str("connection", if done { "kept" } else { "closed" })
                    .end();
                let _ = recorder.sink().append(&line).await;
            }
            outcome
        }
        Err(_) => relay::Outcome {
            reason: "connection lost".into(),
            bytes_in: 0,
            bytes_out: 0,
            client: None,
            limit: None,
            upstream: None,
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
            recordings.push(json!({ "channel": 0, "file": path_text, "sha256": done.sha256 }));
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
    audit(shared, event("session.end", Outcome::Success, json!({ "kind": "postgres", "reason": reason, "bytes_in": result.bytes_in, "bytes_out": result.bytes_out, "recordings": recordings })), peer).await;
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
