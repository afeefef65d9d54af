//! Message boundaries in one direction of a PostgreSQL connection: each message that
//! starts in a read buffer is shown to the tracker, whole up to a frame budget, its first
//! bytes beyond it; what follows a large message passes through as it arrives.

use bytes::{Buf, BytesMut};

use super::wire;

/// Finds message boundaries in one direction's byte stream.
pub struct Framer {
    /// Messages up to this size are seen whole.
    pub frame: usize,
    /// Bytes of a large message still to pass through.
    pub rest: usize,
}

/// What the tracker makes of a message.
pub enum Step {
    Go,
    /// Forward this message, then nothing more.
    StopAfter,
    /// Forward nothing from this message on.
    StopBefore,
}

impl Framer {
    /// Shows `each` every message that starts in `buf` (with its whole body length when
    /// only a prefix is shown); returns how many bytes may be forwarded and whether to stop.
    pub fn scan(
        &mut self,
        buf: &[u8],
        mut each: impl FnMut(u8, &[u8], Option<usize>) -> Step,
    ) -> Result<(usize, bool), wire::WireError> {
        let mut pos = 0;
        loop {
            if self.rest > 0 {
                let n = self.rest.min(buf.len() - pos);
                pos += n;
                self.rest -= n;
                if self.rest > 0 {
                    return Ok((pos, false));
                }
            }
            let b = &buf[pos..];
            if b.len() < 5 {
                return Ok((pos, false));
            }
            let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]);
            let Some(body) = usize::try_from(len).ok().and_then(|l| l.checked_sub(4)) else {
                return Err(wire::WireError::BadLength(i64::from(len)));
            };
            if body + 5 > wire::MAX_MESSAGE {
                return Err(wire::WireError::TooLarge(body + 5));
            }
            let (seen, cut) = if body + 5 <= b.len() {
                (&b[5..5 + body], None)
            } else if body <= self.frame {
                return Ok((pos, false));
            } else if b.len() >= 5 + self.frame {
                (&b[5..5 + self.frame], Some(body))
            } else {
                return Ok((pos, false));
            };
            match each(b[0], seen, cut) {
                Step::Go => {}
                Step::StopAfter => return Ok((pos + 5 + body.min(b.len() - 5), true)),
                Step::StopBefore => return Ok((pos, true)),
            }
            self.rest = body + 5;
        }
    }
}

/// Drops the first `n` bytes of `buf`, keeping room to read into; a buffer grown for a
/// large message is given back once it is no longer needed.
pub fn consume(buf: &mut BytesMut, n: usize) {
    buf.advance(n);
    if buf.capacity() > 256 << 10 && buf.len() < 32 << 10 {
        let mut fresh = BytesMut::with_capacity(64 << 10);
        fresh.extend_from_slice(buf);
        *buf = fresh;
    }
    if buf.capacity() - buf.len() < 8192 {
        buf.reserve(64 << 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn whole_frames_then_large_ones_in_pieces() {
        let mut f = Framer { frame: 8, rest: 0 };
        let mut buf = msg(b'Q', b"x\0");
        buf.extend_from_slice(&msg(b'Q', b"yy\0")[..4]);
        let mut seen = Vec::new();
        let (ready, stop) = f
            .scan(&buf, |t, b, cut| {
                seen.push((t, b.to_vec(), cut));
                Step::Go
            })
            .unwrap();
        assert_eq!((ready, stop), (7, false));
        assert_eq!(seen, vec![(b'Q', b"x\0".to_vec(), None)]);

        // A 20-byte body with an 8-byte frame: seen as a prefix once 13 bytes are here,
        // then passed through as it arrives.
        let big = msg(b'd', &[7u8; 20]);
        seen.clear();
        let mut each = |t: u8, b: &[u8], cut: Option<usize>| {
            seen.push((t, b.to_vec(), cut));
            Step::Go
        };
        assert_eq!(f.scan(&big[..10], &mut each).unwrap(), (0, false));
        assert_eq!(f.scan(&big[..15], &mut each).unwrap(), (15, false));
        assert_eq!(f.scan(&big[15..20], &mut each).unwrap(), (5, false));
        let mut tail = big[20..].to_vec();
        tail.extend_from_slice(&msg(b'X', b""));
        let mut stop_at_x = |t: u8, b: &[u8], cut: Option<usize>| {
            seen.push((t, b.to_vec(), cut));
            if t == b'X' { Step::StopAfter } else { Step::Go }
        };
        assert_eq!(f.scan(&tail, &mut stop_at_x).unwrap(), (tail.len(), true));
        assert_eq!(seen[0], (b'd', vec![7u8; 8], Some(20)));
        assert_eq!(seen[1].0, b'X');
        assert!(f.scan(&[b'Q', 0, 0, 0, 1], |_, _, _| Step::Go).is_err());
    }
}
