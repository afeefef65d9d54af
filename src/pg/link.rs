//! What the two directions of a PostgreSQL relay share (an alarm and byte counts), the
//! task that raises the alarm, and connection halves that keep plain TCP lock-free.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use super::Io;

/// What the two directions of a relay share: an alarm for what can interrupt them (the
/// session's end, a failed recording, shutdown, a notice for the user, the other
/// direction finishing) and the byte counts. A watcher task waits on the outside sources
/// and raises the alarm, so the hot path checks one atomic per wake-up instead of polling
/// a notifier per source.
pub struct Link {
    pub state: AtomicU8,
    /// One per direction (each runs as its own task).
    pub wakers: [AtomicWaker; 2],
    pub notice: Mutex<Option<String>>,
    /// Bytes forwarded each way, kept here so a direction abandoned at the end still
    /// counts.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

pub const ENDED: u8 = 1;
pub const RECORDING_FAILED: u8 = 2;
pub const SHUTDOWN: u8 = 4;
pub const NOTICE: u8 = 8;
pub const DONE: u8 = 16;
pub const STOPS: u8 = ENDED | RECORDING_FAILED | SHUTDOWN;

pub const FROM_CLIENT: usize = 0;
pub const TO_CLIENT: usize = 1;

impl Link {
    pub fn new() -> Link {
        Link {
            state: AtomicU8::new(0),
            wakers: [AtomicWaker::new(), AtomicWaker::new()],
            notice: Mutex::new(None),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    pub fn raise(&self, bit: u8) {
        self.state.fetch_or(bit, Ordering::AcqRel);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Ready with the raised bits among `mask`.
    fn poll(&self, cx: &mut Context<'_>, slot: usize, mask: u8) -> Poll<u8> {
        self.wakers[slot].register(cx.waker());
        match self.state.load(Ordering::Acquire) & mask {
            0 => Poll::Pending,
            bits => Poll::Ready(bits),
        }
    }

    pub async fn wait(&self, slot: usize, mask: u8) -> u8 {
        std::future::poll_fn(|cx| self.poll(cx, slot, mask)).await
    }

    pub fn take_notice(&self) -> Option<String> {
        self.state.fetch_and(!NOTICE, Ordering::AcqRel);
        self.notice.lock().ok()?.take()
    }
}

pub async fn watch(
    link: Arc<Link>,
    end: CancellationToken,
    failed: CancellationToken,
    shutdown: CancellationToken,
    mut notices: tokio::sync::watch::Receiver<Option<String>>,
) {
    let mut notices_open = true;
    loop {
        tokio::select! {
            _ = end.cancelled() => return link.raise(ENDED),
            _ = failed.cancelled() => return link.raise(RECORDING_FAILED),
            _ = shutdown.cancelled() => return link.raise(SHUTDOWN),
            r = notices.changed(), if notices_open => match r {
                Ok(()) => {
                    let text = notices.borrow_and_update().clone();
                    if let Some(text) = text {
                        if let Ok(mut n) = link.notice.lock() {
                            *n = Some(text);
                        }
                        link.raise(NOTICE);
                    }
                }
                Err(_) => notices_open = false,
            },
        }
    }
}

/// A connection's read half: TCP's own (no lock), or a shared half of anything else.
pub enum ReadSide {
    Tcp(OwnedReadHalf),
    Any(ReadHalf<Box<dyn Io>>),
}

pub enum WriteSide {
    Tcp(OwnedWriteHalf),
    Any(WriteHalf<Box<dyn Io>>),
}

pub fn split(io: Box<dyn Io>) -> (ReadSide, WriteSide) {
    match io.into_tcp() {
        Ok(tcp) => {
            let (r, w) = tcp.into_split();
            (ReadSide::Tcp(r), WriteSide::Tcp(w))
        }
        Err(io) => {
            let (r, w) = tokio::io::split(io);
            (ReadSide::Any(r), WriteSide::Any(w))
        }
    }
}

pub fn unsplit(r: ReadSide, w: WriteSide) -> Option<Box<dyn Io>> {
    match (r, w) {
        (ReadSide::Tcp(r), WriteSide::Tcp(w)) => {
            r.reunite(w).ok().map(|t| Box::new(t) as Box<dyn Io>)
        }
        (ReadSide::Any(r), WriteSide::Any(w)) => Some(r.unsplit(w)),
        _ => None,
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Any(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteSide::Any(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Any(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Any(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
