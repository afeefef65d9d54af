//! The console's admin side in a real browser: an admin logs in with a one-time code,
//! sees a live `ssh` session appear on the dashboard, watches what its user types, ends
//! it with Kill; runs an access check, locks and unlocks a user, follows the audit log and
//! verifies the chain. A screenshot of each page lands in `target/console-screenshots/`;
//! a JavaScript error on any page fails the test. Then the HTTP-level refusals: who may
//! not kill, lock, read the audit log or see the admin pages.

use std::process::{Command, Stdio};

use crate::console::{console_roles, console_user};
use crate::harness::Out;
use crate::ssh::Bastion;

const PASSWORD: &str = "console-admin-pass-5c2e";

const BROWSER: &str = r#"
import base64, hashlib, hmac, json, os, struct, subprocess, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from selenium.common.exceptions import StaleElementReferenceException

base, password, secret, shots, login_name = sys.argv[1:6]
ssh_cmd = json.loads(sys.argv[6])
os.makedirs(shots, exist_ok=True)

def totp(secret):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
    o = mac[-1] & 15
    return "%06d" % ((struct.unpack(">I", mac[o:o + 4])[0] & 0x7fffffff) % 1000000)

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors", "--disable-gpu", "--window-size=1280,1000"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
d.set_page_load_timeout(30)
wait = WebDriverWait(d, 20)
out = {"js_errors": []}
ssh = None

def shot(name):
    d.save_screenshot(os.path.join(shots, name + ".png"))
    out["js_errors"] += [name + ": " + e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]

def main_text():
    return d.find_element(By.TAG_NAME, "main").text

def status_is(want):
    # The page reloads after the form posts: an element of the old page goes stale.
    def check(d):
        try:
            t = d.find_element(By.CSS_SELECTOR, "dd.status").text
        except StaleElementReferenceException:
            return False
        return t if t == want else False
    return check

try:
    # ada, an admin enrolled in one-time codes.
    d.get(base + "/login")
    d.find_element(By.NAME, "user").send_keys("ada")
    d.find_element(By.NAME, "password").send_keys(password)
    d.find_element(By.NAME, "totp").send_keys(totp(secret))
    d.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait.until(lambda d: not d.current_url.endswith("/login"))
    shot("dashboard")

    # A developer opens an interactive ssh session (a terminal from util-linux `script`).
    ssh = subprocess.Popen(["script", "-qfec", "stty cols 100 rows 30; " + " ".join(ssh_cmd), "/dev/null"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=dict(os.environ, TERM="xterm-256color"))
    opened = time.time()
    # The dashboard shows it among the live sessions, without a reload.
    row = WebDriverWait(d, 15, poll_frequency=0.1).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "section.live tr.session"))
    out["dashboard_latency_s"] = round(time.time() - opened, 2)
    out["live_rows"] = len(row)
    out["time_left"] = row[0].find_element(By.CSS_SELECTOR, "td.left").text
    shot("dashboard-live")
    row[0].find_element(By.TAG_NAME, "a").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".player.watching .ap-term"))
    shot("session-live")
    # What the developer types appears in the live player.
    time.sleep(1)
    ssh.stdin.write(b"echo live-watch-$((40 + 2))\n"); ssh.stdin.flush()
    typed = time.time()
    out["watched"] = WebDriverWait(d, 15, poll_frequency=0.1).until(
        lambda d: (lambda t: t if "live-watch-42" in t else False)(d.find_element(By.CSS_SELECTOR, ".player").text))
    out["watch_latency_s"] = round(time.time() - typed, 2)
    shot("session-watched")

    # Kill: the client is disconnected and the page says how the session ended.
    d.find_element(By.CSS_SELECTOR, "form.kill button").click()
    try:
        ssh.wait(timeout=15)
    except subprocess.TimeoutExpired:
        ssh.kill()
    out["ssh_exit"] = ssh.returncode
    out["ssh_output"] = ssh.stdout.read().decode(errors="replace")[-300:]
    def ended(d):
        d.refresh()
        t = main_text()
        return t if "killed" in t else False
    out["killed_page"] = WebDriverWait(d, 15, poll_frequency=0.5).until(ended)
    shot("session-killed")

    # The access check, allowed and denied, with the rule that decided.
    d.get(base + "/access")
    Select(d.find_element(By.NAME, "user")).select_by_value("alice")
    Select(d.find_element(By.NAME, "target")).select_by_value("t1")
    d.find_element(By.NAME, "login").send_keys(login_name)
    d.find_element(By.CSS_SELECTOR, "form.access button").click()
    out["allow"] = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".decision")).text
    shot("access-allow")
    login = d.find_element(By.NAME, "login"); login.clear(); login.send_keys("nobody")
    d.find_element(By.CSS_SELECTOR, "form.access button").click()
    out["deny"] = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".decision.deny")).text

    # Users, roles, targets; lock bob, then unlock him.
    d.get(base + "/users"); shot("users")
    out["users"] = main_text()
    d.get(base + "/roles"); shot("roles")
    out["roles"] = main_text()
    d.get(base + "/targets"); shot("targets")
    out["targets"] = main_text()
    d.find_element(By.LINK_TEXT, "t1").click()
    out["target"] = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "dl.facts")).text
    shot("target")
    d.get(base + "/users/bob")
    d.find_element(By.CSS_SELECTOR, "form.lock button").click()
    out["locked"] = wait.until(status_is("locked"))
    shot("user-locked")
    d.find_element(By.CSS_SELECTOR, "form.lock button").click()
    out["unlocked"] = wait.until(status_is("active"))

    # The audit log, followed: a failed login elsewhere appears without a reload.
    d.get(base + "/audit")
    shot("audit")
    out["audit"] = main_text()
    d.find_element(By.ID, "follow").click()
    import ssl, urllib.request, urllib.parse
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    try:
        urllib.request.urlopen(urllib.request.Request(base + "/login", method="POST",
            data=urllib.parse.urlencode({"user": "bob", "password": "not-it"}).encode()), context=ctx, timeout=15)
    except Exception:
        pass
    out["followed"] = WebDriverWait(d, 15, poll_frequency=0.2).until(
        lambda d: (lambda t: t if "auth.failure" in t else False)(d.find_element(By.CSS_SELECTOR, "table.audit tbody").text))
    shot("audit-followed")

    # Verify, in the background, with its result on the page and the dashboard.
    d.get(base + "/audit/verify")
    d.find_element(By.CSS_SELECTOR, "form.verify button").click()
    out["verify"] = WebDriverWait(d, 60, poll_frequency=0.5).until(
        lambda d: d.find_elements(By.ID, "verify-result"))[0].text
    shot("verify")
    d.get(base + "/")
    out["dashboard_verify"] = d.find_element(By.CSS_SELECTOR, "p.verify").text
except Exception:
    d.save_screenshot(os.path.join(shots, "failure.png"))
    print(d.current_url, d.get_log("browser"), d.find_element(By.TAG_NAME, "main").get_attribute("innerHTML")[:3000], file=sys.stderr)
    raise
finally:
    if ssh and ssh.poll() is None:
        ssh.kill()
    d.quit()
print(json.dumps(out))
"#;

/// Plain HTTPS: each right's refusals.
const HTTP: &str = r#"
session, export_path = sys.argv[3:5]
# Every page and file, and every form, without a login: to the login page.
s = "/sessions/" + session
for path in ["/", "/?part=live", "/sessions", s, s + "/recording/0", s + "/live/0", "/search?q=echo",
             "/users", "/users/bob", "/roles", "/roles/dev", "/targets", "/targets/t1", "/access",
             "/audit", "/audit/events", "/audit/verify", "/audit/export"]:
    out["anonymous GET " + path] = call("GET", path)[0]
for path in [s + "/kill", "/users/bob/lock", "/users/bob/unlock", "/audit/verify", "/logout"]:
    out["anonymous POST " + path] = call("POST", path, {"csrf": "x"})[0]
alice, alice_csrf = login("alice")
audrey, audrey_csrf = login("audrey")
for who, cookie in [("alice", alice), ("audrey", audrey)]:
    for path in ["/users", "/users/bob", "/roles", "/roles/dev", "/targets", "/targets/t1", "/access?user=alice&target=t1&login=x"]:
        out[who + " " + path] = call("GET", path, None, cookie)[0]
out["alice /audit"] = call("GET", "/audit", None, alice)[0]
out["alice /audit/events"] = call("GET", "/audit/events", None, alice)[0]
out["audrey /audit"] = call("GET", "/audit", None, audrey)[0]
out["audrey kill"] = call("POST", "/sessions/" + session + "/kill", {"csrf": audrey_csrf}, audrey)[0]
out["audrey lock"] = call("POST", "/users/bob/lock", {"csrf": audrey_csrf}, audrey)[0]
out["audrey verify without csrf"] = call("POST", "/audit/verify", {"csrf": "forged"}, audrey)[0]
out["alice export"] = call("GET", "/audit/export", None, alice)[0]
status, body = call("GET", "/audit/export?format=jsonl", None, audrey)
out["audrey export"] = status
open(export_path, "w").write(body)
out["audrey csv"] = call("GET", "/audit/export?format=csv", None, audrey)[1].splitlines()[0]
print(json.dumps(out))
"#;

fn run(b: &Bastion, script: &str, args: &[&str]) -> serde_json::Value {
    crate::console::python(&b.postern, PASSWORD, script, args)
}

#[test]
fn an_admin_watches_a_live_session_ends_it_and_checks_access_in_the_browser() {
    let b = Bastion::start();
    let p = &b.postern;
    console_roles(p);
    console_user(p, "ada", Some("admins"), PASSWORD);
    console_user(p, "audrey", Some("auditor"), PASSWORD);
    console_user(p, "bob", Some("dev"), PASSWORD);
    console_user(p, "alice", None, PASSWORD);
    let enrolled = p.cli(&["admin", "user", "totp", "ada"]);
    let secret = enrolled
        .ok()
        .split("secret=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .unwrap()
        .to_string();
    let ssh: Vec<String> = b
        .ssh_command("ssh")
        .args(["-tt", "-p", &p.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut ssh = ssh;
    ssh.insert(0, "ssh".into());
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/target/console-screenshots");
    let r = run(
        &b,
        BROWSER,
        &[
            &secret,
            shots,
            &b.login,
            &serde_json::to_string(&ssh).unwrap(),
        ],
    );
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    assert_eq!(r["js_errors"], serde_json::json!([]), "{r}");
    assert_eq!(r["live_rows"], 1, "{r}");
    // The role's 8h session limit, minus the seconds since it started.
    assert!(s("time_left").starts_with("7h 59m"), "{r}");
    assert!(s("watched").contains("live-watch-42"), "{r}");
    assert_ne!(r["ssh_exit"], 0, "{r}");
    assert!(s("killed_page").contains("killed"), "{r}");
    assert!(
        s("allow").starts_with(&format!("ALLOW alice → ssh login `{}` on t1", b.login)),
        "{r}"
    );
    assert!(
        s("allow").contains("Allowed by role `dev` allow rule #1"),
        "{r}"
    );
    assert!(
        s("deny").starts_with("DENY alice → ssh login `nobody` on t1"),
        "{r}"
    );
    assert!(
        s("users").contains("ada") && s("users").contains("bob"),
        "{r}"
    );
    assert!(
        s("roles").contains("admins") && s("roles").contains("dev"),
        "{r}"
    );
    assert!(s("targets").contains("t1"), "{r}");
    assert!(s("target").contains("Reached through roles\ndev"), "{r}");
    assert!(
        s("target").contains("alice") && !s("target").contains("audrey"),
        "{r}"
    );
    assert_eq!(s("locked"), "locked", "{r}");
    assert_eq!(s("unlocked"), "active", "{r}");
    assert!(s("audit").contains("session.kill"), "{r}");
    assert!(s("followed").contains("auth.failure"), "{r}");
    assert!(s("verify").starts_with("OK: "), "{r}");
    assert!(s("dashboard_verify").contains("OK: "), "{r}");
    for page in [
        "dashboard-live",
        "session-watched",
        "access-allow",
        "audit",
        "verify",
    ] {
        assert!(
            std::path::Path::new(shots)
                .join(format!("{page}.png"))
                .exists(),
            "{page}"
        );
    }

    // What the store says: the kill by ada through the console, the session ended by it,
    // the lock and unlock as policy changes by ada, the live view and the verification.
    let kills = p.events("session.kill");
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0]["actor"], "user:ada");
    assert_eq!(kills[0]["details"]["via"], "console");
    let session = kills[0]["details"]["session"].as_str().unwrap().to_string();
    let ends = p.events("session.end");
    assert!(
        ends.iter()
            .any(|e| e["session_id"] == session.as_str() && e["details"]["reason"] == "killed"),
        "{ends:?}"
    );
    let status: Vec<_> = p
        .events("user.update")
        .into_iter()
        .filter(|e| e["actor"] == "user:ada")
        .collect();
    assert_eq!(status.len(), 2, "{status:?}");
    assert!(
        p.events("recording.view")
            .iter()
            .any(|e| e["actor"] == "user:ada" && e["details"]["live"] == true)
    );
    assert!(
        p.events("access.check")
            .iter()
            .any(|e| e["actor"] == "user:ada" && e["result"] == "allow")
    );
    let verified = p.events("audit.verify");
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_eq!(verified[0]["result"], "success");

    // Over HTTP: what each right may not do.
    let export = p.write("console-export.jsonl", "");
    let r = crate::console::post_forms(
        &b.postern,
        PASSWORD,
        HTTP,
        &[&session, export.to_str().unwrap()],
    );
    for path in ["/users", "/access", "/audit", "/audit/events"] {
        assert_eq!(r[format!("anonymous GET {path}")], 303, "{path}: {r}");
    }
    for (k, v) in r.as_object().unwrap() {
        assert!(!k.starts_with("anonymous") || v == 303, "{k}: {v}");
    }
    for who in ["alice", "audrey"] {
        for path in [
            "/users",
            "/users/bob",
            "/roles",
            "/roles/dev",
            "/targets",
            "/targets/t1",
        ] {
            assert_eq!(r[format!("{who} {path}")], 403, "{who} {path}: {r}");
        }
        assert_eq!(
            r[format!("{who} /access?user=alice&target=t1&login=x")],
            403
        );
    }
    assert_eq!(r["alice /audit"], 403, "{r}");
    assert_eq!(r["alice /audit/events"], 403, "{r}");
    assert_eq!(r["audrey /audit"], 200, "{r}");
    assert_eq!(r["audrey kill"], 403, "{r}");
    assert_eq!(r["audrey lock"], 403, "{r}");
    assert_eq!(r["audrey verify without csrf"], 403, "{r}");
    // The download is the signed export `audit verify --file` checks.
    assert_eq!(r["alice export"], 403, "{r}");
    assert_eq!(r["audrey export"], 200, "{r}");
    let verified = p.cli(&["audit", "verify", "--file", export.to_str().unwrap()]);
    assert!(verified.ok().starts_with("OK: "), "{verified:?}");
    assert!(
        r["audrey csv"]
            .as_str()
            .unwrap()
            .starts_with("seq,id,time,type"),
        "{r}"
    );
    let exports = p.events("audit.export");
    assert!(
        exports
            .iter()
            .any(|e| e["actor"] == "user:audrey" && e["details"]["via"] == "console"),
        "{exports:?}"
    );
}

const TRANSCRIPT: &str = r#"
import json, os, sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, password, shots, alice_password = sys.argv[1:5]
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors", "--disable-gpu", "--window-size=1280,1000"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
wait = WebDriverWait(d, 20)
out = {}
def login(user, pw):
    d.get(base + "/login")
    d.find_element(By.NAME, "user").send_keys(user)
    d.find_element(By.NAME, "password").send_keys(pw)
    d.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait.until(lambda d: not d.current_url.endswith("/login"))
try:
    # alice, the developer: her valid credentials and the time each has left.
    login("alice", alice_password)
    out["credentials"] = d.find_element(By.CSS_SELECTOR, "section.credentials").text
    d.save_screenshot(os.path.join(shots, "developer-dashboard.png"))
    d.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait.until(lambda d: d.current_url.endswith("/login"))
    login("audrey", password)
    # Full-text search finds the statement; its link opens the transcript filtered to it.
    d.get(base + "/search")
    d.find_element(By.NAME, "q").send_keys("pg-console-")
    d.find_element(By.CSS_SELECTOR, "form.filters button").click()
    hits = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.hit"))
    out["hits"] = [h.text for h in hits]
    d.save_screenshot(os.path.join(shots, "search.png"))
    hits[0].find_element(By.TAG_NAME, "a").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.transcript"))
    out["shown"] = [r.text for r in d.find_elements(By.CSS_SELECTOR, "table.transcript tbody tr") if r.is_displayed()]
    out["hidden"] = len([r for r in d.find_elements(By.CSS_SELECTOR, "table.transcript tbody tr") if not r.is_displayed()])
    d.save_screenshot(os.path.join(shots, "transcript.png"))
    out["js_errors"] = [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]
finally:
    d.quit()
print(json.dumps(out))
"#;

#[test]
fn an_auditor_finds_a_statement_by_search_and_in_its_transcript() {
    let b = crate::pg::PgBastion::start();
    let p = &b.postern;
    console_roles(p);
    console_user(p, "audrey", Some("auditor"), PASSWORD);
    let out = b.psql(&[
        "-c",
        "select 1",
        "-c",
        "select 'pg-console-' || 6 * 7",
        "-c",
        "select 2",
    ]);
    assert_eq!(out.ok(), "1\npg-console-42\n2\n");
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/target/console-screenshots");
    let path = p.write("console_transcript_test.py", TRANSCRIPT);
    let out: Out = Command::new("python3")
        .arg(path)
        .arg(format!("https://127.0.0.1:{}", p.api.port()))
        .arg(PASSWORD)
        .arg(shots)
        .arg(crate::login::PASSWORD)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    let r: serde_json::Value = serde_json::from_str(out.ok().trim()).unwrap();
    assert_eq!(r["js_errors"], serde_json::json!([]), "{r}");
    let creds = r["credentials"].as_str().unwrap();
    assert!(creds.contains("SSH certificate"), "{creds}");
    assert!(
        creds.contains("Database token pg1/features as app"),
        "{creds}"
    );
    let hits = r["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{r}");
    assert!(
        hits[0]
            .as_str()
            .unwrap()
            .contains("select 'pg-console-' || 6 * 7"),
        "{r}"
    );
    let shown = r["shown"].as_array().unwrap();
    assert_eq!(shown.len(), 1, "{r}");
    assert!(
        shown[0]
            .as_str()
            .unwrap()
            .contains("select 'pg-console-' || 6 * 7"),
        "{r}"
    );
    assert!(shown[0].as_str().unwrap().contains("SELECT 1"), "{r}");
    assert!(r["hidden"].as_u64().unwrap() >= 2, "{r}");
    let searches = p.events("recording.search");
    assert_eq!(searches.len(), 1, "{searches:?}");
    assert_eq!(searches[0]["actor"], "user:audrey");
    assert_eq!(searches[0]["details"]["hits"], 1);
}

const PAGE: &str = r#"
import ssl, sys, urllib.request, urllib.parse
base, password, path = sys.argv[1:4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k): return None
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect)
req = urllib.request.Request(base + "/login", method="POST", data=urllib.parse.urlencode({"user": "audrey", "password": password}).encode())
try:
    r = opener.open(req, timeout=15)
except urllib.error.HTTPError as e:
    r = e
cookie = r.headers.get("set-cookie", "").split(";")[0]
print(opener.open(urllib.request.Request(base + path, headers={"Cookie": cookie}), timeout=15).read().decode())
"#;

#[test]
fn an_sftp_channel_reads_as_its_transfer_log() {
    let b = Bastion::start();
    let p = &b.postern;
    console_roles(p);
    console_user(p, "audrey", Some("auditor"), PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, vec![42u8; 70_000]).unwrap();
    let (up, down) = (dir.path().join("up.bin"), dir.path().join("down.bin"));
    let batch = p.write(
        "sftp-batch",
        &format!(
            "put {} {}\nrename {} {}.moved\nget {}.moved {}\n",
            src.display(),
            up.display(),
            up.display(),
            up.display(),
            up.display(),
            down.display()
        ),
    );
    let out: Out = b
        .ssh_command("sftp")
        .args(["-q", "-P", &p.ssh.port().to_string(), "-b"])
        .arg(&batch)
        .arg(format!("{}@127.0.0.1", b.dest()))
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    out.ok();
    assert_eq!(std::fs::read(&down).unwrap().len(), 70_000);
    // A session still ending shows its live player, not its log.
    crate::ssh::ended_session(&b);
    let session = p.events("session.start")[0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let script = p.write("console_page.py", PAGE);
    let out: Out = Command::new("python3")
        .arg(script)
        .arg(format!("https://127.0.0.1:{}", p.api.port()))
        .arg(PASSWORD)
        .arg(format!("/sessions/{session}"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    let page = out.ok();
    assert!(page.contains("Transfer log"), "{page}");
    // `sessions grep` finds the transfer too.
    let grep = p.cli(&["sessions", "grep", "up.bin.moved"]);
    assert!(
        grep.ok()
            .contains(&format!("sftp: read {}.moved (70000 bytes)", up.display())),
        "{grep:?}"
    );
    for line in [
        format!("wrote {} (70000 bytes)", up.display()),
        format!("rename {} → {}.moved", up.display(), up.display()),
        format!("read {}.moved (70000 bytes)", up.display()),
    ] {
        assert!(page.contains(&line), "{line}\n{page}");
    }
}
