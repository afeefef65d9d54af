//! Where recordings live, behind one interface: a directory (the data dir's
//! `recordings/`, or `[recordings] dir` on a mount every replica shares) or an
//! S3-compatible bucket (`[recordings.s3]`).
//!
//! Writers get a [`Sink`]; everything that reads a recording (replay, export, grep,
//! verify, live watch) asks [`RecordingStore::open`] for a local file. A directory hands
//! out the file itself. A bucket holds each recording as numbered chunk objects
//! (`PREFIX/YYYY/MM/DD/NAME/00000000`, `…/00000001`, …): the first (the header) is
//! written when the recording is created, so a session whose storage is down never
//! starts; then one per flush interval while there are new bytes, and one more at the
//! end. A replica that dies loses at most the last interval; what it uploaded reads back.
//! Reading downloads the chunks in order into a private temporary file (0600) that is
//! removed when the reader is done; a live watch fetches only the chunks that are new.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::s3::{Bucket, S3Error};
use super::{RecordingError, io};

/// A chunk is uploaded as soon as this much is waiting, whatever the interval.
pub const CHUNK_MAX: usize = 8 << 20;
/// Full chunks uploading at once while a recording grows fast.
const UPLOADING: usize = 2;
/// Chunks fetched at once when reading.
const FETCH_AHEAD: u32 = 8;

#[derive(Clone, Debug)]
pub struct RecordingStore(Arc<Backend>);

#[derive(Debug)]
enum Backend {
    Dir(PathBuf),
    S3 {
        bucket: Arc<Bucket>,
        /// How often new bytes are uploaded.
        every: Duration,
        /// Where readers' temporary copies go.
        cache: PathBuf,
    },
}

impl RecordingStore {
    /// Recordings under `root`.
    pub fn dir(root: PathBuf) -> RecordingStore {
        RecordingStore(Arc::new(Backend::Dir(root)))
    }

    /// Recordings in `bucket`; readers' temporary copies under `cache`.
    pub fn s3(bucket: Bucket, every: Duration, cache: PathBuf) -> RecordingStore {
        RecordingStore(Arc::new(Backend::S3 {
            bucket: Arc::new(bucket),
            every,
            cache,
        }))
    }

    /// The store `config` names: `[recordings.s3]` when a bucket is set, else the
    /// recordings dir.
    pub fn from_config(config: &crate::config::Config) -> Result<RecordingStore, RecordingError> {
        let s3 = &config.recordings.s3;
        if s3.bucket.is_empty() {
            return Ok(RecordingStore::dir(config.recordings_dir()));
        }
        let bucket = Bucket::from_config(s3)?;
        Ok(RecordingStore::s3(
            bucket,
            s3.flush.0,
            config.data_dir.join("cache"),
        ))
    }

    /// Where recordings go, for messages: a directory or `s3://BUCKET/PREFIX`.
    pub fn describe(&self) -> String {
        match &*self.0 {
            Backend::Dir(root) => root.display().to_string(),
            Backend::S3 { bucket, .. } => format!("{bucket:?}"),
        }
    }

    /// The local directory, for a directory store.
    pub fn local_dir(&self) -> Option<&Path> {
        match &*self.0 {
            Backend::Dir(root) => Some(root),
            Backend::S3 { .. } => None,
        }
    }

    /// Where a stored recording is, for people: a file, or `s3://BUCKET/PREFIXNAME/`
    /// (the folder of its chunks).
    pub fn display(&self, stored: &str) -> String {
        match &*self.0 {
            Backend::Dir(root) => super::resolve(root, stored).display().to_string(),
            Backend::S3 { bucket, .. } => match object_name(stored) {
                Ok(name) => format!("{bucket:?}{name}/"),
                Err(_) => stored.to_string(),
            },
        }
    }

    /// A recording's first line (its header), without reading the rest.
    pub async fn header(&self, stored: &str) -> Option<String> {
        let first = match &*self.0 {
            Backend::Dir(root) => {
                use tokio::io::AsyncBufReadExt;
                let file = tokio::fs::File::open(super::resolve(root, stored))
                    .await
                    .ok()?;
                let mut line = String::new();
                tokio::io::BufReader::new(file)
                    .take(1 << 20)
                    .read_line(&mut line)
                    .await
                    .ok()?;
                line
            }
            // The first chunk holds the header (and, from `store migrate`, maybe more).
            Backend::S3 { bucket, .. } => {
                let data = bucket
                    .get(&chunk_key(&object_name(stored).ok()?, 0))
                    .await
                    .ok()??;
                let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
                String::from_utf8_lossy(&data[..end]).into_owned()
            }
        };
        Some(first.trim_end().to_string())
    }

    /// Checks that recordings can be written (a bucket: one small object is stored).
    pub async fn probe(&self) -> Result<(), RecordingError> {
        match &*self.0 {
            Backend::Dir(root) => super::private_dir(root).await,
            Backend::S3 { bucket, cache, .. } => {
                bucket
                    .put(
                        ".postern-probe",
                        Bytes::from_static(b"postern can write here\n"),
                    )
                    .await?;
                clear_stale(cache);
                Ok(())
            }
        }
    }

    /// A new recording `stored` (`recordings/…`, see `recording::place`) beginning with
    /// `first`: created now, never over an existing one.
    pub(super) async fn create(&self, stored: &str, first: &[u8]) -> Result<Sink, RecordingError> {
        match &*self.0 {
            Backend::Dir(root) => {
                let path = super::resolve(root, stored);
                let mut file = super::create_file(&path).await?;
                file.write_all(first).await.map_err(io("write", &path))?;
                Ok(Sink::File {
                    file: tokio::io::BufWriter::with_capacity(64 * 1024, file),
                    path,
                })
            }
            Backend::S3 { bucket, every, .. } => {
                // Names hold the session's random id: no two recordings share one.
                let name = object_name(stored)?;
                bucket
                    .put(&chunk_key(&name, 0), Bytes::copy_from_slice(first))
                    .await?;
                Ok(Sink::S3(ChunkWriter {
                    bucket: bucket.clone(),
                    name,
                    next: 1,
                    pending: Vec::new(),
                    last: Instant::now(),
                    every: *every,
                    uploading: Default::default(),
                }))
            }
        }
    }

    /// Stores a whole recording at once (`store migrate`).
    pub async fn put_whole(&self, stored: &str, data: &[u8]) -> Result<(), RecordingError> {
        let mut sink = self
            .create(stored, &data[..data.len().min(CHUNK_MAX)])
            .await?;
        for piece in data[data.len().min(CHUNK_MAX)..].chunks(CHUNK_MAX) {
            sink.write(piece).await?;
        }
        sink.finish().await
    }

    /// The recording `stored` as a local file to read.
    pub async fn open(&self, stored: &str) -> Result<Local, RecordingError> {
        match &*self.0 {
            Backend::Dir(root) => Ok(Local {
                path: super::resolve(root, stored),
                fetch: None,
            }),
            Backend::S3 { bucket, cache, .. } => {
                let name = object_name(stored)?;
                let path = temp_in(cache, stored).await?;
                let missing = PathBuf::from(format!("{bucket:?}{name}"));
                let mut local = Local {
                    path,
                    fetch: Some(Fetch {
                        bucket: bucket.clone(),
                        name,
                        next: 0,
                    }),
                };
                if local.refresh().await? == 0 {
                    return Err(RecordingError::Io {
                        action: "read",
                        path: missing,
                        source: std::io::ErrorKind::NotFound.into(),
                    });
                }
                Ok(local)
            }
        }
    }

    /// Several recordings as files under one local directory, named as the session index
    /// names them (`recording::resolve(dir, stored)`): what `audit verify` reads. One that
    /// cannot be fetched is left out (the verifier reports it missing).
    pub async fn open_all<'a>(
        &self,
        stored: impl IntoIterator<Item = &'a str>,
    ) -> Result<LocalDir, RecordingError> {
        match &*self.0 {
            Backend::Dir(root) => Ok(LocalDir {
                root: root.clone(),
                temp: false,
            }),
            Backend::S3 { cache, .. } => {
                let root = cache.join(format!("read-{}", uuid::Uuid::new_v4()));
                let dir = LocalDir { root, temp: true };
                for s in stored {
                    let mut local = match self.open(s).await {
                        Ok(l) => l,
                        // Missing: the verifier names it; anything else (the bucket
                        // refused, or is down) is an error of its own.
                        Err(RecordingError::Io { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound =>
                        {
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let to = super::resolve(&dir.root, s);
                    if let Some(parent) = to.parent() {
                        super::private_dir(parent).await?;
                    }
                    tokio::fs::rename(&local.path, &to)
                        .await
                        .map_err(io("move", &to))?;
                    local.fetch = None;
                }
                Ok(dir)
            }
        }
    }
}

/// The object name of a stored recording path (`recordings/2026/12/01/x.cast` →
/// `2026/12/01/x.cast`); anything else is refused.
fn object_name(stored: &str) -> Result<String, RecordingError> {
    let rel = stored.strip_prefix("recordings/").unwrap_or(stored);
    let ok = !rel.is_empty()
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(rel.to_string())
    } else {
        Err(RecordingError::Io {
            action: "find",
            path: PathBuf::from(stored),
            source: std::io::ErrorKind::InvalidInput.into(),
        })
    }
}

fn chunk_key(name: &str, n: u32) -> String {
    format!("{name}/{n:08}")
}

/// Readers' copies left behind by processes that were killed while reading: anything in
/// `cache` older than a day.
fn clear_stale(cache: &Path) {
    let day = Duration::from_secs(24 * 3600);
    for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if old {
            let p = e.path();
            let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
        }
    }
}

/// A new private file in `cache` for a reader's copy.
async fn temp_in(cache: &Path, stored: &str) -> Result<PathBuf, RecordingError> {
    super::private_dir(cache).await?;
    // The name keeps the recording's own (its extension tells readers the format).
    let base = Path::new(stored)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = cache.join(format!("{}-{base}", uuid::Uuid::new_v4()));
    super::create_file(&path).await?;
    Ok(path)
}

/// A recording to read, as a local file. A copy fetched from a bucket is removed when
/// this is dropped.
pub struct Local {
    path: PathBuf,
    fetch: Option<Fetch>,
}

struct Fetch {
    bucket: Arc<Bucket>,
    name: String,
    next: u32,
}

impl Local {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends what was stored since the last call (a recording still being written);
    /// returns the number of new chunks. A directory's file grows by itself: 0.
    pub async fn refresh(&mut self) -> Result<u32, RecordingError> {
        let Some(f) = &mut self.fetch else {
            return Ok(0);
        };
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .await
            .map_err(io("open", &self.path))?;
        let start = f.next;
        loop {
            let mut batch = tokio::task::JoinSet::new();
            for n in f.next..f.next + FETCH_AHEAD {
                let (bucket, key) = (f.bucket.clone(), chunk_key(&f.name, n));
                batch.spawn(async move { (n, bucket.get(&key).await) });
            }
            let mut got: Vec<(u32, Option<Bytes>)> = Vec::new();
            while let Some(r) = batch.join_next().await {
                let (n, r) = r.map_err(|_| RecordingError::Stopped)?;
                got.push((n, r?));
            }
            got.sort_by_key(|(n, _)| *n);
            for (_, data) in got {
                let Some(data) = data else {
                    file.flush().await.map_err(io("write", &self.path))?;
                    return Ok(f.next - start);
                };
                file.write_all(&data)
                    .await
                    .map_err(io("write", &self.path))?;
                f.next += 1;
            }
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if self.fetch.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Recordings under one local directory; a temporary one is removed when dropped.
pub struct LocalDir {
    root: PathBuf,
    temp: bool,
}

impl LocalDir {
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for LocalDir {
    fn drop(&mut self) {
        if self.temp {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Where a recording's bytes go while it is written.
pub(super) enum Sink {
    File {
        file: tokio::io::BufWriter<tokio::fs::File>,
        path: PathBuf,
    },
    S3(ChunkWriter),
}

pub(super) struct ChunkWriter {
    bucket: Arc<Bucket>,
    name: String,
    next: u32,
    pending: Vec<u8>,
    last: Instant,
    every: Duration,
    /// Full chunks still uploading (a bulk transfer does not wait for each PUT).
    uploading: std::collections::VecDeque<tokio::task::JoinHandle<Result<(), S3Error>>>,
}

impl ChunkWriter {
    /// Starts uploading what is pending as the next chunk; waits for the oldest upload
    /// while `UPLOADING` are under way.
    async fn upload(&mut self) -> Result<(), RecordingError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::take(&mut self.pending));
        let (bucket, key) = (self.bucket.clone(), chunk_key(&self.name, self.next));
        self.uploading
            .push_back(tokio::spawn(async move { bucket.put(&key, data).await }));
        self.next += 1;
        self.last = Instant::now();
        while self.uploading.len() > UPLOADING {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), RecordingError> {
        match self.uploading.pop_front() {
            Some(h) => Ok(h.await.map_err(|_| RecordingError::Stopped)??),
            None => Ok(()),
        }
    }

    /// Uploads what is pending and waits until every chunk is stored.
    async fn settle(&mut self) -> Result<(), RecordingError> {
        self.upload().await?;
        while !self.uploading.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        // A recording abandoned mid-upload (its session failed): nothing waits for these.
        for h in &self.uploading {
            h.abort();
        }
    }
}

impl Sink {
    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        match self {
            Sink::File { file, path } => file.write_all(bytes).await.map_err(io("write", path)),
            Sink::S3(w) => {
                w.pending.extend_from_slice(bytes);
                if w.pending.len() >= CHUNK_MAX {
                    w.upload().await?;
                }
                Ok(())
            }
        }
    }

    /// Makes what was written readable: a file is flushed; a bucket gets the new bytes
    /// once its interval has passed.
    pub(super) async fn flush(&mut self) -> Result<(), RecordingError> {
        match self {
            Sink::File { file, path } => file.flush().await.map_err(io("flush", path)),
            Sink::S3(w) => {
                if w.last.elapsed() >= w.every {
                    w.settle().await?;
                }
                Ok(())
            }
        }
    }

    /// Whether everything written so far is stored (what a seal may vouch for).
    pub(super) fn stored(&self) -> bool {
        match self {
            Sink::File { .. } => true,
            Sink::S3(w) => w.pending.is_empty() && w.uploading.is_empty(),
        }
    }

    /// Stores the rest; a file is synced.
    pub(super) async fn finish(&mut self) -> Result<(), RecordingError> {
        match self {
            Sink::File { file, path } => {
                file.flush().await.map_err(io("flush", path))?;
                file.get_ref().sync_all().await.map_err(io("sync", path))
            }
            Sink::S3(w) => w.settle().await,
        }
    }

    /// Where it goes, for messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Sink::File { path, .. } => path.display().to_string(),
            Sink::S3(w) => format!("{:?}{}", w.bucket, w.name),
        }
    }
}
