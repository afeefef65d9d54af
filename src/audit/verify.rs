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
use super::lineage::{self, Lineage};

/// postern signs the chain head within 10 s of an event (and at start and shutdown):
/// a log that went on for longer than this past its last signed event without another
/// signature lost its checkpoints.
pub const UNSIGNED_GRACE_MS: i64 = 30_000;
/// Events dated further ahead of the verifying clock than this were dated by hand.
pub const FUTURE_SKEW_MS: i64 = 300_000;

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
    keys: Lineage,
    keys_expected: bool,
    next_seq: Option<i64>,
    prev: String,
    checkpoints: BTreeMap<i64, CheckpointIn>,
    /// (seq of the session.end, file, expected sha256)
    recordings: Vec<(i64, String, String)>,
    /// Every seal of every recording: file → (seq, bytes, sha256), checked all, so a
    /// later seal or a `session.end` cannot re-baseline bytes sealed before.
    sealed: BTreeMap<String, Vec<(i64, u64, String)>>,
    /// Heads kept outside (`audit head`, a witness): the log must still hold each one.
    heads: BTreeMap<i64, CheckpointIn>,
    /// Events no checkpoint seen so far covers: the first one's seq, the newest time.
    unsigned: Option<(i64, i64)>,
    /// The time of the last signed event, of the first event, and whether the walk
    /// started at a prune anchor.
    signed_time: Option<i64>,
    first_time: Option<i64>,
    last_time: i64,
    anchored: bool,
    /// The verifying clock, for a store (strict about unsigned and future events).
    now_ms: Option<i64>,
    first_seq: Option<i64>,
    report: Report,
}

impl Verifier {
    /// The key among those met that signed `c`; else `what` names the signed thing.
    fn signed(&self, c: &CheckpointIn, what: impl FnOnce() -> String) -> Result<usize, Broken> {
        self.keys
            .signer(&chain::checkpoint_message(c.seq, &c.hash), &c.signature)
            .ok_or_else(|| Broken {
                seq: c.seq,
                what: what(),
            })
    }

    /// A verifier trusting `key`, and every key the log hands over to from it (or from
    /// which the log hands over to it).
    pub fn new(key: PublicKey) -> Verifier {
        Verifier {
            keys: Lineage::new(key),
            keys_expected: false,
            next_seq: None,
            prev: GENESIS.to_string(),
            checkpoints: BTreeMap::new(),
            recordings: Vec::new(),
            sealed: BTreeMap::new(),
            heads: BTreeMap::new(),
            unsigned: None,
            signed_time: None,
            first_time: None,
            last_time: 0,
            anchored: false,
            now_ms: None,
            first_seq: None,
            report: Report::default(),
        }
    }

    /// The keys the log's handovers name, read ahead of the walk
    /// ([`lineage::named_keys`]): checkpoints signed before their key's handover are then
    /// checked as they come.
    pub fn expect_keys(&mut self, keys: impl IntoIterator<Item = PublicKey>) {
        self.keys.expect(keys);
        self.keys_expected = true;
    }

    /// Whether the keys were read ahead already ([`Verifier::expect_keys`]).
    pub fn keys_expected(&self) -> bool {
        self.keys_expected
    }

    /// An audit key handover or retirement named ahead of an export's events (each
    /// handover carries both keys' signatures; the chain walk adds those in its range).
    pub fn key_event(
        &mut self,
        seq: i64,
        kind: &str,
        details: &serde_json::Value,
    ) -> Result<(), Broken> {
        if kind != lineage::ROTATED && kind != lineage::RETIRED {
            return Err(Broken {
                seq,
                what: format!(
                    "an audit key line of unknown type `{}`",
                    crate::printable::cell(kind)
                ),
            });
        }
        self.keys.event(seq, kind, details)
    }

    /// Starts after a prune anchor (signed) instead of genesis.
    pub fn anchor(&mut self, a: &CheckpointIn) -> Result<(), Broken> {
        let key = self.signed(a, || {
            format!("the prune anchor at seq {} has a bad signature", a.seq)
        })?;
        self.keys.signed_statement(key, a.seq);
        self.next_seq = Some(a.seq + 1);
        self.prev = a.hash.clone();
        self.anchored = true;
        Ok(())
    }

    /// A head saved earlier with `audit head`: signed by the audit key, and the log must
    /// still hold that event, unchanged.
    pub fn expect_head(&mut self, h: CheckpointIn) -> Result<(), Broken> {
        let key = self.signed(&h, || {
            format!(
                "the saved head (seq {}) has a bad signature: it was not made with this audit key",
                h.seq
            )
        })?;
        self.keys.signed_statement(key, h.seq);
        self.heads.insert(h.seq, h);
        Ok(())
    }

    /// Starts mid-chain (an export that begins later): trust the first link as given.
    pub fn start_at(&mut self, seq: i64, prev: &str) {
        self.next_seq = Some(seq);
        self.prev = prev.to_string();
    }

    pub fn checkpoint(&mut self, c: CheckpointIn) -> Result<(), Broken> {
        let key = self.signed(&c, || {
            format!(
                "checkpoint at seq {} has a bad signature (forged, or signed by another key)",
                c.seq
            )
        })?;
        self.keys.signed_checkpoint(key, c.seq);
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
        let key = self.signed(&c, || {
            format!(
                "checkpoint at seq {} has a bad signature (forged, or signed by another key)",
                c.seq
            )
        })?;
        self.keys.signed_checkpoint(key, c.seq);
        self.report.checkpoints += 1;
        self.report.last_signed = c.seq;
        self.unsigned = None;
        self.signed_time = Some(self.last_time);
        Ok(())
    }

    /// The signed trailer that ends an export: it must describe exactly what was read.
    pub fn trailer(&mut self, t: &Trailer) -> Result<(), Broken> {
        let broken = |what: String| Broken {
            seq: t.last_seq,
            what,
        };
        let Some(key) = self.keys.signer(&t.message(), &t.signature) else {
            return Err(broken(
                "the export's trailer has a bad signature (forged, or signed by another key)"
                    .into(),
            ));
        };
        self.keys.signed_trailer(key, t.last_seq);
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
        self.unsigned = None;
        Ok(())
    }

    /// Verifies a store as of `now_ms`: strict about events left unsigned and events
    /// dated in the future.
    pub fn at(&mut self, now_ms: i64) {
        self.now_ms = Some(now_ms);
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
        if let Some(h) = self.heads.get(&seq)
            && h.hash != computed
        {
            return Err(Broken {
                seq,
                what: format!(
                    "event seq {seq} is not the one the saved head vouches for: the log was rewritten"
                ),
            });
        }
        if e.kind == lineage::ROTATED || e.kind == lineage::RETIRED {
            self.keys.event(seq, &e.kind, &e.details)?;
        }
        if e.kind == "recording.progress"
            && let (Some(file), Some(bytes), Some(sha)) = (
                e.details.get("file").and_then(|f| f.as_str()),
                e.details.get("bytes").and_then(|b| b.as_u64()),
                e.details.get("sha256").and_then(|s| s.as_str()),
            )
        {
            self.sealed
                .entry(file.to_string())
                .or_default()
                .push((seq, bytes, sha.to_string()));
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
        self.first_seq.get_or_insert(seq);
        self.first_time.get_or_insert(e.time_ms);
        self.last_time = e.time_ms;
        if let Some(now) = self.now_ms
            && e.time_ms > now.saturating_add(FUTURE_SKEW_MS)
        {
            return Err(Broken {
                seq,
                what: format!(
                    "event seq {seq} (id {id}) is dated {}, in the future: its time was set by hand",
                    super::format_ms(e.time_ms)
                ),
            });
        }
        if self.checkpoints.contains_key(&seq) {
            self.unsigned = None;
            self.signed_time = Some(e.time_ms);
        } else {
            let newest = self.unsigned.map_or(e.time_ms, |(_, t)| t.max(e.time_ms));
            let first = self.unsigned.map_or(seq, |(s, _)| s);
            self.unsigned = Some((first, newest));
        }
        Ok(())
    }

    /// Final checks: checkpoints or a saved head beyond the end (truncation), events that
    /// should have been signed by `now_ms` (a store; an export's trailer signs all of
    /// it), and recordings under `recordings` (the recordings dir).
    /// The recordings `finish` reads (as the session index names them).
    pub fn recording_files(&self) -> Vec<String> {
        let mut files: Vec<String> = self.recordings.iter().map(|(_, f, _)| f.clone()).collect();
        files.extend(self.sealed.keys().cloned());
        files.sort();
        files.dedup();
        files
    }

    pub fn finish(
        mut self,
        recordings: Option<&Path>,
        now_ms: Option<i64>,
    ) -> Result<Report, Broken> {
        self.keys.settle()?;
        let last = self.report.last_seq;
        if let Some((&seq, _)) = self.heads.range(last + 1..).next() {
            return Err(Broken {
                seq,
                what: format!(
                    "a saved head is seq {seq}, but the log ends at seq {last}: events were removed from the end"
                ),
            });
        }
        if let (Some(now), Some((seq, newest))) = (now_ms.or(self.now_ms), self.unsigned) {
            let first = self.first_time.unwrap_or(newest);
            let reference = self.signed_time.unwrap_or(first);
            let none_at_all =
                self.checkpoints.is_empty() && self.report.checkpoints == 0 && !self.anchored;
            if none_at_all && now.saturating_sub(first) > UNSIGNED_GRACE_MS {
                return Err(Broken {
                    seq,
                    what: "there is no signed checkpoint at all, and the log is older than postern's signing interval: checkpoints were deleted".into(),
                });
            }
            if newest.saturating_sub(reference) > UNSIGNED_GRACE_MS {
                return Err(Broken {
                    seq,
                    what: format!(
                        "events from seq {seq} on go on until {} ({} s after the last signed event), but no signed checkpoint covers them, though postern signs within 10 s: checkpoints were deleted or the log was rewritten after them",
                        super::format_ms(newest),
                        newest.saturating_sub(reference) / 1000
                    ),
                });
            }
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
        if let Some(dir) = recordings {
            for (seq, file, sha) in &self.recordings {
                let path: PathBuf = crate::recording::resolve(dir, file);
                let data = std::fs::read(&path).map_err(|e| Broken {
                    seq: *seq,
                    what: format!(
                        "recording {} named by event seq {seq} cannot be read: {e}",
                        file
                    ),
                })?;
                if chain::sha256_hex(&data) != *sha {
                    return Err(Broken {
                        seq: *seq,
                        what: format!(
                            "recording {} named by event seq {seq} was changed: its SHA-256 differs",
                            file
                        ),
                    });
                }
                self.report.recordings += 1;
            }
            let ended: std::collections::BTreeSet<&str> =
                self.recordings.iter().map(|(_, f, _)| f.as_str()).collect();
            for (file, seals) in &self.sealed {
                let path: PathBuf = crate::recording::resolve(dir, file);
                let first = seals.first().map_or(0, |s| s.0);
                let data = std::fs::read(&path).map_err(|e| Broken {
                    seq: first,
                    what: format!(
                        "recording {} sealed by event seq {first} cannot be read: {e}",
                        file
                    ),
                })?;
                // One pass: the running hash at each sealed length.
                let mut seals: Vec<&(i64, u64, String)> = seals.iter().collect();
                seals.sort_by_key(|s| s.1);
                let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                let mut at = 0usize;
                for (seq, bytes, sha) in seals {
                    let broken = |what: String| Broken { seq: *seq, what };
                    let end = usize::try_from(*bytes)
                        .ok()
                        .filter(|n| *n <= data.len())
                        .ok_or_else(|| {
                            broken(format!(
                                "recording {} was sealed at {bytes} bytes by event seq {seq} but holds {} now: it was cut",
                                file,
                                data.len()
                            ))
                        })?;
                    hash.update(&data[at..end]);
                    at = end;
                    let got: String = hash
                        .clone()
                        .finish()
                        .as_ref()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    if got != *sha {
                        return Err(broken(format!(
                            "recording {} was changed within the {bytes} bytes event seq {seq} sealed",
                            file
                        )));
                    }
                }
                if !ended.contains(file.as_str()) {
                    self.report.open_recordings += 1;
                }
            }
        }
        Ok(self.report)
    }
}
