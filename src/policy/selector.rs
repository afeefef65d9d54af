//! Label selectors: which targets a rule covers (`env=prod`, `team in (vision, nlp)`, `*`).
//!
//! Grammar, comma-separated requirements that must all hold:
//! `*` (every target, alone), `key=value`, `key!=value`, `key in (a, b)`,
//! `key notin (a, b)`, `key` (label present), `!key` (label absent).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `*`: every target.
    All,
    /// All of these requirements.
    Match(Vec<Requirement>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid label selector `{input}`: {why}; examples: `*`, `env=prod`, `team in (vision, nlp)`, `env!=prod, gpu`"
)]
pub struct SelectorError {
    input: String,
    why: String,
}

/// Label keys and values: 1–63 characters of letters, digits, `-`, `_`, `.`, `/`.
pub fn valid_label_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::All => true,
            Selector::Match(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        }
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced `)`")?,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `(`".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or("a set must be written in parentheses, like `(a, b)`")?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().any(|v| !valid_label_part(v)) {
        return Err("set values must be non-empty labels (letters, digits, - _ . /)".into());
    }
    Ok(values)
}

fn label(s: &str, what: &str) -> Result<String, String> {
    let s = s.trim();
    if valid_label_part(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a valid label {what} (1-63 letters, digits, - _ . /)"
        ))
    }
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let p = part.trim();
    if p.is_empty() {
        return Err("empty requirement".into());
    }
    if p == "*" {
        return Err("`*` must stand alone".into());
    }
    if let Some((k, v)) = p.split_once("!=") {
        return Ok(Requirement::NotEq(label(k, "key")?, label(v, "value")?));
    }
    // One operator, one way to write it: a doubled or misplaced sign is a typo to show,
    // not something to guess the meaning of.
    for typo in ["==", "=!", "!!", "=<", "=>", "<=", ">="] {
        if p.contains(typo) {
            return Err(format!(
                "`{typo}` in `{p}` is not an operator: write `key=value` or `key!=value`"
            ));
        }
    }
    if let Some((k, v)) = p.split_once('=') {
        return Ok(Requirement::Eq(label(k, "key")?, label(v, "value")?));
    }
    if let Some(k) = p.strip_prefix('!') {
        return Ok(Requirement::Absent(label(k, "key")?));
    }
    let mut words = p.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    match words.next().map(str::trim_start) {
        None => Ok(Requirement::Exists(label(key, "key")?)),
        Some(rest) => {
            if let Some(set) = rest.strip_prefix("notin") {
                Ok(Requirement::NotIn(label(key, "key")?, parse_set(set)?))
            } else if let Some(set) = rest.strip_prefix("in") {
                Ok(Requirement::In(label(key, "key")?, parse_set(set)?))
            } else {
                Err(format!(
                    "cannot read `{p}`: expected `=`, `!=`, `in (...)` or `notin (...)`"
                ))
            }
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why: String| SelectorError {
            input: input.to_string(),
            why,
        };
        if input.trim() == "*" {
            return Ok(Selector::All);
        }
        if input.trim().is_empty() {
            return Err(err("it is empty (use `*` for every target)".into()));
        }
        let reqs = split_top_level(input)
            .map_err(err)?
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(Selector::Match(reqs))
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Eq(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEq(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(", ")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(", ")),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::Absent(k) => write!(f, "!{k}"),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("*"),
            Selector::Match(reqs) => {
                for (i, r) in reqs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
        }
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn semantics_table() {
        let gpu = labels(&[("env", "prod"), ("team", "vision"), ("gpu", "a100")]);
        let db = labels(&[("env", "staging"), ("team", "nlp")]);
        for (sel, on_gpu, on_db) in [
            ("*", true, true),
            ("env=prod", true, false),
            ("env!=prod", false, true),
            ("team in (vision, nlp)", true, true),
            ("team notin (vision)", false, true),
            ("gpu", true, false),
            ("!gpu", false, true),
            ("env=prod, team=nlp", false, false),
            ("env in (staging), !gpu", false, true),
            ("owner notin (x)", true, true),
        ] {
            let s: Selector = sel.parse().unwrap();
            assert_eq!(s.matches(&gpu), on_gpu, "{sel} on gpu");
            assert_eq!(s.matches(&db), on_db, "{sel} on db");
            // Display round-trips to an equivalent selector.
            assert_eq!(s.to_string().parse::<Selector>().unwrap(), s, "{sel}");
        }
    }

    #[test]
    fn rejects_bad_syntax() {
        for sel in [
            "",
            "env=",
            "=prod",
            "team in vision",
            "team in (a,)",
            "(x",
            "a, *",
            "env=pr od",
            "team within (a)",
            "env==prod",
            "env=!prod",
            "env!!=prod",
            "env>=2",
        ] {
            let e = sel.parse::<Selector>().unwrap_err().to_string();
            assert!(e.starts_with("invalid label selector"), "{sel}: {e}");
        }
    }
}
