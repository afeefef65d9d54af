//! Human durations as admins write them: `90s`, `15m`, `8h`, `7d`, or sums like `1h30m`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole number of seconds, written and parsed in postern's duration syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration `{input}`: {why}; write a whole number followed by s, m, h or d (e.g. 90s, 15m, 8h, 7d)"
)]
pub struct DurationError {
    input: String,
    why: &'static str,
}

impl Dur {
    pub const fn from_secs(secs: u64) -> Self {
        Dur(Duration::from_secs(secs))
    }

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// Unix ms this long before `now_ms`.
    pub fn before(self, now_ms: i64) -> i64 {
        now_ms
            .saturating_sub(i64::try_from(self.as_secs().saturating_mul(1000)).unwrap_or(i64::MAX))
    }
}

/// A `since` filter as people type it (`1h`, `7d`; blank for none) as Unix ms, or what is
/// wrong with it.
pub fn since(s: &str, now_ms: i64) -> Result<Option<i64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<Dur>()
        .map(|d| Some(d.before(now_ms)))
        .map_err(|e| format!("`since`: {e}"))
}

impl FromStr for Dur {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| DurationError {
            input: input.to_string(),
            why,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(err("unexpected character")),
            };
            if digits.is_empty() {
                return Err(err("a unit needs a number before it"));
            }
            let n: u64 = digits.parse().map_err(|_| err("number too large"))?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| err("too long"))?;
        }
        if !digits.is_empty() {
            return Err(err("missing unit"));
        }
        // Ten years is far beyond any sensible TTL and keeps arithmetic on
        // timestamps comfortably inside i64 milliseconds.
        if total > 10 * 365 * 86_400 {
            return Err(err("longer than ten years"));
        }
        Ok(Dur::from_secs(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= size {
                write!(f, "{}{}", secs / size, unit)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (input, secs, shown) in [
            ("90s", 90, "1m30s"),
            ("15m", 900, "15m"),
            ("8h", 28_800, "8h"),
            ("7d", 604_800, "7d"),
            ("1h30m", 5400, "1h30m"),
            ("0s", 0, "0s"),
        ] {
            let d: Dur = input.parse().unwrap();
            assert_eq!(d.as_secs(), secs, "{input}");
            assert_eq!(d.to_string(), shown, "{input}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        for input in [
            "2 parsecs",
            "",
            "h",
            "10",
            "5w",
            "-5m",
            "99999999999999999999s",
            "4000d",
        ] {
            let e = input.parse::<Dur>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{input}`")), "{e}");
            assert!(e.contains("e.g. 90s"), "{e}");
        }
    }
}
