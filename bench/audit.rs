//! Audit log throughput: sustained events/s appended to the SQLite store with the hash
//! chain and signed checkpoints, by many concurrent writers waiting for durability
//! (group commit), against plain unchained inserts of the same rows in the same run.
//!
//!   cargo bench --bench audit            # 200,000 events; 64, then 1024 writers
//!   EVENTS=50000 cargo bench --bench audit
//!
//! Each writer waits for its event to be durable (SQLite `synchronous = FULL`), so the
//! batch size of a commit is the number of writers waiting: few writers measure the
//! disk's fsync latency, many writers measure what group commit sustains.
//!
//! With `STORE_URL` (an empty PostgreSQL database; `bench/audit-pg.sh` starts a cluster
//! and sets it), the same on the PostgreSQL store written by two replicas at once (two
//! stores, each with its own pool and group-commit writer, as two `serve` have), against
//! plain batched inserts into PostgreSQL; then `audit verify` of the chain they wrote.

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
    if let Ok(url) = std::env::var("STORE_URL") {
        return on_postgres(&url, events).await;
    }
    let mut rates = Vec::new();
    let mut last_dir = None;
    for writers in [64usize, 1024] {
        let (rate, dir) = chained(events, writers).await?;
        println!(
            "postern chained + group commit, {writers:>4} writers: {rate:>9.0} events/s  ({:.1} us/event)",
            1e6 / rate
        );
        rates.push(rate);
        last_dir = Some(dir);
    }
    let dir = last_dir.ok_or_else(|| anyhow::anyhow!("no run"))?;
    let batched = batched(events).await?;
    println!(
        "postern chained, 1 producer, batches of 1024:  {batched:>9.0} events/s  ({:.1} us/event)",
        1e6 / batched
    );
    let plain = plain(dir.path(), events).await?;
    println!(
        "plain batched inserts (peer):         {plain:>9.0} events/s  ({:.1} us/event)",
        1e6 / plain
    );
    let best = rates.iter().cloned().fold(0.0, f64::max);
    println!(
        "ratio postern/plain: {:.2}x at 1024 writers; target >= 20,000 events/s: {}",
        best / plain,
        if best >= 20_000.0 { "met" } else { "missed" }
    );

    // Verification speed (what an auditor waits for), over the 1024-writer log.
    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .arg("--pubkey")
        .arg(dir.path().join("audit.pub"))
        .output()?;
    let verify = start.elapsed().as_secs_f64();
    let verdict = String::from_utf8_lossy(&out.stdout);
    println!(
        "verify: {:.0} events/s -> {}",
        events as f64 / verify,
        verdict.lines().next().unwrap_or("?")
    );
    Ok(())
}

async fn chained(events: usize, writers: usize) -> anyhow::Result<(f64, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[9u8; 32]));
    std::fs::write(dir.path().join("audit.pub"), key.public_key().to_openssh()?)?;
    let store = Store::open_sqlite(dir.path(), Some(Arc::new(Signer::new(&key)?))).await?;
    // Chained, group-committed; each writer waits until its event is durable.
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
    let elapsed = start.elapsed().as_secs_f64();
    store.close().await;
    Ok((events as f64 / elapsed, dir))
}

/// The chain alone: one producer appending 1024 events per durable transaction.
async fn batched(events: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = Store::open_sqlite(dir.path(), None).await?;
    let start = Instant::now();
    let mut i = 0;
    while i < events {
        let chunk: Vec<AuditEvent> = (i..(i + 1024).min(events)).map(event).collect();
        store.append_audit_batch(chunk).await?;
        i += 1024;
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    store.close().await;
    Ok(rate)
}

/// Peer: the same rows as plain inserts, 1024 per transaction, no chain, same durability.
async fn plain(dir: &std::path::Path, events: usize) -> anyhow::Result<f64> {
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}/peer.db?mode=rwc", dir.display())).await?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&pool)
        .await?;
    sqlx::query("PRAGMA synchronous = FULL")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE e (id TEXT, time_ms INTEGER, type TEXT, actor TEXT, source TEXT, result TEXT, details TEXT)")
        .execute(&pool)
        .await?;
    let batch = 1024;
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
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

/// Two replicas appending to one PostgreSQL store, 512 writers each, against plain inserts.
async fn on_postgres(url: &str, events: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[9u8; 32]));
    std::fs::write(dir.path().join("audit.pub"), key.public_key().to_openssh()?)?;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let signer = Some(Arc::new(Signer::new(&key)?));
        replicas.push(Store::open(dir.path(), url, signer).await?);
    }
    let writers = 512;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (r, store) in replicas.iter().enumerate() {
        for w in 0..writers {
            let store = store.clone();
            let first = r * writers + w;
            tasks.push(tokio::spawn(async move {
                for i in (first..events).step_by(2 * writers) {
                    store.append_audit(&event(i)).await?;
                }
                anyhow::Ok(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    for s in &replicas {
        s.close().await;
    }
    println!(
        "postern chained on PostgreSQL, 2 replicas x {writers} writers: {rate:>9.0} events/s  ({:.1} us/event)",
        1e6 / rate
    );
    // Peer: the same rows as plain inserts, 1024 per transaction, into the same server.
    let pool = sqlx::postgres::PgPool::connect(url).await?;
    sqlx::query("CREATE TABLE bench_peer (id TEXT, time_ms BIGINT, type TEXT, actor TEXT, source TEXT, result TEXT, details TEXT)")
        .execute(&pool)
        .await?;
    let start = Instant::now();
    let mut i = 0;
    while i < events {
        let mut tx = pool.begin().await?;
        for j in i..(i + 1024).min(events) {
            let e = event(j);
            sqlx::query("INSERT INTO bench_peer VALUES ($1, $2, $3, $4, $5, $6, $7)")
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
        i += 1024;
    }
    let plain = events as f64 / start.elapsed().as_secs_f64();
    println!(
        "plain batched inserts into PostgreSQL (peer): {plain:>9.0} events/s  ({:.1} us/event)",
        1e6 / plain
    );
    println!(
        "ratio postern/plain: {:.2}x; target >= 20,000 events/s: {}",
        rate / plain,
        if rate >= 20_000.0 { "met" } else { "missed" }
    );
    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .arg("--pubkey")
        .arg(dir.path().join("audit.pub"))
        .env("POSTERN_STORE_URL", url)
        .output()?;
    println!(
        "verify: {:.0} events/s -> {}",
        events as f64 / start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("?")
    );
    Ok(())
}
