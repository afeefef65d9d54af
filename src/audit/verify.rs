//! Walking the chain: every event must link to the one before, hash to its stored hash
//! and sit at the next sequence number; every checkpoint must carry a valid signature
//! over an event's hash; every recording named by a `session.end` must still hash the
//! same, and every open recording must still begin with what `recording.progress`
//! sealed. Strict about what is missing: events older than the signing interval that no
//! checkpoint covers, an export without its signed trailer, a head an auditor saved that
//! the log no longer reaches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use russh::keys::PublicKey;

use super::AuditEvent;
use super::chain::{self, GENESIS, Trailer};

/// postern signs the chain head within 10 s of an event (and at start and shutdown);
/// an event older than this with no checkpoint after it lost its checkpoint.
pub const UNSIGNED_GRACE_MS: i64 = 30_000;

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct Broken {
    pub seq: i64,
    pub what: String,
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub events: u64,
    pub checkpoints: u64,
    pub recordings: u64,
    /// Recordings of sessions still running, checked up to their latest seal.
    pub open_recordings: u64,
    pub last_seq: i64,
    pub last_signed: i64,
}

pub struct CheckpointIn {
    pub seq: i64,
    pub hash: String,
    pub signature: String,
}

pub struct Verifier {
    key: PublicKey,
    next_seq: Option<i64>,
    prev: String,
    checkpoints: BTreeMap<i64, CheckpointIn>,
    /// (seq of the session.end, file, expected sha256)
    recordings: Vec<(i64, String, String)>,
    /// The latest seal of each recording still open: file → (seq, bytes, sha256).
    sealed: BTreeMap<String, (i64, u64, String)>,
    /// A head an auditor saved earlier (`audit head`), which the log must still reach.
    head: Option<CheckpointIn>,
    /// The oldest event (seq, time) that no checkpoint seen so far covers.
    unsigned_since: Option<(i64, i64)>,
    first_seq: Option<i64>,
    report: Report,
}

impl Verifier {
    pub fn new(key: PublicKey) -> Verifier {
        Verifier {
            key,
            next_seq: None,
            prev: GENESIS.to_string(),
            checkpoints: BTreeMap::new(),
            recordings: Vec::new(),
            sealed: BTreeMap::new(),
            head: None,
            unsigned_since: None,
            first_seq: None,
            report: Report::default(),
        }
    }

    /// Starts after a prune anchor (signed) instead of genesis.
    pub fn anchor(&mut self, a: &CheckpointIn) -> Result<(), Broken> {
        if !chain::verify_checkpoint(&self.key, a.seq, &a.hash, &a.signature) {
            return Err(Broken {
                seq: a.seq,
                what: format!("the prune anchor at seq {} has a bad signature", a.seq),
            });
        }
        self.next_seq = Some(a.seq + 1);
        self.prev = a.hash.clone();
        Ok(())
    }

    /// A head saved earlier with `audit head`: signed by the audit key, and the log must
    /// still hold that event, unchanged.
    pub fn expect_head(&mut self, h: CheckpointIn) -> Result<(), Broken> {
        if !chain::verify_checkpoint(&self.key, h.seq, &h.hash, &h.signature) {
            return Err(Broken {
                seq: h.seq,
                what: format!(
                    "the saved head (seq {}) has a bad signature: it was not made with this audit key",
                    h.seq
                ),
            });
        }
        self.head = Some(h);
        Ok(())
    }

    /// Starts mid-chain (an export that begins later): trust the first link as given.
    pub fn start_at(&mut self, seq: i64, prev: &str) {
        self.next_seq = Some(seq);
        self.prev = prev.to_string();
    }

    pub fn checkpoint(&mut self, c: CheckpointIn) -> Result<(), Broken> {
        if !chain::verify_checkpoint(&self.key, c.seq, &c.hash, &c.signature) {
            return Err(Broken {
                seq: c.seq,
                what: format!(
                    "checkpoint at seq {} has a bad signature (forged, or signed by another key)",
                    c.seq
                ),
            });
        }
        self.checkpoints.insert(c.seq, c);
        Ok(())
    }

    /// A checkpoint read after the event it vouches for (exported files).
    pub fn checkpoint_after(&mut self, c: CheckpointIn) -> Result<(), Broken> {
        if c.seq != self.report.last_seq || c.hash != self.prev {
            return Err(Broken {
                seq: c.seq,
                what: format!(
                    "checkpoint for seq {} does not match the event before it: the file was edited",
                    c.seq
                ),
            });
        }
        if !chain::verify_checkpoint(&self.key, c.seq, &c.hash, &c.signature) {
            return Err(Broken {
                seq: c.seq,
                what: format!(
                    "checkpoint at seq {} has a bad signature (forged, or signed by another key)",
                    c.seq
                ),
            });
        }
        self.report.checkpoints += 1;
        self.report.last_signed = c.seq;
        self.unsigned_since = None;
        Ok(())
    }

    /// The signed trailer that ends an export: it must describe exactly what was read.
    pub fn trailer(&mut self, t: &Trailer) -> Result<(), Broken> {
        let broken = |what: String| Broken {
            seq: t.last_seq,
            what,
        };
        if !chain::verify_message(&self.key, &t.message(), &t.signature) {
            return Err(broken(
                "the export's trailer has a bad signature (forged, or signed by another key)"
                    .into(),
            ));
        }
        let first = self.first_seq.unwrap_or(0);
        let last_hash = if self.report.events == 0 {
            ""
        } else {
            self.prev.as_str()
        };
        if t.first_seq != first {
            return Err(broken(format!(
                "the export was signed starting at seq {} but begins at seq {first}: its head was cut or lines were added",
                t.first_seq
            )));
        }
        if t.events != self.report.events
            || t.last_seq != self.report.last_seq
            || t.last_hash != last_hash
        {
            return Err(broken(format!(
                "the export was signed with {} events up to seq {} but holds {} up to seq {}: its tail was cut or lines were removed or added",
                t.events, t.last_seq, self.report.events, self.report.last_seq
            )));
        }
        if t.checkpoints != self.report.checkpoints {
            return Err(broken(format!(
                "the export was signed with {} checkpoints but holds {}: checkpoint lines were removed or added",
                t.checkpoints, self.report.checkpoints
            )));
        }
        self.unsigned_since = None;
        Ok(())
    }

    pub fn event(
        &mut self,
        seq: i64,
        e: &AuditEvent,
        prev_hash: Option<&str>,
        hash: Option<&str>,
    ) -> Result<(), Broken> {
        let expected = self.next_seq.unwrap_or(1);
        let id = e.id;
        if seq != expected {
            let what = if seq > expected {
                format!("event seq {expected} is missing before seq {seq} (id {id}): deleted")
            } else {
                format!(
                    "event seq {seq} (id {id}) is out of order or duplicated: expected seq {expected}"
                )
            };
            return Err(Broken { seq, what });
        }
        if prev_hash != Some(self.prev.as_str()) {
            return Err(Broken {
                seq,
                what: format!(
                    "event seq {seq} (id {id}) does not link to the event before it: an event was deleted, inserted or reordered"
                ),
            });
        }
        let computed = chain::event_hash(seq, e, &self.prev);
        if hash != Some(computed.as_str()) {
            return Err(Broken {
                seq,
                what: format!(
                    "event seq {seq} (id {id}, {}) was modified: its content does not match its hash",
                    e.kind
                ),
            });
        }
        if let Some(c) = self.checkpoints.get(&seq)
            && c.hash != computed
        {
            return Err(Broken {
                seq,
                what: format!(
                    "checkpoint at seq {seq} vouches for a different event: the log was rewritten"
                ),
            });
        }
        if let Some(h) = &self.head
            && h.seq == seq
            && h.hash != computed
        {
            return Err(Broken {
                seq,
                what: format!(
                    "event seq {seq} is not the one the saved head vouches for: the log was rewritten"
                ),
            });
        }
        if e.kind == "recording.progress"
            && let (Some(file), Some(bytes), Some(sha)) = (
                e.details.get("file").and_then(|f| f.as_str()),
                e.details.get("bytes").and_then(|b| b.as_u64()),
                e.details.get("sha256").and_then(|s| s.as_str()),
            )
        {
            self.sealed
                .insert(file.to_string(), (seq, bytes, sha.to_string()));
        }
        if e.kind == "session.end"
            && let Some(recs) = e.details.get("recordings").and_then(|r| r.as_array())
        {
            for r in recs {
                if let (Some(file), Some(sha)) = (
                    r.get("file").and_then(|f| f.as_str()),
                    r.get("sha256").and_then(|s| s.as_str()),
                ) {
                    self.recordings
                        .push((seq, file.to_string(), sha.to_string()));
                    self.sealed.remove(file);
                }
            }
        }
        self.prev = computed;
        self.next_seq = Some(seq + 1);
        self.report.events += 1;
        self.report.last_seq = seq;
        self.first_seq.get_or_insert(seq);
        if self.checkpoints.contains_key(&seq) {
            self.unsigned_since = None;
        } else if self.unsigned_since.is_none() {
            self.unsigned_since = Some((seq, e.time_ms));
        }
        Ok(())
    }

    /// Final checks: checkpoints or a saved head beyond the end (truncation), events that
    /// should have been signed by `now_ms` (a store; an export's trailer signs all of
    /// it), and recordings under `data_dir`.
    pub fn finish(
        mut self,
        data_dir: Option<&Path>,
        now_ms: Option<i64>,
    ) -> Result<Report, Broken> {
        let last = self.report.last_seq;
        if let Some(h) = &self.head
            && h.seq > last
        {
            return Err(Broken {
                seq: h.seq,
                what: format!(
                    "the saved head is seq {}, but the log ends at seq {last}: events were removed from the end",
                    h.seq
                ),
            });
        }
        if let (Some(now), Some((seq, t))) = (now_ms, self.unsigned_since)
            && now.saturating_sub(t) > UNSIGNED_GRACE_MS
        {
            let why = if self.checkpoints.is_empty() && self.report.checkpoints == 0 {
                "there is no signed checkpoint at all"
            } else {
                "no signed checkpoint covers them"
            };
            return Err(Broken {
                seq,
                what: format!(
                    "events from seq {seq} ({}) on are older than postern's signing interval, but {why}: checkpoints were deleted or the log was rewritten (after a crash, starting `postern serve` signs the tail)",
                    super::format_ms(t)
                ),
            });
        }
        if let Some((&seq, _)) = self.checkpoints.range(last + 1..).next() {
            return Err(Broken {
                seq,
                what: format!(
                    "a checkpoint vouches for seq {seq}, but the log ends at seq {last}: events were removed from the end"
                ),
            });
        }
        if !self.checkpoints.is_empty() {
            self.report.checkpoints = self.checkpoints.len() as u64;
            self.report.last_signed = self.checkpoints.keys().next_back().copied().unwrap_or(0);
        }
        if let Some(dir) = data_dir {
            for (seq, file, sha) in &self.recordings {
                let path: PathBuf = dir.join(file);
                let data = std::fs::read(&path).map_err(|e| Broken {
                    seq: *seq,
                    what: format!(
                        "recording {} named by event seq {seq} cannot be read: {e}",
                        path.display()
                    ),
                })?;
                if chain::sha256_hex(&data) != *sha {
                    return Err(Broken {
                        seq: *seq,
                        what: format!(
                            "recording {} named by event seq {seq} was changed: its SHA-256 differs",
                            path.display()
                        ),
                    });
                }
                self.report.recordings += 1;
            }
            for (file, (seq, bytes, sha)) in &self.sealed {
                let path: PathBuf = dir.join(file);
                let broken = |what: String| Broken { seq: *seq, what };
                let data = std::fs::read(&path).map_err(|e| {
                    broken(format!(
                        "open recording {} sealed by event seq {seq} cannot be read: {e}",
                        path.display()
                    ))
                })?;
                let prefix = usize::try_from(*bytes)
                    .ok()
                    .and_then(|n| data.get(..n))
                    .ok_or_else(|| {
                        broken(format!(
                            "open recording {} was sealed at {bytes} bytes by event seq {seq} but holds {} now: it was cut",
                            path.display(),
                            data.len()
                        ))
                    })?;
                if chain::sha256_hex(prefix) != *sha {
                    return Err(broken(format!(
                        "open recording {} was changed within the {bytes} bytes event seq {seq} sealed",
                        path.display()
                    )));
                }
                self.report.open_recordings += 1;
            }
        }
        Ok(self.report)
    }
}
