//! PostgreSQL protocol 3.0 framing: the startup packet, tagged messages, and the few
//! messages postern writes itself. Parsers take untrusted bytes and never panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Startup packets are small; anything larger is not a PostgreSQL client.
pub const MAX_STARTUP: usize = 10_000;
/// The largest message accepted from a client (PostgreSQL itself stops at 1 GiB).
pub const MAX_MESSAGE: usize = 1 << 30;

pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// What a client sent before authentication.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// Protocol 3.x: the minor version asked for and the parameters (`user`, `database`, …).
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("unsupported frontend protocol {0}.{1}: postern speaks protocol 3.0")]
    Protocol(u16, u16),
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// The length a startup packet announces (its first four bytes), checked.
pub fn startup_len(head: [u8; 4]) -> Result<usize, WireError> {
    let len = i32::from_be_bytes(head);
    if !(8..=MAX_STARTUP as i32).contains(&len) {
        return Err(WireError::BadLength(i64::from(len)));
    }
    Ok(len as usize)
}

/// Parses a startup packet body (after its length).
pub fn parse_startup(mut body: &[u8]) -> Result<Startup, WireError> {
    if body.len() < 4 {
        return Err(WireError::Malformed("too short"));
    }
    let code = body.get_i32();
    match code {
        SSL_REQUEST => Ok(Startup::Ssl),
        GSSENC_REQUEST => Ok(Startup::GssEnc),
        CANCEL_REQUEST => {
            if body.len() < 8 {
                return Err(WireError::Malformed("short cancel request"));
            }
            Ok(Startup::Cancel {
                pid: body.get_i32(),
                secret: body.get_i32(),
            })
        }
        v => {
            let (major, minor) = ((v >> 16) as u16, (v & 0xffff) as u16);
            if major != 3 {
                return Err(WireError::Protocol(major, minor));
            }
            let mut params = Vec::new();
            loop {
                let name = cstr(&mut body).ok_or(WireError::Malformed("unterminated name"))?;
                if name.is_empty() {
                    break;
                }
                let value = cstr(&mut body).ok_or(WireError::Malformed("unterminated value"))?;
                params.push((name, value));
            }
            Ok(Startup::Startup { minor, params })
        }
    }
}

/// Reads a NUL-terminated string (lossy UTF-8) off the front of `buf`.
pub fn cstr(buf: &mut &[u8]) -> Option<String> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    *buf = &buf[end + 1..];
    Some(s)
}

/// A complete tagged message at the start of `buf`: its type and total length (type byte
/// included). `Ok(None)` when more bytes are needed.
pub fn frame(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::BadLength(i64::from(len)));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(WireError::TooLarge(total));
    }
    Ok((buf.len() >= total).then_some((buf[0], total)))
}

fn message(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_u8(tag);
    b.put_i32(0);
    body(&mut b);
    let len = (b.len() - 1) as i32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early: drop it.
    b.put_slice(s.replace('\0', "").as_bytes());
    b.put_u8(0);
}

/// `ErrorResponse` (or `NoticeResponse` with `tag = b'N'`): severity, SQLSTATE, message.
pub fn error_like(tag: u8, severity: &str, code: &str, text: &str) -> Bytes {
    message(tag, |b| {
        b.put_u8(b'S');
        put_cstr(b, severity);
        b.put_u8(b'V');
        put_cstr(b, severity);
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, text);
        b.put_u8(0);
    })
}

pub fn fatal(code: &str, text: &str) -> Bytes {
    error_like(b'E', "FATAL", code, text)
}

pub fn notice(text: &str) -> Bytes {
    error_like(b'N', "WARNING", "01000", text)
}

/// `Authentication*` with its body.
pub fn auth(kind: i32, extra: &[u8]) -> Bytes {
    message(b'R', |b| {
        b.put_i32(kind);
        b.put_slice(extra);
    })
}

pub fn backend_key(pid: i32, secret: i32) -> Bytes {
    message(b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    })
}

/// `NegotiateProtocolVersion`: the newest minor version postern speaks and the protocol
/// options (`_pq_.*`) it does not know.
pub fn negotiate(minor: u16, unknown: &[String]) -> Bytes {
    message(b'v', |b| {
        b.put_i32(i32::from(minor));
        b.put_i32(unknown.len() as i32);
        for u in unknown {
            put_cstr(b, u);
        }
    })
}

/// The fields of an `ErrorResponse`/`NoticeResponse` body: (SQLSTATE, message).
pub fn error_fields(mut body: &[u8]) -> (String, String) {
    let (mut code, mut text) = (String::new(), String::new());
    while let Some((&t, rest)) = body.split_first() {
        if t == 0 {
            break;
        }
        body = rest;
        let Some(v) = cstr(&mut body) else { break };
        match t {
            b'C' => code = v,
            b'M' => text = v,
            _ => {}
        }
    }
    (code, text)
}

/// The body of a message whose frame is `msg` (type byte and length removed).
pub fn body(msg: &[u8]) -> &[u8] {
    msg.get(5..).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        for (k, v) in params {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn startup_packets() {
        let s = parse_startup(&startup_bytes(&[("user", "alice"), ("database", "db1/x")])).unwrap();
        assert_eq!(
            s,
            Startup::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "db1/x".into())
                ]
            }
        );
        assert_eq!(
            parse_startup(&SSL_REQUEST.to_be_bytes()).unwrap(),
            Startup::Ssl
        );
        let mut c = CANCEL_REQUEST.to_be_bytes().to_vec();
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            parse_startup(&c).unwrap(),
            Startup::Cancel { pid: 7, secret: 9 }
        );
        assert_eq!(
            parse_startup(&(2i32 << 16).to_be_bytes()).unwrap_err(),
            WireError::Protocol(2, 0)
        );
        assert!(parse_startup(&[0, 3, 0, 0, b'u']).is_err());
        assert!(startup_len(0i32.to_be_bytes()).is_err());
        assert!(startup_len((-5i32).to_be_bytes()).is_err());
        assert!(startup_len(100_000i32.to_be_bytes()).is_err());
    }

    #[test]
    fn frames() {
        assert_eq!(frame(b"Q\0\0\0\x05x", 100).unwrap(), Some((b'Q', 6)));
        assert_eq!(frame(b"Q\0\0\0\x09x", 100).unwrap(), None);
        assert!(frame(b"Q\0\0\0\x03", 100).is_err());
        assert!(frame(b"Q\xff\xff\xff\xff", 100).is_err());
        assert_eq!(
            frame(b"Q\0\0\x10\0", 100).unwrap_err(),
            WireError::TooLarge(4097)
        );
    }

    #[test]
    fn errors_round_trip() {
        let e = fatal("28P01", "token expired");
        assert_eq!(frame(&e, 1000).unwrap(), Some((b'E', e.len())));
        assert_eq!(
            error_fields(body(&e)),
            ("28P01".into(), "token expired".into())
        );
    }

    proptest! {
        // The frontend parsers on arbitrary bytes: an answer or an error, never a panic,
        // and a frame never claims more bytes than its length says.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_startup(&bytes);
            if bytes.len() >= 4 {
                let _ = startup_len([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
            if let Ok(Some((_, total))) = frame(&bytes, 1024) {
                prop_assert!(total >= 5 && total <= bytes.len());
            }
            let _ = error_fields(&bytes);
            let mut b: &[u8] = &bytes;
            while cstr(&mut b).is_some() {}
        }

        #[test]
        fn startup_params_survive(params in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..6)) {
            let p: Vec<(&str, &str)> = params.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            match parse_startup(&startup_bytes(&p)).unwrap() {
                Startup::Startup { params: got, .. } => {
                    let want: Vec<(String, String)> = params.clone();
                    prop_assert_eq!(got, want);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
