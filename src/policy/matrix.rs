//! The RBAC matrix: generated policies and requests, each decided by `decide` and by a
//! small reference model of the documented rules written here on its own (README "How
//! access is decided"): deny by default; a locked user is denied; a request of the wrong
//! kind is denied; a covering deny rule beats every allow; an allow rule covers only what
//! it lists; the shortest TTLs of the allowing roles apply, port forwarding and file
//! transfer only when all of them permit it, forwarding only where all of them allow.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::tests::{dur, labels, model, selector};
use super::*;

fn listed() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        proptest::sample::select(&["root", "ubuntu", "features", "app", "*"][..])
            .prop_map(str::to_string),
        0..3,
    )
}

fn rule() -> impl Strategy<Value = Rule> {
    (selector(), listed(), listed(), listed()).prop_map(|(targets, logins, databases, db_users)| {
        Rule {
            targets,
            logins,
            databases,
            db_users,
        }
    })
}

fn forward_to() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        proptest::sample::select(&["127.0.0.1:*", "*:443", "db:5432", "127.0.0.1:443"][..])
            .prop_map(str::to_string),
        0..3,
    )
}

fn role(name: &'static str) -> impl Strategy<Value = Role> {
    (
        proptest::collection::vec(rule(), 0..3),
        proptest::collection::vec(rule(), 0..2),
        (dur(), dur(), dur()),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        forward_to(),
    )
        .prop_map(move |(allow, deny, (c, m, i), (pf, ft, redact), to)| Role {
            name: name.to_string(),
            settings: RoleSettings {
                credential_ttl: c,
                max_session_ttl: m,
                idle_timeout: i,
                port_forwarding: pf,
                file_transfer: ft,
                redact_parameters: redact,
                forward_to: to,
                console: Default::default(),
                ..RoleSettings::default()
            },
            allow,
            deny,
        })
}

#[derive(Debug, Clone)]
enum Req {
    Ssh(String),
    Pg(String, String),
}

fn request() -> impl Strategy<Value = Req> {
    let name = || proptest::sample::select(&["root", "ubuntu", "features", "app", "x"][..]);
    prop_oneof![
        name().prop_map(|l| Req::Ssh(l.to_string())),
        (name(), name()).prop_map(|(d, u)| Req::Pg(d.to_string(), u.to_string())),
    ]
}

/// One case: the user's roles, whether the user is locked, the target and the request.
fn case() -> impl Strategy<Value = (Vec<Role>, bool, TargetKind, BTreeMap<String, String>, Req)> {
    (
        (role("a"), role("b"), role("c"), 0usize..4),
        proptest::bool::weighted(0.1),
        prop_oneof![Just(TargetKind::Ssh), Just(TargetKind::Postgres)],
        labels(),
        request(),
    )
        .prop_map(|((a, b, c, n), locked, kind, labels, req)| {
            let mut roles = vec![a, b, c];
            roles.truncate(n);
            (roles, locked, kind, labels, req)
        })
}

// ---- the reference model ------------------------------------------------------------

fn selects(s: &Selector, labels: &BTreeMap<String, String>) -> bool {
    match s {
        Selector::All => true,
        Selector::Match(reqs) => reqs.iter().all(|r| model(r, labels)),
    }
}

fn names(list: &[String], x: &str) -> bool {
    list.iter().any(|l| l == "*" || l == x)
}

fn denies(r: &Rule, labels: &BTreeMap<String, String>, req: &Req) -> bool {
    if !selects(&r.targets, labels) {
        return false;
    }
    if r.logins.is_empty() && r.databases.is_empty() && r.db_users.is_empty() {
        return true;
    }
    match req {
        Req::Ssh(login) => names(&r.logins, login),
        Req::Pg(db, user) => {
            let narrows = !r.databases.is_empty() || !r.db_users.is_empty();
            narrows
                && (r.databases.is_empty() || names(&r.databases, db))
                && (r.db_users.is_empty() || names(&r.db_users, user))
        }
    }
}

fn allows(r: &Rule, labels: &BTreeMap<String, String>, req: &Req) -> bool {
    selects(&r.targets, labels)
        && match req {
            Req::Ssh(login) => names(&r.logins, login),
            Req::Pg(db, user) => names(&r.databases, db) && names(&r.db_users, user),
        }
}

/// `None`: denied. `Some(roles)`: allowed by these roles (in order).
fn reference<'a>(
    roles: &'a [Role],
    locked: bool,
    kind: TargetKind,
    labels: &BTreeMap<String, String>,
    req: &Req,
) -> Option<Vec<&'a Role>> {
    let kind_ok = matches!(
        (req, kind),
        (Req::Ssh(_), TargetKind::Ssh) | (Req::Pg(..), TargetKind::Postgres)
    );
    if locked || !kind_ok {
        return None;
    }
    if roles
        .iter()
        .any(|r| r.deny.iter().any(|d| denies(d, labels, req)))
    {
        return None;
    }
    let allowing: Vec<&Role> = roles
        .iter()
        .filter(|r| r.allow.iter().any(|a| allows(a, labels, req)))
        .collect();
    (!allowing.is_empty()).then_some(allowing)
}

const PROBES: &[(&str, u32)] = &[
    ("127.0.0.1", 443),
    ("127.0.0.1", 22),
    ("db", 5432),
    ("example", 443),
    ("example", 80),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn decisions_match_the_reference_model((roles, locked, kind, labels, req) in case()) {
        let mut user = User::new("alice");
        if locked {
            user.status = UserStatus::Locked;
        }
        let target = Target {
            name: "t".into(),
            kind,
            address: "10.0.0.1:22".into(),
            labels: labels.clone(),
            host_key: None,
            tls_mode: None,
        };
        let refs: Vec<&Role> = roles.iter().collect();
        let request = match &req {
            Req::Ssh(login) => Request::Ssh { login },
            Req::Pg(database, db_user) => Request::Postgres { database, db_user },
        };
        let got = decide(&user, &refs, &target, &request);
        let want = reference(&roles, locked, kind, &labels, &req);
        // May reach = some request of the target's kind would be allowed (an unlocked
        // user; `zz` stands for any name no rule lists).
        const NAMES: [&str; 6] = ["root", "ubuntu", "features", "app", "x", "zz"];
        let some = match kind {
            TargetKind::Ssh => NAMES
                .iter()
                .any(|l| reference(&roles, false, kind, &labels, &Req::Ssh(l.to_string())).is_some()),
            TargetKind::Postgres => NAMES.iter().any(|d| {
                NAMES.iter().any(|u| {
                    reference(&roles, false, kind, &labels, &Req::Pg(d.to_string(), u.to_string())).is_some()
                })
            }),
        };
        prop_assert_eq!(may_reach(&refs, &target), some);
        match (&got, &want) {
            (Decision::Deny(_), None) => {}
            (Decision::Allow(g), Some(allowing)) => {
                let names: Vec<String> = allowing.iter().map(|r| r.name.clone()).collect();
                prop_assert_eq!(&g.roles, &names);
                let s = &g.settings;
                let min = |f: fn(&RoleSettings) -> crate::duration::Dur| {
                    allowing.iter().map(|r| f(&r.settings)).min()
                };
                prop_assert_eq!(Some(s.credential_ttl), min(|r| r.credential_ttl));
                prop_assert_eq!(Some(s.max_session_ttl), min(|r| r.max_session_ttl));
                prop_assert_eq!(Some(s.idle_timeout), min(|r| r.idle_timeout));
                prop_assert_eq!(s.file_transfer, allowing.iter().all(|r| r.settings.file_transfer));
                prop_assert_eq!(s.redact_parameters, allowing.iter().any(|r| r.settings.redact_parameters));
                let all_forward = allowing.iter().all(|r| r.settings.port_forwarding);
                for (host, port) in PROBES {
                    let want = all_forward
                        && allowing
                            .iter()
                            .all(|r| forward::allows(&r.settings.forward_to, host, *port));
                    let got = s.port_forwarding && forward::allows(&s.forward_to, host, *port);
                    prop_assert_eq!(got, want, "forward to {}:{} in {:?}", host, port, s.forward_to);
                }
                // Whoever is allowed something on a target may reach it.
                prop_assert!(may_reach(&refs, &target));
            }
            _ => prop_assert!(false, "decide said {:?}, the model {:?}", got, want.map(|r| r.len())),
        }
    }
}
