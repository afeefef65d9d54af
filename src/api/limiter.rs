//! Failed-login throttling with growing delays, per door (the API's password login,
//! PostgreSQL's token login): per user name and source address together, and per source
//! address alone. A door's failures never lock another door, and a name that is not a
//! user is counted only against its address.
//!
//! An attempt is reserved before the password is checked and is a failure unless it
//! succeeds (an `Attempt` guard); at the password door attempts in flight count against
//! the free failures, so parallel guesses cannot all slip in before the first is counted,
//! while at the PostgreSQL door a pool's many connections may be checked together. A few
//! failures are free (a typo); after that each failure blocks further attempts for twice
//! as long as the one before, up to five minutes. A success clears its user's counter;
//! fifteen quiet minutes forget them. State is in memory, bounded: past `MAX_ENTRIES` the
//! quiet entries go, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before delays start.
const FREE_PER_USER: u32 = 3;
const FREE_PER_ADDR: u32 = 10;
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(300);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Past this many tracked entries, quiet ones are dropped, then the oldest.
const MAX_ENTRIES: usize = 100_000;

/// Where a login was tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Door {
    /// `POST /v1/login` (and the console).
    Password,
    /// A database token at the PostgreSQL listener.
    Postgres,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    User(Door, String, IpAddr),
    Addr(Door, IpAddr),
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    /// Attempts being checked now.
    in_flight: u32,
    blocked_until: Instant,
    last: Instant,
}

/// Logins being checked at once from one user and address (PostgreSQL pools open many
/// connections together); beyond this they wait their turn.
const MAX_IN_FLIGHT: u32 = 64;

#[derive(Debug, Default)]
pub struct Limiter {
    entries: Mutex<HashMap<Key, Entry>>,
}

/// A reserved attempt: in flight until it `succeeded`, a failure when dropped otherwise
/// (any refusal, an error, a client that went away).
#[must_use]
#[derive(Debug)]
pub struct Attempt<'a> {
    limiter: &'a Limiter,
    keys: Vec<(Key, u32)>,
    settled: bool,
}

impl Attempt<'_> {
    /// The attempt was right: the user's counter is cleared.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter.settle(&self.keys, true);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(&self.keys, false);
        }
    }
}

impl Limiter {
    /// The counters an attempt touches: the user's (only for a known user) and the address's.
    fn keys(door: Door, user: Option<&str>, addr: IpAddr) -> Vec<(Key, u32)> {
        // An IPv6 host usually holds a whole /64: count the network, not each address.
        let addr = crate::server::admission::source(addr);
        let mut keys = vec![(Key::Addr(door, addr), FREE_PER_ADDR)];
        if let Some(u) = user {
            keys.push((Key::User(door, u.to_string(), addr), FREE_PER_USER));
        }
        keys
    }

    /// Reserves an attempt: `Err(wait)` while the user or the address is blocked, or
    /// while too many attempts are being checked at once. At the password door an attempt
    /// in flight counts against the free failures, so parallel guesses cannot all slip in
    /// before the first is counted; at the PostgreSQL door up to `MAX_IN_FLIGHT` may be
    /// checked together (a pool's connections), and only failures count. `user` is `None`
    /// for a name that is not a user.
    pub fn attempt(
        &self,
        door: Door,
        user: Option<&str>,
        addr: IpAddr,
    ) -> Result<Attempt<'_>, Duration> {
        let now = Instant::now();
        let keys = Self::keys(door, user, addr);
        let attempt = Attempt {
            limiter: self,
            keys,
            settled: true,
        };
        let Ok(mut map) = self.entries.lock() else {
            return Ok(attempt);
        };
        let live = |e: &&Entry| now.duration_since(e.last) < FORGET_AFTER;
        let mut wait = Duration::ZERO;
        for (k, free) in &attempt.keys {
            let Some(e) = map.get(k).filter(live) else {
                continue;
            };
            wait = wait.max(e.blocked_until.saturating_duration_since(now));
            let crowded = match door {
                Door::Password => e.in_flight > 0 && e.failures + e.in_flight >= *free,
                Door::Postgres => e.in_flight >= MAX_IN_FLIGHT,
            };
            if crowded {
                wait = wait.max(FIRST_DELAY);
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| e.in_flight > 0 || now.duration_since(e.last) < FORGET_AFTER);
            while map.len() >= MAX_ENTRIES {
                let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.last)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        for (key, _) in &attempt.keys {
            let e = map.entry(key.clone()).or_insert(Entry {
                failures: 0,
                in_flight: 0,
                blocked_until: now,
                last: now,
            });
            if now.duration_since(e.last) >= FORGET_AFTER {
                e.failures = 0;
            }
            e.in_flight += 1;
            e.last = now;
        }
        drop(map);
        let mut attempt = attempt;
        attempt.settled = false;
        Ok(attempt)
    }

    /// Ends an attempt: a success clears its user's failures; a failure counts, and past
    /// the free ones blocks for twice as long as the one before.
    fn settle(&self, keys: &[(Key, u32)], ok: bool) {
        let now = Instant::now();
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        for (key, free) in keys {
            let Some(e) = map.get_mut(key) else { continue };
            e.in_flight = e.in_flight.saturating_sub(1);
            e.last = now;
            if ok {
                if matches!(key, Key::User(..)) {
                    e.failures = 0;
                    e.blocked_until = now;
                }
            } else {
                e.failures += 1;
                if e.failures >= *free {
                    let doublings = (e.failures - free).min(16);
                    e.blocked_until = now + (FIRST_DELAY * (1u32 << doublings)).min(MAX_DELAY);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_the_free_failures_and_grow() {
        let l = Limiter::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let pw = Door::Password;
        for _ in 0..FREE_PER_USER {
            assert!(l.attempt(pw, Some("alice"), a).is_ok());
        }
        let first = l.attempt(pw, Some("alice"), a).unwrap_err();
        assert!(first <= FIRST_DELAY && first > Duration::ZERO);
        std::thread::sleep(first);
        assert!(l.attempt(pw, Some("alice"), a).is_ok());
        let second = l.attempt(pw, Some("alice"), a).unwrap_err();
        assert!(second > FIRST_DELAY, "{second:?}");
        // Another user, another address, another door: not affected.
        assert!(l.attempt(pw, Some("bob"), [10, 0, 0, 1].into()).is_ok());
        assert!(l.attempt(pw, Some("alice"), [10, 0, 0, 1].into()).is_ok());
        assert!(l.attempt(Door::Postgres, Some("alice"), a).is_ok());
        // A success clears the user.
        std::thread::sleep(second);
        l.attempt(pw, Some("alice"), a).unwrap().succeeded();
        assert!(l.attempt(pw, Some("alice"), a).is_ok());
    }

    #[test]
    fn a_pool_connects_at_once_and_parallel_guesses_wait() {
        let l = Limiter::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        // Twenty connections of one user checked together at the PostgreSQL door.
        let pool: Vec<Attempt> = (0..20)
            .map(|_| l.attempt(Door::Postgres, Some("alice"), a).unwrap())
            .collect();
        pool.into_iter().for_each(Attempt::succeeded);
        assert!(l.attempt(Door::Postgres, Some("alice"), a).is_ok());
        // At the password door, the fourth guess in flight waits.
        let guesses: Vec<Attempt> = (0..FREE_PER_USER)
            .map(|_| l.attempt(Door::Password, Some("alice"), a).unwrap())
            .collect();
        assert!(l.attempt(Door::Password, Some("alice"), a).is_err());
        drop(guesses);
        assert!(l.attempt(Door::Password, Some("alice"), a).is_err());
    }

    #[test]
    fn one_address_trying_many_names_is_throttled() {
        let l = Limiter::default();
        let a: IpAddr = [192, 0, 2, 7].into();
        for i in 0..FREE_PER_ADDR {
            let name = format!("user{i}");
            assert!(l.attempt(Door::Postgres, Some(&name), a).is_ok());
        }
        assert!(l.attempt(Door::Postgres, None, a).is_err());
        assert!(
            l.attempt(Door::Postgres, None, [192, 0, 2, 8].into())
                .is_ok()
        );
        // Names that are not users are never keys: the map stays small.
        let l = Limiter::default();
        for i in 0..1000u32 {
            let _ = l.attempt(Door::Postgres, None, IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(l.entries.lock().unwrap().len(), 1000);
    }
}
