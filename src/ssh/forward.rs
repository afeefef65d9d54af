//! Port forwarding (`ssh -L`, `ssh -W`): a `direct-tcpip` channel opened by the target,
//! copied both ways, recorded as who forwarded where and how many bytes moved.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use serde_json::json;

use super::handler::SessionCtx;
use super::relay::{Stop, finish, to_client};
use crate::audit::{Outcome, now_ms};
use crate::recording::{self, Event, Header, Recorder};

/// A `direct-tcpip` request (`ssh -L`), forwarded from the target.
pub struct Forward {
    pub host: String,
    pub port: u32,
    pub originator: String,
    pub originator_port: u32,
}

/// Port forwarding: the target opens the connection; postern records who forwarded
/// where and how many bytes went each way.
pub async fn forward(
    ctx: Arc<SessionCtx>,
    down: Channel<Msg>,
    reply: ChannelOpenHandle,
    req: Forward,
    stop: Stop,
) {
    let gone = &stop.gone;
    let dest = format!("{}:{}", super::username::printable(&req.host), req.port);
    let channel_no = ctx.next_channel();
    let title = format!(
        "{} as {}@{} (session {}, channel {}): forward to {dest}",
        ctx.user, ctx.login, ctx.target.name, ctx.id, channel_no
    );
    let path = recording::path_for(&ctx.shared.config.data_dir, now_ms(), &ctx.id, channel_no);
    let recorder = match Recorder::create(
        path.clone(),
        Header::new(80, 24, "dumb", title, Some(format!("direct-tcpip {dest}"))),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            ctx.audit(ctx.event(
                "session.recording_failed",
                Outcome::Failure,
                json!({ "channel": channel_no, "error": e.to_string() }),
            ))
            .await;
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return;
        }
    };
    let _ = ctx
        .shared
        .store
        .add_recording(&ctx.id, channel_no, &path.display().to_string())
        .await;
    let up = match ctx.connect_upstream().await {
        Ok(u) => u,
        Err(_) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            finish(&ctx, channel_no, recorder).await;
            return;
        }
    };
    let upch = match up
        .channel_open_direct_tcpip(
            req.host.clone(),
            req.port,
            req.originator.clone(),
            req.originator_port,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = recorder
                .record(Event::Marker(format!("target refused the forward: {e}")))
                .await;
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            finish(&ctx, channel_no, recorder).await;
            return;
        }
    };
    reply.accept().await;
    ctx.audit(ctx.event(
        "session.channel",
        Outcome::Success,
        json!({ "channel": channel_no, "kind": "direct-tcpip", "destination": dest }),
    ))
    .await;
    let _ = recorder
        .record(Event::Marker(format!("forward to {dest} opened")))
        .await;
    let (mut down_r, down_w) = down.split();
    let (mut up_r, up_w) = upch.split();
    let ctx2 = ctx.clone();
    let mut to_target = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(m) = down_r.wait().await {
            match m {
                ChannelMsg::Data { data } => {
                    n += data.len() as u64;
                    ctx2.bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if up_w.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = up_w.eof().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = up_w.close().await;
        n
    });
    let mut back = 0u64;
    loop {
        tokio::select! {
            m = up_r.wait() => match m {
                Some(ChannelMsg::Data { data }) => {
                    back += data.len() as u64;
                    ctx.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if !to_client(gone, down_w.data_bytes(data)).await {
                        break;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    let _ = to_client(gone, down_w.eof()).await;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            _ = stop.cancel.cancelled() => break,
            _ = stop.gone.cancelled() => break,
            _ = ctx.limits.end.cancelled() => break,
        }
    }
    let _ = to_client(gone, down_w.eof()).await;
    let _ = to_client(gone, down_w.close()).await;
    let sent = match tokio::time::timeout(Duration::from_secs(2), &mut to_target).await {
        Ok(Ok(n)) => n,
        _ => {
            to_target.abort();
            0
        }
    };
    let _ = recorder
        .record(Event::Marker(format!(
            "forward to {dest} closed: {sent} bytes from client, {back} bytes to client"
        )))
        .await;
    let _ = up
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    finish(&ctx, channel_no, recorder).await;
}
