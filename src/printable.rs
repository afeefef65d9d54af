//! Text from outside (names on the wire, SQL, server messages, recorded commands) made
//! safe to print for a person: nothing in it can move the cursor, clear the screen, set
//! a window title or reorder what is read.

/// Text safe for a terminal: control characters (C0 but newline and tab, DEL, C1) and
/// bidirectional overrides are shown as `\xNN` / `\u{NNNN}`, so nothing read from a
/// recording, a transcript or the audit log can move the cursor, clear the screen or
/// reorder what an auditor reads. Raw bytes only in `--json` and asciicast playback.
pub fn safe(s: &str) -> String {
    escaped(s, false)
}

/// [`safe`], and on one line: newline, carriage return and tab escaped too (table cells).
pub fn cell(s: &str) -> String {
    escaped(s, true)
}

fn escaped(s: &str, one_line: bool) -> String {
    if !s.chars().any(|c| needs_escape(c, one_line)) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if !needs_escape(c, one_line) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        }
    }
    out
}

fn needs_escape(c: char, one_line: bool) -> bool {
    match c {
        '\n' | '\t' => one_line,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        // Bidirectional marks, embeddings, overrides and isolates.
        '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_shown_not_obeyed() {
        assert_eq!(
            safe("plain ünïcode\tand\nlines"),
            "plain ünïcode\tand\nlines"
        );
        assert_eq!(safe("\x1b[2J\r\x07\x7f"), "\\x1b[2J\\x0d\\x07\\x7f");
        assert_eq!(
            safe("a\u{9b}31m\u{202e}b\u{2066}"),
            "a\\u{009b}31m\\u{202e}b\\u{2066}"
        );
        assert_eq!(cell("two\nlines\tx"), "two\\x0alines\\x09x");
        // Escaping is stable: escaped text escapes to itself.
        let once = cell("\x1b]0;title\x07");
        assert_eq!(cell(&once), once);
    }
}
