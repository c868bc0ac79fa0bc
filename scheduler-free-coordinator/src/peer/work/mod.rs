//! [`Work`]: the worker side of one peer, the replicas it runs for jobs others coordinate (and
//! its own, leased from its own coordinator), as one sans-IO machine composed of the small ones
//! beside it: [`Slots`] with the [`Puller`] and the run times (how many replicas to hold, which
//! job to ask next), [`is_stale`] (a lease too close to lapsing goes back unblamed), and
//! [`Reporters`] (report batches per coordinator, retried, following a job's new leader).
//!
//! # Contract
//!
//! A driver owns one `Work` per peer and never decides anything itself:
//!
//! - **Inputs** are `handle_*` calls, each with `now` (only ever compared): a job ad heard
//!   ([`Work::handle_ad`]), a peer seen up or dead ([`Work::handle_peer`]), something that may
//!   free a slot elsewhere ([`Work::handle_wake`]), the answer to a lease request
//!   ([`Work::handle_leased`], [`Work::handle_lease_failed`]), a replica's run finished with its
//!   outcome ([`Work::handle_ran`]), a module fetched or not ([`Work::handle_fetched`],
//!   [`Work::handle_fetch_failed`]), the answer to a report batch ([`Work::handle_report_sent`]),
//!   and a timer ([`Work::handle_timeout`]).
//! - **Outputs** are drained after **every** input, until empty: [`Work::poll_transmit`] gives
//!   the calls to make (lease requests, report batches, module fetches), [`Work::poll_notice`]
//!   what the driver acts on or counts (replicas to run, own outcomes for its own coordinator),
//!   and [`Work::poll_timeout`] when [`Work::handle_timeout`] is next due.
//! - **The peer's own jobs** come in through [`Own`], asked only by the slot pass: a job this
//!   peer leads is leased from its own coordinator, not asked for.
//! - **Signing** stays with the driver: a run's outcome comes in as a signed
//!   [`ReportItem::Attest`] (the real peer's key, or the simulator's stand-in).
//!
//! Coordinators are named by [`PeerId`], as job ads name them.

mod messages;
#[cfg(test)]
mod tests;

pub use messages::{NoOwn, Notice, Own, Replica, Transmit};

use std::collections::VecDeque;

use crate::peer::host::ReportItem;
use crate::peer::reporters::{Handled, Reporters};
use crate::peer::reports::{Delivery, Sent};
use crate::peer::slots::{Slots, is_stale};
use crate::pull::{MAX_BATCH, Puller};
use crate::records::JobAd;
use crate::{BlobId, JobId, Millis, PeerId, Release, TaskId};

/// The worker side of one peer (see the module docs for the contract).
pub struct Work {
    me: PeerId,
    /// Sandbox slots.
    sandboxes: usize,
    /// Replicas handed to the driver to run at once: `sandboxes` (the simulator models the slots
    /// exactly), or more where the driver's sandbox pool queues them ([`Work::with_run_ahead`]).
    run_ahead: usize,
    slots: Slots,
    /// Replicas running (handed to the driver), at most `run_ahead`.
    running: Vec<Replica>,
    /// Replicas waiting for a sandbox slot (at most what [`Slots`] lets the peer hold).
    waiting: VecDeque<Replica>,
    /// Modules fetched and ready (kept across a crash: they are on disk).
    modules: Vec<BlobId>,
    /// Module fetches in flight, with the replicas waiting on each.
    fetching: Vec<(BlobId, Vec<Replica>)>,
    reports: Reporters<PeerId, ReportItem>,
    /// The newest ad of each job heard.
    ads: Vec<JobAd>,
    /// Liveness, in this peer's membership view, of the coordinators its ads name.
    coordinators: Vec<(PeerId, bool)>,
    /// When the slot pass next runs (`None`: not until an input asks).
    pass_at: Option<Millis>,
    transmits: VecDeque<Transmit>,
    notices: VecDeque<Notice>,
}

impl Work {
    /// Peer `me`'s worker side with `sandboxes` sandbox slots.
    pub fn new(me: PeerId, sandboxes: u32) -> Work {
        let sandboxes = (sandboxes as usize).max(1);
        Work {
            me,
            sandboxes,
            run_ahead: sandboxes,
            slots: Slots::new(sandboxes, Puller::new()),
            running: Vec::new(),
            waiting: VecDeque::new(),
            modules: Vec::new(),
            fetching: Vec::new(),
            reports: Reporters::default(),
            ads: Vec::new(),
            coordinators: Vec::new(),
            pass_at: None,
            transmits: VecDeque::new(),
            notices: VecDeque::new(),
        }
    }

    /// Hands up to `n` replicas (at least one per sandbox) to the driver at once, for a driver
    /// whose sandbox pool queues runs: a slot then never waits for the driver's turn between two
    /// runs (with one run per slot, tiny tasks through real peers ran at half the rate).
    pub fn with_run_ahead(mut self, n: usize) -> Work {
        self.run_ahead = n.max(self.sandboxes);
        self
    }

    /// Pulls only jobs whose replicas fit in `bytes` of memory (the volunteer's cap).
    pub fn with_memory_cap(mut self, bytes: u64) -> Work {
        self.slots = Slots::new(self.sandboxes, Puller::new().with_memory_cap(bytes));
        self
    }

    /// The donor's limit on new replicas ([`Slots::set_allowance`]): `Some(0)` while its
    /// controls pause the peer. A looser limit wakes the slot pass.
    pub fn set_allowance(&mut self, allowance: Option<usize>, now: Millis) {
        self.slots.set_allowance(allowance);
        if allowance != Some(0) {
            self.handle_wake(now);
        }
    }

    /// What is left after a crash: only the modules fetched (on disk).
    pub fn restart(&mut self) {
        let modules = std::mem::take(&mut self.modules);
        *self = Work { modules, run_ahead: self.run_ahead, ..Work::new(self.me, self.sandboxes as u32) };
    }

    /// Replicas held (leased and not done).
    pub fn held(&self) -> usize {
        self.slots.held()
    }

    /// Sandbox slots no replica holds (what an advert shows free).
    pub fn free_slots(&self) -> u32 {
        let held = u32::try_from(self.held()).unwrap_or(u32::MAX);
        (self.sandboxes as u32).saturating_sub(held)
    }

    /// The newest ad of each job heard.
    pub fn ads(&self) -> &[JobAd] {
        &self.ads
    }

    /// The coordinator `job` is leased from and reported to: the first one its ad names that is
    /// this peer or alive in its view (a peer that took over a job it worked on reports to itself).
    pub fn first_live_coordinator(&self, job: &JobId) -> Option<PeerId> {
        first_live(self.me, &self.ads, &self.coordinators, job)
    }

    /// The next call to make.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next notice.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// When [`Work::handle_timeout`] is next due (`None`: no timer runs).
    pub fn poll_timeout(&self) -> Option<Millis> {
        [self.pass_at, self.reports.poll_timeout()].into_iter().flatten().min()
    }

    /// Runs the slot pass if due, and sends the report batches due.
    pub fn handle_timeout(&mut self, now: Millis, own: &mut dyn Own) {
        if self.pass_at.is_some_and(|at| at <= now) {
            self.pass_at = None;
            self.pass(now, own);
        }
        if self.reports.poll_timeout().is_some_and(|at| at <= now) {
            while let Some((to, batch)) = self.reports.poll_batch(now) {
                self.transmits.push_back(Transmit::Report { to, items: batch.to_vec() });
            }
        }
    }

    /// Something may have freed a slot or opened a job: the slot pass runs now.
    pub fn handle_wake(&mut self, now: Millis) {
        self.pass_at = Some(self.pass_at.map_or(now, |at| at.min(now)));
    }

    /// A job ad heard; `alive` says whether a coordinator it names is alive in this peer's view.
    /// Returns whether it is newer than the ad of the job known until now.
    pub fn handle_ad(&mut self, ad: JobAd, alive: impl Fn(&PeerId) -> bool, now: Millis) -> bool {
        for c in &ad.coordinators {
            if *c != self.me && !self.coordinators.iter().any(|(id, _)| id == c) {
                self.coordinators.push((*c, alive(c)));
            }
        }
        let newer = match self.ads.iter_mut().find(|a| a.job == ad.job) {
            Some(known) if known.seq < ad.seq => {
                *known = ad;
                true
            }
            Some(_) => false,
            None => {
                self.ads.push(ad);
                true
            }
        };
        self.handle_wake(now);
        newer
    }

    /// `peer` was seen up or declared dead: reports and leases follow the first live
    /// coordinator of each job.
    pub fn handle_peer(&mut self, peer: PeerId, up: bool, now: Millis) {
        if let Some(c) = self.coordinators.iter_mut().find(|(id, _)| *id == peer) {
            c.1 = up;
        }
        self.handle_wake(now);
    }

    /// `from` answered the lease request for `job` sent at `asked_at`: each task's index and the
    /// time its lease had left when sent, with the job's module and deadline.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_leased(&mut self, from: PeerId, job: JobId, module: BlobId, timeout_ms: u64, tasks: &[(u32, u64)], asked_at: Millis, now: Millis) {
        let tasks = &tasks[..tasks.len().min(MAX_BATCH as usize)];
        self.slots.handle_leased(job, tasks.len(), now);
        for &(index, expires_in) in tasks {
            let r = Replica { task: TaskId { job, index }, coordinator: Some(from), expires_at: asked_at + expires_in, timeout_ms, module };
            self.start(r, now);
        }
        self.held_changed();
        self.handle_wake(now);
    }

    /// The lease request for `job` failed (lost, refused, or the coordinator is gone).
    pub fn handle_lease_failed(&mut self, job: JobId, now: Millis) {
        self.slots.handle_lease_failed(job, now);
        self.handle_wake(now);
    }

    /// The replica of `task` ran for `ran_us` microseconds with `outcome` (a signed
    /// attestation and its output, or a hand-back). A task not running here is ignored.
    pub fn handle_ran(&mut self, task: TaskId, ran_us: u64, outcome: ReportItem, now: Millis) {
        let Some(r) = self.end(task) else { return };
        self.slots.handle_ran(ran_us);
        self.report(&r, outcome, now);
        self.done(false, now);
        self.next();
    }

    /// The replica of `task` got a slot but did not run: it goes back to its coordinator
    /// unblamed ([`Release::Abandoned`]). `abandoned`: it could not run here (the peer pauses,
    /// as after a failed fetch); otherwise it only waited too long (for memory) or the peer is
    /// stopping. A task not running here is ignored.
    pub fn handle_not_run(&mut self, task: TaskId, abandoned: bool, now: Millis) {
        let Some(r) = self.end(task) else { return };
        self.report(&r, ReportItem::Release(task, Release::Abandoned), now);
        self.done(abandoned, now);
        self.next();
    }

    /// Whether no report waits to go out or for its answer.
    pub fn reports_idle(&self) -> bool {
        self.reports.is_idle()
    }

    fn end(&mut self, task: TaskId) -> Option<Replica> {
        let i = self.running.iter().position(|r| r.task == task)?;
        Some(self.running.swap_remove(i))
    }

    /// A sandbox slot came free: the next replica waiting for one runs.
    fn next(&mut self) {
        if let Some(next) = self.waiting.pop_front() {
            self.run(next);
        }
    }

    /// `module` arrived: the replicas waiting on it queue for a slot.
    pub fn handle_fetched(&mut self, module: BlobId) {
        let Some(i) = self.fetching.iter().position(|(m, _)| *m == module) else { return };
        let (_, waiting) = self.fetching.swap_remove(i);
        self.modules.push(module);
        for r in waiting {
            self.run(r);
        }
    }

    /// `module` could not be fetched: the replicas waiting on it go back, and the peer pauses.
    pub fn handle_fetch_failed(&mut self, module: BlobId, now: Millis) {
        let Some(i) = self.fetching.iter().position(|(m, _)| *m == module) else { return };
        let (_, waiting) = self.fetching.swap_remove(i);
        for r in waiting {
            self.report(&r, ReportItem::Release(r.task, Release::Abandoned), now);
            self.done(true, now);
        }
    }

    /// The report batch sent to `to` was answered with `delivery`. A batch given up is counted
    /// ([`Notice::ReportDropped`]); before a retry, the items whose job's ad now names another
    /// first live coordinator (a backup took over, holding the leases from the replication
    /// stream) move to that one's queue.
    pub fn handle_report_sent(&mut self, to: PeerId, delivery: Delivery, now: Millis) {
        let (me, ads, live) = (self.me, &self.ads, &self.coordinators);
        let leader = |item: &ReportItem| first_live(me, ads, live, &item.job());
        if let Some(Handled { sent: Sent::Dropped(_), .. }) = self.reports.handle_sent(&to, delivery, now, leader) {
            self.notices.push_back(Notice::ReportDropped);
        }
    }

    /// One pass of the slot loop, by the rules of [`Slots`]: lease from this peer's own jobs
    /// first, then ask the coordinator of the job the puller picks.
    fn pass(&mut self, now: Millis, own: &mut dyn Own) {
        let free = self.slots.free(now);
        if free > 0 {
            let leased = own.lease(free, now);
            self.slots.took(leased.len());
            for r in leased {
                self.start(r, now);
            }
            self.held_changed();
        }
        // Borrowed: a pass runs after every report and lease, and cloning each ad for it was a
        // twentieth of the simulator's time.
        let ads: Vec<&JobAd> =
            if self.slots.may_ask(now) { self.ads.iter().filter(|a| !own.serves(&a.job)).collect() } else { Vec::new() };
        if let Some((job, max)) = self.slots.poll_ask(&ads, now) {
            match self.first_live_coordinator(&job) {
                Some(to) => self.transmits.push_back(Transmit::Lease { to, job, max }),
                None => self.slots.handle_lease_failed(job, now),
            }
        }
        // Only while time alone can change the loop's mind (a pause or a backoff ending) does
        // the pass run again by itself.
        if let Some(at) = self.slots.poll_timeout(now) {
            self.pass_at = Some(self.pass_at.map_or(at, |p| p.min(at)));
        }
    }

    /// A replica was leased: check it can still finish in time, fetch its module if needed,
    /// queue it for a slot.
    fn start(&mut self, r: Replica, now: Millis) {
        if is_stale(now, r.timeout_ms, r.expires_at) {
            self.notices.push_back(Notice::Stale);
            self.report(&r, ReportItem::Release(r.task, Release::Abandoned), now);
            self.done(false, now);
            return;
        }
        if let Some(from) = r.coordinator
            && !self.modules.contains(&r.module)
        {
            if let Some((_, waiting)) = self.fetching.iter_mut().find(|(m, _)| *m == r.module) {
                waiting.push(r);
            } else {
                let module = r.module;
                self.fetching.push((module, vec![r]));
                self.transmits.push_back(Transmit::Fetch { from, module });
            }
            return;
        }
        self.run(r);
    }

    fn run(&mut self, r: Replica) {
        if self.running.len() >= self.run_ahead {
            self.waiting.push_back(r);
            return;
        }
        self.running.push(r.clone());
        self.notices.push_back(Notice::Run(r));
    }

    /// `outcome` of `r` goes to its coordinator: its own, or the report queue of the one it was
    /// leased from.
    fn report(&mut self, r: &Replica, outcome: ReportItem, now: Millis) {
        let Some(to) = r.coordinator else {
            self.notices.push_back(Notice::Own(outcome));
            return;
        };
        let bytes = match &outcome {
            ReportItem::Attest(_, out, _) => out.len(),
            ReportItem::Release(..) => 0,
        };
        if self.reports.push(to, outcome, bytes, r.expires_at, now).is_err() {
            self.notices.push_back(Notice::ReportDropped);
        }
    }

    /// The advert's free slots may have changed (one notice per input is enough).
    fn held_changed(&mut self) {
        if !self.notices.iter().any(|n| matches!(n, Notice::Held)) {
            self.notices.push_back(Notice::Held);
        }
    }

    /// A replica is done (`abandoned`: it could not run here).
    fn done(&mut self, abandoned: bool, now: Millis) {
        self.slots.handle_done(abandoned, now);
        self.held_changed();
        self.handle_wake(now);
    }
}

/// The first coordinator `job`'s ad (among `ads`) names that is `me` or that `live` marks alive.
fn first_live(me: PeerId, ads: &[JobAd], live: &[(PeerId, bool)], job: &JobId) -> Option<PeerId> {
    let ad = ads.iter().find(|a| a.job == *job)?;
    ad.coordinators.iter().find(|c| **c == me || live.iter().any(|(id, up)| id == *c && *up)).copied()
}
