//! The SIEM mirror and the witness: follow the audit chain in the store and write each
//! new event (mirror) and each signed checkpoint (both) as one JSON line to standard
//! output or a file outside the data dir. Replicas share the events between their
//! mirrors through the store (`Store::mirror_take`): each event goes to one of them.

use std::io::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::audit::chain;
use crate::store::Store;

/// Follows the audit chain and writes it to `target` ("stdout" or a file, created 0600
/// and never through a symbolic link): each new event as one JSON line when `events`, and
/// every signed checkpoint as a `{"checkpoint": …}` line, starting with the newest one.
/// A witness (`[audit] witness`) is the checkpoints alone: kept outside the data dir, it
/// holds heads an attacker with the data dir cannot take back.
pub async fn run(
    store: Store,
    target: String,
    events: bool,
    from: i64,
    replica: String,
    stop: CancellationToken,
) {
    let mut sink: Box<dyn Write + Send> = if target == "stdout" {
        Box::new(std::io::stdout())
    } else {
        match crate::credentials::open_private_append(std::path::Path::new(&target), false) {
            Ok(f) => Box::new(std::io::LineWriter::new(f)),
            Err(e) => {
                warn!(path = %target, error = %e, "cannot open the audit mirror; mirroring is off");
                return;
            }
        }
    };
    let mut after = from;
    let mut after_cp = match store.audit_last_checkpoint().await {
        Ok(Some(c)) => {
            if writeln!(sink, "{}", checkpoint_line(&c)).is_err() {
                warn!(path = %target, "the audit mirror stopped accepting lines");
                return;
            }
            c.seq
        }
        _ => 0,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        if events {
            loop {
                let (start, page) = match store.mirror_take(&replica, from).await {
                    Ok(Some(taken)) => taken,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "cannot read audit events to mirror");
                        break;
                    }
                };
                for c in &page {
                    let line = chain::export_line(
                        c.seq,
                        &c.event,
                        c.prev_hash.as_deref().unwrap_or(""),
                        c.hash.as_deref().unwrap_or(""),
                    );
                    if writeln!(sink, "{line}").is_err() {
                        warn!(path = %target, "the audit mirror stopped accepting lines");
                        return;
                    }
                    after = after.max(c.seq);
                }
                if sink.flush().is_err() {
                    warn!(path = %target, "the audit mirror stopped accepting lines");
                    return;
                }
                if let Err(e) = store.mirror_written(&replica, start).await {
                    warn!(error = %e, "cannot mark mirrored audit events as written");
                }
            }
        }
        let mut lines = Vec::new();
        // Checkpoints up to what was mirrored (everything, for a witness).
        let upto = if events { after } else { i64::MAX };
        match store.audit_checkpoints(after_cp, upto).await {
            Ok(cps) => {
                for cp in &cps {
                    lines.push(checkpoint_line(cp));
                    after_cp = cp.seq;
                }
            }
            Err(e) => warn!(error = %e, "cannot read audit checkpoints to mirror"),
        }
        for line in &lines {
            if writeln!(sink, "{line}").is_err() {
                warn!(path = %target, "the audit mirror stopped accepting lines");
                return;
            }
        }
        let _ = sink.flush();
        if stopping {
            return;
        }
    }
}

/// The newest head a witness file holds (its last checkpoint line), if there is one.
pub fn witness_head(target: &str) -> Option<(i64, String)> {
    if target.is_empty() || target == "stdout" {
        return None;
    }
    // The file grows by a line every few seconds for as long as postern runs, and every
    // local command asks: read its tail only (a checkpoint line is far shorter).
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 8192;
    let mut f = std::fs::File::open(target).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let c = v.get("checkpoint")?;
        Some((
            c.get("seq")?.as_i64()?,
            c.get("hash")?.as_str()?.to_string(),
        ))
    })
}

/// Tells the store's signer the witness's newest head, so nothing is signed over a log
/// that no longer holds it.
pub async fn expect_witness(store: &Store, target: &str) {
    if let Some((seq, hash)) = witness_head(target) {
        store.audit_expect(seq, hash).await;
    }
}

fn checkpoint_line(c: &crate::store::Checkpoint) -> String {
    serde_json::json!({ "checkpoint": { "seq": c.seq, "hash": c.hash, "signature": c.signature, "time": crate::audit::format_ms(c.time_ms) } }).to_string()
}
