//! One channel's bytes, both ways, between a client channel and its target channel, and
//! the channel's end.
//!
//! Each direction is its own loop that reads one side and writes the other; a full
//! destination makes that loop wait and nothing else (the session loops underneath never
//! wait for a consumer, and grant window as it drains). The end follows OpenSSH: EOF is
//! passed on once per direction and the other direction keeps running; the target's exit
//! status goes out before the channel's CLOSE; when the client closes first (a
//! multiplexing client does, once both sides sent EOF), postern's CLOSE waits for the
//! target's exit status, within `CLOSE_GRACE`. Every wait on a peer in the ending is
//! bounded.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::relay::Stop;
use super::session::SessionCtx;
use crate::audit::Outcome;
use crate::recording::{Event, Recorder, sftp};

/// How long a channel the client closed waits for the target's exit status.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long the end of a channel waits for a peer's answer (its CLOSE, a write).
const PEER_WAIT: Duration = Duration::from_secs(5);

/// The target's side of a channel, closed when dropped, whoever drops it (a pump that
/// ended, one aborted). russh answers a target's CLOSE only when the application closes
/// the channel, and sshd holds one of its `MaxSessions` slots for a channel until both
/// CLOSEs passed: a channel never closed leaves its connection unusable for new ones.
struct UpWrite(Option<ChannelWriteHalf<russh::client::Msg>>);

impl std::ops::Deref for UpWrite {
    type Target = ChannelWriteHalf<russh::client::Msg>;

    fn deref(&self) -> &Self::Target {
        match &self.0 {
            Some(w) => w,
            None => unreachable!("taken only when dropped"),
        }
    }
}

impl Drop for UpWrite {
    fn drop(&mut self) {
        // A second CLOSE is not sent: russh forgets a channel once it closed it.
        if let (Some(w), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = timeout(PEER_WAIT, w.close()).await;
            });
        }
    }
}

/// What the channel is, for recording and ending it.
pub(super) enum Kind<'a> {
    /// A shell, a command or a subsystem: data recorded unless `record_data` is false
    /// (sftp), exit status and signals forwarded, postern notices shown.
    Session {
        record_data: bool,
        handle: &'a Handle,
        down_id: ChannelId,
    },
    /// A forwarded TCP connection: bytes counted, not recorded.
    Forward,
}

/// Bytes moved each way.
#[derive(Default)]
pub(super) struct Moved {
    pub from_client: u64,
    pub to_client: u64,
}

/// How the client→target direction ended.
struct ClientEnd {
    up_w: UpWrite,
    sent: u64,
    /// The client sent CHANNEL_CLOSE (otherwise its connection went, or postern stopped).
    closed: bool,
}

pub(super) struct Pump<'a> {
    pub ctx: &'a Arc<SessionCtx>,
    pub recorder: &'a Arc<Recorder>,
    pub stop: &'a Stop,
    pub kind: Kind<'a>,
}

impl Pump<'_> {
    /// Copies both ways until the channel ends; `Err` carries the message the client was
    /// told (postern ended the channel).
    pub async fn run(
        self,
        down_r: ChannelReadHalf,
        down_w: &ChannelWriteHalf<Msg>,
        mut up_r: ChannelReadHalf,
        up_w: ChannelWriteHalf<russh::client::Msg>,
    ) -> (Result<(), String>, Moved) {
        let up_w = UpWrite(Some(up_w));
        let ctx = self.ctx;
        let gone = &self.stop.gone;
        let (session, record_data) = match self.kind {
            Kind::Session { record_data, .. } => (true, record_data),
            Kind::Forward => (false, false),
        };
        let halt = CancellationToken::new();
        // A session whose data is not recorded (sftp) records its transfer log instead.
        let sftp = (session && !record_data).then(|| Arc::new(Mutex::new(sftp::Log::default())));
        let mut pump = tokio::spawn(client_to_target(
            ctx.clone(),
            self.recorder.clone(),
            sftp.clone(),
            record_data,
            down_r,
            up_w,
            halt.clone(),
        ));
        let mut client_end: Option<ClientEnd> = None;
        let mut grace: Option<Instant> = None;
        let mut target_closed = false;
        let mut started = !session;
        let mut to_client: u64 = 0;
        let mut notices = ctx.limits.notices.subscribe();
        // A notice sent before this channel opened is still shown.
        if session && notices.borrow().is_some() {
            notices.mark_changed();
        }
        let failed = self.recorder.failed();
        // A write to the client interrupted by the session's end (kill, TTL, shutdown)
        // while the client was not taking data.
        let mut stalled = false;
        // The target reported how the command ended (an exit status or signal).
        let mut exited = false;
        let outcome = loop {
            let client_closed = client_end.is_some();
            let grace_over = async {
                match grace {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = up_r.wait() => match m {
                    Some(ChannelMsg::Data { data }) => {
                        if !session {
                            // A tunnel moving bytes either way is in use.
                            ctx.limits.touch();
                        }
                        ctx.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                        to_client += data.len() as u64;
                        if record_data && self.recorder.record(Event::Output(data.clone())).await.is_err() {
                            break Err(RECORDING_FAILED.to_string());
                        }
                        if sftp.is_some() && !transfer_log(self.recorder, sftp.as_deref(), false, &data).await {
                            break Err(RECORDING_FAILED.to_string());
                        }
                        // A client that closed reads nothing more.
                        if !client_closed && !self.deliver(down_w.data_bytes(data)).await {
                            stalled = self.ended();
                            break Ok(());
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, ext }) => {
                        ctx.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                        to_client += data.len() as u64;
                        if session && self.recorder.record(Event::Stderr(data.clone())).await.is_err() {
                            break Err(RECORDING_FAILED.to_string());
                        }
                        if !client_closed && !self.deliver(down_w.extended_data_bytes(ext, data)).await {
                            stalled = self.ended();
                            break Ok(());
                        }
                    }
                    Some(ChannelMsg::Success) => started = true,
                    Some(ChannelMsg::Failure) if !started => {
                        break Err(format!("target `{}` refused to start the shell, command or subsystem", ctx.target.name));
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        exited = true;
                        if let Ok(mut s) = ctx.exit_status.lock() {
                            *s = Some(exit_status);
                        }
                        let _ = self.recorder.record(Event::Marker(format!("exit-status {exit_status}"))).await;
                        send(gone, down_w.exit_status(exit_status)).await;
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag }) => {
                        exited = true;
                        let _ = self.recorder.record(Event::Marker(format!("exit-signal {signal_name:?}"))).await;
                        if let Kind::Session { handle, down_id, .. } = &self.kind {
                            send(gone, handle.exit_signal_request(*down_id, signal_name, core_dumped, error_message, lang_tag)).await;
                        }
                    }
                    Some(ChannelMsg::Eof) => {
                        send(gone, down_w.eof()).await;
                    }
                    Some(ChannelMsg::Close) | None => {
                        target_closed = true;
                        break Ok(());
                    }
                    Some(_) => {}
                },
                end = &mut pump, if client_end.is_none() => {
                    let Ok(end) = end else { break Ok(()) };
                    let closed = end.closed;
                    client_end = Some(end);
                    if !closed || !session {
                        break Ok(());
                    }
                    // The client closed first: the target's exit status is still owed.
                    grace = Some(Instant::now() + CLOSE_GRACE);
                }
                () = grace_over => break Ok(()),
                _ = gone.cancelled() => break Ok(()),
                _ = failed.cancelled() => {
                    ctx.audit(ctx.event("session.recording_failed", Outcome::Failure, json!({ "error": "write failed" }))).await;
                    break Err("recording failed, so the session was ended (a session that cannot be recorded does not run)".to_string());
                }
                _ = self.stop.cancel.cancelled() => break Err(self.ending()),
                _ = ctx.limits.end.cancelled() => break Err(self.ending()),
                _ = self.stop.withdrawn.cancelled() => {
                    let what = match self.kind {
                        Kind::Forward => "port forwarding to this destination",
                        Kind::Session { .. } => "file transfer",
                    };
                    ctx.audit(ctx.event("access.deny", Outcome::Deny, json!({ "reason": format!("{what} withdrawn by a policy change"), "live": true }))).await;
                    break Err(format!("{what} was withdrawn by a change to your roles; this channel has ended"));
                }
                changed = notices.changed(), if session => {
                    let notice = if changed.is_ok() { notices.borrow_and_update().clone() } else { None };
                    if let Some(n) = notice {
                        let _ = self.recorder.record(Event::Marker(format!("postern: {n}"))).await;
                        if !client_closed {
                            send(gone, down_w.extended_data_bytes(1, Bytes::from(format!("\r\npostern: {n}\r\n")))).await;
                        }
                    }
                }
            }
        };

        // A write cut short by the session's end is that end; so is a target channel that
        // closed without an exit status while postern was ending the session (its upstream
        // connection may go first).
        let outcome = match outcome {
            Ok(()) if stalled => Err(self.ending()),
            Ok(()) if target_closed && !exited && session && self.ended() => Err(self.ending()),
            o => o,
        };
        // The client hears the end: EOF and CLOSE, or why postern ended the channel (a
        // client that was not reading gets no message, only the exit status).
        let client_closed = client_end.as_ref().is_some_and(|e| e.closed);
        let told = async {
            match &outcome {
                // A forwarded connection carries no stderr or exit status: it just ends.
                Err(_) if !session && !client_closed => {
                    send(gone, down_w.eof()).await;
                    send(gone, down_w.close()).await;
                }
                Err(_) if stalled && !client_closed => {
                    send(gone, down_w.exit_status(255)).await;
                    send(gone, down_w.eof()).await;
                    send(gone, down_w.close()).await;
                }
                Err(message) if !client_closed => {
                    until(gone, super::relay::fail(down_w, message, 255)).await;
                }
                _ => {
                    send(gone, down_w.eof()).await;
                    send(gone, down_w.close()).await;
                }
            }
        };
        let _ = timeout(PEER_WAIT, told).await;

        // The client answers with its CLOSE (unless it closed first); a client that does
        // not is not waited for long.
        let end = match client_end {
            Some(end) => Some(end),
            None => finish_pump(&mut pump, &halt).await,
        };
        let from_client = end.as_ref().map_or(0, |e| e.sent);
        // Files the sftp client left open when the channel ended.
        if let Some(log) = &sftp {
            let open = log.lock().map(|mut l| std::mem::take(&mut *l).finish());
            for line in open.unwrap_or_default() {
                let _ = self
                    .recorder
                    .record(Event::Marker(format!("sftp: {line}")))
                    .await;
            }
        }

        // The target: our EOF and CLOSE unless it closed, and its answer, bounded.
        if !target_closed && let Some(end) = end {
            let _ = timeout(PEER_WAIT, async {
                let _ = end.up_w.eof().await;
                let _ = end.up_w.close().await;
                while let Some(m) = up_r.wait().await {
                    if matches!(m, ChannelMsg::Close) {
                        break;
                    }
                }
            })
            .await;
        }
        (
            outcome,
            Moved {
                from_client,
                to_client,
            },
        )
    }
}

const RECORDING_FAILED: &str = "recording failed; the session was ended";

/// Feeds sftp bytes (`up`: from the client) to the channel's transfer log and records the
/// lines they complete as markers; false when the recording failed.
async fn transfer_log(
    rec: &Recorder,
    log: Option<&Mutex<sftp::Log>>,
    up: bool,
    data: &[u8],
) -> bool {
    let Some(log) = log else {
        return true;
    };
    let lines = match log.lock() {
        Ok(mut l) => l.feed(up, data),
        Err(_) => return true,
    };
    for line in lines {
        if rec
            .record(Event::Marker(format!("sftp: {line}")))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

impl Pump<'_> {
    /// A write towards the client that gives way to the client's going and to the
    /// session's end (a client that stopped reading must not keep a kill waiting).
    async fn deliver<E>(&self, write: impl std::future::Future<Output = Result<(), E>>) -> bool {
        tokio::select! {
            r = write => r.is_ok(),
            _ = self.stop.gone.cancelled() => false,
            _ = self.stop.cancel.cancelled() => false,
            _ = self.ctx.limits.end.cancelled() => false,
            _ = self.stop.withdrawn.cancelled() => false,
        }
    }

    /// Whether postern is ending the session (kill, limits, shutdown).
    fn ended(&self) -> bool {
        self.stop.cancel.is_cancelled() || self.ctx.limits.end.is_cancelled()
    }

    /// Why postern ended the session, as the client is told.
    fn ending(&self) -> String {
        if self.stop.cancel.is_cancelled() {
            return "postern is shutting down; your session has ended".into();
        }
        self.ctx
            .limits
            .ending()
            .map(|e| e.message)
            .unwrap_or_else(|| "this session was ended".into())
    }
}

/// Runs `f` unless `token` fires first; `None` when it did.
pub(super) async fn until<T>(
    token: &CancellationToken,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        r = f => Some(r),
        _ = token.cancelled() => None,
    }
}

/// Runs a write unless `token` fires first (the client gone, the channel halted); true
/// when it completed successfully.
pub(super) async fn send<E>(
    token: &CancellationToken,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    matches!(until(token, write).await, Some(Ok(())))
}

/// Waits for the client→target direction to end on the client's CLOSE, within
/// `PEER_WAIT`, then stops it.
async fn finish_pump(
    pump: &mut JoinHandle<ClientEnd>,
    halt: &CancellationToken,
) -> Option<ClientEnd> {
    if let Ok(Ok(end)) = timeout(PEER_WAIT, &mut *pump).await {
        return Some(end);
    }
    halt.cancel();
    match timeout(PEER_WAIT, &mut *pump).await {
        Ok(Ok(end)) => Some(end),
        _ => {
            pump.abort();
            None
        }
    }
}

/// Client → target: records input (before it is forwarded) and forwards it, EOF once,
/// window changes and signals, until the client closes, goes, or `halt` fires.
async fn client_to_target(
    ctx: Arc<SessionCtx>,
    rec: Arc<Recorder>,
    sftp: Option<Arc<Mutex<sftp::Log>>>,
    record_data: bool,
    mut down_r: ChannelReadHalf,
    up_w: UpWrite,
    halt: CancellationToken,
) -> ClientEnd {
    let mut sent: u64 = 0;
    let mut closed = false;
    loop {
        let m = tokio::select! {
            m = down_r.wait() => m,
            _ = halt.cancelled() => break,
        };
        match m {
            Some(ChannelMsg::Data { data }) => {
                // Input on any channel, forwarded connections included, is activity.
                ctx.limits.touch();
                ctx.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                sent += data.len() as u64;
                if record_data && !send(&halt, rec.record(Event::Input(data.clone()))).await {
                    break;
                }
                if sftp.is_some()
                    && !send(&halt, async {
                        if transfer_log(&rec, sftp.as_deref(), true, &data).await {
                            Ok(())
                        } else {
                            Err(())
                        }
                    })
                    .await
                {
                    break;
                }
                if !send(&halt, up_w.data_bytes(data)).await {
                    break;
                }
            }
            Some(ChannelMsg::ExtendedData { data, ext }) => {
                ctx.limits.touch();
                sent += data.len() as u64;
                if !send(&halt, up_w.extended_data_bytes(ext, data)).await {
                    break;
                }
            }
            Some(ChannelMsg::Eof) => {
                let _ = up_w.eof().await;
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            }) => {
                let _ = rec
                    .record(Event::Resize {
                        cols: col_width,
                        rows: row_height,
                    })
                    .await;
                let _ = up_w
                    .window_change(col_width, row_height, pix_width, pix_height)
                    .await;
            }
            Some(ChannelMsg::Signal { signal }) => {
                let _ = up_w.signal(signal).await;
            }
            Some(ChannelMsg::Close) => {
                // A client closes after its EOF; one that did not is treated as if it had.
                let _ = up_w.eof().await;
                closed = true;
                break;
            }
            None => break,
            Some(_) => {}
        }
    }
    ClientEnd { up_w, sent, closed }
}
