//! When each lease a coordinator gave runs out, soonest first. A lease that ends early (its
//! report came, it was released, its task was decided) leaves its entry behind, to be skipped
//! when its time comes; once stale entries outnumber the rest they are swept, so the heap holds
//! about the live leases, not every lease ever given (80 bytes each: 21 MB at each of the three
//! coordinators of `spare sim --peers 10000`, held until the job's last lease would expire).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::{Millis, PeerId, TaskId};

/// Entries below which no sweep is made: sweeping a small heap saves nothing.
const SWEEP_FLOOR: usize = 1_024;

/// Lease expiries, soonest first.
#[derive(Debug, Default)]
pub(crate) struct Expiries {
    heap: BinaryHeap<Reverse<(Millis, TaskId, PeerId)>>,
    /// Entries the last sweep kept: the next comes once the heap is twice that and the floor,
    /// so each entry is swept a bounded number of times however many leases are given.
    kept: usize,
}

impl Expiries {
    /// Notes `peer`'s lease on `task` expiring `at`.
    pub fn push(&mut self, at: Millis, task: TaskId, peer: PeerId) {
        self.heap.push(Reverse((at, task, peer)));
    }

    /// Whether enough entries were added since the last sweep to make one worth it.
    pub fn due_for_sweep(&self) -> bool {
        self.heap.len() > 2 * self.kept + SWEEP_FLOOR
    }

    /// Keeps only the entries `live` says still name a lease.
    pub fn sweep(&mut self, live: impl Fn(Millis, &TaskId, &PeerId) -> bool) {
        self.heap.retain(|Reverse((at, task, peer))| live(*at, task, peer));
        self.kept = self.heap.len();
    }

    /// The soonest entry, if it is due by `now`, taken out.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, TaskId, PeerId)> {
        let Reverse(next) = self.heap.peek().copied()?;
        if next.0 > now {
            return None;
        }
        self.heap.pop();
        Some(next)
    }

    /// When the soonest entry is due.
    pub fn next(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Entries held, live or stale.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobId;

    fn task(i: u32) -> TaskId {
        TaskId { job: JobId([1; 32]), index: i }
    }

    #[test]
    fn entries_come_out_soonest_first_and_only_when_due() {
        let mut e = Expiries::default();
        let p = PeerId([2; 32]);
        e.push(30, task(0), p);
        e.push(10, task(1), p);
        e.push(20, task(2), p);
        assert_eq!(e.next(), Some(10));
        assert_eq!(e.pop_due(9), None);
        assert_eq!(e.pop_due(25).map(|x| x.1.index), Some(1));
        assert_eq!(e.pop_due(25).map(|x| x.1.index), Some(2));
        assert_eq!(e.pop_due(25), None);
        assert_eq!(e.next(), Some(30));
    }

    #[test]
    fn a_sweep_keeps_the_live_and_the_heap_stays_near_their_number() {
        let mut e = Expiries::default();
        let p = PeerId([2; 32]);
        // 100,000 leases given one after another, each ended before the next: only the newest
        // ten are live at any time.
        for i in 0..100_000u32 {
            e.push(Millis::from(i), task(i), p);
            if e.due_for_sweep() {
                e.sweep(|_, t, _| t.index + 10 > i);
            }
        }
        assert!(e.len() <= 2 * 10 + SWEEP_FLOOR + 1, "{} entries held", e.len());
        e.sweep(|_, t, _| t.index + 10 >= 100_000);
        assert_eq!(e.len(), 10);
        assert_eq!(e.next(), Some(99_990), "the live ones stay, in order");
    }
}
