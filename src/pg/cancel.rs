//! Cancel keys: each client gets the target backend's real process id with postern's own
//! secret in `BackendKeyData` (so `pg_backend_pid()` and notification PIDs match what the
//! client was told); a `CancelRequest` carrying it is passed to the target with the
//! target's secret, which never leaves postern. Ctrl-C in psql cancels through the bastion.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

struct Entry {
    addr: String,
    key: Option<(i32, i32)>,
}

#[derive(Default)]
pub struct CancelMap {
    entries: Mutex<HashMap<(i32, i32), Entry>>,
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
                return ours;
            }
        }
    }

    pub fn unregister(&self, ours: (i32, i32)) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(&ours);
        }
    }

    /// Passes a cancel request on to the target; unknown keys are ignored, as PostgreSQL does.
    pub async fn forward(&self, pid: i32, secret: i32) {
        match self.lookup(pid, secret) {
            Some(dest) => dest.send().await,
            None => debug!("cancel request with an unknown key"),
        }
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
