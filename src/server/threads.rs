//! Connection threads: each runs its own single-threaded runtime, and a connection handed
//! to one stays there with all its tasks (relay, recorder). A proxy hop then costs no
//! wake-ups across threads; PostgreSQL sessions, many small messages each, use this
//! (pgbouncer's model, one event loop per core).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tracing::warn;

/// Made on the receiving thread, inside its runtime (so sockets register there).
pub type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

pub struct Pool {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Pool {
    /// `n` threads (at least one), named `postern-NAME-I`.
    pub fn start(name: &str, n: usize) -> std::io::Result<Pool> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = std::thread::Builder::new()
                .name(format!("postern-{name}-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job());
                        }
                    });
                })?;
            senders.push(tx);
            threads.push(handle);
        }
        Ok(Pool {
            senders,
            next: AtomicUsize::new(0),
            threads: Mutex::new(threads),
        })
    }

    /// Hands a job to the next thread (round robin).
    pub fn dispatch(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        if self.senders[i].send(job).is_err() {
            warn!("a connection thread is gone; the connection is dropped");
        }
    }

    /// Stops the threads once their connections are done (call after they were waited for).
    pub fn stop(self) {
        drop(self.senders);
        if let Ok(mut t) = self.threads.lock() {
            for h in t.drain(..) {
                let _ = h.join();
            }
        }
    }
}
