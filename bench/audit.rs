//! Audit log throughput: sustained events/s appended to the SQLite store with the hash
//! chain and signed checkpoints, by many concurrent writers waiting for durability
//! (group commit), against plain unchained inserts of the same rows in the same run.
//!
//!   cargo bench --bench audit            # 200,000 events, 64 writers
//!   EVENTS=50000 WRITERS=16 cargo bench --bench audit

use std::sync::Arc;
use std::time::Instant;

use postern::audit::chain::Signer;
use postern::audit::{Actor, AuditEvent, Outcome};
use postern::store::Store;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn event(i: usize) -> AuditEvent {
    let mut e = AuditEvent::new(
        "auth.failure",
        &Actor("unknown".into()),
        Outcome::Failure,
        serde_json::json!({ "method": "publickey", "reason": "key not registered", "n": i }),
    );
    e.source = Some("127.0.0.1:50000".into());
    e
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = env("EVENTS", 200_000);
    let writers = env("WRITERS", 64);
    let dir = tempfile::tempdir()?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[9u8; 32]));
    let store = Store::open_sqlite(dir.path(), Some(Arc::new(Signer::new(&key)?))).await?;

    // postern: chained, group-committed, each writer waits until its event is durable.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..events).step_by(writers) {
                store.append_audit(&event(i)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let chained = start.elapsed().as_secs_f64();
    store.close().await;

    // Peer: the same rows as plain inserts in transactions of the same size, no chain.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}/peer.db?mode=rwc",
        dir.path().display()
    ))
    .await?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&pool)
        .await?;
    sqlx::query("PRAGMA synchronous = FULL")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE e (id TEXT, time_ms INTEGER, type TEXT, actor TEXT, source TEXT, result TEXT, details TEXT)")
        .execute(&pool)
        .await?;
    let batch = (events / 100).max(writers);
    let start = Instant::now();
    let mut i = 0;
    while i < events {
        let mut tx = pool.begin().await?;
        for j in i..(i + batch).min(events) {
            let e = event(j);
            sqlx::query("INSERT INTO e VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(e.id.to_string())
                .bind(e.time_ms)
                .bind(&e.kind)
                .bind(&e.actor.0)
                .bind(&e.source)
                .bind(e.result.as_str())
                .bind(e.details.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        i += batch;
    }
    let plain = start.elapsed().as_secs_f64();

    // Verification speed (what an auditor waits for).
    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .output()?;
    let verify = start.elapsed().as_secs_f64();
    let verdict = String::from_utf8_lossy(&out.stdout);

    let rate = events as f64 / chained;
    println!("events {events}, writers {writers}");
    println!(
        "postern chained + group commit: {rate:>10.0} events/s  ({:.1} us/event)",
        1e6 / rate
    );
    println!(
        "plain inserts (peer):           {:>10.0} events/s  ({:.1} us/event)",
        events as f64 / plain,
        1e6 * plain / events as f64
    );
    println!(
        "ratio postern/plain: {:.2}x   (target >= 20,000 events/s)",
        plain / chained
    );
    println!(
        "verify: {:.0} events/s  -> {}",
        events as f64 / verify,
        verdict.lines().next().unwrap_or("?")
    );
    Ok(())
}
