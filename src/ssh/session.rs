//! An authorised SSH session: who, where, as whom, its certificate, counters, limits, and
//! how it is closed in the index and the audit log.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde_json::json;
use tracing::warn;

use super::pool::{Lease, Pool};
use super::upstream::{self, Credentials, UpHandle, UpstreamError};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::policy::{Grant, Target};
use crate::server::Shared;
use crate::server::limits::Limits;
use crate::store::SessionEnd;

/// An authorised session: one SSH connection to one target as one login.
pub struct SessionCtx {
    pub id: String,
    pub user: String,
    /// Who the session's events name: `user:NAME` or `bot:NAME`.
    pub actor: Actor,
    pub login: String,
    pub target: Target,
    pub grant: Grant,
    pub creds: Credentials,
    pub cert_serial: u64,
    /// The serial of the user certificate the client authenticated with, if any.
    pub client_serial: Option<u64>,
    pub client_addr: String,
    pub shared: Arc<Shared>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub exit_status: Mutex<Option<u32>>,
    /// Time limits, notices and the token that ends the session.
    pub limits: Limits,
    pub(super) next_channel: AtomicU32,
    /// Connections to the target, shared by this session's channels.
    pub(super) upstreams: Arc<Pool>,
    /// How connecting to the target last went: `None` before any try, `Some(None)` once
    /// one succeeded, `Some(Some(why))` while every try failed (the session's end reason
    /// when the client then leaves).
    pub(super) upstream_state: Mutex<Option<Option<&'static str>>>,
}

impl crate::server::live::LiveSession for SessionCtx {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn protocol(&self) -> &'static str {
        "ssh"
    }

    fn review(&self, now: &crate::server::live::Current) {
        if let Some(serial) = self.client_serial
            && now.revoked.contains(&serial)
        {
            self.limits.terminate(
                "revoked",
                format!(
                    "access was withdrawn: your postern credential (serial {serial}) was revoked"
                ),
            );
            return;
        }
        self.limits.review(
            &now.policy,
            &self.user,
            &self.target.name,
            &crate::policy::Request::Ssh { login: &self.login },
        );
    }
}

impl SessionCtx {
    pub fn next_channel(&self) -> u32 {
        self.next_channel.fetch_add(1, Ordering::Relaxed)
    }

    pub fn event(&self, kind: &str, result: Outcome, details: serde_json::Value) -> AuditEvent {
        let mut e = AuditEvent::new(kind, &self.actor, result, details);
        e.source = Some(self.client_addr.clone());
        e.target = Some(self.target.name.clone());
        e.session_id = Some(self.id.clone());
        e
    }

    pub async fn audit(&self, e: AuditEvent) {
        if let Err(err) = self.shared.store.append_audit(&e).await {
            warn!(session = %self.id, error = %err, kind = %e.kind, "cannot write audit event");
        }
    }

    /// Opens a channel to the target on one of the session's upstream connections (a new
    /// one when none has room, or when a reused one turns out dead); the lease keeps the
    /// connection for the channel's life.
    pub async fn upstream_channel<T, F, Fut>(&self, open: F) -> Result<(Lease, T), String>
    where
        F: Fn(Arc<UpHandle>) -> Fut,
        Fut: std::future::Future<Output = Result<T, russh::Error>>,
    {
        // Two tries on reused connections (one may have died or be full), then a new one.
        let mut reused_tries = 0;
        loop {
            let reuse = reused_tries < 2;
            // One opener at a time picks or makes a connection, so channels opened
            // together share one instead of each making its own; the channel itself
            // opens unlocked.
            let lease = {
                let mut opening = self.upstreams.opening.lock().await;
                let reused = if reuse {
                    self.upstreams.lease().await
                } else {
                    None
                };
                match reused {
                    Some(lease) => lease,
                    None => {
                        self.upstreams
                            .add(self.connect_once(&mut opening).await?)
                            .await
                    }
                }
            };
            match open(lease.handle()).await {
                Ok(ch) => return Ok((lease, ch)),
                // A reused connection that died or is full: it takes no more, try again.
                Err(_) if !lease.fresh() => {
                    lease.refused();
                    reused_tries += 1;
                }
                Err(e) => {
                    return Err(format!(
                        "target `{}` refused a channel: {e}",
                        self.target.name
                    ));
                }
            }
        }
    }

    /// Connects, unless a connect failed moments ago: then its answer stands.
    async fn connect_once(
        &self,
        last_failure: &mut Option<(std::time::Instant, String)>,
    ) -> Result<UpHandle, String> {
        if let Some((at, message)) = last_failure.as_ref()
            && at.elapsed() < super::pool::FAILURE_HOLDS
        {
            return Err(message.clone());
        }
        let result = self.connect_upstream().await;
        if let Err(message) = &result {
            *last_failure = Some((std::time::Instant::now(), message.clone()));
        }
        result
    }

    /// Connects to the target as this session's login; a failure is audited
    /// (`session.host_key_mismatch` or `session.upstream_error`) and returned as the
    /// message the user sees.
    async fn connect_upstream(&self) -> Result<UpHandle, String> {
        match upstream::connect(
            &self.target,
            &self.creds,
            self.shared.config.ssh.connect_timeout.0,
        )
        .await
        {
            Ok(h) => {
                if let Ok(mut s) = self.upstream_state.lock() {
                    *s = Some(None);
                }
                Ok(h)
            }
            Err(e) => {
                let (kind, why) = match e {
                    UpstreamError::HostKeyMismatch { .. } => {
                        ("session.host_key_mismatch", "host key mismatch")
                    }
                    UpstreamError::NoPinnedKey { .. } => {
                        ("session.upstream_error", "no pinned host key")
                    }
                    UpstreamError::Unreachable { .. } => {
                        ("session.upstream_error", "upstream unreachable")
                    }
                    UpstreamError::AuthRefused { .. } => {
                        ("session.upstream_error", "upstream refused login")
                    }
                    UpstreamError::Protocol { .. } => ("session.upstream_error", "upstream error"),
                };
                warn!(session = %self.id, target = %self.target.name, error = %e, "cannot connect to the target");
                if let Ok(mut s) = self.upstream_state.lock()
                    && *s != Some(None)
                {
                    *s = Some(Some(why));
                }
                self.audit(self.event(kind, Outcome::Failure, json!({ "error": e.to_string() })))
                    .await;
                Err(e.to_string())
            }
        }
    }

    /// Why the session ended, as the index says it: a client that left a session whose
    /// target could never be reached left because of that.
    pub fn end_reason<'a>(&self, reason: &'a str) -> &'a str {
        match self.upstream_state.lock().ok().and_then(|s| *s) {
            Some(Some(why)) if reason == "client exit" => why,
            _ => reason,
        }
    }

    /// Closes the session in the index and the audit log.
    pub async fn end(&self, reason: &str) {
        let end = SessionEnd {
            reason: reason.to_string(),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            exit_status: self.exit_status.lock().ok().and_then(|s| *s),
        };
        if let Some(kind) = crate::server::limits::ending_event(reason) {
            let message = self.limits.ending().map(|e| e.message).unwrap_or_default();
            self.audit(self.event(kind, Outcome::Success, json!({ "message": message })))
                .await;
        }
        // Each finished recording's SHA-256 enters the audit chain here.
        let data_dir = &self.shared.config.data_dir;
        let recordings: Vec<serde_json::Value> = match self.shared.store.get_session(&self.id).await {
            Ok(Some(row)) => row
                .recordings
                .iter()
                .map(|r| {
                    let path = std::path::Path::new(&r.path);
                    let file = path.strip_prefix(data_dir).unwrap_or(path);
                    json!({ "channel": r.channel, "file": file.display().to_string(), "sha256": r.sha256 })
                })
                .collect(),
            _ => Vec::new(),
        };
        self.audit(self.event(
            "session.end",
            Outcome::Success,
            json!({
                "reason": reason,
                "bytes_in": end.bytes_in,
                "bytes_out": end.bytes_out,
                "exit_status": end.exit_status,
                "recordings": recordings,
            }),
        ))
        .await;
        // The row is closed last: whoever sees the session ended finds its events.
        if let Err(e) = self.shared.store.end_session(&self.id, &end).await {
            warn!(session = %self.id, error = %e, "cannot close the session row");
        }
    }
}
