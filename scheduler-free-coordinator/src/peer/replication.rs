//! The active coordinator's stream to one backup coordinator: every attestation it records, in
//! recording order, in batches of one job each. A batch the backup does not take is tried again
//! a few times; past that the stream does not resend it (it moves on, in order): the jobs of the
//! failed batch, and of everything queued behind it, are caught up by a whole adoption instead
//! (see [`super::catchup`]), so a dead backup's queue is not tried batch by batch.
//!
//! Sans-IO, like [`super::reports`]: push items, poll a batch, hand it back with how it went.

use std::collections::VecDeque;

use super::outbox::{Outbox, Polled};
use crate::{JobId, Millis};

/// Entries per replication batch at most…
pub const REPLICATE_BATCH: usize = 8192;
/// …or this many output bytes (a batch always takes its first entry). One batch is out at a
/// time, so the stream keeps order; it must be large enough that the stream keeps up with
/// the leader (every lease and every attestation), or what is queued dies with the leader.
pub const REPLICATE_BYTES: usize = 4 << 20;
/// Attempts at one batch.
pub const REPLICATE_TRIES: u32 = 3;
/// Entries waiting for one backup (not counting the batch out). A backup that falls this far
/// behind is caught up by a whole adoption instead: what waits is given up at once, so a
/// leader faster than its slowest backup holds a bounded queue.
pub const REPLICATE_QUEUE: usize = 65_536;
/// Pause before attempt `n + 1` is `n` times this.
pub const REPLICATE_PAUSE_MS: Millis = 100;
/// How long a new coordinator may take to adopt a job (it fetches the module and inputs).
pub const ADOPT_TIMEOUT_MS: Millis = 20_000;
/// How long a recorded verdict waits for a backup to hold its deciding attestation durably
/// before it is announced anyway (the backups are unreachable) and a warning logged.
pub const BACKUP_ACK_TIMEOUT_MS: Millis = 10_000;

/// One batch of the stream.
#[derive(Debug)]
pub struct ReplicationBatch<T> {
    /// The job every item belongs to.
    pub job: JobId,
    /// The items, in recording order.
    pub items: Vec<T>,
    /// The first attempt is 1.
    pub attempt: u32,
}

/// What became of a batch handed back with [`ReplicationQueue::handle_sent`].
#[derive(Debug, PartialEq, Eq)]
pub enum Replicated<T> {
    /// The backup holds every item durably.
    Taken(Vec<T>),
    /// To be tried again at this time.
    Retry(Millis),
    /// Given up: these items (the batch's and all queued behind it) did not reach the backup,
    /// and these jobs need a catch-up.
    Failed { items: Vec<T>, catch_up: Vec<JobId> },
}

/// The stream to one backup.
#[derive(Debug)]
pub struct ReplicationQueue<T> {
    waiting: VecDeque<(JobId, T, usize)>,
    out: Outbox<ReplicationBatch<T>>,
}

impl<T> Default for ReplicationQueue<T> {
    fn default() -> ReplicationQueue<T> {
        ReplicationQueue { waiting: VecDeque::new(), out: Outbox::default() }
    }
}

impl<T> ReplicationQueue<T> {
    /// Queues an entry of `job` carrying `bytes` of output. When [`REPLICATE_QUEUE`] entries
    /// wait already, everything waiting and this entry are given up instead, as a failed batch
    /// is: `Some(Replicated::Failed)` names them and the jobs to catch up.
    pub fn push(&mut self, job: JobId, item: T, bytes: usize) -> Option<Replicated<T>> {
        self.waiting.push_back((job, item, bytes));
        if self.waiting.len() <= REPLICATE_QUEUE {
            return None;
        }
        let mut catch_up = Vec::new();
        let mut items = Vec::with_capacity(self.waiting.len());
        for (job, item, _) in self.waiting.drain(..) {
            if !catch_up.contains(&job) {
                catch_up.push(job);
            }
            items.push(item);
        }
        Some(Replicated::Failed { items, catch_up })
    }

    /// Whether nothing waits and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.out.is_idle()
    }

    /// The next batch to send: a due retry, or up to [`REPLICATE_BATCH`] waiting items of the
    /// first waiting item's job. One batch is out at a time, so the stream stays in order.
    pub fn poll_batch(&mut self, now: Millis) -> Option<ReplicationBatch<T>> {
        match self.out.poll(now) {
            Polled::Busy => return None,
            Polled::Retry(batch) => return Some(batch),
            Polled::Free => {}
        }
        let job = self.waiting.front()?.0;
        let mut items = Vec::new();
        let mut bytes = 0;
        while let Some((j, _, b)) = self.waiting.front() {
            if *j != job || items.len() >= REPLICATE_BATCH || (!items.is_empty() && bytes + b > REPLICATE_BYTES) {
                break;
            }
            bytes += b;
            let Some((_, item, _)) = self.waiting.pop_front() else { break };
            items.push(item);
        }
        self.out.send();
        Some(ReplicationBatch { job, items, attempt: 1 })
    }

    /// The batch from [`ReplicationQueue::poll_batch`] came back: `taken` when the backup holds
    /// it durably.
    pub fn handle_sent(&mut self, mut batch: ReplicationBatch<T>, taken: bool, now: Millis) -> Replicated<T> {
        self.out.returned();
        if taken {
            return Replicated::Taken(batch.items);
        }
        if batch.attempt < REPLICATE_TRIES {
            let at = now + REPLICATE_PAUSE_MS * Millis::from(batch.attempt);
            batch.attempt += 1;
            self.out.retry_at(batch, at);
            return Replicated::Retry(at);
        }
        let mut catch_up = vec![batch.job];
        let mut items = batch.items;
        for (job, item, _) in self.waiting.drain(..) {
            if !catch_up.contains(&job) {
                catch_up.push(job);
            }
            items.push(item);
        }
        Replicated::Failed { items, catch_up }
    }

    /// When [`ReplicationQueue::poll_batch`] may next have something.
    pub fn poll_timeout(&self, now: Millis) -> Option<Millis> {
        match self.out.next()? {
            Some(at) => Some(at),
            None => (!self.waiting.is_empty()).then_some(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_bytes_bound_a_batch() {
        let mut q = ReplicationQueue::default();
        q.push(job(1), 1, REPLICATE_BYTES);
        q.push(job(1), 2, 1);
        assert_eq!(q.poll_batch(0).map(|b| b.items), Some(vec![1]), "the first always goes, alone past the bound");
    }

    fn job(n: u8) -> JobId {
        JobId([n; 32])
    }

    #[test]
    fn a_batch_holds_one_job_in_order() {
        let mut q = ReplicationQueue::default();
        q.push(job(1), 1, 0);
        q.push(job(1), 2, 0);
        q.push(job(2), 3, 0);
        let b = q.poll_batch(0).unwrap();
        assert_eq!((b.job, b.items.clone()), (job(1), vec![1, 2]));
        assert!(q.poll_batch(0).is_none(), "one batch out at a time");
        assert_eq!(q.handle_sent(b, true, 1), Replicated::Taken(vec![1, 2]));
        let b = q.poll_batch(1).unwrap();
        assert_eq!((b.job, b.items.clone()), (job(2), vec![3]));
    }

    #[test]
    fn a_failed_batch_is_tried_three_times_then_its_jobs_are_caught_up() {
        let mut q = ReplicationQueue::default();
        q.push(job(1), 1, 0);
        q.push(job(2), 2, 0);
        q.push(job(1), 3, 0);
        let b = q.poll_batch(0).unwrap();
        assert_eq!(q.handle_sent(b, false, 10), Replicated::Retry(110));
        assert!(q.poll_batch(109).is_none());
        let b = q.poll_batch(110).unwrap();
        assert_eq!(q.handle_sent(b, false, 120), Replicated::Retry(320));
        let b = q.poll_batch(320).unwrap();
        assert_eq!(b.attempt, REPLICATE_TRIES);
        assert_eq!(
            q.handle_sent(b, false, 330),
            Replicated::Failed { items: vec![1, 2, 3], catch_up: vec![job(1), job(2)] }
        );
        assert!(q.is_idle(), "the whole queue went to the catch-up");
    }

    #[test]
    fn a_backup_too_far_behind_is_caught_up_instead() {
        let mut q = ReplicationQueue::default();
        assert_eq!(q.push(job(9), 0, 0), None);
        let out = q.poll_batch(0).unwrap();
        for i in 1..=REPLICATE_QUEUE {
            assert_eq!(q.push(job(1), i, 0), None);
        }
        let Some(Replicated::Failed { items, catch_up }) = q.push(job(2), 0, 0) else { panic!("the queue is bounded") };
        assert_eq!((items.len(), catch_up), (REPLICATE_QUEUE + 1, vec![job(1), job(2)]));
        assert_eq!(q.handle_sent(out, true, 1), Replicated::Taken(vec![0]), "the batch out is still answered");
        assert!(q.is_idle());
    }
}
