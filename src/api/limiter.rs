//! Failed-login throttling with growing delays, per door (the API's password login,
//! PostgreSQL's token login): per user name and source address together, and per source
//! address alone. A door's failures never lock another door, and a name that is not a
//! user is counted only against its address.
//!
//! An attempt is reserved before the password is checked (it counts as a failure until it
//! succeeds), so parallel guesses cannot all slip in before the first is counted. A few
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

struct Entry {
    failures: u32,
    blocked_until: Instant,
    last: Instant,
}

#[derive(Default)]
pub struct Limiter {
    entries: Mutex<HashMap<Key, Entry>>,
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

    /// Reserves an attempt: `Err(wait)` while the user or the address is blocked;
    /// otherwise the attempt counts as a failure until `succeeded`. `user` is `None` for a
    /// name that is not a user.
    pub fn attempt(&self, door: Door, user: Option<&str>, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut map) = self.entries.lock() else {
            return Ok(());
        };
        let keys = Self::keys(door, user, addr);
        let wait = keys
            .iter()
            .filter_map(|(k, _)| map.get(k))
            .filter(|e| now.duration_since(e.last) < FORGET_AFTER)
            .map(|e| e.blocked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            return Err(wait);
        }
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
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
        for (key, free) in keys {
            let e = map.entry(key).or_insert(Entry {
                failures: 0,
                blocked_until: now,
                last: now,
            });
            if now.duration_since(e.last) >= FORGET_AFTER {
                e.failures = 0;
            }
            e.failures += 1;
            e.last = now;
            if e.failures >= free {
                let doublings = (e.failures - free).min(16);
                e.blocked_until = now + (FIRST_DELAY * (1u32 << doublings)).min(MAX_DELAY);
            }
        }
        Ok(())
    }

    /// The attempt was right: the user's counter is cleared and the address's reservation
    /// returned.
    pub fn succeeded(&self, door: Door, user: &str, addr: IpAddr) {
        let keys = Self::keys(door, Some(user), addr);
        if let Ok(mut map) = self.entries.lock() {
            for (k, _) in &keys {
                if matches!(k, Key::User(..)) {
                    map.remove(k);
                }
            }
            let addr_key = &keys[0].0;
            if let Some(e) = map.get_mut(addr_key) {
                e.failures = e.failures.saturating_sub(1);
                if e.failures < FREE_PER_ADDR {
                    e.blocked_until = e.last;
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
        l.succeeded(pw, "alice", a);
        assert!(l.attempt(pw, Some("alice"), a).is_ok());
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
