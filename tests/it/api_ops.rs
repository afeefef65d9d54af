//! The console's operations as JSON under `/v1/`: each console right sees and may do what
//! it does in the browser, through the bearer token of a login; every action is audited
//! with the caller; the OpenAPI document describes each endpoint.

use postern::client::https::{Client, ServerUrl, Trust};
use serde_json::{Value, json};

use crate::console::{console_roles, console_user};
use crate::ssh::Bastion;

const PASSWORD: &str = "api-ops-pass-7d41";

#[test]
fn each_console_right_sees_and_does_through_the_json_api_what_it_may() {
    let b = Bastion::start();
    let p = &b.postern;
    console_roles(p);
    console_user(p, "ada", Some("admins"), PASSWORD);
    console_user(p, "audrey", Some("auditor"), PASSWORD);
    console_user(p, "bob", Some("dev"), PASSWORD);
    console_user(p, "alice", None, PASSWORD);
    let out = b.ssh(&b.dest(), "echo api-ops");
    assert_eq!(out.ok(), "api-ops\n");
    let session = p.events("session.start")[0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();

    let pem = p.cli(&["admin", "tls-ca"]).ok().as_bytes().to_vec();
    let url = ServerUrl::parse(&format!("https://127.0.0.1:{}", p.api.port())).unwrap();
    let client = Client::new(url, &Trust::Ca(pem)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = |method: &str, path: &str, bearer: Option<&str>, body: Option<Value>| {
        let r = rt
            .block_on(client.call(method, path, bearer, body.as_ref()))
            .unwrap();
        (r.status, r.body)
    };
    let public_key = std::fs::read_to_string(format!("{}.pub", b.key.display())).unwrap();
    let token = |user: &str| {
        let (status, body) = call(
            "POST",
            "/v1/login",
            None,
            Some(json!({ "user": user, "password": PASSWORD, "public_key": public_key.trim() })),
        );
        assert_eq!(status, 200, "{user}: {body}");
        body["token"].as_str().unwrap().to_string()
    };
    let (alice, audrey, ada, bob) = (token("alice"), token("audrey"), token("ada"), token("bob"));

    // Sessions: one's own, or every one with the audit right; another's reads as none.
    let ids = |body: &Value| -> Vec<String> {
        body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, body) = call("GET", "/v1/sessions", Some(&alice), None);
    assert_eq!((status, ids(&body)), (200, vec![session.clone()]), "{body}");
    assert_eq!(body["sessions"][0]["protocol"], "ssh");
    assert_eq!(body["sessions"][0]["recordings"][0]["channel"], 0);
    assert!(body["sessions"][0]["recordings"][0].get("path").is_none());
    let (_, body) = call("GET", "/v1/sessions?user=alice", Some(&bob), None);
    assert_eq!(ids(&body), Vec::<String>::new(), "{body}");
    let (_, body) = call("GET", "/v1/sessions?protocol=ssh", Some(&audrey), None);
    assert_eq!(ids(&body), vec![session.clone()], "{body}");
    let one = format!("/v1/sessions/{session}");
    let (status, body) = call("GET", &one, Some(&alice), None);
    assert_eq!((status, body["user"].as_str()), (200, Some("alice")));
    let (status, body) = call("GET", &one, Some(&bob), None);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, _) = call("GET", &one[..one.len() - 4], Some(&audrey), None);
    assert_eq!(status, 404);
    let (status, body) = call("GET", "/v1/sessions", None, None);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("not_logged_in"))
    );

    // The audit log: auditors only.
    let (status, body) = call("GET", "/v1/audit?type=session", Some(&alice), None);
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = call("GET", "/v1/audit?type=session.start", Some(&audrey), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["session_id"], session.as_str());
    let (_, body) = call("GET", "/v1/audit?limit=2", Some(&audrey), None);
    assert_eq!(body["events"].as_array().unwrap().len(), 2);

    // The access check, lock and unlock, kill: admins only.
    let check = json!({ "user": "alice", "target": "t1", "login": b.login });
    let (status, _) = call(
        "POST",
        "/v1/access/check",
        Some(&audrey),
        Some(check.clone()),
    );
    assert_eq!(status, 403);
    let (status, body) = call("POST", "/v1/access/check", Some(&ada), Some(check));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "allow");
    assert_eq!(body["because"], "role `dev` allow rule #1 (env=test)");
    let no = json!({ "user": "alice", "target": "t1", "login": "nobody" });
    let (_, body) = call("POST", "/v1/access/check", Some(&ada), Some(no));
    assert_eq!(
        (body["decision"].as_str(), body["because"].as_str()),
        (Some("deny"), Some("no role allows it (default deny)"))
    );
    let (status, body) = call(
        "POST",
        "/v1/access/check",
        Some(&ada),
        Some(json!({ "user": "alice", "target": "t1" })),
    );
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    let (status, _) = call("POST", "/v1/users/bob/lock", Some(&audrey), None);
    assert_eq!(status, 403);
    let (status, body) = call("POST", "/v1/users/bob/lock", Some(&ada), None);
    assert_eq!((status, body["status"].as_str()), (200, Some("locked")));
    // A locked user's login no longer works.
    let (status, _) = call("GET", "/v1/whoami", Some(&bob), None);
    assert_eq!(status, 403);
    let (_, body) = call("POST", "/v1/users/bob/unlock", Some(&ada), None);
    assert_eq!(body["status"], "active");
    let (status, body) = call("POST", "/v1/users/nobody-here/lock", Some(&ada), None);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let kill = format!("/v1/sessions/{session}/kill");
    let (status, _) = call("POST", &kill, Some(&audrey), None);
    assert_eq!(status, 403);
    let (status, body) = call("POST", &kill, Some(&ada), None);
    assert_eq!((status, &body["requested"]), (200, &json!(false)), "{body}");

    let changes: Vec<Value> = p
        .events("user.update")
        .into_iter()
        .filter(|e| e["actor"] == "user:ada")
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    let checks = p.events("access.check");
    assert!(
        checks
            .iter()
            .all(|e| e["actor"] == "user:ada" && e["details"]["via"] == "api")
    );
    assert_eq!(checks.len(), 2, "{checks:?}");

    // The targets one may reach, with what (`postern ls` reads the same endpoint).
    let (status, body) = call("GET", "/v1/targets", Some(&alice), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["targets"][0]["name"], "t1");
    assert_eq!(body["targets"][0]["logins"], json!([b.login]));
    let (_, body) = call("GET", "/v1/targets", Some(&audrey), None);
    assert_eq!(body["targets"], json!([]), "{body}");
    let dev = crate::login::Dev::new();
    dev.login(p, &[], PASSWORD).ok();
    let ls = dev.run(p, &["ls"], "");
    let line = format!("ssh -p {} {}@t1@127.0.0.1", p.ssh.port(), b.login);
    assert!(ls.ok().contains(&line), "{ls:?}");
    assert!(ls.ok().contains(&format!("logins {}", b.login)), "{ls:?}");
    assert!(ls.ok().contains("your login is valid for"), "{ls:?}");

    // The document: every endpoint, the bearer scheme.
    let (status, doc) = call("GET", "/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for path in [
        "/v1/login",
        "/v1/whoami",
        "/v1/db/login",
        "/v1/targets",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/kill",
        "/v1/audit",
        "/v1/access/check",
        "/v1/users/{name}/lock",
        "/v1/users/{name}/unlock",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
