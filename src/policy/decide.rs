//! The access decision: default deny, any matching deny rule wins, the shortest TTL applies.

use std::fmt;

use serde::Serialize;

use super::{Role, RoleSettings, Rule, Target, TargetKind, User, UserStatus};

/// What a user asks to do on a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Ssh { login: &'a str },
    Postgres { database: &'a str, db_user: &'a str },
}

impl fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Ssh { login } => write!(f, "ssh login `{login}`"),
            Request::Postgres { database, db_user } => {
                write!(f, "database `{database}` as `{db_user}`")
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// Names one rule: `role dev allow rule #1 (env=staging)`. Rules are numbered from 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub role: String,
    pub effect: Effect,
    pub number: usize,
    pub targets: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = match self.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        write!(
            f,
            "role `{}` {} rule #{} ({})",
            self.role, effect, self.number, self.targets
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The first allow rule that covers the request.
    pub rule: RuleRef,
    /// Every role with an allow rule covering the request; their settings combine.
    pub roles: Vec<String>,
    /// Shortest TTLs of `roles`; port forwarding and file transfer only if all of them allow it.
    pub settings: RoleSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum DenyReason {
    UserLocked,
    WrongKind { target_kind: TargetKind },
    DeniedByRule { rule: RuleRef },
    NoRuleAllows,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::UserLocked => f.write_str("the user is locked"),
            DenyReason::WrongKind { target_kind } => {
                write!(f, "the target is of kind {target_kind}")
            }
            DenyReason::DeniedByRule { rule } => write!(f, "denied by {rule}"),
            DenyReason::NoRuleAllows => f.write_str("no role allows it (default deny)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "decision")]
// One per decision, moved rarely: boxing the grant would cost an allocation per decision.
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    Allow(Grant),
    Deny(DenyReason),
}

fn listed(list: &[String], value: &str) -> bool {
    list.iter().any(|l| l == "*" || l == value)
}

/// An allow rule covers only what it lists: no logins listed means no SSH.
fn allow_covers(rule: &Rule, target: &Target, req: &Request) -> bool {
    rule.targets.matches(&target.labels)
        && match req {
            Request::Ssh { login } => listed(&rule.logins, login),
            Request::Postgres { database, db_user } => {
                listed(&rule.databases, database) && listed(&rule.db_users, db_user)
            }
        }
}

/// A deny rule that lists nothing denies everything on its targets; one that lists
/// logins, databases or database users denies only those.
fn deny_covers(rule: &Rule, target: &Target, req: &Request) -> bool {
    if !rule.targets.matches(&target.labels) {
        return false;
    }
    let lists_nothing =
        rule.logins.is_empty() && rule.databases.is_empty() && rule.db_users.is_empty();
    lists_nothing
        || match req {
            Request::Ssh { login } => listed(&rule.logins, login),
            Request::Postgres { database, db_user } => {
                (!rule.databases.is_empty() || !rule.db_users.is_empty())
                    && (rule.databases.is_empty() || listed(&rule.databases, database))
                    && (rule.db_users.is_empty() || listed(&rule.db_users, db_user))
            }
        }
}

fn rule_ref(role: &Role, effect: Effect, index: usize, rule: &Rule) -> RuleRef {
    RuleRef {
        role: role.name.clone(),
        effect,
        number: index + 1,
        targets: rule.targets.to_string(),
    }
}

/// Decides whether `user` (holding `roles`) may do `req` on `target`.
pub fn decide(user: &User, roles: &[&Role], target: &Target, req: &Request) -> Decision {
    if user.status == UserStatus::Locked {
        return Decision::Deny(DenyReason::UserLocked);
    }
    let kind_ok = matches!(
        (req, target.kind),
        (Request::Ssh { .. }, TargetKind::Ssh) | (Request::Postgres { .. }, TargetKind::Postgres)
    );
    if !kind_ok {
        return Decision::Deny(DenyReason::WrongKind {
            target_kind: target.kind,
        });
    }
    for role in roles {
        if let Some((i, rule)) = role
            .deny
            .iter()
            .enumerate()
            .find(|(_, r)| deny_covers(r, target, req))
        {
            return Decision::Deny(DenyReason::DeniedByRule {
                rule: rule_ref(role, Effect::Deny, i, rule),
            });
        }
    }
    let mut first: Option<RuleRef> = None;
    let mut allowing: Vec<&Role> = Vec::new();
    for role in roles {
        if let Some((i, rule)) = role
            .allow
            .iter()
            .enumerate()
            .find(|(_, r)| allow_covers(r, target, req))
        {
            first.get_or_insert_with(|| rule_ref(role, Effect::Allow, i, rule));
            allowing.push(role);
        }
    }
    let Some(rule) = first else {
        return Decision::Deny(DenyReason::NoRuleAllows);
    };
    Decision::Allow(Grant {
        rule,
        roles: allowing.iter().map(|r| r.name.clone()).collect(),
        settings: combine(&allowing),
    })
}

/// Whether any allow rule of `roles` could let a user do something on `target` (a login
/// on an SSH target, a database as a database user on a PostgreSQL one) that no deny rule
/// takes away entirely. Someone for whom this is false is answered exactly as for a
/// target that does not exist: a name alone must not tell what exists, or of what kind.
pub fn may_reach(roles: &[&Role], target: &Target) -> bool {
    // A name no rule lists stands for what `*` allows.
    const ANY: &str = "\u{0}any";
    fn name(l: &str) -> &str {
        if l == "*" { ANY } else { l }
    }
    let user = User::new("reach");
    let allowed = |req: Request| matches!(decide(&user, roles, target, &req), Decision::Allow(_));
    roles
        .iter()
        .flat_map(|r| r.allow.iter())
        .filter(|r| r.targets.matches(&target.labels))
        .any(|r| match target.kind {
            TargetKind::Ssh => r
                .logins
                .iter()
                .any(|l| allowed(Request::Ssh { login: name(l) })),
            TargetKind::Postgres => r.databases.iter().any(|d| {
                r.db_users.iter().any(|u| {
                    allowed(Request::Postgres {
                        database: name(d),
                        db_user: name(u),
                    })
                })
            }),
        })
}

/// What a user is told about a target that does not exist or that they may not reach.
pub fn no_such_target(name: &str) -> String {
    format!(
        "no target `{}` that you may reach (it does not exist, or none of your roles allows anything on it)",
        super::names::printable(name)
    )
}

/// The most restrictive combination of the allowing roles' settings.
fn combine(roles: &[&Role]) -> RoleSettings {
    // Where every allowing role lets forwarding go; `None` when nowhere.
    let forward_to = roles.iter().try_fold(Vec::new(), |acc: Vec<String>, r| {
        super::forward::intersect(&acc, &r.settings.forward_to)
    });
    let s = |f: fn(&RoleSettings) -> crate::duration::Dur| {
        roles
            .iter()
            .map(|r| f(&r.settings))
            .min()
            .unwrap_or_else(|| f(&RoleSettings::default()))
    };
    RoleSettings {
        credential_ttl: s(|r| r.credential_ttl),
        max_session_ttl: s(|r| r.max_session_ttl),
        idle_timeout: s(|r| r.idle_timeout),
        port_forwarding: roles.iter().all(|r| r.settings.port_forwarding) && forward_to.is_some(),
        file_transfer: roles.iter().all(|r| r.settings.file_transfer),
        redact_parameters: roles.iter().any(|r| r.settings.redact_parameters),
        forward_to: forward_to.unwrap_or_default(),
        // Console rights and request settings are not part of a target decision.
        ..RoleSettings::default()
    }
}

/// The first concrete entry of `list` over the allow rules (roles in name order) that
/// cover the target.
fn first_listed(
    roles: &[&Role],
    target: &Target,
    list: impl Fn(&Rule) -> &Vec<String>,
) -> Option<String> {
    roles
        .iter()
        .flat_map(|r| r.allow.iter())
        .filter(|r| r.targets.matches(&target.labels))
        .flat_map(|r| list(r).iter())
        .find(|l| *l != "*")
        .cloned()
}

/// The login used when the SSH username names only a target: the first concrete login
/// of the first allow rule (roles in name order) that covers the target.
pub fn default_login(roles: &[&Role], target: &Target) -> Option<String> {
    first_listed(roles, target, |r| &r.logins)
}

/// The database and database user used when `postern db login` names neither: the
/// first concrete ones the covering allow rules list.
pub fn default_database(roles: &[&Role], target: &Target) -> (Option<String>, Option<String>) {
    (
        first_listed(roles, target, |r| &r.databases),
        first_listed(roles, target, |r| &r.db_users),
    )
}

/// What a user may use on a target now: the logins (SSH), or databases and database users
/// (PostgreSQL), that the allow rules covering it list and no deny rule takes back; `*`
/// where a rule allows any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reach {
    pub logins: Vec<String>,
    pub databases: Vec<String>,
    pub db_users: Vec<String>,
}

pub fn reach(user: &User, roles: &[&Role], target: &Target) -> Reach {
    let listed = |list: &dyn Fn(&Rule) -> &Vec<String>| -> Vec<String> {
        let mut all: Vec<String> = roles
            .iter()
            .flat_map(|r| r.allow.iter())
            .filter(|r| r.targets.matches(&target.labels))
            .flat_map(|r| list(r).iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    };
    let allowed = |req: Request| matches!(decide(user, roles, target, &req), Decision::Allow(_));
    match target.kind {
        TargetKind::Ssh => Reach {
            logins: listed(&|r| &r.logins)
                .into_iter()
                .filter(|l| l == "*" || allowed(Request::Ssh { login: l }))
                .collect(),
            ..Reach::default()
        },
        TargetKind::Postgres => {
            let (dbs, users) = (listed(&|r| &r.databases), listed(&|r| &r.db_users));
            // A name that some partner on the other side makes allowed (`*` stands for a
            // name no rule lists).
            let any = "\u{0}any";
            let name = |n: &str| {
                if n == "*" {
                    any.to_string()
                } else {
                    n.to_string()
                }
            };
            let pair = |d: &str, u: &str| {
                allowed(Request::Postgres {
                    database: &name(d),
                    db_user: &name(u),
                })
            };
            Reach {
                databases: dbs
                    .iter()
                    .filter(|d| users.iter().any(|u| pair(d, u)))
                    .cloned()
                    .collect(),
                db_users: users
                    .iter()
                    .filter(|u| dbs.iter().any(|d| pair(d, u)))
                    .cloned()
                    .collect(),
                ..Reach::default()
            }
        }
    }
}
