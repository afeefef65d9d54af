//! Prometheus metrics (`GET /metrics` on the API listener, and `[metrics] listen` for a
//! plain-HTTP scraper address).
//!
//! Counts of what the audit log records are taken from the audit events themselves as
//! they are appended (`observe`), so the two never disagree: authentications by method,
//! result and reason, access decisions, sessions started and ended, bytes relayed (counted
//! when a session ends). The rest is measured where it happens: recording writes, audit
//! appends and the audit queue, store errors, connections refused by a listener's budget,
//! and live sessions (read from the live registry at scrape time). No label carries a user,
//! target or address: label values come from fixed sets, so a client cannot grow them.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::AuditEvent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Auth {
    method: &'static str,
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Protocol {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ended {
    protocol: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Bytes {
    protocol: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result_ {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Listener {
    listener: &'static str,
}

struct Metrics {
    registry: Registry,
    auth: Family<Auth, Counter>,
    decisions: Family<Result_, Counter>,
    started: Family<Protocol, Counter>,
    ended: Family<Ended, Counter>,
    bytes: Family<Bytes, Counter>,
    live: Family<Protocol, Gauge>,
    recording_write: Histogram,
    audit_append: Histogram,
    audit_queue: Gauge,
    store_errors: Family<Operation, Counter>,
    rejected: Family<Listener, Counter>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut m = Metrics {
            registry: Registry::with_prefix("postern"),
            auth: Family::default(),
            decisions: Family::default(),
            started: Family::default(),
            ended: Family::default(),
            bytes: Family::default(),
            live: Family::default(),
            // 50 µs to ~0.8 s.
            recording_write: Histogram::new(exponential_buckets(0.000_05, 2.0, 15)),
            audit_append: Histogram::new(exponential_buckets(0.000_05, 2.0, 15)),
            audit_queue: Gauge::default(),
            store_errors: Family::default(),
            rejected: Family::default(),
        };
        let registry = &mut m.registry;
        registry.register(
            "auth",
            "Authentications (SSH, PostgreSQL, API logins) by method, result and reason",
            m.auth.clone(),
        );
        registry.register(
            "access_decisions",
            "Access decisions by result (allow: a session started; deny: refused)",
            m.decisions.clone(),
        );
        registry.register(
            "sessions_started",
            "Sessions started, by protocol",
            m.started.clone(),
        );
        registry.register(
            "sessions_ended",
            "Sessions ended, by protocol and end reason",
            m.ended.clone(),
        );
        registry.register(
            "relayed_bytes",
            "Bytes relayed by ended sessions, by protocol and direction (in: from clients)",
            m.bytes.clone(),
        );
        registry.register(
            "sessions_live",
            "Sessions running now, by protocol",
            m.live.clone(),
        );
        registry.register(
            "recording_write_seconds",
            "Time to write a batch of a recording to its file",
            m.recording_write.clone(),
        );
        registry.register(
            "audit_append_seconds",
            "Time from queueing an audit event to its transaction's commit",
            m.audit_append.clone(),
        );
        registry.register(
            "audit_queue_depth",
            "Audit events queued for the writer",
            m.audit_queue.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed, by operation",
            m.store_errors.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections refused by a listener's connection budget, by listener",
            m.rejected.clone(),
        );
        // Series that are zero until something goes wrong are there from the start, so a
        // dashboard shows 0 rather than no data.
        for operation in ["audit_append", "session_start", "session_end"] {
            m.store_errors
                .get_or_create(&Operation { operation })
                .inc_by(0);
        }
        for listener in ["ssh", "postgres", "api"] {
            m.rejected.get_or_create(&Listener { listener }).inc_by(0);
        }
        m
    })
}

/// A value from a fixed set, or `other`: label values never come from a client.
fn one_of(value: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .unwrap_or("other")
}

const METHODS: &[&str] = &[
    "publickey",
    "certificate",
    "password",
    "password+totp",
    "db_token",
];
const AUTH_REASONS: &[&str] = &[
    "unknown user",
    "wrong password",
    "wrong one-time code",
    "one-time code reused",
    "user locked",
    "no roles",
    "key not registered",
    "key type not accepted",
    "expired",
    "serial revoked",
    "login revoked",
    "token expired",
    "token for another target",
    "not a database token for this user, target and database",
];
const END_REASONS: &[&str] = &[
    "client exit",
    "idle",
    "expired",
    "credential_expired",
    "revoked",
    "killed",
    "shutdown",
    "connection lost",
    "recording failed",
    "limit",
    "ended",
    "target closed the connection",
    "protocol violation by the client",
    "protocol violation by the target",
    "upstream unreachable",
    "host key mismatch",
    "upstream refused login",
    "no pinned host key",
    "crash-recovered",
];

/// Counts what an audit event records (called for every event appended).
pub fn observe(e: &AuditEvent) {
    let m = metrics();
    let d = &e.details;
    let text = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let protocol = || {
        if text("kind") == "postgres" {
            "postgres"
        } else {
            "ssh"
        }
    };
    // A summary of repeated failures stands for `repeated` more of them.
    let times = d.get("repeated").and_then(|v| v.as_u64()).unwrap_or(1);
    match e.kind.as_str() {
        "auth.success" | "auth.login" | "auth.failure" | "auth.rate_limited" => {
            let result = match e.kind.as_str() {
                "auth.failure" => "failure",
                "auth.rate_limited" => "rate_limited",
                _ => "success",
            };
            let reason = if result == "failure" {
                one_of(text("reason"), AUTH_REASONS)
            } else {
                ""
            };
            m.auth
                .get_or_create(&Auth {
                    method: one_of(text("method"), METHODS),
                    result,
                    reason,
                })
                .inc_by(times);
        }
        "access.deny" => {
            m.decisions
                .get_or_create(&Result_ { result: "deny" })
                .inc_by(times);
        }
        "session.start" => {
            m.decisions
                .get_or_create(&Result_ { result: "allow" })
                .inc();
            m.started
                .get_or_create(&Protocol {
                    protocol: protocol(),
                })
                .inc();
        }
        "session.end" => {
            let protocol = protocol();
            m.ended
                .get_or_create(&Ended {
                    protocol,
                    reason: one_of(text("reason"), END_REASONS),
                })
                .inc();
            for (direction, key) in [("in", "bytes_in"), ("out", "bytes_out")] {
                let n = d.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
                m.bytes
                    .get_or_create(&Bytes {
                        protocol,
                        direction,
                    })
                    .inc_by(n);
            }
        }
        _ => {}
    }
}

pub fn recording_write(took: Duration) {
    metrics().recording_write.observe(took.as_secs_f64());
}

pub fn audit_append(took: Duration, queued: usize) {
    let m = metrics();
    m.audit_append.observe(took.as_secs_f64());
    m.audit_queue.set(i64::try_from(queued).unwrap_or(i64::MAX));
}

pub fn store_error(operation: &'static str) {
    metrics()
        .store_errors
        .get_or_create(&Operation { operation })
        .inc();
}

pub fn rejected(listener: &'static str) {
    metrics()
        .rejected
        .get_or_create(&Listener { listener })
        .inc();
}

/// The metrics in Prometheus' text format; `live` gives the sessions running now by
/// protocol.
pub fn render(live: &[(&'static str, usize)]) -> String {
    let m = metrics();
    for protocol in ["ssh", "postgres"] {
        let n = live
            .iter()
            .filter(|(p, _)| *p == protocol)
            .map(|(_, n)| n)
            .sum::<usize>();
        m.live
            .get_or_create(&Protocol { protocol })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}
