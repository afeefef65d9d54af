//! Reading recordings for people: a transcript entry as one terminal-safe line, and the
//! lines of a recording (transcript, `.stream`, asciicast) that contain a pattern, what
//! `sessions grep` and the console's search both run.

use std::io::{BufRead, BufReader};
use std::path::Path;

use super::stream::{self, STDERR, STDIN, STDOUT};
use crate::printable::safe;

/// The command a recording's channel ran (`exec`, `subsystem sftp`, `direct-tcpip …`),
/// from its header; `None` for a shell or a transcript.
pub fn recorded_command(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut first = String::new();
    BufReader::new(file).read_line(&mut first).ok()?;
    command_in(&first)
}

/// The command named by a recording's header line.
pub fn command_in(first: &str) -> Option<String> {
    let header: serde_json::Value = serde_json::from_str(first).ok()?;
    header["command"].as_str().map(str::to_string)
}

/// A PostgreSQL session's transcript (JSON lines), not an asciicast.
pub fn is_transcript(path: &Path) -> bool {
    path.to_string_lossy().ends_with(".pg.jsonl")
}

/// The entries of a transcript: (offset s, the entry's JSON).
pub fn transcript_lines(path: &Path) -> std::io::Result<Vec<(f64, serde_json::Value)>> {
    crate::recording::transcript::read(path)
}

/// One transcript entry as a terminal-safe line: `SQL  → TAG (N rows, D ms)`, the error,
/// how it ended when no result came, and whether it was rolled back.
pub fn statement_text(v: &serde_json::Value) -> String {
    let esc = safe;
    let s = |k: &str| v[k].as_str().unwrap_or("");
    let err = |e: &serde_json::Value| {
        format!(
            "ERROR {} {}",
            e["code"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        )
    };
    let mut line = match s("type") {
        "prepare" => format!("PREPARE {}: {}", s("name"), s("sql")),
        "bind" => format!("BIND {}", s("sql")),
        "error" if v.get("sql").is_none() => {
            let during = match s("during") {
                "" => String::new(),
                d => format!("({d} {}) ", s("statement")),
            };
            return esc(&format!("{during}{}", err(&v["error"])).replace('\n', " "));
        }
        _ if s("protocol") == "function" => {
            format!("function {} (oid {})", s("function"), v["function_oid"])
        }
        _ => s("sql").to_string(),
    };
    if let Some(p) = v.get("prepared").and_then(|p| p.as_str()) {
        line.push_str(&format!("  [{p}]"));
    }
    if let Some(p) = v.get("params").filter(|p| !p.is_null()) {
        line.push_str(&format!("  params {p}"));
    }
    let ms = v["duration_ms"].as_f64().unwrap_or(0.0);
    match (&v["error"], v["tag"].as_str(), v["completion"].as_str()) {
        (e, _, _) if e.is_object() => line.push_str(&format!("  → {} ({ms} ms)", err(e))),
        (_, Some(tag), _) => {
            let rows = v["rows"]
                .as_u64()
                .map(|n| format!("{n} rows, "))
                .unwrap_or_default();
            line.push_str(&format!("  → {tag} ({rows}{ms} ms)"));
        }
        (_, None, Some(c)) => line.push_str(&format!("  → {c} ({ms} ms)")),
        _ if matches!(s("type"), "prepare" | "bind") => {}
        _ => line.push_str(&format!("  ({ms} ms)")),
    }
    if v["rolled_back"] == true {
        line.push_str("  (rolled back)");
    } else if v["maybe_rolled_back"] == true {
        line.push_str("  (rolled back unless a later statement committed)");
    }
    esc(&line.replace('\n', " "))
}

pub fn grep_transcript(path: &Path, pattern: &str) -> std::io::Result<Vec<(f64, String)>> {
    Ok(transcript_lines(path)?
        .into_iter()
        .map(|(t, v)| (t, statement_text(&v)))
        .filter(|(_, l)| l.contains(pattern))
        .collect())
}

/// A `.stream` recording's command (from its header) and text lines.
pub fn grep_stream(path: &Path, pattern: &str) -> std::io::Result<Vec<(f64, String)>> {
    let mut hits: Vec<(f64, String)> = recorded_command(path)
        .filter(|c| c.contains(pattern))
        .map(|c| (0.0, format!("$ {}", safe(&c))))
        .into_iter()
        .collect();
    hits.extend(grep_streams(path, pattern)?);
    Ok(hits)
}

/// Longest line searched at once in a `.stream`; a longer one is searched in pieces.
const SHOWN: usize = 64 * 1024;

/// The text lines of every stream that contain `pattern`, with the time each line ended.
fn grep_streams(path: &Path, pattern: &str) -> std::io::Result<Vec<(f64, String)>> {
    let mut hits = Vec::new();
    let mut lines: [Vec<u8>; 3] = Default::default();
    let check = |line: &mut Vec<u8>, t: f64, hits: &mut Vec<(f64, String)>| {
        let text = String::from_utf8_lossy(line);
        if text.contains(pattern) {
            hits.push((t, safe(text.trim_end_matches('\r'))));
        }
        line.clear();
    };
    let mut last = 0.0;
    stream::read(path, |r| {
        let i = match r.kind {
            STDIN => 0,
            STDOUT => 1,
            STDERR => 2,
            _ => return Ok(()),
        };
        let t = f64::from(r.t_ms) / 1000.0;
        last = t;
        for piece in r.data.split_inclusive(|b| *b == b'\n') {
            let ends = piece.last() == Some(&b'\n');
            let piece = if ends {
                &piece[..piece.len() - 1]
            } else {
                piece
            };
            // A line longer than the window is searched in pieces.
            if lines[i].len() + piece.len() > SHOWN {
                check(&mut lines[i], t, &mut hits);
            }
            lines[i].extend_from_slice(piece);
            if ends {
                check(&mut lines[i], t, &mut hits);
            }
        }
        Ok(())
    })?;
    for line in lines.iter_mut() {
        if !line.is_empty() {
            check(line, last, &mut hits);
        }
    }
    Ok(hits)
}

/// The text lines of a recording (output and input reassembled) that contain `pattern`,
/// with the time offset at which each line ended.
pub fn grep_cast(path: &Path, pattern: &str) -> std::io::Result<Vec<(f64, String)>> {
    let file = std::fs::File::open(path)?;
    let mut hits = Vec::new();
    // The command an exec channel ran is in the header.
    if let Some(command) = recorded_command(path).filter(|c| c.contains(pattern)) {
        hits.push((0.0, format!("$ {}", safe(&command))));
    }
    let mut lines = [(String::new(), 0.0f64), (String::new(), 0.0f64)];
    let flush = |buf: &mut String, t: f64, hits: &mut Vec<(f64, String)>| {
        let clean = strip_ansi(buf);
        if clean.contains(pattern) {
            hits.push((t, clean.trim_end().to_string()));
        }
        buf.clear();
    };
    for line in BufReader::new(file).lines().map_while(Result::ok).skip(1) {
        let Ok(ev) = serde_json::from_str::<(f64, String, String)>(&line) else {
            continue;
        };
        let idx = match ev.1.as_str() {
            "o" => 0,
            "i" => 1,
            // Markers: exit status, postern's notices, an sftp channel's transfer log.
            "m" => {
                if ev.2.contains(pattern) {
                    hits.push((ev.0, safe(&ev.2)));
                }
                continue;
            }
            _ => continue,
        };
        for c in ev.2.chars() {
            if c == '\n' || c == '\r' {
                let (buf, _) = &mut lines[idx];
                if !buf.is_empty() {
                    flush(buf, ev.0, &mut hits);
                }
            } else {
                lines[idx].0.push(c);
                lines[idx].1 = ev.0;
            }
        }
    }
    for (buf, t) in lines.iter_mut() {
        if !buf.is_empty() {
            let t = *t;
            flush(buf, t, &mut hits);
        }
    }
    hits.sort_by(|a, b| a.0.total_cmp(&b.0));
    hits.dedup();
    Ok(hits)
}

/// The lines of any recording that contain `pattern`, with their time offsets.
pub fn grep(path: &Path, pattern: &str) -> std::io::Result<Vec<(f64, String)>> {
    if is_transcript(path) {
        grep_transcript(path, pattern)
    } else if stream::is_stream(path) {
        grep_stream(path, pattern)
    } else {
        grep_cast(path, pattern)
    }
}

/// Removes terminal escape sequences so searches match what a person read.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\u{8}' {
            out.pop();
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\u{1b}[1;32mok\u{1b}[0m done"), "ok done");
        assert_eq!(strip_ansi("abx\u{8}c"), "abc");
    }
}
