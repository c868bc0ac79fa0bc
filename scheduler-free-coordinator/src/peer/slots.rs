//! The worker side of a peer: how many leased replicas it holds per sandbox slot (from how long
//! its replicas have run lately), when it asks which coordinator for more ([`Slots`], with the
//! [`Puller`]), and the slot loop's other rules (a lease too close to lapsing is handed back; a
//! failing peer pauses).

use std::borrow::Borrow;

use crate::pull::Puller;
use crate::records::JobAd;
use crate::{JobId, Millis};

/// What the mean run time starts at before any replica ran here (100 ms: few leases at first,
/// so a new peer does not hoard work it may run slowly).
pub const INITIAL_MEAN_RUN_US: u64 = 100_000;
/// Pause after a replica had to be abandoned, so a failing peer does not spin.
pub const ABANDON_PAUSE_MS: Millis = 250;
/// How often idle slots look again at announced jobs (backoffs expire).
pub const LOOK_AGAIN_MS: Millis = 200;
/// A peer holding replicas asks for more once this share of its capacity is free (1/4).
pub const ASK_SHARE: usize = 4;

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

/// A peer's slots as the protocol sees them: replicas held, the lease request in flight, the
/// pause after an abandoned replica, the [`Puller`] and the [`RunTimes`]. Sans-IO, one owner
/// (the real peer's slot loop, or the simulator).
///
/// Contract, once per pass of the slot loop, after anything that may free a slot:
/// 1. [`Slots::free`] says how many replicas to take; the driver leases up to that many from
///    the jobs this peer coordinates itself and reports them with [`Slots::took`];
/// 2. [`Slots::poll_ask`] (when [`Slots::may_ask`]), given the ads of the jobs it does not
///    lead, names a job and a count to ask that job's coordinator for (one request in flight
///    at a time); its answer comes back as [`Slots::handle_leased`] or
///    [`Slots::handle_lease_failed`];
/// 3. every replica ends with [`Slots::handle_done`] (after [`Slots::handle_ran`] if it ran);
/// 4. [`Slots::poll_timeout`] says when a pass must run again although nothing happened (a
///    pause or a backoff ends); `None` means only a new input can change the answer.
#[derive(Debug)]
pub struct Slots {
    /// Sandbox slots.
    slots: usize,
    run_times: RunTimes,
    /// Replicas leased and not done.
    held: usize,
    /// Replicas asked for in the lease request in flight.
    asking: Option<u32>,
    /// No new work before this (after an abandoned replica).
    paused_until: Millis,
    /// Whether the last [`Slots::poll_ask`] looked and saw an open job (a backoff may end).
    open: bool,
    /// The most new replicas the donor allows now (`None`: no limit beyond the capacity).
    allowance: Option<usize>,
    puller: Puller,
}

impl Slots {
    /// `slots` sandbox slots pulling with `puller`.
    pub fn new(slots: usize, puller: Puller) -> Slots {
        Slots {
            slots: slots.max(1),
            run_times: RunTimes::default(),
            held: 0,
            asking: None,
            paused_until: 0,
            open: false,
            allowance: None,
            puller,
        }
    }

    /// Replicas to take now: none while paused, else what the capacity leaves beside those held
    /// and asked for, and no more than the donor allows.
    pub fn free(&self, now: Millis) -> usize {
        if now < self.paused_until {
            return 0;
        }
        let asked = self.asking.unwrap_or(0) as usize;
        let free = self.run_times.capacity(self.slots).saturating_sub(self.held + asked);
        self.allowance.map_or(free, |a| free.min(a))
    }

    /// The donor's limit on new replicas, set by the driver before a pass: `Some(0)` while the
    /// donor's controls pause the peer (the machine is busy, outside donation hours, memory is
    /// taken), `None` for no limit beyond the capacity.
    pub fn set_allowance(&mut self, allowance: Option<usize>) {
        self.allowance = allowance;
    }

    /// `n` replicas were taken from this peer's own coordinator.
    pub fn took(&mut self, n: usize) {
        self.held += n;
    }

    /// Whether [`Slots::poll_ask`] may name a job now: no request is out, and either nothing is
    /// held or a batch's worth is free ([`ASK_SHARE`] of the capacity, or all the donor allows).
    /// Asking as soon as one replica is free made a peer of tiny tasks send a lease request per
    /// replica or two, each a round trip and a grant at its coordinator, for the same work. A
    /// driver checks it before gathering the ads.
    pub fn may_ask(&self, now: Millis) -> bool {
        let free = self.free(now);
        let batch = (self.run_times.capacity(self.slots) / ASK_SHARE).max(1).min(self.allowance.unwrap_or(usize::MAX).max(1));
        self.asking.is_none() && free > 0 && (self.held == 0 || free >= batch)
    }

    /// The job to ask a coordinator for replicas, and how many; `ads` are the announced jobs this
    /// peer does not lead itself. `None` while a request is out or nothing is free.
    pub fn poll_ask<A: Borrow<JobAd>>(&mut self, ads: &[A], now: Millis) -> Option<(JobId, u32)> {
        if !self.may_ask(now) {
            // Full or waiting for an answer: only that, not time, frees the slots.
            self.open = false;
            return None;
        }
        let free = self.free(now);
        self.open = ads.iter().any(|a| !a.borrow().done);
        self.puller.retain(|j| ads.iter().map(Borrow::borrow).any(|a: &JobAd| a.job == *j && !a.done));
        let (job, n) = self.puller.pick(ads, u32::try_from(free).unwrap_or(u32::MAX), now)?;
        self.asking = Some(n);
        Some((job, n))
    }

    /// The coordinator of `job` answered the request with `got` replicas (none: it is left alone
    /// for a while).
    pub fn handle_leased(&mut self, job: JobId, got: usize, now: Millis) {
        self.asking = None;
        if got == 0 {
            self.puller.empty(job, now);
        } else {
            self.puller.got(job);
        }
        self.held += got;
    }

    /// The request for `job` failed, or there was no live coordinator to send it to.
    pub fn handle_lease_failed(&mut self, job: JobId, now: Millis) {
        self.asking = None;
        self.puller.empty(job, now);
    }

    /// A replica ran for `took_us` microseconds.
    pub fn handle_ran(&mut self, took_us: u64) {
        self.run_times.note(took_us);
    }

    /// A replica is done: reported, handed back, or `abandoned` (it could not run here, so the
    /// peer takes no new work for [`ABANDON_PAUSE_MS`] rather than spin).
    pub fn handle_done(&mut self, abandoned: bool, now: Millis) {
        self.held = self.held.saturating_sub(1);
        if abandoned {
            self.paused_until = now + ABANDON_PAUSE_MS;
        }
    }

    /// When a pass of the slot loop must run again by itself: every [`LOOK_AGAIN_MS`] while
    /// paused, or while an open job may come out of its backoff and no request is out.
    pub fn poll_timeout(&self, now: Millis) -> Option<Millis> {
        let paused = now < self.paused_until;
        (paused || (self.open && self.asking.is_none())).then_some(now + LOOK_AGAIN_MS)
    }

    /// Replicas leased and not done.
    pub fn held(&self) -> usize {
        self.held
    }

    /// How long replicas run here.
    pub fn run_times(&self) -> RunTimes {
        self.run_times
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobId, PeerId, Policy};

    fn ad(job: u8, done: bool) -> JobAd {
        JobAd {
            job: JobId([job; 32]),
            origin: PeerId([1; 32]),
            announcer: PeerId([1; 32]),
            seq: 1,
            module: BlobId([0; 32]),
            task_count: 10,
            policy: Policy::default(),
            coordinators: vec![PeerId([1; 32])],
            submitted_at_ms: 0,
            done,
            content_digest: [0; 32],
            nonce: Vec::new(),
            origin_named: Vec::new(),
            origin_signature: Vec::new(),
            signature: vec![],
            chain: Vec::new(),
        }
    }

    #[test]
    fn slots_ask_once_at_a_time_and_back_off_an_empty_job() {
        let mut s = Slots::new(2, Puller::new());
        assert_eq!(s.free(0), 6, "two slots at 100 ms: three replicas each");
        s.took(2);
        let ads = [ad(7, false), ad(8, true)];
        assert_eq!(s.poll_ask(&ads, 0), Some((JobId([7; 32]), 4)), "only the open job, for what is free");
        assert_eq!(s.free(0), 0, "what is asked for counts");
        assert_eq!(s.poll_ask(&ads, 0), None, "one request at a time");
        assert_eq!(s.poll_timeout(0), None, "the answer, not time, comes next");
        s.handle_leased(JobId([7; 32]), 0, 10);
        assert_eq!(s.poll_ask(&ads, 10), None, "an empty job is left alone");
        assert_eq!(s.poll_timeout(10), Some(10 + LOOK_AGAIN_MS), "but looked at again");
        assert!(s.poll_ask(&ads, 10 + 200).is_some(), "after its backoff");
        s.handle_lease_failed(JobId([7; 32]), 300);
        assert_eq!(s.held(), 2);
    }

    #[test]
    fn a_peer_holding_replicas_asks_for_a_batch_not_for_each_one_freed() {
        // Tiny runs: 32 replicas per slot, two slots, so a batch is 16.
        let mut s = Slots::new(2, Puller::new());
        while s.run_times().mean_us() > 2_000 {
            s.handle_ran(500);
        }
        assert_eq!(s.run_times().capacity(2), 64);
        let ads = [ad(7, false)];
        assert_eq!(s.poll_ask(&ads, 0), Some((JobId([7; 32]), 64)), "nothing held: ask at once");
        s.handle_leased(JobId([7; 32]), 64, 1);
        for freed in 1..=16 {
            s.handle_done(false, 2);
            assert_eq!(s.may_ask(2), freed == 16, "{freed} freed");
        }
        assert_eq!(s.poll_ask(&ads, 2), Some((JobId([7; 32]), 16)));
        // A donor allowing fewer than a batch still gets them asked for.
        s.handle_leased(JobId([7; 32]), 16, 3);
        s.handle_done(false, 4);
        s.set_allowance(Some(1));
        assert!(s.may_ask(4));
    }

    #[test]
    fn the_donor_can_hold_the_slots_back() {
        let mut s = Slots::new(2, Puller::new());
        s.set_allowance(Some(0));
        assert_eq!(s.free(0), 0);
        assert_eq!(s.poll_ask(&[ad(7, false)], 0), None, "nothing asked while held back");
        s.set_allowance(Some(1));
        assert_eq!(s.free(0), 1);
        s.set_allowance(None);
        assert_eq!(s.free(0), 6);
    }

    #[test]
    fn an_abandoned_replica_pauses_the_slots() {
        let mut s = Slots::new(1, Puller::new());
        s.took(3);
        s.handle_done(false, 0);
        assert_eq!(s.free(0), 1);
        s.handle_done(true, 100);
        assert_eq!(s.free(100), 0, "paused");
        assert_eq!(s.poll_timeout(100), Some(100 + LOOK_AGAIN_MS));
        assert_eq!(s.free(100 + ABANDON_PAUSE_MS), 2);
        for _ in 0..64 {
            s.handle_ran(500);
        }
        assert_eq!(s.free(1_000), 32 - 1, "quick runs: more per slot");
    }


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
