//! Cancel keys: each client gets postern's own (process id, secret) in `BackendKeyData`;
//! a `CancelRequest` carrying it is passed to the target with the target's key, so the
//! target's key never leaves postern and Ctrl-C in psql cancels through the bastion.

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
    /// A fresh key for a session whose target backend has `key` at `addr`.
    pub fn register(&self, addr: &str, key: Option<(i32, i32)>) -> (i32, i32) {
        let Ok(mut m) = self.entries.lock() else {
            return (0, 0);
        };
        loop {
            let ours = (random_i32() & i32::MAX, random_i32());
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
        let found = self
            .entries
            .lock()
            .ok()
            .and_then(|m| m.get(&(pid, secret)).map(|e| (e.addr.clone(), e.key)));
        let Some((addr, Some((tpid, tsecret)))) = found else {
            debug!("cancel request with an unknown key");
            return;
        };
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
