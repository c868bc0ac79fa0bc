//! The bounded execution pool: `slots` OS threads (never the async runtime's) fed by a bounded
//! queue. A full queue is refused at once rather than waited on. Threads end when the last
//! handle of the sandbox (and so the queue's sender) is dropped.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use super::engine::THREAD_STACK;
use super::error::SandboxError;

/// A unit of work for a slot. It must report its own result (and catch its own panics); the
/// pool only makes sure a panic cannot take a thread down.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

pub(crate) struct Pool {
    tx: SyncSender<Job>,
    slots: usize,
}

impl Pool {
    /// `idle`: each thread lowers itself to the idle scheduling priority before taking work.
    pub(crate) fn start(slots: usize, queue: usize, idle: bool) -> Result<Pool, SandboxError> {
        let (tx, rx) = sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..slots {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("spare-sandbox-{i}"))
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    if idle {
                        super::priority::lower_this_thread();
                    }
                    worker(&rx)
                })
                .map_err(|e| SandboxError::Engine(format!("cannot start sandbox thread {i}: {e}")))?;
        }
        Ok(Pool { tx, slots })
    }

    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Queues a job, or refuses at once.
    pub(crate) fn submit(&self, job: Job) -> Result<(), SandboxError> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SandboxError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(SandboxError::ShutDown),
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.recv()
        };
        match job {
            Ok(job) => {
                // Jobs catch their own panics; this is the last line of defence for the thread.
                let _ = catch_unwind(AssertUnwindSafe(job));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Priority, current_priority};

    #[test]
    fn slot_threads_run_at_idle_priority_when_asked() {
        for (idle, want_idle) in [(true, true), (false, false)] {
            let pool = Pool::start(1, 1, idle).expect("pool");
            let (tx, rx) = std::sync::mpsc::channel();
            pool.submit(Box::new(move || {
                let _ = tx.send(current_priority());
            }))
            .expect("queued");
            let got = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the job ran");
            assert_eq!(matches!(got, Priority::Idle | Priority::Nice(19)), want_idle, "idle={idle}: {got:?}");
        }
    }
}
