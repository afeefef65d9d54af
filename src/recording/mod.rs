//! Session recordings in asciicast v2 (`.cast`, what `asciinema` plays).
//!
//! One writer task per recording takes events from a bounded queue: senders wait when it
//! is full (backpressure, nothing dropped). It appends and flushes at least every second
//! (every quarter second for terminals, which live watches read),
//! syncs and hashes (SHA-256) at the end. A write error fails the recording, and the
//! session that owns it must end: a session that cannot be recorded does not run.

mod cast;
pub mod error;
mod lines;
pub mod s3;
pub mod seal;
pub mod search;
pub mod sftp;
pub mod store;
pub mod stream;
pub mod transcript;
mod utf8;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use cast::Header;
pub use error::RecordingError;
pub use lines::{LineRecorder, LineSink};
pub use store::RecordingStore;
use store::Sink;
use utf8::Utf8Stream;

/// What a recording holds.
#[derive(Debug)]
pub enum Event {
    /// Bytes the user saw (stdout of the remote side).
    Output(Bytes),
    /// Bytes of the remote stderr (exec channels), recorded as output after a marker.
    Stderr(Bytes),
    /// Bytes the user typed or sent.
    Input(Bytes),
    Resize {
        cols: u32,
        rows: u32,
    },
    /// A labelled point in time (`exit-status 3`, `sftp …`).
    Marker(String),
}

/// The result of a finished recording.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Where it is, for messages (a file, or an object name in a bucket).
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

pub struct Recorder {
    tx: mpsc::Sender<Event>,
    failed: CancellationToken,
    seal: seal::SealCell,
    done: oneshot::Receiver<Result<Finished, RecordingError>>,
}

/// Capacity of each recording's queue, in events.
const QUEUE: usize = 256;

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RecordingError {
    let path = path.to_path_buf();
    move |source| RecordingError::Io {
        action,
        path,
        source,
    }
}

/// A directory and its missing parents, each 0700.
async fn private_dir(path: &Path) -> Result<(), RecordingError> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .await
        .map_err(io("create directory", path))
}

/// A new recording file: its directories 0700, the file 0600, never overwriting one.
async fn create_file(path: &Path) -> Result<tokio::fs::File, RecordingError> {
    if let Some(parent) = path.parent() {
        private_dir(parent).await?;
    }
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(io("create", path))
}

/// `YYYY/MM/DD/<session>-<channel>.cast` under the recordings dir (`Config::recordings_dir`).
pub fn path_for(root: &Path, started_ms: i64, session_id: &str, channel: u32) -> PathBuf {
    path_with(root, started_ms, &format!("{session_id}-{channel}.cast"))
}

/// `YYYY/MM/DD/<name>` under the recordings dir.
pub fn path_with(root: &Path, started_ms: i64, name: &str) -> PathBuf {
    let date = time::OffsetDateTime::from_unix_timestamp(started_ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    root.join(format!("{:04}", date.year()))
        .join(format!("{:02}", u8::from(date.month())))
        .join(format!("{:02}", date.day()))
        .join(name)
}

/// A new recording's name as the session index keeps it: `recordings/YYYY/MM/DD/<name>`,
/// whichever store holds it.
pub fn place(started_ms: i64, name: &str) -> String {
    stored_path(Path::new(""), &path_with(Path::new(""), started_ms, name))
}

/// How a recording's path is kept in the session index: `recordings/…`, relative to the
/// recordings dir, so a data dir that was copied or moved, a shared recordings dir that
/// each replica mounts elsewhere, or another working directory still finds it.
pub fn stored_path(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) => Path::new("recordings").join(rel).display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

/// Where a path from the session index is, under the recordings dir in use. Rows written
/// before paths were kept relative hold the data dir as it was spelled then
/// (`./data/recordings/…`): everything after the `recordings` component is kept.
pub fn resolve(root: &Path, stored: &str) -> PathBuf {
    let path = Path::new(stored);
    let components: Vec<_> = path.components().collect();
    match components
        .iter()
        .position(|c| c.as_os_str() == "recordings")
    {
        Some(i) => components[i + 1..]
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c)),
        None if path.is_absolute() => path.to_path_buf(),
        None => root.join(path),
    }
}

impl Recorder {
    /// Creates the recording `stored` (`place`) and writes the header; an error here means
    /// the session must not start.
    pub async fn create(
        store: &RecordingStore,
        stored: &str,
        header: Header,
    ) -> Result<Recorder, RecordingError> {
        let line = header.to_line();
        let body = Body::Cast {
            out: Utf8Stream::default(),
            err: Utf8Stream::default(),
            input: Utf8Stream::default(),
            on_stderr: false,
        };
        Self::start(store, stored, line, body).await
    }

    /// A lossless `.stream` recording (`stream`), for a channel without a terminal.
    pub async fn create_stream(
        store: &RecordingStore,
        stored: &str,
        header: Header,
    ) -> Result<Recorder, RecordingError> {
        let mut value = serde_json::to_value(&header).unwrap_or_default();
        value["format"] = stream::FORMAT.into();
        let mut line = value.to_string();
        line.push('\n');
        let encoder = stream::Encoder::new().map_err(io("start compressing", Path::new(stored)))?;
        Self::start(store, stored, line, Body::Stream(encoder)).await
    }

    async fn start(
        store: &RecordingStore,
        stored: &str,
        line: String,
        body: Body,
    ) -> Result<Recorder, RecordingError> {
        let sink = store.create(stored, line.as_bytes()).await?;
        let mut hash = Context::new(&SHA256);
        hash.update(line.as_bytes());
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done) = oneshot::channel();
        let failed = CancellationToken::new();
        let sealer = seal::Sealer::new();
        let seal = sealer.cell();
        let writer = Writer {
            path: PathBuf::from(sink.describe()),
            sink,
            hash,
            bytes: line.len() as u64,
            start: Instant::now(),
            body,
            sealer,
        };
        let failed2 = failed.clone();
        tokio::spawn(async move {
            let result = writer.run(rx).await;
            if result.is_err() {
                failed2.cancel();
            }
            let _ = done_tx.send(result);
        });
        Ok(Recorder {
            tx,
            failed,
            seal,
            done,
        })
    }

    /// The recording's latest seal, while it is written (`recording::seal`).
    pub fn seal(&self) -> seal::SealCell {
        self.seal.clone()
    }

    /// Queues an event, waiting while the queue is full.
    pub async fn record(&self, event: Event) -> Result<(), RecordingError> {
        self.tx
            .send(event)
            .await
            .map_err(|_| RecordingError::Stopped)
    }

    /// Fires when the recording can no longer be written.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Flushes, syncs and hashes the recording.
    pub async fn finish(self) -> Result<Finished, RecordingError> {
        drop(self.tx);
        self.done.await.unwrap_or(Err(RecordingError::Stopped))
    }
}

struct Writer {
    /// Where it goes, for messages.
    path: PathBuf,
    sink: Sink,
    hash: Context,
    bytes: u64,
    start: Instant,
    body: Body,
    sealer: seal::Sealer,
}

/// What a recording's lines or records are made of.
enum Body {
    /// asciicast v2: text, for channels with a terminal.
    Cast {
        out: Utf8Stream,
        err: Utf8Stream,
        input: Utf8Stream,
        on_stderr: bool,
    },
    /// `.stream`: the bytes as they crossed, compressed.
    Stream(stream::Encoder),
}

/// Compressed bytes are written out once this much is waiting.
const STREAM_CHUNK: usize = 64 * 1024;

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>) -> Result<Finished, RecordingError> {
        // Terminal recordings reach the disk within a quarter second (what a live watch
        // reads); compressed streams once a second (each flush ends a compressed block).
        let every = match self.body {
            Body::Cast { .. } => Duration::from_millis(250),
            Body::Stream(_) => Duration::from_secs(1),
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.write_event(ev).await?,
                    None => break,
                },
                _ = tick.tick() => {
                    self.flush().await?;
                    if self.sink.stored() {
                        self.sealer.maybe_seal(&self.hash, self.bytes);
                    }
                }
            }
        }
        let t = self.elapsed();
        match &mut self.body {
            Body::Cast {
                out, err, input, ..
            } => {
                // Trailing partial UTF-8 sequences become replacement characters.
                let rest = [
                    ("o", out.finish()),
                    ("o", err.finish()),
                    ("i", input.finish()),
                ];
                for (code, rest) in rest {
                    if !rest.is_empty() {
                        self.line(cast::event(t, code, &rest)).await?;
                    }
                }
            }
            Body::Stream(enc) => {
                let tail = enc.finish().map_err(io("compress", &self.path))?;
                self.write(&tail).await?;
            }
        }
        // The body is complete: what is left is stored (a file is synced).
        self.sink.finish().await?;
        let digest = self.hash.finish();
        Ok(Finished {
            path: self.path,
            sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            bytes: self.bytes,
        })
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    async fn write_event(&mut self, ev: Event) -> Result<(), RecordingError> {
        if let Body::Stream(enc) = &mut self.body {
            let t_ms = u32::try_from(self.start.elapsed().as_millis()).unwrap_or(u32::MAX);
            let (kind, data): (u8, &[u8]) = match &ev {
                Event::Output(b) => (stream::STDOUT, b),
                Event::Stderr(b) => (stream::STDERR, b),
                Event::Input(b) => (stream::STDIN, b),
                Event::Marker(m) => (stream::MARKER, m.as_bytes()),
                Event::Resize { .. } => return Ok(()),
            };
            enc.record(kind, t_ms, data)
                .map_err(io("compress", &self.path))?;
            if enc.pending() >= STREAM_CHUNK {
                let chunk = enc.take();
                self.write(&chunk).await?;
            }
            return Ok(());
        }
        let t = self.elapsed();
        let Body::Cast {
            out,
            err,
            input,
            on_stderr,
        } = &mut self.body
        else {
            return Ok(());
        };
        // At most two lines per event: a stream switch marker, then the text.
        let mut lines: [Option<String>; 2] = [None, None];
        match ev {
            Event::Output(b) => {
                if *on_stderr {
                    *on_stderr = false;
                    lines[0] = Some(cast::event(t, "m", "stdout"));
                }
                let s = out.push(&b);
                if !s.is_empty() {
                    lines[1] = Some(cast::event(t, "o", &s));
                }
            }
            Event::Stderr(b) => {
                if !*on_stderr {
                    *on_stderr = true;
                    lines[0] = Some(cast::event(t, "m", "stderr"));
                }
                let s = err.push(&b);
                if !s.is_empty() {
                    lines[1] = Some(cast::event(t, "o", &s));
                }
            }
            Event::Input(b) => {
                let s = input.push(&b);
                if !s.is_empty() {
                    lines[1] = Some(cast::event(t, "i", &s));
                }
            }
            Event::Resize { cols, rows } => {
                lines[1] = Some(cast::event(t, "r", &format!("{cols}x{rows}")));
            }
            Event::Marker(m) => lines[1] = Some(cast::event(t, "m", &m)),
        }
        for line in lines.into_iter().flatten() {
            self.line(line).await?;
        }
        Ok(())
    }

    async fn line(&mut self, line: String) -> Result<(), RecordingError> {
        self.write(line.as_bytes()).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        self.sink.write(bytes).await
    }

    async fn flush(&mut self) -> Result<(), RecordingError> {
        let started = std::time::Instant::now();
        if let Body::Stream(enc) = &mut self.body {
            let block = enc.flush().map_err(io("compress", &self.path))?;
            self.write(&block).await?;
        }
        let r = self.sink.flush().await;
        crate::metrics::recording_write(started.elapsed());
        r
    }
}

#[cfg(test)]
mod tests;
