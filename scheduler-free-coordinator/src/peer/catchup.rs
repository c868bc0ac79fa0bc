//! Catch-ups: bringing a backup coordinator up to date with a whole adoption where the ordered
//! replication stream cannot: a batch the backup did not take (the stream moves on without it),
//! a verdict no attestation carries (a task failed by deadline misses), a cancellation, or a
//! takeover (the backups kept heard the dead leader's stream separately). Requests for one job
//! and one backup coalesce while one is pending, and wait a moment so that a burst of failures
//! and verdicts shares one adoption.

use std::collections::BTreeMap;

use crate::{JobId, Millis, PeerId};

/// How long a catch-up waits before it is sent.
pub const CATCH_UP_AFTER_MS: Millis = 2_000;

/// Catch-ups waiting to be sent.
#[derive(Debug, Default)]
pub struct CatchUps {
    due: BTreeMap<(JobId, PeerId), Millis>,
}

impl CatchUps {
    /// Asks for `backup` to get the whole of `job` soon; false when one is already pending.
    pub fn request(&mut self, job: JobId, backup: PeerId, now: Millis) -> bool {
        if self.due.contains_key(&(job, backup)) {
            return false;
        }
        self.due.insert((job, backup), now + CATCH_UP_AFTER_MS);
        true
    }

    /// A catch-up that is due now. From here on a new reason needs a new request. The driver
    /// sends it if this peer still leads the job and `backup` is still one of its coordinators.
    pub fn poll_due(&mut self, now: Millis) -> Option<(JobId, PeerId)> {
        let (&key, _) = self.due.iter().find(|(_, at)| **at <= now)?;
        self.due.remove(&key);
        Some(key)
    }

    /// When the next catch-up is due.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.due.values().min().copied()
    }

    /// Catch-ups pending.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_coalesce_until_sent() {
        let (job, b) = (JobId([1; 32]), PeerId([2; 32]));
        let mut c = CatchUps::default();
        assert!(c.request(job, b, 100));
        assert!(!c.request(job, b, 900), "coalesced");
        assert_eq!(c.poll_timeout(), Some(100 + CATCH_UP_AFTER_MS));
        assert_eq!(c.poll_due(2_099), None);
        assert_eq!(c.poll_due(2_100), Some((job, b)));
        assert!(c.request(job, b, 2_100), "a new reason after it went");
    }
}
