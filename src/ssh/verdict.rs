//! The access decision for an authenticated connection: the target and login from the
//! SSH username, the policy's answer, and, when allowed, the session (its certificate
//! towards the target, its limits, its row in the index).

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tracing::{info, warn};
use uuid::Uuid;

use super::handler::{Conn, SessionCtx, Verdict};
use super::upstream::Credentials;
use super::username::{self, printable};
use crate::audit::{Actor, Outcome, now_ms};
use crate::credentials::ssh_cert::{self, CertRequest};
use crate::policy::requests::{refusal_hint, unreached_refusal};
use crate::policy::{
    Decision, Policy, Request, TargetKind, User, decide, default_login, may_reach, no_such_target,
};
use crate::server::limits::Limits;
use crate::store::SessionRow;

impl Conn {
    /// Decides what an authenticated user may do, from the SSH username.
    pub(super) async fn verdict(&self, policy: &Policy, user: &User, ssh_user: &str) -> Verdict {
        let actor = Actor::of(user);
        let refuse = |m: String| Verdict::Refused(m);
        let dest = match username::parse(ssh_user) {
            Ok(d) => d,
            Err(m) => {
                self.audit(
                    "access.deny",
                    actor,
                    Outcome::Deny,
                    None,
                    json!({ "reason": "malformed username", "ssh_user": printable(ssh_user) }),
                )
                .await;
                return refuse(m);
            }
        };
        let roles = policy.roles_for(user, &dest.target);
        // A target the user may reach nothing on is answered like one that does not exist.
        let target = match policy.targets.get(&dest.target) {
            Some(t) if may_reach(&roles, t) => t,
            // Nothing reaches it now, but a role the user may request would: they may know.
            Some(t)
                if t.kind == TargetKind::Ssh
                    && let Some(refusal) =
                        unreached_refusal(policy, user, t, dest.login.as_deref(), None, None) =>
            {
                self.audit(
                    "access.deny",
                    actor,
                    Outcome::Deny,
                    Some(t.name.clone()),
                    json!({ "reason": "no role reaches the target", "kind": "ssh", "requestable": true }),
                )
                .await;
                return refuse(refusal);
            }
            found => {
                let reason = match found {
                    Some(_) => "no role reaches the target",
                    None => "unknown target",
                };
                self.audit(
                    "access.deny",
                    actor,
                    Outcome::Deny,
                    Some(dest.target.clone()),
                    json!({ "reason": reason, "kind": "ssh" }),
                )
                .await;
                return refuse(no_such_target(&dest.target));
            }
        };
        if target.kind != TargetKind::Ssh {
            self.audit(
                "access.deny",
                actor,
                Outcome::Deny,
                Some(target.name.clone()),
                json!({ "reason": "wrong kind", "kind": "ssh", "target_kind": target.kind }),
            )
            .await;
            return refuse(format!(
                "target `{}` is a {} target; connect to it with a {} client",
                target.name, target.kind, target.kind
            ));
        }
        let Some(login) = dest.login.clone().or_else(|| default_login(&roles, target)) else {
            return refuse(format!(
                "none of your roles names a default login for `{0}`; connect as LOGIN@{0}",
                target.name
            ));
        };
        let grant = match decide(user, &roles, target, &Request::Ssh { login: &login }) {
            Decision::Allow(g) => g,
            Decision::Deny(reason) => {
                self.audit(
                    "access.deny",
                    actor,
                    Outcome::Deny,
                    Some(target.name.clone()),
                    json!({ "login": login, "reason": reason.to_string(), "decision": reason }),
                )
                .await;
                let hint = refusal_hint(policy, user, target, &Request::Ssh { login: &login });
                return refuse(format!(
                    "access to {login}@{} denied: {reason}{hint}",
                    target.name
                ));
            }
        };
        let resting = policy.grant_end(user, &target.name, &grant.roles).cloned();
        let id = Uuid::new_v4().to_string();
        let credential_until = self
            .credential_until
            .filter(|_| self.shared.config.ssh.disconnect_on_credential_expiry);
        // The upstream certificate ends with the session: its TTL, or the developer's
        // credential when sessions end with it.
        let valid_before = (ssh_cert::now_secs()
            .saturating_add(grant.settings.max_session_ttl.as_secs()))
        .min(credential_until.unwrap_or(u64::MAX))
        .min(
            resting
                .as_ref()
                .map_or(u64::MAX, |g| u64::try_from(g.until_ms / 1000).unwrap_or(0)),
        );
        let cert = match ssh_cert::issue(
            &self.shared.keys.target_ca,
            &CertRequest {
                login: &login,
                session_id: &id,
                user: &user.name,
                valid_before,
                port_forwarding: grant.settings.port_forwarding,
            },
        ) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot issue a session certificate");
                return refuse(
                    "postern could not issue a session certificate; try again or tell an admin"
                        .into(),
                );
            }
        };
        let ctx = Arc::new(SessionCtx {
            id: id.clone(),
            user: user.name.clone(),
            actor: Actor::of(user),
            login: login.clone(),
            target: target.clone(),
            grant: grant.clone(),
            creds: Credentials {
                login: login.clone(),
                key: Arc::new(cert.key),
                cert: cert.cert,
            },
            cert_serial: cert.serial,
            client_serial: self.credential_serial,
            client_addr: self.peer.to_string(),
            shared: self.shared.clone(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            exit_status: Mutex::new(None),
            limits: Limits::new(
                grant.settings.max_session_ttl,
                grant.settings.idle_timeout,
                self.shared.config.ssh.expiry_warning,
                crate::audit::secs_to_ms(valid_before),
                credential_until.map(crate::audit::secs_to_ms),
                self.kill.clone(),
            )
            .allowing(&grant.settings)
            .resting_on(resting.as_ref()),
            next_channel: AtomicU32::new(0),
            upstreams: Arc::new(super::pool::Pool::default()),
            upstream_state: std::sync::Mutex::new(None),
        });
        let row = SessionRow {
            id: id.clone(),
            kind: "ssh".into(),
            user: user.name.clone(),
            target: target.name.clone(),
            login: login.clone(),
            client_addr: self.peer.to_string(),
            started_ms: now_ms(),
            ended_ms: None,
            end_reason: None,
            bytes_in: 0,
            bytes_out: 0,
            exit_status: None,
            cert_serial: Some(cert.serial.to_string()),
            roles: grant.roles.clone(),
            replica: self.shared.replica().map(str::to_string),
            recordings: vec![],
        };
        if let Err(e) = self.shared.store.start_session(&row).await {
            warn!(error = %e, "cannot index the session; refusing it");
            return refuse(
                "postern cannot record this session right now (store unavailable); try again later"
                    .into(),
            );
        }
        ctx.audit(ctx.event(
            "session.start",
            Outcome::Success,
            json!({ "login": login, "rule": grant.rule.to_string(), "roles": grant.roles, "cert_serial": cert.serial.to_string(), "valid_before": valid_before }),
        ))
        .await;
        info!(session = %id, user = %user.name, target = %target.name, login = %login, "session started");
        if let Ok(mut s) = self.state.lock() {
            *s = Some(ctx.clone());
        }
        self.shared.live.register(&id, ctx.clone());
        Verdict::Allowed(ctx)
    }
}
