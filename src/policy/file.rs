//! Policy as code: reading `policy.toml` into a [`Policy`], with every error located
//! at its file, line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::names::{
    check_account_name, check_address, check_role_name, check_target_name, check_user_name,
    parse_public_key, parse_user_key,
};
use super::{
    Policy, PolicyError, Role, RoleSettings, Rule, Selector, Target, TargetKind, TlsMode, User,
    UserStatus,
};
use crate::config::LocatedError;
use crate::duration::Dur;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    roles: Vec<RoleSpec>,
    #[serde(default)]
    targets: Vec<TargetSpec>,
    #[serde(default)]
    users: Vec<UserSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSpec {
    name: Spanned<String>,
    credential_ttl: Option<Dur>,
    max_session_ttl: Option<Dur>,
    idle_timeout: Option<Dur>,
    port_forwarding: Option<bool>,
    file_transfer: Option<bool>,
    redact_parameters: Option<bool>,
    #[serde(default)]
    forward_to: Vec<Spanned<String>>,
    #[serde(default)]
    console: BTreeSet<super::ConsoleRight>,
    #[serde(default)]
    requestable_by: Vec<String>,
    #[serde(default)]
    reviewers: Vec<String>,
    approvals_required: Option<u8>,
    max_request_ttl: Option<Dur>,
    request_expiry: Option<Dur>,
    #[serde(default)]
    allow: Vec<RuleSpec>,
    #[serde(default)]
    deny: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    targets: Selector,
    #[serde(default)]
    logins: Vec<Spanned<String>>,
    #[serde(default)]
    databases: Vec<Spanned<String>>,
    #[serde(default)]
    db_users: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    name: Spanned<String>,
    kind: TargetKind,
    address: Spanned<String>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
    host_key: Option<Spanned<String>>,
    tls_mode: Option<TlsMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSpec {
    name: Spanned<String>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
    /// When present, the user's complete set of keys; when absent, keys are left as they are.
    keys: Option<Vec<Spanned<String>>>,
    /// When present, whether the user is locked; when absent, a lock set by
    /// `admin user lock` stays as it is (new users start unlocked).
    locked: Option<bool>,
    /// A machine identity (`postern admin bot`): logs in with a join token.
    #[serde(default)]
    bot: bool,
}

/// A policy read from a file. `keys_managed` names the users whose `keys` the file sets,
/// `status_managed` those whose `locked` it sets.
pub struct PolicyDoc {
    pub policy: Policy,
    pub keys_managed: BTreeSet<String>,
    pub status_managed: BTreeSet<String>,
}

struct Ctx<'a> {
    path: &'a Path,
    src: &'a str,
}

impl Ctx<'_> {
    fn at(&self, span: Range<usize>, message: impl ToString) -> LocatedError {
        LocatedError::new(self.path, self.src, span.start, message.to_string())
    }

    fn check<T>(&self, s: &Spanned<T>, r: Result<(), PolicyError>) -> Result<(), LocatedError> {
        r.map_err(|e| self.at(s.span(), e))
    }

    fn accounts(
        &self,
        what: &'static str,
        list: &[Spanned<String>],
    ) -> Result<Vec<String>, LocatedError> {
        list.iter()
            .map(|s| {
                self.check(s, check_account_name(what, s.get_ref()))?;
                Ok(s.get_ref().clone())
            })
            .collect()
    }
}

/// Parses and validates a policy file; nothing is applied here.
pub fn parse(path: &Path, src: &str) -> Result<PolicyDoc, LocatedError> {
    let cx = Ctx { path, src };
    let file: PolicyFile =
        toml::from_str(src).map_err(|e| cx.at(e.span().unwrap_or(0..0), e.message()))?;
    let mut policy = Policy::default();
    let mut keys_managed = BTreeSet::new();
    let mut status_managed = BTreeSet::new();

    for r in file.roles {
        let name = r.name.get_ref().clone();
        cx.check(&r.name, check_role_name(&name))?;
        let d = RoleSettings::default();
        let convert = |rules: Vec<RuleSpec>| -> Result<Vec<Rule>, LocatedError> {
            rules
                .into_iter()
                .map(|s| {
                    Ok(Rule {
                        targets: s.targets,
                        logins: cx.accounts("login", &s.logins)?,
                        databases: cx.accounts("database", &s.databases)?,
                        db_users: cx.accounts("database user", &s.db_users)?,
                    })
                })
                .collect()
        };
        let role = Role {
            name: name.clone(),
            settings: RoleSettings {
                credential_ttl: r.credential_ttl.unwrap_or(d.credential_ttl),
                max_session_ttl: r.max_session_ttl.unwrap_or(d.max_session_ttl),
                idle_timeout: r.idle_timeout.unwrap_or(d.idle_timeout),
                port_forwarding: r.port_forwarding.unwrap_or(d.port_forwarding),
                file_transfer: r.file_transfer.unwrap_or(d.file_transfer),
                redact_parameters: r.redact_parameters.unwrap_or(d.redact_parameters),
                forward_to: r
                    .forward_to
                    .iter()
                    .map(|e| {
                        super::forward::check(std::slice::from_ref(e.get_ref()))
                            .map_err(|err| cx.at(e.span(), err))?;
                        Ok(e.get_ref().clone())
                    })
                    .collect::<Result<_, LocatedError>>()?,
                console: r.console,
                requestable_by: r.requestable_by,
                reviewers: r.reviewers,
                approvals_required: r.approvals_required.unwrap_or(d.approvals_required),
                max_request_ttl: r.max_request_ttl.unwrap_or(d.max_request_ttl),
                request_expiry: r.request_expiry.unwrap_or(d.request_expiry),
            },
            allow: convert(r.allow)?,
            deny: convert(r.deny)?,
        };
        if policy.roles.insert(name.clone(), role).is_some() {
            return Err(cx.at(r.name.span(), format!("duplicate role `{name}`")));
        }
    }

    for t in file.targets {
        let name = t.name.get_ref().clone();
        cx.check(&t.name, check_target_name(&name))?;
        cx.check(&t.address, check_address(t.address.get_ref()))?;
        let mut labels = BTreeMap::new();
        for (k, v) in t.labels {
            if !super::selector::valid_label_part(&k)
                || !super::selector::valid_label_part(v.get_ref())
            {
                return Err(cx.at(
                    v.span(),
                    format!(
                        "invalid label `{k}={}`: keys and values are 1-63 letters, digits, - _ . /",
                        v.get_ref()
                    ),
                ));
            }
            labels.insert(k, v.into_inner());
        }
        let host_key = match &t.host_key {
            Some(k) => Some(
                parse_public_key(k.get_ref())
                    .map_err(|e| cx.at(k.span(), e))?
                    .public_key,
            ),
            None => None,
        };
        let target = Target {
            name: name.clone(),
            kind: t.kind,
            address: t.address.into_inner(),
            labels,
            host_key,
            tls_mode: t.tls_mode,
        };
        if policy.targets.insert(name.clone(), target).is_some() {
            return Err(cx.at(t.name.span(), format!("duplicate target `{name}`")));
        }
    }

    for u in file.users {
        let name = u.name.get_ref().clone();
        cx.check(&u.name, check_user_name(&name))?;
        let mut user = User::new(&name);
        user.bot = u.bot;
        if let Some(locked) = u.locked {
            status_managed.insert(name.clone());
            if locked {
                user.status = UserStatus::Locked;
            }
        }
        for r in &u.roles {
            if !policy.roles.contains_key(r.get_ref()) {
                return Err(cx.at(
                    r.span(),
                    format!(
                        "user `{name}` names role `{}`, which this file does not define",
                        r.get_ref()
                    ),
                ));
            }
            user.roles.insert(r.get_ref().clone());
        }
        if let Some(keys) = &u.keys {
            keys_managed.insert(name.clone());
            for k in keys {
                let key = parse_user_key(k.get_ref()).map_err(|e| cx.at(k.span(), e))?;
                let owner = policy
                    .users
                    .values()
                    .find(|o| o.keys.iter().any(|x| x.fingerprint == key.fingerprint));
                if let Some(owner) = owner {
                    return Err(cx.at(
                        k.span(),
                        PolicyError::KeyInUse {
                            fingerprint: key.fingerprint,
                            user: owner.name.clone(),
                        },
                    ));
                }
                if !user.keys.iter().any(|x| x.fingerprint == key.fingerprint) {
                    user.keys.push(key);
                }
            }
        }
        if policy.users.insert(name.clone(), user).is_some() {
            return Err(cx.at(u.name.span(), format!("duplicate user `{name}`")));
        }
    }
    policy
        .validate()
        .map_err(|e| LocatedError::new(path, src, 0, e.to_string()))?;
    Ok(PolicyDoc {
        policy,
        keys_managed,
        status_managed,
    })
}

/// The policy that results from applying `doc` on top of `current`: what the file names
/// is set as written; what it does not name is kept, or removed with `prune`.
pub fn merge(current: &Policy, doc: &PolicyDoc, prune: bool) -> Policy {
    let mut out = if prune {
        Policy::default()
    } else {
        current.clone()
    };
    out.roles.extend(doc.policy.roles.clone());
    out.targets.extend(doc.policy.targets.clone());
    for (name, user) in &doc.policy.users {
        let mut user = user.clone();
        if !doc.keys_managed.contains(name) {
            user.keys = current
                .users
                .get(name)
                .map(|u| u.keys.clone())
                .unwrap_or_default();
        }
        if !doc.status_managed.contains(name)
            && let Some(now) = current.users.get(name)
        {
            user.status = now.status;
        }
        out.users.insert(name.clone(), user);
    }
    out
}
