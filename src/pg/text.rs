//! Text from the wire as the server reads it: SQL, statement and portal names arrive in
//! the session's `client_encoding`, which the transcript decodes exactly. Bytes that are
//! not valid in that encoding are written in an escaped form (`\xNN`, with `\` doubled)
//! and the line says so; no two different byte strings ever print the same.

use std::borrow::Cow;

/// A session's `client_encoding`, as PostgreSQL names it in `ParameterStatus`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Charset {
    Utf8,
    /// ISO-8859-1: every byte is the code point of the same value.
    Latin1,
    /// `SQL_ASCII`: bytes above 127 have no declared meaning.
    Ascii,
    Other(&'static encoding_rs::Encoding),
}

impl Charset {
    pub fn from_pg(name: &str) -> Charset {
        let upper = name.trim().to_ascii_uppercase().replace(['-', '_'], "");
        let label = match upper.as_str() {
            "UTF8" | "UNICODE" => return Charset::Utf8,
            "LATIN1" | "ISO88591" => return Charset::Latin1,
            "SQLASCII" => return Charset::Ascii,
            "LATIN2" => "iso-8859-2",
            "LATIN3" => "iso-8859-3",
            "LATIN4" => "iso-8859-4",
            "LATIN5" => "iso-8859-9",
            "LATIN6" => "iso-8859-10",
            "LATIN7" => "iso-8859-13",
            "LATIN8" => "iso-8859-14",
            "LATIN9" => "iso-8859-15",
            "LATIN10" => "iso-8859-16",
            "ISO88595" => "iso-8859-5",
            "ISO88596" => "iso-8859-6",
            "ISO88597" => "iso-8859-7",
            "ISO88598" => "iso-8859-8",
            "KOI8R" | "KOI8" => "koi8-r",
            "KOI8U" => "koi8-u",
            "WIN866" | "ALT" => "ibm866",
            "WIN874" => "windows-874",
            "WIN1250" => "windows-1250",
            "WIN1251" | "WIN" => "windows-1251",
            "WIN1252" => "windows-1252",
            "WIN1253" => "windows-1253",
            "WIN1254" => "windows-1254",
            "WIN1255" => "windows-1255",
            "WIN1256" => "windows-1256",
            "WIN1257" => "windows-1257",
            "WIN1258" => "windows-1258",
            "SJIS" | "SHIFTJIS" | "MSKANJI" => "shift_jis",
            "EUCJP" => "euc-jp",
            "EUCKR" | "UHC" => "euc-kr",
            "EUCCN" | "GBK" => "gbk",
            "GB18030" => "gb18030",
            "BIG5" => "big5",
            // Encodings the transcript cannot decode: non-ASCII bytes are escaped.
            _ => return Charset::Ascii,
        };
        encoding_rs::Encoding::for_label(label.as_bytes()).map_or(Charset::Ascii, Charset::Other)
    }

    /// The text `raw` stands for, and whether it had to be escaped.
    pub fn decode<'a>(&self, raw: &'a [u8]) -> (Cow<'a, str>, bool) {
        let decoded = match self {
            Charset::Utf8 => std::str::from_utf8(raw).ok().map(Cow::Borrowed),
            Charset::Latin1 => Some(match std::str::from_utf8(raw) {
                Ok(t) if raw.is_ascii() => Cow::Borrowed(t),
                _ => Cow::Owned(raw.iter().map(|&b| char::from(b)).collect()),
            }),
            Charset::Ascii => raw
                .is_ascii()
                .then(|| std::str::from_utf8(raw).ok().map(Cow::Borrowed))
                .flatten(),
            Charset::Other(e) => e.decode_without_bom_handling_and_without_replacement(raw),
        };
        match decoded {
            Some(t) => (t, false),
            None => (Cow::Owned(escape_bytes(raw)), true),
        }
    }
}

/// Valid UTF-8 stays readable (backslashes doubled); every other byte becomes `\xNN`.
pub fn escape_bytes(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() + 8);
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_differ_never_print_the_same() {
        let latin1 = Charset::from_pg("LATIN1");
        assert_eq!(latin1.decode(b"\xff").0, "\u{ff}");
        assert_ne!(latin1.decode(b"\xff").0, latin1.decode(b"\xfe").0);
        let utf8 = Charset::from_pg("UTF8");
        let (a, esc) = utf8.decode(b"\xff");
        assert!(esc);
        assert_eq!(a, "\\xff");
        // An escaped form is never mistaken for the text it spells.
        assert_eq!(utf8.decode(b"a\\xff\xfe").0, "a\\\\xff\\xfe");
        assert_eq!(escape_bytes(b"a\\xff\xfe"), "a\\\\xff\\xfe");
        assert_eq!(
            utf8.decode("café".as_bytes()),
            (Cow::Borrowed("café"), false)
        );
        assert_eq!(Charset::from_pg("win1251").decode(b"\xcf").0, "П");
        assert_eq!(Charset::from_pg("SQL_ASCII").decode(b"\xe9").0, "\\xe9");
        assert_eq!(Charset::from_pg("MULE_INTERNAL"), Charset::Ascii);
    }
}
