//! Who gets a connection slot on a listener, and for how long before logging in.
//!
//! Each listener has its own budget (`max_connections`), so a flood on one never takes
//! the others down. Connections that have not authenticated yet are the cheap ones to
//! open and the ones an attacker holds idle, so they have budgets of their own: at most
//! `max_unauthenticated` per listener, at most `max_unauthenticated_per_source` per
//! source (an IPv4 address, an IPv6 /64), and a login deadline each. When the listener's
//! unauthenticated budget (or its source's) is full, a new connection takes the slot of
//! the oldest one there that has been waiting at least two seconds: a client that logs in
//! promptly gets in, however many idle sockets are parked on the port, even from its own
//! address (a NAT shared with the attacker).
//!
//! A connection is refused by accepting and closing it, never by leaving it in the
//! kernel's backlog, where it would wait behind the idle ones.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A pre-login connection younger than this is never displaced by a newer one.
const MIN_AGE_TO_DISPLACE: Duration = Duration::from_secs(2);

/// The source an unauthenticated connection is counted against: an IPv4 address (also
/// when written as IPv4-mapped IPv6), or an IPv6 /64 (a host usually holds a whole one).
pub fn source(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
        },
        v4 => v4,
    }
}

/// The budgets of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub connections: usize,
    pub unauthenticated: usize,
    pub per_source: usize,
    /// How long a connection may take to authenticate.
    pub login_grace: Duration,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener serves `max_connections` already.
    Full,
    /// This source has `max_unauthenticated_per_source` connections still logging in, all
    /// of them recent.
    Source,
    /// `max_unauthenticated` connections are logging in, all of them recently.
    Busy,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Full => {
                "postern is serving its maximum number of connections; try again shortly"
            }
            Refused::Source => {
                "too many connections from your address are still logging in; finish or close them and try again"
            }
            Refused::Busy => {
                "postern has too many connections logging in right now; try again shortly"
            }
        }
    }
}

struct Waiting {
    since: Instant,
    source: IpAddr,
    displaced: CancellationToken,
}

#[derive(Default)]
struct Pending {
    next_id: u64,
    /// By id, which is also by age.
    by_age: BTreeMap<u64, Waiting>,
    per_source: HashMap<IpAddr, usize>,
}

impl Pending {
    /// Forgets a waiting connection; `None` when it was already gone.
    fn remove(&mut self, id: u64) -> Option<Waiting> {
        let w = self.by_age.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&w.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&w.source);
            }
        }
        Some(w)
    }
}

/// The admission state of one listener.
pub struct Admission {
    budget: Budget,
    connections: Arc<Semaphore>,
    pending: Mutex<Pending>,
}

impl Admission {
    pub fn new(budget: Budget) -> Arc<Admission> {
        Arc::new(Admission {
            budget,
            connections: Arc::new(Semaphore::new(budget.connections.max(1))),
            pending: Mutex::new(Pending::default()),
        })
    }

    /// Takes a slot for a new connection from `peer`: the connection's permit (held until
    /// it ends) and its login gate.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<(OwnedSemaphorePermit, Gate), Refused> {
        let permit = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        let source = source(peer);
        let now = Instant::now();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // At a budget, the oldest connection it holds makes room if it had its chance.
        let at_source = p.per_source.get(&source).copied().unwrap_or(0) >= self.budget.per_source;
        if at_source || p.by_age.len() >= self.budget.unauthenticated {
            let oldest = p
                .by_age
                .iter()
                .find(|(_, w)| !at_source || w.source == source)
                .filter(|(_, w)| now.duration_since(w.since) >= MIN_AGE_TO_DISPLACE)
                .map(|(id, _)| *id);
            let Some(w) = oldest.and_then(|id| p.remove(id)) else {
                return Err(if at_source {
                    Refused::Source
                } else {
                    Refused::Busy
                });
            };
            w.displaced.cancel();
        }
        let id = p.next_id;
        p.next_id += 1;
        let displaced = CancellationToken::new();
        p.by_age.insert(
            id,
            Waiting {
                since: now,
                source,
                displaced: displaced.clone(),
            },
        );
        *p.per_source.entry(source).or_insert(0) += 1;
        drop(p);
        let gate = Gate(Arc::new(GateInner {
            admission: self.clone(),
            id,
            deadline: now + self.budget.login_grace,
            displaced,
            passed: CancellationToken::new(),
        }));
        Ok((permit, gate))
    }

    fn release(&self, id: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.remove(id);
    }

    #[cfg(test)]
    fn unauthenticated(&self) -> usize {
        self.pending.lock().map(|p| p.by_age.len()).unwrap_or(0)
    }
}

struct GateInner {
    admission: Arc<Admission>,
    id: u64,
    deadline: Instant,
    displaced: CancellationToken,
    passed: CancellationToken,
}

impl Drop for GateInner {
    fn drop(&mut self) {
        self.admission.release(self.id);
    }
}

/// A connection's way through login: `passed` once it authenticated; until then
/// `expired` fires at its login deadline or when a newer connection displaced it.
#[derive(Clone)]
pub struct Gate(Arc<GateInner>);

impl Gate {
    /// The connection authenticated: it no longer counts as logging in.
    pub fn passed(&self) {
        self.0.passed.cancel();
        self.0.admission.release(self.0.id);
    }

    /// Resolves when the connection must be closed for not logging in; never after
    /// `passed`. The reason is for the log.
    pub async fn expired(&self) -> &'static str {
        tokio::select! {
            biased;
            _ = self.0.passed.cancelled() => std::future::pending().await,
            _ = self.0.displaced.cancelled() => "displaced by newer connections while logging in",
            _ = tokio::time::sleep_until(self.0.deadline) => "login grace time exceeded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(unauth: usize, per_source: usize) -> Budget {
        Budget {
            connections: 100,
            unauthenticated: unauth,
            per_source,
            login_grace: Duration::from_secs(60),
        }
    }

    #[test]
    fn per_source_cap_counts_a_v6_network_as_one_source() {
        let a = Admission::new(budget(10, 2));
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let two: IpAddr = "2001:db8::2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let _g1 = a.admit(one).unwrap();
        let _g2 = a.admit(two).unwrap();
        assert_eq!(a.admit(one).err(), Some(Refused::Source));
        assert!(a.admit(other).is_ok());
    }

    #[test]
    fn passing_or_closing_frees_the_slot_once() {
        let a = Admission::new(budget(10, 1));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (_p, g) = a.admit(ip).unwrap();
        let g2 = g.clone();
        g.passed();
        g2.passed();
        assert_eq!(a.unauthenticated(), 0);
        let (_p2, g3) = a.admit(ip).unwrap();
        drop(g);
        drop(g2);
        assert_eq!(
            a.unauthenticated(),
            1,
            "an old gate's drop frees nothing of a new one"
        );
        drop(g3);
        assert_eq!(a.unauthenticated(), 0);
    }

    #[tokio::test]
    async fn a_full_budget_displaces_its_oldest_only_once_it_had_its_chance() {
        let displaced = Some("displaced by newer connections while logging in");
        let a = Admission::new(budget(3, 2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let (_p1, g1) = a.admit(ip).unwrap();
        let (_p2, _g2) = a.admit(ip).unwrap();
        assert_eq!(a.admit(ip).err(), Some(Refused::Source));
        let (_p3, g3) = a.admit(other).unwrap();
        assert_eq!(
            a.admit("192.0.2.3".parse().unwrap()).err(),
            Some(Refused::Busy)
        );
        tokio::time::sleep(MIN_AGE_TO_DISPLACE + Duration::from_millis(100)).await;
        // The source's own oldest makes room, not another source's.
        let (_p4, _g4) = a.admit(ip).unwrap();
        let why = tokio::time::timeout(Duration::from_millis(1), g1.expired()).await;
        assert_eq!(why.ok(), displaced);
        let why = tokio::time::timeout(Duration::from_millis(1), g3.expired()).await;
        assert!(why.is_err(), "{why:?}");
        // The listener's oldest makes room for a new source.
        let (_p5, _g5) = a.admit("192.0.2.3".parse().unwrap()).unwrap();
        assert_eq!(a.unauthenticated(), 3);
    }

    #[test]
    fn connection_budget_is_per_listener() {
        let a = Admission::new(Budget {
            connections: 1,
            ..budget(10, 10)
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (_p, g) = a.admit(ip).unwrap();
        g.passed();
        assert_eq!(a.admit(ip).err(), Some(Refused::Full));
    }
}
