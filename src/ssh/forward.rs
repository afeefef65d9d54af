//! Port forwarding (`ssh -L`, `ssh -W`): a `direct-tcpip` channel opened by the target,
//! copied both ways, recorded as who forwarded where and how many bytes moved.

use std::sync::Arc;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};
use serde_json::json;

use super::handler::SessionCtx;
use super::pump::{Kind, Pump};
use super::relay::{Stop, finish, finish_shared};
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
    let dest = format!("{}:{}", super::username::printable(&req.host), req.port);
    let stop = {
        let (host, port) = (req.host.clone(), req.port);
        stop.unless_withdrawn(&ctx, move |x| x.may_forward(&host, port).is_ok())
    };
    let channel_no = ctx.next_channel();
    let title = format!(
        "{} as {}@{} (session {}, channel {}): forward to {dest}",
        ctx.user, ctx.login, ctx.target.name, ctx.id, channel_no
    );
    let stored = recording::place(now_ms(), &format!("{}-{channel_no}.cast", ctx.id));
    let recorder = match Recorder::create(
        &ctx.shared.recordings,
        &stored,
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
    // Indexing the recording, auditing the channel and opening it on the target run at
    // once: a forwarded connection waits for the slowest, not for their sum.
    let _sealed = ctx.shared.seals.watch(&stored, &ctx.id, recorder.seal());
    let index = ctx.shared.store.add_recording(&ctx.id, channel_no, &stored);
    let audited = ctx.audit(ctx.event(
        "session.channel",
        Outcome::Success,
        json!({ "channel": channel_no, "kind": "direct-tcpip", "destination": dest, "recording": stored }),
    ));
    let open = ctx.upstream_channel(|up| {
        let (host, originator) = (req.host.clone(), req.originator.clone());
        async move {
            up.channel_open_direct_tcpip(host, req.port, originator, req.originator_port)
                .await
        }
    });
    let (indexed, (), opened) = tokio::join!(index, audited, open);
    if let Err(e) = indexed {
        tracing::warn!(session = %ctx.id, error = %e, "cannot index the recording");
    }
    let (up, upch) = match opened {
        Ok(x) => x,
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
    // Opening a forwarded connection is activity, like input on it.
    ctx.limits.touch();
    let _ = recorder
        .record(Event::Marker(format!("forward to {dest} opened")))
        .await;
    let (down_r, down_w) = down.split();
    let (up_r, up_w) = upch.split();
    let recorder = Arc::new(recorder);
    let pump = Pump {
        ctx: &ctx,
        recorder: &recorder,
        stop: &stop,
        kind: Kind::Forward,
    };
    let (_, moved) = pump.run(down_r, &down_w, up_r, up_w).await;
    let _ = recorder
        .record(Event::Marker(format!(
            "forward to {dest} closed: {} bytes from client, {} bytes to client",
            moved.from_client, moved.to_client
        )))
        .await;
    drop(up);
    finish_shared(&ctx, channel_no, recorder).await;
}
