//! `forward_to`: where a role lets port forwarding go. Each entry is `HOST:PORT`, where
//! HOST is a name or address as the client asks for it (IPv6 in brackets) or `*`, and
//! PORT a number or `*`. An empty list means anywhere. Several allowing roles combine
//! to what every one of them allows (the pairwise intersection of their entries).

use super::PolicyError;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    host: Option<String>,
    port: Option<u16>,
}

fn parse(entry: &str) -> Result<Pattern, PolicyError> {
    let bad = |why: &str| {
        PolicyError::Invalid(format!(
            "forward_to entry `{}`: {why}",
            super::names::printable(entry)
        ))
    };
    let (host, port) = entry
        .rsplit_once(':')
        .ok_or_else(|| bad("write HOST:PORT (`*` for any host or port)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || host.len() > 253
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("the host is empty or not a host name or address"));
    }
    let port = match port {
        "*" => None,
        p => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("the port is not 1-65535 or `*`"))?,
        ),
    };
    Ok(Pattern {
        host: (host != "*").then(|| host.to_ascii_lowercase()),
        port,
    })
}

fn show(p: &Pattern) -> String {
    let host = p.host.as_deref().unwrap_or("*");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    match p.port {
        Some(port) => format!("{host}:{port}"),
        None => format!("{host}:*"),
    }
}

/// Checks every entry (policy files and admin commands).
pub fn check(list: &[String]) -> Result<(), PolicyError> {
    list.iter().try_for_each(|e| parse(e).map(|_| ()))
}

/// Whether a forward to `host:port` is allowed by `list` (empty: anywhere).
pub fn allows(list: &[String], host: &str, port: u32) -> bool {
    if list.is_empty() {
        return true;
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    list.iter().filter_map(|e| parse(e).ok()).any(|p| {
        p.host.as_deref().is_none_or(|h| h == host)
            && p.port.is_none_or(|want| u32::from(want) == port)
    })
}

/// What two lists both allow; `None` when that is nothing at all.
pub fn intersect(a: &[String], b: &[String]) -> Option<Vec<String>> {
    if a.is_empty() {
        return Some(b.to_vec());
    }
    if b.is_empty() {
        return Some(a.to_vec());
    }
    let (a, b): (Vec<Pattern>, Vec<Pattern>) = (
        a.iter().filter_map(|e| parse(e).ok()).collect(),
        b.iter().filter_map(|e| parse(e).ok()).collect(),
    );
    let mut out: Vec<String> = Vec::new();
    for p in &a {
        for q in &b {
            let host = match (&p.host, &q.host) {
                (None, h) | (h, None) => h.clone(),
                (Some(x), Some(y)) if x == y => Some(x.clone()),
                _ => continue,
            };
            let port = match (p.port, q.port) {
                (None, x) | (x, None) => x,
                (Some(x), Some(y)) if x == y => Some(x),
                _ => continue,
            };
            let s = show(&Pattern { host, port });
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entries_match_hosts_and_ports() {
        let list = l(&["127.0.0.1:8888", "*:443", "db.internal:*", "[::1]:22"]);
        check(&list).unwrap();
        assert!(allows(&list, "127.0.0.1", 8888));
        assert!(!allows(&list, "127.0.0.1", 8889));
        assert!(allows(&list, "anything.example", 443));
        assert!(allows(&list, "DB.internal", 5432));
        assert!(allows(&list, "::1", 22));
        assert!(!allows(&list, "10.0.0.1", 22));
        assert!(allows(&[], "10.0.0.1", 22));
        for bad in ["nohost", ":80", "h:0", "h:70000", "h:x", "a b:1"] {
            assert!(check(&l(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_combine_to_what_both_allow() {
        let a = l(&["*:443", "10.0.0.1:*"]);
        let b = l(&["10.0.0.1:443", "10.0.0.2:443", "10.0.0.1:22"]);
        let both = intersect(&a, &b).unwrap();
        for (h, p, want) in [
            ("10.0.0.1", 443, true),
            ("10.0.0.2", 443, true),
            ("10.0.0.1", 22, true),
            ("10.0.0.2", 22, false),
            ("10.0.0.3", 443, false),
        ] {
            assert_eq!(allows(&both, h, p), want, "{h}:{p} in {both:?}");
            assert_eq!(allows(&both, h, p), allows(&a, h, p) && allows(&b, h, p));
        }
        assert_eq!(intersect(&l(&["a:1"]), &l(&["b:1"])), None);
        assert_eq!(intersect(&[], &a), Some(a.clone()));
    }
}
