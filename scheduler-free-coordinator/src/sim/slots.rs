//! A virtual peer's worker side: when slots are free, lease from its own coordinator first, then
//! ask the coordinator of a job the real [`Puller`](crate::pull::Puller) picks; hand back a
//! replica whose lease is too close to lapsing, fetch the module once, queue for a sandbox slot,
//! "run" for a random time, attest, and report. How many replicas a peer holds, when it pauses
//! and when it looks again are [`crate::peer::slots`]'s rules; reports are batched and retried
//! by one [`ReportQueue`](crate::peer::reports::ReportQueue) per coordinator, which the
//! simulator drives: a batch it polls goes out as a `Report` call, and comes back `Taken`,
//! `Unreachable` (the call failed: lost, or the coordinator crashed) or `Refused`. A report
//! follows its job's leader: before a failed batch is retried, its items whose job's ad now
//! names another first live coordinator (the rule a lease follows) move to that coordinator's
//! queue (`ReportQueue::take_from_retry`), which holds their leases from the dead leader's
//! replication stream.

use crate::peer::reporters::Handled;
use crate::peer::reports::{Delivery, Sent};
use crate::peer::slots::is_stale;
use crate::pull::MAX_BATCH;
use crate::{BlobId, JobId, Millis, Release, TaskId};

use super::engine::Sim;
use super::net::Request;
use crate::peer::host::ReportItem;
use super::peer::{NEVER, Replica, first_live};
use super::queue::Event;
use super::wire;
use super::workload::{self, Behaviour};

impl Sim {
    /// Wakes the peer's slot loop: it runs once, now.
    pub(super) fn wake(&mut self, p: u32) {
        self.wake_at(p, self.now);
    }

    fn wake_at(&mut self, p: u32, at: Millis) {
        let peer = &mut self.peers[p as usize];
        if peer.alive {
            self.queue.arm(&mut peer.slots_at, at, Event::Slots { peer: p });
        }
    }

    pub(super) fn on_slots(&mut self, p: u32) {
        let peer = &mut self.peers[p as usize];
        if !peer.alive || peer.slots_at != self.now {
            return;
        }
        peer.slots_at = NEVER;
        self.slot_loop(p);
    }

    /// One pass of the slot loop, by the rules of [`Slots`](crate::peer::slots::Slots).
    fn slot_loop(&mut self, p: u32) {
        let now = self.now;
        let peer = &mut self.peers[p as usize];
        let free = peer.slots.free(now);
        if free > 0 && peer.host.is_some() {
            let leases = self.with_host(p, |h, _| h.lease_own(free, now)).unwrap_or_default();
            self.peers[p as usize].slots.took(leases.len());
            if !leases.is_empty() {
                self.leased_by(p);
            }
            let timeout_ms = self.spec.policy.limits.timeout_ms;
            for l in leases {
                let r = Replica { task: l.task, coordinator: None, expires_at: l.expires_at, timeout_ms, module: self.spec.module };
                self.start_replica(p, r);
            }
            self.replicas_changed(p);
        }
        let peer = &mut self.peers[p as usize];
        let ads: Vec<_> =
            if peer.slots.may_ask(now) { peer.ads.iter().filter(|a| !peer.serves(&a.job)).cloned().collect() } else { Vec::new() };
        if let Some((job, n)) = peer.slots.poll_ask(&ads, now) {
            match peer.first_live_coordinator(&job) {
                Some(c) => {
                    let size = wire::lease_request(n, self.unix());
                    self.call(p, super::keys::index_of(&c), Request::Lease { job, max: n, asked_at: now }, size);
                }
                None => peer.slots.handle_lease_failed(job, now),
            }
        }
        // Only while time alone can change the loop's mind (a pause or a backoff ending) is the
        // next look simulated.
        if let Some(at) = self.peers[p as usize].slots.poll_timeout(now) {
            self.wake_at(p, at);
        }
    }

    /// A replica was leased: check it can still finish in time, fetch the module if needed,
    /// queue it for a slot.
    fn start_replica(&mut self, p: u32, r: Replica) {
        if is_stale(self.now, r.timeout_ms, r.expires_at) {
            self.m.stale += 1;
            self.release(p, &r, Release::Abandoned);
            self.replica_done(p, false);
            return;
        }
        if let Some(c) = r.coordinator {
            let peer = &mut self.peers[p as usize];
            if !peer.modules.contains(&r.module) {
                if let Some((_, waiting)) = peer.fetching.iter_mut().find(|(m, _)| *m == r.module) {
                    waiting.push(r);
                } else {
                    let module = r.module;
                    peer.fetching.push((module, vec![r]));
                    self.call(p, c, Request::Blob { module }, wire::blob_request());
                }
                return;
            }
        }
        self.enqueue_run(p, r);
    }

    fn enqueue_run(&mut self, p: u32, r: Replica) {
        let peer = &mut self.peers[p as usize];
        if peer.busy >= self.cfg.slots {
            peer.waiting.push_back(r);
            return;
        }
        peer.busy += 1;
        let ran = self.rng.range(self.cfg.run_ms.0, self.cfg.run_ms.1);
        self.queue.push(self.now + ran, Event::RunDone { peer: p, ran_ms: ran as u32, replica: Box::new(r) });
    }

    pub(super) fn on_run_done(&mut self, p: u32, ran_ms: u64, r: Replica) {
        let peer = &mut self.peers[p as usize];
        if !peer.alive {
            return;
        }
        peer.busy -= 1;
        peer.slots.handle_ran(ran_ms * 1_000);
        // A sleeper liar behaves until it has run its quota, then lies.
        let behaviour = if peer.runs < self.cfg.liars_honest_for { Behaviour::Honest } else { peer.behaviour };
        peer.runs = peer.runs.saturating_add(1);
        self.m.replicas_run += 1;
        let (att, out) = workload::attest(behaviour, peer.id, r.task, self.cfg.output_bytes);
        match r.coordinator {
            None => self.record_own(p, att, out),
            Some(c) => self.report_push(p, c, r.expires_at, ReportItem::Attest(att, out)),
        }
        self.replica_done(p, false);
        if let Some(next) = self.peers[p as usize].waiting.pop_front() {
            self.enqueue_run(p, next);
        }
    }

    /// Hands a replica back without a result.
    fn release(&mut self, p: u32, r: &Replica, why: Release) {
        match r.coordinator {
            None => self.release_own(p, r.task, why),
            Some(c) => self.report_push(p, c, r.expires_at, ReportItem::Release(r.task, why)),
        }
    }

    fn replica_done(&mut self, p: u32, abandoned: bool) {
        self.peers[p as usize].slots.handle_done(abandoned, self.now);
        self.replicas_changed(p);
        self.wake(p);
    }

    /// The number of replicas held changed: the advert may be due.
    fn replicas_changed(&mut self, p: u32) {
        self.schedule_house(p);
    }

    /// The coordinator answered a lease request.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_leased(&mut self, p: u32, c: u32, job: JobId, module: BlobId, timeout_ms: u64, tasks: Vec<(u32, u64)>, asked_at: Millis) {
        let tasks = &tasks[..tasks.len().min(MAX_BATCH as usize)];
        self.peers[p as usize].slots.handle_leased(job, tasks.len(), self.now);
        for &(index, expires_in) in tasks {
            let r = Replica { task: TaskId { job, index }, coordinator: Some(c), expires_at: asked_at + expires_in, timeout_ms, module };
            self.start_replica(p, r);
        }
        self.replicas_changed(p);
        self.wake(p);
    }

    pub(super) fn on_lease_failed(&mut self, p: u32, job: JobId) {
        self.peers[p as usize].slots.handle_lease_failed(job, self.now);
        self.wake(p);
    }

    pub(super) fn on_fetched(&mut self, p: u32, module: BlobId) {
        let peer = &mut self.peers[p as usize];
        let Some(i) = peer.fetching.iter().position(|(m, _)| *m == module) else { return };
        let (_, waiting) = peer.fetching.swap_remove(i);
        peer.modules.push(module);
        for r in waiting {
            self.enqueue_run(p, r);
        }
    }

    pub(super) fn on_fetch_failed(&mut self, p: u32, module: BlobId) {
        let peer = &mut self.peers[p as usize];
        let Some(i) = peer.fetching.iter().position(|(m, _)| *m == module) else { return };
        let (_, waiting) = peer.fetching.swap_remove(i);
        for r in waiting {
            self.release(p, &r, Release::Abandoned);
            self.replica_done(p, true);
        }
    }

    /// Queues a report item for coordinator `c` (its lease lapses at `until`).
    fn report_push(&mut self, p: u32, c: u32, until: Millis, item: ReportItem) {
        let bytes = match &item {
            ReportItem::Attest(_, out) => out.len(),
            ReportItem::Release(..) => 0,
        };
        if self.peers[p as usize].reports.push(c, item, bytes, until, self.now).is_err() {
            self.m.reports_dropped += 1;
        }
        self.schedule_flush(p);
    }

    /// Schedules the peer's `Flush` when its reports say a batch may be due.
    fn schedule_flush(&mut self, p: u32) {
        let peer = &mut self.peers[p as usize];
        if let Some(at) = peer.reports.poll_timeout() {
            self.queue.arm(&mut peer.flush_at, at.max(self.now), Event::Flush { peer: p });
        }
    }

    /// Sends every batch that is due.
    pub(super) fn on_flush(&mut self, p: u32) {
        let (now, unix) = (self.now, self.unix());
        let peer = &mut self.peers[p as usize];
        if !peer.alive || peer.flush_at != now {
            return;
        }
        peer.flush_at = NEVER;
        while let Some((c, batch)) = self.peers[p as usize].reports.poll_batch(now) {
            let mut items = Vec::new();
            let mut released = Vec::new();
            for item in batch {
                match item {
                    ReportItem::Attest(a, out) => items.push((a.task.index, a.fuel_used, out.len() as u64)),
                    ReportItem::Release(t, why) => released.push((t.index, *why == Release::Deadline)),
                }
            }
            let size = wire::report_request(&items, &released, unix);
            let sent = batch.to_vec();
            self.call(p, c, Request::Report { batch: sent }, size);
        }
        self.schedule_flush(p);
    }

    /// The report batch to coordinator `c` came back, delivered or not. A batch given up counts
    /// in `reports_dropped` (its leases lapse at the coordinator). Before a retry, the items whose
    /// job's ad now names another first live coordinator (`c` died and a backup took over,
    /// holding the leases from the replication stream) move to that one's queue.
    pub(super) fn on_report_sent(&mut self, p: u32, c: u32, delivery: Delivery) {
        let now = self.now;
        let peer = &mut self.peers[p as usize];
        let (me, ads, live) = (peer.id, &peer.ads, &peer.coordinators);
        let leader = |item: &ReportItem| first_live(me, ads, live, &item.job()).map(|t| super::keys::index_of(&t));
        if let Some(Handled { sent: Sent::Dropped(_), .. }) = peer.reports.handle_sent(&c, delivery, now, leader) {
            self.m.reports_dropped += 1;
        }
        self.schedule_flush(p);
    }
}
