//! Cancel keys: each client gets the target backend's real process id with postern's own
//! secret in `BackendKeyData` (so `pg_backend_pid()` and notification PIDs match what the
//! client was told); a `CancelRequest` carrying it is passed to the target with the
//! target's secret, which never leaves postern. Ctrl-C in psql cancels through the bastion.
//!
//! Behind a load balancer the cancel connection may reach another replica: each replica
//! publishes its keys to the store (`share`, every 100 ms; the target's key sealed with
//! the master key, the client's key only as a hash), and a key unknown here is looked up
//! there before it is ignored.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use crate::credentials::secrets::MasterKey;
use crate::store::{SharedCancel, Store};

/// Ended keys kept for the store while it cannot be written at most.
const MAX_PENDING_REMOVALS: usize = 100_000;

struct Entry {
    addr: String,
    key: Option<(i32, i32)>,
}

#[derive(Default)]
pub struct CancelMap {
    entries: Mutex<HashMap<(i32, i32), Entry>>,
    outbox: Mutex<Outbox>,
    /// Store lookups of keys unknown here in the current second: cancel requests need no
    /// login, so a flood of made-up keys must not become a flood of store queries.
    lookups: Mutex<(Option<std::time::Instant>, u32)>,
}

/// Store lookups of unknown cancel keys per second at most; past it they are ignored.
const LOOKUPS_PER_SECOND: u32 = 100;

/// Keys registered or ended here since the store last heard.
#[derive(Default)]
struct Outbox {
    add: HashMap<(i32, i32), (String, (i32, i32))>,
    remove: Vec<(i32, i32)>,
}

/// How a key is named in the store: hex SHA-256 of the process id and secret.
fn key_hash(ours: (i32, i32)) -> String {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&ours.0.to_be_bytes());
    b[4..].copy_from_slice(&ours.1.to_be_bytes());
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &b);
    d.as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

fn purpose(hash: &str) -> String {
    format!("cancel-key:{hash}")
}

fn random_i32() -> i32 {
    let mut b = [0u8; 4];
    // The system generator failing leaves a zero key, which still works (just guessable).
    let _ = aws_lc_rs::rand::fill(&mut b);
    i32::from_be_bytes(b)
}

impl CancelMap {
    /// A fresh key for a session whose target backend has `key` at `addr`: the backend's
    /// process id and a secret of postern's.
    pub fn register(&self, addr: &str, key: Option<(i32, i32)>) -> (i32, i32) {
        let Ok(mut m) = self.entries.lock() else {
            return (0, 0);
        };
        loop {
            let pid = key.map_or_else(|| random_i32() & i32::MAX, |k| k.0);
            let ours = (pid, random_i32());
            if let std::collections::hash_map::Entry::Vacant(v) = m.entry(ours) {
                v.insert(Entry {
                    addr: addr.to_string(),
                    key,
                });
                if let (Some(k), Ok(mut o)) = (key, self.outbox.lock()) {
                    o.add.insert(ours, (addr.to_string(), k));
                }
                return ours;
            }
        }
    }

    pub fn unregister(&self, ours: (i32, i32)) {
        let shared = match self.entries.lock() {
            Ok(mut m) => m.remove(&ours).is_some_and(|e| e.key.is_some()),
            Err(_) => false,
        };
        if let Ok(mut o) = self.outbox.lock()
            && o.add.remove(&ours).is_none()
            && shared
        {
            o.remove.push(ours);
        }
    }

    /// Passes a cancel request on to the target: a key of this replica's, or one another
    /// replica published in the store. Unknown keys are ignored, as PostgreSQL does.
    pub async fn forward(&self, pid: i32, secret: i32, store: &Store, master: &MasterKey) {
        if let Some(dest) = self.lookup(pid, secret) {
            return dest.send().await;
        }
        if !self.may_look_up() {
            debug!("cancel request with an unknown key (store lookups spent for this second)");
            return;
        }
        let hash = key_hash((pid, secret));
        let found = match store.cancel_key(&hash).await {
            Ok(found) => found,
            Err(e) => {
                debug!(error = %e, "cannot look a cancel key up in the store");
                None
            }
        };
        let dest = found.and_then(|c| {
            let plain = master.open(&purpose(&hash), &c.sealed).ok()?;
            let k: [u8; 8] = plain.try_into().ok()?;
            Some(Dest {
                addr: c.addr,
                key: (
                    i32::from_be_bytes([k[0], k[1], k[2], k[3]]),
                    i32::from_be_bytes([k[4], k[5], k[6], k[7]]),
                ),
            })
        });
        match dest {
            Some(dest) => dest.send().await,
            None => debug!("cancel request with an unknown key"),
        }
    }

    /// Whether a store lookup fits in this second's budget.
    fn may_look_up(&self) -> bool {
        let Ok(mut l) = self.lookups.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        if l.0
            .is_none_or(|since| now.duration_since(since) >= Duration::from_secs(1))
        {
            *l = (Some(now), 0);
        }
        l.1 += 1;
        l.1 <= LOOKUPS_PER_SECOND
    }

    /// Publishes the keys registered and ended since the last call (the target's key
    /// sealed); on failure they are kept for the next.
    pub async fn share(
        &self,
        store: &Store,
        replica: &str,
        master: &MasterKey,
    ) -> Result<(), crate::store::StoreError> {
        let Ok(mut o) = self.outbox.lock().map(|mut o| std::mem::take(&mut *o)) else {
            return Ok(());
        };
        if o.add.is_empty() && o.remove.is_empty() {
            return Ok(());
        }
        let mut add = Vec::with_capacity(o.add.len());
        for (ours, (addr, (tpid, tsecret))) in &o.add {
            let hash = key_hash(*ours);
            let mut key = tpid.to_be_bytes().to_vec();
            key.extend_from_slice(&tsecret.to_be_bytes());
            let Ok(sealed) = master.seal(&purpose(&hash), &key) else {
                continue;
            };
            add.push(SharedCancel {
                key_hash: hash,
                addr: addr.clone(),
                sealed,
            });
        }
        let remove: Vec<String> = o.remove.iter().map(|k| key_hash(*k)).collect();
        if let Err(e) = store.put_cancel_keys(replica, &add, &remove).await {
            // Back in the outbox (bounded by the live sessions and those that ended).
            if let Ok(mut now) = self.outbox.lock() {
                for (k, v) in o.add.drain() {
                    now.add.entry(k).or_insert(v);
                }
                if now.remove.len() < MAX_PENDING_REMOVALS {
                    now.remove.append(&mut o.remove);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Where a cancel request with this key goes.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<Dest> {
        let m = self.entries.lock().ok()?;
        let e = m.get(&(pid, secret))?;
        Some(Dest {
            addr: e.addr.clone(),
            key: e.key?,
        })
    }
}

/// A target backend to cancel.
pub struct Dest {
    addr: String,
    key: (i32, i32),
}

impl Dest {
    pub async fn send(self) {
        let Dest {
            addr,
            key: (tpid, tsecret),
        } = self;
        let mut buf = BytesMut::new();
        frontend::cancel_request(tpid, tsecret, &mut buf);
        let send = async {
            let mut s = TcpStream::connect(&addr).await?;
            s.write_all(&buf).await?;
            s.shutdown().await
        };
        match tokio::time::timeout(Duration::from_secs(5), send).await {
            Ok(Ok(())) => debug!(target = %addr, "cancel request forwarded"),
            Ok(Err(e)) => debug!(target = %addr, error = %e, "cannot forward a cancel request"),
            Err(_) => debug!(target = %addr, "cancel request timed out"),
        }
    }
}
