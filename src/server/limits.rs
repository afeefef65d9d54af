//! Time limits of a live session (SSH or PostgreSQL), enforced while it runs: `max_session_ttl` (with a
//! warning before the end), `idle_timeout`, and re-authorisation against the current
//! policy, so a lock, a revoked role or a shortened TTL reaches sessions already open.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::now_ms;
use crate::duration::Dur;
use crate::policy::{Decision, Policy, Request, RoleSettings, TimedGrant, decide};

/// The approved request a session's access rests on, when no standing role gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GrantEnd {
    request: i64,
    until_ms: i64,
}

/// The audit event of a session that `Limits` ended, by reason (kills are audited when
/// asked for, shutdowns by the server).
pub fn ending_event(reason: &str) -> Option<&'static str> {
    match reason {
        "expired" => Some("session.expired"),
        "idle" => Some("session.idle_timeout"),
        "revoked" => Some("session.revoked"),
        "credential_expired" => Some("session.credential_expired"),
        "grant_ended" => Some("session.grant_ended"),
        _ => None,
    }
}

/// Why a session ended early, and what its user is told.
#[derive(Clone, Debug)]
pub struct Ending {
    pub reason: &'static str,
    pub message: String,
}

/// What a session may do besides its shell and commands, re-read at every review: a role
/// that loses port forwarding (or a destination) or file transfer loses it in sessions
/// already open, and channels doing it end (`ssh::relay::Stop::unless_withdrawn`).
/// Gaining them takes a new session (the target's certificate is issued at the start).
pub struct Extras {
    now: Mutex<RoleSettings>,
    changed: watch::Sender<u64>,
}

impl Extras {
    fn new(s: RoleSettings) -> Extras {
        Extras {
            now: Mutex::new(s),
            changed: watch::channel(0).0,
        }
    }

    fn get<T>(&self, f: impl FnOnce(&RoleSettings) -> T) -> T {
        f(&self.now.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `Err(reason)` when a forward to `host:port` is not allowed now.
    pub fn may_forward(&self, host: &str, port: u32) -> Result<(), &'static str> {
        self.get(|s| {
            if !s.port_forwarding {
                Err("port forwarding not allowed")
            } else if !crate::policy::forward::allows(&s.forward_to, host, port) {
                Err("destination not in forward_to")
            } else {
                Ok(())
            }
        })
    }

    pub fn may_transfer(&self) -> bool {
        self.get(|s| s.file_transfer)
    }

    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn set(&self, new: &RoleSettings) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if now.port_forwarding != new.port_forwarding
            || now.forward_to != new.forward_to
            || now.file_transfer != new.file_transfer
        {
            *now = new.clone();
            drop(now);
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

pub struct Limits {
    /// Unix ms at which the session ends.
    deadline_ms: AtomicI64,
    /// Never later than this (the upstream certificate's end), in Unix ms.
    hard_limit_ms: i64,
    /// When the `postern login` certificate that opened the connection expires (Unix ms),
    /// if sessions end with it.
    credential_ms: Option<i64>,
    started_ms: i64,
    idle_ms: AtomicI64,
    last_input_ms: AtomicI64,
    /// Set by every input, folded into `last_input_ms` by `tick` (so input costs one
    /// store, not a clock read).
    input: AtomicBool,
    warn_before_ms: i64,
    warned: Mutex<bool>,
    ending: Mutex<Option<Ending>>,
    /// The latest notice for every channel of the session (printed on the client's
    /// stderr); a channel opened later still sees it.
    pub notices: watch::Sender<Option<String>>,
    ttl_secs: AtomicI64,
    grant: Mutex<Option<GrantEnd>>,
    grant_warned: Mutex<bool>,
    /// Fires when the session must end (kill, expiry, idle, revocation).
    pub end: CancellationToken,
    pub extras: Extras,
}

impl Limits {
    pub fn new(
        max_session: Dur,
        idle: Dur,
        warn_before: Dur,
        hard_limit_ms: i64,
        credential_ms: Option<i64>,
        end: CancellationToken,
    ) -> Limits {
        let now = now_ms();
        let hard_limit_ms = credential_ms.map_or(hard_limit_ms, |c| hard_limit_ms.min(c));
        Limits {
            deadline_ms: AtomicI64::new((now + secs_ms(max_session)).min(hard_limit_ms)),
            hard_limit_ms,
            credential_ms,
            started_ms: now,
            idle_ms: AtomicI64::new(secs_ms(idle)),
            last_input_ms: AtomicI64::new(now),
            input: AtomicBool::new(false),
            warn_before_ms: secs_ms(warn_before),
            warned: Mutex::new(false),
            ending: Mutex::new(None),
            notices: watch::channel(None).0,
            ttl_secs: AtomicI64::new(i64::try_from(max_session.as_secs()).unwrap_or(i64::MAX)),
            grant: Mutex::new(None),
            grant_warned: Mutex::new(false),
            end,
            extras: Extras::new(RoleSettings::default()),
        }
    }

    /// The session's extras as its grant gave them.
    pub fn allowing(mut self, settings: &RoleSettings) -> Limits {
        self.extras = Extras::new(settings.clone());
        self
    }

    /// The session's access rests on this grant: it ends when the grant does (with a
    /// warning before), unless a later review finds other access.
    pub fn resting_on(self, grant: Option<&TimedGrant>) -> Limits {
        self.set_grant(grant);
        self
    }

    fn set_grant(&self, grant: Option<&TimedGrant>) {
        let new = grant.map(|g| GrantEnd {
            request: g.request,
            until_ms: g.until_ms,
        });
        let mut cur = self.grant.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != new {
            if new.map(|g| g.until_ms) > cur.map(|g| g.until_ms) {
                *self.grant_warned.lock().unwrap_or_else(|p| p.into_inner()) = false;
            }
            *cur = new;
        }
    }

    /// Ends or warns when the grant the session rests on runs out; true when it ended.
    fn tick_grant(&self, now: i64) -> bool {
        let Some(g) = *self.grant.lock().unwrap_or_else(|p| p.into_inner()) else {
            return false;
        };
        if now >= g.until_ms {
            self.terminate(
                "grant_ended",
                format!(
                    "the access granted by request #{} has ended and this session with it; to continue, request it again: postern request create",
                    g.request
                ),
            );
            return true;
        }
        if now + self.warn_before_ms >= g.until_ms
            && g.until_ms <= self.deadline_ms()
            && let Ok(mut warned) = self.grant_warned.lock()
            && !*warned
        {
            *warned = true;
            let left = (g.until_ms - now + 999) / 1000;
            self.notices.send_replace(Some(format!(
                "the access granted by request #{} ends in {left} s and this session with it; save your work",
                g.request
            )));
        }
        false
    }

    pub fn touch(&self) {
        self.input.store(true, Ordering::Relaxed);
    }

    pub fn deadline_ms(&self) -> i64 {
        self.deadline_ms.load(Ordering::Relaxed)
    }

    /// Ends the session once; the first reason wins.
    pub fn terminate(&self, reason: &'static str, message: String) {
        if let Ok(mut e) = self.ending.lock()
            && e.is_none()
        {
            *e = Some(Ending { reason, message });
        }
        self.end.cancel();
    }

    pub fn ending(&self) -> Option<Ending> {
        self.ending.lock().ok().and_then(|e| e.clone())
    }

    /// Called about once a second: warns before the deadline, ends at it, ends when idle.
    pub fn tick(&self, now: i64) {
        if self.tick_grant(now) {
            return;
        }
        let deadline = self.deadline_ms();
        let credential_ends = self.credential_ms.filter(|c| *c <= deadline);
        if let Some(c) = credential_ends
            && now >= c
        {
            self.terminate("credential_expired", crate::credentials::expired_message(c));
            return;
        }
        if now >= deadline {
            let ttl =
                Dur::from_secs(u64::try_from(self.ttl_secs.load(Ordering::Relaxed)).unwrap_or(0));
            self.terminate(
                "expired",
                format!(
                    "this session reached its time limit ({ttl}, max_session_ttl) and has ended"
                ),
            );
            return;
        }
        if now + self.warn_before_ms >= deadline
            && let Ok(mut warned) = self.warned.lock()
            && !*warned
        {
            *warned = true;
            let left = (deadline - now + 999) / 1000;
            self.notices.send_replace(Some(if credential_ends.is_some() {
                format!(
                    "your postern credential expires in {left} s and this session with it; save your work and run postern login"
                )
            } else {
                format!("this session ends in {left} s (max_session_ttl); save your work")
            }));
        }
        if self.input.swap(false, Ordering::Relaxed) {
            self.last_input_ms.store(now, Ordering::Relaxed);
        }
        let idle = self.idle_ms.load(Ordering::Relaxed);
        if idle > 0 && now - self.last_input_ms.load(Ordering::Relaxed) >= idle {
            let d = Dur::from_secs(u64::try_from(idle / 1000).unwrap_or(0));
            self.terminate(
                "idle",
                format!("no input for {d} (idle_timeout); this session has ended"),
            );
        }
    }

    /// Re-decides the session against the current policy.
    pub fn review(&self, policy: &Policy, user: &str, target: &str, req: &Request) {
        let (Some(u), Some(t)) = (policy.users.get(user), policy.targets.get(target)) else {
            self.terminate(
                "revoked",
                format!("access was withdrawn: the user or target `{target}` no longer exists"),
            );
            return;
        };
        match decide(u, &policy.roles_for(u, &t.name), t, req) {
            Decision::Deny(reason) => {
                let grant = *self.grant.lock().unwrap_or_else(|p| p.into_inner());
                let how = match grant {
                    Some(g) => format!(
                        "the grant of request #{} was revoked or ended ({reason})",
                        g.request
                    ),
                    None => reason.to_string(),
                };
                self.terminate("revoked", format!("access was withdrawn: {how}"))
            }
            Decision::Allow(g) => {
                self.set_grant(policy.grant_end(u, &t.name, &g.roles));
                // A shortened TTL applies at once; a longer one never outlives the certificate.
                let wanted =
                    (self.started_ms + secs_ms(g.settings.max_session_ttl)).min(self.hard_limit_ms);
                let old = self.deadline_ms.swap(wanted, Ordering::Relaxed);
                if wanted > old
                    && let Ok(mut w) = self.warned.lock()
                {
                    *w = false;
                }
                self.idle_ms
                    .store(secs_ms(g.settings.idle_timeout), Ordering::Relaxed);
                self.extras.set(&g.settings);
                self.ttl_secs.store(
                    i64::try_from(g.settings.max_session_ttl.as_secs()).unwrap_or(i64::MAX),
                    Ordering::Relaxed,
                );
            }
        }
    }
}

fn secs_ms(d: Dur) -> i64 {
    crate::audit::secs_to_ms(d.as_secs())
}
