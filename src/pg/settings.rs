//! Start-up settings a client asks for (`PGOPTIONS`, `PGTZ`, driver `server_settings`):
//! every setting a normal login may make is passed to the target; the few that would
//! change who postern logged in as, or what kind of connection it is, are refused with a
//! message. None is dropped silently.

/// Settings that would change the database user postern logged in as.
const REFUSED: &[&str] = &["role", "session_authorization"];

/// Why a setting is not passed on.
#[derive(Debug, PartialEq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

fn refused(code: &'static str, message: String) -> Refused {
    Refused { code, message }
}

/// A setting's name: PostgreSQL's grammar for configuration names, and not one postern
/// keeps for itself.
fn check_name(name: &str) -> Result<(), Refused> {
    let ok = !name.is_empty()
        && name.len() < 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'));
    if !ok {
        return Err(refused(
            "22023",
            format!(
                "invalid setting name {:?} in the start-up packet",
                crate::policy::names::printable(name)
            ),
        ));
    }
    if REFUSED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(refused(
            "42501",
            format!(
                "postern does not pass the setting `{name}` at connect: it would change the database user postern logged in as (run SET {name} in the session, where it is recorded)"
            ),
        ));
    }
    Ok(())
}

/// The words of an `options` value, split as the server splits them (whitespace, with
/// `\` escaping the next character).
fn words(options: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Checks `options`: only `-c name=value` and `--name=value` settings.
fn check_options(options: &str) -> Result<(), Refused> {
    let w = words(options);
    let mut i = 0;
    while i < w.len() {
        let setting = if w[i] == "-c" {
            i += 1;
            w.get(i).map(String::as_str)
        } else {
            w[i].strip_prefix("-c").or_else(|| w[i].strip_prefix("--"))
        };
        let name = setting.and_then(|s| s.split_once('=')).map(|(n, _)| n);
        match name {
            Some(n) => check_name(&n.replace('-', "_"))?,
            None => {
                return Err(refused(
                    "22023",
                    format!(
                        "postern passes only `-c name=value` settings in `options`, not {:?}",
                        crate::policy::names::printable(&w[i.min(w.len() - 1)])
                    ),
                ));
            }
        }
        i += 1;
    }
    Ok(())
}

/// The client's start-up parameters to pass to the target.
pub fn forwarded(params: &[(String, String)]) -> Result<Vec<(String, String)>, Refused> {
    let mut out = Vec::new();
    for (k, v) in params {
        let key = k.to_ascii_lowercase();
        match key.as_str() {
            // postern's own: the user and database it logs in with.
            "user" | "database" => continue,
            // Protocol options, answered in the negotiation.
            _ if key.starts_with("_pq_.") => continue,
            "replication" => {
                if matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "0" | "off" | "no"
                ) {
                    continue;
                }
                return Err(refused(
                    "42501",
                    "replication connections cannot go through postern".into(),
                ));
            }
            "options" => check_options(v)?,
            _ => check_name(k)?,
        }
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_pass_or_are_refused_with_a_reason() {
        let ok = forwarded(&p(&[
            ("user", "alice"),
            ("database", "pg1/db"),
            ("TimeZone", "UTC"),
            ("datestyle", "ISO, DMY"),
            ("jit", "off"),
            (
                "options",
                "-c statement_timeout=5s --lock-timeout=1s -c x.y=a\\ b",
            ),
            ("replication", "false"),
            ("_pq_.command", "x"),
        ]))
        .unwrap();
        let keys: Vec<&str> = ok.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["TimeZone", "datestyle", "jit", "options"]);
        for (k, v, code) in [
            ("role", "admin", "42501"),
            ("Session_Authorization", "postgres", "42501"),
            ("replication", "database", "42501"),
            ("options", "-c role=admin", "42501"),
            ("options", "-B 100", "22023"),
            ("options", "-c", "22023"),
            ("bad name", "x", "22023"),
            ("options", "-c a\u{1b}b=1", "22023"),
        ] {
            let e = forwarded(&p(&[(k, v)])).unwrap_err();
            assert_eq!(e.code, code, "{k}={v}: {}", e.message);
        }
        assert_eq!(words("a\\ b  c"), ["a b", "c"]);
    }
}
