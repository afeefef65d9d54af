//! Seals of recordings still being written. A session can run for days; until it ends,
//! its recording's SHA-256 is not in the audit log, so a line forged into it would pass
//! `audit verify`. Every writer keeps a running hash of what it wrote, and at most every
//! `SEAL_EVERY` (when it wrote something since) it publishes (bytes, SHA-256 of those
//! bytes). `serve` turns new seals into `recording.progress` audit events, which the
//! chain signs; `audit verify` checks that each open recording still begins with the
//! bytes its latest seal names.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::Context;

/// How often a writer seals what it has written.
pub const SEAL_EVERY: Duration = Duration::from_secs(30);

/// The latest seal of one recording: its length and the SHA-256 of those bytes.
#[derive(Clone, Default)]
pub struct SealCell(Arc<Mutex<Option<(u64, String)>>>);

impl SealCell {
    pub fn get(&self) -> Option<(u64, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, bytes: u64, sha256: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((bytes, sha256));
    }
}

/// A writer's side: seals when due.
pub(super) struct Sealer {
    cell: SealCell,
    last: Instant,
    sealed_bytes: u64,
}

impl Sealer {
    pub(super) fn new() -> Sealer {
        Sealer {
            cell: SealCell::default(),
            last: Instant::now(),
            sealed_bytes: 0,
        }
    }

    pub(super) fn cell(&self) -> SealCell {
        self.cell.clone()
    }

    /// Call once what `hash` covers is in the file (after a flush).
    pub(super) fn maybe_seal(&mut self, hash: &Context, bytes: u64) {
        if bytes == self.sealed_bytes || self.last.elapsed() < SEAL_EVERY {
            return;
        }
        let digest = hash.clone().finish();
        self.cell.set(
            bytes,
            digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        );
        self.sealed_bytes = bytes;
        self.last = Instant::now();
    }
}

/// The open recordings `serve` publishes seals for.
#[derive(Default)]
pub struct Seals {
    open: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

struct Entry {
    file: String,
    session: String,
    cell: SealCell,
    published: u64,
}

/// A recording watched while this lives.
pub struct Watch {
    seals: Arc<Seals>,
    id: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.seals
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A new seal to publish: (file as stored in the index, session id, bytes, SHA-256).
pub type Due = (String, String, u64, String);

impl Seals {
    /// Watches a recording (`file` as the session index stores it) until the guard drops.
    pub fn watch(self: &Arc<Self>, file: &str, session: &str, cell: SealCell) -> Watch {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Entry {
                file: file.to_string(),
                session: session.to_string(),
                cell,
                published: 0,
            },
        );
        Watch {
            seals: self.clone(),
            id,
        }
    }

    /// Seals made since the last call.
    pub fn due(&self) -> Vec<Due> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for e in open.values_mut() {
            if let Some((bytes, sha)) = e.cell.get()
                && bytes > e.published
            {
                e.published = bytes;
                out.push((e.file.clone(), e.session.clone(), bytes, sha));
            }
        }
        out
    }
}
