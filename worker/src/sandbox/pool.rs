//! The bounded execution pool: `slots` OS threads (never the async runtime's) fed by a bounded
//! queue. A full queue is refused at once rather than waited on. Threads end when the last
//! handle of the sandbox (and so the queue's sender) is dropped.
//!
//! With slot processes each thread owns its slot's process (`slot.rs`), started on the first
//! run and let go after [`SLOT_IDLE`] without work; it hands the process every run queued at
//! once, up to [`MAX_BATCH`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine::THREAD_STACK;
use super::error::SandboxError;
use super::slot::{Apart, MAX_BATCH, SlotCommand, SlotProcess, run_batch};

/// How long a slot process is kept without work: an idle peer holds none.
pub(crate) const SLOT_IDLE: Duration = Duration::from_secs(30);

/// A unit of work for a slot.
pub(crate) enum Job {
    /// Runs on the slot thread. It must report its own result (and catch its own panics); the
    /// pool only makes sure a panic cannot take a thread down.
    Here(Box<dyn FnOnce() + Send + 'static>),
    /// A run for the slot's process.
    Apart(Apart),
}

pub(crate) struct Pool {
    tx: SyncSender<Job>,
    slots: usize,
    /// Jobs queued and not yet taken: a slot takes its share of them as a batch, so that
    /// tiny runs go to a process together and long ones still spread over the slots.
    waiting: Arc<AtomicUsize>,
    /// Each slot's process id (0: none).
    pids: Arc<[AtomicU32]>,
    /// Slot processes started so far.
    started: Arc<AtomicU64>,
}

impl Pool {
    /// `idle`: each thread lowers itself to the idle scheduling priority before taking work
    /// (and a slot process, itself). `apart`: how to start slot processes, if runs go to them.
    pub(crate) fn start(
        slots: usize,
        queue: usize,
        idle: bool,
        apart: Option<SlotCommand>,
    ) -> Result<Pool, SandboxError> {
        let (tx, rx) = sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let waiting = Arc::new(AtomicUsize::new(0));
        let pids: Arc<[AtomicU32]> = (0..slots).map(|_| AtomicU32::new(0)).collect();
        let started = Arc::new(AtomicU64::new(0));
        for i in 0..slots {
            let pids = pids.clone();
            let started = started.clone();
            let rx = rx.clone();
            let apart = apart.clone();
            let waiting = waiting.clone();
            std::thread::Builder::new()
                .name(format!("spare-sandbox-{i}"))
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    if idle {
                        super::priority::lower_this_thread();
                    }
                    worker(&rx, &waiting, slots, apart.as_ref(), (&pids[i], &started))
                })
                .map_err(|e| SandboxError::Engine(format!("cannot start sandbox thread {i}: {e}")))?;
        }
        Ok(Pool { tx, slots, waiting, pids, started })
    }

    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// The slots' processes running now.
    pub(crate) fn processes(&self) -> Vec<u32> {
        self.pids.iter().map(|p| p.load(Ordering::Relaxed)).filter(|&p| p != 0).collect()
    }

    /// Slot processes started so far (one per slot at its first run, and one after each kill).
    pub(crate) fn processes_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Queues a job, or refuses at once.
    pub(crate) fn submit(&self, job: Job) -> Result<(), SandboxError> {
        // Counted before it is sent, so a slot never takes a job it did not count.
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.try_send(job);
        if sent.is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SandboxError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(SandboxError::ShutDown),
        }
    }
}

fn worker(
    rx: &Mutex<Receiver<Job>>,
    waiting: &AtomicUsize,
    slots: usize,
    apart: Option<&SlotCommand>,
    (pid, started): (&AtomicU32, &AtomicU64),
) {
    let mut process: Option<SlotProcess> = None;
    loop {
        // The first job waits; the ones queued behind it join its batch.
        let mut batch = Vec::new();
        let mut here = None;
        {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            let first = if process.is_some() {
                match guard.recv_timeout(SLOT_IDLE) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        drop(guard);
                        process = None;
                        pid.store(0, Ordering::Relaxed);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match guard.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            // This slot's share of what waits (at least the job it has).
            let share = (waiting.load(Ordering::Relaxed) / slots.max(1)).clamp(1, MAX_BATCH);
            let mut next = Some(first);
            while let Some(job) = next.take() {
                waiting.fetch_sub(1, Ordering::Relaxed);
                match job {
                    Job::Apart(a) => batch.push(a),
                    Job::Here(f) => {
                        here = Some(f);
                        break;
                    }
                }
                if batch.len() < share {
                    next = guard.try_recv().ok();
                }
            }
        }
        if !batch.is_empty() {
            match apart {
                Some(cmd) => run_batch(&mut process, cmd, batch, pid, started),
                None => {
                    for a in batch {
                        let _ = a.reply.send(Err(SandboxError::Engine("this sandbox has no slot processes".into())));
                    }
                }
            }
        }
        if let Some(f) = here {
            // Jobs catch their own panics; this is the last line of defence for the thread.
            let _ = catch_unwind(AssertUnwindSafe(f));
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
            let pool = Pool::start(1, 1, idle, None).expect("pool");
            let (tx, rx) = std::sync::mpsc::channel();
            pool.submit(Job::Here(Box::new(move || {
                let _ = tx.send(current_priority());
            })))
            .expect("queued");
            let got = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the job ran");
            assert_eq!(matches!(got, Priority::Idle | Priority::Nice(19)), want_idle, "idle={idle}: {got:?}");
        }
    }
}
