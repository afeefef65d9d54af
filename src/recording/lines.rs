//! Line recordings (PostgreSQL transcripts, JSON lines) for high statement rates.
//!
//! Producers append whole lines to a shared buffer instead of waking a writer per line;
//! the writer takes the buffer at least every second, or as soon as it holds 64 KiB, and
//! appends it to the file (hashing as it goes). Over 4 MiB unwritten, producers wait:
//! backpressure, nothing dropped. A write error fails the recording (fail closed).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::store::Sink;
use super::{Finished, RecordingError};

/// The writer is woken early when this much is waiting.
const FLUSH_AT: usize = 64 * 1024;
/// Producers wait while this much is unwritten.
const HIGH_WATER: usize = 4 * 1024 * 1024;

struct Shared {
    buf: Mutex<Vec<u8>>,
    /// Wakes the writer (enough data, or closing).
    more: Notify,
    /// Wakes producers waiting for room.
    room: Notify,
    closing: CancellationToken,
    failed: CancellationToken,
    /// `failed`, readable without a lock (checked on every append).
    failed_flag: AtomicBool,
}

pub struct LineRecorder {
    shared: Arc<Shared>,
    seal: super::seal::SealCell,
    done: oneshot::Receiver<Result<Finished, RecordingError>>,
}

impl LineRecorder {
    /// Creates the recording `stored` (a file: 0600, never overwriting) with `first` as
    /// its first line; an error here means the session must not start.
    pub async fn create(
        store: &super::RecordingStore,
        stored: &str,
        first: &str,
    ) -> Result<LineRecorder, RecordingError> {
        let head = format!("{first}\n");
        let sink = store.create(stored, head.as_bytes()).await?;
        let mut hash = Context::new(&SHA256);
        hash.update(head.as_bytes());
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT)),
            more: Notify::new(),
            room: Notify::new(),
            closing: CancellationToken::new(),
            failed: CancellationToken::new(),
            failed_flag: AtomicBool::new(false),
        });
        let (tx, done) = oneshot::channel();
        let s = shared.clone();
        let sealer = super::seal::Sealer::new();
        let seal = sealer.cell();
        tokio::spawn(async move {
            let result = write_loop(&s, sink, hash, head.len() as u64, sealer).await;
            if result.is_err() {
                s.failed_flag.store(true, Ordering::Release);
                s.failed.cancel();
            }
            // Nobody may wait for room that will never come.
            s.room.notify_waiters();
            let _ = tx.send(result);
        });
        Ok(LineRecorder { shared, seal, done })
    }

    /// The recording's latest seal, while it is written (`recording::seal`).
    pub fn seal(&self) -> super::seal::SealCell {
        self.seal.clone()
    }

    /// A handle that appends to this recording from another task.
    pub fn sink(&self) -> LineSink {
        LineSink {
            shared: self.shared.clone(),
        }
    }

    /// Fires when the recording can no longer be written.
    pub fn failed(&self) -> CancellationToken {
        self.shared.failed.clone()
    }

    /// Writes what is left, syncs and hashes.
    pub async fn finish(self) -> Result<Finished, RecordingError> {
        self.shared.closing.cancel();
        self.shared.more.notify_one();
        self.done.await.unwrap_or(Err(RecordingError::Stopped))
    }
}

/// Appends lines to a `LineRecorder` (which alone can finish it).
#[derive(Clone)]
pub struct LineSink {
    shared: Arc<Shared>,
}

impl LineSink {
    /// Fires when the recording can no longer be written.
    pub fn failed(&self) -> CancellationToken {
        self.shared.failed.clone()
    }

    /// Appends whole lines (each ending in a newline), waiting while too much is
    /// unwritten. A relay hands over everything one read produced in one call.
    pub async fn append(&self, lines: &[u8]) -> Result<(), RecordingError> {
        loop {
            if self.shared.failed_flag.load(Ordering::Acquire) {
                return Err(RecordingError::Stopped);
            }
            let room = self.shared.room.notified();
            {
                let mut buf = self
                    .shared
                    .buf
                    .lock()
                    .map_err(|_| RecordingError::Stopped)?;
                if buf.len() < HIGH_WATER {
                    buf.extend_from_slice(lines);
                    if buf.len() >= FLUSH_AT {
                        self.shared.more.notify_one();
                    }
                    return Ok(());
                }
            }
            self.shared.more.notify_one();
            room.await;
        }
    }
}

async fn write_loop(
    s: &Shared,
    mut sink: Sink,
    mut hash: Context,
    mut bytes: u64,
    mut sealer: super::seal::Sealer,
) -> Result<Finished, RecordingError> {
    let mut out = Vec::with_capacity(FLUSH_AT);
    loop {
        let closing = s.closing.is_cancelled();
        {
            let mut buf = s.buf.lock().map_err(|_| RecordingError::Stopped)?;
            std::mem::swap(&mut *buf, &mut out);
        }
        if !out.is_empty() {
            s.room.notify_waiters();
            let started = std::time::Instant::now();
            sink.write(&out).await?;
            hash.update(&out);
            bytes += out.len() as u64;
            out.clear();
            sink.flush().await?;
            crate::metrics::recording_write(started.elapsed());
        } else {
            // A bucket may still hold back bytes until its interval has passed.
            sink.flush().await?;
        }
        // The bytes a seal names are stored, not in flight.
        if sink.stored() {
            sealer.maybe_seal(&hash, bytes);
        }
        if closing {
            break;
        }
        tokio::select! {
            _ = s.more.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    sink.finish().await?;
    let digest = hash.finish();
    Ok(Finished {
        path: PathBuf::from(sink.describe()),
        sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_all_written_in_order_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/t.jsonl");
        let store = crate::recording::RecordingStore::dir(dir.path().to_path_buf());
        let r = LineRecorder::create(&store, "recordings/a/b/t.jsonl", "{\"head\":1}")
            .await
            .unwrap();
        let big = "x".repeat(1000);
        let sink = r.sink();
        for i in 0..10_000 {
            sink.append(format!("{i} {big}\n").as_bytes())
                .await
                .unwrap();
        }
        let done = r.finish().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10_001);
        assert_eq!(lines[0], "{\"head\":1}");
        assert!(lines[10_000].starts_with("9999 "));
        assert_eq!(done.bytes as usize, text.len());
        let want = aws_lc_rs::digest::digest(&SHA256, text.as_bytes());
        let hex: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(done.sha256, hex);
        // Never overwrites.
        assert!(
            LineRecorder::create(&store, "recordings/a/b/t.jsonl", "x")
                .await
                .is_err()
        );
    }
}
