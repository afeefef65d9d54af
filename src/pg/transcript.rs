//! Writing transcript lines: one JSON object per line, built by hand because this runs
//! per statement. The shapes (`statement`, `result`, `prepare`, `rollback`, `error`) are
//! described in docs/recordings.md; `recording::transcript` reads them back.

use std::time::Duration;

use super::text::Charset;

/// Longest parameter text kept in a transcript line.
pub const PARAM_CHARS: usize = 4096;

/// One line being written into `out`.
pub struct Line<'a> {
    out: &'a mut Vec<u8>,
    escaped: bool,
}

impl<'a> Line<'a> {
    /// `{"t":…,"type":"…"`: `t` is the time since the session started.
    pub fn new(out: &'a mut Vec<u8>, t: Duration, kind: &str) -> Line<'a> {
        out.extend_from_slice(b"{\"t\":");
        thousandths(out, t.as_millis());
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'"');
        Line {
            out,
            escaped: false,
        }
    }

    fn key(&mut self, key: &str) {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn num(&mut self, key: &str, n: u64) -> &mut Self {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    pub fn ms(&mut self, key: &str, d: Duration) -> &mut Self {
        self.key(key);
        thousandths(self.out, d.as_micros());
        self
    }

    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key);
        json_str(self.out, v);
        self
    }

    /// Text already decoded; `escaped` when it is in the escaped byte form.
    pub fn text(&mut self, key: &str, v: &str, escaped: bool) -> &mut Self {
        self.escaped |= escaped;
        self.str(key, v)
    }

    /// Raw bytes from the wire, decoded with the session's encoding.
    pub fn bytes(&mut self, key: &str, raw: &[u8], cs: Charset) -> &mut Self {
        let (v, escaped) = cs.decode(raw);
        self.text(key, &v, escaped)
    }

    /// A value that is already JSON.
    pub fn json(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(v.as_bytes());
        self
    }

    pub fn error(&mut self, e: &(String, String)) -> &mut Self {
        self.key("error");
        self.out.extend_from_slice(b"{\"code\":");
        json_str(self.out, &e.0);
        self.out.extend_from_slice(b",\"message\":");
        json_str(self.out, &e.1);
        self.out.push(b'}');
        self
    }

    pub fn end(&mut self) {
        if self.escaped {
            self.out.extend_from_slice(b",\"escaped\":true");
        }
        self.out.extend_from_slice(b"}\n");
    }
}

/// A count of thousandths with three decimals (`1234` → `1.234`): seconds from
/// milliseconds, milliseconds from microseconds. Integers only: this runs per statement.
pub fn thousandths(out: &mut Vec<u8>, n: u128) {
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    out.extend_from_slice(itoa::Buffer::new().format(n / 1000).as_bytes());
    let frac = n % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Whether JSON needs any byte of `b` escaped (a control character, `"` or `\`): eight
/// bytes at a time, with the word tests of "Bit Twiddling Hacks" (`haszero`, `hasless`),
/// which are exact as to whether any byte matches.
fn needs_escape(b: &[u8]) -> bool {
    const LO: u64 = u64::from_le_bytes([1; 8]);
    const HI: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |x: u64, n: u8| x.wrapping_sub(LO * u64::from(n)) & !x & HI != 0;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let x = u64::from_le_bytes(a);
        if below(x, 0x20)
            || below(x ^ (LO * u64::from(b'"')), 1)
            || below(x ^ (LO * u64::from(b'\\')), 1)
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// A JSON string, as `serde_json` writes it; text with nothing to escape (most SQL) is
/// copied as is.
pub fn json_str(out: &mut Vec<u8>, v: &str) {
    if !needs_escape(v.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// Appends one parameter as a JSON value: text in the session's encoding or, for binary,
/// `\x` hex; long values are cut at `PARAM_CHARS` with an ellipsis.
fn push_param(out: &mut Vec<u8>, raw: &[u8], binary: bool, cs: Charset) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if binary {
        let shown = &raw[..raw.len().min(PARAM_CHARS / 2)];
        out.extend_from_slice(b"\"\\\\x");
        for b in shown {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        }
        if shown.len() < raw.len() {
            out.extend_from_slice("…".as_bytes());
        }
        out.push(b'"');
        return;
    }
    let (text, _) = cs.decode(raw);
    if raw.len() <= PARAM_CHARS {
        return json_str(out, &text);
    }
    match text.char_indices().nth(PARAM_CHARS) {
        Some((cut, _)) => json_str(out, &format!("{}…", &text[..cut])),
        None => json_str(out, &text),
    }
}

/// A bounds-checked reader over a message body.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// A NUL-terminated string, without its NUL; the rest of the body when the message
    /// was cut short (`cut`) and the NUL is beyond what was kept.
    pub fn cstr(&mut self, cut: bool) -> Option<&'a [u8]> {
        match self.0.iter().position(|&b| b == 0) {
            Some(end) => {
                let (n, rest) = self.0.split_at(end);
                self.0 = &rest[1..];
                Some(n)
            }
            None if cut => Some(std::mem::take(&mut self.0)),
            None => None,
        }
    }
    pub fn i16(&mut self) -> Option<i16> {
        let b = self.bytes(2)?;
        Some(i16::from_be_bytes([b[0], b[1]]))
    }
    pub fn i32(&mut self) -> Option<i32> {
        let b = self.bytes(4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.len() >= n).then(|| self.0.split_at(n))?;
        self.0 = b;
        Some(a)
    }
}

/// Format codes then values, as `Bind` and `FunctionCall` carry them, as a JSON array.
/// A body cut short ends the array with `"…"`; `None` when the body is malformed.
pub fn params(r: &mut Reader<'_>, cut: bool, cs: Charset) -> Option<String> {
    let mut out = Vec::with_capacity(16 + r.0.len().min(1024));
    out.push(b'[');
    let done = (|| {
        let nfmt = usize::try_from(r.i16()?).ok()?;
        let formats = r.bytes(nfmt * 2)?;
        let binary = |i: usize| -> bool {
            let at = match nfmt {
                0 => return false,
                1 => 0,
                _ => i,
            };
            formats.get(at * 2..at * 2 + 2) == Some(&[0, 1])
        };
        let n = usize::try_from(r.i16()?).ok()?;
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            let len = r.i32()?;
            match usize::try_from(len) {
                Err(_) => out.extend_from_slice(b"null"),
                Ok(len) if cut && r.0.len() < len => {
                    push_param(&mut out, r.0, binary(i), cs);
                    return None;
                }
                Ok(len) => push_param(&mut out, r.bytes(len)?, binary(i), cs),
            }
        }
        Some(())
    })();
    if done.is_none() {
        if !cut {
            return None;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice("\"…\"".as_bytes());
    }
    out.push(b']');
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_are_written_as_json() {
        let mut out = Vec::new();
        for n in [0u128, 5, 1234, 60_000_001] {
            out.clear();
            thousandths(&mut out, n);
            let want = format!("{:.3}", n as f64 / 1000.0);
            assert_eq!(String::from_utf8_lossy(&out), want);
        }
        let long = "x".repeat(16);
        for v in [
            "select 1".to_string(),
            "say \"hi\"".into(),
            "a\\b".into(),
            "line\nbreak\t".into(),
            "caf\u{e9} \u{1}".into(),
            String::new(),
            // Longer than one 16-byte block: plain, and with each kind of escape in a
            // later block or in the remainder.
            format!("{long}{long}"),
            "caf\u{e9} ".repeat(9),
            format!("{long}say \"hi\" {long}"),
            format!("{long}{long}\\"),
            format!("{long}\u{1f}"),
            format!("{long}{long}\n"),
        ] {
            out.clear();
            json_str(&mut out, &v);
            assert_eq!(out, serde_json::to_vec(&v).unwrap(), "{v}");
        }
        // Every ASCII byte at every place of a few words, beside text of every width.
        for c in 0u8..128 {
            for at in 0..24 {
                for pad in ["a", "\u{e9}", "\u{7f}"] {
                    let mut v = pad.repeat(at);
                    v.push(char::from(c));
                    v.push_str(&pad.repeat(24 - at));
                    out.clear();
                    json_str(&mut out, &v);
                    assert_eq!(out, serde_json::to_vec(&v).unwrap(), "{v:?}");
                }
            }
        }
    }

    #[test]
    fn parameters_text_binary_null_and_cut_short() {
        let mut b = Vec::new();
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&3i16.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(b"hi");
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(&[0x0a, 0xff]);
        b.extend_from_slice(&(-1i32).to_be_bytes());
        let cs = Charset::Utf8;
        assert_eq!(params(&mut Reader(&b[..9]), false, cs), None);
        b[1] = 1; // one format (text) for all
        b[3] = 0;
        let mut one = b.clone();
        one.drain(4..6);
        assert_eq!(
            params(&mut Reader(&one), false, cs).unwrap(),
            r#"["hi","\n\\xff",null]"#
        );
        let mut bin = Vec::new();
        for v in [1i16, 1, 1] {
            bin.extend_from_slice(&v.to_be_bytes());
        }
        bin.extend_from_slice(&2i32.to_be_bytes());
        bin.extend_from_slice(&[0x0a, 0xff]);
        assert_eq!(
            params(&mut Reader(&bin), false, cs).unwrap(),
            r#"["\\x0aff"]"#
        );
        // Cut inside the value: what arrived, then an ellipsis.
        assert_eq!(
            params(&mut Reader(&one[..17]), true, cs).unwrap(),
            r#"["hi","\n","…"]"#
        );
    }
}
