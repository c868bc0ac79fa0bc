//! [`Hosts`]: the coordinator side of one peer, for every job it coordinates. A peer has one
//! [`Coordinator`] for all its jobs (reputation, standings and the network prefixes of workers
//! are the peer's, across jobs); each job's glue is a [`Host`] that borrows that coordinator
//! for the length of one call. `Hosts` routes each input to its job's host, hands the events
//! the coordinator emits to the host of their job, merges the answer of a report batch that
//! spans jobs, and runs the coordinator's own timer.
//!
//! The contract is written once in [`super`]: `handle_*` in, with `now`; after **every** call,
//! drain [`Hosts::poll_persist`], [`Hosts::poll_transmit`] and [`Hosts::poll_notice`] until
//! they give nothing, and arm one timer at [`Hosts::poll_timeout`] for
//! [`Hosts::handle_timeout`]. **Durability** is raft's `Ready` rule: writes come with rising
//! ids and are to be made durable in that order; report answers, `Adopt`s (built from the
//! store) and notices wait for every write asked before them and come out only once
//! [`Hosts::handle_durable`] says so; `Replicate` batches (they carry what they stream) go at
//! once. The answer a `handle_*` call returns (a
//! `Replicate`'s, an `Adopt`'s) is sent only once [`Hosts::written`] is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::peer::lease::Granted;
use crate::peer::outputs::PendingOutputs;
use crate::records::{JobAd, Verifier};
use crate::requests::TICK_MS;
use crate::{Attestation, Coordinator, Event, JobId, JobSpec, Lease, Millis, NetPrefix, PeerId, SubmitError};

use super::{Adopt, AdoptKind, Host, Logged, Members, NotCoordinator, Notice, Recorded, ReportItem, Shared, Streamed, Tally, Transmit, Write};

/// Checks attestations' signatures at once, one answer each, in order.
pub type BatchVerifier = std::sync::Arc<dyn Fn(&[&Attestation]) -> Vec<bool> + Send + Sync>;

/// A report batch that spans jobs: its answer goes out once every job's part is answered.
#[derive(Clone, Copy, Debug)]
struct Parts {
    left: usize,
    accepted: u32,
    rejected: u32,
}

/// The coordinator side of one peer (see the module docs for the contract).
pub struct Hosts {
    me: PeerId,
    shared: Shared,
    verifier: Verifier,
    /// Checks a report's attestations at once (ed25519's batch check is about twice as fast).
    batch_verifier: Option<BatchVerifier>,
    /// By job, in id order so every walk over them is deterministic.
    hosts: BTreeMap<JobId, Host>,
    /// Report batches spanning jobs whose answer waits for some part, by the driver's id.
    parts: HashMap<u64, Parts>,
    /// Writes not yet taken by the driver, by id.
    writes: VecDeque<(u64, Write)>,
    /// The id of the last write asked (0: none yet).
    written: u64,
    /// Every write up to this id is durable.
    durable: u64,
    /// Messages, each with the write it waits for (0: none).
    transmits: VecDeque<(u64, Transmit)>,
    /// Notices, each with the write it waits for.
    notices: VecDeque<(u64, JobId, Notice)>,
    /// The latest `now` a call gave (events handed on between hosts are dated by it).
    now: Millis,
    /// Live peers as membership last said, this one included.
    live_peers: usize,
    /// Jobs whose host was called since the last collect: only those can have output, so a
    /// call costs the same whether the peer holds one job or thousands (ended jobs stay held
    /// until retention lets them go).
    touched: Vec<JobId>,
    /// When each host's timer is due, by time (and by job, to update it).
    due: BTreeSet<(Millis, JobId)>,
    due_at: HashMap<JobId, Millis>,
}

impl Hosts {
    /// The coordinator side of peer `me`, with its coordinator (whatever jobs it holds have no
    /// host until one is made for them) and the check of workers' signatures.
    pub fn new(me: PeerId, coord: Coordinator, verifier: Verifier) -> Hosts {
        Hosts {
            me,
            shared: Shared { coord, outputs: PendingOutputs::default() },
            verifier,
            batch_verifier: None,
            hosts: BTreeMap::new(),
            parts: HashMap::new(),
            writes: VecDeque::new(),
            written: 0,
            durable: 0,
            transmits: VecDeque::new(),
            notices: VecDeque::new(),
            now: 0,
            live_peers: 1,
            touched: Vec::new(),
            due: BTreeSet::new(),
            due_at: HashMap::new(),
        }
    }

    /// Checks each report's attestations with `check` at once instead of one by one.
    pub fn with_batch_verifier(mut self, check: BatchVerifier) -> Hosts {
        self.batch_verifier = Some(check);
        self
    }

    /// Starts coordinating `job`, submitted to the coordinator already, with `coordinators` as
    /// its list; the peer started at `started`. Roles are not looked at until
    /// [`Hosts::look_at_roles`] asks.
    pub fn coordinate(&mut self, job: JobId, coordinators: Vec<PeerId>, started: Millis) {
        let host = Host::new(self.me, &self.shared, job, coordinators, started);
        self.hosts.insert(job, host);
        self.touched.push(job);
    }

    /// Starts coordinating `job`, submitted here now as `spec`, with `coordinators` as its list
    /// (as [`Hosts::coordinate`]); refused when the coordinator cannot take it.
    pub fn submit(&mut self, job: JobId, spec: JobSpec, coordinators: Vec<PeerId>, started: Millis) -> Result<(), SubmitError> {
        self.shared.coord.submit(job, spec)?;
        self.coordinate(job, coordinators, started);
        Ok(())
    }

    /// Takes `job`, which this peer did not hold, as `spec` says when an `Adopt` hands it over:
    /// in standby, until the role rules decide. The adoption itself is then
    /// [`Hosts::handle_adopt`] with `fresh`.
    pub fn adopt(&mut self, job: JobId, spec: JobSpec, coordinators: Vec<PeerId>, started: Millis) -> Result<(), SubmitError> {
        let host = Host::adopt(self.me, &mut self.shared, job, spec, coordinators, started)?;
        self.hosts.insert(job, host);
        self.touched.push(job);
        Ok(())
    }

    /// Restores `job` (submitted to the coordinator already) from what a crashed peer stored:
    /// its list and every attestation it recorded ([`Hosts::stored`]).
    pub fn restore(&mut self, job: JobId, coordinators: Vec<PeerId>, log: Vec<Logged>, now: Millis) {
        let host = Host::restore(self.me, &mut self.shared, job, coordinators, log, now);
        self.hosts.insert(job, host);
        self.touched.push(job);
        self.collect();
    }

    /// What survives a crash on disk: each job's list of coordinators and attestation log.
    pub fn stored(self) -> Vec<(JobId, Vec<PeerId>, Vec<Logged>)> {
        self.hosts.into_iter().map(|(job, h)| {
            let (list, log) = h.stored();
            (job, list, log)
        }).collect()
    }

    /// The peer's coordinator, for what a driver sets up before its hosts exist (restoring
    /// jobs, tasks failed by deadline misses and standings from its store) and for letting go of
    /// an ended job's task table (`Coordinator::shed`). Decisions go through the `handle_*`
    /// calls; events emitted here reach the job's host at its next call.
    pub fn coordinator_mut(&mut self) -> &mut Coordinator {
        &mut self.shared.coord
    }

    /// The output in hand of an attestation whose task is not final (`None`: not held).
    pub fn pending_output(&self, task: &crate::TaskId, hash: &crate::BlobId) -> Option<&[u8]> {
        self.shared.outputs.get(task, hash)
    }

    /// The host of `job`, for reading its list and log.
    pub fn host(&self, job: &JobId) -> Option<&Host> {
        self.hosts.get(job)
    }

    /// Whether this peer coordinates `job`.
    pub fn holds(&self, job: &JobId) -> bool {
        self.hosts.contains_key(job)
    }

    /// The peer's coordinator (for reading verdicts and reputation).
    pub fn coordinator(&self) -> &Coordinator {
        &self.shared.coord
    }

    /// Whether this peer leads `job`: first in its own list, and not in standby.
    pub fn leads(&self, job: &JobId) -> bool {
        self.hosts.get(job).is_some_and(|h| h.leads(&self.shared))
    }

    /// Whether `job`'s coordinator here is active (not in standby).
    pub fn is_active(&self, job: &JobId) -> bool {
        self.hosts.get(job).is_some_and(|h| h.is_active(&self.shared))
    }

    /// Whether a replication stream still holds entries to send or in flight (a peer that stops
    /// cleanly sends them first: its backups must hold what it recorded before they take over).
    pub fn is_streaming(&self) -> bool {
        self.hosts.values().any(|h| !h.replicators.is_idle())
    }

    /// The workers whose report answers are held (they get none should this peer stop).
    pub fn held_workers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.hosts.values().flat_map(Host::held_workers)
    }

    /// A record from `peer` failed its checks: the coordinator holds it against the peer.
    pub fn penalize(&mut self, peer: PeerId) {
        self.shared.coord.penalize(peer);
    }

    /// Cancels `job` (`None`: not held here; `Some(false)`: it had ended, and keeps its final
    /// state). Announced once durable, like any end of a job.
    pub fn cancel(&mut self, job: &JobId, now: Millis) -> Option<bool> {
        self.touched.push(*job);
        let cancelled = self.hosts.get_mut(job).map(|h| h.cancel(&mut self.shared, now));
        self.collect();
        cancelled
    }

    /// Lets go of an ended `job` (retention): its host and what the coordinator holds of it.
    /// False when it is not held or has not ended.
    pub fn forget(&mut self, job: &JobId) -> bool {
        if !self.shared.coord.forget(job) {
            return false;
        }
        // Report answers it still holds go now: their workers would wait for them in vain.
        if let Some(mut h) = self.hosts.remove(job) {
            h.answer_held(u64::MAX);
            while let Some(t) = h.poll_transmit() {
                if let Transmit::ReportAnswer { .. } = t {
                    self.transmits.push_back((self.written, t));
                }
            }
        }
        if let Some(at) = self.due_at.remove(job) {
            self.due.remove(&(at, *job));
        }
        true
    }

    /// Lets go of what an ended `job` holds in memory that its durable store keeps: the
    /// coordinator's task table (`Coordinator::shed`) and the host's attestation log
    /// ([`Host::shed`]). False when it is not held or has not ended.
    pub fn shed(&mut self, job: &JobId) -> bool {
        if !self.shared.coord.shed(job) {
            return false;
        }
        if let Some(h) = self.hosts.get_mut(job) {
            h.shed();
        }
        true
    }

    /// Look at `job`'s roles at `at` at the latest.
    pub fn look_at_roles(&mut self, job: &JobId, at: Millis) {
        self.touched.push(*job);
        if let Some(h) = self.hosts.get_mut(job) {
            h.look_at_roles(at);
        }
        self.reindex(*job);
    }

    /// Offers `job` to the highest-ranked of `candidates` to fill its list up; the list
    /// settles, and the job is announced, once every one asked answered.
    pub fn offer(&mut self, job: &JobId, candidates: &[PeerId]) {
        self.touched.push(*job);
        if let Some(h) = self.hosts.get_mut(job) {
            h.offer(&self.shared, candidates);
        }
        self.collect();
    }

    /// `MeshService.Lease` of `job` from `worker`, whose connection comes from `network`: the
    /// answer (`None`: the job is not coordinated here).
    pub fn handle_lease(&mut self, job: &JobId, worker: PeerId, max: u32, network: Option<NetPrefix>, now: Millis) -> Option<Granted> {
        self.now = self.now.max(now);
        self.touched.push(*job);
        let granted = self.hosts.get_mut(job).map(|h| h.handle_lease(&mut self.shared, worker, max, network, now));
        self.collect();
        granted
    }

    /// `MeshService.Report` from `worker`, the batch the driver calls `batch`: each entry taken
    /// by its job's host (entries of jobs not coordinated here are turned down). Its answer
    /// comes out as one [`Transmit::ReportAnswer`] once every job's part may be answered.
    pub fn handle_report(&mut self, worker: PeerId, batch: u64, items: Vec<ReportItem>, now: Millis) -> Tally {
        self.now = self.now.max(now);
        let mut by_job: Vec<(JobId, Vec<ReportItem>)> = Vec::new();
        let mut tally = Tally::default();
        for item in items {
            let job = item.job();
            if !self.hosts.contains_key(&job) {
                tally.rejected += u32::from(matches!(item, ReportItem::Attest(..)));
                continue;
            }
            match by_job.iter_mut().find(|(j, _)| *j == job) {
                Some((_, part)) => part.push(item),
                None => by_job.push((job, vec![item])),
            }
        }
        if by_job.len() > 1 || (by_job.len() == 1 && tally.rejected > 0) {
            self.parts.insert(batch, Parts { left: by_job.len(), accepted: 0, rejected: tally.rejected });
        } else if by_job.is_empty() {
            self.transmits.push_back((self.written, Transmit::ReportAnswer { to: worker, batch, accepted: 0, rejected: tally.rejected }));
        }
        let mut signed = self.check(by_job.iter().flat_map(|(_, part)| part)).into_iter();
        for (job, part) in by_job {
            let part = part.into_iter().map(|i| (i, signed.next().unwrap_or(false))).collect();
            self.touched.push(job);
            if let Some(h) = self.hosts.get_mut(&job) {
                let t = h.handle_report(&mut self.shared, worker, batch, part, now);
                tally.accepted += t.accepted;
                tally.rejected += t.rejected;
                tally.late += t.late;
                tally.invalid += t.invalid;
            }
            self.collect();
        }
        tally
    }

    /// `MeshService.Replicate` of `job` from `from`: the answer is how many attestations were
    /// new. Refused unless `from` is one of this peer's coordinators of `job`.
    pub fn handle_replicate(&mut self, from: PeerId, job: JobId, items: Vec<Streamed>, now: Millis) -> Result<u32, NotCoordinator> {
        self.now = self.now.max(now);
        self.touched.push(job);
        let Some(h) = self.hosts.get_mut(&job) else { return Err(NotCoordinator) };
        let r = h.handle_replicate(&mut self.shared, from, job, items, now);
        self.collect();
        r
    }

    /// The `Replicate` batch of `job` sent to `to` came back, `taken` or not.
    pub fn handle_replicated(&mut self, job: &JobId, to: PeerId, taken: bool, now: Millis) {
        self.touched.push(*job);
        if let Some(h) = self.hosts.get_mut(job) {
            h.handle_replicated(to, taken, now);
        }
        self.collect();
    }

    /// `MeshService.Adopt` (see [`Adopt`]); `fresh` when [`Hosts::adopt`] just took the job for
    /// it. The answer: for a [`AdoptKind::Sync`] from one of this peer's coordinators of the
    /// job, what is recorded here that the sender lacks.
    pub fn handle_adopt(&mut self, a: Adopt, fresh: bool, now: Millis) -> Vec<Logged> {
        self.now = self.now.max(now);
        self.touched.push(a.job);
        let missing = self.hosts.get_mut(&a.job).map(|h| h.handle_adopt(&mut self.shared, a, fresh, now)).unwrap_or_default();
        self.collect();
        missing
    }

    /// The answer to an `Adopt` of `job` this peer sent to `to` (`None`: it failed).
    pub fn handle_adopted(&mut self, job: &JobId, to: PeerId, answer: Option<Vec<Recorded>>, kind: AdoptKind, now: Millis, members: &dyn Members) {
        self.touched.push(*job);
        if let Some(h) = self.hosts.get_mut(job) {
            h.handle_adopted(&mut self.shared, to, answer, kind, now, members);
        }
        self.collect();
    }

    /// A newer ad of a job held here, from another announcer.
    pub fn handle_ad(&mut self, ad: &JobAd) {
        self.touched.push(ad.job);
        if let Some(h) = self.hosts.get_mut(&ad.job) {
            h.handle_ad(&mut self.shared, ad);
        }
        self.collect();
    }

    /// A rival ad of a job held here (signed by an announcer the known ad does not name).
    pub fn handle_rival(&mut self, ad: &JobAd) {
        self.touched.push(ad.job);
        if let Some(h) = self.hosts.get_mut(&ad.job) {
            h.handle_rival(&mut self.shared, ad);
        }
        self.collect();
    }

    /// Membership changed: `live_peers` live now (this peer included); `down` was declared dead,
    /// so its leases come back and every job's roles are looked at at once.
    pub fn handle_members(&mut self, live_peers: usize, down: Option<PeerId>, now: Millis) {
        self.now = self.now.max(now);
        // More live peers than before: a short list can grow now.
        if live_peers > self.live_peers {
            for (job, h) in &mut self.hosts {
                if h.on_member_up(&self.shared, now) {
                    self.touched.push(*job);
                }
            }
        }
        self.live_peers = live_peers;
        self.shared.coord.set_live_peers(live_peers);
        if let Some(who) = down {
            self.shared.coord.peer_down(who, now);
        }
        self.route_events();
        if down.is_some() {
            for (job, h) in &mut self.hosts {
                h.look_at_roles(now);
                self.touched.push(*job);
            }
        }
        self.collect();
    }

    /// Leases this peer's own slots up to `max` replicas of the jobs it leads (they are not
    /// streamed: they end with the peer).
    pub fn lease_own(&mut self, max: usize, now: Millis) -> Vec<Lease> {
        self.now = self.now.max(now);
        let leases = self.shared.coord.lease(self.me, max, now);
        self.collect();
        leases
    }

    /// [`Hosts::lease_own`], of the jobs whose spec `serves` (the donor's filters: a job taken
    /// over that the volunteer does not serve is left to other peers' slots).
    pub fn lease_own_where(&mut self, max: usize, now: Millis, serves: impl Fn(&JobSpec) -> bool) -> Vec<Lease> {
        self.now = self.now.max(now);
        let leases = self.shared.coord.lease_where(self.me, max, now, serves);
        self.collect();
        leases
    }

    /// The outcome of one of this peer's own replicas (what its
    /// [`Work`](crate::peer::work::Work) gives as [`Notice::Own`](crate::peer::work::Notice::Own)).
    pub fn handle_own(&mut self, item: ReportItem, now: Millis) -> Tally {
        self.now = self.now.max(now);
        let tally = { self.touched.push(item.job()); self.hosts.get_mut(&item.job()) }.map(|h| h.handle_own(&mut self.shared, item, now)).unwrap_or_default();
        self.collect();
        tally
    }

    /// The next write to make durable, with its id.
    pub fn poll_persist(&mut self) -> Option<(u64, Write)> {
        self.writes.pop_front()
    }

    /// Every write up to id `upto` is durable.
    pub fn handle_durable(&mut self, upto: u64) {
        self.durable = self.durable.max(upto);
    }

    /// The id of the last write asked: an answer returned by a `handle_*` call goes out once
    /// it is durable.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The next message that may go: a `Replicate` at once, a report answer or an `Adopt` once
    /// the writes before it are durable (those keep their order among themselves).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let i = self.transmits.iter().position(|(after, _)| *after <= self.durable)?;
        self.transmits.remove(i).map(|(_, t)| t)
    }

    /// The next notice, with the job it is about, once the writes before it are durable.
    pub fn poll_notice(&mut self) -> Option<(JobId, Notice)> {
        if self.notices.front().is_some_and(|(after, ..)| *after <= self.durable) {
            return self.notices.pop_front().map(|(_, job, n)| (job, n));
        }
        None
    }

    /// When [`Hosts::handle_timeout`] is next due (`None`: no timer runs).
    pub fn poll_timeout(&self) -> Option<Millis> {
        // The coordinator's ticker runs on 200 ms boundaries, as the peer's does.
        let tick = self.shared.coord.next_deadline().map(|d| d.div_ceil(TICK_MS) * TICK_MS);
        self.due.first().map(|(at, _)| *at).into_iter().chain(tick).min()
    }

    /// Runs whatever timer is due at `now`: the coordinator's (lease expiries), then each job's.
    pub fn handle_timeout(&mut self, now: Millis, members: &dyn Members) {
        self.now = self.now.max(now);
        if self.shared.coord.next_deadline().is_some_and(|d| d <= now) {
            self.shared.coord.tick(now);
            self.route_events();
        }
        // In job order, as every walk over the hosts.
        let mut due: Vec<JobId> = self.due.iter().take_while(|(at, _)| *at <= now).map(|(_, job)| *job).collect();
        due.sort();
        for job in due {
            if let Some(h) = self.hosts.get_mut(&job) {
                h.handle_timeout(&mut self.shared, now, members);
                self.touched.push(job);
            }
        }
        self.collect();
    }

    /// Whether each of `items` is signed by its peer (a release needs no signature).
    fn check<'a>(&self, items: impl Iterator<Item = &'a ReportItem>) -> Vec<bool> {
        let items: Vec<&ReportItem> = items.collect();
        let atts: Vec<&Attestation> = items.iter().filter_map(|i| if let ReportItem::Attest(a, ..) = i { Some(a) } else { None }).collect();
        let mut valid = match &self.batch_verifier {
            Some(check) => check(&atts),
            // A field that is neither a lone signature nor a batch path goes to the verifier
            // as it is (which refuses it, unless it is a test's or the simulator's own).
            None => atts
                .iter()
                .map(|a| {
                    let (m, sig) = crate::attestation_batch::signed(a).unwrap_or_else(|| (a.signing_bytes(), &a.signature));
                    (self.verifier)(&a.peer, &m, sig)
                })
                .collect(),
        }
        .into_iter();
        items.iter().map(|i| matches!(i, ReportItem::Release(..)) || valid.next().unwrap_or(false)).collect()
    }

    /// Hands every event the coordinator holds to its job's host.
    fn route_events(&mut self) {
        let mut events = Vec::new();
        while let Some(event) = self.shared.coord.poll_event() {
            events.push(event);
        }
        self.deliver(events);
    }

    /// Hands `events` to their jobs' hosts (those of a job without a host are dropped: nothing
    /// here acts on them).
    fn deliver(&mut self, events: Vec<Event>) {
        let mut by_job: BTreeMap<JobId, Vec<Event>> = BTreeMap::new();
        for e in events {
            by_job.entry(e.job()).or_default().push(e);
        }
        for (job, events) in by_job {
            self.touched.push(job);
            if let Some(h) = self.hosts.get_mut(&job) {
                h.clock = h.clock.max(self.now);
                h.on_events(&mut self.shared, events, &[]);
            }
        }
    }

    /// After a call: events a host met for other jobs go to theirs; every host's writes, then
    /// its output, move here (the output waiting for those writes), a report answer of a batch
    /// spanning jobs merged with its other parts.
    fn collect(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort();
        touched.dedup();
        let mut spilled: Vec<Event> = Vec::new();
        for job in &touched {
            if let Some(h) = self.hosts.get_mut(job) {
                spilled.append(&mut h.take_spill());
            }
        }
        if !spilled.is_empty() {
            self.deliver(spilled);
            touched.append(&mut self.touched);
            touched.sort();
            touched.dedup();
        }
        for job in &touched {
            let Some(h) = self.hosts.get_mut(job) else { continue };
            for w in h.take_writes() {
                self.written += 1;
                self.writes.push_back((self.written, w));
            }
        }
        let standings = self.shared.coord.take_changed_standings();
        if !standings.is_empty() {
            self.written += 1;
            self.writes.push_back((self.written, Write::Standings(standings)));
        }
        let after = self.written;
        for job in &touched {
            let Some(h) = self.hosts.get_mut(job) else { continue };
            while let Some(t) = h.poll_transmit() {
                match t {
                    Transmit::ReportAnswer { to, batch, accepted, rejected } if let Some(p) = self.parts.get_mut(&batch) => {
                        p.left -= 1;
                        p.accepted += accepted;
                        p.rejected += rejected;
                        if p.left == 0 {
                            let (accepted, rejected) = (p.accepted, p.rejected);
                            self.parts.remove(&batch);
                            self.transmits.push_back((after, Transmit::ReportAnswer { to, batch, accepted, rejected }));
                        }
                    }
                    // An `Adopt` waits too: the driver fills its outputs and inputs in from its
                    // store, which must hold what the log names.
                    t @ (Transmit::ReportAnswer { .. } | Transmit::Adopt { .. }) => self.transmits.push_back((after, t)),
                    t => self.transmits.push_back((0, t)),
                }
            }
            while let Some(n) = h.poll_notice() {
                self.notices.push_back((after, *job, n));
            }
        }
        for job in touched {
            self.reindex(job);
        }
    }

    /// Files `job`'s timer under when it is next due.
    fn reindex(&mut self, job: JobId) {
        if let Some(at) = self.due_at.remove(&job) {
            self.due.remove(&(at, job));
        }
        if let Some(at) = self.hosts.get(&job).and_then(Host::poll_timeout) {
            self.due.insert((at, job));
            self.due_at.insert(job, at);
        }
    }
}
