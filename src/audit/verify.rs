//! Walking the chain: every event must link to the one before, hash to its stored hash
//! and sit at the next sequence number; every checkpoint must carry a valid signature
//! over an event's hash; every recording named by a `session.end` must still hash the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use russh::keys::PublicKey;

use super::AuditEvent;
use super::chain::{self, GENESIS};

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
                }
            }
        }
        self.prev = computed;
        self.next_seq = Some(seq + 1);
        self.report.events += 1;
        self.report.last_seq = seq;
        Ok(())
    }

    /// Final checks: checkpoints beyond the end (truncation) and recordings under `data_dir`.
    pub fn finish(mut self, data_dir: Option<&Path>) -> Result<Report, Broken> {
        let last = self.report.last_seq;
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
        }
        Ok(self.report)
    }
}
