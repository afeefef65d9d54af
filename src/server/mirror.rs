//! The SIEM mirror: follows the audit chain in the store and writes each new event as
//! one JSON line to standard output or a file.

use std::io::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::audit::chain;
use crate::store::Store;

pub async fn run(store: Store, target: String, stop: CancellationToken) {
    let mut sink: Box<dyn Write + Send> = if target == "stdout" {
        Box::new(std::io::stdout())
    } else {
        match crate::credentials::open_private_append(std::path::Path::new(&target), false) {
            Ok(f) => Box::new(std::io::LineWriter::new(f)),
            Err(e) => {
                warn!(path = %target, error = %e, "cannot open the audit mirror; mirroring is off");
                return;
            }
        }
    };
    let mut after = store.audit_head_seq().await.unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        loop {
            let page = match store.audit_page(after, 5000).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "cannot read audit events to mirror");
                    break;
                }
            };
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            for c in &page {
                let line = chain::export_line(
                    c.seq,
                    &c.event,
                    c.prev_hash.as_deref().unwrap_or(""),
                    c.hash.as_deref().unwrap_or(""),
                );
                if writeln!(sink, "{line}").is_err() {
                    warn!("the audit mirror stopped accepting events");
                    return;
                }
            }
            let _ = sink.flush();
            after = last;
        }
        if stopping {
            return;
        }
    }
}
