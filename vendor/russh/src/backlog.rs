//! Channel messages that the session loop could not hand to a channel's consumer without
//! waiting (added for postern; see POSTERN.md at the crate root).
//!
//! The session loop reads every connection's packets, window adjustments included. If it
//! waited for a slow consumer to make room in a channel's bounded queue, it would stop
//! reading window adjustments for every other channel, and a relay between two such
//! loops deadlocks. Instead, a message that does not fit waits here, and the channel's
//! receive window is not replenished while it does: the peer runs out of window for that
//! channel alone and stops sending on it, while the loop keeps serving everything else.
//! For a peer that respects flow control the queue is bounded by the window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;

use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use crate::{ChannelId, ChannelMsg};

/// A peer that keeps sending on a channel whose consumer is stalled, beyond what flow
/// control allows (tiny packets, or requests), is disconnected past this many messages.
const MAX_QUEUED: usize = 65_536;

/// What became of a delivered message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    Now,
    Queued,
    /// The consumer dropped its receiver.
    Gone,
}

#[derive(Debug, Default)]
pub(crate) struct Backlogs {
    queues: HashMap<ChannelId, Queue>,
}

#[derive(Debug)]
struct Queue {
    sender: Sender<ChannelMsg>,
    msgs: VecDeque<ChannelMsg>,
}

impl Backlogs {
    /// Hands `msg` to the channel's consumer, or queues it behind earlier messages; never
    /// waits.
    pub(crate) fn deliver(
        &mut self,
        id: ChannelId,
        sender: &Sender<ChannelMsg>,
        msg: ChannelMsg,
    ) -> Result<Delivered, crate::Error> {
        if let Some(q) = self.queues.get_mut(&id) {
            if q.msgs.len() >= MAX_QUEUED {
                return Err(crate::Error::Inconsistent);
            }
            q.msgs.push_back(msg);
            return Ok(Delivered::Queued);
        }
        match sender.try_send(msg) {
            Ok(()) => Ok(Delivered::Now),
            Err(TrySendError::Full(msg)) => {
                self.queues.insert(
                    id,
                    Queue {
                        sender: sender.clone(),
                        msgs: VecDeque::from([msg]),
                    },
                );
                Ok(Delivered::Queued)
            }
            Err(TrySendError::Closed(_)) => Ok(Delivered::Gone),
        }
    }

    /// Whether messages for this channel wait here (its window is then withheld).
    pub(crate) fn is_queued(&self, id: ChannelId) -> bool {
        self.queues.contains_key(&id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Resolves when a consumer with queued messages has room again (or is gone).
    pub(crate) fn room(&self) -> impl Future<Output = ()> + Send + 'static {
        let senders: Vec<Sender<ChannelMsg>> =
            self.queues.values().map(|q| q.sender.clone()).collect();
        async move {
            if senders.is_empty() {
                return std::future::pending().await;
            }
            let waits = senders.iter().map(|s| Box::pin(s.reserve()));
            let _ = futures::future::select_all(waits).await;
        }
    }

    /// Moves queued messages to consumers that have room; returns the channels whose
    /// queue emptied, so their receive windows can be replenished.
    pub(crate) fn drain(&mut self) -> Vec<ChannelId> {
        let mut emptied = Vec::new();
        self.queues.retain(|id, q| {
            while let Some(msg) = q.msgs.pop_front() {
                match q.sender.try_send(msg) {
                    Ok(()) => {}
                    Err(TrySendError::Full(msg)) => {
                        q.msgs.push_front(msg);
                        return true;
                    }
                    Err(TrySendError::Closed(_)) => break,
                }
            }
            emptied.push(*id);
            false
        });
        emptied
    }
}

/// The close handshake of each channel (RFC 4254 5.3): a channel is gone only once both
/// sides sent CHANNEL_CLOSE, and the reply to a peer's CLOSE waits for the application,
/// which may still have an exit status to send.
#[derive(Debug, Default)]
pub(crate) struct Closing {
    /// We sent CHANNEL_CLOSE and wait for the peer's.
    pub(crate) sent: HashSet<ChannelId>,
    /// The peer sent CHANNEL_CLOSE; ours follows when the application closes.
    pub(crate) received: HashSet<ChannelId>,
    /// CHANNEL_EOF was sent (it is sent at most once).
    pub(crate) eof_sent: HashSet<ChannelId>,
}

impl Closing {
    /// Records that EOF goes out now; false when it already went.
    pub(crate) fn first_eof(&mut self, id: ChannelId) -> bool {
        self.eof_sent.insert(id)
    }

    pub(crate) fn forget(&mut self, id: ChannelId) {
        self.eof_sent.remove(&id);
        self.received.remove(&id);
    }

    /// The peer's CLOSE arrived for a channel we closed: the channel is gone.
    pub(crate) fn answered(&mut self, id: ChannelId) -> bool {
        self.sent.remove(&id)
    }

    /// The peer's CLOSE arrived first: ours is owed once the application closes.
    pub(crate) fn peer_closed(&mut self, id: ChannelId) {
        if !self.sent.contains(&id) {
            self.received.insert(id);
        }
    }
}
