//! Deterministic tests of [`Work`]: one worker in virtual time, every answer handed in by hand,
//! no sockets.

use super::{NoOwn, Notice, Own, ReportItem, Replica, Transmit, Work};
use crate::peer::reports::{Delivery, REPORT_BACKOFF_MS};
use crate::records::JobAd;
use crate::{Attestation, BlobId, Detail, JobId, Millis, Outcome, PeerId, Policy, Release, ResultKey, TaskId};

/// The worker.
const W: PeerId = PeerId([21; 32]);
/// The job's coordinators, the leader first.
const C1: PeerId = PeerId([1; 32]);
const C2: PeerId = PeerId([2; 32]);
const JOB: JobId = JobId([5; 32]);
const MODULE: BlobId = BlobId([3; 32]);
/// The job's wall deadline per replica.
const TIMEOUT_MS: u64 = 1_000;
/// What a lease has left when granted: plenty.
const LEASE_MS: u64 = 60_000;
/// Most timer steps a test runs before it is taken for a loop.
const MAX_STEPS: usize = 10_000;

fn ad(seq: u64, coordinators: Vec<PeerId>) -> JobAd {
    JobAd {
        job: JOB,
        origin: C1,
        announcer: coordinators[0],
        seq,
        module: MODULE,
        task_count: 1_000,
        policy: Policy::default(),
        coordinators,
        submitted_at_ms: 0,
        done: false,
        content_digest: [0; 32],
        nonce: Vec::new(),
        origin_named: Vec::new(),
        origin_signature: Vec::new(),
        chain: Vec::new(),
        signature: Vec::new(),
    }
}

fn attest(task: TaskId) -> ReportItem {
    let output = task.index.to_le_bytes().to_vec();
    let result = ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(&output) };
    ReportItem::Attest(Attestation { task, peer: W, result, fuel_used: 0, signature: vec![1] }, output, Detail::default())
}

fn is_lease(t: &Transmit) -> bool {
    matches!(t, Transmit::Lease { .. })
}

fn is_report(t: &Transmit) -> bool {
    matches!(t, Transmit::Report { .. })
}

/// One worker, the clock, and everything it emitted not yet looked at.
struct Rig {
    now: Millis,
    work: Work,
    sent: Vec<Transmit>,
    notices: Vec<Notice>,
}

impl Rig {
    /// A worker with one sandbox slot that heard the job's ad naming `coordinators`, all alive.
    fn new(coordinators: Vec<PeerId>) -> Rig {
        let mut rig = Rig { now: 0, work: Work::new(W, 1), sent: Vec::new(), notices: Vec::new() };
        rig.work.handle_ad(ad(1, coordinators), |_| true, 0);
        rig.drain();
        rig
    }

    fn drain(&mut self) {
        while let Some(t) = self.work.poll_transmit() {
            self.sent.push(t);
        }
        while let Some(n) = self.work.poll_notice() {
            self.notices.push(n);
        }
    }

    /// Runs every timer due up to `until`, then sets the clock there.
    fn run_until(&mut self, until: Millis, own: &mut dyn Own) {
        for _ in 0..MAX_STEPS {
            match self.work.poll_timeout() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.work.handle_timeout(self.now, own);
                    self.drain();
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
        panic!("timers never settled");
    }

    /// Runs timers until a call `wanted` picks goes out (within `within` ms), and takes it.
    fn next(&mut self, wanted: fn(&Transmit) -> bool, within: Millis) -> Transmit {
        let until = self.now + within;
        for _ in 0..MAX_STEPS {
            if let Some(i) = self.sent.iter().position(wanted) {
                return self.sent.remove(i);
            }
            let at = self.work.poll_timeout().filter(|at| *at <= until).expect("the call goes out in time");
            self.now = self.now.max(at);
            self.work.handle_timeout(self.now, &mut NoOwn);
            self.drain();
        }
        panic!("no call went out");
    }

    /// Takes the lease request the worker sends, answers it with `tasks` (each lease with
    /// `left` ms to run), and hands over the module once.
    fn lease(&mut self, tasks: &[u32], left: u64) -> (PeerId, u32) {
        let Transmit::Lease { to, job, max } = self.next(is_lease, 1_000) else { panic!("a lease request first") };
        assert_eq!(job, JOB);
        let granted: Vec<(u32, u64)> = tasks.iter().map(|&i| (i, left)).collect();
        self.work.handle_leased(to, JOB, MODULE, TIMEOUT_MS, &granted, self.now, self.now);
        self.drain();
        if let Some(i) = self.sent.iter().position(|t| matches!(t, Transmit::Fetch { .. })) {
            self.sent.remove(i);
            self.work.handle_fetched(MODULE);
            self.drain();
        }
        (to, max)
    }

    /// Takes the replicas the worker asked to run.
    fn runs(&mut self) -> Vec<Replica> {
        let (runs, rest) = std::mem::take(&mut self.notices).into_iter().partition(|n| matches!(n, Notice::Run(_)));
        self.notices = rest;
        runs.into_iter().filter_map(|n| if let Notice::Run(r) = n { Some(r) } else { None }).collect()
    }

    /// Each replica asked to run runs `took_ms` and attests.
    fn run_all(&mut self, took_ms: u64) {
        for r in self.runs() {
            self.now += took_ms;
            self.work.handle_ran(r.task, took_ms * 1_000, attest(r.task), self.now);
            self.drain();
        }
    }

    fn dropped(&self) -> usize {
        self.notices.iter().filter(|n| matches!(n, Notice::ReportDropped)).count()
    }
}

#[test]
fn report_retries_across_a_short_cut_reach_the_coordinator() {
    let mut rig = Rig::new(vec![C1]);
    let (to, _) = rig.lease(&[7], LEASE_MS);
    assert_eq!(to, C1);
    rig.run_all(100);
    // The cut: two sends get no answer.
    for _ in 0..2 {
        let Transmit::Report { to, items } = rig.next(is_report, 5 * REPORT_BACKOFF_MS) else { panic!("a report batch") };
        assert_eq!((to, items.len()), (C1, 1));
        rig.work.handle_report_sent(C1, Delivery::Unreachable, rig.now);
        rig.drain();
    }
    // The cut heals: the retry gets through, with the attestation.
    let Transmit::Report { to, items } = rig.next(is_report, 10 * REPORT_BACKOFF_MS) else { panic!("a retry") };
    assert_eq!(to, C1);
    assert!(matches!(&items[..], [ReportItem::Attest(a, ..)] if a.task == TaskId { job: JOB, index: 7 }));
    rig.work.handle_report_sent(C1, Delivery::Taken, rig.now);
    rig.drain();
    assert_eq!(rig.dropped(), 0);
    rig.run_until(rig.now + 10_000, &mut NoOwn);
    assert!(!rig.sent.iter().any(|t| matches!(t, Transmit::Report { .. })), "nothing left to report");
}

/// How many replicas the worker asks for once `runs` replicas took `took_ms` each.
fn asked_after(runs: u32, took_ms: u64) -> u32 {
    let mut rig = Rig::new(vec![C1]);
    let mut max = 0;
    for i in 0..runs {
        (_, max) = rig.lease(&[i], LEASE_MS);
        rig.run_all(took_ms);
        rig.next(is_report, 1_000);
        rig.work.handle_report_sent(C1, Delivery::Taken, rig.now);
        rig.drain();
    }
    max.max(rig.lease(&[], LEASE_MS).1)
}

#[test]
fn replica_sizing_by_run_time() {
    // A new peer holds few; quick replicas earn many leases per slot, slow ones few.
    let fresh = asked_after(0, 0);
    let quick = asked_after(60, 1);
    let slow = asked_after(60, 2_000);
    assert_eq!(fresh, 3, "a new peer holds few");
    assert_eq!(quick, 32, "quick replicas: many per slot");
    assert_eq!(slow, 2, "slow replicas: the one running and the next");
}

#[test]
fn reports_follow_a_new_leader_after_a_takeover() {
    let mut rig = Rig::new(vec![C1, C2]);
    let (to, _) = rig.lease(&[3], LEASE_MS);
    assert_eq!(to, C1);
    rig.run_all(100);
    let Transmit::Report { to, .. } = rig.next(is_report, 1_000) else { panic!("a report batch") };
    assert_eq!(to, C1);
    // The leader dies; its backup takes over and names itself first.
    rig.work.handle_peer(C1, false, rig.now);
    rig.work.handle_ad(ad(2, vec![C2, C1]), |c| *c != C1, rig.now);
    rig.drain();
    rig.work.handle_report_sent(C1, Delivery::Unreachable, rig.now);
    rig.drain();
    let Transmit::Report { to, items } = rig.next(is_report, 5_000) else { panic!("the report goes out again") };
    assert_eq!(to, C2, "the report follows the new leader");
    assert!(matches!(&items[..], [ReportItem::Attest(a, ..)] if a.task.index == 3));
    // New leases come from the new leader too, once the request to the dead one failed.
    assert!(matches!(rig.next(is_lease, 0), Transmit::Lease { to: C1, .. }));
    rig.work.handle_lease_failed(JOB, rig.now);
    rig.drain();
    assert!(matches!(rig.next(is_lease, 5_000), Transmit::Lease { to: C2, .. }));
    rig.work.handle_report_sent(C2, Delivery::Taken, rig.now);
    rig.drain();
    assert_eq!(rig.dropped(), 0);
}

#[test]
fn a_stale_lease_is_handed_back_unblamed() {
    let mut rig = Rig::new(vec![C1]);
    // Less time left than the replica's deadline: it could not finish in time.
    rig.lease(&[9], TIMEOUT_MS / 2);
    assert!(rig.runs().is_empty(), "a stale replica does not run");
    assert!(rig.notices.iter().any(|n| matches!(n, Notice::Stale)));
    let Transmit::Report { to, items } = rig.next(is_report, 1_000) else { panic!("the hand-back is reported") };
    assert_eq!(to, C1);
    assert!(matches!(&items[..], [ReportItem::Release(t, Release::Abandoned)] if t.index == 9), "handed back, not blamed: {items:?}");
    // No pause: the worker asks again at once.
    assert_eq!(rig.work.held(), 0);
    let at = rig.now;
    assert!(matches!(rig.next(is_lease, 0), Transmit::Lease { to: C1, .. }));
    assert_eq!(rig.now, at);
}

/// A peer that leads the job itself: its slots lease from its own coordinator.
struct Leads(u32);

impl Own for Leads {
    fn serves(&self, job: &JobId) -> bool {
        *job == JOB
    }
    fn lease(&mut self, max: usize, now: Millis) -> Vec<Replica> {
        let n = (max as u32).min(self.0);
        self.0 -= n;
        (0..n)
            .map(|index| Replica { task: TaskId { job: JOB, index }, coordinator: None, expires_at: now + LEASE_MS, timeout_ms: TIMEOUT_MS, module: MODULE })
            .collect()
    }
}

#[test]
fn own_replicas_go_to_the_own_coordinator_without_asking() {
    let mut rig = Rig::new(vec![W, C1]);
    let mut own = Leads(2);
    rig.run_until(1, &mut own);
    assert!(!rig.sent.iter().any(|t| matches!(t, Transmit::Lease { .. } | Transmit::Fetch { .. })), "no call for its own job");
    rig.run_all(10);
    rig.run_all(10);
    let owns = rig.notices.iter().filter(|n| matches!(n, Notice::Own(ReportItem::Attest(..)))).count();
    assert_eq!(owns, 2);
}

#[test]
fn a_paused_donor_asks_for_nothing_until_it_resumes() {
    let mut rig = Rig::new(vec![C1]);
    rig.work.set_allowance(Some(0), 0);
    rig.run_until(5_000, &mut NoOwn);
    assert!(!rig.sent.iter().any(is_lease), "paused: no lease request");
    rig.work.set_allowance(None, rig.now);
    assert!(matches!(rig.next(is_lease, 0), Transmit::Lease { to: C1, max: 3, .. }));
}

#[test]
fn a_module_is_fetched_once_and_a_failed_fetch_hands_every_replica_back() {
    let mut rig = Rig::new(vec![C1]);
    let Transmit::Lease { max, .. } = rig.next(is_lease, 1_000) else { panic!("a lease request first") };
    let granted: Vec<(u32, u64)> = (0..max).map(|i| (i, LEASE_MS)).collect();
    rig.work.handle_leased(C1, JOB, MODULE, TIMEOUT_MS, &granted, rig.now, rig.now);
    rig.drain();
    let fetches = rig.sent.iter().filter(|t| matches!(t, Transmit::Fetch { from: C1, module: MODULE })).count();
    assert_eq!(fetches, 1, "one fetch for {max} replicas");
    assert!(rig.runs().is_empty(), "nothing runs before its module is here");
    rig.work.handle_fetch_failed(MODULE, rig.now);
    rig.drain();
    assert_eq!(rig.work.held(), 0);
    let Transmit::Report { items, .. } = rig.next(is_report, 1_000) else { panic!("the hand-backs are reported") };
    assert_eq!(items.len(), max as usize);
    assert!(items.iter().all(|i| matches!(i, ReportItem::Release(_, Release::Abandoned))));
}

#[test]
fn a_replica_that_did_not_run_goes_back_and_only_a_failure_pauses() {
    let mut rig = Rig::new(vec![C1]);
    rig.lease(&[1, 2], LEASE_MS);
    // One sandbox slot: the second replica waits for it.
    let first = rig.runs();
    assert_eq!(first.len(), 1);
    // It waited too long (for memory, or the peer stops): back unblamed, and the next one runs.
    rig.work.handle_not_run(first[0].task, false, rig.now);
    rig.drain();
    let second = rig.runs();
    assert_eq!(second.len(), 1, "the waiting replica gets the slot");
    assert!(rig.work.held() == 1);
    // It could not run here: back unblamed too, and the peer pauses before asking again.
    rig.work.handle_not_run(second[0].task, true, rig.now);
    rig.drain();
    assert_eq!(rig.work.held(), 0);
    let Transmit::Report { to, items } = rig.next(is_report, 1_000) else { panic!("the hand-backs are reported") };
    assert_eq!(to, C1);
    assert!(items.len() == 2 && items.iter().all(|i| matches!(i, ReportItem::Release(_, Release::Abandoned))), "{items:?}");
    let failed_at = rig.now;
    rig.next(is_lease, 1_000);
    assert!(rig.now > failed_at, "paused after a replica that could not run here");
    // A task not running here is ignored.
    rig.work.handle_not_run(TaskId { job: JOB, index: 99 }, true, rig.now);
    rig.drain();
    assert!(rig.sent.is_empty() && rig.runs().is_empty());
}

#[test]
fn with_run_ahead_every_leased_replica_goes_to_the_driver_at_once() {
    // One slot: one run at a time, the rest wait in `Work`…
    let mut rig = Rig::new(vec![C1]);
    rig.lease(&[0, 1, 2], LEASE_MS);
    assert_eq!(rig.runs().len(), 1, "one per sandbox slot");
    // …or, for a driver whose sandbox pool queues runs, all at once.
    let mut rig = Rig::new(vec![C1]);
    rig.work = Work::new(W, 1).with_run_ahead(8);
    rig.work.handle_ad(ad(1, vec![C1]), |_| true, 0);
    rig.lease(&[0, 1, 2], LEASE_MS);
    let runs = rig.runs();
    assert_eq!(runs.iter().map(|r| r.task.index).collect::<Vec<_>>(), vec![0, 1, 2], "every replica held");
}
