//! The accept loop shared by every listener: admission (see `admission`), backoff on
//! accept errors, and one named task per connection inside a span.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use super::Shared;
use super::admission::{Admission, Gate, Refused};

pub struct Ctx {
    pub name: &'static str,
    pub admission: Arc<Admission>,
    pub stop_accepting: CancellationToken,
    pub sessions: CancellationToken,
    pub tracker: TaskTracker,
    pub shared: Arc<Shared>,
    /// Connections go to these threads instead of the main runtime.
    pub threads: Option<Arc<super::threads::Pool>>,
}

pub async fn accept_loop(listener: TcpListener, cx: Ctx) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = cx.stop_accepting.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let (permit, gate) = match cx.admission.admit(peer.ip()) {
                    Ok(x) => x,
                    Err(why) => {
                        crate::metrics::rejected(cx.name);
                        refuse(cx.name, stream, why);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let span = info_span!("conn", listener = cx.name, peer = %peer);
                let cancel = cx.sessions.child_token();
                let shared = cx.shared.clone();
                let name = cx.name;
                match &cx.threads {
                    None => {
                        cx.tracker.spawn(
                            async move {
                                handle(name, stream, peer, shared, cancel, gate).await;
                                drop(permit);
                            }
                            .instrument(span),
                        );
                    }
                    Some(pool) => {
                        // The socket moves to the connection thread's runtime.
                        let Ok(std_stream) = stream.into_std() else {
                            continue;
                        };
                        let tracker = cx.tracker.clone();
                        pool.dispatch(Box::new(move || {
                            Box::pin(
                                tracker.track_future(
                                    async move {
                                        if let Ok(stream) = TcpStream::from_std(std_stream) {
                                            handle(name, stream, peer, shared, cancel, gate).await;
                                        }
                                        drop(permit);
                                    }
                                    .instrument(span),
                                ),
                            )
                        }));
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors and similar: wait rather than spin.
                warn!(listener = cx.name, error = %e, delay_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn handle(
    name: &'static str,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    gate: Gate,
) {
    debug!("connection accepted");
    match name {
        "ssh" => crate::ssh::serve(stream, peer, shared, cancel, gate).await,
        "api" => crate::api::serve(stream, peer, shared, cancel, gate).await,
        "postgres" => crate::pg::serve(stream, peer, shared, cancel, gate).await,
        _ => {
            let _ = stream.shutdown().await;
        }
    }
}

/// Turns a connection away without waiting on it: a PostgreSQL client gets the reason as
/// an error it prints (libpq shows an error answer to its first message); SSH and HTTPS
/// clients see the connection closed.
fn refuse(name: &'static str, stream: TcpStream, why: Refused) {
    debug!(
        listener = name,
        reason = why.message(),
        "connection refused"
    );
    if name == "postgres" {
        // 53300: too_many_connections, as PostgreSQL answers past max_connections.
        let _ = stream.try_write(&crate::pg::wire::fatal("53300", why.message()));
    }
    drop(stream);
}
