//! The web console in a real browser (Debian's Chromium, driven through ChromeDriver by
//! selenium): login, who sees what, a recording played by asciinema-player, logout; and
//! the HTTP-level guarantees (cookie flags, Content-Security-Policy, CSRF, cross-site
//! logins), with the audit events each leaves.

use std::process::{Command, Stdio};

use crate::harness::Out;
use crate::harness::postern::Postern;
use crate::ssh::Bastion;

const PASSWORD: &str = "console-pass-81f3";

/// The console's two rights as roles: `admins` (admin) and `auditor` (audit).
pub fn console_roles(p: &Postern) {
    p.cli(&["admin", "role", "add", "admins", "--console", "admin"])
        .ok();
    p.cli(&["admin", "role", "add", "auditor", "--console", "audit"])
        .ok();
}

/// Adds `user` with `role` (none: the user exists already) and gives them `password`.
pub fn console_user(p: &Postern, user: &str, role: Option<&str>, password: &str) {
    if let Some(role) = role {
        p.cli(&["admin", "user", "add", user, "--role", role]).ok();
    }
    p.cli_stdin(
        &["admin", "user", "set-password", user, "--password-stdin"],
        &format!("{password}\n"),
    )
    .ok();
}

/// The start of a Python script that posts the console's forms as a browser would:
/// `base` and `password` from its arguments, `call(method, path, form, cookie)` →
/// `(status, body)` without following redirects, and `login(user)` → `(cookie, csrf)`.
pub const PY_FORMS: &str = r#"
import json, ssl, sys, urllib.request, urllib.parse, urllib.error
base, password = sys.argv[1:3]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k): return None
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect)
def call(method, path, form=None, cookie=None):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Cookie": cookie} if cookie else {})
    try:
        r = opener.open(req, timeout=15)
    except urllib.error.HTTPError as e:
        r = e
    return r.status, r.read().decode(errors="replace")
def login(user):
    req = urllib.request.Request(base + "/login", method="POST", data=urllib.parse.urlencode({"user": user, "password": password}).encode())
    try:
        r = opener.open(req, timeout=15)
    except urllib.error.HTTPError as e:
        r = e
    cookie = r.headers.get("set-cookie", "").split(";")[0]
    page = call("GET", "/", None, cookie)[1]
    return cookie, page.split('name="csrf" value="')[1].split('"')[0]
out = {}
"#;

/// Runs `PY_FORMS` then `body` against `p`'s console, with `args` after the base URL and
/// the password; the JSON it prints.
pub fn post_forms(p: &Postern, password: &str, body: &str, args: &[&str]) -> serde_json::Value {
    python(p, password, &format!("{PY_FORMS}{body}"), args)
}

/// Runs a Python `script` given the console's base URL, `password` and `args`; the JSON
/// it prints.
pub fn python(p: &Postern, password: &str, script: &str, args: &[&str]) -> serde_json::Value {
    let path = p.write("console_script.py", script);
    let out: Out = Command::new("python3")
        .arg(path)
        .arg(format!("https://127.0.0.1:{}", p.api.port()))
        .arg(password)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    serde_json::from_str(out.ok().trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// Runs `script` (Python, with selenium) given the console's base URL and the password.
fn browser(b: &Bastion, script: &str, args: &[&str]) -> Out {
    let path = b.postern.write("console_test.py", script);
    Command::new("python3")
        .arg(path)
        .arg(format!("https://127.0.0.1:{}", b.postern.api.port()))
        .arg(PASSWORD)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

const BROWSER: &str = r#"
import json, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, password, own, other_url, shots = sys.argv[1:6]
import os
os.makedirs(shots, exist_ok=True)
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors", "--disable-gpu"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
d.set_page_load_timeout(30)
wait = WebDriverWait(d, 20)
out = {"console_errors": []}
def shot(name):
    # Every page's screenshot; any JavaScript or loading error on it fails the test.
    d.save_screenshot(os.path.join(shots, name + ".png"))
    out["console_errors"] += [name + ": " + e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]
def refused_page():
    # A page refused on purpose (401, 404): its status is logged as an error; not ours.
    d.get_log("browser")
try:
    def login(user, pw):
        d.get(base + "/login")
        d.find_element(By.NAME, "user").send_keys(user)
        d.find_element(By.NAME, "password").send_keys(pw)
        d.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait.until(lambda d: not d.current_url.endswith("/login") or d.find_elements(By.CSS_SELECTOR, ".error"))

    def logout():
        d.find_element(By.CSS_SELECTOR, "form.logout button").click()
        wait.until(lambda d: d.current_url.endswith("/login"))

    # Not logged in: every page leads to the login form.
    d.get(base + "/sessions")
    out["anonymous_url"] = d.current_url
    shot("login")
    login("alice", "wrong")
    out["wrong_password"] = d.find_element(By.CSS_SELECTOR, ".error").text
    refused_page()

    # alice, a developer: her own session, her targets with the command to use.
    login("alice", password)
    out["alice_dashboard"] = d.find_element(By.TAG_NAME, "main").text
    shot("developer-targets")
    d.get(base + "/sessions")
    shot("sessions")
    rows = d.find_elements(By.CSS_SELECTOR, "tr.session")
    out["alice_rows"] = [r.get_attribute("data-id") for r in rows]
    rows[0].find_element(By.TAG_NAME, "a").click()
    play = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".player .ap-playback-button"))
    play.click()
    def shown(d):
        t = d.find_element(By.CSS_SELECTOR, ".player").text
        return t if "console-marker" in t else False
    try:
        out["played"] = wait.until(shown)
    except Exception:
        url = d.find_element(By.CSS_SELECTOR, ".player").get_attribute("data-cast")
        got = d.execute_async_script("const cb = arguments[arguments.length-1]; fetch(arguments[0]).then(r => r.text().then(t => cb([r.status, t.slice(0, 400)]))).catch(e => cb(String(e)))", url)
        print(url, got, d.get_log("browser"), file=sys.stderr)
        d.save_screenshot("/tmp/console-shot.png")
        raise
    shot("session-replay")
    # Her own recordings, searched: the hit opens the player at its time.
    d.get(base + "/search?q=console-marker")
    hits = d.find_elements(By.CSS_SELECTOR, "tr.hit")
    out["alice_hits"] = [h.text for h in hits]
    hits[0].find_element(By.TAG_NAME, "a").click()
    out["hit_start"] = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".player[data-start]")).get_attribute("data-start")
    shot("search-hit")
    d.get(base + other_url)
    out["alice_other"] = d.find_element(By.TAG_NAME, "main").text
    refused_page()
    logout()
    d.get(base + "/")
    out["after_logout_url"] = d.current_url

    # bob, another developer: none of alice's sessions, not even by their address.
    login("bob", password)
    d.get(base + "/sessions")
    out["bob_rows"] = [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "tr.session")]
    d.get(base + "/sessions/" + own)
    out["bob_on_alice_session"] = d.find_element(By.TAG_NAME, "main").text
    refused_page()
    d.get(base + "/search?q=console-marker")
    out["bob_search"] = d.find_element(By.TAG_NAME, "main").text
    logout()

    # audrey, an auditor: every session, and the day's figures.
    login("audrey", password)
    out["audrey_dashboard"] = d.find_element(By.TAG_NAME, "main").text
    shot("auditor-dashboard")
    d.get(base + "/sessions")
    out["audrey_rows"] = [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "tr.session")]
finally:
    d.quit()
print(json.dumps(out))
"#;

/// Plain HTTPS requests: what a browser is told about cookies and scripts, and what the
/// console does with forged forms.
const HTTP: &str = r#"
import json, ssl, sys, urllib.request, urllib.parse, urllib.error
base, password = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k): return None
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect)
def call(method, path, form=None, headers={}):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        r = opener.open(req, timeout=15)
    except urllib.error.HTTPError as e:
        r = e
    return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode(errors="replace")
out = {}
s, h, _ = call("GET", "/login")
out["csp"] = h.get("content-security-policy", "")
out["frame"] = h.get("x-frame-options", "")
s, h, _ = call("POST", "/login", {"user": "alice", "password": password})
out["login_status"] = s
out["cookie"] = h.get("set-cookie", "")
cookie = out["cookie"].split(";")[0]
s, h, body = call("POST", "/logout", {"csrf": "forged"}, {"Cookie": cookie})
out["forged_logout"] = [s, "security token" in body]
s, h, body = call("GET", "/", None, {"Cookie": cookie})
out["still_logged_in"] = s
s, h, body = call("POST", "/login", {"user": "alice", "password": password}, {"Origin": "https://evil.example"})
out["cross_site_login"] = [s, "set-cookie" in h]
s, h, body = call("GET", "/sessions/../../etc/passwd", None, {"Cookie": cookie})
out["traversal"] = s
print(json.dumps(out))
"#;

#[test]
fn the_console_shows_each_viewer_what_they_may_see_and_plays_recordings() {
    let b = Bastion::start();
    let p = &b.postern;
    console_roles(p);
    console_user(p, "audrey", Some("auditor"), PASSWORD);
    console_user(p, "bob", Some("dev"), PASSWORD);
    console_user(p, "alice", None, PASSWORD);
    // alice's terminal session, from a terminal 100 columns wide (util-linux `script`).
    let ssh = b
        .ssh_command("ssh")
        .args(["-tt", "-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("'echo console-marker-$((4700 + 11))'")
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out: Out = Command::new("script")
        .args([
            "-qec",
            &format!("stty cols 100 rows 30; ssh {ssh}"),
            "/dev/null",
        ])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert!(out.stdout.contains("console-marker-4711"), "{out:?}");
    let sessions: serde_json::Value =
        serde_json::from_str(b.postern.cli(&["sessions", "list", "--json"]).ok()).unwrap();
    let own = sessions[0]["id"].as_str().unwrap().to_string();

    let out = browser(
        &b,
        BROWSER,
        &[
            &own,
            "/sessions/00000000-0000-4000-8000-000000000000",
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/console-screenshots"),
        ],
    );
    let r: serde_json::Value = serde_json::from_str(out.ok().trim()).unwrap();
    assert!(
        r["anonymous_url"].as_str().unwrap().ends_with("/login"),
        "{r}"
    );
    assert_eq!(r["wrong_password"], "wrong user name or password");
    let dash = r["alice_dashboard"].as_str().unwrap();
    assert!(
        dash.contains(&format!(
            "ssh -p {} {}@t1@127.0.0.1",
            b.postern.ssh.port(),
            b.login
        )),
        "{dash}"
    );
    assert_eq!(r["alice_rows"], serde_json::json!([own]));
    assert!(
        r["played"]
            .as_str()
            .unwrap()
            .contains("console-marker-4711"),
        "{r}"
    );
    assert_eq!(r["console_errors"], serde_json::json!([]), "{r}");
    assert!(
        r["alice_other"]
            .as_str()
            .unwrap()
            .contains("No such session"),
        "{r}"
    );
    assert!(
        r["after_logout_url"].as_str().unwrap().ends_with("/login"),
        "{r}"
    );
    assert_eq!(r["bob_rows"], serde_json::json!([]));
    // Search: alice finds her session's text (typed and printed), bob finds nothing.
    let hits = r["alice_hits"].as_array().unwrap();
    assert!(!hits.is_empty(), "{r}");
    assert!(
        hits.iter()
            .all(|h| h.as_str().unwrap().contains("console-marker")),
        "{r}"
    );
    assert!(
        r["hit_start"].as_str().unwrap().parse::<f64>().is_ok(),
        "{r}"
    );
    assert!(
        r["bob_search"]
            .as_str()
            .unwrap()
            .contains("No recording contains “console-marker”"),
        "{r}"
    );
    // Another user's session reads exactly as one that does not exist.
    assert_eq!(r["bob_on_alice_session"], r["alice_other"]);
    assert_eq!(r["audrey_rows"], serde_json::json!([own]));
    assert!(
        r["audrey_dashboard"]
            .as_str()
            .unwrap()
            .contains("Failed logins"),
        "{r}"
    );

    // Each console login, logout and recording delivery is in the audit log.
    let logins = b.postern.events("auth.login");
    let console_logins: Vec<&str> = logins
        .iter()
        .filter(|e| e["details"]["via"] == "console")
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(console_logins, ["user:alice", "user:bob", "user:audrey"]);
    let views = b.postern.events("recording.view");
    assert!(
        views
            .iter()
            .any(|e| e["actor"] == "user:alice" && e["details"]["session"] == own.as_str()),
        "{views:?}"
    );
    assert_eq!(b.postern.events("auth.logout").len(), 2);
    let failures = b.postern.events("auth.failure");
    assert!(
        failures
            .iter()
            .any(|e| e["details"]["reason"] == "wrong password")
    );

    // Plain HTTP: cookie flags, the policy, forged and cross-site forms.
    let out = browser(&b, HTTP, &[]);
    let r: serde_json::Value = serde_json::from_str(out.ok().trim()).unwrap();
    let csp = r["csp"].as_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r["frame"], "DENY");
    assert_eq!(r["login_status"], 303);
    let cookie = r["cookie"].as_str().unwrap();
    for flag in [
        "__Host-postern=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert_eq!(r["forged_logout"], serde_json::json!([403, true]));
    assert_eq!(r["still_logged_in"], 200);
    assert_eq!(r["cross_site_login"], serde_json::json!([403, false]));
    assert_eq!(r["traversal"], 404);
}
