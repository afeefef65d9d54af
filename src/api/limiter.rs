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
//!
//! Replicas share their counts through the store (`share`, once a second): each adds the
//! failures it saw and takes the totals back, so guesses spread over replicas behind a
//! balancer are throttled as if they all hit one, a second later at most.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{FailureKey, Store};

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
    unshared: Mutex<Unshared>,
}

/// Settled attempts the store has not heard of yet.
#[derive(Debug, Default)]
struct Unshared {
    failed: HashMap<Key, u32>,
    cleared: HashSet<Key>,
}

/// Keys waiting for the store at most (a flood of sources between two ticks).
const MAX_UNSHARED: usize = 10_000;

/// How long a counter with `failures` blocks, past its free ones.
fn block_for(failures: u32, free: u32) -> Option<Duration> {
    (failures >= free).then(|| {
        let doublings = (failures - free).min(16);
        (FIRST_DELAY * (1u32 << doublings)).min(MAX_DELAY)
    })
}

fn door_name(d: Door) -> &'static str {
    match d {
        Door::Password => "password",
        Door::Postgres => "postgres",
    }
}

impl Key {
    fn shared(&self) -> FailureKey {
        let (door, user, addr) = match self {
            Key::User(d, u, a) => (*d, u.clone(), a),
            Key::Addr(d, a) => (*d, String::new(), a),
        };
        FailureKey {
            door: door_name(door).into(),
            user,
            addr: addr.to_string(),
        }
    }

    fn from_shared(k: &FailureKey) -> Option<(Key, u32)> {
        let door = match k.door.as_str() {
            "password" => Door::Password,
            "postgres" => Door::Postgres,
            _ => return None,
        };
        let addr: IpAddr = k.addr.parse().ok()?;
        Some(if k.user.is_empty() {
            (Key::Addr(door, addr), FREE_PER_ADDR)
        } else {
            (Key::User(door, k.user.clone(), addr), FREE_PER_USER)
        })
    }
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
                if let Some(d) = block_for(e.failures, *free) {
                    e.blocked_until = now + d;
                }
            }
        }
        drop(map);
        let Ok(mut u) = self.unshared.lock() else {
            return;
        };
        for (key, _) in keys {
            if ok {
                if matches!(key, Key::User(..)) {
                    u.failed.remove(key);
                    if u.cleared.len() < MAX_UNSHARED {
                        u.cleared.insert(key.clone());
                    }
                }
            } else if u.failed.len() < MAX_UNSHARED || u.failed.contains_key(key) {
                u.cleared.remove(key);
                *u.failed.entry(key.clone()).or_default() += 1;
            }
        }
    }

    /// Adds this process's failures to the store's counts, then takes the totals back:
    /// a key that failed more often across replicas than here blocks here too.
    pub async fn share(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        let (failed, cleared) = match self.unshared.lock() {
            Ok(mut u) => {
                let u = std::mem::take(&mut *u);
                let failed: Vec<(FailureKey, u32)> =
                    u.failed.iter().map(|(k, n)| (k.shared(), *n)).collect();
                let cleared: Vec<FailureKey> = u.cleared.iter().map(Key::shared).collect();
                (failed, cleared)
            }
            Err(_) => return Ok(()),
        };
        let now_ms = crate::audit::now_ms();
        let forget_before = now_ms.saturating_sub(FORGET_AFTER.as_millis() as i64);
        store
            .add_login_failures(&failed, &cleared, now_ms, forget_before)
            .await?;
        let rows = store
            .login_failures(forget_before, FREE_PER_USER.min(FREE_PER_ADDR))
            .await?;
        self.absorb(&rows, now_ms);
        Ok(())
    }

    /// Takes the store's totals (key, failures, last failure in ms): an entry that saw
    /// fewer failures here is raised to the total and blocked as that total says, from the
    /// last failure on. A key cleared here since the totals were read is left alone.
    fn absorb(&self, rows: &[(FailureKey, u32, i64)], now_ms: i64) {
        let now = Instant::now();
        let cleared: HashSet<Key> = match self.unshared.lock() {
            Ok(u) => u.cleared.clone(),
            Err(_) => return,
        };
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        for (k, failures, last_ms) in rows {
            let Some((key, free)) = Key::from_shared(k) else {
                continue;
            };
            if cleared.contains(&key) {
                continue;
            }
            let ago = Duration::from_millis(u64::try_from(now_ms - last_ms).unwrap_or(0));
            let last = now.checked_sub(ago).unwrap_or(now);
            if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
                continue;
            }
            let e = map.entry(key).or_insert(Entry {
                failures: 0,
                in_flight: 0,
                blocked_until: now,
                last,
            });
            if *failures <= e.failures {
                continue;
            }
            e.failures = *failures;
            e.last = e.last.max(last);
            if let Some(d) = block_for(*failures, free) {
                e.blocked_until = e.blocked_until.max(last + d);
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
    fn totals_from_other_replicas_block_here_until_a_success_here() {
        let l = Limiter::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let now = crate::audit::now_ms();
        let alice = Key::User(Door::Password, "alice".into(), a).shared();
        l.absorb(&[(alice.clone(), 5, now - 100)], now);
        let wait = l.attempt(Door::Password, Some("alice"), a).unwrap_err();
        assert!(wait > Duration::from_secs(2), "{wait:?}");
        // Another user, another door: not affected; fewer than the free ones: nothing.
        assert!(l.attempt(Door::Password, Some("bob"), a).is_ok());
        assert!(l.attempt(Door::Postgres, Some("alice"), a).is_ok());
        let l = Limiter::default();
        l.absorb(&[(alice.clone(), 2, now)], now);
        assert!(l.attempt(Door::Password, Some("alice"), a).is_ok());
        // Garbage from the store is skipped.
        let bad = FailureKey {
            door: "telnet".into(),
            user: "x".into(),
            addr: "not an address".into(),
        };
        l.absorb(&[(bad, 99, now)], now);
        // What this process saw goes to the store once.
        drop(l.attempt(Door::Postgres, Some("carol"), a).unwrap());
        let u = std::mem::take(&mut *l.unshared.lock().unwrap());
        assert_eq!(u.failed.len(), 4, "{u:?}");
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
