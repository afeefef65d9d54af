//! The running bastion: binds every listener, admits connections to each under its own
//! budgets, and shuts down gracefully (stop accepting, tell sessions, wait the grace period, force).

pub mod admission;
pub mod limits;
mod listener;
pub mod live;
pub mod mirror;
pub mod notify;
mod threads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::audit::{Actor, AuditEvent, Outcome};
use crate::config::Config;
use crate::credentials::KeyStore;
use crate::store::Store;

/// Everything a connection handler may need, shared by all of them.
pub struct Shared {
    pub config: Config,
    pub ssh_config: Arc<russh::server::Config>,
    pub keys: KeyStore,
    pub store: Store,
    pub live: Arc<live::Live>,
    pub api: crate::api::Api,
    /// TLS for PostgreSQL clients (ALPN `postgresql`).
    pub pg_tls: tokio_rustls::TlsAcceptor,
    /// SCRAM channel binding data (`tls-server-end-point`) of postern's certificate.
    pub pg_end_point: Option<Vec<u8>>,
    pub pg_cancel: crate::pg::CancelMap,
    /// Target connections kept for their user's next PostgreSQL session.
    pub pg_backends: crate::pg::Backends,
    /// Failed logins that repeat within `[audit] repeat_window`, counted instead of written.
    pub repeats: crate::audit::repeats::Repeats,
    /// Where recordings are written and read (`[recordings]`).
    pub recordings: crate::recording::RecordingStore,
    /// Recordings being written, whose seals become `recording.progress` events.
    pub seals: Arc<crate::recording::seal::Seals>,
    /// This replica's name in the store (`host:api-port`), set when `serve` runs.
    pub replica: std::sync::OnceLock<String>,
    /// When this replica last renewed its lease (ms; 0: never): `/v1/ready` fails once it is
    /// as old as the lease, when other replicas take this one for dead.
    pub lease_renewed_ms: std::sync::atomic::AtomicI64,
    /// When this process started, before it read its keys (ms): its lease says so, and
    /// `rotate-keys audit-key --retire` waits for replicas older than the rotation.
    pub started_ms: i64,
}

/// A replica whose lease was not renewed for this long is taken for dead: the others
/// close its sessions.
pub const REPLICA_LEASE: Duration = Duration::from_secs(10);

/// This machine's host name.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // (or truncates, which the search for NUL below handles).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match rc {
        0 if end > 0 => String::from_utf8_lossy(&buf[..end]).into_owned(),
        _ => "localhost".into(),
    }
}

impl Shared {
    pub fn replica(&self) -> Option<&str> {
        self.replica.get().map(String::as_str)
    }

    /// Renews this replica's lease in the store, noting when it last succeeded.
    async fn renew_lease(&self) {
        let Some(me) = self.replica() else { return };
        let now = crate::audit::now_ms();
        let started = (self
            .lease_renewed_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0)
            .then_some(self.started_ms);
        let audit = crate::credentials::fingerprint(&self.keys.audit_key);
        let host = crate::credentials::fingerprint(&self.keys.host_key);
        let keys = crate::store::LeaseKeys {
            audit: &audit,
            host: &host,
        };
        match self.store.heartbeat_replica(me, now, started, &keys).await {
            Ok(()) => self
                .lease_renewed_ms
                .store(now, std::sync::atomic::Ordering::Relaxed),
            Err(e) => warn!(error = %e, "cannot renew this replica's lease in the store"),
        }
    }

    /// How old this replica's lease is when it is too old to count on (others take this
    /// replica for dead); None while it is current, or before `serve` holds one.
    pub fn lease_lapsed(&self) -> Option<Duration> {
        self.replica()?;
        let renewed = self
            .lease_renewed_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let age = Duration::from_millis(
            u64::try_from(crate::audit::now_ms().saturating_sub(renewed)).unwrap_or(0),
        );
        (age >= REPLICA_LEASE).then_some(age)
    }

    /// Closes the sessions of replicas that died (`at_start`: this replica's own from an
    /// earlier run too), each with its `session.end` event.
    async fn recover_sessions(&self, at_start: bool) {
        let me = self.replica().unwrap_or_default();
        let cutoff =
            crate::audit::now_ms() - i64::try_from(REPLICA_LEASE.as_millis()).unwrap_or(i64::MAX);
        match self
            .store
            .close_orphan_sessions("crash-recovered", me, at_start, cutoff)
            .await
        {
            Ok(orphans) => {
                for o in orphans {
                    let mut e = AuditEvent::new(
                        "session.end",
                        &Actor::system(),
                        Outcome::Failure,
                        serde_json::json!({ "reason": "crash-recovered", "user": o.user, "login": o.login, "replica": o.replica }),
                    );
                    e.session_id = Some(o.id.clone());
                    e.target = Some(o.target.clone());
                    let _ = self.store.append_audit(&e).await;
                    warn!(session = %o.id, replica = ?o.replica, "session was interrupted by a crash; marked crash-recovered");
                }
            }
            Err(e) => warn!(error = %e, "cannot check for sessions interrupted by a crash"),
        }
    }

    /// Writes an audit event (repeated login failures collapse, see `audit::repeats`);
    /// a store that cannot take it is logged, the caller carries on with its refusal.
    pub async fn audit(&self, e: AuditEvent) {
        self.audit_all(vec![e]).await
    }

    /// Writes `events` in this order, waiting once for all of them (one commit, where
    /// one `audit` per event would wait for a commit each).
    pub async fn audit_all(&self, events: Vec<AuditEvent>) {
        let now = std::time::Instant::now();
        let events: Vec<AuditEvent> = events
            .into_iter()
            .filter_map(|e| self.repeats.note(e, now))
            .collect();
        if events.is_empty() {
            return;
        }
        if let Err(err) = self.store.append_audit_all(&events).await {
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            warn!(error = %err, kinds = ?kinds, "cannot write audit events");
        }
    }

    /// Writes a `recording.progress` event for each recording sealed since the last call.
    async fn audit_seals(&self) {
        for (file, session, bytes, sha256) in self.seals.due() {
            let mut e = AuditEvent::new(
                "recording.progress",
                &Actor::system(),
                Outcome::Success,
                serde_json::json!({ "file": file, "bytes": bytes, "sha256": sha256 }),
            );
            e.session_id = Some(session);
            if let Err(err) = self.store.append_audit(&e).await {
                warn!(error = %err, "cannot write a recording seal");
            }
        }
    }

    /// Writes the summaries of closed repeat windows (all of them when `all`).
    async fn audit_repeats(&self, all: bool) {
        for e in self.repeats.due(std::time::Instant::now(), all) {
            if let Err(err) = self.store.append_audit(&e).await {
                warn!(error = %err, kind = %e.kind, "cannot write audit event");
            }
        }
    }
}

/// The addresses the listeners actually bound (useful when configured with port 0).
#[derive(Clone, Debug)]
pub struct Bound {
    pub ssh: SocketAddr,
    pub postgres: SocketAddr,
    pub api: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot listen for {what} on {addr}: {source}; is another process using it? change it with --{flag}"
    )]
    Bind {
        what: &'static str,
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

async fn bind(
    what: &'static str,
    flag: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            what,
            flag,
            addr,
            source,
        })
}

/// Binds the listeners; `serve` then runs them until `shutdown` fires.
pub struct Server {
    shared: Arc<Shared>,
    /// The audit head when the listeners were bound: the mirror starts after it, so an
    /// event written once clients may connect is never missed.
    mirror_from: i64,
    ssh: TcpListener,
    postgres: TcpListener,
    api: TcpListener,
}

impl Server {
    pub async fn bind(mut shared: Shared) -> Result<Server, ServerError> {
        let ssh = bind("SSH", "ssh-listen", shared.config.ssh.listen).await?;
        let postgres = bind("PostgreSQL", "pg-listen", shared.config.postgres.listen).await?;
        let api = bind("the HTTPS API", "api-listen", shared.config.api.listen).await?;
        // Port 0 means "any": what clients are told is what was bound.
        for (l, addr) in [
            (&ssh, &mut shared.config.ssh.listen),
            (&postgres, &mut shared.config.postgres.listen),
            (&api, &mut shared.config.api.listen),
        ] {
            if let Ok(a) = l.local_addr() {
                *addr = a;
            }
        }
        let mirror_from = shared.store.audit_head_seq().await.unwrap_or(0);
        Ok(Server {
            mirror_from,
            shared: Arc::new(shared),
            ssh,
            postgres,
            api,
        })
    }

    pub fn bound(&self) -> Bound {
        let addr = |l: &TcpListener| {
            l.local_addr()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
        };
        Bound {
            ssh: addr(&self.ssh),
            postgres: addr(&self.postgres),
            api: addr(&self.api),
        }
    }

    /// Serves until `shutdown` is cancelled, then drains sessions within the grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let shared = self.shared;
        let sessions = CancellationToken::new();
        let tracker = TaskTracker::new();
        let bound = Bound {
            ssh: self.ssh.local_addr().unwrap_or(shared.config.ssh.listen),
            postgres: self
                .postgres
                .local_addr()
                .unwrap_or(shared.config.postgres.listen),
            api: self.api.local_addr().unwrap_or(shared.config.api.listen),
        };
        let _ = shared
            .store
            .append_audit(&AuditEvent::new(
                "server.start",
                &Actor::system(),
                Outcome::Success,
                serde_json::json!({
                    "ssh": bound.ssh.to_string(),
                    "postgres": bound.postgres.to_string(),
                    "api": bound.api.to_string(),
                }),
            ))
            .await
            .map_err(|e| warn!(error = %e, "cannot write the server.start audit event"));

        // This replica's lease; then sessions a crash interrupted (this replica's from an
        // earlier run: it held this host and port, so it is gone) are marked so before new
        // ones start.
        let api_port = self.api.local_addr().map_or(0, |a| a.port());
        let me = format!("{}:{}", hostname(), api_port);
        let _ = shared.replica.set(me.clone());
        shared.renew_lease().await;
        shared.recover_sessions(true).await;
        // Whatever a crash or another process left unsigned is signed before serving,
        // unless the log no longer holds the head the witness recorded.
        mirror::expect_witness(&shared.store, &shared.config.audit.witness).await;
        if let Err(e) = shared.store.audit_checkpoint().await {
            warn!(error = %e, "cannot sign the audit head at start");
        }
        let watcher = tokio::spawn(live::watch_commands(
            shared.store.clone(),
            shared.live.clone(),
            Arc::new(shared.config.clone()),
            shutdown.clone(),
        ));
        let repeats = {
            let shared = shared.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while stop.run_until_cancelled(tick.tick()).await.is_some() {
                    // The lease, and the sessions of replicas whose lease ran out.
                    shared.renew_lease().await;
                    shared.recover_sessions(false).await;
                    shared.audit_repeats(false).await;
                    if let Err(e) = shared.api.limiter.share(&shared.store).await {
                        warn!(error = %e, "cannot share failed-login counts through the store");
                    }
                    shared.audit_seals().await;
                    shared
                        .pg_backends
                        .expire(shared.config.postgres.backend_idle_timeout.0);
                }
            })
        };
        // PostgreSQL cancel keys, for cancel requests a balancer hands to another replica.
        let cancel_keys = {
            let shared = shared.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while stop.run_until_cancelled(tick.tick()).await.is_some() {
                    let Some(me) = shared.replica() else { continue };
                    if let Err(e) = shared
                        .pg_cancel
                        .share(&shared.store, me, &shared.keys.master_key)
                        .await
                    {
                        warn!(error = %e, "cannot share PostgreSQL cancel keys through the store");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            })
        };
        let mirror_stop = CancellationToken::new();
        let notifier = (!shared.config.notify.webhook.is_empty()).then(|| {
            tokio::spawn(notify::run(
                shared.store.clone(),
                shared.config.notify.clone(),
                shared.replica().unwrap_or_default().to_string(),
                self.mirror_from,
                mirror_stop.clone(),
            ))
        });
        let followers: Vec<_> = [
            (&shared.config.audit.mirror, true),
            (&shared.config.audit.witness, false),
        ]
        .into_iter()
        .filter(|(target, _)| !target.is_empty())
        .map(|(target, events)| {
            tokio::spawn(mirror::run(
                shared.store.clone(),
                target.clone(),
                events,
                self.mirror_from,
                shared.replica().unwrap_or_default().to_string(),
                mirror_stop.clone(),
            ))
        })
        .collect();
        let n = match shared.config.postgres.threads {
            // Half the CPUs: the other half is left to TLS, transcript writers, SSH and
            // the kernel's network stack (measured in BENCHMARKS.md).
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        let pg_threads = match threads::Pool::start("pg", n) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                warn!(error = %e, "cannot start PostgreSQL connection threads; serving them on the main runtime");
                None
            }
        };
        let accepts = [
            ("ssh", self.ssh),
            ("postgres", self.postgres),
            ("api", self.api),
        ]
        .map(|(name, l)| {
            let cfg = &shared.config;
            let login_grace = match name {
                "ssh" => cfg.ssh.login_grace_time.0,
                "postgres" => cfg.postgres.authentication_timeout.0,
                // An HTTPS connection is "logged in" once its TLS handshake is done.
                _ => Duration::from_secs(10),
            };
            let ctx = listener::Ctx {
                name,
                admission: admission::Admission::new(admission::Budget {
                    connections: cfg.max_connections,
                    unauthenticated: cfg.max_unauthenticated,
                    per_source: cfg.max_unauthenticated_per_source,
                    login_grace,
                }),
                stop_accepting: shutdown.clone(),
                sessions: sessions.clone(),
                tracker: tracker.clone(),
                shared: shared.clone(),
                threads: if name == "postgres" {
                    pg_threads.clone()
                } else {
                    None
                },
            };
            tokio::spawn(listener::accept_loop(l, ctx))
        });

        shutdown.cancelled().await;
        for a in accepts {
            let _ = a.await;
        }
        let _ = watcher.await;
        info!(
            open = tracker.len(),
            "shutting down: no longer accepting; ending sessions"
        );
        sessions.cancel();
        tracker.close();
        let grace: Duration = shared.config.shutdown_grace.0;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(open = tracker.len(), grace = %shared.config.shutdown_grace, "grace period over; closing remaining connections");
        }
        if let Some(pool) = pg_threads.and_then(Arc::into_inner) {
            // Their runtimes drop whatever is left when the threads end.
            let _ = tokio::task::spawn_blocking(move || pool.stop()).await;
        }
        let _ = repeats.await;
        let _ = cancel_keys.await;
        shared.audit_repeats(true).await;
        let _ = shared
            .store
            .append_audit(&AuditEvent::new(
                "server.stop",
                &Actor::system(),
                Outcome::Success,
                serde_json::json!({}),
            ))
            .await
            .map_err(|e| warn!(error = %e, "cannot write the server.stop audit event"));
        // The final head is signed before the mirror and the witness take their last look.
        if let Err(e) = shared.store.audit_checkpoint().await {
            warn!(error = %e, "cannot sign the audit head at shutdown");
        }
        if let Some(me) = shared.replica()
            && let Err(e) = shared.store.remove_replica(me).await
        {
            warn!(error = %e, "cannot give up this replica's lease");
        }
        mirror_stop.cancel();
        for f in followers {
            let _ = f.await;
        }
        // A webhook being retried gets a moment, not the shutdown.
        if let Some(n) = notifier {
            let abort = n.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), n)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        shared.store.close().await;
        info!("stopped");
    }
}
