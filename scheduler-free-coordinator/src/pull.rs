//! Pulled work: an idle peer chooses, by itself, which announced job to ask for replicas next.
//! No scheduler pushes anything. The choice is fair: highest priority first; among jobs of equal
//! priority, submitters (origins) take turns, and each submitter's oldest job goes first. A job
//! whose coordinator had nothing to give is left alone for a while (exponential backoff), so idle
//! peers do not hammer coordinators of jobs that are fully leased.

use std::borrow::Borrow;
use std::collections::HashMap;

use crate::records::JobAd;
use crate::{JobId, Millis};

/// First pause after an empty lease reply.
const BACKOFF_MIN_MS: u64 = 200;
/// Longest pause.
const BACKOFF_MAX_MS: u64 = 5_000;
/// Most replicas asked for in one lease request.
pub const MAX_BATCH: u32 = 64;

/// The pulling side's memory: backoffs per job and whose turn it is.
#[derive(Debug)]
pub struct Puller {
    /// job -> (not before, current pause)
    backoff: HashMap<JobId, (Millis, u64)>,
    turn: usize,
    /// Jobs asking for more memory per task than this peer gives are not pulled.
    memory_cap: u64,
}

impl Default for Puller {
    fn default() -> Self {
        Puller { backoff: HashMap::new(), turn: 0, memory_cap: u64::MAX }
    }
}

impl Puller {
    /// A puller with no history.
    pub fn new() -> Puller {
        Puller::default()
    }

    /// Skips jobs whose tasks may use more memory than `bytes`.
    pub fn with_memory_cap(mut self, bytes: u64) -> Puller {
        self.memory_cap = bytes;
        self
    }

    /// The job to ask next for up to `free` replicas, and how many to ask for; `None` when no
    /// announced job wants work now.
    pub fn pick<A: Borrow<JobAd>>(&mut self, ads: &[A], free: u32, now: Millis) -> Option<(JobId, u32)> {
        if free == 0 {
            return None;
        }
        let mut open: Vec<&JobAd> = ads
            .iter()
            .map(Borrow::borrow)
            .filter(|a| !a.done && !a.coordinators.is_empty() && a.policy.limits.memory_bytes <= self.memory_cap)
            .filter(|a| self.backoff.get(&a.job).is_none_or(|(until, _)| *until <= now))
            .collect();
        let top = open.iter().map(|a| a.policy.priority).max()?;
        open.retain(|a| a.policy.priority == top);
        // One candidate per origin: its oldest job.
        open.sort_by_key(|a| (a.origin, a.submitted_at_ms, a.job));
        let mut firsts: Vec<&JobAd> = Vec::new();
        for a in open {
            if firsts.last().is_none_or(|f: &&JobAd| f.origin != a.origin) {
                firsts.push(a);
            }
        }
        self.turn = self.turn.wrapping_add(1);
        let ad = firsts[self.turn % firsts.len()];
        Some((ad.job, free.min(MAX_BATCH)))
    }

    /// The coordinator gave nothing: leave the job alone for a while, longer each time.
    pub fn empty(&mut self, job: JobId, now: Millis) {
        let pause = self.backoff.get(&job).map_or(BACKOFF_MIN_MS, |(_, p)| (p * 2).min(BACKOFF_MAX_MS));
        self.backoff.insert(job, (now + pause, pause));
    }

    /// The coordinator gave work: ask again freely.
    pub fn got(&mut self, job: JobId) {
        self.backoff.remove(&job);
    }

    /// Forgets the backoffs of jobs no longer announced as open, so memory stays bounded.
    pub fn retain(&mut self, open: impl Fn(&JobId) -> bool) {
        self.backoff.retain(|j, _| open(j));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobId, PeerId, Policy};

    fn ad(job: u8, origin: u8, at: u64, priority: i32) -> JobAd {
        JobAd {
            job: JobId([job; 32]),
            origin: PeerId([origin; 32]),
            announcer: PeerId([origin; 32]),
            seq: 1,
            module: BlobId([0; 32]),
            task_count: 1,
            policy: Policy { priority, ..Policy::default() },
            coordinators: vec![PeerId([origin; 32])],
            submitted_at_ms: at,
            done: false,
            content_digest: [0; 32],
            nonce: Vec::new(),
            origin_named: Vec::new(),
            origin_signature: Vec::new(),
            signature: vec![],
            chain: Vec::new(),
        }
    }

    #[test]
    fn submitters_take_turns_and_priority_comes_first() {
        let mut p = Puller::new();
        // Origin 1 has two jobs, origin 2 one: turns alternate between origins, and origin 1's
        // older job goes first.
        let ads = vec![ad(1, 1, 10, 0), ad(2, 1, 5, 0), ad(3, 2, 20, 0)];
        let picks: Vec<JobId> = (0..4).filter_map(|_| p.pick(&ads, 4, 0).map(|(j, _)| j)).collect();
        assert_eq!(picks, vec![JobId([3; 32]), JobId([2; 32]), JobId([3; 32]), JobId([2; 32])]);
        let mut urgent = ads.clone();
        urgent.push(ad(4, 3, 30, 5));
        assert_eq!(p.pick(&urgent, 4, 0), Some((JobId([4; 32]), 4)));
        assert_eq!(p.pick(&urgent, 500, 0).map(|(_, n)| n), Some(MAX_BATCH));
        assert_eq!(p.pick(&urgent, 0, 0), None);
    }

    #[test]
    fn empty_replies_back_off_and_work_resets() {
        let mut p = Puller::new();
        let ads = vec![ad(1, 1, 0, 0)];
        p.empty(JobId([1; 32]), 0);
        assert_eq!(p.pick(&ads, 1, 100), None);
        assert!(p.pick(&ads, 1, BACKOFF_MIN_MS).is_some());
        p.empty(JobId([1; 32]), 1000);
        assert_eq!(p.pick(&ads, 1, 1000 + BACKOFF_MIN_MS), None, "the pause doubles");
        p.got(JobId([1; 32]));
        assert!(p.pick(&ads, 1, 1000).is_some());
        let mut done = ads.clone();
        done[0].done = true;
        assert_eq!(p.pick(&done, 1, 10_000), None);
        let mut big = ads.clone();
        big[0].policy.limits.memory_bytes = 8 << 30;
        assert_eq!(Puller::new().with_memory_cap(4 << 30).pick(&big, 1, 0), None, "too much memory");
    }
}
