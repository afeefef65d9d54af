//! Audit events: one structured record for every security-relevant action.
//!
//! Types are dotted and stable (`user.create`, `access.check`, `server.start`); the
//! catalogue lives in `docs/audit-events.md`.

pub mod chain;
pub mod lineage;
pub mod repeats;
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

    /// A postern user as the actor: `user:NAME`, or `bot:NAME` for a machine identity.
    pub fn of(user: &crate::policy::User) -> Actor {
        if user.bot {
            Actor(format!("bot:{}", user.name))
        } else {
            Actor::user(&user.name)
        }
    }

    pub fn system() -> Actor {
        Actor("system:postern".into())
    }

    /// The OS account running this process (`os:alice`), for local admin commands: the
    /// real uid, or under sudo (uid 0 with `SUDO_UID`) the account that ran sudo. Taken
    /// from the kernel and the account database, never from `USER`, which anyone can set.
    pub fn os() -> Actor {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let uid = match std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()) {
            Some(sudo) if uid == 0 => sudo,
            _ => uid,
        };
        Actor(format!("os:{}", os_account(uid)))
    }
}

/// The account name of `uid` when it is a plain name, else `uid=N`.
fn os_account(uid: libc::uid_t) -> String {
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` outlives the use of `pwd`'s
    // strings below, and `found` is either null or points at `pwd`.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() {
        // SAFETY: getpwuid_r filled `pwd` (found == &pwd); pw_name is NUL-terminated in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr((*found).pw_name) };
        if let Ok(name) = name.to_str()
            && plain_account(name)
        {
            return name.to_string();
        }
    }
    format!("uid={uid}")
}

/// What useradd accepts: letters, digits, `_`, `.`, `-` (not first), at most 32 bytes.
fn plain_account(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
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

    /// One of the four results; anything else is not an audit result (a damaged or
    /// forged row), never read as a success.
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            "allow" => Some(Outcome::Allow),
            "deny" => Some(Outcome::Deny),
            _ => None,
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

/// Seconds (as they come from a certificate or the wire) as milliseconds, saturating:
/// OpenSSH's "forever" (`u64::MAX`) is the far future, never an overflow.
pub fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .unwrap_or(i64::MAX)
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
