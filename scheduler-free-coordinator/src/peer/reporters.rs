//! A worker's reports to every coordinator it works for: one [`ReportQueue`] per coordinator,
//! with what waits for room in it, and the rule that a report follows its job's leader (a batch
//! that failed gives the items whose job another coordinator now leads to that one's queue,
//! since it holds their leases from the replication stream).
//!
//! Sans-IO, one owner. Contract: [`Reporters::push`] each item with `now`; after every input,
//! take [`Reporters::poll_batch`] until it gives nothing and send each batch; give each answer
//! back with [`Reporters::handle_sent`]; [`Reporters::poll_timeout`] says when a batch may be
//! due although nothing happened.

use std::collections::{BTreeMap, VecDeque};

use super::reports::{Delivery, REPORT_QUEUE, ReportBatch, ReportQueue, Sent};
use crate::Millis;

/// Items that may wait for room in one coordinator's queue; past it a push is refused (the
/// item's lease lapses at the coordinator, which gives the task to another peer).
pub const REPORT_BACKLOG: usize = REPORT_QUEUE;

/// One coordinator's reports.
#[derive(Debug)]
struct Lane<T> {
    queue: ReportQueue<T>,
    /// Items the full queue could not take yet: item, output bytes, lease lapse; in order.
    backlog: VecDeque<(T, usize, Millis)>,
    /// The batch sent and not answered.
    out: Option<ReportBatch<T>>,
}

impl<T> Default for Lane<T> {
    fn default() -> Lane<T> {
        Lane { queue: ReportQueue::default(), backlog: VecDeque::new(), out: None }
    }
}

impl<T> Lane<T> {
    /// Moves what waits for room into the queue, in order, while it has room.
    fn feed(&mut self, now: Millis) {
        while self.queue.waiting() < REPORT_QUEUE {
            let Some((item, bytes, until)) = self.backlog.pop_front() else { break };
            // There is room, so the queue takes it.
            let _ = self.queue.push(item, bytes, until, now);
        }
    }

    fn is_idle(&self) -> bool {
        self.queue.is_idle() && self.backlog.is_empty() && self.out.is_none()
    }
}

/// A coordinator's queue and backlog are both full: the item was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} report items already wait for this coordinator", REPORT_QUEUE + REPORT_BACKLOG)]
pub struct BacklogFull;

/// What [`Reporters::handle_sent`] made of an answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Handled<T> {
    /// What became of the batch (its items, when given up).
    pub sent: Sent<T>,
    /// Items moved to their job's new leader before the retry.
    pub moved: usize,
}

/// Report queues by coordinator (`K`: however the driver names a coordinator).
#[derive(Debug)]
pub struct Reporters<K, T> {
    lanes: BTreeMap<K, Lane<T>>,
}

impl<K, T> Default for Reporters<K, T> {
    fn default() -> Reporters<K, T> {
        Reporters { lanes: BTreeMap::new() }
    }
}

impl<K: Ord + Clone, T> Reporters<K, T> {
    /// Queues `item` for coordinator `to`: `bytes` of output, a lease that lapses at `until`.
    pub fn push(&mut self, to: K, item: T, bytes: usize, until: Millis, now: Millis) -> Result<(), BacklogFull> {
        let lane = self.lanes.entry(to).or_default();
        if lane.backlog.len() >= REPORT_BACKLOG {
            return Err(BacklogFull);
        }
        lane.backlog.push_back((item, bytes, until));
        lane.feed(now);
        Ok(())
    }

    /// A batch due now, with the coordinator it goes to: the first coordinator (in key order)
    /// with one due. The batch stays here until [`Reporters::handle_sent`].
    pub fn poll_batch(&mut self, now: Millis) -> Option<(K, &[T])> {
        let (to, lane) = self.lanes.iter_mut().find(|(_, l)| l.out.is_none() && l.queue.poll_timeout().is_some_and(|at| at <= now))?;
        let batch = lane.queue.poll_batch(now)?;
        let lane_out = lane.out.insert(batch);
        Some((to.clone(), &lane_out.items))
    }

    /// The batch sent to `to` was answered with `delivery`. Before a retry, the items whose job
    /// `leader` says another coordinator leads now move to that one's queue.
    pub fn handle_sent(&mut self, to: &K, delivery: Delivery, now: Millis, leader: impl Fn(&T) -> Option<K>) -> Option<Handled<T>> {
        let lane = self.lanes.get_mut(to)?;
        let batch = lane.out.take()?;
        let sent = lane.queue.handle_sent(batch, delivery, now);
        let mut moved = Vec::new();
        if let Sent::Retry(_) = sent {
            let (items, until) = lane.queue.take_from_retry(|i| leader(i).is_some_and(|l| l != *to));
            moved = items.into_iter().filter_map(|i| Some((leader(&i)?, i, until))).collect();
        }
        lane.feed(now);
        if lane.is_idle() {
            self.lanes.remove(to);
        }
        let count = moved.len();
        for (leader, item, until) in moved {
            // Moved items carry no output count: it only shapes batches, and they are few.
            let _ = self.push(leader, item, 0, until, now);
        }
        Some(Handled { sent, moved: count })
    }

    /// When [`Reporters::poll_batch`] may next give a batch, if anything waits.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.lanes.values().filter(|l| l.out.is_none()).filter_map(|l| l.queue.poll_timeout()).min()
    }

    /// Whether nothing waits and nothing is out.
    pub fn is_idle(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Coordinators with reports waiting or out.
    pub fn coordinators(&self) -> usize {
        self.lanes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::reports::{REPORT_BACKOFF_MS, REPORT_LINGER_MS};
    use super::*;

    #[test]
    fn each_coordinator_has_its_own_batch_in_flight() {
        let mut r: Reporters<&str, u32> = Reporters::default();
        r.push("a", 1, 0, 9_000, 0).unwrap();
        r.push("b", 2, 0, 9_000, 0).unwrap();
        assert_eq!(r.poll_timeout(), Some(REPORT_LINGER_MS));
        assert!(r.poll_batch(1).is_none(), "lingering");
        assert_eq!(r.poll_batch(REPORT_LINGER_MS).map(|(k, i)| (k, i.to_vec())), Some(("a", vec![1])));
        assert_eq!(r.poll_batch(REPORT_LINGER_MS).map(|(k, i)| (k, i.to_vec())), Some(("b", vec![2])));
        assert!(r.poll_batch(REPORT_LINGER_MS).is_none());
        r.push("a", 3, 0, 9_000, 6).unwrap();
        assert!(r.poll_batch(100).is_none(), "one batch out per coordinator");
        let h = r.handle_sent(&"a", Delivery::Taken, 100, |_| None).unwrap();
        assert_eq!(h, Handled { sent: Sent::Taken, moved: 0 });
        assert_eq!(r.poll_timeout(), Some(100 + REPORT_LINGER_MS), "what queued meanwhile lingers from the answer");
        assert_eq!(r.poll_batch(100 + REPORT_LINGER_MS).map(|(k, i)| (k, i.to_vec())), Some(("a", vec![3])));
        r.handle_sent(&"a", Delivery::Taken, 101, |_| None);
        r.handle_sent(&"b", Delivery::Taken, 101, |_| None);
        assert!(r.is_idle(), "answered lanes are forgotten");
    }

    #[test]
    fn a_failed_batch_sends_its_moved_jobs_to_their_new_leader() {
        // Items are (job, n); job 1 is led by "b" now, job 2 still by "a".
        let mut r: Reporters<&str, (u8, u32)> = Reporters::default();
        r.push("a", (1, 10), 0, 5_000, 0).unwrap();
        r.push("a", (2, 20), 0, 6_000, 0).unwrap();
        r.poll_batch(REPORT_LINGER_MS).unwrap();
        let leader = |i: &(u8, u32)| Some(if i.0 == 1 { "b" } else { "a" });
        let h = r.handle_sent(&"a", Delivery::Unreachable, 10, leader).unwrap();
        assert_eq!(h, Handled { sent: Sent::Retry(10 + REPORT_BACKOFF_MS), moved: 1 });
        assert_eq!(r.poll_batch(10 + REPORT_LINGER_MS).map(|(k, i)| (k, i.to_vec())), Some(("b", vec![(1, 10)])));
        assert_eq!(r.poll_batch(10 + REPORT_BACKOFF_MS).map(|(k, i)| (k, i.to_vec())), Some(("a", vec![(2, 20)])));
        let refused = r.handle_sent(&"a", Delivery::Refused, 300, leader).unwrap();
        assert_eq!(refused.sent, Sent::Dropped(vec![(2, 20)]));
    }

    #[test]
    fn what_the_queue_cannot_take_waits_then_is_refused() {
        let mut r: Reporters<u8, usize> = Reporters::default();
        for i in 0..REPORT_QUEUE + REPORT_BACKLOG {
            r.push(1, i, 0, 9_000, 0).unwrap();
        }
        assert_eq!(r.push(1, 0, 0, 9_000, 0), Err(BacklogFull));
        let first = r.poll_batch(0).map(|(_, i)| i.to_vec()).unwrap();
        assert_eq!(first[0], 0, "in order");
        r.handle_sent(&1, Delivery::Taken, 1, |_| None);
        assert!(r.push(1, 0, 0, 9_000, 1).is_ok(), "a batch out made room");
    }
}
