//! Session commands (kills) that any process writes and the replica running the session
//! acts on: polled by each `serve`, and on PostgreSQL announced with NOTIFY as well.

use super::{Dialect, Store, StoreError, begin_write, sessions};
use crate::audit::Actor;

impl Store {
    /// Asks whichever `serve` runs the session to end it.
    pub async fn request_kill(&self, session: &str, actor: &Actor) -> Result<(), StoreError> {
        // Under the write lock, so commands commit in `seq` order and a replica reading
        // "after the last seq it saw" misses none.
        let mut tx = begin_write(&self.pool).await?;
        sessions::push_command(&mut tx, session, "kill", &actor.0).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn session_commands_after(
        &self,
        seq: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let pool = &self.pool;
        sessions::commands_after(&mut *pool.acquire().await?, seq).await
    }

    /// On PostgreSQL, a wake-up each time a session command is written anywhere
    /// (LISTEN/NOTIFY), so a kill is acted on at once rather than at the next poll; None
    /// on the embedded store. The listener reconnects by itself and ends with the receiver.
    pub fn command_wakeups(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        if self.dialect() != Dialect::Postgres {
            return None;
        }
        let url = self.pool.connect_options().database_url.to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listen_commands(&url, &tx) => {
                        let Err(e) = r;
                        tracing::debug!(error = %e, "the session command listener stopped; polling until it is back");
                    }
                    _ = tx.closed() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Some(rx)
    }

    pub async fn last_session_command(&self) -> Result<i64, StoreError> {
        let pool = &self.pool;
        sessions::last_command(&mut *pool.acquire().await?).await
    }
}

/// Wakes `tx` at each notification of a new session command, until the connection fails.
async fn listen_commands(
    url: &str,
    tx: &tokio::sync::mpsc::Sender<()>,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut l = sqlx::postgres::PgListener::connect(url).await?;
    l.listen(sessions::COMMANDS_CHANNEL).await?;
    loop {
        l.recv().await?;
        // A wake-up already waiting covers this one too.
        let _ = tx.try_send(());
    }
}
