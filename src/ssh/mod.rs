//! SSH through postern: the server side developers' OpenSSH clients talk to
//! (`handler`), the client side towards targets (`upstream`), and the per-channel relay
//! that records every byte (`relay`).

mod auth;
mod certificate;
mod forward;
mod handler;
mod pool;
mod pump;
mod quickack;
mod relay;
pub mod scan;
mod session;
mod transfer;
pub mod upstream;
pub mod username;
mod verdict;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::server::{self, Config};
use russh::{MethodKind, MethodSet, SshId};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::credentials::KeyStore;
use crate::server::Shared;
use crate::server::admission::Gate;

pub use handler::SessionCtx;

/// The russh server configuration: postern's host key, public-key authentication only.
pub fn config(keys: &KeyStore) -> Arc<Config> {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    Arc::new(Config {
        server_id: SshId::Standard(Cow::Borrowed(concat!(
            "SSH-2.0-postern_",
            env!("CARGO_PKG_VERSION")
        ))),
        methods,
        keys: vec![keys.host_key.clone()],
        announced_keys: keys.host_key_announced.clone(),
        // Rejections take constant time so they do not reveal which keys exist.
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        max_auth_attempts: 6,
        ..Default::default()
    })
}

/// Serves one SSH connection until the client leaves, or `cancel` fires (shutdown).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    gate: Gate,
) {
    let tracker = TaskTracker::new();
    let kill = CancellationToken::new();
    let gone = CancellationToken::new();
    let conn = handler::Conn::new(
        shared.clone(),
        peer,
        cancel.clone(),
        kill.clone(),
        gone.clone(),
        tracker.clone(),
        gate.clone(),
    );
    let state = conn.state();
    let started = tokio::select! {
        // Clients too may hold a second small write for our ACK (OpenSSH turns Nagle off
        // only for terminals): acknowledge at once.
        r = server::run_stream(shared.ssh_config.clone(), quickack::QuickAck(stream), conn) => r,
        why = gate.expired() => {
            debug!(reason = why, "client did not log in");
            return;
        }
        _ = cancel.cancelled() => return,
    };
    let running = match started {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "SSH handshake failed");
            return;
        }
    };
    let handle = running.handle();
    let mut reason = "client exit";
    tokio::pin!(running);
    tokio::select! {
        r = &mut running => {
            if let Err(e) = r {
                debug!(error = %e, "SSH connection ended with an error");
                reason = "connection lost";
            }
        }
        _ = kill.cancelled() => {
            let ending = state.lock().ok().and_then(|s| s.clone()).and_then(|c| c.limits.ending());
            reason = ending.as_ref().map(|e| e.reason).unwrap_or("killed");
            let message = ending.map(|e| e.message).unwrap_or_else(|| "an admin ended this session".into());
            tracker.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                handle.disconnect(russh::Disconnect::ByApplication, message, "en".into()),
            )
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
        }
        why = gate.expired() => {
            debug!(reason = why, "client did not log in; disconnecting");
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                handle.disconnect(russh::Disconnect::ByApplication, format!("postern: {why}"), "en".into()),
            )
            .await;
        }
        _ = cancel.cancelled() => {
            reason = "shutdown";
            // Channels print their own message; give them a moment, then disconnect.
            tracker.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                handle.disconnect(russh::Disconnect::ByApplication, "postern is shutting down".into(), "en".into()),
            )
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
        }
    }
    // A client that left because a shutdown or a kill ended its channels did not end the
    // session itself: say what did (both may be ready at once above).
    if reason == "client exit" {
        if cancel.is_cancelled() {
            reason = "shutdown";
        } else if kill.is_cancelled() {
            let ending = state
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .and_then(|c| c.limits.ending());
            reason = ending.map_or("killed", |e| e.reason);
        }
    }
    // Whatever the session task still does, it ends with the connection.
    running.abort();
    // The client is gone: channels stop waiting on it, and finalise their recordings
    // before the session is closed in the index.
    gone.cancel();
    tracker.close();
    // Channels end within a few seconds once the client is gone (every wait on a peer is
    // bounded); the session is closed in the index regardless.
    if tokio::time::timeout(Duration::from_secs(15), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("channels still ending 15 s after the client left; closing the session");
    }
    let ctx = state.lock().ok().and_then(|s| s.clone());
    if let Some(ctx) = ctx {
        ctx.upstreams.close_all().await;
        shared.live.unregister(&ctx.id);
        let reason = ctx.end_reason(reason);
        ctx.end(reason).await;
        info!(session = %ctx.id, user = %ctx.user, target = %ctx.target.name, reason, "session ended");
    }
}
