//! Periodic access reviews end to end: a campaign over the standing grants with their last
//! use, certify, revoke (a live session resting on the grant ends), the due date passing
//! on a test clock (the rest revoked), and the auditors' report.

use std::time::Duration;

use crate::harness::postern::Postern;
use crate::login::{Dev, PASSWORD};
use crate::ssh::{Bastion, wait_child};

fn person(p: &Postern, name: &str, role: &str) -> Dev {
    p.cli(&["admin", "user", "add", name, "--role", role]).ok();
    p.cli_stdin(
        &["admin", "user", "set-password", name, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    )
    .ok();
    let dev = Dev::new();
    let ca = p.write("tls-ca.pem", p.cli(&["admin", "tls-ca"]).ok());
    dev.login_as(p, name, &["--ca-file", ca.to_str().unwrap()], PASSWORD)
        .ok();
    dev
}

fn item_of(items: &serde_json::Value, user: &str, role: &str) -> i64 {
    items["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["user"] == user && i["role"] == role)
        .unwrap_or_else(|| panic!("no item for {user}/{role}: {items}"))["id"]
        .as_i64()
        .unwrap()
}

/// Roles `sre` (console audit, reviews `dev`) and `admins` (console admin), and carol,
/// who holds `dev` like alice.
fn reviewed_roles(p: &Postern) {
    p.cli(&["admin", "role", "add", "sre", "--console", "audit"])
        .ok();
    p.cli(&["admin", "role", "add", "admins", "--console", "admin"])
        .ok();
    p.cli(&["admin", "role", "set", "dev", "--reviewers", "sre"])
        .ok();
    p.cli(&["admin", "user", "add", "carol", "--role", "dev"])
        .ok();
}

#[test]
fn a_review_certifies_revokes_and_closes_at_its_due_date() {
    let b = Bastion::start();
    let p = &b.postern;
    reviewed_roles(p);
    p.cli(&["admin", "user", "add", "dave", "--role", "dev"])
        .ok();
    // alice has used her grant; carol and dave never did.
    assert_eq!(b.ssh(&b.dest(), "echo used").ok().trim(), "used");
    let ops = person(p, "ops", "admins");
    let bob = person(p, "bob", "sre");
    crate::login::set_password(p);
    let alice = Dev::new();
    let ca = p.write("tls-ca.pem", p.cli(&["admin", "tls-ca"]).ok());
    alice
        .login(p, &["--ca-file", ca.to_str().unwrap()], PASSWORD)
        .ok();

    // Only admins start campaigns.
    let out = bob.run(p, &["review", "start", "--scope", "role=dev"], "");
    assert!(out.fails(1).contains("`admin` right"), "{}", out.stderr);
    let out = ops.run(
        p,
        &[
            "review", "start", "--name", "Q4", "--scope", "role=dev", "--due", "14d",
        ],
        "",
    );
    assert!(
        out.ok().contains("review #1 `Q4` started: 3 items"),
        "{}",
        out.stdout
    );

    let mine = bob.run(p, &["review", "items", "--mine", "--json"], "");
    let items: serde_json::Value = serde_json::from_str(mine.ok()).unwrap();
    assert_eq!(items["items"].as_array().unwrap().len(), 3, "{items}");
    let a = item_of(&items, "alice", "dev");
    let c = item_of(&items, "carol", "dev");
    let alice_item = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == a)
        .unwrap();
    assert!(
        alice_item["last_used_ms"].as_i64().is_some(),
        "{alice_item}"
    );
    assert!(alice_item["granted_ms"].as_i64().is_some(), "{alice_item}");
    // Nobody reviews their own grant; a grant holder is not a reviewer here anyway.
    let own = alice.run(p, &["review", "certify", &a.to_string()], "");
    assert!(own.fails(1).contains("may not decide"), "{}", own.stderr);

    let out = bob.run(
        p,
        &["review", "certify", &c.to_string(), "--reason", "on call"],
        "",
    );
    assert!(
        out.ok().contains("certified: carol keeps role dev"),
        "{}",
        out.stdout
    );

    // Revoking alice's grant ends her live session.
    let child = crate::ssh::sleeping_session(&b, &b.key, 2);
    let no_reason = bob.run(
        p,
        &["review", "revoke", &a.to_string(), "--reason", " "],
        "",
    );
    assert!(
        no_reason.fails(1).contains("reason is required"),
        "{}",
        no_reason.stderr
    );
    let out = bob.run(
        p,
        &[
            "review",
            "revoke",
            &a.to_string(),
            "--reason",
            "left the team",
        ],
        "",
    );
    assert!(
        out.ok().contains("alice no longer holds role dev"),
        "{}",
        out.stdout
    );
    let out = wait_child(child);
    assert!(!out.stdout.contains("never"));
    assert!(out.stderr.contains("access was withdrawn"), "{out:?}");
    let again = bob.run(p, &["review", "certify", &a.to_string()], "");
    assert!(
        again.fails(1).contains("already revoked"),
        "{}",
        again.stderr
    );

    // Two weeks pass (on the test clock): dave's undecided grant is revoked.
    p.set_clock_ahead(Duration::from_secs(15 * 86_400));
    let mut closed = Vec::new();
    for _ in 0..100 {
        closed = p.events("review.closed");
        if !closed.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(closed.len(), 1, "{}", p.log());
    assert_eq!(closed[0]["details"]["counts"]["revoked_at_due"], 1);
    let users = p.cli(&["admin", "user", "list", "--json"]);
    let users: serde_json::Value = serde_json::from_str(users.ok()).unwrap();
    let roles_of = |n: &str| {
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == n)
            .unwrap()["roles"]
            .clone()
    };
    assert_eq!(roles_of("dave"), serde_json::json!([]));
    assert_eq!(roles_of("alice"), serde_json::json!([]));
    assert_eq!(roles_of("carol"), serde_json::json!(["dev"]));

    // The report: every item, decision, reviewer, time and reason.
    let csv = ops.run(p, &["review", "report", "1", "--format", "csv"], "");
    let csv = csv.ok();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("item,user,role,granted,last_used,stale,decision,reviewer"));
    assert!(csv.contains("\"carol\",\"dev\""), "{csv}");
    assert!(csv.contains(",certified,\"bob\","), "{csv}");
    assert!(csv.contains(",revoked,\"bob\","), "{csv}");
    assert!(csv.contains("\"left the team\""), "{csv}");
    assert!(csv.contains(",revoked_at_due,\"\","), "{csv}");
    let refused = alice.run(p, &["review", "report", "1"], "");
    assert_eq!(refused.code, 1);
    for kind in [
        "review.started",
        "review.certified",
        "review.revoked",
        "review.revoked_at_due",
        "review.report",
    ] {
        assert!(!p.events(kind).is_empty(), "{kind}");
    }
    assert_eq!(p.events("review.revoked")[0]["actor"], "user:bob");
}

#[test]
fn a_schedule_starts_campaigns_by_itself() {
    let b = Bastion::start_with(
        &[],
        Some("[review]\nevery = \"90d\"\non_due = \"report\"\n"),
    );
    let p = &b.postern;
    let mut started = Vec::new();
    for _ in 0..50 {
        started = p.events("review.started");
        if !started.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["actor"], "system:postern");
    assert_eq!(started[0]["details"]["items"], 1);
    // Not again until the period has passed; then once more. Its due date passes too,
    // and `report` leaves the grant in place.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(p.events("review.started").len(), 1);
    p.set_clock_ahead(Duration::from_secs(91 * 86_400));
    for _ in 0..50 {
        if p.events("review.started").len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(p.events("review.started").len(), 2);
    let closed = p.events("review.closed");
    assert_eq!(
        closed[0]["details"]["counts"]["unreviewed"], 1,
        "{closed:?}"
    );
    assert_eq!(b.ssh(&b.dest(), "echo still").ok().trim(), "still");
}

const CONSOLE: &str = r#"
ops, o_csrf = login("ops")
bob, b_csrf = login("bob")
alice, a_csrf = login("alice")
out["bob start"] = call("POST", "/reviews", {"csrf": b_csrf, "scope": "role=dev"}, bob)[0]
out["bad scope"] = call("POST", "/reviews", {"csrf": o_csrf, "scope": "user=x"}, ops)[0]
out["start"] = call("POST", "/reviews", {"csrf": o_csrf, "name": "Q1 <b>", "scope": "role=dev", "due": "7d"}, ops)[0]
page = call("GET", "/reviews", None, bob)[1]
out["bob items"] = page.count('tr class="item"')
ids = [int(x.split('"')[0]) for x in page.split('data-id="')[1:]]
out["no reason"] = call("POST", "/reviews/items/%d/revoke" % ids[0], {"csrf": b_csrf, "reason": ""}, bob)[0]
out["certify"] = call("POST", "/reviews/items/%d/certify" % ids[0], {"csrf": b_csrf, "reason": "ok"}, bob)[0]
out["revoke"] = call("POST", "/reviews/items/%d/revoke" % ids[1], {"csrf": b_csrf, "reason": "gone"}, bob)[0]
out["alice report"] = call("GET", "/reviews/1/report.csv", None, alice)[0]
status, csv = call("GET", "/reviews/1/report.csv", None, ops)
out["report"] = [status, csv]
out["ops page"] = "Q1 &lt;b&gt;" in call("GET", "/reviews", None, ops)[1]
print(json.dumps(out))
"#;

#[test]
fn the_console_starts_a_review_and_decides_its_items() {
    let b = Bastion::start();
    let p = &b.postern;
    reviewed_roles(p);
    for (name, role) in [("ops", "admins"), ("bob", "sre")] {
        p.cli(&["admin", "user", "add", name, "--role", role]).ok();
    }
    for name in ["ops", "bob", "alice"] {
        p.cli_stdin(
            &["admin", "user", "set-password", name, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        )
        .ok();
    }
    let r = crate::console::post_forms(p, PASSWORD, CONSOLE, &[]);
    assert_eq!(r["bob start"], 403, "{r}");
    assert_eq!(r["bad scope"], 400, "{r}");
    assert_eq!(r["start"], 303, "{r}");
    assert_eq!(r["bob items"], 2, "alice's and carol's grants of dev: {r}");
    assert_eq!(r["no reason"], 400, "{r}");
    assert_eq!(r["certify"], 303, "{r}");
    assert_eq!(r["revoke"], 303, "{r}");
    assert_eq!(r["alice report"], 403, "{r}");
    assert_eq!(r["report"][0], 200, "{r}");
    let csv = r["report"][1].as_str().unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.contains(",certified,\"bob\",") && csv.contains(",revoked,\"bob\","),
        "{csv}"
    );
    assert_eq!(r["ops page"], true, "{r}");
    assert_eq!(p.events("review.started")[0]["actor"], "user:ops");
}
