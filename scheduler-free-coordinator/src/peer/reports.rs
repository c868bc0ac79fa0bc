//! Report batching and retry, for one coordinator a worker reports to: attestations and
//! releases wait a moment to share a signed batch, one batch is in flight at a time, and a batch
//! the coordinator could not take (unreachable or busy) is tried again with backoff until the
//! first of its leases lapses, when the coordinator has put those replicas back in the pool and
//! would refuse it. Any other refusal drops the batch at once.
//!
//! Sans-IO: [`ReportQueue::push`] and the `handle_*` calls take `now`; [`ReportQueue::poll_batch`]
//! yields the batch to send, which the driver gives back with [`ReportQueue::handle_sent`];
//! [`ReportQueue::poll_timeout`] says when to poll again.

use std::collections::VecDeque;

use super::outbox::{Outbox, Polled};
use crate::Millis;

/// Items per report batch at most…
pub const REPORT_BATCH: usize = 256;
/// …or this many output bytes…
pub const REPORT_BYTES: usize = 4 << 20;
/// …or this long after the first item waits.
pub const REPORT_LINGER_MS: Millis = 5;
/// Items waiting per coordinator; past it a push is refused (the driver waits for room).
pub const REPORT_QUEUE: usize = 4096;
/// First pause before a batch is tried again; it doubles up to [`REPORT_BACKOFF_MAX_MS`].
pub const REPORT_BACKOFF_MS: Millis = 200;
/// Longest pause between attempts at one batch.
pub const REPORT_BACKOFF_MAX_MS: Millis = 2_000;

/// How sending a batch went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The coordinator took it (whatever it thought of each item).
    Taken,
    /// The coordinator could not be reached, or the call timed out: it may take it later.
    Unreachable,
    /// The coordinator is busy (rate limited): it may take it later.
    Busy,
    /// The coordinator refused it for good.
    Refused,
}

impl Delivery {
    /// Whether a batch that went this way may be tried again.
    pub fn is_transient(self) -> bool {
        matches!(self, Delivery::Unreachable | Delivery::Busy)
    }
}

/// A batch of report items on its way to the coordinator.
#[derive(Debug)]
pub struct ReportBatch<T> {
    /// The items, in the order they were pushed.
    pub items: Vec<T>,
    /// The first attempt is 1.
    pub attempt: u32,
    /// When the first of its leases lapses: past it, the batch is worthless.
    pub until: Millis,
}

/// What became of a batch handed back with [`ReportQueue::handle_sent`].
#[derive(Debug, PartialEq, Eq)]
pub enum Sent<T> {
    /// Taken by the coordinator.
    Taken,
    /// To be tried again at this time (the batch waits in the queue).
    Retry(Millis),
    /// Given up: refused, or its leases lapse before another attempt could land.
    Dropped(Vec<T>),
}

/// Report items waiting for one coordinator, and the batch in flight.
#[derive(Debug)]
pub struct ReportQueue<T> {
    /// Waiting items: when its lease lapses, the item, its output bytes.
    waiting: VecDeque<(Millis, T, usize)>,
    waiting_bytes: usize,
    /// When the oldest waiting item started waiting (the linger counts from it).
    since: Option<Millis>,
    /// The batch out, or waiting to be tried again.
    out: Outbox<ReportBatch<T>>,
}

impl<T> Default for ReportQueue<T> {
    fn default() -> ReportQueue<T> {
        ReportQueue { waiting: VecDeque::new(), waiting_bytes: 0, since: None, out: Outbox::default() }
    }
}

/// The queue is full: the item was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{REPORT_QUEUE} report items already wait for this coordinator")]
pub struct QueueFull;

impl<T> ReportQueue<T> {
    /// Queues an item whose lease lapses at `until`, carrying `bytes` of output.
    pub fn push(&mut self, item: T, bytes: usize, until: Millis, now: Millis) -> Result<(), QueueFull> {
        if self.waiting.len() >= REPORT_QUEUE {
            return Err(QueueFull);
        }
        if self.waiting.is_empty() {
            self.since = Some(now);
        }
        self.waiting_bytes += bytes;
        self.waiting.push_back((until, item, bytes));
        Ok(())
    }

    /// Items waiting, not counting a batch in flight or waiting to be retried.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.out.is_idle()
    }

    /// The batch to send now, if one is due: a retry whose pause is over, or the waiting items
    /// once the batch is full or the linger is over. At most one batch is out at a time.
    pub fn poll_batch(&mut self, now: Millis) -> Option<ReportBatch<T>> {
        match self.out.poll(now) {
            Polled::Busy => return None,
            Polled::Retry(batch) => return Some(batch),
            Polled::Free => {}
        }
        let full = self.waiting.len() >= REPORT_BATCH || self.waiting_bytes >= REPORT_BYTES;
        let lingered = self.since.is_some_and(|s| now >= s + REPORT_LINGER_MS);
        if self.waiting.is_empty() || !(full || lingered) {
            return None;
        }
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut until = Millis::MAX;
        while let Some((u, _, b)) = self.waiting.front() {
            if items.len() >= REPORT_BATCH || (!items.is_empty() && bytes + b > REPORT_BYTES) {
                break;
            }
            until = until.min(*u);
            bytes += b;
            let Some((_, item, _)) = self.waiting.pop_front() else { break };
            items.push(item);
        }
        self.waiting_bytes -= bytes;
        self.since = (!self.waiting.is_empty()).then_some(now);
        self.out.send();
        Some(ReportBatch { items, attempt: 1, until })
    }

    /// The batch from [`ReportQueue::poll_batch`] came back from the coordinator.
    pub fn handle_sent(&mut self, mut batch: ReportBatch<T>, delivery: Delivery, now: Millis) -> Sent<T> {
        self.out.returned();
        if !self.waiting.is_empty() {
            // The items that queued up meanwhile start their linger now.
            self.since = Some(self.since.map_or(now, |s| s.max(now)));
        }
        if delivery == Delivery::Taken {
            return Sent::Taken;
        }
        let pause = (REPORT_BACKOFF_MS << (batch.attempt - 1).min(8)).min(REPORT_BACKOFF_MAX_MS);
        if !delivery.is_transient() || now + pause >= batch.until {
            return Sent::Dropped(batch.items);
        }
        batch.attempt += 1;
        let at = now + pause;
        self.out.retry_at(batch, at);
        Sent::Retry(at)
    }

    /// Takes out of the batch waiting to be retried the items `moved` picks, with the batch's
    /// `until`. A report follows its job's active coordinator: once the job's ad names another
    /// leader (the one this queue sends to died and a backup took over, holding the leases from
    /// the replication stream), its items go to that leader's queue instead of waiting for this
    /// one to come back. The rest is retried as before.
    pub fn take_from_retry(&mut self, mut moved: impl FnMut(&T) -> bool) -> (Vec<T>, Millis) {
        let Some(batch) = self.out.retry_mut() else { return (Vec::new(), Millis::MAX) };
        let until = batch.until;
        let (out, keep): (Vec<T>, Vec<T>) = std::mem::take(&mut batch.items).into_iter().partition(|i| moved(i));
        batch.items = keep;
        if batch.items.is_empty() {
            self.out.drop_retry();
        }
        (out, until)
    }

    /// When [`ReportQueue::poll_batch`] may next have something (none while a batch is out, or
    /// nothing waits).
    pub fn poll_timeout(&self) -> Option<Millis> {
        if let Some(at) = self.out.next()? {
            return Some(at);
        }
        if self.waiting.len() >= REPORT_BATCH || self.waiting_bytes >= REPORT_BYTES {
            return self.since;
        }
        self.since.map(|s| s + REPORT_LINGER_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_linger_then_go_as_one_batch() {
        let mut q = ReportQueue::default();
        q.push(1, 10, 5_000, 100).unwrap();
        q.push(2, 10, 4_000, 102).unwrap();
        assert!(q.poll_batch(104).is_none(), "still lingering");
        assert_eq!(q.poll_timeout(), Some(105));
        let b = q.poll_batch(105).unwrap();
        assert_eq!((b.items.clone(), b.attempt, b.until), (vec![1, 2], 1, 4_000));
        assert!(q.poll_batch(200).is_none(), "one batch in flight at a time");
        assert_eq!(q.handle_sent(b, Delivery::Taken, 110), Sent::Taken);
        assert!(q.is_idle());
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let mut q = ReportQueue::default();
        for i in 0..REPORT_BATCH + 1 {
            q.push(i, 0, 9_000, 0).unwrap();
        }
        let b = q.poll_batch(0).unwrap();
        assert_eq!(b.items.len(), REPORT_BATCH);
        assert_eq!(q.waiting(), 1);
        q.handle_sent(b, Delivery::Taken, 1);
        assert!(q.poll_batch(1).is_none(), "the rest lingers from the delivery");
        assert_eq!(q.poll_batch(1 + REPORT_LINGER_MS).map(|b| b.items), Some(vec![REPORT_BATCH]));
    }

    #[test]
    fn an_unreachable_coordinator_is_retried_with_backoff_until_the_first_lease_lapses() {
        let mut q = ReportQueue::default();
        q.push("a", 0, 3_000, 0).unwrap();
        let mut b = q.poll_batch(5).unwrap();
        let mut now = 5;
        let mut pauses = Vec::new();
        loop {
            match q.handle_sent(b, Delivery::Unreachable, now) {
                Sent::Retry(at) => {
                    pauses.push(at - now);
                    now = at;
                    b = q.poll_batch(now).unwrap();
                }
                Sent::Dropped(items) => {
                    assert_eq!(items, vec!["a"]);
                    break;
                }
                Sent::Taken => unreachable!(),
            }
        }
        // 5 + 200 + 400 + 800 = 1405; another 1600 would land past the lapse at 3000.
        assert_eq!(pauses, vec![200, 400, 800], "doubling");
        assert_eq!(now, 1_405);
    }

    #[test]
    fn pauses_are_capped() {
        let mut q = ReportQueue::default();
        q.push(1, 0, 100_000, 0).unwrap();
        let mut b = q.poll_batch(REPORT_LINGER_MS).unwrap();
        let mut now = REPORT_LINGER_MS;
        let mut last = 0;
        for _ in 0..8 {
            let Sent::Retry(at) = q.handle_sent(b, Delivery::Busy, now) else { panic!("retried") };
            last = at - now;
            now = at;
            b = q.poll_batch(now).unwrap();
        }
        assert_eq!(last, REPORT_BACKOFF_MAX_MS);
    }

    #[test]
    fn reports_of_a_job_led_elsewhere_now_leave_the_retry() {
        let mut q = ReportQueue::default();
        q.push(("a", 1), 0, 9_000, 0).unwrap();
        q.push(("b", 2), 0, 8_000, 0).unwrap();
        let b = q.poll_batch(REPORT_LINGER_MS).unwrap();
        assert!(matches!(q.handle_sent(b, Delivery::Unreachable, 10), Sent::Retry(210)));
        let (moved, until) = q.take_from_retry(|(job, _)| *job == "a");
        assert_eq!((moved, until), (vec![("a", 1)], 8_000));
        assert_eq!(q.poll_batch(210).map(|b| b.items), Some(vec![("b", 2)]), "the rest is retried");
        let mut q2: ReportQueue<u8> = ReportQueue::default();
        q2.push(1, 0, 9_000, 0).unwrap();
        let b = q2.poll_batch(REPORT_LINGER_MS).unwrap();
        q2.handle_sent(b, Delivery::Unreachable, 10);
        assert_eq!(q2.take_from_retry(|_| true).0, vec![1]);
        assert!(q2.is_idle(), "an emptied retry is gone");
    }

    #[test]
    fn a_refusal_drops_the_batch_at_once() {
        let mut q = ReportQueue::default();
        q.push(7, 0, 60_000, 0).unwrap();
        let b = q.poll_batch(REPORT_LINGER_MS).unwrap();
        assert_eq!(q.handle_sent(b, Delivery::Refused, 6), Sent::Dropped(vec![7]));
        assert!(q.is_idle());
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut q = ReportQueue::default();
        for i in 0..REPORT_QUEUE {
            q.push(i, 0, 1, 0).unwrap();
        }
        assert_eq!(q.push(0, 0, 1, 0), Err(QueueFull));
    }

    #[test]
    fn output_bytes_bound_a_batch() {
        let mut q = ReportQueue::default();
        q.push(1, REPORT_BYTES - 1, 9_000, 0).unwrap();
        q.push(2, 2, 9_000, 0).unwrap();
        let b = q.poll_batch(0).unwrap();
        assert_eq!(b.items, vec![1], "the second would pass the byte bound");
    }
}
