//! Reading a PostgreSQL transcript back: a statement's line (written when it was sent)
//! and its result line (written when the server answered) become one entry; a rollback
//! line marks the statements it undid; a statement whose result never came says so.
//! Transcripts written before results had their own lines read the same way.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

/// One entry: its offset in seconds and its fields (`type` is `statement`, `prepare` or
/// `error`).
pub type Entry = (f64, Value);

/// The entries of a transcript, in the order statements were sent.
pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    let file = std::fs::File::open(path)?;
    let mut lines = Vec::new();
    for line in BufReader::new(file).lines().skip(1) {
        lines.push(line?);
    }
    Ok(merge(lines.iter().map(String::as_str)))
}

/// The entries of the first `max_bytes` of a transcript (whole lines), and whether the file
/// went on. Statements whose result lies beyond the cut say so, rather than "none seen".
pub fn read_head(path: &Path, max_bytes: u64) -> std::io::Result<(Vec<Entry>, bool)> {
    let file = std::fs::File::open(path)?;
    let mut lines = Vec::new();
    let mut used = 0u64;
    let mut cut = false;
    for line in BufReader::new(file).lines().skip(1) {
        let line = line?;
        used += line.len() as u64 + 1;
        if used > max_bytes {
            cut = true;
            break;
        }
        lines.push(line);
    }
    let mut entries = merge(lines.iter().map(String::as_str));
    if cut {
        for (_, e) in &mut entries {
            // Result lines always carry a duration; without one, no result line was read.
            if e["completion"] == "none seen"
                && e.get("duration_ms").is_none()
                && let Some(o) = e.as_object_mut()
            {
                o.insert("completion".into(), "result beyond the part shown".into());
            }
        }
    }
    Ok((entries, cut))
}

pub fn merge<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut by_n: BTreeMap<u64, usize> = BTreeMap::new();
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let t = v["t"].as_f64().unwrap_or(0.0);
        let n = v["n"].as_u64();
        match (v["type"].as_str(), n) {
            (Some("statement"), Some(n)) => {
                by_n.insert(n, out.len());
                out.push((t, v));
            }
            (Some("result"), Some(n)) => {
                let Some(entry) = by_n.get(&n).and_then(|&i| out.get_mut(i)) else {
                    continue;
                };
                if let (Some(e), Some(r)) = (entry.1.as_object_mut(), v.as_object()) {
                    for (k, x) in r {
                        if !matches!(k.as_str(), "t" | "type" | "n") {
                            e.insert(k.clone(), x.clone());
                        }
                    }
                    e.insert("answered".into(), Value::Bool(true));
                }
            }
            (Some("rollback"), _) => {
                let (Some(from), Some(to)) = (v["from"].as_u64(), v["to"].as_u64()) else {
                    continue;
                };
                for (_, &i) in by_n.range(from..=to.max(from)) {
                    let e = &mut out[i].1;
                    let done = e.get("error").is_none()
                        && (e.get("tag").is_some() || e["completion"] == "suspended");
                    if done && let Some(o) = e.as_object_mut() {
                        let key = if v["uncertain"] == true {
                            "maybe_rolled_back"
                        } else {
                            "rolled_back"
                        };
                        o.insert(key.into(), Value::Bool(true));
                    }
                }
            }
            _ => out.push((t, v)),
        }
    }
    for (_, e) in &mut out {
        if let Some(o) = e.as_object_mut()
            && o.get("n").is_some()
            && o.remove("answered").is_none()
        {
            o.insert("completion".into(), Value::String("none seen".into()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_join_their_statements_and_rollbacks_mark_them() {
        let lines = [
            r#"{"t":0.1,"type":"statement","n":1,"protocol":"simple","sql":"insert"}"#,
            r#"{"t":0.2,"type":"statement","n":2,"protocol":"simple","sql":"select 1/0"}"#,
            r#"{"t":0.3,"type":"result","n":1,"duration_ms":1.0,"tag":"INSERT 0 1","rows":1}"#,
            r#"{"t":0.4,"type":"result","n":2,"duration_ms":1.0,"error":{"code":"22012","message":"division by zero"}}"#,
            r#"{"t":0.5,"type":"rollback","from":1,"to":2}"#,
            r#"{"t":0.6,"type":"statement","n":3,"protocol":"simple","sql":"select pg_sleep(9)"}"#,
            r#"{"t":0.7,"type":"statement","protocol":"simple","sql":"old","tag":"SELECT 1"}"#,
        ];
        let e = merge(lines.into_iter());
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].1["tag"], "INSERT 0 1");
        assert_eq!(e[0].1["rolled_back"], true);
        assert!(e[1].1.get("rolled_back").is_none());
        assert_eq!(e[2].1["completion"], "none seen");
        assert_eq!(e[3].1["tag"], "SELECT 1");
        assert!(e[3].1.get("completion").is_none());
    }

    #[test]
    fn a_head_read_says_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.pg.jsonl");
        let lines = [
            r#"{"version":1}"#,
            r#"{"t":0.1,"type":"statement","n":1,"protocol":"simple","sql":"select 1"}"#,
            r#"{"t":0.2,"type":"result","n":1,"duration_ms":1.0,"completion":"none seen"}"#,
            r#"{"t":0.3,"type":"statement","n":2,"protocol":"simple","sql":"select 2"}"#,
            r#"{"t":0.4,"type":"result","n":2,"duration_ms":1.0,"tag":"SELECT 1"}"#,
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let budget = (lines[1].len() + lines[2].len() + lines[3].len() + 3) as u64;
        let (e, cut) = super::read_head(&path, budget).unwrap();
        assert!(cut);
        assert_eq!(e.len(), 2);
        // A result line that said so stays "none seen"; one beyond the cut says that.
        assert_eq!(e[0].1["completion"], "none seen");
        assert_eq!(e[1].1["completion"], "result beyond the part shown");
        let (e, cut) = super::read_head(&path, 1 << 20).unwrap();
        assert!(!cut);
        assert_eq!(e[1].1["tag"], "SELECT 1");
    }
}
