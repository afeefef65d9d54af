//! Target connections kept for the same user's next session.
//!
//! Opening a PostgreSQL connection costs the target a new backend process, its
//! authentication and its catalog caches, and postern a TCP (and TLS) handshake and a
//! SCRAM login: most of what a short session costs. A session the client ended cleanly
//! (`Terminate` while idle: no transaction, nothing unanswered, no COPY) leaves its target
//! connection here, reset with `DISCARD ALL` (prepared statements, cursors, temporary
//! tables, advisory locks, `LISTEN`, settings back to their start-up values), for
//! `[postgres] backend_idle_timeout`. Only a session of the same postern user, to the same
//! target address, database and database user, with the same start-up settings, takes it:
//! a connection never passes from one person to another, so what `DISCARD ALL` does not
//! reset (an extension's session state, a `dblink` connection) stays with its owner. Every
//! session still goes through authentication, the policy decision, the audit log and its
//! own recording. A connection that went bad while it waited (the target restarted, an
//! `idle_session_timeout`) is noticed when it is taken and a new one is opened.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::Io;
use super::wire;

/// Connections kept per key, and in all.
const PER_KEY: usize = 16;
const TOTAL: usize = 256;
/// How long the reset may take before the connection is dropped instead.
const RESET_DEADLINE: Duration = Duration::from_secs(2);

/// Who may take a connection: the same user, target address, database, database user and
/// start-up settings, and the same brokered password (a changed credential opens anew).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub user: String,
    pub target: String,
    pub address: String,
    pub database: String,
    pub db_user: String,
    pub settings: Vec<(String, String)>,
    /// A per-process MAC of the password, never the password.
    pub credential: [u8; 32],
    /// The connection thread: each has its own event loop, which the connection's socket
    /// is registered with.
    pub thread: std::thread::ThreadId,
}

/// A target connection after its start-up: what a new session needs from it.
pub struct Backend {
    pub io: Box<dyn Io>,
    /// Its `ParameterStatus` messages, as they stand now.
    pub parameters: Vec<Bytes>,
    /// Its `BackendKeyData` (process id, secret).
    pub key: Option<(i32, i32)>,
}

struct Idle {
    backend: Backend,
    since: Instant,
}

#[derive(Default)]
pub struct Backends {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
}

/// A MAC of a brokered password under a key made for this process.
pub fn credential_id(password: &str) -> [u8; 32] {
    crate::credentials::process_mac(&[password.as_bytes()])
}

impl Backends {
    /// A kept connection for `key` that is still open, if there is one.
    pub fn take(&self, key: &Key, keep_for: Duration) -> Option<Backend> {
        loop {
            let mut idle = {
                let mut map = self.idle.lock().ok()?;
                let list = map.get_mut(key)?;
                let idle = list.pop();
                if list.is_empty() {
                    map.remove(key);
                }
                idle?
            };
            if idle.since.elapsed() < keep_for && still_open(&mut idle.backend.io) {
                return Some(idle.backend);
            }
        }
    }

    /// Resets a connection a session left cleanly and keeps it; false (and the
    /// connection closed) when the reset failed or there is no room.
    pub async fn keep(&self, key: Key, mut backend: Backend) -> bool {
        if !matches!(
            tokio::time::timeout(RESET_DEADLINE, reset(&mut backend)).await,
            Ok(Ok(()))
        ) {
            return false;
        }
        let Ok(mut map) = self.idle.lock() else {
            return false;
        };
        let total: usize = map.values().map(Vec::len).sum();
        let list = map.entry(key).or_default();
        if list.len() >= PER_KEY || total >= TOTAL {
            return false;
        }
        list.push(Idle {
            backend,
            since: Instant::now(),
        });
        true
    }

    /// Closes connections kept longer than `keep_for` (every few seconds, from the
    /// server's clock).
    pub fn expire(&self, keep_for: Duration) {
        let Ok(mut map) = self.idle.lock() else {
            return;
        };
        map.retain(|_, list| {
            list.retain(|i| i.since.elapsed() < keep_for);
            !list.is_empty()
        });
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.idle.lock().map(|m| m.is_empty()).unwrap_or(true)
    }
}

/// An idle connection has nothing to say: anything readable (an error the target sent
/// before closing, or the close itself) means it is gone.
fn still_open(io: &mut Box<dyn Io>) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    matches!(Pin::new(io).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// `DISCARD ALL`, answered by `CommandComplete` and `ReadyForQuery` (idle); the
/// `ParameterStatus` messages it brings (settings back to their start-up values) update
/// the connection's own.
async fn reset(b: &mut Backend) -> std::io::Result<()> {
    let bad = |why: &str| std::io::Error::other(why.to_string());
    let mut query = BytesMut::new();
    postgres_protocol::message::frontend::query("DISCARD ALL", &mut query)?;
    b.io.write_all(&query).await?;
    b.io.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let (tag, frame) = super::upstream::read_message(&mut b.io, &mut buf).await?;
        match tag {
            b'C' | b'N' => {}
            b'S' => {
                let name = wire::body(&frame).split(|&c| c == 0).next().unwrap_or(&[]);
                b.parameters
                    .retain(|p| wire::body(p).split(|&c| c == 0).next() != Some(name));
                b.parameters.push(frame);
            }
            b'Z' if wire::body(&frame).first() == Some(&b'I') && buf.is_empty() => {
                return Ok(());
            }
            _ => return Err(bad("unexpected answer to DISCARD ALL")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn key(user: &str) -> Key {
        Key {
            user: user.into(),
            target: "pg1".into(),
            address: "127.0.0.1:5432".into(),
            database: "features".into(),
            db_user: "app".into(),
            settings: vec![("application_name".into(), "psql".into())],
            credential: credential_id("pw"),
            thread: std::thread::current().id(),
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// A backend whose target answers the reset with `answer`.
    async fn backend(answer: Vec<u8>) -> (Backend, tokio::io::DuplexStream) {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        theirs.write_all(&answer).await.unwrap();
        let b = Backend {
            io: Box::new(ours),
            parameters: vec![Bytes::from(msg(b'S', b"TimeZone\0UTC\0"))],
            key: Some((7, 9)),
        };
        (b, theirs)
    }

    #[tokio::test]
    async fn only_the_same_user_and_settings_take_a_kept_connection() {
        let pool = Backends::default();
        let mut answer = msg(b'S', b"TimeZone\0Etc/UTC\0");
        answer.extend(msg(b'C', b"DISCARD ALL\0"));
        answer.extend(msg(b'Z', b"I"));
        let (b, mut theirs) = backend(answer).await;
        assert!(pool.keep(key("alice"), b).await);
        let mut sent = [0u8; 17];
        theirs.read_exact(&mut sent).await.unwrap();
        assert_eq!(&sent[5..], b"DISCARD ALL\0");
        let keep = Duration::from_secs(30);
        assert!(pool.take(&key("bob"), keep).is_none(), "another user");
        let mut other = key("alice");
        other.settings.clear();
        assert!(pool.take(&other, keep).is_none(), "other settings");
        other = key("alice");
        other.credential = credential_id("rotated");
        assert!(pool.take(&other, keep).is_none(), "another credential");
        let got = pool.take(&key("alice"), keep).unwrap();
        // The reset's settings replaced the ones it changed.
        assert_eq!(
            got.parameters,
            vec![Bytes::from(msg(b'S', b"TimeZone\0Etc/UTC\0"))]
        );
        assert!(pool.take(&key("alice"), keep).is_none(), "taken once");
    }

    #[tokio::test]
    async fn a_failed_reset_or_a_closed_connection_is_not_kept() {
        let pool = Backends::default();
        let mut refused = msg(b'E', b"SERROR\0C25001\0Mno\0\0");
        refused.extend(msg(b'Z', b"I"));
        let (b, _theirs) = backend(refused).await;
        assert!(!pool.keep(key("alice"), b).await);
        let mut in_tx = msg(b'C', b"DISCARD ALL\0");
        in_tx.extend(msg(b'Z', b"T"));
        let (b, _theirs) = backend(in_tx).await;
        assert!(!pool.keep(key("alice"), b).await);
        // Kept, then the target goes away: not handed out.
        let mut ok = msg(b'C', b"DISCARD ALL\0");
        ok.extend(msg(b'Z', b"I"));
        let (b, theirs) = backend(ok).await;
        assert!(pool.keep(key("alice"), b).await);
        drop(theirs);
        assert!(pool.take(&key("alice"), Duration::from_secs(30)).is_none());
        // Expired ones are closed by the sweep.
        let mut ok = msg(b'C', b"DISCARD ALL\0");
        ok.extend(msg(b'Z', b"I"));
        let (b, _theirs) = backend(ok).await;
        assert!(pool.keep(key("alice"), b).await);
        pool.expire(Duration::ZERO);
        assert!(pool.is_empty());
    }
}
