//! Reading `.stream` recordings (channels without a terminal) for auditors: one stream's
//! bytes as they crossed (`sessions export --stream`), a readable account with the text
//! (`replay`); their text lines are searched in `recording::search`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::output::safe;
use crate::recording::stream::{self, MARKER, STDERR, STDIN, STDOUT};

/// Which stream of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Stdout,
    Stdin,
    Stderr,
}

impl Which {
    fn kind(self) -> u8 {
        match self {
            Which::Stdout => STDOUT,
            Which::Stdin => STDIN,
            Which::Stderr => STDERR,
        }
    }
}

/// Writes one stream's bytes, exactly as they crossed, to `out`; returns how many.
pub fn export(path: &Path, which: Which, out: &mut impl Write) -> anyhow::Result<u64> {
    let mut n = 0u64;
    stream::read(path, |r| {
        if r.kind == which.kind() {
            n += r.data.len() as u64;
            out.write_all(&r.data)?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot read recording {}", path.display()))?;
    out.flush()?;
    Ok(n)
}

/// Text shown per stream in a summary; the rest is counted.
const SHOWN: usize = 64 * 1024;

/// A readable account of the channel: its command, bytes per stream, markers (exit
/// status, signals) with their times, then each stream's text, control characters
/// escaped; a stream that is mostly not text is only counted.
pub fn summary(path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let mut bytes = [0u64; 3];
    let mut text: [Vec<u8>; 3] = Default::default();
    let mut markers = Vec::new();
    let header = stream::read(path, |r| {
        let i = match r.kind {
            STDIN => 0,
            STDOUT => 1,
            STDERR => 2,
            MARKER => {
                markers.push((r.t_ms, String::from_utf8_lossy(&r.data).into_owned()));
                return Ok(());
            }
            _ => return Ok(()),
        };
        bytes[i] += r.data.len() as u64;
        let room = SHOWN.saturating_sub(text[i].len());
        text[i].extend_from_slice(&r.data[..room.min(r.data.len())]);
        Ok(())
    })
    .with_context(|| format!("cannot read recording {}", path.display()))?;
    writeln!(out, "{}", safe(header["title"].as_str().unwrap_or("")))?;
    if let Some(c) = header["command"].as_str() {
        writeln!(out, "command  {}", safe(c))?;
    }
    writeln!(
        out,
        "bytes    stdin {}, stdout {}, stderr {}",
        bytes[0], bytes[1], bytes[2]
    )?;
    for (t, m) in &markers {
        writeln!(out, "+{:.3}s  {}", f64::from(*t) / 1000.0, safe(m))?;
    }
    for (i, name) in ["stdin", "stdout", "stderr"].iter().enumerate() {
        if bytes[i] == 0 {
            continue;
        }
        let shown = &text[i];
        let printable = String::from_utf8_lossy(shown)
            .chars()
            .filter(|c| !c.is_control() || *c == '\n' || *c == '\t' || *c == '\r')
            .count();
        writeln!(out, "--- {name}")?;
        if printable * 10 < shown.len() * 9 {
            writeln!(
                out,
                "(binary, {} bytes: sessions export --stream {name})",
                bytes[i]
            )?;
            continue;
        }
        writeln!(out, "{}", safe(&String::from_utf8_lossy(shown)).trim_end())?;
        if bytes[i] > shown.len() as u64 {
            writeln!(out, "… ({} more bytes)", bytes[i] - shown.len() as u64)?;
        }
    }
    Ok(())
}
