//! Back-pressure: bounds on what one submitter or one peer can make this peer hold or do, so a
//! flood meets `RESOURCE_EXHAUSTED` instead of growing memory. Rates are token buckets keyed by
//! the sender (a PeerId for peer traffic, an IP address for submitters); the bucket table itself
//! is bounded.

use std::hash::Hash;
use std::time::Instant;

use dashmap::DashMap;

/// The limits a peer enforces; every one is configurable on `spare peer`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// Submissions being checked and stored at once; more wait for nobody: they are refused.
    pub max_pending_submits: usize,
    /// Jobs one submitter (by IP address) may have running here at once.
    pub max_jobs_per_submitter: usize,
    /// Bytes of inputs (inline, and the blobs named) of one submitter key's unfinished jobs held
    /// here at once.
    pub max_input_bytes_per_submitter: u64,
    /// Unfinished jobs this peer's coordinator holds at once (origin or backup); ended jobs do
    /// not count.
    pub max_unfinished_jobs: usize,
    /// Tasks of all jobs held here (coordinated or backed up) at once.
    pub max_held_tasks: u64,
    /// Live leases one peer may hold from this peer's coordinator.
    pub max_leases_per_peer: usize,
    /// Requests per second one peer may make (gossip, leases, reports, replication) on average…
    pub peer_rate: f64,
    /// …and in a burst.
    pub peer_burst: f64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_pending_submits: 16,
            max_jobs_per_submitter: 256,
            max_input_bytes_per_submitter: 2 << 30,
            max_unfinished_jobs: 10_000,
            max_held_tasks: 20_000_000,
            max_leases_per_peer: 4096,
            peer_rate: 1_000.0,
            peer_burst: 4_000.0,
        }
    }
}

/// What one submitter key's unfinished jobs hold here, against its bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Jobs running.
    pub jobs: usize,
    /// Bytes of their inputs.
    pub input_bytes: u64,
}

/// Gives back one job of `key` holding `input_bytes`; a key that holds nothing more is dropped.
pub fn give_back(held: &mut std::collections::HashMap<spare_protocol::PeerId, Held>, key: spare_protocol::PeerId, input_bytes: u64) {
    if let Some(h) = held.get_mut(&key) {
        h.jobs = h.jobs.saturating_sub(1);
        h.input_bytes = h.input_bytes.saturating_sub(input_bytes);
        if h.jobs == 0 {
            held.remove(&key);
        }
    }
}

/// Most senders tracked at once; past it the table is cleared (a flood of fresh identities
/// gets fresh buckets, but cannot grow memory).
const MAX_BUCKETS: usize = 65_536;

/// Token buckets, one per sender.
pub struct RateLimiter<K: Eq + Hash> {
    rate: f64,
    burst: f64,
    buckets: DashMap<K, (f64, Instant)>,
}

impl<K: Eq + Hash> RateLimiter<K> {
    /// `rate` tokens a second, up to `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter { rate, burst: burst.max(1.0), buckets: DashMap::new() }
    }

    /// Takes one token for `key`; false when its bucket is empty.
    pub fn allow(&self, key: K) -> bool {
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets.clear();
        }
        let now = Instant::now();
        let mut entry = self.buckets.entry(key).or_insert((self.burst, now));
        let (tokens, at) = *entry;
        let refilled = (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst);
        if refilled >= 1.0 {
            *entry = (refilled - 1.0, now);
            true
        } else {
            *entry = (refilled, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let r = RateLimiter::new(10.0, 5.0);
        let passed = (0..20).filter(|_| r.allow(1u8)).count();
        assert_eq!(passed, 5, "the burst, then nothing until tokens refill");
        assert!(r.allow(2u8), "other senders have their own bucket");
    }
}
