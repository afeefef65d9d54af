//! The audit log is a verifiable hash chain: every action leaves an event, an untouched
//! store verifies, and every kind of tampering is caught and named.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::Out;
use crate::harness::postern::{BIN, Postern};
use crate::ssh::Bastion;

fn sqlite(db: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 (script/bootstrap installs it)");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Tampers with a copy of `dir` (named `name`, beside it) and checks that `check` on the
/// copy fails, naming `expect`.
fn tampered(
    dir: &Path,
    name: &str,
    tamper: &dyn Fn(&Path),
    check: &dyn Fn(&Path) -> Out,
    expect: &str,
) {
    let copy = dir.parent().unwrap().join(name);
    copy_dir(dir, &copy);
    tamper(&copy);
    let out = check(&copy);
    assert_eq!(out.code, 1, "{name}: {out:?}");
    assert!(
        out.stdout.contains(expect),
        "{name}: want {expect:?} in {}",
        out.stdout
    );
}

fn verify_head(dir: &Path, head: &Path) -> Out {
    verify_with(dir, &["--head".as_ref(), head.as_os_str()])
}

pub fn verify(dir: &Path) -> Out {
    verify_with(dir, &[])
}

/// `postern audit verify --data-dir DIR ARGS…`.
fn verify_with(dir: &Path, args: &[&std::ffi::OsStr]) -> Out {
    Command::new(BIN)
        .args(["audit", "verify"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
        .into()
}

/// A data dir with admin changes, access checks and one recorded SSH session.
fn populated() -> (Bastion, PathBuf) {
    let mut b = Bastion::start();
    assert_eq!(b.ssh(&b.dest(), "echo recorded").ok(), "recorded\n");
    b.postern.cli(&[
        "access", "check", "--user", "alice", "--target", "t1", "--login", "nobody",
    ]);
    // Stop serve so the store is quiet and the chain head is signed.
    assert_eq!(b.postern.stop().code(), Some(0));
    let dir = b.postern.data_dir();
    (b, dir)
}

fn events(dir: &Path) -> Vec<serde_json::Value> {
    let out: Out = Command::new(BIN)
        .args(["audit", "search", "--limit", "1000", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap()
        .into();
    serde_json::from_str::<Vec<serde_json::Value>>(out.ok()).unwrap()
}

#[test]
fn every_action_leaves_its_event() {
    let (b, dir) = populated();
    let all = events(&dir);
    let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for (kind, check) in [
        ("role.create", "dev"),
        ("user.create", "alice"),
        ("user.update", "keys"),
        ("target.create", "t1"),
        ("server.start", "ssh"),
        ("auth.success", "publickey"),
        ("session.start", "cert_serial"),
        ("session.channel", "exec"),
        ("session.end", "recordings"),
        ("access.check", "deny"),
        ("server.stop", ""),
    ] {
        let e = all
            .iter()
            .find(|e| e["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"));
        assert!(e.to_string().contains(check), "{kind} lacks {check}: {e}");
        assert!(
            e["hash"].as_str().unwrap().len() == 64 && e["prev_hash"].as_str().unwrap().len() == 64
        );
        assert!(e["time_ms"].as_i64().unwrap() > 0 && e["actor"].as_str().is_some());
    }
    let end = all.iter().find(|e| e["type"] == "session.end").unwrap();
    assert_eq!(
        end["details"]["recordings"][0]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(end["details"]["reason"], "client exit");
    // Replays and exports are audited too.
    let s: serde_json::Value =
        serde_json::from_str(b.postern.cli(&["sessions", "list", "--json"]).ok()).unwrap();
    let id = s[0]["id"].as_str().unwrap();
    b.postern.cli(&["replay", id, "--max-idle", "0s"]).ok();
    let kinds: Vec<String> = events(&dir)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"session.replay".to_string()));
}

#[test]
fn untouched_store_verifies_and_each_tampering_is_named() {
    // The bastion keeps its temp dir (and the copies beside it) until the end.
    let (_b, dir) = populated();
    let out = verify(&dir);
    assert!(out.ok().starts_with("OK: "), "{out:?}");
    assert!(out.stdout.contains("1 recordings intact"), "{}", out.stdout);
    let n = events(&dir).len();
    assert!(n > 10);

    let case = |name: &str, tamper: &dyn Fn(&Path), expect: &str| {
        tampered(&dir, name, tamper, &|d| verify(d), expect)
    };
    let db = |d: &Path| d.join("postern.db");
    case(
        "modified",
        &|d| {
            sqlite(
                &db(d),
                "UPDATE audit_events SET actor = 'os:mallory' WHERE seq = 3",
            )
        },
        "FAILED at seq 3: event seq 3",
    );
    case(
        "modified-details",
        &|d| {
            sqlite(
                &db(d),
                "UPDATE audit_events SET details = '{}' WHERE seq = 5",
            )
        },
        "was modified",
    );
    case(
        "deleted",
        &|d| sqlite(&db(d), "DELETE FROM audit_events WHERE seq = 4"),
        "event seq 4 is missing before seq 5",
    );
    case(
        "swapped",
        &|d| {
            sqlite(
                &db(d),
                "UPDATE audit_events SET seq = -1 WHERE seq = 6; UPDATE audit_events SET seq = 6 WHERE seq = 7; UPDATE audit_events SET seq = 7 WHERE seq = -1;",
            )
        },
        "FAILED at seq 6",
    );
    case(
        "forged",
        &|d| {
            sqlite(&db(d), &format!(
            "INSERT INTO audit_events (seq, id, time_ms, type, actor, result, details, prev_hash, hash)
             SELECT seq + 1, '00000000-0000-4000-8000-000000000000', time_ms, 'user.delete', 'os:root', 'success', '{{}}', hash, '{}' FROM audit_events ORDER BY seq DESC LIMIT 1",
            "ab".repeat(32)
        ))
        },
        &format!("FAILED at seq {}", n + 1),
    );
    case(
        "truncated",
        &|d| {
            sqlite(
                &db(d),
                "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)",
            )
        },
        "events were removed from the end",
    );
    case(
        "recording",
        &|d| {
            let rec = walk_recording(&d.join("recordings")).unwrap();
            let mut bytes = std::fs::read(&rec).unwrap();
            let i = bytes.len() / 2;
            bytes[i] ^= 0x20;
            std::fs::write(&rec, bytes).unwrap();
        },
        "was changed: its SHA-256 differs",
    );
    case(
        "recording-missing",
        &|d| std::fs::remove_file(walk_recording(&d.join("recordings")).unwrap()).unwrap(),
        "cannot be read",
    );
}

fn walk_recording(dir: &Path) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = walk_recording(&p) {
                return Some(f);
            }
        } else if p.extension().is_some_and(|x| x == "cast" || x == "stream") {
            return Some(p);
        }
    }
    None
}

#[test]
fn an_export_verifies_on_its_own_and_edits_to_it_are_caught() {
    let (b, dir) = populated();
    let file = b.postern.root().join("audit.jsonl");
    let out: Out = Command::new(BIN)
        .args(["audit", "export", "--format", "jsonl", "-o"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap()
        .into();
    out.ok();
    let pubkey = b.postern.root().join("audit.pub");
    std::fs::copy(dir.join("keys/audit_ed25519.pub"), &pubkey).unwrap();
    // Offline: only the file and the public key, from another directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |f: &Path| -> Out {
        Command::new(BIN)
            .args(["audit", "verify", "--file"])
            .arg(f)
            .arg("--pubkey")
            .arg(&pubkey)
            .arg("--data-dir")
            .arg(elsewhere.path().join("none"))
            .output()
            .unwrap()
            .into()
    };
    let ok = run(&file);
    assert!(ok.ok().starts_with("OK: "), "{ok:?}");
    assert!(
        !ok.stdout.contains("not yet covered"),
        "the export ends with a signed checkpoint: {}",
        ok.stdout
    );

    let text = std::fs::read_to_string(&file).unwrap();
    let edited = b.postern.root().join("edited.jsonl");
    std::fs::write(&edited, text.replacen("\"os:", "\"os:x", 1)).unwrap();
    let out = run(&edited);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("was modified"), "{}", out.stdout);

    // Cuts and drops the signed trailer catches, each named.
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    let is_checkpoint = |l: &&str| l.starts_with("{\"checkpoint\"");
    let events_at: Vec<usize> = (0..n)
        .filter(|i| !is_checkpoint(&lines[*i]) && !lines[*i].starts_with("{\"trailer\""))
        .collect();
    let without = |skip: &[usize]| -> String {
        lines
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    };
    let checkpoint_at = (0..n).find(|i| is_checkpoint(&lines[*i])).unwrap();
    let last_event = *events_at.last().unwrap();
    for (name, content, expect) in [
        ("no-trailer", without(&[n - 1]), "no signed trailer"),
        (
            "tail-cut",
            without(&[last_event, last_event + 1]),
            "its tail was cut",
        ),
        (
            "head-cut",
            // The first event, and its checkpoint when one follows it.
            without(&[
                events_at[0],
                events_at[0] + usize::from(is_checkpoint(&lines[events_at[0] + 1])),
            ]),
            "its head was cut",
        ),
        (
            "checkpoint-dropped",
            without(&[checkpoint_at]),
            "checkpoint lines were removed",
        ),
        (
            "stranger-line",
            format!("{}{{\"note\":\"trust me\"}}\n", without(&[n - 1])),
            "not an audit event",
        ),
        (
            "after-trailer",
            format!("{text}{}\n", lines[events_at[1]]),
            "after the signed trailer",
        ),
        (
            "unknown-result",
            text.replacen("\"result\":\"success\"", "\"result\":\"fine\"", 1),
            "unknown result `fine`",
        ),
    ] {
        let f = b.postern.root().join(format!("{name}.jsonl"));
        std::fs::write(&f, content).unwrap();
        let out = run(&f);
        assert_eq!(out.code, 1, "{name}: {out:?}");
        assert!(
            out.stdout.contains(expect),
            "{name}: want {expect:?} in {}",
            out.stdout
        );
    }

    // A checkpoint signed by another key is caught.
    let other = Postern::new();
    other.cli(&["admin", "user", "list"]).ok();
    let out: Out = Command::new(BIN)
        .args(["audit", "verify", "--file"])
        .arg(&file)
        .arg("--pubkey")
        .arg(other.data_dir().join("keys/audit_ed25519.pub"))
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("bad signature"), "{}", out.stdout);

    // CSV for spreadsheets.
    let out: Out = Command::new(BIN)
        .args(["audit", "export", "--format", "csv", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap()
        .into();
    let csv = out.ok();
    assert!(csv.starts_with("seq,id,time,type,actor,"));
    assert!(csv.lines().count() > 10);
}

#[test]
fn prune_keeps_a_signed_anchor_and_the_rest_verifies() {
    let (b, dir) = populated();
    let before = events(&dir).len();
    // Everything written so far is older than "now + 1s".
    let cutoff = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let cutoff = cutoff
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    // Removing recent evidence needs a confirmation.
    let refused = b.postern.cli(&["audit", "prune", "--before", &cutoff]);
    assert!(refused.fails(2).contains("--yes"), "{}", refused.stderr);
    assert_eq!(events(&dir).len(), before);
    let out = b
        .postern
        .cli(&["audit", "prune", "--before", &cutoff, "--yes"]);
    assert!(
        out.ok().starts_with(&format!("removed {before} event(s)")),
        "{}",
        out.stdout
    );
    b.postern.cli(&["admin", "user", "lock", "alice"]).ok();
    let out = verify(&dir);
    assert!(out.ok().starts_with("OK: "), "{out:?}");
    let left = events(&dir);
    let kinds: Vec<&str> = left.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["audit.prune", "user.update"]);
    // Tampering after a prune is still caught.
    sqlite(
        &dir.join("postern.db"),
        // One hex digit changed, whatever it was.
        "UPDATE audit_anchor SET hash = (CASE WHEN substr(hash, 1, 1) = '0' THEN '1' ELSE '0' END) || substr(hash, 2)",
    );
    let out = verify(&dir);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("anchor"), "{}", out.stdout);
}

#[test]
fn search_filters_by_type_user_session_and_time() {
    let (b, dir) = populated();
    let p = &b.postern;
    let s: serde_json::Value =
        serde_json::from_str(p.cli(&["sessions", "list", "--json"]).ok()).unwrap();
    let id = s[0]["id"].as_str().unwrap();
    let by_session: Vec<serde_json::Value> = serde_json::from_str(
        p.cli(&["audit", "search", "--session", &id[..8], "--json"])
            .ok(),
    )
    .unwrap();
    let kinds: Vec<&str> = by_session
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["session.start", "session.channel", "session.end"]);
    let by_user: Vec<serde_json::Value> = serde_json::from_str(
        p.cli(&["audit", "search", "--user", "alice", "--json"])
            .ok(),
    )
    .unwrap();
    assert!(by_user.iter().all(|e| e["actor"] == "user:alice"));
    assert!(!by_user.is_empty());
    let future: Vec<serde_json::Value> = serde_json::from_str(
        p.cli(&["audit", "search", "--since", "2999-01-01", "--json"])
            .ok(),
    )
    .unwrap();
    assert!(future.is_empty());
    let recent: Vec<serde_json::Value> = serde_json::from_str(
        p.cli(&[
            "audit", "search", "--since", "1h", "--type", "user", "--json",
        ])
        .ok(),
    )
    .unwrap();
    assert!(
        recent
            .iter()
            .all(|e| e["type"].as_str().unwrap().starts_with("user."))
    );
    assert!(
        p.cli(&["audit", "search", "--since", "yesterday-ish"])
            .fails(2)
            .contains("cannot read `yesterday-ish` as a time")
    );
    let _ = dir;
}

#[test]
fn a_crash_during_heavy_traffic_leaves_a_chain_that_verifies_and_continues() {
    let mut b = Bastion::start();
    let mut shell = crate::ssh::open_shell(&b);
    crate::apply::new_key(&b.postern, "mallory");
    let mallory = b.postern.root().join("mallory");
    let port = b.postern.ssh.port().to_string();
    // Many concurrent refused logins (auth.failure events) and admin changes.
    let mut clients = Vec::new();
    for i in 0..30 {
        clients.push(
            Command::new("ssh")
                .args(["-F", "/dev/null", "-i"])
                .arg(&mallory)
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                    "-p",
                    &port,
                ])
                .arg(format!("x{i}@t1@127.0.0.1"))
                .arg("true")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for i in 0..5 {
        b.postern
            .cli(&["admin", "user", "add", &format!("u{i}")])
            .ok();
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    let status = b
        .postern
        .stop_with(libc::SIGKILL, std::time::Duration::from_secs(5));
    assert!(status.code().is_none(), "killed");
    for mut c in clients {
        let _ = c.wait();
    }
    let _ = shell.kill();
    let _ = shell.wait();
    let dir = b.postern.data_dir();
    let out = verify(&dir);
    assert!(out.ok().starts_with("OK: "), "after the crash: {out:?}");
    // Restart; the chain continues from where it stopped.
    let cmd = b.postern.serve_command();
    b.postern.spawn(cmd);
    assert_eq!(b.ssh(&b.dest(), "echo after").ok(), "after\n");
    assert_eq!(b.postern.stop().code(), Some(0));
    let out = verify(&dir);
    assert!(out.ok().starts_with("OK: "), "after restart: {out:?}");
    let all = events(&dir);
    assert!(all.iter().filter(|e| e["type"] == "server.start").count() == 2);
    // The session the crash interrupted is marked so, in the index and the log.
    let sessions: serde_json::Value =
        serde_json::from_str(b.postern.cli(&["sessions", "list", "--json"]).ok()).unwrap();
    assert_eq!(sessions[0]["end_reason"], "crash-recovered", "{sessions}");
    assert!(
        all.iter()
            .any(|e| e["type"] == "session.end" && e["details"]["reason"] == "crash-recovered")
    );
}

#[test]
fn events_are_mirrored_as_json_lines_for_a_siem() {
    let mut p = Postern::new();
    let mirror = p.root().join("siem.jsonl");
    let witness = p.root().join("witness.jsonl");
    let cfg = p.write(
        "postern.toml",
        &format!(
            "data_dir = \"{}\"\n[ssh]\nlisten = \"{}\"\n[postgres]\nlisten = \"{}\"\n[api]\nlisten = \"{}\"\n[audit]\nmirror = \"{}\"\nwitness = \"{}\"\n",
            p.data_dir().display(),
            p.ssh,
            p.pg,
            p.api,
            mirror.display(),
            witness.display()
        ),
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"]).arg(&cfg);
    p.spawn(cmd);
    // A change made by another process reaches the mirror too.
    p.cli(&["admin", "user", "add", "zed"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(p.stop().code(), Some(0));
    let text = std::fs::read_to_string(&mirror).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["server.start", "user.create", "server.stop"],
        "{text}"
    );
    assert!(text.contains("\"hash\":"));
    // The signed heads go with the events, the last one vouching for the last event.
    let heads: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("checkpoint")).collect();
    let last_event = lines
        .iter()
        .rev()
        .find(|l| l.get("type").is_some())
        .unwrap();
    assert_eq!(heads.last().unwrap()["seq"], last_event["seq"], "{text}");
    // The witness holds the heads alone; an auditor checks the store against it.
    let seen = std::fs::read_to_string(&witness).unwrap();
    assert!(
        seen.lines().all(|l| l.starts_with("{\"checkpoint\":")),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("\"seq\":{}", last_event["seq"])),
        "{seen}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&witness).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = verify_head(&p.data_dir(), &witness);
    assert!(out.ok().starts_with("OK: "), "{out:?}");
}

#[test]
fn search_follow_prints_new_events_as_they_arrive() {
    use std::io::BufRead;
    let p = Postern::new();
    p.cli(&["admin", "user", "add", "first"]).ok();
    let mut child = Command::new(BIN)
        .args([
            "audit",
            "search",
            "--follow",
            "--json",
            "--limit",
            "0",
            "--data-dir",
        ])
        .arg(p.data_dir())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    p.cli(&["admin", "user", "add", "second"]).ok();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push(line.clone());
            if line.contains("\"user:second\"") {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("user.create") && l.contains("user:second")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("user:first")),
        "only new events: {seen:?}"
    );
}

/// Tampering that leaves every remaining link intact is caught once the events are older
/// than postern's signing interval: no checkpoint covering them means one was deleted.
/// A head saved earlier (or a witness) catches a cut back to an earlier checkpoint.
#[test]
fn checkpoints_deleted_or_a_cut_tail_are_caught_and_a_saved_head_holds() {
    let (b, dir) = populated();
    let save_head = |to: &Path| {
        let out: Out = Command::new(BIN)
            .args(["audit", "head", "-o"])
            .arg(to)
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap()
            .into();
        out.ok();
        std::fs::read_to_string(to).unwrap()
    };
    let early = save_head(&b.postern.root().join("early.json"));
    let n = events(&dir).len() as i64;
    // The log goes on past the signing interval (30 s with its margin).
    std::thread::sleep(std::time::Duration::from_secs(32));
    for name in ["late1", "late2"] {
        let out: Out = Command::new(BIN)
            .args(["admin", "user", "add", name, "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap()
            .into();
        out.ok();
    }
    let head = b.postern.root().join("head.json");
    let late = save_head(&head);
    assert!(verify(&dir).ok().starts_with("OK: "));
    assert!(verify_head(&dir, &head).ok().starts_with("OK: "));
    // A witness-like file whose last line is the older head (as when a restarted postern
    // appends the store's newest checkpoint): every head in it counts.
    let heads = b.postern.write("heads.jsonl", &format!("{late}{early}"));
    let case = |name: &str, tamper: &dyn Fn(&Path), with: Option<&Path>, expect: &str| {
        let check = |d: &Path| match with {
            Some(h) => verify_head(d, h),
            None => verify(d),
        };
        tampered(&dir, name, tamper, &check, expect)
    };
    let db = |d: &Path| d.join("postern.db");
    // The last event cut, and the checkpoints after the sleep deleted: what is left was
    // written more than 30 s after the last signature.
    let cut = format!(
        "DELETE FROM audit_events WHERE seq > {}; DELETE FROM audit_checkpoints WHERE seq > {n};",
        n + 1
    );
    case(
        "cut",
        &|d| sqlite(&db(d), &cut),
        None,
        "no signed checkpoint covers them",
    );
    // Cut back to a signed event: only a head kept outside tells.
    let back = format!(
        "DELETE FROM audit_events WHERE seq > {n}; DELETE FROM audit_checkpoints WHERE seq > {n};"
    );
    case(
        "cut-head",
        &|d| sqlite(&db(d), &back),
        Some(&head),
        "events were removed from the end",
    );
    case(
        "cut-heads",
        &|d| sqlite(&db(d), &back),
        Some(&heads),
        "events were removed from the end",
    );
    // Every checkpoint gone.
    case(
        "unsigned",
        &|d| sqlite(&db(d), "DELETE FROM audit_checkpoints"),
        None,
        "there is no signed checkpoint at all",
    );
    // A result the log does not know is not read as a success.
    case(
        "unknown-result",
        &|d| {
            sqlite(
                &db(d),
                "UPDATE audit_events SET result = 'fine' WHERE seq = (SELECT MIN(seq) FROM audit_events WHERE result = 'success')",
            )
        },
        None,
        "unknown result `fine`",
    );
    // A head from another data dir (another key) is refused.
    let other = Postern::new();
    other.cli(&["admin", "user", "add", "x"]).ok();
    let foreign = other.root().join("head.json");
    other
        .cli(&["audit", "head", "-o", foreign.to_str().unwrap()])
        .ok();
    let out = verify_head(&dir, &foreign);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("bad signature"), "{}", out.stdout);
}

/// A session still running is not outside verify: its recording is sealed into the chain
/// as it grows, and a change within the sealed bytes fails verification before it ends.
#[test]
fn open_recordings_are_sealed_into_the_chain_while_they_grow() {
    let b = Bastion::start();
    let mut child = b
        .ssh_command("ssh")
        .args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("for i in $(seq 1 60); do echo line-$i; sleep 1; done")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The writer seals every 30 s; serve publishes the seal within a second.
    let start = std::time::Instant::now();
    let seal = loop {
        let seals = b.postern.events("recording.progress");
        if let Some(s) = seals.last() {
            break s.clone();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(50),
            "no seal after 50 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let dir = b.postern.data_dir();
    let file = dir.join(seal["details"]["file"].as_str().unwrap());
    let bytes = seal["details"]["bytes"].as_u64().unwrap() as usize;
    assert!(seal["session_id"].is_string(), "{seal}");
    let out = verify(&dir);
    assert!(
        out.ok().contains("1 open recordings intact"),
        "{}",
        out.stdout
    );
    // One byte changed inside what was sealed, while the session still runs.
    let original = std::fs::read(&file).unwrap();
    assert!(original.len() >= bytes);
    let mut forged = original.clone();
    forged[bytes / 2] ^= 0x01;
    std::fs::write(&file, &forged).unwrap();
    let out = verify(&dir);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("was changed within the"),
        "{}",
        out.stdout
    );
    // Cut below the seal. The writer still appends at its own offset: when it writes
    // before the check reads, the cut becomes a hole of zeros inside the sealed bytes,
    // which reads as a change.
    std::fs::write(&file, &original[..bytes / 2]).unwrap();
    let out = verify(&dir);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("it was cut") || out.stdout.contains("was changed within the"),
        "{}",
        out.stdout
    );
    std::fs::write(&file, &original).unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

/// With a witness, postern does not sign a log that no longer holds the witness's newest
/// head: not when it starts, not from a local command; and verify against the witness
/// names the cut.
#[test]
fn a_log_cut_under_a_witness_is_not_signed_again() {
    let mut p = Postern::new();
    let witness = p.root().join("witness.jsonl");
    let cfg = p.write(
        "postern.toml",
        &format!("[audit]\nwitness = \"{}\"\n", witness.display()),
    );
    let env = [("POSTERN_CONFIG", cfg.as_path())];
    let mut cmd = p.serve_command();
    cmd.arg("--config").arg(&cfg);
    p.spawn(cmd);
    for u in ["a", "b", "c"] {
        p.cli_env(&["admin", "user", "add", u], "", &env).ok();
    }
    assert_eq!(p.stop().code(), Some(0));
    let n = events(&p.data_dir()).len() as i64;
    sqlite(
        &p.data_dir().join("postern.db"),
        &format!(
            "DELETE FROM audit_events WHERE seq > {m}; DELETE FROM audit_checkpoints WHERE seq > {m};",
            m = n - 3
        ),
    );
    // A local command will not sign the cut log.
    let out = p.cli_env(&["audit", "head"], "", &env);
    assert!(
        out.fails(2).contains("rewritten or cut outside postern"),
        "{out:?}"
    );
    // Nor will serve, when it starts.
    let mut cmd = p.serve_command();
    cmd.arg("--config").arg(&cfg);
    p.spawn(cmd);
    assert_eq!(p.stop().code(), Some(0));
    assert!(
        p.log().contains("rewritten or cut outside postern"),
        "{}",
        p.log()
    );
    // (The restarted postern wrote new events where the cut ones were: the witness's
    // heads name them as rewritten.)
    let out = verify_head(&p.data_dir(), &witness);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("saved head") && out.stdout.contains("rewritten"),
        "{}",
        out.stdout
    );
}
