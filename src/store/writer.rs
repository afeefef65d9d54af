//! Group commit for audit events: callers queue events and wait for their transaction;
//! one writer task takes everything queued so far into a single `BEGIN IMMEDIATE`
//! transaction (chain order = queue order), and signs a checkpoint every 10,000 events
//! (in the same transaction as the events it covers) and every 10 seconds when the head,
//! whoever wrote it, is unsigned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::StoreError;
use super::audit;
use crate::audit::AuditEvent;
use crate::audit::chain::Signer;

const BATCH: usize = 4096;
const CHECKPOINT_EVERY: u64 = 10_000;
const CHECKPOINT_AFTER: Duration = Duration::from_secs(10);

enum Job {
    Append(AuditEvent, oneshot::Sender<Result<(), String>>),
    Checkpoint(oneshot::Sender<Result<(), String>>),
    /// A head the log must hold (from a witness) before anything newer is signed.
    Expect(i64, String),
}

#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<Job>,
}

fn failed(e: String) -> StoreError {
    StoreError::Corrupt {
        what: "audit log write".into(),
        why: e,
    }
}

impl AuditQueue {
    pub fn start(pool: AnyPool, signer: Option<Arc<Signer>>) -> AuditQueue {
        let (tx, rx) = mpsc::channel(BATCH * 2);
        tokio::spawn(run(pool, signer, rx));
        AuditQueue { tx }
    }

    /// Queues `events` one after the other and waits until all are written (usually one
    /// transaction).
    pub async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let queued = Instant::now();
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let (ack, done) = oneshot::channel();
            self.tx
                .send(Job::Append(e, ack))
                .await
                .map_err(|_| failed("the audit writer stopped".into()))?;
            acks.push(done);
        }
        let depth = self.tx.max_capacity() - self.tx.capacity();
        let mut result = Ok(());
        for done in acks {
            let r = done
                .await
                .map_err(|_| failed("the audit writer stopped".into()))?
                .map_err(failed);
            result = result.and(r);
        }
        crate::metrics::audit_append(queued.elapsed(), depth);
        result
    }

    pub async fn expect(&self, seq: i64, hash: String) {
        let _ = self.tx.send(Job::Expect(seq, hash)).await;
    }

    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Job::Checkpoint(ack)).await.is_err() {
            return Ok(());
        }
        done.await.unwrap_or(Ok(())).map_err(failed)
    }
}

/// Writes a batch; signs the new head in the same transaction when `sign_with` is given.
/// The events are written even when signing is refused (a log rewritten outside postern):
/// that refusal is returned beside success.
async fn write(
    pool: &AnyPool,
    events: &[AuditEvent],
    sign_with: Option<&Signer>,
    known: &mut audit::Known,
) -> Result<Option<StoreError>, StoreError> {
    let mut tx = crate::store::begin_write(pool).await?;
    audit::insert_chained(&mut tx, events).await?;
    let mut signed = None;
    let mut refused = None;
    if let Some(signer) = sign_with {
        match audit::checkpoint(&mut tx, signer, known).await {
            Ok(k) => signed = Some(k),
            Err(e @ StoreError::Rewritten { .. }) => refused = Some(e),
            Err(e) => return Err(e),
        }
    }
    tx.commit().await?;
    if let Some(k) = signed {
        *known = k;
    }
    Ok(refused)
}

async fn sign(
    pool: &AnyPool,
    signer: &Option<Arc<Signer>>,
    known: &mut audit::Known,
) -> Result<(), StoreError> {
    let Some(signer) = signer else {
        return Ok(());
    };
    let mut tx = crate::store::begin_write(pool).await?;
    let k = audit::checkpoint(&mut tx, signer, known).await?;
    tx.commit().await?;
    *known = k;
    Ok(())
}

async fn run(pool: AnyPool, signer: Option<Arc<Signer>>, mut rx: mpsc::Receiver<Job>) {
    let mut unsigned: u64 = 0;
    let mut last_sign = Instant::now();
    // The newest head this writer signed or was told of: never signed over if it changed.
    let mut known: audit::Known = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            job = rx.recv() => match job {
                Some(j) => j,
                None => break,
            },
            _ = tick.tick() => {
                // Signs whatever head is unsigned, whoever wrote it (an admin command in
                // another process that ended without signing, a crash before a restart):
                // `audit verify` fails on events left unsigned past the interval.
                if last_sign.elapsed() >= CHECKPOINT_AFTER {
                    match sign(&pool, &signer, &mut known).await {
                        Ok(()) => { unsigned = 0; last_sign = Instant::now(); }
                        Err(e) => {
                            warn!(error = %e, "cannot sign an audit checkpoint");
                            last_sign = Instant::now();
                        }
                    }
                }
                continue;
            }
        };
        let mut events = Vec::new();
        let mut acks = Vec::new();
        let mut checkpoint_acks = Vec::new();
        let mut push = |j: Job, events: &mut Vec<AuditEvent>| match j {
            Job::Append(e, ack) => {
                events.push(e);
                acks.push(ack);
            }
            Job::Checkpoint(ack) => checkpoint_acks.push(ack),
            Job::Expect(seq, hash) => {
                if known.as_ref().is_none_or(|(k, _)| seq > *k) {
                    known = Some((seq, hash));
                }
            }
        };
        push(first, &mut events);
        while events.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => push(j, &mut events),
                Err(_) => break,
            }
        }
        if !events.is_empty() {
            let due =
                unsigned + events.len() as u64 >= CHECKPOINT_EVERY || !checkpoint_acks.is_empty();
            let sign_with = if due { signer.as_deref() } else { None };
            let result = match write(&pool, &events, sign_with, &mut known).await {
                Ok(Some(refused)) => {
                    warn!(error = %refused, "cannot sign an audit checkpoint");
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            if result.is_ok() {
                if sign_with.is_some() {
                    unsigned = 0;
                    last_sign = Instant::now();
                } else {
                    unsigned += events.len() as u64;
                }
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
        if !checkpoint_acks.is_empty() || unsigned >= CHECKPOINT_EVERY {
            let result = sign(&pool, &signer, &mut known)
                .await
                .map_err(|e| e.to_string());
            if result.is_ok() {
                unsigned = 0;
                last_sign = Instant::now();
            }
            for ack in checkpoint_acks {
                let _ = ack.send(result.clone());
            }
        }
    }
    if unsigned > 0 {
        let _ = sign(&pool, &signer, &mut known).await;
    }
}
