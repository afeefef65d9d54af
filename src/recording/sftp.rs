//! The transfer log of an sftp channel, made as its bytes pass (the channel's recording
//! holds this log, not the files): which files were read or written and how many bytes,
//! removed, renamed, and which directories were made, removed or listed. SFTP
//! (draft-ietf-secsh-filexfer-02, what OpenSSH speaks) is length-prefixed packets, which
//! channel data cuts anywhere, so each direction is reassembled.

use std::collections::HashMap;

/// A packet longer than this is not SFTP as clients send it: the log stops there.
const MAX_PACKET: usize = 1 << 20;
/// Open handles, and requests awaiting a reply, tracked at most (the rest are not logged).
const MAX_TRACKED: usize = 4096;

const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const OPENDIR: u8 = 11;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const SYMLINK: u8 = 20;
/// Extensions by name (OpenSSH's `sftp` renames with `posix-rename@openssh.com`).
const EXTENDED: u8 = 200;
const HANDLE: u8 = 102;
const DATA: u8 = 103;

/// Flags of `OPEN`.
const WANTS_WRITE: u32 = 0x02 | 0x08 | 0x10;

struct File {
    path: String,
    write: bool,
    bytes: u64,
}

#[derive(Default)]
pub struct Log {
    /// Lines made by the bytes fed so far and not yet taken.
    entries: Vec<String>,
    up: Vec<u8>,
    down: Vec<u8>,
    /// Request id → path, for `OPEN` awaiting its handle.
    opening: HashMap<u32, (String, bool)>,
    /// Request id → handle, for `READ` awaiting its data.
    reading: HashMap<u32, Vec<u8>>,
    files: HashMap<Vec<u8>, File>,
    broken: bool,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// An SSH `string` at `at`: its bytes and where the next field starts.
fn string_at(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let n = usize::try_from(u32_at(b, at)?).ok()?;
    Some((b.get(at + 4..at + 4 + n)?, at + 4 + n))
}

fn text(b: &[u8]) -> String {
    crate::printable::cell(&String::from_utf8_lossy(b))
}

impl Log {
    /// Feeds bytes of one direction (`up`: client to server); returns the lines they
    /// complete.
    pub fn feed(&mut self, up: bool, data: &[u8]) -> Vec<String> {
        if self.broken {
            return Vec::new();
        }
        let mut buf = std::mem::take(if up { &mut self.up } else { &mut self.down });
        buf.extend_from_slice(data);
        let mut used = 0;
        while let Some(n) = u32_at(&buf, used).and_then(|n| usize::try_from(n).ok()) {
            if n == 0 || n > MAX_PACKET {
                self.broken = true;
                self.entries
                    .push("(not SFTP from here on: the log stops)".into());
                break;
            }
            let Some(p) = buf.get(used + 4..used + 4 + n) else {
                break;
            };
            if up {
                self.request(p);
            } else {
                self.reply(p);
            }
            used += 4 + n;
        }
        if self.broken {
            buf = Vec::new();
        } else {
            buf.drain(..used);
        }
        *(if up { &mut self.up } else { &mut self.down }) = buf;
        std::mem::take(&mut self.entries)
    }

    fn request(&mut self, p: &[u8]) {
        let (Some(&kind), Some(id)) = (p.first(), u32_at(p, 1)) else {
            return;
        };
        let first = string_at(p, 5);
        match (kind, first) {
            (OPEN, Some((path, next))) => {
                let write = u32_at(p, next).is_some_and(|f| f & WANTS_WRITE != 0);
                if self.opening.len() < MAX_TRACKED {
                    self.opening.insert(id, (text(path), write));
                }
            }
            (READ, Some((handle, _))) if self.reading.len() < MAX_TRACKED => {
                self.reading.insert(id, handle.to_vec());
            }
            (WRITE, Some((handle, next))) => {
                // handle, uint64 offset, string data
                if let (Some(f), Some((data, _))) =
                    (self.files.get_mut(handle), string_at(p, next + 8))
                {
                    f.bytes += data.len() as u64;
                }
            }
            (CLOSE, Some((handle, _))) => {
                if let Some(f) = self.files.remove(handle) {
                    let verb = if f.write { "wrote" } else { "read" };
                    self.entries
                        .push(format!("{verb} {} ({} bytes)", f.path, f.bytes));
                }
            }
            (REMOVE, Some((path, _))) => self.entries.push(format!("remove {}", text(path))),
            (MKDIR, Some((path, _))) => self.entries.push(format!("mkdir {}", text(path))),
            (RMDIR, Some((path, _))) => self.entries.push(format!("rmdir {}", text(path))),
            (OPENDIR, Some((path, _))) => self.entries.push(format!("list {}", text(path))),
            (RENAME | SYMLINK, Some((from, next))) => {
                if let Some((to, _)) = string_at(p, next) {
                    let verb = if kind == RENAME { "rename" } else { "symlink" };
                    self.entries
                        .push(format!("{verb} {} → {}", text(from), text(to)));
                }
            }
            (EXTENDED, Some((name, next))) => {
                let verb = match name {
                    b"posix-rename@openssh.com" => "rename",
                    b"hardlink@openssh.com" => "hardlink",
                    _ => return,
                };
                if let Some((from, next)) = string_at(p, next)
                    && let Some((to, _)) = string_at(p, next)
                {
                    self.entries
                        .push(format!("{verb} {} → {}", text(from), text(to)));
                }
            }
            _ => {}
        }
    }

    fn reply(&mut self, p: &[u8]) {
        let (Some(&kind), Some(id)) = (p.first(), u32_at(p, 1)) else {
            return;
        };
        match kind {
            HANDLE => {
                if let (Some((path, write)), Some((handle, _))) =
                    (self.opening.remove(&id), string_at(p, 5))
                    && self.files.len() < MAX_TRACKED
                {
                    self.files.insert(
                        handle.to_vec(),
                        File {
                            path,
                            write,
                            bytes: 0,
                        },
                    );
                }
            }
            DATA => {
                if let (Some(handle), Some((data, _))) = (self.reading.remove(&id), string_at(p, 5))
                    && let Some(f) = self.files.get_mut(&handle)
                {
                    f.bytes += data.len() as u64;
                }
            }
            // A status (or anything else) answers the request: it is no longer awaited.
            _ => {
                self.opening.remove(&id);
                self.reading.remove(&id);
            }
        }
    }

    /// The channel ended: files still open, as lines.
    pub fn finish(self) -> Vec<String> {
        let mut open: Vec<_> = self.files.into_values().collect();
        open.sort_by(|a, b| a.path.cmp(&b.path));
        open.into_iter()
            .map(|f| {
                let verb = if f.write { "writing" } else { "reading" };
                format!("{verb} {} ({} bytes, never closed)", f.path, f.bytes)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        p
    }

    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn uploads_downloads_and_renames_make_the_log_even_when_cut_anywhere() {
        let mut up = Vec::new();
        up.extend(packet(
            OPEN,
            1,
            &[
                &s(b"/tmp/up.bin"),
                &0x1au32.to_be_bytes(),
                &0u32.to_be_bytes(),
            ],
        ));
        let write = [s(b"h1"), 0u64.to_be_bytes().to_vec(), s(&[7u8; 1000])].concat();
        let later = [
            packet(WRITE, 3, &[&write]),
            packet(CLOSE, 4, &[&s(b"h1")]),
            packet(
                OPEN,
                5,
                &[&s(b"/etc/motd"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
            ),
            packet(
                READ,
                6,
                &[&s(b"h2"), &0u64.to_be_bytes(), &32768u32.to_be_bytes()],
            ),
            packet(CLOSE, 7, &[&s(b"h2")]),
            packet(
                EXTENDED,
                8,
                &[
                    &s(b"posix-rename@openssh.com"),
                    &s(b"/tmp/up.bin"),
                    &s(b"/tmp/final \x1b[31m.bin"),
                ],
            ),
        ];
        let mut log = Log::default();
        let mut lines = Vec::new();
        // The client's first packet, in three pieces.
        let (a, b) = up.split_at(3);
        lines.extend(log.feed(true, a));
        lines.extend(log.feed(true, b));
        lines.extend(log.feed(false, &packet(HANDLE, 1, &[&s(b"h1")])));
        lines.extend(log.feed(true, &later[0]));
        assert!(lines.is_empty());
        lines.extend(log.feed(true, &[later[1].clone(), later[2].clone()].concat()));
        assert_eq!(lines, ["wrote /tmp/up.bin (1000 bytes)"]);
        lines.extend(log.feed(false, &packet(HANDLE, 5, &[&s(b"h2")])));
        lines.extend(log.feed(true, &later[3]));
        lines.extend(log.feed(false, &packet(DATA, 6, &[&s(&[1u8; 300])])));
        lines.extend(log.feed(true, &[later[4].clone(), later[5].clone()].concat()));
        assert_eq!(
            lines,
            [
                "wrote /tmp/up.bin (1000 bytes)",
                "read /etc/motd (300 bytes)",
                "rename /tmp/up.bin → /tmp/final \\x1b[31m.bin",
            ]
        );
        assert!(log.finish().is_empty());
    }

    #[test]
    fn garbage_stops_the_log_and_open_files_are_named() {
        let mut log = Log::default();
        log.feed(true, &packet(OPEN, 1, &[&s(b"/a"), &2u32.to_be_bytes()]));
        log.feed(false, &packet(HANDLE, 1, &[&s(b"h")]));
        assert_eq!(
            log.feed(true, &[0xff; 8]),
            ["(not SFTP from here on: the log stops)"]
        );
        assert!(log.feed(true, &packet(REMOVE, 2, &[&s(b"/b")])).is_empty());
        assert_eq!(log.finish(), ["writing /a (0 bytes, never closed)"]);
    }
}
