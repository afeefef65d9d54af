//! Repeated failures, collapsed: a stream of failed logins (rotating names, rotating
//! source addresses) must not grow the audit log at the attacker's pace. The first few
//! failures of a kind in a window are written as they happen; the ones that repeat them
//! (same type, actor, method and reason) are counted, and when the window closes one more
//! event says how many followed (`repeated`), from which sources and with which names.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::AuditEvent;

/// Distinct windows open at once; beyond this, failures are written one by one (never
/// dropped). Unknown actors share one key per reason, so this is reached only by many
/// known users failing at once.
const MAX_OPEN: usize = 4096;
/// Identical failures written one by one in a window before counting starts: a person
/// mistyping a password three times reads as three events.
const WRITTEN_PER_WINDOW: u32 = 5;
/// Sources and names kept per window, as a sample for the summary.
const SAMPLE: usize = 10;

/// Event types that collapse: failures before anyone logged in.
pub fn collapses(kind: &str) -> bool {
    matches!(kind, "auth.failure" | "auth.rate_limited")
}

pub struct Repeats {
    window: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: HashMap<String, Window>,
    /// Summaries of windows that a new failure replaced before `due` collected them.
    closed: Vec<AuditEvent>,
}

struct Window {
    opened: Instant,
    first: AuditEvent,
    /// Events of this window written one by one (up to `WRITTEN_PER_WINDOW`).
    written: u32,
    /// Events counted after those.
    repeated: u64,
    sources: Vec<String>,
    names: Vec<String>,
    /// Whether more distinct sources or names came than the samples hold.
    more_sources: bool,
    more_names: bool,
}

impl Repeats {
    pub fn new(window: Duration) -> Repeats {
        Repeats {
            window,
            state: Mutex::new(State::default()),
        }
    }

    /// The event to write now, or `None` when it repeats one written in this window.
    pub fn note(&self, e: AuditEvent, now: Instant) -> Option<AuditEvent> {
        if !collapses(&e.kind) {
            return Some(e);
        }
        let key = key(&e);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { open, closed } = &mut *state;
        let full = open.len() >= MAX_OPEN;
        match open.get_mut(&key) {
            Some(w) if now.duration_since(w.opened) < self.window => {
                if w.written < WRITTEN_PER_WINDOW {
                    w.written += 1;
                    return Some(e);
                }
                w.repeated += 1;
                // Sources by address: one client's many ports are one source.
                let ip = e.source.as_deref().map(address);
                w.more_sources |= !sample(&mut w.sources, ip);
                w.more_names |= !sample(&mut w.names, tried_name(&e.details));
                return None;
            }
            Some(_) => {}
            None if full => return Some(e),
            None => {}
        }
        let w = Window {
            opened: now,
            first: e.clone(),
            written: 1,
            repeated: 0,
            sources: Vec::new(),
            names: Vec::new(),
            more_sources: false,
            more_names: false,
        };
        if let Some(old) = open.insert(key, w) {
            closed.extend(summary(&old, self.window));
        }
        Some(e)
    }

    /// Summaries of the windows that closed by `now` (every window when `all`, at
    /// shutdown); windows without repeats just close.
    pub fn due(&self, now: Instant, all: bool) -> Vec<AuditEvent> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { open, closed } = &mut *state;
        let mut out = std::mem::take(closed);
        open.retain(|_, w| {
            if !all && now.duration_since(w.opened) < self.window {
                return true;
            }
            out.extend(summary(w, self.window));
            false
        });
        out.sort_by_key(|e| e.time_ms);
        out
    }
}

fn key(e: &AuditEvent) -> String {
    let s = |k: &str| e.details.get(k).and_then(Value::as_str).unwrap_or("");
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
        e.kind,
        e.actor.0,
        e.result.as_str(),
        s("method"),
        s("reason")
    )
}

fn tried_name(details: &Value) -> Option<&str> {
    ["user", "ssh_user"]
        .iter()
        .find_map(|k| details.get(*k).and_then(Value::as_str))
}

/// The address of `ip:port` (`[v6]:port`), or the text as it is.
fn address(source: &str) -> &str {
    match source.parse::<std::net::SocketAddr>() {
        Ok(_) => source
            .rsplit_once(':')
            .map(|(a, _)| a.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(source),
        Err(_) => source,
    }
}

/// Adds `value` to the sample; `false` when it is new but the sample is full.
fn sample(into: &mut Vec<String>, value: Option<&str>) -> bool {
    let Some(v) = value else { return true };
    if into.iter().any(|x| x == v) {
        return true;
    }
    if into.len() < SAMPLE {
        into.push(v.to_string());
        return true;
    }
    false
}

/// The event closing a window with repeats: the first event's type, actor, `method` and
/// `reason` (what the repeats share; per-attempt fields such as a fingerprint are not
/// theirs), `repeated` (how many were counted), `window_s`, `first_id`, and samples of
/// the source addresses and names tried (`sources_more`/`names_more` when cut).
fn summary(w: &Window, window: Duration) -> Option<AuditEvent> {
    if w.repeated == 0 {
        return None;
    }
    let mut details = serde_json::Map::new();
    for k in ["method", "reason"] {
        if let Some(v) = w.first.details.get(k) {
            details.insert(k.into(), v.clone());
        }
    }
    details.insert("repeated".into(), json!(w.repeated));
    details.insert("window_s".into(), json!(window.as_secs()));
    details.insert("first_id".into(), json!(w.first.id.to_string()));
    details.insert("sources".into(), json!(w.sources));
    details.insert("sources_more".into(), json!(w.more_sources));
    details.insert("names".into(), json!(w.names));
    details.insert("names_more".into(), json!(w.more_names));
    let mut e = AuditEvent::new(
        &w.first.kind,
        &w.first.actor,
        w.first.result,
        Value::Object(details),
    );
    e.target = w.first.target.clone();
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Outcome};

    fn failure(name: &str, source: &str) -> AuditEvent {
        let mut e = AuditEvent::new(
            "auth.failure",
            &Actor("unknown".into()),
            Outcome::Failure,
            json!({ "method": "db_token", "reason": "unknown user", "user": name }),
        );
        e.source = Some(source.into());
        e
    }

    #[test]
    fn repeats_in_a_window_become_one_summary() {
        let r = Repeats::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..WRITTEN_PER_WINDOW {
            assert!(r.note(failure("a", "10.0.0.1:1"), t0).is_some());
        }
        for i in 0..500 {
            let at = t0 + Duration::from_millis(i);
            assert!(
                r.note(failure(&format!("n{i}"), &format!("10.0.{i}.2:1")), at)
                    .is_none()
            );
        }
        // Other reasons and other kinds are not swallowed.
        let mut other = failure("a", "10.0.0.1:1");
        other.details["reason"] = json!("token expired");
        assert!(r.note(other, t0).is_some());
        let start = AuditEvent::new(
            "server.start",
            &Actor::system(),
            Outcome::Success,
            json!({}),
        );
        assert!(r.note(start, t0).is_some());

        assert!(r.due(t0 + Duration::from_secs(59), false).is_empty());
        let due = r.due(t0 + Duration::from_secs(60), false);
        assert_eq!(due.len(), 1, "{due:?}");
        let d = &due[0].details;
        assert_eq!(d["repeated"], 500);
        assert_eq!(d["sources"].as_array().unwrap().len(), SAMPLE);
        assert_eq!(d["names"].as_array().unwrap().len(), SAMPLE);
        assert_eq!(
            (d["sources_more"].clone(), d["names_more"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(d["sources"][0], "10.0.0.2");
        assert!(d.get("user").is_none());
        assert!(r.due(t0 + Duration::from_secs(120), true).is_empty());
    }

    #[test]
    fn a_new_window_after_repeats_keeps_the_summary_before_it() {
        let r = Repeats::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..WRITTEN_PER_WINDOW {
            assert!(r.note(failure("a", "s"), t0).is_some());
        }
        assert!(r.note(failure("b", "s"), t0).is_none());
        // The window closed before anyone asked for its summary; a new failure opens
        // the next one and the summary is still written.
        assert!(
            r.note(failure("c", "s"), t0 + Duration::from_secs(11))
                .is_some()
        );
        let due = r.due(t0 + Duration::from_secs(11), false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].details["repeated"], 1);
        let rest = r.due(t0 + Duration::from_secs(11), true);
        assert!(rest.is_empty(), "{rest:?}");
    }
}
