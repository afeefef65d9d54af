//! The upstream connections of one client session, shared by its channels.
//!
//! A channel borrows a connection to the target (a `Lease`) with room for one more
//! channel, or a new one is made. A target's sshd allows `MaxSessions` (10) session
//! channels per connection, so a connection carries at most `CHANNELS_PER_CONNECTION`.
//! A connection whose last channel ended lingers for `LINGER` (so commands in a row and
//! sequential forwarded connections reuse it), then is closed; all of them close with
//! the session. One stalled channel does not hold up the others on its connection: the
//! session loop never waits for a channel's consumer (`vendor/russh/POSTERN.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::upstream::UpHandle;

/// Channels carried by one upstream connection (below OpenSSH's default MaxSessions).
const CHANNELS_PER_CONNECTION: usize = 8;
/// How long an upstream connection without channels is kept for the next one.
const LINGER: Duration = Duration::from_secs(2);

struct Conn {
    handle: Arc<UpHandle>,
    channels: AtomicUsize,
    /// Channels it takes at most: `CHANNELS_PER_CONNECTION`, or fewer once the target
    /// refused one (a `MaxSessions` below ours), so it is not asked again past that.
    room: AtomicUsize,
}

#[derive(Default)]
pub struct Pool {
    conns: tokio::sync::Mutex<Vec<Arc<Conn>>>,
    /// Held while a channel picks or makes a connection (see `SessionCtx::upstream_channel`);
    /// it holds the last failure to connect and when it happened, so channels queued
    /// behind a failed connect get its answer instead of each waiting for a timeout.
    pub opening: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How long a failure to connect answers the channels opened after it.
pub const FAILURE_HOLDS: Duration = Duration::from_secs(2);

/// One channel's use of an upstream connection; given back when dropped.
pub struct Lease {
    conn: Arc<Conn>,
    pool: Arc<Pool>,
    /// The connection was made for this lease (not reused).
    fresh: bool,
}

impl Lease {
    pub fn handle(&self) -> Arc<UpHandle> {
        self.conn.handle.clone()
    }

    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// The target refused this channel on a live connection: it takes no more than the
    /// channels it carries without this one.
    pub fn refused(&self) {
        let others = self.conn.channels.load(Ordering::Acquire).saturating_sub(1);
        self.conn.room.fetch_min(others, Ordering::AcqRel);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.channels.fetch_sub(1, Ordering::AcqRel) == 1 {
            let pool = self.pool.clone();
            let conn = self.conn.clone();
            tokio::spawn(async move {
                tokio::time::sleep(LINGER).await;
                pool.retire_if_idle(&conn).await;
            });
        }
    }
}

impl Pool {
    /// A lease on a live connection with room for a channel, if the pool has one.
    pub async fn lease(self: &Arc<Self>) -> Option<Lease> {
        let mut conns = self.conns.lock().await;
        conns.retain(|c| !c.handle.is_closed());
        let conn = conns
            .iter()
            .find(|c| c.channels.load(Ordering::Acquire) < c.room.load(Ordering::Acquire))?
            .clone();
        conn.channels.fetch_add(1, Ordering::AcqRel);
        Some(Lease {
            conn,
            pool: self.clone(),
            fresh: false,
        })
    }

    /// Adds a new connection to the pool and leases it.
    pub async fn add(self: &Arc<Self>, handle: UpHandle) -> Lease {
        let conn = Arc::new(Conn {
            handle: Arc::new(handle),
            channels: AtomicUsize::new(1),
            room: AtomicUsize::new(CHANNELS_PER_CONNECTION),
        });
        self.conns.lock().await.push(conn.clone());
        Lease {
            conn,
            pool: self.clone(),
            fresh: true,
        }
    }

    async fn retire_if_idle(&self, conn: &Arc<Conn>) {
        let mut conns = self.conns.lock().await;
        // A channel leased since (under this lock) keeps it.
        if conn.channels.load(Ordering::Acquire) != 0 {
            return;
        }
        conns.retain(|c| !Arc::ptr_eq(c, conn));
        drop(conns);
        disconnect(&conn.handle).await;
    }

    /// Closes every connection (the session ended).
    pub async fn close_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().await);
        for c in conns {
            disconnect(&c.handle).await;
        }
    }
}

/// Ends an upstream connection without waiting on a target that does not answer.
async fn disconnect(handle: &UpHandle) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        handle.disconnect(russh::Disconnect::ByApplication, "", "en"),
    )
    .await;
}
