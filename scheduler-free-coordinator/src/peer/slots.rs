//! Replica sizing: how many leased replicas a peer holds per sandbox slot, from how long its
//! replicas have run lately, and the slot loop's other rules (a lease too close to lapsing is
//! handed back; a failing peer pauses).

use crate::Millis;

/// What the mean run time starts at before any replica ran here (100 ms: few leases at first,
/// so a new peer does not hoard work it may run slowly).
pub const INITIAL_MEAN_RUN_US: u64 = 100_000;
/// Pause after a replica had to be abandoned, so a failing peer does not spin.
pub const ABANDON_PAUSE_MS: Millis = 250;
/// How often idle slots look again at announced jobs (backoffs expire).
pub const LOOK_AGAIN_MS: Millis = 200;

/// Replicas held per slot, counting the one running and the next at hand: many when replicas
/// are quick (a lease round trip must not leave the slot idle), few when they are slow (queued
/// leases keep other peers from tasks they could run now).
pub fn leases_per_slot(mean_run_us: u64) -> usize {
    match mean_run_us {
        0..=2_000 => 32,
        2_001..=20_000 => 8,
        20_001..=200_000 => 3,
        _ => 2,
    }
}

/// A moving average of run times with weight 1/8: `mean` after one more run of `took_us`.
pub fn fold_run_time(mean_us: u64, took_us: u64) -> u64 {
    mean_us - mean_us / 8 + took_us / 8
}

/// Whether a replica whose lease lapses at `expires_at` can no longer finish in time if it
/// starts `now` with a wall deadline of `timeout_ms`: it is handed back unblamed instead.
pub fn is_stale(now: Millis, timeout_ms: u64, expires_at: Millis) -> bool {
    now.saturating_add(timeout_ms) > expires_at
}

/// How long this peer's replicas run, as a moving average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunTimes {
    mean_us: u64,
}

impl Default for RunTimes {
    fn default() -> RunTimes {
        RunTimes { mean_us: INITIAL_MEAN_RUN_US }
    }
}

impl RunTimes {
    /// Folds one run's duration in.
    pub fn note(&mut self, took_us: u64) {
        self.mean_us = fold_run_time(self.mean_us, took_us);
    }

    /// The mean run time, in microseconds.
    pub fn mean_us(&self) -> u64 {
        self.mean_us
    }

    /// Replicas this peer may hold with `slots` sandbox slots.
    pub fn capacity(&self, slots: usize) -> usize {
        slots * leases_per_slot(self.mean_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_runs_hold_many_replicas_per_slot_and_slow_ones_few() {
        let mut t = RunTimes::default();
        assert_eq!(t.capacity(2), 6, "100 ms at first: 3 per slot");
        for _ in 0..64 {
            t.note(500);
        }
        assert!(t.mean_us() <= 2_000, "converges on quick runs: {}", t.mean_us());
        assert_eq!(t.capacity(2), 64);
        for _ in 0..64 {
            t.note(1_000_000);
        }
        assert_eq!(t.capacity(2), 4, "slow runs: 2 per slot");
    }

    #[test]
    fn a_lease_too_close_to_lapsing_is_stale() {
        assert!(!is_stale(1_000, 500, 1_500));
        assert!(is_stale(1_001, 500, 1_500));
        assert!(!is_stale(u64::MAX - 1, 0, u64::MAX), "no overflow");
    }
}
