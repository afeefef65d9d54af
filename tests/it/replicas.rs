//! Two replicas, each with a data dir of its own, on one PostgreSQL store behind HAProxy,
//! recording into one S3-compatible bucket: SSH sessions through the balancer land on
//! both and each replays the other's; a kill from the other replica reaches
//! a session; `kill -9` of one replica has its sessions closed by the other while the
//! other's live on and new sessions keep succeeding; a lock from the survivor ends its
//! sessions; the audit chain both wrote verifies.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::haproxy::{Haproxy, Server};
use crate::harness::postern::{Postern, create_store_database};
use crate::harness::postgres::Postgres;
use crate::harness::s3::S3;
use crate::ssh::Bastion;
use crate::store_pg::base;

fn live(p: &Postern) -> Vec<serde_json::Value> {
    serde_json::from_str::<Vec<serde_json::Value>>(p.cli(&["sessions", "list", "--json"]).ok())
        .unwrap()
        .into_iter()
        .filter(|s| s["ended_ms"].is_null())
        .collect()
}

fn session(p: &Postern, id: &str) -> serde_json::Value {
    serde_json::from_str::<Vec<serde_json::Value>>(p.cli(&["sessions", "list", "--json"]).ok())
        .unwrap()
        .into_iter()
        .find(|s| s["id"] == id)
        .unwrap()
}

/// `ssh` through the balancer's `port`.
fn via(b: &Bastion, port: &str, cmd: &str) -> std::process::Command {
    let mut c = b.ssh_command("ssh");
    c.args(["-p", port])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg(cmd);
    c
}

/// Waits until `check` holds, or panics saying `what`.
fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_replicas_behind_haproxy_share_sessions_kills_locks_and_the_chain() {
    let pg = Postgres::start();
    let url = create_store_database(&base(&pg));
    // Recordings in an S3-compatible bucket both replicas write.
    let s3 = S3::start();
    s3.create_bucket("replicas");
    let config = s3.config("replicas", "");
    let mut b = Bastion::start_on(
        Postern::on_store(&url).with_env(&s3.env()),
        &[],
        Some(&config),
    );
    let master = std::fs::read_to_string(b.postern.data_dir().join("keys/master.key")).unwrap();
    let other = Postern::on_store(&url).with_env(&s3.env());
    let other_config = other.write("postern.toml", &config);
    let other = other.start_with(|cmd| {
        cmd.env("POSTERN_MASTER_KEY", master.trim())
            .arg("--config")
            .arg(&other_config);
    });
    let lb = Haproxy::start(&[(
        "ssh",
        vec![
            Server {
                port: b.postern.ssh.port(),
                api: b.postern.api.port(),
            },
            Server {
                port: other.ssh.port(),
                api: other.api.port(),
            },
        ],
    )]);
    let port = lb.ports[0].to_string();
    // One host key, whichever replica answers.
    b.trust_host_key_at(lb.ports[0]);
    let a_name = format!(":{}", b.postern.api.port());
    let b_name = format!(":{}", other.api.port());

    // Sessions through the balancer land on both replicas.
    for i in 0..4 {
        let out = via(&b, &port, &format!("echo via-lb-{i}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("via-lb-{i}\n"),
            "{}; balancer log: {}",
            String::from_utf8_lossy(&out.stderr),
            lb.log()
        );
    }
    let all: Vec<serde_json::Value> =
        serde_json::from_str(other.cli(&["sessions", "list", "--json"]).ok()).unwrap();
    let on = |name: &str| {
        all.iter()
            .filter(|s| s["replica"].as_str().unwrap_or("").ends_with(name))
            .count()
    };
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(on(&a_name) > 0 && on(&b_name) > 0, "{all:?}");
    // Each replica replays the other's recordings.
    for s in &all {
        let id = s["id"].as_str().unwrap();
        let replay = other.cli_config(&["replay", id, "--max-idle", "0s"], &other_config);
        assert!(replay.ok().contains("via-lb-"), "{id}: {}", replay.stdout);
    }

    // Long sessions on both.
    let sleepers: Vec<Child> = (0..4)
        .map(|_| {
            let c = via(&b, &port, "sleep 60; echo never")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            c
        })
        .collect();
    until("four live sessions", Duration::from_secs(20), || {
        live(&other).len() == 4
    });
    let now = live(&other);
    let id_on = |name: &str, nth: usize| -> String {
        now.iter()
            .filter(|s| s["replica"].as_str().unwrap_or("").ends_with(name))
            .nth(nth)
            .unwrap_or_else(|| panic!("no session {nth} on {name}: {now:?}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a1, a2, b1) = (id_on(&a_name, 0), id_on(&a_name, 1), id_on(&b_name, 0));

    // A kill asked for on one replica ends a session the other runs.
    other.cli(&["sessions", "kill", &a1]).ok();
    until(
        "the kill to reach the other replica",
        Duration::from_secs(10),
        || !session(&other, &a1)["end_reason"].is_null(),
    );

    // kill -9 of the first replica: the survivor closes its sessions, its own live on.
    let status = b.postern.stop_with(libc::SIGKILL, Duration::from_secs(5));
    assert!(status.code().is_none());
    until(
        "the dead replica's session to be closed",
        Duration::from_secs(30),
        || session(&other, &a2)["end_reason"] == "crash-recovered",
    );
    assert!(
        session(&other, &b1)["end_reason"].is_null(),
        "the survivor's session ended"
    );
    // New sessions keep succeeding through the balancer.
    for i in 0..3 {
        let out = via(&b, &port, &format!("echo after-{i}")).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("after-{i}\n"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A lock from the survivor ends the user's live session there.
    other.cli(&["admin", "user", "lock", "alice"]).ok();
    until(
        "the lock to end the session",
        Duration::from_secs(10),
        || !session(&other, &b1)["end_reason"].is_null(),
    );
    for mut c in sleepers {
        let _ = c.kill();
        let _ = c.wait();
    }
    let verified = other.cli_config(&["audit", "verify"], &other_config);
    assert!(verified.ok().contains("OK"), "{}", verified.stdout);
}
