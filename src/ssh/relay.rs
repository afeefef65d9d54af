//! One session channel end to end: collect the client's requests until it asks for a
//! shell, a command or sftp; open the recording (or refuse: fail closed); connect to the
//! target as the session's login; then copy both ways, recording every byte before it
//! is forwarded, until either side closes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Pty};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::handler::{SessionCtx, Verdict};
use super::pool::Lease;
use super::pump::{Kind, Pump, until};
use crate::audit::{Outcome, now_ms};
use crate::recording::{self, Event, Header, Recorder};

/// Environment variables passed to targets; everything else is refused.
pub fn env_allowed(name: &str) -> bool {
    name.len() <= 64 && (name == "LANG" || name == "TERM" || name.starts_with("LC_"))
}

/// At most this many environment variables per channel, each value at most this long.
pub const MAX_ENV: usize = 32;
pub const MAX_ENV_VALUE: usize = 1024;

/// A terminal no larger than 10,000 columns or rows (and 100,000 pixels): anything larger
/// is not a terminal.
pub fn pty_size_ok(cols: u32, rows: u32, pix_w: u32, pix_h: u32) -> bool {
    cols <= 10_000 && rows <= 10_000 && pix_w <= 100_000 && pix_h <= 100_000
}

/// A terminal type as the target sees it: printable ASCII only, at most 64 characters.
fn clean_term(term: &str) -> String {
    term.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// Why a channel must stop: postern shuts down (`cancel`), or the client's connection is
/// gone (`gone`, so nothing waits on a window that will never open again).
#[derive(Clone)]
pub struct Stop {
    pub cancel: CancellationToken,
    pub gone: CancellationToken,
    /// Fires when a live review withdrew what this channel does (port forwarding to its
    /// destination, file transfer): the channel ends, the session goes on.
    pub withdrawn: CancellationToken,
    /// Ends the watcher behind `withdrawn` when the channel's stop is dropped.
    pub _watch: Option<Arc<tokio_util::sync::DropGuard>>,
}

impl Stop {
    /// The same stop, also ended when `still` no longer holds for the session's extras.
    pub(super) fn unless_withdrawn(
        &self,
        ctx: &Arc<SessionCtx>,
        still: impl Fn(&crate::server::limits::Extras) -> bool + Send + 'static,
    ) -> Stop {
        let withdrawn = CancellationToken::new();
        let ended = CancellationToken::new();
        // Subscribed before looking, so a review between the two is not missed.
        let mut changed = ctx.limits.extras.changed();
        if !still(&ctx.limits.extras) {
            withdrawn.cancel();
        } else {
            let (token, ctx, gone, ended) = (
                withdrawn.clone(),
                ctx.clone(),
                self.gone.clone(),
                ended.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = changed.changed() => {
                            if r.is_err() || !still(&ctx.limits.extras) {
                                token.cancel();
                                return;
                            }
                        }
                        _ = ended.cancelled() => return,
                        _ = gone.cancelled() => return,
                        _ = ctx.limits.end.cancelled() => return,
                    }
                }
            });
        }
        Stop {
            cancel: self.cancel.clone(),
            gone: self.gone.clone(),
            withdrawn,
            _watch: Some(Arc::new(ended.drop_guard())),
        }
    }
}

pub async fn run(verdict: Verdict, down: Channel<Msg>, handle: Handle, stop: Stop) {
    match verdict {
        Verdict::Refused(message) => refused(down, &message).await,
        Verdict::Allowed(ctx) => allowed(ctx, down, handle, stop).await,
    }
}

/// Prints `postern: MESSAGE` on the client's stderr, sets the exit status and closes; a
/// client that does not take it within a few seconds is not waited for.
pub(super) async fn fail<S>(down: &ChannelWriteHalf<S>, message: &str, code: u32)
where
    S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let said = async {
        let _ = down
            .extended_data_bytes(1, Bytes::from(format!("postern: {message}\r\n")))
            .await;
        let _ = down.exit_status(code).await;
        let _ = down.eof().await;
        let _ = down.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), said).await;
}

async fn refused(down: Channel<Msg>, message: &str) {
    let (mut r, w) = down.split();
    // Wait for the request that would start something, then explain and close.
    while let Some(m) = r.wait().await {
        match m {
            ChannelMsg::RequestShell { .. }
            | ChannelMsg::Exec { .. }
            | ChannelMsg::RequestSubsystem { .. } => break,
            ChannelMsg::Close => {
                let _ = w.close().await;
                return;
            }
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
    let mut env_refused = false;
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
                if !pty_size_ok(col_width, row_height, pix_width, pix_height) {
                    // Refused by the handler too; the client goes on without a terminal.
                    ctx.audit(ctx.event("access.deny", Outcome::Deny, json!({ "reason": "pty size out of range", "cols": col_width, "rows": row_height, "width_px": pix_width, "height_px": pix_height }))).await;
                    continue;
                }
                pty = Some(PtyReq {
                    term: clean_term(&term),
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
                if env.len() >= MAX_ENV || variable_value.len() > MAX_ENV_VALUE {
                    if !env_refused {
                        env_refused = true;
                        ctx.audit(ctx.event("access.deny", Outcome::Deny, json!({ "reason": "environment request over the limit", "limit": format!("{MAX_ENV} variables of at most {MAX_ENV_VALUE} bytes") }))).await;
                    }
                    continue;
                }
                let value = if variable_name == "TERM" {
                    clean_term(&variable_value)
                } else {
                    variable_value
                };
                env.push((variable_name, value));
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
            Some(ChannelMsg::Exec { command, .. }) => {
                let text = String::from_utf8_lossy(&command);
                if !ctx.limits.extras.may_transfer()
                    && let Some(tool) = super::transfer::tool(&text)
                {
                    ctx.audit(ctx.event("access.deny", Outcome::Deny, json!({ "reason": "file transfer not allowed", "tool": tool, "command": super::username::printable(&text), "rule": ctx.grant.rule.to_string() }))).await;
                    fail(
                        &down_w,
                        &format!("file transfer ({tool}) is not allowed by your roles"),
                        1,
                    )
                    .await;
                    return;
                }
                break Start::Exec(command);
            }
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
                if !ctx.limits.extras.may_transfer() {
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
            Some(ChannelMsg::Close) => {
                // Closed before it started anything: answer, and nothing was recorded.
                let _ = down_w.close().await;
                return;
            }
            None => return,
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
    // A terminal's channel is recorded as asciicast (what a person saw); a channel without
    // one carries bytes (rsync, scp, tar, checkpoints) and is recorded losslessly.
    let header = Header::new(cols, rows, &term, title, command.clone());
    let binary = pty.is_none() && !matches!(start, Start::Sftp);
    let recordings = &ctx.shared.recordings;
    let name = if binary {
        format!("{}-{channel_no}.{}", ctx.id, recording::stream::EXTENSION)
    } else {
        format!("{}-{channel_no}.cast", ctx.id)
    };
    let path_text = recording::place(now_ms(), &name);
    let created = if binary {
        Recorder::create_stream(recordings, &path_text, header).await
    } else {
        Recorder::create(recordings, &path_text, header).await
    };
    let recorder = match created {
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
    let _sealed = ctx.shared.seals.watch(&path_text, &ctx.id, recorder.seal());
    // Indexing the recording, auditing the channel and running it go at once: a command
    // waits for the target, not for two more disk syncs (the recording exists already).
    let index = async {
        if let Err(e) = ctx
            .shared
            .store
            .add_recording(&ctx.id, channel_no, &path_text)
            .await
        {
            warn!(session = %ctx.id, error = %e, "cannot index the recording");
        }
    };
    let audited = ctx.audit(ctx.event(
        "session.channel",
        Outcome::Success,
        json!({ "channel": channel_no, "kind": match start { Start::Shell => "shell", Start::Exec(_) => "exec", Start::Sftp => "sftp" }, "command": command, "recording": path_text }),
    ));
    // The channel's end (EOF, exit status, CLOSE) is the relay's.
    let run = relay(
        &ctx, &recorder, start, pty, env, down_r, &down_w, down_id, &handle, &stop,
    );
    let ((), (), _) = tokio::join!(index, audited, run);
    finish_shared(&ctx, channel_no, recorder).await;
}

/// Tells the client why its channel ends: `postern: MESSAGE` on stderr, exit 255, close;
/// a client that is gone or does not take it is not waited for.
async fn tell(down_w: &ChannelWriteHalf<Msg>, gone: &CancellationToken, message: &str) {
    until(gone, fail(down_w, message, 255)).await;
}

/// Connects to the target and starts the same shell, command or subsystem there.
async fn open_upstream(
    ctx: &Arc<SessionCtx>,
    start: Start,
    pty: Option<PtyReq>,
    env: Vec<(String, String)>,
) -> Result<(Lease, Channel<russh::client::Msg>), String> {
    let (up, upch) = ctx
        .upstream_channel(|up| async move { up.channel_open_session().await })
        .await?;
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
    down_r: russh::ChannelReadHalf,
    down_w: &ChannelWriteHalf<Msg>,
    down_id: russh::ChannelId,
    handle: &Handle,
    stop: &Stop,
) -> Result<(), String> {
    let sftp = matches!(start, Start::Sftp);
    let transfer = match &start {
        Start::Exec(c) => super::transfer::describe(&String::from_utf8_lossy(c)),
        _ => None,
    };
    // A transfer ends if a live review withdraws file transfer.
    let guarded;
    let stop = if sftp || transfer.is_some() {
        guarded = stop.unless_withdrawn(ctx, |x| x.may_transfer());
        &guarded
    } else {
        stop
    };
    let (up, upch) = match open_upstream(ctx, start, pty, env).await {
        Ok(x) => x,
        Err(message) => {
            tell(down_w, &stop.gone, &message).await;
            return Err(message);
        }
    };
    let (up_r, up_w) = upch.split();
    let pump = Pump {
        ctx,
        recorder,
        stop,
        kind: Kind::Session {
            record_data: !sftp,
            handle,
            down_id,
        },
    };
    let (outcome, moved) = pump.run(down_r, down_w, up_r, up_w).await;
    if sftp {
        let _ = recorder
            .record(Event::Marker(format!(
                "sftp: {} bytes from client, {} bytes to client",
                moved.from_client, moved.to_client
            )))
            .await;
    }
    if let Err(message) = &outcome {
        let _ = recorder
            .record(Event::Marker(format!("postern: {message}")))
            .await;
    }
    if let Some(t) = transfer {
        ctx.audit(ctx.event(
            "session.file_transfer",
            Outcome::Success,
            json!({ "tool": t.tool, "direction": t.direction, "paths": t.paths, "bytes_from_client": moved.from_client, "bytes_to_client": moved.to_client }),
        ))
        .await;
    }
    // The upstream connection serves the session's next channel, or closes after a while.
    drop(up);
    debug!(session = %ctx.id, "channel finished");
    outcome
}

/// Finalises a recording (flush, sync, hash) and indexes its hash; a recording that
/// fails here is audited.
pub(super) async fn finish(ctx: &SessionCtx, channel_no: u32, recorder: Recorder) {
    match recorder.finish().await {
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
    }
}

/// `finish` for a recording its channel's directions shared, once they have ended.
pub(super) async fn finish_shared(ctx: &SessionCtx, channel_no: u32, recorder: Arc<Recorder>) {
    match Arc::try_unwrap(recorder) {
        Ok(recorder) => finish(ctx, channel_no, recorder).await,
        Err(_) => warn!(session = %ctx.id, "recording still shared at channel end"),
    }
}
