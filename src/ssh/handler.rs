//! The russh server handler of one client connection: identity from the public key,
//! the access decision from the username, and one relay task per channel.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use russh::keys::{Certificate, HashAlg};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::certificate::check_certificate;
use super::relay;
pub use super::session::SessionCtx;
use super::username::printable;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::credentials::ssh_cert;
use crate::policy::{Policy, User};
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

    async fn policy(&self) -> Option<Policy> {
        match self.shared.store.load_policy().await {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(error = %e, "cannot read the policy; refusing authentication");
                None
            }
        }
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

    /// Identity is proven (key or certificate): audit it, then decide what the session may do.
    async fn authenticated(
        &mut self,
        policy: &Policy,
        user: &User,
        ssh_user: &str,
        details: serde_json::Value,
    ) -> Result<Auth, russh::Error> {
        if user.status == crate::policy::UserStatus::Locked {
            let mut details = details;
            details["reason"] = json!("user locked");
            self.audit(
                "auth.failure",
                Actor::user(&user.name),
                Outcome::Failure,
                None,
                details,
            )
            .await;
            self.notice = Some(format!(
                "postern: access denied: the user `{}` is locked; ask an admin",
                user.name
            ));
            return Ok(with_notice());
        }
        self.gate.passed();
        self.audit(
            "auth.success",
            Actor::user(&user.name),
            Outcome::Success,
            None,
            details,
        )
        .await;
        let verdict = self.verdict(policy, user, ssh_user).await;
        self.verdict = Some(verdict);
        Ok(Auth::Accept)
    }

    async fn cert_failure(&self, ssh_user: &str, serial: u64, key_id: &str, reason: &str) {
        self.audit(
            "auth.failure",
            Actor("unknown".into()),
            Outcome::Failure,
            None,
            json!({ "method": "certificate", "reason": reason, "serial": serial.to_string(), "key_id": key_id, "ssh_user": printable(ssh_user) }),
        )
        .await;
    }

    /// For a key no user registered: when postern certified it at `postern login` and that
    /// certificate has expired, the user and what to tell them.
    async fn expired_credential(&self, fp: &str) -> Option<(String, String)> {
        let issued = self.shared.store.latest_cert_for_key(fp).await.ok()??;
        let now = i64::try_from(ssh_cert::now_secs()).unwrap_or(i64::MAX);
        (issued.valid_before <= now).then(|| {
            (
                issued.user,
                crate::credentials::expired_message(crate::audit::secs_to_ms(
                    u64::try_from(issued.valid_before).unwrap_or(0),
                )),
            )
        })
    }

    fn stop(&self) -> relay::Stop {
        relay::Stop {
            cancel: self.cancel.clone(),
            gone: self.gone.clone(),
        }
    }

    fn allowed(&self) -> Option<&Arc<SessionCtx>> {
        match &self.verdict {
            Some(Verdict::Allowed(ctx)) => Some(ctx),
            _ => None,
        }
    }
}

/// A refusal that lets the client ask (keyboard-interactive) and be told `Conn::notice`.
fn with_notice() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(
            &[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..],
        )),
        partial_success: false,
    }
}

fn fingerprint(key: &russh::keys::PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn owner<'a>(policy: &'a Policy, fp: &str) -> Option<&'a User> {
    policy
        .users
        .values()
        .find(|u| u.keys.iter().any(|k| k.fingerprint == fp))
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
        match (self.notice.clone(), response) {
            (Some(notice), None) => Ok(Auth::Partial {
                name: "postern".into(),
                // OpenSSH prints this through its logger, which escapes anything not ASCII.
                instructions: notice.replace('—', "-").into(),
                prompts: Vec::new().into(),
            }),
            _ => {
                self.notice = None;
                Ok(Auth::Reject {
                    proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
                    partial_success: false,
                })
            }
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        ssh_user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        // russh has checked the request's signature, the certificate's own signature and
        // its validity window; everything else is postern's to check.
        let serial = cert.serial();
        let key_id = printable(cert.key_id());
        let checked = check_certificate(cert, &self.shared.keys.user_ca);
        let principal = match checked {
            Ok(p) => p,
            Err(reason) => {
                self.cert_failure(ssh_user, serial, &key_id, &reason).await;
                return Ok(Auth::reject());
            }
        };
        let Some(policy) = self.policy().await else {
            return Ok(Auth::reject());
        };
        let Some(user) = policy.users.get(&principal).cloned() else {
            self.cert_failure(
                ssh_user,
                serial,
                &key_id,
                "its principal names no postern user",
            )
            .await;
            return Ok(Auth::reject());
        };
        match self.shared.store.is_revoked(serial).await {
            Ok(false) => {}
            Ok(true) => {
                self.cert_failure(ssh_user, serial, &key_id, "serial revoked")
                    .await;
                return Ok(Auth::reject());
            }
            Err(e) => {
                warn!(error = %e, "cannot check certificate revocation; refusing");
                return Ok(Auth::reject());
            }
        }
        let details = json!({ "method": "certificate", "serial": serial.to_string(), "key_id": key_id, "ssh_user": printable(ssh_user), "valid_before": cert.valid_before() });
        self.credential_until = Some(cert.valid_before());
        self.credential_serial = Some(serial);
        self.authenticated(&policy, &user, ssh_user, details).await
    }

    async fn auth_publickey(
        &mut self,
        ssh_user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        let Some(policy) = self.policy().await else {
            return Ok(Auth::reject());
        };
        let Some(user) = owner(&policy, &fp).cloned() else {
            if let Some(notice) = self.expired_credential(&fp).await {
                self.audit(
                    "auth.failure",
                    Actor::user(&notice.0),
                    Outcome::Failure,
                    None,
                    json!({ "method": "certificate", "reason": "expired", "fingerprint": fp, "ssh_user": printable(ssh_user) }),
                )
                .await;
                self.notice = Some(notice.1);
                return Ok(with_notice());
            }
            self.audit(
                "auth.failure",
                Actor("unknown".into()),
                Outcome::Failure,
                None,
                json!({ "method": "publickey", "reason": "key not registered", "fingerprint": fp, "ssh_user": printable(ssh_user) }),
            )
            .await;
            return Ok(Auth::reject());
        };
        let details =
            json!({ "method": "publickey", "fingerprint": fp, "ssh_user": printable(ssh_user) });
        self.authenticated(&policy, &user, ssh_user, details).await
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
        if !ctx.grant.settings.port_forwarding {
            ctx.audit(ctx.event(
                "access.deny",
                Outcome::Deny,
                json!({ "reason": "port forwarding not allowed", "destination": dest }),
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
