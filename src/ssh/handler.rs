//! The russh server handler of one client connection: identity from the public key,
//! the access decision from the username, and one relay task per channel.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use russh::keys::Certificate;
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::relay;
pub use super::session::SessionCtx;
use super::username::printable;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::server::Shared;
use crate::server::admission::Gate;

/// What the connection may do once authenticated.
#[derive(Clone)]
pub enum Verdict {
    Allowed(Arc<SessionCtx>),
    /// Authenticated but refused: the message is printed on the client's stderr.
    Refused(String),
}

pub struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
    pub(super) cancel: CancellationToken,
    pub(super) kill: CancellationToken,
    pub(super) gone: CancellationToken,
    pub(super) tracker: TaskTracker,
    pub(super) verdict: Option<Verdict>,
    pub(super) state: Arc<Mutex<Option<Arc<SessionCtx>>>>,
    /// The end (Unix seconds) and serial of the certificate this connection authenticated with.
    pub(super) credential_until: Option<u64>,
    pub(super) credential_serial: Option<u64>,
    /// Why authentication failed, told to the client through keyboard-interactive (its
    /// postern certificate expired, its user is locked): OpenSSH prints it, where
    /// "Permission denied" alone would leave the developer guessing.
    pub(super) notice: Option<String>,
    /// Session channels open now (`[ssh] max_sessions`).
    pub(super) open_sessions: Arc<AtomicU32>,
    /// Passed once the client authenticated (login grace time, admission).
    pub(super) gate: Gate,
}

/// One of a connection's `max_sessions` session channels, given back when dropped.
struct Slot(Arc<AtomicU32>);

impl Slot {
    fn take(open: &Arc<AtomicU32>, max: u32) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Conn {
    pub fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        cancel: CancellationToken,
        kill: CancellationToken,
        gone: CancellationToken,
        tracker: TaskTracker,
        gate: Gate,
    ) -> Conn {
        Conn {
            shared,
            peer,
            cancel,
            kill,
            gone,
            tracker,
            verdict: None,
            state: Arc::new(Mutex::new(None)),
            credential_until: None,
            credential_serial: None,
            notice: None,
            open_sessions: Arc::new(AtomicU32::new(0)),
            gate,
        }
    }

    /// The session, once authorised, for whoever outlives the handler.
    pub fn state(&self) -> Arc<Mutex<Option<Arc<SessionCtx>>>> {
        self.state.clone()
    }

    pub(super) async fn audit(
        &self,
        kind: &str,
        actor: Actor,
        result: Outcome,
        target: Option<String>,
        details: serde_json::Value,
    ) {
        let mut e = AuditEvent::new(kind, &actor, result, details);
        e.source = Some(self.peer.to_string());
        e.target = target;
        self.shared.audit(e).await;
    }

    fn stop(&self) -> relay::Stop {
        relay::Stop {
            cancel: self.cancel.clone(),
            gone: self.gone.clone(),
            withdrawn: CancellationToken::new(),
            _watch: None,
        }
    }

    fn allowed(&self) -> Option<&Arc<SessionCtx>> {
        match &self.verdict {
            Some(Verdict::Allowed(ctx)) => Some(ctx),
            _ => None,
        }
    }
}

impl Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // A certificate's offer carries only its inner key, which no user registered: let
        // every offer proceed to the signed request, where keys and certificates are checked.
        Ok(Auth::Accept)
    }

    /// Only used to tell a client why its expired certificate failed: zero prompts, the
    /// notice as the instruction OpenSSH prints, then a refusal.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.notice_prompt(response.is_some()))
    }

    async fn auth_openssh_certificate(
        &mut self,
        ssh_user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        self.certificate_login(ssh_user, cert).await
    }

    async fn auth_publickey(
        &mut self,
        ssh_user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.key_login(ssh_user, key.public_key).await
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(verdict) = self.verdict.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let max = self.shared.config.ssh.max_sessions;
        let Some(slot) = Slot::take(&self.open_sessions, max) else {
            if let Some(ctx) = self.allowed() {
                ctx.audit(ctx.event(
                    "access.deny",
                    Outcome::Deny,
                    json!({ "reason": "too many session channels on one connection", "max_sessions": max }),
                ))
                .await;
            }
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        let handle = session.handle();
        let stop = self.stop();
        self.tracker.spawn(async move {
            relay::run(verdict, channel, handle, stop).await;
            drop(slot);
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(ctx) = self.allowed().cloned() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let dest = format!("{}:{port}", printable(host));
        if let Err(reason) = ctx.limits.extras.may_forward(host, port) {
            ctx.audit(ctx.event(
                "access.deny",
                Outcome::Deny,
                json!({ "reason": reason, "destination": dest }),
            ))
            .await;
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let req = super::forward::Forward {
            host: host.to_string(),
            port,
            originator: originator.to_string(),
            originator_port,
        };
        self.tracker.spawn(super::forward::forward(
            ctx,
            channel,
            reply,
            req,
            self.stop(),
        ));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if relay::pty_size_ok(cols, rows, pw, ph) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if relay::env_allowed(name) && value.len() <= relay::MAX_ENV_VALUE {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted here so replies stay in order; a refusal is printed by the relay.
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted here; the relay refuses anything but an allowed sftp with a message
        // the client prints (a bare failure would show only "Connection closed").
        session.channel_success(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        session.channel_failure(channel)?;
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}
