//! Periodic access reviews: which standing role grants a campaign covers, and who may
//! decide each. Pure; the store keeps campaigns and items.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::decide::may_reach;
use super::{ConsoleRight, Policy, PolicyError, User, UserStatus};

/// What a campaign reviews.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Every standing role grant.
    All,
    /// Grants of this role.
    Role(String),
    /// Grants of roles that reach some target with this label.
    TargetLabel(String, String),
}

impl Scope {
    /// `role=NAME`, `target-label=KEY=VALUE`, or empty / `all`.
    pub fn parse(s: &str) -> Result<Scope, PolicyError> {
        let s = s.trim();
        if s.is_empty() || s == "all" {
            return Ok(Scope::All);
        }
        if let Some(r) = s.strip_prefix("role=") {
            super::names::check_role_name(r)?;
            return Ok(Scope::Role(r.to_string()));
        }
        if let Some(kv) = s.strip_prefix("target-label=")
            && let Some((k, v)) = kv.split_once('=')
            && !k.is_empty()
        {
            return Ok(Scope::TargetLabel(k.to_string(), v.to_string()));
        }
        Err(PolicyError::Invalid(format!(
            "scope `{}` is not role=NAME or target-label=KEY=VALUE",
            super::names::printable(s)
        )))
    }

    /// The `(user, role)` grants in scope, in order.
    pub fn grants<'p>(&self, policy: &'p Policy) -> Vec<(&'p User, String)> {
        let in_scope = |role: &str| -> bool {
            match self {
                Scope::All => true,
                Scope::Role(r) => r == role,
                Scope::TargetLabel(k, v) => policy.roles.get(role).is_some_and(|r| {
                    policy
                        .targets
                        .values()
                        .filter(|t| t.labels.get(k) == Some(v))
                        .any(|t| may_reach(&[r], t))
                }),
            }
        };
        policy
            .users
            .values()
            .flat_map(|u| {
                u.roles
                    .iter()
                    .filter(|r| in_scope(r))
                    .map(move |r| (u, r.clone()))
            })
            .collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Role(r) => write!(f, "role={r}"),
            Scope::TargetLabel(k, v) => write!(f, "target-label={k}={v}"),
        }
    }
}

/// Whether `reviewer` may certify or revoke `user`'s grant of `role`: an active person
/// (not a bot), not reviewing themselves, who reviews the role (its `reviewers`) or holds
/// the console's admin right.
pub fn may_decide(policy: &Policy, reviewer: &User, user: &str, role: &str) -> bool {
    reviewer.status == UserStatus::Active
        && !reviewer.bot
        && reviewer.name != user
        && (policy
            .roles
            .get(role)
            .is_some_and(|r| super::requests::may_review(reviewer, r))
            || policy
                .console_rights(reviewer)
                .contains(&ConsoleRight::Admin))
}

/// Counts of a campaign's items by decision (`open` for undecided).
pub fn tally<'a>(decisions: impl Iterator<Item = Option<&'a str>>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in decisions {
        *out.entry(d.unwrap_or("open").to_string()).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Role, Rule, Target, TargetKind};

    #[test]
    fn scopes_parse_and_pick_grants() {
        let mut p = Policy::default();
        let mut gpu = Role::new("gpu");
        gpu.allow.push(Rule {
            targets: "kind=gpu".parse().unwrap(),
            logins: vec!["root".into()],
            databases: vec![],
            db_users: vec![],
        });
        p.roles.insert("gpu".into(), gpu);
        p.roles.insert("other".into(), Role::new("other"));
        let mut t = Target {
            name: "g1".into(),
            kind: TargetKind::Ssh,
            address: "127.0.0.1:22".into(),
            labels: Default::default(),
            host_key: None,
            tls_mode: None,
        };
        t.labels.insert("kind".into(), "gpu".into());
        p.targets.insert("g1".into(), t);
        let mut a = User::new("a");
        a.roles.insert("gpu".into());
        a.roles.insert("other".into());
        p.users.insert("a".into(), a);
        assert_eq!(Scope::parse("").unwrap().grants(&p).len(), 2);
        assert_eq!(Scope::parse("role=other").unwrap().grants(&p).len(), 1);
        let by_label = Scope::parse("target-label=kind=gpu").unwrap();
        assert_eq!(by_label.grants(&p)[0].1, "gpu");
        assert_eq!(by_label.to_string(), "target-label=kind=gpu");
        for bad in ["role=", "target-label=x", "user=a", "role=a b"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }
}
