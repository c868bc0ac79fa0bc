//! A virtual peer's worker side, as `worker/src/node/{slots,remote}.rs` do it: when slots are
//! free, lease from its own coordinator first, then ask the coordinator of a job the real
//! [`Puller`](crate::pull::Puller) picks; check each replica's lease is fresh, fetch the module
//! once, queue for a sandbox slot, "run" for a random time, attest, and report in batches
//! (5 ms linger, up to 256 items, 3 attempts 200 and 400 ms apart).

use crate::pull::MAX_BATCH;
use crate::{BlobId, JobId, Millis, Release, TaskId};

use super::engine::Sim;
use super::net::Request;
use super::peer::{NEVER, Replica, ReportItem, Reporter, leases_per_slot};
use super::queue::Event;
use super::wire;
use super::workload::{self, Behaviour};

/// Pause after a replica had to be abandoned.
const BACKOFF_MS: Millis = 250;
/// How often idle slots look again at announced jobs.
const LOOK_AGAIN_MS: Millis = 200;
/// Report batching.
const REPORT_LINGER_MS: Millis = 5;
const REPORT_BATCH: usize = 256;
/// A failed report batch is retried after 200 ms, doubling up to this, until its first lease
/// lapses (`node/remote.rs:deliver_report`).
const REPORT_BACKOFF_MAX_MS: Millis = 2_000;

impl Sim {
    /// Wakes the peer's slot loop (`work.notify_one()`): it runs once, now.
    pub(super) fn wake(&mut self, p: u32) {
        self.wake_at(p, self.now);
    }

    fn wake_at(&mut self, p: u32, at: Millis) {
        let peer = &mut self.peers[p as usize];
        if peer.alive && at < peer.slots_at {
            peer.slots_at = at;
            self.queue.push(at, Event::Slots { peer: p });
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

    /// One pass of the slot loop (`node/slots.rs:run`).
    fn slot_loop(&mut self, p: u32) {
        let (now, slots) = (self.now, self.cfg.slots);
        let peer = &mut self.peers[p as usize];
        let paused = now < peer.paused_until;
        let capacity = slots * leases_per_slot(peer.mean_run_us);
        let mut free = if paused { 0 } else { capacity.saturating_sub(peer.replicas + peer.asking.unwrap_or(0)) };
        if free > 0 && peer.host.is_some() {
            let me = peer.id;
            let leases = peer.host.as_mut().map(|h| h.coord.lease(me, free as usize, now)).unwrap_or_default();
            self.schedule_coord_tick(p);
            if !leases.is_empty() {
                self.leased_by(p);
            }
            let timeout_ms = self.spec.policy.limits.timeout_ms;
            for l in leases {
                free -= 1;
                self.peers[p as usize].replicas += 1;
                let r = Replica { task: l.task, coordinator: None, expires_at: l.expires_at, timeout_ms, module: self.spec.module };
                self.start_replica(p, r);
            }
            self.replicas_changed(p);
        }
        let peer = &mut self.peers[p as usize];
        let mut open = false;
        if free > 0 && peer.asking.is_none() {
            let ads: Vec<_> = peer.ads.iter().filter(|a| !peer.serves(&a.job)).cloned().collect();
            open = ads.iter().any(|a| !a.done);
            peer.puller.retain(|j| ads.iter().any(|a| a.job == *j && !a.done));
            if let Some((job, n)) = peer.puller.pick(&ads, free, now) {
                // The first coordinator named in the ad that is alive here (`addr_of`).
                let target = ads.iter().find(|a| a.job == job).and_then(|ad| {
                    ad.coordinators.iter().find(|c| peer.coordinators.iter().any(|(id, up)| id == *c && *up)).copied()
                });
                match target {
                    Some(c) => {
                        peer.asking = Some(n);
                        let size = wire::lease_request(n, self.unix());
                        self.call(p, super::keys::index_of(&c), Request::Lease { job, max: n, asked_at: now }, size);
                    }
                    None => peer.puller.empty(job, now),
                }
            }
        }
        // The real loop also wakes every 200 ms; that only matters while time alone can change
        // its mind (a pause or a backoff ending).
        let peer = &self.peers[p as usize];
        if paused || (open && peer.asking.is_none()) {
            self.wake_at(p, now + LOOK_AGAIN_MS);
        }
    }

    /// A replica was leased: check it can still finish in time, fetch the module if needed,
    /// queue it for a slot.
    fn start_replica(&mut self, p: u32, r: Replica) {
        if self.now + r.timeout_ms > r.expires_at {
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
        peer.note_run(ran_ms);
        // A sleeper liar behaves until it has run its quota, then lies.
        let behaviour = if peer.runs < self.cfg.liars_honest_for { Behaviour::Honest } else { peer.behaviour };
        peer.runs = peer.runs.saturating_add(1);
        let (att, out) = workload::attest(behaviour, peer.id, r.task, self.cfg.output_bytes);
        match r.coordinator {
            None => {
                self.record(p, p, att, out, false);
                self.drain_coordinator(p);
            }
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
            None => {
                let me = self.peers[p as usize].id;
                if let Some(h) = self.peers[p as usize].host.as_mut() {
                    h.coord.release(r.task, me, why);
                }
                self.drain_coordinator(p);
            }
            Some(c) => self.report_push(p, c, r.expires_at, ReportItem::Release(r.task, why)),
        }
    }

    fn replica_done(&mut self, p: u32, abandoned: bool) {
        let peer = &mut self.peers[p as usize];
        peer.replicas = peer.replicas.saturating_sub(1);
        if abandoned {
            peer.paused_until = self.now + BACKOFF_MS;
        }
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
        let peer = &mut self.peers[p as usize];
        peer.asking = None;
        if tasks.is_empty() {
            peer.puller.empty(job, self.now);
        } else {
            peer.puller.got(job);
        }
        for (index, expires_in) in tasks.into_iter().take(MAX_BATCH as usize) {
            self.peers[p as usize].replicas += 1;
            let r = Replica { task: TaskId { job, index }, coordinator: Some(c), expires_at: asked_at + expires_in, timeout_ms, module };
            self.start_replica(p, r);
        }
        self.replicas_changed(p);
        self.wake(p);
    }

    pub(super) fn on_lease_failed(&mut self, p: u32, job: JobId) {
        let peer = &mut self.peers[p as usize];
        peer.asking = None;
        peer.puller.empty(job, self.now);
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

    /// Queues a report item for coordinator `c`; the first one starts the linger.
    fn report_push(&mut self, p: u32, c: u32, until: Millis, item: ReportItem) {
        let peer = &mut self.peers[p as usize];
        let i = match peer.reporters.iter().position(|r| r.coordinator == c) {
            Some(i) => i,
            None => {
                peer.reporters.push(Reporter { coordinator: c, queue: Vec::new(), batch: None, flush_pending: false });
                peer.reporters.len() - 1
            }
        };
        let r = &mut peer.reporters[i];
        r.queue.push((until, item));
        if r.batch.is_none() && !r.flush_pending {
            r.flush_pending = true;
            self.queue.push(self.now + REPORT_LINGER_MS, Event::Flush { peer: p, coordinator: c });
        }
    }

    /// Sends the batch that is due: a retry of the one in flight, or the next from the queue.
    pub(super) fn on_flush(&mut self, p: u32, c: u32) {
        let unix = self.unix();
        let peer = &mut self.peers[p as usize];
        let Some(r) = peer.reporters.iter_mut().find(|r| r.coordinator == c) else { return };
        if !peer.alive || !r.flush_pending {
            return;
        }
        r.flush_pending = false;
        if r.batch.is_none() {
            let n = r.queue.len().min(REPORT_BATCH);
            if n == 0 {
                return;
            }
            let items: Vec<(Millis, ReportItem)> = r.queue.drain(..n).collect();
            let until = items.iter().map(|(u, _)| *u).min().unwrap_or(NEVER);
            r.batch = Some((items.into_iter().map(|(_, i)| i).collect(), 1, until));
        }
        let Some((batch, _, _)) = r.batch.as_ref() else { return };
        let mut items = Vec::new();
        let mut released = Vec::new();
        for item in batch {
            match item {
                ReportItem::Attest(a, out) => items.push((a.task.index, a.fuel_used, out.len() as u64)),
                ReportItem::Release(t, why) => released.push((t.index, *why == Release::Deadline)),
            }
        }
        let size = wire::report_request(&items, &released, unix);
        let batch = batch.clone();
        self.call(p, c, Request::Report { batch }, size);
    }

    /// The coordinator took the batch: the next one may go.
    pub(super) fn on_reported(&mut self, p: u32, c: u32) {
        let now = self.now;
        let peer = &mut self.peers[p as usize];
        let Some(r) = peer.reporters.iter_mut().find(|r| r.coordinator == c) else { return };
        r.batch = None;
        if !r.queue.is_empty() && !r.flush_pending {
            r.flush_pending = true;
            self.queue.push(now + REPORT_LINGER_MS, Event::Flush { peer: p, coordinator: c });
        }
    }

    /// A report batch failed: try again after 200 ms, doubling up to 2 s, until the next try
    /// would come after its first lease lapses; then drop it (its leases lapse at the
    /// coordinator).
    pub(super) fn on_report_failed(&mut self, p: u32, c: u32) {
        let now = self.now;
        let peer = &mut self.peers[p as usize];
        let Some(r) = peer.reporters.iter_mut().find(|r| r.coordinator == c) else { return };
        let Some((_, attempt, until)) = r.batch.as_mut() else { return };
        let pause = (200 << (*attempt - 1).min(4)).min(REPORT_BACKOFF_MAX_MS);
        if now + pause < *until {
            *attempt += 1;
            r.flush_pending = true;
            self.queue.push(now + pause, Event::Flush { peer: p, coordinator: c });
            return;
        }
        r.batch = None;
        self.m.reports_dropped += 1;
        if !r.queue.is_empty() {
            r.flush_pending = true;
            self.queue.push(now + REPORT_LINGER_MS, Event::Flush { peer: p, coordinator: c });
        }
    }
}
