//! Property tests of the decision rules: default deny, deny beats allow, selector
//! semantics, shortest TTL.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::selector::Requirement;
use super::*;
use crate::duration::Dur;

const KEYS: &[&str] = &["env", "team", "gpu"];
const VALUES: &[&str] = &["prod", "staging", "vision", "a100"];

fn key() -> impl Strategy<Value = String> {
    proptest::sample::select(KEYS).prop_map(str::to_string)
}

fn value() -> impl Strategy<Value = String> {
    proptest::sample::select(VALUES).prop_map(str::to_string)
}

pub(super) fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(key(), value(), 0..3)
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let set = || proptest::collection::vec(value(), 1..3);
    prop_oneof![
        (key(), value()).prop_map(|(k, v)| Requirement::Eq(k, v)),
        (key(), value()).prop_map(|(k, v)| Requirement::NotEq(k, v)),
        (key(), set()).prop_map(|(k, v)| Requirement::In(k, v)),
        (key(), set()).prop_map(|(k, v)| Requirement::NotIn(k, v)),
        key().prop_map(Requirement::Exists),
        key().prop_map(Requirement::Absent),
    ]
}

pub(super) fn selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        1 => Just(Selector::All),
        4 => proptest::collection::vec(requirement(), 1..3).prop_map(Selector::Match),
    ]
}

fn logins() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        proptest::sample::select(&["root", "ubuntu", "*"][..]).prop_map(str::to_string),
        0..3,
    )
}

fn rule() -> impl Strategy<Value = Rule> {
    (selector(), logins()).prop_map(|(targets, logins)| Rule {
        targets,
        logins,
        databases: vec![],
        db_users: vec![],
    })
}

pub(super) fn dur() -> impl Strategy<Value = Dur> {
    (1u64..100_000).prop_map(Dur::from_secs)
}

fn role(name: String, with_deny: bool) -> impl Strategy<Value = Role> {
    let deny = if with_deny { 0..3usize } else { 0..1 };
    (
        proptest::collection::vec(rule(), 0..3),
        proptest::collection::vec(rule(), deny),
        dur(),
        dur(),
        dur(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(allow, deny, c, m, i, pf, ft)| Role {
            name: name.clone(),
            settings: RoleSettings {
                credential_ttl: c,
                max_session_ttl: m,
                idle_timeout: i,
                port_forwarding: pf,
                file_transfer: ft,
                redact_parameters: false,
                forward_to: Vec::new(),
                console: Default::default(),
                ..RoleSettings::default()
            },
            allow,
            deny,
        })
}

fn roles() -> impl Strategy<Value = Vec<Role>> {
    (0..4usize).prop_flat_map(|n| {
        (0..n)
            .map(|i| role(format!("r{i}"), true))
            .collect::<Vec<_>>()
    })
}

fn target(labels: BTreeMap<String, String>) -> Target {
    Target {
        name: "t".into(),
        kind: TargetKind::Ssh,
        address: "10.0.0.1:22".into(),
        labels,
        host_key: None,
        tls_mode: None,
    }
}

fn user() -> User {
    User::new("alice")
}

/// The reference meaning of one requirement, written independently of the implementation.
pub(super) fn model(r: &Requirement, l: &BTreeMap<String, String>) -> bool {
    match r {
        Requirement::Eq(k, v) => l.get(k).map(String::as_str) == Some(v.as_str()),
        Requirement::NotEq(k, v) => l.get(k).map(String::as_str) != Some(v.as_str()),
        Requirement::In(k, vs) => match l.get(k) {
            Some(x) => vs.iter().any(|v| v == x),
            None => false,
        },
        Requirement::NotIn(k, vs) => match l.get(k) {
            Some(x) => !vs.iter().any(|v| v == x),
            None => true,
        },
        Requirement::Exists(k) => l.contains_key(k),
        Requirement::Absent(k) => !l.contains_key(k),
    }
}

proptest! {
    #[test]
    fn no_allow_rule_means_deny(
        labels in labels(),
        deny_rules in proptest::collection::vec(rule(), 0..3),
        login in "root|ubuntu|svc",
    ) {
        let mut r = Role::new("only-deny");
        r.deny = deny_rules;
        let d = decide(&user(), &[&r], &target(labels.clone()), &Request::Ssh { login: &login });
        prop_assert!(matches!(d, Decision::Deny(_)));
        let d = decide(&user(), &[], &target(labels), &Request::Ssh { login: &login });
        prop_assert_eq!(d, Decision::Deny(DenyReason::NoRuleAllows));
    }

    #[test]
    fn deny_beats_allow(roles in roles(), labels in labels(), login in "root|ubuntu", pos in 0usize..4) {
        let mut roles = roles;
        // A role that allows everything, and a deny that covers this target.
        let mut open = Role::new("open");
        open.allow.push(Rule { targets: Selector::All, logins: vec!["*".into()], databases: vec![], db_users: vec![] });
        roles.push(open);
        let mut closed = Role::new("closed");
        closed.deny.push(Rule { targets: Selector::All, logins: vec![], databases: vec![], db_users: vec![] });
        roles.insert(pos.min(roles.len()), closed);
        let refs: Vec<&Role> = roles.iter().collect();
        let d = decide(&user(), &refs, &target(labels), &Request::Ssh { login: &login });
        prop_assert!(matches!(d, Decision::Deny(DenyReason::DeniedByRule { .. })), "{:?}", d);
    }

    #[test]
    fn allow_implies_a_covering_allow_and_no_covering_deny(roles in roles(), labels in labels(), login in "root|ubuntu") {
        let refs: Vec<&Role> = roles.iter().collect();
        let t = target(labels.clone());
        if let Decision::Allow(g) = decide(&user(), &refs, &t, &Request::Ssh { login: &login }) {
            let role = roles.iter().find(|r| r.name == g.rule.role).unwrap();
            let rule = &role.allow[g.rule.number - 1];
            prop_assert!(rule.targets.matches(&labels));
            prop_assert!(rule.logins.iter().any(|l| l == "*" || *l == login));
            for r in &roles {
                for d in &r.deny {
                    let covers = d.targets.matches(&labels)
                        && (d.logins.is_empty() || d.logins.iter().any(|l| l == "*" || *l == login));
                    prop_assert!(!covers, "deny rule of {} covers but decision was allow", r.name);
                }
            }
        }
    }

    #[test]
    fn locked_users_are_always_denied(roles in roles(), labels in labels()) {
        let mut u = user();
        u.status = UserStatus::Locked;
        let refs: Vec<&Role> = roles.iter().collect();
        let d = decide(&u, &refs, &target(labels), &Request::Ssh { login: "root" });
        prop_assert_eq!(d, Decision::Deny(DenyReason::UserLocked));
    }

    #[test]
    fn selector_semantics(reqs in proptest::collection::vec(requirement(), 1..4), labels in labels()) {
        let sel = Selector::Match(reqs.clone());
        prop_assert_eq!(sel.matches(&labels), reqs.iter().all(|r| model(r, &labels)));
        prop_assert!(Selector::All.matches(&labels));
        // What Display prints parses back to the same selector.
        prop_assert_eq!(sel.to_string().parse::<Selector>().unwrap(), sel);
    }

    #[test]
    fn effective_ttls_are_the_minimum(
        ttls in proptest::collection::vec((dur(), dur(), dur(), any::<bool>(), any::<bool>()), 1..5),
        labels in labels(),
    ) {
        let roles: Vec<Role> = ttls.iter().enumerate().map(|(i, (c, m, idle, pf, ft))| {
            let mut r = Role::new(&format!("r{i}"));
            r.settings = RoleSettings { credential_ttl: *c, max_session_ttl: *m, idle_timeout: *idle, port_forwarding: *pf, file_transfer: *ft, redact_parameters: false, forward_to: Vec::new(), console: Default::default(), ..RoleSettings::default() };
            r.allow.push(Rule { targets: Selector::All, logins: vec!["root".into()], databases: vec![], db_users: vec![] });
            r
        }).collect();
        let refs: Vec<&Role> = roles.iter().collect();
        let Decision::Allow(g) = decide(&user(), &refs, &target(labels), &Request::Ssh { login: "root" }) else {
            return Err(TestCaseError::fail("expected allow"));
        };
        prop_assert_eq!(g.settings.credential_ttl, ttls.iter().map(|t| t.0).min().unwrap());
        prop_assert_eq!(g.settings.max_session_ttl, ttls.iter().map(|t| t.1).min().unwrap());
        prop_assert_eq!(g.settings.idle_timeout, ttls.iter().map(|t| t.2).min().unwrap());
        prop_assert_eq!(g.settings.port_forwarding, ttls.iter().all(|t| t.3));
        prop_assert_eq!(g.settings.file_transfer, ttls.iter().all(|t| t.4));
        prop_assert_eq!(g.roles.len(), roles.len());
    }
}

#[test]
fn decisions_table() {
    let mut dev = Role::new("dev");
    dev.allow.push(Rule {
        targets: "env=staging".parse().unwrap(),
        logins: vec!["ubuntu".into()],
        databases: vec!["features".into()],
        db_users: vec!["reader".into()],
    });
    dev.deny.push(Rule {
        targets: "pii".parse().unwrap(),
        logins: vec![],
        databases: vec![],
        db_users: vec![],
    });
    dev.deny.push(Rule {
        targets: "*".parse().unwrap(),
        logins: vec![],
        databases: vec!["secrets".into()],
        db_users: vec![],
    });
    let staging = target([("env".to_string(), "staging".to_string())].into());
    let pii = target(
        [
            ("env".to_string(), "staging".to_string()),
            ("pii".to_string(), "yes".to_string()),
        ]
        .into(),
    );
    let mut pg = staging.clone();
    pg.kind = TargetKind::Postgres;
    let u = user();
    let check = |t: &Target, req: Request, expect: &str| {
        let got = match decide(&u, &[&dev], t, &req) {
            Decision::Allow(g) => format!("allow {}", g.rule),
            Decision::Deny(r) => format!("deny {r}"),
        };
        assert_eq!(got, expect, "{req}");
    };
    check(
        &staging,
        Request::Ssh { login: "ubuntu" },
        "allow role `dev` allow rule #1 (env=staging)",
    );
    check(
        &staging,
        Request::Ssh { login: "root" },
        "deny no role allows it (default deny)",
    );
    check(
        &pii,
        Request::Ssh { login: "ubuntu" },
        "deny denied by role `dev` deny rule #1 (pii)",
    );
    check(
        &staging,
        Request::Postgres {
            database: "features",
            db_user: "reader",
        },
        "deny the target is of kind ssh",
    );
    check(
        &pg,
        Request::Postgres {
            database: "features",
            db_user: "reader",
        },
        "allow role `dev` allow rule #1 (env=staging)",
    );
    check(
        &pg,
        Request::Postgres {
            database: "features",
            db_user: "admin",
        },
        "deny no role allows it (default deny)",
    );
    check(
        &pg,
        Request::Postgres {
            database: "secrets",
            db_user: "reader",
        },
        "deny denied by role `dev` deny rule #2 (*)",
    );
    // A deny rule that lists only databases does not deny SSH.
    check(
        &staging,
        Request::Ssh { login: "ubuntu" },
        "allow role `dev` allow rule #1 (env=staging)",
    );
}

#[test]
fn reach_lists_what_allow_rules_grant_and_deny_rules_leave() {
    use super::reach;
    let mut dev = Role::new("dev");
    dev.allow.push(Rule {
        targets: "env=staging".parse().unwrap(),
        logins: vec!["ubuntu".into(), "root".into()],
        databases: vec!["features".into(), "secrets".into()],
        db_users: vec!["reader".into()],
    });
    dev.deny.push(Rule {
        targets: "*".parse().unwrap(),
        logins: vec!["root".into()],
        databases: vec!["secrets".into()],
        db_users: vec![],
    });
    let staging = target([("env".to_string(), "staging".to_string())].into());
    let r = reach(&user(), &[&dev], &staging);
    assert_eq!(r.logins, ["ubuntu"]);
    let mut pg = staging.clone();
    pg.kind = TargetKind::Postgres;
    let r = reach(&user(), &[&dev], &pg);
    assert_eq!(
        (r.databases, r.db_users),
        (vec!["features".to_string()], vec!["reader".to_string()])
    );
    let prod = target([("env".to_string(), "prod".to_string())].into());
    assert_eq!(reach(&user(), &[&dev], &prod), super::Reach::default());
}
