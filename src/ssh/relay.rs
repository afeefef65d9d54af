//! One session channel end to end: collect the client's requests until it asks for a
//! shell, a command or sftp; open the recording (or refuse: fail closed); connect to the
//! target as the session's login; then copy both ways, recording every byte before it
//! is forwarded, until either side closes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Pty};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::handler::{SessionCtx, Verdict};
use super::upstream;
use crate::audit::{Outcome, now_ms};
use crate::recording::{self, Event, Header, Recorder};

/// Environment variables passed to targets; everything else is refused.
pub fn env_allowed(name: &str) -> bool {
    name == "LANG" || name == "TERM" || name.starts_with("LC_")
}

/// Why a channel must stop: postern shuts down (`cancel`), or the client's connection is
/// gone (`gone`, so nothing waits on a window that will never open again).
#[derive(Clone)]
pub struct Stop {
    pub cancel: CancellationToken,
    pub gone: CancellationToken,
}

pub async fn run(verdict: Verdict, down: Channel<Msg>, handle: Handle, stop: Stop) {
    match verdict {
        Verdict::Refused(message) => refused(down, &message).await,
        Verdict::Allowed(ctx) => allowed(ctx, down, handle, stop).await,
    }
}

/// Runs a send towards the client unless the client is gone; false when it failed.
pub(super) async fn to_client<E>(
    gone: &CancellationToken,
    send: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    tokio::select! {
        r = send => r.is_ok(),
        _ = gone.cancelled() => false,
    }
}

/// Prints `postern: MESSAGE` on the client's stderr, sets the exit status and closes.
async fn fail<S>(down: &ChannelWriteHalf<S>, message: &str, code: u32)
where
    S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let _ = down
        .extended_data_bytes(1, Bytes::from(format!("postern: {message}\r\n")))
        .await;
    let _ = down.exit_status(code).await;
    let _ = down.eof().await;
    let _ = down.close().await;
}

async fn refused(down: Channel<Msg>, message: &str) {
    let (mut r, w) = down.split();
    // Wait for the request that would start something, then explain and close.
    while let Some(m) = r.wait().await {
        match m {
            ChannelMsg::RequestShell { .. }
            | ChannelMsg::Exec { .. }
            | ChannelMsg::RequestSubsystem { .. } => break,
            ChannelMsg::Close => return,
            _ => {}
        }
    }
    fail(&w, message, 1).await;
}

struct PtyReq {
    term: String,
    cols: u32,
    rows: u32,
    pw: u32,
    ph: u32,
    modes: Vec<(Pty, u32)>,
}

enum Start {
    Shell,
    Exec(Vec<u8>),
    Sftp,
}

async fn allowed(ctx: Arc<SessionCtx>, down: Channel<Msg>, handle: Handle, stop: Stop) {
    let down_id = down.id();
    let (mut down_r, down_w) = down.split();
    let mut pty: Option<PtyReq> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let start = loop {
        match down_r.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            }) => {
                pty = Some(PtyReq {
                    term,
                    cols: col_width,
                    rows: row_height,
                    pw: pix_width,
                    ph: pix_height,
                    modes: terminal_modes,
                });
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) if env_allowed(&variable_name) => {
                env.push((variable_name, variable_value));
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            }) => {
                if let Some(p) = pty.as_mut() {
                    p.cols = col_width;
                    p.rows = row_height;
                }
            }
            Some(ChannelMsg::RequestShell { .. }) => break Start::Shell,
            Some(ChannelMsg::Exec { command, .. }) => break Start::Exec(command),
            Some(ChannelMsg::RequestSubsystem { name, .. }) => {
                if name != "sftp" {
                    fail(
                        &down_w,
                        &format!(
                            "subsystem `{}` is not available; only sftp is",
                            super::username::printable(&name)
                        ),
                        1,
                    )
                    .await;
                    return;
                }
                if !ctx.grant.settings.file_transfer {
                    ctx.audit(ctx.event("access.deny", Outcome::Deny, json!({ "reason": "file transfer not allowed", "rule": ctx.grant.rule.to_string() }))).await;
                    fail(
                        &down_w,
                        "file transfer (sftp, scp, rsync) is not allowed by your roles",
                        1,
                    )
                    .await;
                    return;
                }
                break Start::Sftp;
            }
            Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    };

    // The recording exists before the first byte moves, or the channel does not run.
    let channel_no = ctx.next_channel();
    let term = pty
        .as_ref()
        .map(|p| p.term.clone())
        .or_else(|| {
            env.iter()
                .find(|(k, _)| k == "TERM")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| "xterm".into());
    let (cols, rows) = pty.as_ref().map_or((80, 24), |p| (p.cols, p.rows));
    let command = match &start {
        Start::Shell => None,
        Start::Exec(c) => Some(String::from_utf8_lossy(c).into_owned()),
        Start::Sftp => Some("subsystem sftp".to_string()),
    };
    let title = format!(
        "{} as {}@{} (session {}, channel {})",
        ctx.user, ctx.login, ctx.target.name, ctx.id, channel_no
    );
    let path = recording::path_for(&ctx.shared.config.data_dir, now_ms(), &ctx.id, channel_no);
    let recorder = match Recorder::create(
        path.clone(),
        Header::new(cols, rows, &term, title, command.clone()),
    )
    .await
    {
        Ok(r) => Arc::new(r),
        Err(e) => {
            warn!(session = %ctx.id, error = %e, "cannot record; refusing the channel");
            ctx.audit(ctx.event(
                "session.recording_failed",
                Outcome::Failure,
                json!({ "channel": channel_no, "error": e.to_string() }),
            ))
            .await;
            fail(&down_w, "this session cannot be recorded, so it is not allowed to run; tell an admin (recording storage failed)", 1).await;
            return;
        }
    };
    let path_text = path.display().to_string();
    if let Err(e) = ctx
        .shared
        .store
        .add_recording(&ctx.id, channel_no, &path_text)
        .await
    {
        warn!(session = %ctx.id, error = %e, "cannot index the recording");
    }
    ctx.audit(ctx.event(
        "session.channel",
        Outcome::Success,
        json!({ "channel": channel_no, "kind": match start { Start::Shell => "shell", Start::Exec(_) => "exec", Start::Sftp => "sftp" }, "command": command, "recording": path_text }),
    ))
    .await;

    let result = relay(
        &ctx, &recorder, start, pty, env, down_r, &down_w, down_id, &handle, &stop,
    )
    .await;
    if let Err(message) = &result {
        let _ = recorder
            .record(Event::Marker(format!("postern: {message}")))
            .await;
        fail(&down_w, message, 255).await;
    } else {
        let _ = down_w.eof().await;
        let _ = down_w.close().await;
    }
    // Finalise: flush, sync, hash, index.
    match Arc::try_unwrap(recorder) {
        Ok(rec) => match rec.finish().await {
            Ok(done) => {
                if let Err(e) = ctx
                    .shared
                    .store
                    .finish_recording(&ctx.id, channel_no, &done.sha256, done.bytes)
                    .await
                {
                    warn!(session = %ctx.id, error = %e, "cannot index the finished recording");
                }
            }
            Err(e) => {
                warn!(session = %ctx.id, error = %e, "recording failed");
                ctx.audit(ctx.event(
                    "session.recording_failed",
                    Outcome::Failure,
                    json!({ "channel": channel_no, "error": e.to_string() }),
                ))
                .await;
            }
        },
        Err(_) => warn!(session = %ctx.id, "recording still shared at channel end"),
    }
}

/// Tells the client why its channel ends: `postern: MESSAGE` on stderr, exit 255, close.
async fn tell(down_w: &ChannelWriteHalf<Msg>, gone: &CancellationToken, message: &str) {
    tokio::select! {
        _ = fail(down_w, message, 255) => {}
        _ = gone.cancelled() => {}
    }
}

/// Connects to the target and starts the same shell, command or subsystem there.
async fn open_upstream(
    ctx: &Arc<SessionCtx>,
    start: Start,
    pty: Option<PtyReq>,
    env: Vec<(String, String)>,
) -> Result<(upstream::UpHandle, Channel<russh::client::Msg>), String> {
    let up = ctx.connect_upstream().await?;
    let upch = up.channel_open_session().await.map_err(|e| {
        format!(
            "target `{}` refused a session channel: {e}",
            ctx.target.name
        )
    })?;
    let send = |r: Result<(), russh::Error>| {
        r.map_err(|e| format!("lost the target `{}`: {e}", ctx.target.name))
    };
    if let Some(p) = &pty {
        send(
            upch.request_pty(false, &p.term, p.cols, p.rows, p.pw, p.ph, &p.modes)
                .await,
        )?;
    }
    for (k, v) in env {
        send(upch.set_env(false, k, v).await)?;
    }
    match start {
        Start::Shell => send(upch.request_shell(true).await)?,
        Start::Exec(cmd) => send(upch.exec(true, cmd).await)?,
        Start::Sftp => send(upch.request_subsystem(true, "sftp").await)?,
    }
    Ok((up, upch))
}

#[allow(clippy::too_many_arguments)]
async fn relay(
    ctx: &Arc<SessionCtx>,
    recorder: &Arc<Recorder>,
    start: Start,
    pty: Option<PtyReq>,
    env: Vec<(String, String)>,
    mut down_r: russh::ChannelReadHalf,
    down_w: &ChannelWriteHalf<Msg>,
    down_id: russh::ChannelId,
    handle: &Handle,
    stop: &Stop,
) -> Result<(), String> {
    let gone = &stop.gone;
    let sftp = matches!(start, Start::Sftp);
    let (up, upch) = match open_upstream(ctx, start, pty, env).await {
        Ok(x) => x,
        Err(message) => {
            tell(down_w, gone, &message).await;
            return Err(message);
        }
    };
    let (mut up_r, up_w) = upch.split();

    // Client → target, in its own task so a full target window never stops output.
    let to_target = {
        let ctx = ctx.clone();
        let rec = recorder.clone();
        tokio::spawn(async move {
            let mut sent: u64 = 0;
            while let Some(m) = down_r.wait().await {
                match m {
                    ChannelMsg::Data { data } => {
                        ctx.limits.touch();
                        ctx.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                        sent += data.len() as u64;
                        if !sftp && rec.record(Event::Input(data.clone())).await.is_err() {
                            break;
                        }
                        if up_w.data_bytes(data).await.is_err() {
                            break;
                        }
                    }
                    ChannelMsg::Eof => {
                        let _ = up_w.eof().await;
                    }
                    ChannelMsg::WindowChange {
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                    } => {
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
                    ChannelMsg::Signal { signal } => {
                        let _ = up_w.signal(signal).await;
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            debug!(session = %ctx.id, "client side of the channel ended");
            let _ = up_w.close().await;
            sent
        })
    };

    let mut started = false;
    let mut received: u64 = 0;
    let mut notices = ctx.limits.notices.subscribe();
    // A notice sent before this channel opened is still shown.
    if notices.borrow().is_some() {
        notices.mark_changed();
    }
    let failed = recorder.failed();
    let outcome = loop {
        tokio::select! {
            m = up_r.wait() => match m {
                Some(ChannelMsg::Data { data }) => {
                    ctx.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                    received += data.len() as u64;
                    if !sftp && recorder.record(Event::Output(data.clone())).await.is_err() {
                        break Err("recording failed; the session was ended".to_string());
                    }
                    if !to_client(gone, down_w.data_bytes(data)).await {
                        break Ok(());
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext }) => {
                    ctx.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if recorder.record(Event::Stderr(data.clone())).await.is_err() {
                        break Err("recording failed; the session was ended".to_string());
                    }
                    if !to_client(gone, down_w.extended_data_bytes(ext, data)).await {
                        break Ok(());
                    }
                }
                Some(ChannelMsg::Success) => started = true,
                Some(ChannelMsg::Failure) if !started => {
                    break Err(format!("target `{}` refused to start the shell, command or subsystem", ctx.target.name));
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    if let Ok(mut s) = ctx.exit_status.lock() {
                        *s = Some(exit_status);
                    }
                    let _ = recorder.record(Event::Marker(format!("exit-status {exit_status}"))).await;
                    let _ = to_client(gone, down_w.exit_status(exit_status)).await;
                }
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag }) => {
                    let _ = recorder.record(Event::Marker(format!("exit-signal {signal_name:?}"))).await;
                    let _ = to_client(gone, handle.exit_signal_request(down_id, signal_name, core_dumped, error_message, lang_tag)).await;
                }
                Some(ChannelMsg::Eof) => {
                    let _ = to_client(gone, down_w.eof()).await;
                }
                Some(ChannelMsg::Close) | None => break Ok(()),
                Some(_) => {}
            },
            _ = gone.cancelled() => break Ok(()),
            _ = failed.cancelled() => {
                ctx.audit(ctx.event("session.recording_failed", Outcome::Failure, json!({ "error": "write failed" }))).await;
                break Err("recording failed, so the session was ended (a session that cannot be recorded does not run)".to_string());
            }
            _ = stop.cancel.cancelled() => {
                break Err("postern is shutting down; your session has ended".to_string());
            }
            _ = ctx.limits.end.cancelled() => {
                let message = ctx.limits.ending().map(|e| e.message).unwrap_or_else(|| "this session was ended".into());
                break Err(message);
            }
            changed = notices.changed() => {
                let notice = if changed.is_ok() { notices.borrow_and_update().clone() } else { None };
                if let Some(n) = notice {
                    let _ = recorder.record(Event::Marker(format!("postern: {n}"))).await;
                    let _ = to_client(gone, down_w.extended_data_bytes(1, Bytes::from(format!("\r\npostern: {n}\r\n")))).await;
                }
            }
        }
    };
    // The client side task ends when the client closes; give it a moment after ours.
    let mut to_target = to_target;
    // Closing our side of the client channel lets the client close its own, which ends
    // the client task; a client that does not answer is not waited for long.
    match &outcome {
        Ok(()) => {
            let _ = to_client(gone, down_w.eof()).await;
            let _ = to_client(gone, down_w.close()).await;
        }
        Err(message) => tell(down_w, gone, message).await,
    }
    let sent = match tokio::time::timeout(Duration::from_secs(2), &mut to_target).await {
        Ok(Ok(n)) => n,
        _ => {
            to_target.abort();
            let _ = to_target.await;
            0
        }
    };
    if sftp {
        let _ = recorder
            .record(Event::Marker(format!(
                "sftp: {sent} bytes from client, {received} bytes to client"
            )))
            .await;
    }
    let _ = up
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    debug!(session = %ctx.id, "channel finished");
    outcome
}

pub(super) async fn finish(ctx: &SessionCtx, channel_no: u32, recorder: Recorder) {
    match recorder.finish().await {
        Ok(done) => {
            let _ = ctx
                .shared
                .store
                .finish_recording(&ctx.id, channel_no, &done.sha256, done.bytes)
                .await;
        }
        Err(e) => {
            ctx.audit(ctx.event(
                "session.recording_failed",
                Outcome::Failure,
                json!({ "channel": channel_no, "error": e.to_string() }),
            ))
            .await;
        }
    }
}
