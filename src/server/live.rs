//! Live sessions of this process, by id: how a kill (from another process, through the
//! store's session commands), a TTL deadline or a lock reaches a running session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::Store;

#[derive(Default)]
pub struct Live {
    sessions: Mutex<HashMap<String, CancellationToken>>,
}

impl Live {
    pub fn register(&self, id: &str, kill: CancellationToken) {
        if let Ok(mut m) = self.sessions.lock() {
            m.insert(id.to_string(), kill);
        }
    }

    pub fn unregister(&self, id: &str) {
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(id);
        }
    }

    /// Ends the session if it runs here; true when it did.
    pub fn kill(&self, id: &str) -> bool {
        let token = self.sessions.lock().ok().and_then(|m| m.get(id).cloned());
        match token {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }
}

/// How often `serve` looks for new session commands.
pub const POLL: Duration = Duration::from_millis(250);

/// Applies session commands written by admin commands until `stop` fires.
pub async fn watch_commands(store: Store, live: std::sync::Arc<Live>, stop: CancellationToken) {
    let mut seq = match store.last_session_command().await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read session commands; kills from other processes will not arrive");
            0
        }
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.session_commands_after(seq).await {
            Ok(cmds) => {
                for (s, session, command) in cmds {
                    seq = s;
                    if command == "kill" && live.kill(&session) {
                        info!(session = %session, "session killed by an admin");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read session commands"),
        }
    }
}
