//! The attestations of this peer's replicas for its own coordinator, held unsigned until they
//! are handed over together under one signature (as a report batch is), and the rule for when.
//!
//! Runs end one at a time, so handing each over as it ended signed each alone, and the own
//! coordinator's backups then checked each signature alone (5.6 % and most of 14 % of a busy
//! peer's CPU). An attestation that ends while other runs are still going waits for them, a
//! little; a lone run, or the last of a burst, goes at once, so a small job waits for nothing.

use std::time::{Duration, Instant};

use spare_protocol::Attestation;

use super::core::Detail;

/// Most attestations held: a batch this full goes at once.
pub(super) const OWN_BATCH: usize = 32;
/// Longest the first attestation held waits.
pub(super) const OWN_WAIT: Duration = Duration::from_millis(2);

/// One ended run for the own coordinator: its attestation (unsigned), output and detail.
pub(super) type OwnItem = (Attestation, Vec<u8>, Detail);

/// The attestations held, and since when the first of them waits.
#[derive(Default)]
pub(super) struct OwnBatch {
    items: Vec<OwnItem>,
    since: Option<Instant>,
}

impl OwnBatch {
    /// Holds one more.
    pub(super) fn push(&mut self, item: OwnItem) {
        self.items.push(item);
    }

    /// What is held, if it is to be handed over now: when it is full, when no other run is
    /// going (`others_running` false: nothing is coming to join it), when the peer is stopping,
    /// or when the first has waited [`OWN_WAIT`]. Otherwise starts the wait's clock at `now`.
    pub(super) fn poll_due(&mut self, others_running: bool, stopping: bool, now: Instant) -> Option<Vec<OwnItem>> {
        if self.items.is_empty() {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        let due = self.items.len() >= OWN_BATCH || !others_running || stopping || now.duration_since(since) >= OWN_WAIT;
        if !due {
            return None;
        }
        self.since = None;
        Some(std::mem::take(&mut self.items))
    }

    /// When what is held is due at the latest (`None`: nothing is held).
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + OWN_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spare_protocol::{BlobId, JobId, Outcome, PeerId, ResultKey, TaskId};

    fn item(index: u32) -> OwnItem {
        let att = Attestation {
            task: TaskId { job: JobId([1; 32]), index },
            peer: PeerId([2; 32]),
            result: ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(b"") },
            fuel_used: 0,
            signature: Vec::new(),
        };
        (att, Vec::new(), Detail::default())
    }

    fn indexes(items: &[OwnItem]) -> Vec<u32> {
        items.iter().map(|(a, ..)| a.task.index).collect()
    }

    #[test]
    fn a_lone_run_goes_at_once() {
        let (mut b, t0) = (OwnBatch::default(), Instant::now());
        assert!(b.poll_due(false, false, t0).is_none(), "nothing held, nothing due");
        b.push(item(0));
        assert_eq!(b.poll_due(false, false, t0).as_deref().map(indexes), Some(vec![0]));
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn while_others_run_it_waits_until_full_or_its_time() {
        let (mut b, t0) = (OwnBatch::default(), Instant::now());
        b.push(item(0));
        assert!(b.poll_due(true, false, t0).is_none());
        assert_eq!(b.deadline(), Some(t0 + OWN_WAIT));
        b.push(item(1));
        assert!(b.poll_due(true, false, t0 + OWN_WAIT / 2).is_none(), "the clock runs from the first");
        assert_eq!(b.deadline(), Some(t0 + OWN_WAIT));
        assert_eq!(b.poll_due(true, false, t0 + OWN_WAIT).as_deref().map(indexes), Some(vec![0, 1]));

        let t1 = t0 + OWN_WAIT * 3;
        for i in 0..OWN_BATCH as u32 - 1 {
            b.push(item(i));
            assert!(b.poll_due(true, false, t1).is_none());
        }
        b.push(item(99));
        assert_eq!(b.poll_due(true, false, t1).map(|v| v.len()), Some(OWN_BATCH), "a full batch goes at once");
    }

    #[test]
    fn stopping_hands_over_what_is_held() {
        let (mut b, t0) = (OwnBatch::default(), Instant::now());
        b.push(item(5));
        assert!(b.poll_due(true, false, t0).is_none());
        assert_eq!(b.poll_due(true, true, t0).as_deref().map(indexes), Some(vec![5]));
    }
}
