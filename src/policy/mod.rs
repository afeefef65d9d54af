//! The policy model (users, roles, targets) and its pure functions: decisions, diffs, validation.
//!
//! Nothing in this module does I/O; `store` persists these types and `cli` edits them.

mod decide;
mod diff;
pub mod error;
pub mod file;
pub mod forward;
pub mod names;
pub mod requests;
pub mod reviews;
pub mod selector;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration::Dur;
pub use decide::{
    Decision, DenyReason, Effect, Grant, Reach, Request, RuleRef, decide, default_database,
    default_login, may_reach, no_such_target, reach,
};
pub use diff::{Change, Entity, diff};
pub use error::PolicyError;
pub use requests::TimedGrant;
pub use selector::Selector;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    #[default]
    Active,
    Locked,
}

impl fmt::Display for UserStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UserStatus::Active => "active",
            UserStatus::Locked => "locked",
        })
    }
}

/// A registered SSH public key; it identifies exactly one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserKey {
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// `algorithm base64`, without the comment.
    pub public_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub status: UserStatus,
    pub roles: BTreeSet<String>,
    pub keys: Vec<UserKey>,
    /// A machine identity (a pipeline, an agent): logs in with a join token, never a
    /// password or the console; cannot request or approve access; acts as `bot:NAME`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bot: bool,
}

impl User {
    pub fn new(name: &str) -> Self {
        User {
            name: name.to_string(),
            status: UserStatus::Active,
            roles: BTreeSet::new(),
            keys: Vec::new(),
            bot: false,
        }
    }
}

/// What a role grants besides targets: how long credentials and sessions live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettings {
    pub credential_ttl: Dur,
    pub max_session_ttl: Dur,
    pub idle_timeout: Dur,
    pub port_forwarding: bool,
    pub file_transfer: bool,
    /// Leave `Bind` parameter values out of PostgreSQL transcripts (the SQL stays).
    #[serde(default)]
    pub redact_parameters: bool,
    /// Where port forwarding may go (`HOST:PORT`, `*` for any); empty: anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_to: Vec<String>,
    /// What members may do in the web console beyond their own sessions and targets.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub console: BTreeSet<ConsoleRight>,
    /// Who may ask for this role for a time (`user:NAME`, `role:NAME`, `*` for anyone);
    /// empty: the role is not requestable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requestable_by: Vec<String>,
    /// Roles whose members decide requests for this role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviewers: Vec<String>,
    /// Approvals, from different reviewers, a request needs (2: a two-person rule).
    #[serde(
        default = "requests::one_approval",
        skip_serializing_if = "requests::is_one_approval"
    )]
    pub approvals_required: u8,
    /// The longest grant a request may ask for.
    #[serde(
        default = "requests::default_max_ttl",
        skip_serializing_if = "requests::is_default_max_ttl"
    )]
    pub max_request_ttl: Dur,
    /// How long an undecided request stays pending.
    #[serde(
        default = "requests::default_expiry",
        skip_serializing_if = "requests::is_default_expiry"
    )]
    pub request_expiry: Dur,
}

/// A console permission a role grants.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRight {
    /// Every session, transcript and recording; the audit log and its verification.
    Audit,
    /// Also users, roles and targets; lock and unlock users; end live sessions.
    Admin,
    /// Access requests and reviews.
    Review,
}

impl ConsoleRight {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRight::Audit => "audit",
            ConsoleRight::Admin => "admin",
            ConsoleRight::Review => "review",
        }
    }
}

impl Default for RoleSettings {
    fn default() -> Self {
        RoleSettings {
            credential_ttl: Dur::from_secs(8 * 3600),
            max_session_ttl: Dur::from_secs(8 * 3600),
            idle_timeout: Dur::from_secs(30 * 60),
            port_forwarding: false,
            file_transfer: true,
            redact_parameters: false,
            forward_to: Vec::new(),
            console: BTreeSet::new(),
            requestable_by: Vec::new(),
            reviewers: Vec::new(),
            approvals_required: requests::one_approval(),
            max_request_ttl: requests::default_max_ttl(),
            request_expiry: requests::default_expiry(),
        }
    }
}

/// One allow or deny rule: the targets it covers (by label) and what on them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub targets: Selector,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db_users: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    #[serde(flatten)]
    pub settings: RoleSettings,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

impl Role {
    pub fn new(name: &str) -> Self {
        Role {
            name: name.to_string(),
            settings: RoleSettings::default(),
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Ssh,
    Postgres,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Ssh => "ssh",
            TargetKind::Postgres => "postgres",
        })
    }
}

/// How postern talks TLS to a PostgreSQL target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    #[default]
    Require,
    VerifyFull,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    /// `host:port`.
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// SSH: the pinned host public key (`algorithm base64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// PostgreSQL: TLS towards the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<TlsMode>,
}

/// Everything admins define, as one value: what `apply` diffs and the store persists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    pub targets: BTreeMap<String, Target>,
    /// Access approved requests give for a time. Not something admins define: loaded with
    /// the policy for decisions (`roles_for`), never diffed, applied or stored with it.
    #[serde(skip)]
    pub grants: Vec<TimedGrant>,
}

impl Policy {
    /// Checks the cross-references and uniqueness rules that single fields cannot.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for role in self.roles.values() {
            forward::check(&role.settings.forward_to)?;
            requests::check_role(self, role)?;
        }
        let mut key_owner: BTreeMap<&str, &str> = BTreeMap::new();
        for user in self.users.values() {
            for role in &user.roles {
                if !self.roles.contains_key(role) {
                    return Err(PolicyError::MissingRole {
                        user: user.name.clone(),
                        role: role.clone(),
                    });
                }
            }
            for key in &user.keys {
                if let Some(other) = key_owner.insert(&key.fingerprint, &user.name) {
                    return Err(PolicyError::KeyInUse {
                        fingerprint: key.fingerprint.clone(),
                        user: other.to_string(),
                    });
                }
            }
        }
        for target in self.targets.values() {
            match target.kind {
                TargetKind::Ssh if target.tls_mode.is_some() => {
                    return Err(PolicyError::Invalid(format!(
                        "target `{}` is an ssh target; tls_mode applies to postgres targets only",
                        target.name
                    )));
                }
                TargetKind::Postgres if target.host_key.is_some() => {
                    return Err(PolicyError::Invalid(format!(
                        "target `{}` is a postgres target; host_key applies to ssh targets only",
                        target.name
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The user's roles that exist, in name order.
    pub fn roles_of(&self, user: &User) -> Vec<&Role> {
        user.roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .collect()
    }

    /// The console permissions a user's roles grant (`admin` implies `audit`).
    pub fn console_rights(&self, user: &User) -> BTreeSet<ConsoleRight> {
        let mut out: BTreeSet<ConsoleRight> = self
            .roles_of(user)
            .iter()
            .flat_map(|r| r.settings.console.iter().copied())
            .collect();
        if out.contains(&ConsoleRight::Admin) {
            out.insert(ConsoleRight::Audit);
        }
        out
    }
}

#[cfg(test)]
mod matrix;
#[cfg(test)]
mod tests;
