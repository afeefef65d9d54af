//! Failed-login throttling, per user name and per source address, with growing delays.
//!
//! A few failures are free (a typo); after that each failure blocks further attempts for
//! twice as long as the one before, up to five minutes. A success clears both counters;
//! fifteen quiet minutes forget them. State is in memory: a restart forgets it, which
//! costs an attacker a restart they cannot cause.

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
/// Past this many tracked names and addresses, quiet ones are dropped.
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
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
    fn keys(user: &str, addr: IpAddr) -> [(Key, u32); 2] {
        [
            (Key::User(user.to_string()), FREE_PER_USER),
            (Key::Addr(addr), FREE_PER_ADDR),
        ]
    }

    /// `Err(wait)` while either the user or the address is blocked.
    pub fn check(&self, user: &str, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(map) = self.entries.lock() else {
            return Ok(());
        };
        let wait = Self::keys(user, addr)
            .iter()
            .filter_map(|(k, _)| map.get(k))
            .map(|e| e.blocked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    pub fn failed(&self, user: &str, addr: IpAddr) {
        let now = Instant::now();
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        }
        for (key, free) in Self::keys(user, addr) {
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
    }

    pub fn succeeded(&self, user: &str, addr: IpAddr) {
        if let Ok(mut map) = self.entries.lock() {
            for (key, _) in Self::keys(user, addr) {
                map.remove(&key);
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
        for _ in 0..FREE_PER_USER - 1 {
            l.failed("alice", a);
            assert!(l.check("alice", a).is_ok());
        }
        l.failed("alice", a);
        let first = l.check("alice", a).unwrap_err();
        assert!(first <= FIRST_DELAY && first > Duration::ZERO);
        l.failed("alice", a);
        let second = l.check("alice", a).unwrap_err();
        assert!(second > FIRST_DELAY, "{second:?}");
        // Another user from another address is not affected; a success clears the user.
        assert!(l.check("bob", [10, 0, 0, 1].into()).is_ok());
        l.succeeded("alice", a);
        assert!(l.check("alice", a).is_ok());
    }

    #[test]
    fn one_address_trying_many_names_is_throttled() {
        let l = Limiter::default();
        let a: IpAddr = [192, 0, 2, 7].into();
        for i in 0..FREE_PER_ADDR {
            l.failed(&format!("user{i}"), a);
        }
        assert!(l.check("someone-new", a).is_err());
        assert!(l.check("someone-new", [192, 0, 2, 8].into()).is_ok());
    }
}
