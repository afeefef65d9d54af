//! Who is connecting: a user certificate from postern's user CA or a registered key,
//! checked beyond what russh checks, audited (the success and every failure), and the
//! notice a refused client is told.

use russh::keys::{Certificate, HashAlg, PublicKey};
use russh::server::Auth;
use russh::{MethodKind, MethodSet};
use serde_json::json;
use tracing::warn;

use super::certificate::check_certificate;
use super::handler::Conn;
use super::username::printable;
use crate::audit::{Actor, Outcome};
use crate::credentials::ssh_cert;
use crate::policy::{Policy, User};

impl Conn {
    async fn policy(&self) -> Option<Policy> {
        match self.shared.store.load_policy().await {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(error = %e, "cannot read the policy; refusing authentication");
                None
            }
        }
    }

    /// A user certificate whose request signature russh verified.
    pub(super) async fn certificate_login(
        &mut self,
        ssh_user: &str,
        cert: &Certificate,
    ) -> Result<Auth, russh::Error> {
        // russh has checked the request's signature and the certificate's own signature;
        // everything else (CA, type, validity window, principal) is postern's to check.
        let serial = cert.serial();
        let key_id = printable(cert.key_id());
        let keys = &self.shared.keys;
        let checked = check_certificate(cert, &keys.user_ca, keys.user_ca_previous.as_ref());
        let principal = match checked {
            Ok(p) => p,
            Err(reason) => {
                self.cert_failure(ssh_user, serial, &key_id, &reason).await;
                return Ok(Auth::reject());
            }
        };
        let Some(policy) = self.policy().await else {
            return Ok(self.store_down());
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

    /// A plain public key whose request signature russh verified.
    pub(super) async fn key_login(
        &mut self,
        ssh_user: &str,
        key: &PublicKey,
    ) -> Result<Auth, russh::Error> {
        let fp = fingerprint(key);
        // Keys registered before the key-type policy still cannot log in.
        if let Err(why) = crate::policy::names::check_user_key_type(key) {
            self.audit(
                "auth.failure",
                Actor("unknown".into()),
                Outcome::Failure,
                None,
                json!({ "method": "publickey", "reason": "key type not accepted", "detail": why, "fingerprint": fp, "ssh_user": printable(ssh_user) }),
            )
            .await;
            return Ok(Auth::reject());
        }
        let Some(policy) = self.policy().await else {
            return Ok(self.store_down());
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

    /// The store cannot be read: the session is refused (fail closed), saying why.
    fn store_down(&mut self) -> Auth {
        self.notice = Some(
            "postern cannot read its store right now, so it refuses new sessions (live ones go on); try again in a moment"
                .into(),
        );
        with_notice()
    }

    /// Keyboard-interactive, used only to tell a refused client why (`notice`): zero
    /// prompts with the notice as the instruction OpenSSH prints, then a refusal.
    pub(super) fn notice_prompt(&mut self, answered: bool) -> Auth {
        match (self.notice.clone(), answered) {
            (Some(notice), false) => Auth::Partial {
                name: "postern".into(),
                // OpenSSH prints this through its logger, which escapes anything not ASCII.
                instructions: notice.replace('—', "-").into(),
                prompts: Vec::new().into(),
            },
            _ => {
                self.notice = None;
                Auth::Reject {
                    proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
                    partial_success: false,
                }
            }
        }
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
                Actor::of(user),
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
            Actor::of(user),
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
