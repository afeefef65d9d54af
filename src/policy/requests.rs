//! Just-in-time access: which roles may be asked for, by whom, who decides, and the
//! time-boxed grants approved requests become. Grants are one more input to the same
//! `decide`: `Policy::roles_for` adds a granted role to the user's standing roles for the
//! grant's target (or every target) until it ends. Pure: the caller supplies the time.

use serde::{Deserialize, Serialize};

use super::decide::{Decision, Request, decide, may_reach};
use super::{ConsoleRight, Policy, PolicyError, Role, Target, User, UserStatus};
use crate::duration::Dur;

/// Most approvals a role may require.
pub const MAX_APPROVALS: u8 = 5;

pub fn one_approval() -> u8 {
    1
}
pub fn is_one_approval(n: &u8) -> bool {
    *n == 1
}
pub fn default_max_ttl() -> Dur {
    Dur::from_secs(8 * 3600)
}
pub fn is_default_max_ttl(d: &Dur) -> bool {
    *d == default_max_ttl()
}
pub fn default_expiry() -> Dur {
    Dur::from_secs(24 * 3600)
}
pub fn is_default_expiry(d: &Dur) -> bool {
    *d == default_expiry()
}

/// Access an approved request gives: `role` for `user`, on `target` only when set,
/// until `until_ms` (Unix ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedGrant {
    pub request: i64,
    pub user: String,
    pub role: String,
    pub target: Option<String>,
    pub until_ms: i64,
}

impl TimedGrant {
    pub fn covers(&self, user: &str, target: &str) -> bool {
        self.user == user && self.target.as_deref().is_none_or(|t| t == target)
    }
}

/// One `requestable_by` entry: `user:NAME`, `role:NAME` or `*`.
enum Asker<'a> {
    Anyone,
    User(&'a str),
    Role(&'a str),
}

fn asker(entry: &str) -> Option<Asker<'_>> {
    if entry == "*" {
        return Some(Asker::Anyone);
    }
    match entry.split_once(':') {
        Some(("user", n)) if !n.is_empty() => Some(Asker::User(n)),
        Some(("role", n)) if !n.is_empty() => Some(Asker::Role(n)),
        _ => None,
    }
}

/// The request settings of a role, checked against the rest of the policy.
pub fn check_role(policy: &Policy, role: &Role) -> Result<(), PolicyError> {
    let s = &role.settings;
    let bad = |m: String| Err(PolicyError::Invalid(format!("role `{}`: {m}", role.name)));
    for entry in &s.requestable_by {
        match asker(entry) {
            None => {
                return bad(format!(
                    "requestable_by entry `{}` is not `user:NAME`, `role:NAME` or `*`",
                    super::names::printable(entry)
                ));
            }
            Some(Asker::Role(r)) if !policy.roles.contains_key(r) => {
                return bad(format!(
                    "requestable_by names role `{r}`, which does not exist"
                ));
            }
            _ => {}
        }
    }
    for r in &s.reviewers {
        if !policy.roles.contains_key(r) {
            return bad(format!("reviewers names role `{r}`, which does not exist"));
        }
    }
    if !s.requestable_by.is_empty() && s.reviewers.is_empty() {
        return bad(
            "it is requestable but names no reviewers; set reviewers (roles whose members decide)"
                .into(),
        );
    }
    if s.approvals_required == 0 || s.approvals_required > MAX_APPROVALS {
        return bad(format!(
            "approvals_required must be 1 to {MAX_APPROVALS}, not {}",
            s.approvals_required
        ));
    }
    if s.max_request_ttl.as_secs() == 0 || s.request_expiry.as_secs() == 0 {
        return bad("max_request_ttl and request_expiry must be longer than 0s".into());
    }
    Ok(())
}

impl Policy {
    /// The roles that decide what `user` may do on `target`: their standing roles and the
    /// roles granted to them there for now, each once, in name order.
    pub fn roles_for(&self, user: &User, target: &str) -> Vec<&Role> {
        let mut names: Vec<&str> = user.roles.iter().map(String::as_str).collect();
        names.extend(
            self.grants
                .iter()
                .filter(|g| g.covers(&user.name, target))
                .map(|g| g.role.as_str()),
        );
        names.sort_unstable();
        names.dedup();
        names.iter().filter_map(|r| self.roles.get(*r)).collect()
    }

    /// When access that `allowing` roles give `user` on `target` relies on grants alone:
    /// the grant that lasts longest. `None` when a standing role allows it.
    pub fn grant_end(&self, user: &User, target: &str, allowing: &[String]) -> Option<&TimedGrant> {
        if allowing.iter().any(|r| user.roles.contains(r)) {
            return None;
        }
        self.grants
            .iter()
            .filter(|g| g.covers(&user.name, target) && allowing.contains(&g.role))
            .max_by_key(|g| g.until_ms)
    }
}

impl Policy {
    /// The roles a login is issued under: standing, granted anywhere, and requestable
    /// (someone with no standing role logs in to ask for one).
    pub fn login_roles(&self, user: &User) -> Vec<&Role> {
        let mut roles: Vec<&Role> = self.roles_of(user);
        for g in self.grants.iter().filter(|g| g.user == user.name) {
            roles.extend(self.roles.get(&g.role));
        }
        roles.extend(requestable_roles(self, user));
        roles.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        roles.dedup_by(|a, b| a.name == b.name);
        roles
    }

    /// When `user`'s reach of `target` rests on grants alone: the grant that lasts
    /// longest among those that reach it. `None` when standing roles reach it.
    pub fn reach_until(&self, user: &User, target: &Target) -> Option<&TimedGrant> {
        if may_reach(&self.roles_of(user), target) {
            return None;
        }
        self.grants
            .iter()
            .filter(|g| g.covers(&user.name, &target.name))
            .filter(|g| {
                self.roles
                    .get(&g.role)
                    .is_some_and(|r| may_reach(&[r], target))
            })
            .max_by_key(|g| g.until_ms)
    }
}

/// Whether `user` may ask for `role`.
pub fn may_request(policy: &Policy, user: &User, role: &Role) -> bool {
    user.status == UserStatus::Active
        && !user.bot
        && policy.roles.contains_key(&role.name)
        && role.settings.requestable_by.iter().any(|e| match asker(e) {
            Some(Asker::Anyone) => true,
            Some(Asker::User(n)) => n == user.name,
            Some(Asker::Role(r)) => user.roles.contains(r),
            None => false,
        })
}

/// The roles `user` may ask for.
pub fn requestable_roles<'p>(policy: &'p Policy, user: &User) -> Vec<&'p Role> {
    policy
        .roles
        .values()
        .filter(|r| may_request(policy, user, r))
        .collect()
}

/// Whether `user` may decide requests for `role` now: active and a member of one of its
/// reviewer roles.
pub fn may_review(user: &User, role: &Role) -> bool {
    user.status == UserStatus::Active
        && !user.bot
        && role
            .settings
            .reviewers
            .iter()
            .any(|r| user.roles.contains(r))
}

/// Whether `user` may take back a grant of `role`: its reviewers and console admins.
pub fn may_revoke(policy: &Policy, user: &User, role: &Role) -> bool {
    may_review(user, role)
        || (user.status == UserStatus::Active
            && policy.console_rights(user).contains(&ConsoleRight::Admin))
}

impl AccessRequest {
    /// A grant still running at `now`.
    pub fn running(&self, now: i64) -> bool {
        self.state == RequestState::Approved && self.grant_until_ms.unwrap_or(0) > now
    }

    /// Whether this pending request waits for `reviewer`'s decision: not their own, not
    /// yet approved by them, and they review its role.
    pub fn awaits(&self, policy: &Policy, reviewer: &User) -> bool {
        self.state == RequestState::Pending
            && self.user != reviewer.name
            && !self.approvals.iter().any(|a| a.reviewer == reviewer.name)
            && policy
                .roles
                .get(&self.role)
                .is_some_and(|role| may_review(reviewer, role))
    }

    /// Whether `user` may end this grant now: its requester, a reviewer of its role or a
    /// console admin.
    pub fn revocable_by(&self, policy: &Policy, user: &User, now: i64) -> bool {
        self.running(now)
            && (self.user == user.name
                || policy
                    .roles
                    .get(&self.role)
                    .is_some_and(|role| may_revoke(policy, user, role)))
    }
}

/// Why a request cannot be made as asked; `None` when it can.
pub fn refuse_request(
    policy: &Policy,
    user: &User,
    role: &Role,
    target: Option<&Target>,
    ttl: Dur,
) -> Option<String> {
    if user.bot {
        return Some("bots cannot request access; an admin grants their roles".into());
    }
    if !may_request(policy, user, role) {
        return Some(format!(
            "role `{}` is not requestable by you; `postern request roles` lists the ones that are",
            role.name
        ));
    }
    if ttl.as_secs() == 0 {
        return Some("ask for a time longer than 0s (--for 1h)".into());
    }
    if ttl > role.settings.max_request_ttl {
        return Some(format!(
            "role `{}` may be requested for at most {} (max_request_ttl), not {ttl}",
            role.name, role.settings.max_request_ttl
        ));
    }
    if let Some(t) = target
        && !may_reach(&[role], t)
    {
        return Some(format!(
            "role `{}` allows nothing on target `{}`",
            role.name, t.name
        ));
    }
    None
}

/// The roles `user` may request that would turn a refusal of `req` on `target` into an
/// allow, in name order.
pub fn would_allow(policy: &Policy, user: &User, target: &Target, req: &Request) -> Vec<String> {
    if user.status != UserStatus::Active {
        return Vec::new();
    }
    let held = policy.roles_for(user, &target.name);
    policy
        .roles
        .values()
        .filter(|r| !held.iter().any(|h| h.name == r.name) && may_request(policy, user, r))
        .filter(|r| {
            let mut with = held.clone();
            with.push(r);
            matches!(decide(user, &with, target, req), Decision::Allow(_))
        })
        .map(|r| r.name.clone())
        .collect()
}

/// What to add to a refusal of `req` on `target`: the request that would allow it, if any.
pub fn refusal_hint(policy: &Policy, user: &User, target: &Target, req: &Request) -> String {
    request_hint(&would_allow(policy, user, target, req), &target.name)
}

/// The refusal for a target that nothing reaches now, when a role `user` may request
/// would allow what they asked for (names left out are taken from the requestable roles'
/// rules, as for a standing role). `None` when requesting would not help: the target is
/// then answered as one that does not exist.
pub fn unreached_refusal(
    policy: &Policy,
    user: &User,
    target: &Target,
    login: Option<&str>,
    database: Option<&str>,
    db_user: Option<&str>,
) -> Option<String> {
    let requestable = requestable_roles(policy, user);
    let (what, hint) = match target.kind {
        super::TargetKind::Ssh => {
            let login = login
                .map(str::to_string)
                .or_else(|| super::default_login(&requestable, target))?;
            let hint = refusal_hint(policy, user, target, &Request::Ssh { login: &login });
            (format!("{login}@{}", target.name), hint)
        }
        super::TargetKind::Postgres => {
            let (d, u) = super::default_database(&requestable, target);
            let database = database.map(str::to_string).or(d)?;
            let db_user = db_user.map(str::to_string).or(u)?;
            let req = Request::Postgres {
                database: &database,
                db_user: &db_user,
            };
            let hint = refusal_hint(policy, user, target, &req);
            (
                format!("database `{database}` as `{db_user}` on `{}`", target.name),
                hint,
            )
        }
    };
    (!hint.is_empty())
        .then(|| format!("access to {what} denied: no role allows it (default deny){hint}"))
}

/// The hint added to a refusal when requesting a role would help.
pub fn request_hint(roles: &[String], target: &str) -> String {
    match roles.first() {
        None => String::new(),
        Some(first) => {
            let others = if roles.len() > 1 {
                format!(" (or {})", roles[1..].join(", "))
            } else {
                String::new()
            };
            format!(
                " — request it: postern request create --role {first}{others} --target {target} --for 1h --reason \"…\""
            )
        }
    }
}

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Waiting for reviewers.
    Pending,
    /// Approved: its grant runs until `grant_until_ms`.
    Approved,
    Denied,
    /// Taken back by the requester before a decision.
    Cancelled,
    /// Undecided when `pending_until_ms` passed.
    Expired,
    /// Its grant was taken back before it ended.
    Revoked,
    /// Its grant ran its time.
    Ended,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Cancelled => "cancelled",
            RequestState::Expired => "expired",
            RequestState::Revoked => "revoked",
            RequestState::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<RequestState> {
        Some(match s {
            "pending" => RequestState::Pending,
            "approved" => RequestState::Approved,
            "denied" => RequestState::Denied,
            "cancelled" => RequestState::Cancelled,
            "expired" => RequestState::Expired,
            "revoked" => RequestState::Revoked,
            "ended" => RequestState::Ended,
            _ => return None,
        })
    }
}

/// One reviewer's approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Approval {
    pub reviewer: String,
    pub reason: String,
    pub at_ms: i64,
}

/// An access request and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessRequest {
    pub id: i64,
    pub user: String,
    pub role: String,
    pub target: Option<String>,
    pub reason: String,
    pub ttl_secs: u64,
    pub state: RequestState,
    pub created_ms: i64,
    pub pending_until_ms: i64,
    pub approvals_required: u8,
    pub approvals: Vec<Approval>,
    /// Who denied, cancelled or revoked it, when, and why.
    pub decided_by: Option<String>,
    pub decided_ms: Option<i64>,
    pub decision_reason: Option<String>,
    pub grant_until_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Rule, TargetKind};

    fn policy(file: &str) -> Result<Policy, String> {
        super::super::file::parse(std::path::Path::new("p.toml"), file)
            .map(|d| d.policy)
            .map_err(|e| e.to_string())
    }

    const FILE: &str = r#"
[[roles]]
name = "sre"
console = ["audit"]
[[roles]]
name = "dev"
[[roles.allow]]
targets = "env=dev"
logins = ["ubuntu"]
[[roles]]
name = "gpu-admin"
requestable_by = ["role:dev", "user:zoe"]
reviewers = ["sre"]
approvals_required = 2
max_request_ttl = "4h"
[[roles.allow]]
targets = "gpu"
logins = ["root"]
[[targets]]
name = "gpu-1"
kind = "ssh"
address = "10.0.0.1:22"
labels = { gpu = "a100" }
[[targets]]
name = "gpu-2"
kind = "ssh"
address = "10.0.0.2:22"
labels = { gpu = "h100" }
[[users]]
name = "alice"
roles = ["dev"]
[[users]]
name = "zoe"
[[users]]
name = "bob"
roles = ["sre"]
"#;

    #[test]
    fn request_settings_come_from_policy_files_and_are_checked() {
        let p = policy(FILE).unwrap();
        let r = &p.roles["gpu-admin"].settings;
        assert_eq!(
            (r.approvals_required, r.max_request_ttl.as_secs()),
            (2, 4 * 3600)
        );
        assert_eq!(r.request_expiry, default_expiry());
        for (from, to, why) in [
            ("reviewers = [\"sre\"]\n", "", "names no reviewers"),
            ("\"user:zoe\"]", "\"zoe\"]", "is not `user:NAME`"),
            ("\"role:dev\"", "\"role:nope\"", "names role `nope`"),
            (
                "approvals_required = 2",
                "approvals_required = 9",
                "must be 1 to 5",
            ),
        ] {
            let err = policy(&FILE.replacen(from, to, 1)).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn the_example_policy_file_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let p = policy(&text).unwrap();
        let gpu = &p.roles["gpu-admin"];
        assert!(may_request(&p, &p.users["alice"], gpu));
        assert!(!may_request(&p, &p.users["bob"], gpu));
        assert!(may_review(&p.users["bob"], gpu));
        assert!(p.users["ci-deploy"].bot);
        assert!(!may_request(&p, &p.users["ci-deploy"], gpu));
    }

    #[test]
    fn grants_decide_like_roles_for_their_target_until_they_end() {
        let mut p = policy(FILE).unwrap();
        let alice = p.users["alice"].clone();
        let (g1, g2) = (p.targets["gpu-1"].clone(), p.targets["gpu-2"].clone());
        let root = Request::Ssh { login: "root" };
        let allowed = |p: &Policy, t: &Target| {
            matches!(
                decide(&alice, &p.roles_for(&alice, &t.name), t, &root),
                Decision::Allow(_)
            )
        };
        assert!(!allowed(&p, &g1));
        assert_eq!(would_allow(&p, &alice, &g1, &root), vec!["gpu-admin"]);
        assert!(refusal_hint(&p, &alice, &g1, &root).contains("--role gpu-admin --target gpu-1"));
        // bob reviews but may not ask; zoe may ask by name.
        assert!(would_allow(&p, &p.users["bob"], &g1, &root).is_empty());
        assert!(may_request(&p, &p.users["zoe"], &p.roles["gpu-admin"]));
        p.grants.push(TimedGrant {
            request: 1,
            user: "alice".into(),
            role: "gpu-admin".into(),
            target: Some("gpu-1".into()),
            until_ms: 5_000,
        });
        assert!(allowed(&p, &g1));
        assert!(!allowed(&p, &g2), "the grant names gpu-1 only");
        let end = p.grant_end(&alice, "gpu-1", &["gpu-admin".into()]).unwrap();
        assert_eq!((end.request, end.until_ms), (1, 5_000));
        assert_eq!(p.reach_until(&alice, &g1).map(|g| g.request), Some(1));
        // A standing role that allows the same makes the grant irrelevant to the session.
        let mut held = alice.clone();
        held.roles.insert("gpu-admin".into());
        assert!(p.grant_end(&held, "gpu-1", &["gpu-admin".into()]).is_none());
        // A deny rule in any role still wins over a grant.
        p.roles.get_mut("dev").unwrap().deny.push(Rule {
            targets: "gpu".parse().unwrap(),
            logins: vec![],
            databases: vec![],
            db_users: vec![],
        });
        assert!(!allowed(&p, &g1));
        assert_eq!(g1.kind, TargetKind::Ssh);
    }
}
