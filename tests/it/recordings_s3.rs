//! Recordings in S3-compatible object storage (a throwaway moto server over TLS): SSH and
//! PostgreSQL sessions are written there in chunks while they run, and replay, export,
//! grep and `audit verify` read them back from the bucket; a chunk changed or removed in
//! the bucket is caught; a replica killed mid-session leaves what it uploaded readable; a
//! bucket that goes away ends the sessions it can no longer record; a bucket that cannot
//! be written keeps `serve` from starting.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::postern::Postern;
use crate::harness::s3::S3;
use crate::pg::PgBastion;
use crate::ssh::Bastion;

const BUCKET: &str = "recordings";

fn on_s3(s3: &S3, prefix: &str) -> (Bastion, PathBuf) {
    s3.create_bucket(BUCKET);
    let p = Postern::new().with_env(&s3.env());
    let b = Bastion::start_on(p, &[], Some(&s3.config(BUCKET, prefix)));
    let config = b.postern.root().join("postern.toml");
    (b, config)
}

fn sessions(b: &Bastion, config: &std::path::Path) -> Vec<serde_json::Value> {
    serde_json::from_str(
        b.postern
            .cli_config(&["sessions", "list", "--json"], config)
            .ok(),
    )
    .unwrap()
}

/// Waits until every session has ended.
fn all_ended(b: &Bastion, config: &std::path::Path) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let all = sessions(b, config);
        if all.iter().all(|s| !s["end_reason"].is_null()) {
            return all;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{all:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ssh_recordings_live_in_the_bucket_and_every_reader_reads_them_from_there() {
    let s3 = S3::start();
    let (b, config) = on_s3(&s3, "prod/");
    let out = b.ssh(&b.dest(), "echo hello-from-s3; echo on-stderr >&2; exit 3");
    assert_eq!(out.code, 3, "{out:?}\n{}\n{}", b.postern.log(), s3.log());
    assert_eq!(out.stdout, "hello-from-s3\n");
    let tty = b
        .ssh_command("ssh")
        .args(["-tt", "-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("echo typed-$((6*7))")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&tty.stdout).contains("typed-42"));
    let all = all_ended(&b, &config);
    assert_eq!(all.len(), 2, "{all:?}");

    // Nothing under the data dir; chunk objects under the prefix in the bucket.
    assert!(
        !b.postern.data_dir().join("recordings").exists(),
        "recordings were written to the data dir"
    );
    let keys = s3.keys(BUCKET, "prod/");
    let (exec_id, tty_id) = (
        all[0]["id"].as_str().unwrap().to_string(),
        all[1]["id"].as_str().unwrap().to_string(),
    );
    let first_chunk = keys
        .iter()
        .find(|k| k.contains(&exec_id) && k.ends_with(".stream/00000000"))
        .unwrap_or_else(|| panic!("no chunk of {exec_id} in {keys:?}"))
        .clone();
    assert!(
        keys.iter()
            .any(|k| k.contains(&tty_id) && k.ends_with(".cast/00000000")),
        "{keys:?}"
    );
    let header: serde_json::Value = serde_json::from_slice(
        s3.get(BUCKET, &first_chunk)
            .split(|&b| b == b'\n')
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header["command"],
        "echo hello-from-s3; echo on-stderr >&2; exit 3"
    );
    let shown = b
        .postern
        .cli_config(&["sessions", "show", &exec_id], &config);
    assert!(
        shown.ok().contains(&format!("s3://{BUCKET}/prod/")),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("exit 3"), "{}", shown.stdout);

    // Replay, export and grep read from the bucket.
    let replay = b
        .postern
        .cli_config(&["replay", &tty_id, "--max-idle", "0s"], &config);
    assert!(replay.ok().contains("typed-42"), "{}", replay.stdout);
    let exported = b.postern.root().join("out.txt");
    b.postern
        .cli_config(
            &[
                "sessions",
                "export",
                &exec_id,
                "-o",
                exported.to_str().unwrap(),
            ],
            &config,
        )
        .ok();
    assert_eq!(
        std::fs::read_to_string(&exported).unwrap(),
        "hello-from-s3\n"
    );
    let grep = b
        .postern
        .cli_config(&["sessions", "grep", "hello-from-s3", "--json"], &config);
    assert!(grep.ok().contains(&exec_id), "{}", grep.stdout);
    let verified = b.postern.cli_config(&["audit", "verify"], &config);
    assert!(verified.ok().contains("OK"), "{}", verified.stdout);
    assert!(
        verified.stdout.contains("2 recordings"),
        "{}",
        verified.stdout
    );
    // Nothing the readers fetched is left behind.
    let cache = b.postern.data_dir().join("cache");
    assert_eq!(
        std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0),
        0,
        "copies left in {}",
        cache.display()
    );

    // A chunk changed in the bucket is caught.
    let original = s3.get(BUCKET, &first_chunk);
    s3.put(BUCKET, &first_chunk, "{\"version\":2}\n");
    let tampered = b.postern.cli_config(&["audit", "verify"], &config);
    assert_eq!(tampered.code, 1, "{tampered:?}");
    assert!(
        tampered.stdout.contains("was changed"),
        "{}",
        tampered.stdout
    );
    // So is one removed.
    s3.delete(BUCKET, &first_chunk);
    let removed = b.postern.cli_config(&["audit", "verify"], &config);
    assert_eq!(removed.code, 1, "{removed:?}");
    assert!(
        removed.stdout.contains("cannot be read"),
        "{}",
        removed.stdout
    );
    let gone = b.postern.cli_config(&["replay", &exec_id], &config);
    assert!(
        gone.fails(2).contains("cannot read recording s3://"),
        "{}",
        gone.stderr
    );
    assert!(!original.is_empty());
}

#[test]
fn a_postgres_transcript_lives_in_the_bucket_and_replays_from_there() {
    let s3 = S3::start();
    s3.create_bucket(BUCKET);
    let b = PgBastion::start_with_config(&s3.config(BUCKET, ""), &s3.env());
    let config = b.postern.root().join("postern.toml");
    let out = b.psql(&["-c", "select 40 + 2 as answer"]);
    assert_eq!(out.ok(), "42\n");
    let s = b.ended();
    let id = s["id"].as_str().unwrap();
    let keys = s3.keys(BUCKET, "");
    assert!(
        keys.iter()
            .any(|k| k.contains(id) && k.ends_with(".pg.jsonl/00000000")),
        "{keys:?}"
    );
    let replay = b.postern.cli_config(&["replay", id], &config);
    assert!(
        replay.ok().contains("select 40 + 2 as answer"),
        "{}",
        replay.stdout
    );
    let verified = b.postern.cli_config(&["audit", "verify"], &config);
    assert!(verified.ok().contains("OK"), "{}", verified.stdout);
}

#[test]
fn a_replica_killed_mid_session_leaves_its_recording_readable_to_the_last_upload() {
    let s3 = S3::start();
    let (mut b, config) = on_s3(&s3, "");
    let mut running = b
        .ssh_command("ssh")
        .args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("for i in $(seq 1 600); do echo line-$i; sleep 0.05; done")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Lines 1–40 have crossed at least a second before the kill: uploaded.
    let mut seen = String::new();
    let mut stdout = running.stdout.take().unwrap();
    while !seen.contains("line-40\n") {
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        assert!(n > 0, "the session ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    std::thread::sleep(Duration::from_millis(2500));
    b.postern.stop_with(libc::SIGKILL, Duration::from_secs(5));
    let _ = running.kill();
    let _ = running.wait();
    let s = &sessions(&b, &config)[0];
    let id = s["id"].as_str().unwrap();
    let out = b.postern.root().join("cut.txt");
    b.postern
        .cli_config(
            &["sessions", "export", id, "-o", out.to_str().unwrap()],
            &config,
        )
        .ok();
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 40, "{} lines: {text}", lines.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("line-{}", i + 1));
    }
}

#[test]
fn a_bucket_that_goes_away_ends_the_sessions_it_can_no_longer_record() {
    let s3 = S3::start();
    let (b, config) = on_s3(&s3, "");
    let mut running = b
        .ssh_command("ssh")
        .args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("while true; do echo tick; sleep 0.1; done")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    drop(s3);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = running.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the session ran on unrecorded; log:\n{}",
            b.postern.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let failed = b.postern.events("session.recording_failed");
    assert!(
        failed.iter().any(|e| e["details"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("object storage PUT")),
        "{failed:?}"
    );
    let _ = config;
}

#[test]
fn serve_refuses_to_start_on_a_bucket_it_cannot_write() {
    let s3 = S3::start();
    s3.create_bucket("exists");
    let wrong = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret-key"),
    ];
    for (env, bucket, want) in [
        (s3.env().to_vec(), "no-such-bucket", "NoSuchBucket"),
        (wrong.to_vec(), "exists", "SignatureDoesNotMatch"),
        (
            vec![("AWS_ACCESS_KEY_ID", "x")],
            "exists",
            "AWS_SECRET_ACCESS_KEY",
        ),
    ] {
        let p = Postern::new().with_env(&env);
        let cfg = p.write("postern.toml", &s3.config(bucket, ""));
        let mut cmd = p.serve_command();
        cmd.arg("--config").arg(&cfg);
        if !env.iter().any(|(k, _)| *k == "AWS_SECRET_ACCESS_KEY") {
            cmd.env_remove("AWS_SECRET_ACCESS_KEY");
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("serve started on a bucket it cannot write");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(err.contains(bucket), "{err}");
        assert!(!err.contains(&s3.secret_key), "{err}");
        assert!(!err.contains("not-the-secret-key"), "{err}");
    }
}

/// The web console reads the bucket too: a live terminal session is watched as its chunks
/// arrive, then played, downloaded and found by search once it has ended.
#[test]
fn the_console_watches_plays_and_searches_recordings_in_the_bucket() {
    const PASSWORD: &str = "console-s3-pass-7a1d";
    let s3 = S3::start();
    let (b, config) = on_s3(&s3, "");
    crate::console::console_roles(&b.postern);
    crate::console::console_user(&b.postern, "carol", Some("admins"), PASSWORD);
    let mut running = b
        .ssh_command("ssh")
        .args(["-tt", "-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("for i in $(seq 1 60); do echo tick-$i; sleep 0.2; done")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let id = loop {
        if let Some(s) = sessions(&b, &config).first() {
            break s["id"].as_str().unwrap().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no session");
        std::thread::sleep(Duration::from_millis(100));
    };
    let live = crate::console::post_forms(
        &b.postern,
        PASSWORD,
        r#"
import time
cookie, csrf = login("carol")
req = urllib.request.Request(base + "/sessions/" + sys.argv[3] + "/live/0", headers={"Cookie": cookie})
r = opener.open(req, timeout=30)
seen, start = "", time.time()
while "tick-10" not in seen and time.time() - start < 25:
    line = r.readline().decode(errors="replace")
    if not line:
        break
    seen += line
out["status"] = r.status
out["watched"] = "tick-10" in seen
print(json.dumps(out))
"#,
        &[&id],
    );
    assert_eq!(live["status"], 200, "{live}");
    assert_eq!(live["watched"], true, "{live}\n{}", b.postern.log());
    assert!(running.wait().unwrap().success());
    all_ended(&b, &config);
    let read = crate::console::post_forms(
        &b.postern,
        PASSWORD,
        r#"
cookie, csrf = login("carol")
sid = sys.argv[3]
out["recording"] = call("GET", "/sessions/" + sid + "/recording/0?download=1", None, cookie)
out["page"] = call("GET", "/sessions/" + sid, None, cookie)
out["search"] = call("GET", "/search?q=tick-57", None, cookie)
print(json.dumps(out))
"#,
        &[&id],
    );
    assert_eq!(read["recording"][0], 200, "{read}");
    assert!(
        read["recording"][1].as_str().unwrap().contains("tick-60"),
        "{read}"
    );
    assert_eq!(read["page"][0], 200, "{read}");
    assert_eq!(read["search"][0], 200, "{read}");
    assert!(read["search"][1].as_str().unwrap().contains(&id), "{read}");
    assert_eq!(
        std::fs::read_dir(b.postern.data_dir().join("cache"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "the console left copies behind"
    );
}
