//! Lossless recordings of channels without a terminal (`rsync`, `scp -O`, `tar | ssh`,
//! `cat` of a checkpoint): `.stream` files.
//!
//! A JSON header line (the asciicast header's fields, `"format": "postern-stream/1"`),
//! then one zstd stream of records: kind (1 byte: `i` stdin, `o` stdout, `e` stderr,
//! `m` marker), milliseconds since the start (u32, little-endian), length (u32, LE), the
//! bytes as they crossed. The writer ends a zstd block at every flush (each second), so a
//! recording cut short by a crash reads back up to its last flush.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

pub const FORMAT: &str = "postern-stream/1";
/// The file name's end that marks the format.
pub const EXTENSION: &str = "stream";

pub const STDIN: u8 = b'i';
pub const STDOUT: u8 = b'o';
pub const STDERR: u8 = b'e';
pub const MARKER: u8 = b'm';

/// A record longer than this is not one postern wrote.
const MAX_RECORD: usize = 16 << 20;

pub struct Encoder {
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

impl Encoder {
    pub fn new() -> std::io::Result<Encoder> {
        // Level 1: the fastest; random bytes pass as raw blocks, text still shrinks.
        Ok(Encoder {
            enc: zstd::stream::write::Encoder::new(Vec::with_capacity(128 * 1024), 1)?,
        })
    }

    pub fn record(&mut self, kind: u8, t_ms: u32, data: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let mut head = [0u8; 9];
        head[0] = kind;
        head[1..5].copy_from_slice(&t_ms.to_le_bytes());
        head[5..9].copy_from_slice(&len.to_le_bytes());
        self.enc.write_all(&head)?;
        self.enc.write_all(data)
    }

    /// Compressed bytes produced so far, for the file.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.enc.get_mut())
    }

    pub fn pending(&mut self) -> usize {
        self.enc.get_mut().len()
    }

    /// Ends the current block so everything recorded so far can be read back.
    pub fn flush(&mut self) -> std::io::Result<Vec<u8>> {
        self.enc.flush()?;
        Ok(self.take())
    }

    /// Ends the zstd stream; the encoder takes nothing more.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        self.enc.do_finish()?;
        Ok(self.take())
    }
}

pub struct Record {
    pub kind: u8,
    pub t_ms: u32,
    pub data: Vec<u8>,
}

pub fn is_stream(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == EXTENSION)
}

/// Reads a `.stream` recording: its header, then each record in order, to `each`. A tail
/// cut short (a crash before the last flush) ends the reading without an error; a file
/// that is not a stream recording is an error.
pub fn read(
    path: &Path,
    mut each: impl FnMut(Record) -> std::io::Result<()>,
) -> std::io::Result<serde_json::Value> {
    let mut file = BufReader::new(std::fs::File::open(path)?);
    let mut first = String::new();
    file.read_line(&mut first)?;
    let header: serde_json::Value = serde_json::from_str(&first)
        .ok()
        .filter(|h: &serde_json::Value| h["format"] == FORMAT)
        .ok_or_else(|| invalid("its first line is not a postern stream header"))?;
    let mut dec = zstd::stream::read::Decoder::with_buffer(file)?;
    loop {
        // The end, or a tail cut short by a crash: what was read stands.
        let mut head = [0u8; 9];
        if dec.read_exact(&mut head).is_err() {
            break;
        }
        let t_ms = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if len > MAX_RECORD || ![STDIN, STDOUT, STDERR, MARKER].contains(&head[0]) {
            return Err(invalid("a record is malformed"));
        }
        let mut data = vec![0u8; len];
        if dec.read_exact(&mut data).is_err() {
            break;
        }
        each(Record {
            kind: head[0],
            t_ms,
            data,
        })?;
    }
    Ok(header)
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_exactly_also_from_a_cut_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.stream");
        let mut enc = Encoder::new().unwrap();
        let mut file = b"{\"format\":\"postern-stream/1\"}\n".to_vec();
        let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        enc.record(STDIN, 1, &binary).unwrap();
        enc.record(STDOUT, 2, b"text\n").unwrap();
        file.extend(enc.flush().unwrap());
        let flushed = file.len();
        enc.record(STDERR, 3, b"late").unwrap();
        file.extend(enc.finish().unwrap());
        std::fs::write(&path, &file).unwrap();
        let mut got = Vec::new();
        read(&path, |r| {
            got.push((r.kind, r.t_ms, r.data));
            Ok(())
        })
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (STDIN, 1, binary.clone()));
        assert_eq!(got[2], (STDERR, 3, b"late".to_vec()));
        // A crash after the first flush: what was flushed is still there.
        std::fs::write(&path, &file[..flushed + 3]).unwrap();
        let mut n = 0;
        read(&path, |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        std::fs::write(&path, "not a header\n").unwrap();
        assert!(read(&path, |_| Ok(())).is_err());
    }
}
