//! Live sessions of this process, by id: how a kill (from another process, through the
//! store's session commands), a TTL deadline or a lock reaches a running session.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::policy::Policy;
use crate::store::Store;

/// What the server can do to a live session of any protocol.
pub trait LiveSession: Send + Sync {
    /// Its time limits and the token that ends it.
    fn limits(&self) -> &super::limits::Limits;
    /// An admin ended it.
    fn kill(&self) {
        self.limits()
            .terminate("killed", "an admin ended this session".into());
    }
    /// About four times a second: deadlines and idle time.
    fn tick(&self, now_ms: i64) {
        self.limits().tick(now_ms);
    }
    /// Every few seconds: re-decide against the current policy (locks, revocations, TTLs).
    fn review(&self, now: &Current);
    /// `ssh` or `postgres`, for the live-sessions metric.
    fn protocol(&self) -> &'static str;
}

/// What live sessions are re-checked against.
pub struct Current {
    pub policy: Policy,
    /// Serials of revoked user certificates.
    pub revoked: HashSet<u64>,
}

#[derive(Default)]
pub struct Live {
    sessions: Mutex<HashMap<String, Arc<dyn LiveSession>>>,
}

impl Live {
    pub fn register(&self, id: &str, session: Arc<dyn LiveSession>) {
        if let Ok(mut m) = self.sessions.lock() {
            m.insert(id.to_string(), session);
        }
    }

    fn all(&self) -> Vec<Arc<dyn LiveSession>> {
        self.sessions
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many sessions run here, by protocol.
    pub fn count_by_protocol(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for s in self.all() {
            let p = s.protocol();
            match counts.iter_mut().find(|(q, _)| *q == p) {
                Some((_, n)) => *n += 1,
                None => counts.push((p, 1)),
            }
        }
        counts
    }

    pub fn unregister(&self, id: &str) {
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(id);
        }
    }

    /// When the session must end (its TTL or its credential), if it runs here.
    pub fn deadline_ms(&self, id: &str) -> Option<i64> {
        let m = self.sessions.lock().ok()?;
        Some(m.get(id)?.limits().deadline_ms())
    }

    /// Ends the session if it runs here; true when it did.
    pub fn kill(&self, id: &str) -> bool {
        let session = self.sessions.lock().ok().and_then(|m| m.get(id).cloned());
        match session {
            Some(s) => {
                s.kill();
                true
            }
            None => false,
        }
    }
}

/// How often `serve` looks for new session commands and checks deadlines.
pub const POLL: Duration = Duration::from_millis(250);

/// Live sessions are re-decided against the policy every this many polls (1 s).
const REVIEW_EVERY: u64 = 4;

/// Applies session commands written by admin commands until `stop` fires.
pub async fn watch_commands(
    store: Store,
    live: std::sync::Arc<Live>,
    config: std::sync::Arc<crate::config::Config>,
    stop: CancellationToken,
) {
    let warn_ms = crate::audit::secs_to_ms(config.notify.grant_warning.as_secs());
    let mut seq = match store.last_session_command().await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read session commands; kills from other processes will not arrive");
            0
        }
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wake = store.command_wakeups();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            w = woken(&mut wake) => {
                match w {
                    Some(()) => apply_commands(&store, &live, &mut seq).await,
                    None => wake = None,
                }
                continue;
            }
        }
        n += 1;
        let sessions = live.all();
        let now = crate::audit::now_ms();
        for s in &sessions {
            s.tick(now);
        }
        if n % REVIEW_EVERY == 0 {
            reviews(&store, &config.review).await;
            // Requests left undecided and grants that ran their time, each closed once.
            match store.sweep_requests(now, warn_ms).await {
                Ok(swept) => {
                    for r in swept {
                        info!(
                            request = r.id,
                            state = r.state.as_str(),
                            "access request closed"
                        );
                    }
                }
                Err(e) => warn!(error = %e, "cannot close expired access requests"),
            }
        }
        if n % REVIEW_EVERY == 0 && !sessions.is_empty() {
            match tokio::try_join!(store.load_policy(), store.revoked_serials()) {
                Ok((policy, revoked)) => {
                    let now = Current { policy, revoked };
                    for s in &sessions {
                        s.review(&now);
                    }
                }
                Err(e) => warn!(error = %e, "cannot re-check live sessions against the policy"),
            }
        }
        apply_commands(&store, &live, &mut seq).await;
    }
}

/// The next wake-up from the store's command listener; never, without one.
async fn woken(wake: &mut Option<tokio::sync::mpsc::Receiver<()>>) -> Option<()> {
    match wake {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Acts on the session commands written since `seq` (kills of sessions running here).
async fn apply_commands(store: &Store, live: &Live, seq: &mut i64) {
    match store.session_commands_after(*seq).await {
        Ok(cmds) => {
            for (s, session, command) in cmds {
                *seq = s;
                if command == "kill" && live.kill(&session) {
                    info!(session = %session, "session killed by an admin");
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot read session commands"),
    }
}

/// Closes review campaigns past their due date, and starts one when `[review] every`
/// says it is time.
async fn reviews(store: &Store, cfg: &crate::config::Review) {
    let now = crate::clock::now_ms();
    match store.sweep_reviews(now).await {
        Ok(closed) => {
            for c in closed {
                info!(campaign = c.id, "access review closed at its due date");
            }
        }
        Err(e) => warn!(error = %e, "cannot close access reviews past their due date"),
    }
    let Some(every) = cfg.every else { return };
    // A read first, so the write lock is taken only when a campaign looks due; the start
    // decides again inside its transaction.
    let due = match store.last_review_ms().await {
        Ok(last) => last.is_none_or(|l| now - l >= crate::audit::secs_to_ms(every.as_secs())),
        Err(e) => {
            warn!(error = %e, "cannot read when the last access review started");
            false
        }
    };
    if due {
        let c = crate::store::NewCampaign {
            name: format!("every {every}, {}", crate::audit::format_ms(now)),
            scope: crate::policy::reviews::Scope::All,
            due: cfg.due,
            revoke_at_due: cfg.on_due == crate::config::OnDue::Revoke,
            stale_after: cfg.stale_after,
        };
        let every_ms = crate::audit::secs_to_ms(every.as_secs());
        match store.start_scheduled_review(&c, now, every_ms).await {
            Ok(Some(c)) => info!(campaign = c.id, "access review started on schedule"),
            // Another replica started it first.
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot start the scheduled access review"),
        }
    }
}
