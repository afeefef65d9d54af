//! The relay of an authenticated PostgreSQL session: both directions at once, forwarding
//! messages untouched, with the statement tracker seeing each one first. A statement's
//! line is in the recorder before the statement reaches the target; its result line is
//! in the recorder before the reply reaches the client. Messages larger than a frame
//! budget pass through in pieces, the tracker seeing their first bytes.
//!
//! When the client leaves (or postern ends the session), the target is read on until it
//! has answered everything it was sent, for a few seconds; what is still running then is
//! cancelled, and anything unanswered is recorded as such.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::Io;
use super::framer::{Framer, Step, consume};
use super::link::{
    self, DONE, ENDED, FROM_CLIENT, Link, NOTICE, RECORDING_FAILED, ReadSide, SHUTDOWN, STOPS,
    TO_CLIENT, WriteSide,
};
use super::tracker::{Limit, Tracker};
use super::wire;
use crate::recording::LineSink;
use crate::server::limits::Limits;

/// Client messages up to this size reach the tracker whole; larger ones (bulk `COPY`
/// data, huge statements) are forwarded in pieces and the transcript keeps this much.
const CLIENT_FRAME: usize = 1 << 20;
/// The same for the target's messages (rows are not recorded, only tags and errors).
const SERVER_FRAME: usize = 64 << 10;
/// How long the target is read after the client left, for the replies to what it sent.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a cancelled statement has to report.
const AFTER_CANCEL: Duration = Duration::from_secs(2);

pub type CancelTarget = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct Relay {
    pub client: Box<dyn Io>,
    pub upstream: Box<dyn Io>,
    pub recorder: LineSink,
    pub limits: Arc<Limits>,
    /// Server shutdown.
    pub cancel: CancellationToken,
    /// Leave `Bind` parameter values out of the transcript.
    pub redact: bool,
    /// The target's `ParameterStatus` messages from its start-up (`client_encoding`).
    pub parameters: Vec<Bytes>,
    /// Asks the target to cancel what this session runs.
    pub cancel_target: CancelTarget,
    /// A client's `Terminate` at rest leaves the target connection open and hands it back
    /// (`Outcome::upstream`) for the next session, instead of passing it on.
    pub keep_upstream: bool,
}

pub struct Outcome {
    pub reason: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The client's connection, for a last word; `None` when a direction had to be
    /// abandoned (a peer that stopped reading, or a message cut in the middle).
    pub client: Option<Box<dyn Io>>,
    /// A limit the client went past.
    pub limit: Option<String>,
    /// The target connection, at rest, when the client ended with `Terminate` and
    /// `keep_upstream` was asked.
    pub upstream: Option<Box<dyn Io>>,
}

fn lock(t: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

async fn send(w: &mut WriteSide, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// How the client → target direction ended.
struct ClientSide {
    cr: ReadSide,
    uw: WriteSide,
    reason: &'static str,
    limit: Option<Limit>,
    /// The client's `Terminate` was kept from the target, which is at rest.
    kept: bool,
}

/// Client → target: each message goes to the tracker (and its statement line to the
/// recorder) before it is forwarded.
async fn from_client(
    mut cr: ReadSide,
    mut uw: WriteSide,
    tracker: Arc<Mutex<Tracker>>,
    recorder: LineSink,
    limits: Arc<Limits>,
    link: Arc<Link>,
    keep_upstream: bool,
) -> ClientSide {
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut framer = Framer {
        frame: CLIENT_FRAME,
        rest: 0,
    };
    let mut lines = Vec::with_capacity(4096);
    let mut limit = None;
    let mut kept = false;
    let reason = loop {
        tokio::select! {
            biased;
            _ = link.wait(FROM_CLIENT, STOPS | DONE) => break "ended",
            r = cr.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break "client exit",
                Ok(_) => {}
            },
        }
        limits.touch();
        let scanned = {
            let mut t = lock(&tracker);
            framer.scan(&buf, |tag, body, cut| {
                if tag == b'X' {
                    // Everything before it answered, outside a transaction: the target
                    // connection can serve again; otherwise it hears the Terminate.
                    kept = keep_upstream && t.at_rest();
                    return if kept {
                        Step::StopBefore
                    } else {
                        Step::StopAfter
                    };
                }
                match t.client(tag, body, cut, &mut lines) {
                    Ok(()) => Step::Go,
                    Err(e) => {
                        limit = Some(e);
                        Step::StopBefore
                    }
                }
            })
        };
        let Ok((ready, stop)) = scanned else {
            break "protocol violation by the client";
        };
        if !lines.is_empty() {
            if recorder.append(&lines).await.is_err() {
                break "recording failed";
            }
            lines.clear();
        }
        if ready > 0 {
            link.bytes_in.fetch_add(ready as u64, Ordering::Relaxed);
            let sent = tokio::select! {
                r = send(&mut uw, &buf[..ready]) => r.is_ok(),
                _ = link.wait(FROM_CLIENT, STOPS) => break "ended",
            };
            if !sent {
                break "target closed the connection";
            }
        }
        if stop {
            break if limit.is_some() {
                "limit"
            } else {
                "client exit"
            };
        }
        consume(&mut buf, ready);
    };
    ClientSide {
        cr,
        uw,
        reason,
        limit,
        kept,
    }
}

/// How the target is read once the session is ending.
struct Drain {
    deadline: Instant,
    cancel: Option<CancelTarget>,
}

impl Drain {
    fn start(d: Duration, cancel: &mut Option<CancelTarget>, now: bool) -> Drain {
        let mut drain = Drain {
            deadline: Instant::now() + d,
            cancel: cancel.take(),
        };
        if now {
            drain.cancel_now();
        }
        drain
    }

    /// Cancels what the target runs (once) and gives it a moment to say so.
    fn cancel_now(&mut self) -> bool {
        match self.cancel.take() {
            Some(c) => {
                tokio::spawn(c);
                self.deadline = Instant::now() + AFTER_CANCEL;
                true
            }
            None => false,
        }
    }
}

/// Target → client: each reply goes to the tracker (and the result line to the recorder)
/// before it is forwarded.
async fn to_client(
    mut ur: ReadSide,
    mut cw: WriteSide,
    tracker: Arc<Mutex<Tracker>>,
    recorder: LineSink,
    limits: Arc<Limits>,
    link: Arc<Link>,
    mut cancel: Option<CancelTarget>,
) -> (Option<WriteSide>, ReadSide, &'static str) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut framer = Framer {
        frame: SERVER_FRAME,
        rest: 0,
    };
    let mut lines = Vec::with_capacity(4096);
    let mut drain: Option<Drain> = None;
    let mut client_ok = true;
    let mut reason = "client exit";
    loop {
        if drain.is_some() && lock(&tracker).idle() && framer.rest == 0 {
            break;
        }
        let deadline = drain.as_ref().map(|d| d.deadline);
        tokio::select! {
            biased;
            bits = link.wait(TO_CLIENT, STOPS | NOTICE | DONE), if drain.is_none() => {
                if bits & RECORDING_FAILED != 0 {
                    if let Some(c) = cancel.take() {
                        tokio::spawn(c);
                    }
                    return (None, ur, "recording failed");
                }
                if bits & (ENDED | SHUTDOWN) != 0 {
                    if bits & SHUTDOWN != 0 && bits & ENDED == 0 {
                        limits.terminate("shutdown", "postern is shutting down".into());
                    }
                    reason = "ended";
                    drain = Some(Drain::start(AFTER_CANCEL, &mut cancel, true));
                } else if bits & DONE != 0 {
                    drain = Some(Drain::start(DRAIN, &mut cancel, false));
                } else if let Some(text) = link.take_notice() {
                    let notice = wire::notice(&format!("postern: {text}"));
                    let sent = tokio::select! {
                        r = send(&mut cw, &notice) => r.is_ok(),
                        _ = link.wait(TO_CLIENT, STOPS) => false,
                    };
                    if !sent {
                        client_ok = false;
                        let now = link.state.load(Ordering::Acquire) & STOPS != 0;
                        drain = Some(Drain::start(DRAIN, &mut cancel, now));
                    }
                }
                continue;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if drain.as_mut().is_some_and(Drain::cancel_now) {
                    continue;
                }
                break;
            }
            r = ur.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    if drain.is_none() {
                        reason = "target closed the connection";
                    }
                    break;
                }
                Ok(_) => {}
            },
        }
        let scanned = {
            let mut t = lock(&tracker);
            framer.scan(&buf, |tag, body, _| {
                t.server(tag, body, &mut lines);
                Step::Go
            })
        };
        let Ok((ready, _)) = scanned else {
            reason = "protocol violation by the target";
            break;
        };
        if !lines.is_empty() {
            if recorder.append(&lines).await.is_err() {
                reason = "recording failed";
                break;
            }
            lines.clear();
        }
        // While draining, the client has left or is about to hear why its session ended:
        // the replies are recorded, not forwarded.
        if ready > 0 && drain.is_none() {
            link.bytes_out.fetch_add(ready as u64, Ordering::Relaxed);
            let ok = tokio::select! {
                r = send(&mut cw, &buf[..ready]) => r.is_ok(),
                _ = link.wait(TO_CLIENT, STOPS) => false,
            };
            if !ok {
                // The client left, or stopped reading while the session ends: a message
                // may be cut, so it gets no last word.
                client_ok = false;
                let now = link.state.load(Ordering::Acquire) & STOPS != 0;
                reason = if now { "ended" } else { "client exit" };
                drain = Some(Drain::start(DRAIN, &mut cancel, now));
            }
        }
        consume(&mut buf, ready);
        if lock(&tracker).violation.is_some() {
            reason = "limit";
            break;
        }
    }
    (client_ok.then_some(cw), ur, reason)
}

/// Relays until either side leaves or the session ends, then records what is left. Each
/// direction runs as its own task, so a message wakes and polls only its direction.
pub async fn run(r: Relay) -> Outcome {
    let Relay {
        client,
        upstream,
        recorder,
        limits,
        cancel,
        redact,
        parameters,
        cancel_target,
        keep_upstream,
    } = r;
    let mut tracker = Tracker::new(redact);
    let mut scratch = Vec::new();
    for p in &parameters {
        tracker.server(b'S', wire::body(p), &mut scratch);
    }
    let tracker = Arc::new(Mutex::new(tracker));
    let link = Arc::new(Link::new());
    let stops = (limits.end.clone(), cancel.clone(), recorder.failed());
    let _watcher = AbortOnDropHandle::new(tokio::spawn(link::watch(
        link.clone(),
        limits.end.clone(),
        recorder.failed(),
        cancel,
        limits.notices.subscribe(),
    )));
    let (cr, cw) = link::split(client);
    let (ur, uw) = link::split(upstream);
    let mut up = AbortOnDropHandle::new(tokio::spawn(from_client(
        cr,
        uw,
        tracker.clone(),
        recorder.clone(),
        limits.clone(),
        link.clone(),
        keep_upstream,
    )));
    let mut down = AbortOnDropHandle::new(tokio::spawn(to_client(
        ur,
        cw,
        tracker.clone(),
        recorder.clone(),
        limits,
        link.clone(),
        Some(cancel_target),
    )));
    // The first direction to finish gives the reason. The other is told: the target's
    // side drains within its deadlines, the client's side returns at once; a peer that
    // stopped reading cannot hold either longer than the grace.
    let grace = DRAIN + AFTER_CANCEL + Duration::from_secs(3);
    let stopped = async {
        tokio::select! {
            _ = stops.0.cancelled() => {}
            _ = stops.1.cancelled() => {}
            _ = stops.2.cancelled() => {}
        }
        tokio::time::sleep(grace).await;
    };
    let (up_first, up, down) = tokio::select! {
        // Ended, and neither direction could finish in time (peers that stopped reading
        // while each direction waited on them): both are abandoned.
        _ = stopped => (true, None, None),
        r = &mut up => {
            link.raise(DONE);
            (true, r.ok(), tokio::time::timeout(grace, down).await.ok().and_then(Result::ok))
        }
        r = &mut down => {
            link.raise(DONE);
            (false, tokio::time::timeout(grace, up).await.ok().and_then(Result::ok), r.ok())
        }
    };
    let mut rest = Vec::new();
    lock(&tracker).finish(&mut rest);
    if !rest.is_empty() {
        let _ = recorder.append(&rest).await;
    }
    let reason = match (up_first, &up, &down) {
        (true, Some(c), _) => c.reason,
        (false, _, Some((_, _, r))) => *r,
        _ => "relay failed",
    };
    let (cr, uw, limit, kept) = match up {
        Some(c) => (Some(c.cr), Some(c.uw), c.limit.map(|l| l.0), c.kept),
        None => (None, None, None, false),
    };
    let limit = limit.or_else(|| lock(&tracker).violation.clone());
    let (cw, ur) = match down {
        Some((cw, ur, _)) => (cw, Some(ur)),
        None => (None, None),
    };
    // Kept only if nothing happened after the Terminate either (the session was not
    // ended under it, the target said nothing more).
    let rest = kept && up_first && limit.is_none() && lock(&tracker).at_rest();
    let upstream = match (ur, uw) {
        (Some(ur), Some(uw)) if rest && link.state.load(Ordering::Acquire) & STOPS == 0 => {
            link::unsplit(ur, uw)
        }
        _ => None,
    };
    Outcome {
        reason: reason.to_string(),
        bytes_in: link.bytes_in.load(Ordering::Relaxed),
        bytes_out: link.bytes_out.load(Ordering::Relaxed),
        client: match (cr, cw) {
            (Some(cr), Some(cw)) => link::unsplit(cr, cw),
            _ => None,
        },
        limit,
        upstream,
    }
}
