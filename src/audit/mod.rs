//! Audit events: one structured record for every security-relevant action.
//!
//! Types are dotted and stable (`user.create`, `access.check`, `server.start`); the
//! catalogue lives in `docs/audit-events.md`.

pub mod chain;
pub mod verify;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Who did it: a postern user, or the operating-system account that ran a local command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor(pub String);

impl Actor {
    pub fn user(name: &str) -> Actor {
        Actor(format!("user:{name}"))
    }

    pub fn system() -> Actor {
        Actor("system:postern".into())
    }

    /// The OS account running this process (`os:root`), for local admin commands.
    pub fn os() -> Actor {
        let name = ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(os_user_from_uid);
        Actor(format!("os:{name}"))
    }
}

/// The name /etc/passwd gives this process's uid, or `uid=N`.
fn os_user_from_uid() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() }.to_string();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or(format!("uid={uid}"))
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Allow,
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Outcome {
        match s {
            "failure" => Outcome::Failure,
            "allow" => Outcome::Allow,
            "deny" => Outcome::Deny,
            _ => Outcome::Success,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: Uuid,
    /// Unix milliseconds, UTC.
    pub time_ms: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub actor: Actor,
    pub source: Option<String>,
    pub target: Option<String>,
    pub session_id: Option<String>,
    pub result: Outcome,
    pub details: Value,
}

impl AuditEvent {
    pub fn new(kind: impl Into<String>, actor: &Actor, result: Outcome, details: Value) -> Self {
        AuditEvent {
            id: Uuid::new_v4(),
            time_ms: now_ms(),
            kind: kind.into(),
            actor: actor.clone(),
            source: None,
            target: None,
            session_id: None,
            result,
            details,
        }
    }

    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
}

pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `2026-11-25T12:34:56.789Z`.
/// A wall-clock time for a person: `14:02 UTC` today, `2026-11-26 14:02 UTC` otherwise.
pub fn format_clock(ms: i64) -> String {
    let at = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    let t = at(ms);
    let f = if t.date() == at(now_ms()).date() {
        time::macros::format_description!("[hour]:[minute] UTC")
    } else {
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC")
    };
    t.format(&f).unwrap_or_else(|_| format_ms(ms))
}

pub fn format_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_else(|_| ms.to_string())
}
