//! Drills: postern killed under load, its disk full, its store locked. Each ends with the
//! evidence intact and postern serving again.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::audit::verify;
use crate::harness::Out;
use crate::harness::postern::Postern;
use crate::pg::PgBastion;
use crate::ssh::Bastion;

/// `kill -9` of `serve` while PostgreSQL clients write: every audit event written before
/// the kill is still there, the chain verifies, the interrupted sessions are marked, their
/// transcripts read back, and postern serves again.
#[test]
fn kill_9_under_postgres_load_loses_nothing_acknowledged() {
    let mut b = PgBastion::start();
    b.psql(&["-c", "CREATE TABLE drill (n int)"]).ok();
    // Six clients sending statement after statement.
    let script: String = (0..20_000)
        .map(|i| format!("INSERT INTO drill VALUES ({i});\nSELECT pg_sleep(0.002);\n"))
        .collect();
    let mut load: Vec<std::process::Child> = (0..6)
        .map(|_| {
            let mut c = b
                .psql_command("service=pg1")
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = c.stdin.take().unwrap();
            let script = script.clone();
            std::thread::spawn(move || {
                let _ = stdin.write_all(script.as_bytes());
            });
            c
        })
        .collect();
    let start = Instant::now();
    while b
        .sessions()
        .iter()
        .filter(|s| s["end_reason"].is_null())
        .count()
        < 6
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "load did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let acknowledged: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(
        b.postern
            .cli(&["audit", "search", "--limit", "100000", "--json"])
            .ok(),
    )
    .unwrap()
    .iter()
    .map(|e| e["id"].as_str().unwrap().to_string())
    .collect();
    let status = b.postern.stop_with(libc::SIGKILL, Duration::from_secs(5));
    assert!(status.code().is_none(), "killed");
    for c in load.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let dir = b.postern.data_dir();
    let cmd = b.postern.serve_command();
    b.postern.spawn(cmd);
    let after: Vec<serde_json::Value> = serde_json::from_str(
        b.postern
            .cli(&["audit", "search", "--limit", "100000", "--json"])
            .ok(),
    )
    .unwrap();
    for id in &acknowledged {
        assert!(
            after.iter().any(|e| e["id"] == id.as_str()),
            "event {id} was lost"
        );
    }
    let out = verify(&dir);
    assert!(out.ok().starts_with("OK: "), "{out:?}");
    let recovered: Vec<serde_json::Value> = b
        .sessions()
        .into_iter()
        .filter(|s| s["end_reason"] == "crash-recovered")
        .collect();
    assert!(recovered.len() >= 6, "{recovered:?}");
    // Each interrupted transcript reads back, up to the last second before the kill.
    let statements: usize = recovered.iter().map(|s| b.transcript(s).len()).sum();
    assert!(
        statements >= 6,
        "{statements} statements in the interrupted transcripts"
    );
    // And postern serves.
    assert_eq!(b.psql(&["-c", "SELECT 'after'"]).ok().trim(), "after");
}

/// The data dir's file system full: a new session is refused with a reason (nothing runs
/// unrecorded), nothing already written is damaged, and once there is room again sessions
/// work without a restart.
#[test]
fn a_full_disk_refuses_new_sessions_and_recovers_when_space_returns() {
    let mut b = Bastion::start_on(Postern::new_on_tmpfs("48m"), &[], None);
    assert_eq!(b.ssh(&b.dest(), "echo before").ok(), "before\n");
    let dir = b.postern.data_dir();
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let mut small = [0u8; 512];
    while f.write_all(&small).is_ok() {
        small[0] ^= 1;
    }
    drop(f);
    let out = b.ssh(
        &b.dest(),
        "echo ran-unrecorded > /tmp/postern-drill-$$; echo during",
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("during"), "{out:?}");
    assert!(
        out.stderr.contains("cannot record this session")
            || out.stderr.contains("cannot be recorded"),
        "{out:?}"
    );
    std::fs::remove_file(&filler).unwrap();
    // Room again: no restart needed.
    assert_eq!(b.ssh(&b.dest(), "echo after").ok(), "after\n");
    assert_eq!(b.postern.stop().code(), Some(0));
    let out = verify(&dir);
    assert!(out.ok().starts_with("OK: "), "{out:?}");
}

/// The store locked by another process past its busy timeout: new sessions are refused
/// with a reason, and once the lock is gone they work again without a restart.
#[test]
fn a_locked_store_fails_closed_and_recovers() {
    let b = Bastion::start();
    assert_eq!(b.ssh(&b.dest(), "echo before").ok(), "before\n");
    let db = b.postern.data_dir().join("postern.db");
    let mut locker = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(float(sys.argv[2]))\nc.execute('ROLLBACK')",
        ])
        .arg(&db)
        .arg("120")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(locker.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    assert_eq!(
        ready(&b.postern),
        503,
        "a load balancer takes this replica out"
    );
    let out = b.ssh(&b.dest(), "echo during");
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("during"), "{out:?}");
    assert!(
        out.stderr.contains("store unavailable") || out.stderr.contains("cannot record"),
        "{out:?}"
    );
    // The lock goes away (its process ends): no restart needed.
    let _ = locker.kill();
    let _ = locker.wait();
    assert_eq!(b.ssh(&b.dest(), "echo after").ok(), "after\n");
    assert_eq!(ready(&b.postern), 200);
}

/// `GET /v1/ready`'s status.
fn ready(p: &Postern) -> i64 {
    let out: Out = Command::new("python3")
        .args([
            "-c",
            "import ssl, sys, urllib.request, urllib.error\nctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\ntry:\n    print(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=20).status)\nexcept urllib.error.HTTPError as e:\n    print(e.code)",
        ])
        .arg(format!("https://127.0.0.1:{}/v1/ready", p.api.port()))
        .output()
        .unwrap()
        .into();
    out.ok().trim().parse().unwrap()
}

/// A store that is not a database (damaged, or something else in its place): every use
/// fails with what is wrong and what to do, and nothing starts on it.
#[test]
fn an_unreadable_store_is_named_and_nothing_starts_on_it() {
    let p = Postern::new();
    p.cli(&["admin", "user", "add", "alice"]).ok();
    let db = p.data_dir().join("postern.db");
    let _ = std::fs::remove_file(p.data_dir().join("postern.db-wal"));
    let _ = std::fs::remove_file(p.data_dir().join("postern.db-shm"));
    std::fs::write(&db, vec![0x5au8; 8192]).unwrap();
    let out = p.cli(&["admin", "user", "list"]);
    let err = out.fails(2);
    assert!(
        err.contains("file is not a database")
            && err.contains("restore the data dir from a backup"),
        "{err}"
    );
    let out: Out = p.serve_command().output().unwrap().into();
    assert!(
        out.fails(2).contains("restore the data dir from a backup"),
        "{out:?}"
    );
}

/// Two `serve` replicas on one store: when one is killed with `kill -9`, the other closes
/// that replica's sessions as crash-recovered once its lease runs out, and its own live
/// session goes on untouched.
#[test]
fn a_dead_replicas_sessions_are_closed_by_another_and_its_own_live_on() {
    let b = Bastion::start();
    let p = &b.postern;
    let mut replica = p.replica(None);
    let (ssh_b, api_b) = (replica.ssh, replica.api);
    b.trust_host_key_at(ssh_b);

    let on_a = crate::ssh::sleeping_session(&b, &b.key, 1);
    let on_b = b
        .ssh_command("ssh")
        .args(["-p", &ssh_b.to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("sleep 60; echo never")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sessions = || -> Vec<serde_json::Value> {
        serde_json::from_str(p.cli(&["sessions", "list", "--json"]).ok()).unwrap()
    };
    let mut live = Vec::new();
    for _ in 0..150 {
        live = sessions()
            .into_iter()
            .filter(|s| s["ended_ms"].is_null())
            .collect();
        if live.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(live.len(), 2, "{live:?}");
    let replicas: std::collections::BTreeSet<String> = live
        .iter()
        .map(|s| s["replica"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        replicas.len(),
        2,
        "each session names its replica: {live:?}"
    );
    let b_name = format!(":{api_b}");

    // A kill asked for through the store reaches the replica that runs the session.
    let killed = b
        .ssh_command("ssh")
        .args(["-p", &ssh_b.to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("sleep 60; echo never")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut third = None;
    for _ in 0..150 {
        third = sessions()
            .into_iter()
            .find(|s| s["ended_ms"].is_null() && !live.iter().any(|l| l["id"] == s["id"]));
        if third.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let third = third.expect("a third session");
    p.cli(&["sessions", "kill", third["id"].as_str().unwrap()])
        .ok();
    let out = crate::ssh::wait_child(killed);
    assert!(
        out.stderr.contains("an admin ended this session"),
        "{out:?}"
    );

    // kill -9 the second replica: the first notices its lease run out.
    unsafe { libc::kill(replica.child.id() as i32, libc::SIGKILL) };
    let _ = replica.child.wait();
    let mut recovered = None;
    for _ in 0..250 {
        recovered = sessions().into_iter().find(|s| {
            s["replica"].as_str().is_some_and(|r| r.ends_with(&b_name))
                && s["id"] != third["id"]
                && !s["ended_ms"].is_null()
        });
        if recovered.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovered = recovered.expect("the dead replica's session was never closed");
    assert_eq!(recovered["end_reason"], "crash-recovered");
    let own = sessions()
        .into_iter()
        .find(|s| !s["replica"].as_str().unwrap_or("").ends_with(&b_name))
        .unwrap();
    assert!(
        own["ended_ms"].is_null(),
        "the live replica's session goes on: {own}"
    );
    let ends = p.events("session.end");
    assert!(ends.iter().any(|e| {
        e["details"]["reason"] == "crash-recovered"
            && e["details"]["replica"]
                .as_str()
                .is_some_and(|r| r.ends_with(&b_name))
    }));
    let mut on_b = on_b;
    let _ = on_b.kill();
    let _ = on_b.wait();
    let mut on_a = on_a;
    let _ = on_a.kill();
    let _ = on_a.wait();
}

/// Two replicas with a SIEM mirror each: every event reaches one of the mirrors, once,
/// whichever replica or admin command appended it.
#[test]
fn replicas_mirror_each_event_once_between_them() {
    let mut p = Postern::new();
    let (a, b) = (p.root().join("siem-a.jsonl"), p.root().join("siem-b.jsonl"));
    let cfg_a = p.write(
        "a.toml",
        &format!("[audit]\nmirror = \"{}\"\n", a.display()),
    );
    let cfg_b = p.write(
        "b.toml",
        &format!("[audit]\nmirror = \"{}\"\n", b.display()),
    );
    let mut cmd = p.serve_command();
    cmd.arg("--config").arg(&cfg_a);
    p.spawn(cmd);
    let _replica = p.replica(Some(&cfg_b));
    for i in 0..30 {
        p.cli(&["admin", "user", "add", &format!("u{i}")]).ok();
    }
    let seqs = |f: &std::path::Path| -> Vec<(i64, String)> {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["seq"].as_i64()?, v["type"].as_str()?.to_string())))
            .collect()
    };
    let start = Instant::now();
    let mut all = Vec::new();
    while start.elapsed() < Duration::from_secs(15) {
        all = seqs(&a);
        all.extend(seqs(&b));
        if all.iter().filter(|(_, t)| t == "user.create").count() >= 30 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        all.iter().filter(|(_, t)| t == "user.create").count(),
        30,
        "{all:?}"
    );
    let mut numbers: Vec<i64> = all.iter().map(|(s, _)| *s).collect();
    numbers.sort_unstable();
    let before = numbers.len();
    numbers.dedup();
    assert_eq!(
        numbers.len(),
        before,
        "an event was mirrored twice: {all:?}"
    );
    let (lo, hi) = (numbers[0], numbers[numbers.len() - 1]);
    assert_eq!(
        numbers.len() as i64,
        hi - lo + 1,
        "an event was never mirrored: {all:?}"
    );
}
