//! The coordinator: a sans-IO state machine over the jobs this peer coordinates. The driver feeds
//! it submissions, lease requests, attestations and timer ticks, each with `now`, and drains the
//! events it emits. It does no I/O and reads no clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::job::{JobTable, LeaseIndex};
use crate::prefix::{Diversity, NetPrefix};
pub use crate::job::JobView;
use crate::expiries::Expiries;
use crate::task::TaskEntry;
pub use crate::task::TaskView;
use crate::{
    Attestation, Failure, JobId, JobSpec, JobState, PeerId, Policy, PolicyCaps, PolicyError, Reputation,
    TaskId, Verdict,
};

/// Milliseconds on the driver's clock (real or simulated).
pub type Millis = u64;

/// Bounds and keys of a coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// What submitters may ask for.
    pub caps: PolicyCaps,
    /// Added to a task's timeout to make its lease duration (fetch, queueing, reporting).
    /// Default 5 000.
    pub lease_grace_ms: u64,
    /// Most unfinished jobs held at once (queued or running); ended ones do not count, so
    /// finished jobs never keep a peer from taking new ones.
    pub max_jobs: usize,
    /// Secret key of the unpredictable task order; never leaves this peer.
    pub secret: [u8; 32],
    /// Most live leases one peer may hold across every job here; a flood of lease requests from
    /// one peer gets nothing past it.
    pub max_leases_per_peer: usize,
    /// How far apart the replicas of one task must be: no two in one network
    /// ([`Diversity::Prefix`], the default), nor one /16 or /32 ([`Diversity::Wide`]), or
    /// anywhere ([`Diversity::Off`]); for jobs whose policy does not say (`Policy::diversity`).
    pub diversity: Diversity,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            caps: PolicyCaps::default(),
            lease_grace_ms: 5_000,
            max_jobs: 10_000,
            secret: [0; 32],
            max_leases_per_peer: 4096,
            diversity: Diversity::Prefix,
        }
    }
}

/// A peer's time-bounded claim on one replica of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The task to run.
    pub task: TaskId,
    /// The peer that holds it.
    pub peer: PeerId,
    /// When it lapses and the replica returns to the pool.
    pub expires_at: Millis,
}

/// What the coordinator tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A task reached its final verdict.
    TaskFinal { task: TaskId, verdict: Verdict },
    /// Every task of the job is final, or the job was cancelled.
    JobFinished { job: JobId, state: JobState },
    /// A lease lapsed without a report (it expired, or its peer was declared down); its replica
    /// is back in the pool and that peer never gets the task again.
    LeaseExpired { task: TaskId, peer: PeerId },
}

impl Event {
    /// The job it is about.
    pub fn job(&self) -> JobId {
        match self {
            Event::TaskFinal { task, .. } | Event::LeaseExpired { task, .. } => task.job,
            Event::JobFinished { job, .. } => *job,
        }
    }
}

/// Why a job was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The policy or task count is outside the caps.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A job with this id is already held.
    #[error("job {0} already exists")]
    Duplicate(JobId),
    /// The coordinator holds its maximum number of unfinished jobs.
    #[error("this peer holds its maximum of {0} unfinished jobs; try another peer or later")]
    Full(usize),
}

/// Why an attestation was not recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// No such job here.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// The index is past the job's last task.
    #[error("task {0} does not exist")]
    UnknownTask(TaskId),
    /// The peer holds no live lease on the task (never leased, expired, or already reported).
    #[error("peer {peer:?} holds no lease on task {task}")]
    NoLease { task: TaskId, peer: PeerId },
    /// A replayed attestation is marked as taken alone where that cannot have happened: the
    /// job does not allow adaptive replication, or the task already had an attestation.
    #[error("task {0} cannot have been decided by a lone replica")]
    NotLone(TaskId),
}

/// Why a leased replica is handed back without an attestation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The run passed its wall deadline (not deterministic, so not an attestation).
    Deadline,
    /// The worker could not run it (busy, fetch failed, shutting down).
    Abandoned,
}

/// What happened to an attestation that was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reported {
    /// Recorded; the task has no verdict yet.
    Recorded,
    /// Recorded, and the task is now final.
    Decided,
    /// The task was already final; only reputation took note.
    Late,
}

/// The jobs this peer coordinates.
pub struct Coordinator {
    config: CoordinatorConfig,
    jobs: HashMap<JobId, JobTable>,
    /// Jobs with work to hand out, highest priority first, then oldest first.
    active: Vec<JobId>,
    /// Jobs held as a backup coordinator: kept up to date, but leased by another.
    standby: std::collections::HashSet<JobId>,
    /// Rotates which of equally ranked jobs is served first, for fairness.
    turn: usize,
    /// When the leases given run out (stale ones swept as they pile up).
    expiries: Expiries,
    /// Live leases by peer, kept true by every change of a task's leases.
    held: LeaseIndex,
    reputation: Reputation,
    /// Lone leases given to each peer since a replicated verdict last showed it agreeing (see
    /// [`Coordinator::LONE_BUDGET`]).
    lone_used: HashMap<PeerId, u32>,
    /// The network each peer last asked for leases from ([`Coordinator::note_prefix`]); at
    /// most [`Coordinator::MAX_PREFIXES`].
    prefixes: BTreeMap<PeerId, NetPrefix>,
    /// The peers of `prefixes` by their /24 (/48), for [`Coordinator::lease_room`].
    networks: HashMap<[u8; 7], BTreeSet<PeerId>>,
    /// Networks a banned key asked from, until when their unproven keys get nothing (at most
    /// [`Coordinator::MAX_COOLING`]).
    cooling: HashMap<[u8; 7], Millis>,
    live_peers: usize,
    events: VecDeque<Event>,
}

impl Coordinator {
    /// How many lapsed peers a task remembers beyond its `max_replicas`: it keeps the newest
    /// `max_replicas + LAPSED_SLACK`, so memory stays bounded however many peers let it lapse.
    pub const LAPSED_SLACK: u32 = 4;

    /// Most lone leases a trusted peer gets between two replicated verdicts it agrees with. A
    /// lone result is accepted as it arrives, so without a budget a trusted liar holding many
    /// leases could plant that many lies before its first spot check is decided; with it, at
    /// most this many. It binds an honest peer only rarely: at a 10% spot-check rate the run of
    /// lone leases between checks averages 9.
    pub const LONE_BUDGET: u32 = 16;

    /// Live leases a key with no agreeing result may hold ([`Coordinator::lease_quota`]): one
    /// lease batch, against `max_leases_per_peer` (4 096 by default) for a proven one.
    pub const NEW_KEY_LEASES: usize = crate::pull::MAX_BATCH as usize;
    /// More live leases a key may hold per agreeing result it has.
    pub const LEASES_PER_AGREEMENT: usize = 4;

    /// How long, after a banned key asked for leases from a /24 (/48), the keys of that network
    /// with no agreeing result get none: a banned peer's next key does not start again at once.
    pub const BAN_COOL_OFF_MS: Millis = 10 * 60_000;
    /// Most networks cooling off at once; past it, those whose time is up are forgotten, and
    /// if none is, no new one is noted.
    pub const MAX_COOLING: usize = 65_536;

    /// Most peers whose network is remembered; past it the lowest PeerId's is forgotten.
    pub const MAX_PREFIXES: usize = 262_144;

    /// An empty coordinator.
    pub fn new(config: CoordinatorConfig) -> Coordinator {
        Coordinator {
            config,
            jobs: HashMap::new(),
            active: Vec::new(),
            standby: Default::default(),
            lone_used: HashMap::new(),
            prefixes: BTreeMap::new(),
            networks: HashMap::new(),
            cooling: HashMap::new(),
            turn: 0,
            expiries: Expiries::default(),
            held: LeaseIndex::default(),
            reputation: Reputation::default(),
            live_peers: 1,
            events: VecDeque::new(),
        }
    }

    /// The caps submissions are checked against.
    pub fn caps(&self) -> &PolicyCaps {
        &self.config.caps
    }

    /// Tells the coordinator how many distinct live peers the mesh has (itself included), for
    /// the "needs more peers" message.
    pub fn set_live_peers(&mut self, n: usize) {
        self.live_peers = n.max(1);
    }

    /// Accepts a new job, checking its policy against the caps.
    pub fn submit(&mut self, id: JobId, spec: JobSpec) -> Result<(), SubmitError> {
        self.config.caps.check(&spec.policy, u64::from(spec.task_count))?;
        if !self.jobs.contains_key(&id) && self.open_jobs() >= self.config.max_jobs {
            return Err(SubmitError::Full(self.config.max_jobs));
        }
        self.insert(id, spec)
    }

    /// Takes back a job this peer accepted earlier (after a restart); caps are not re-checked,
    /// since they may have changed since the job was accepted (`max_jobs` neither: a peer whose
    /// cap was lowered still starts with every job it holds). A driver taking on a job from
    /// another peer checks [`Coordinator::open_jobs`] against [`Coordinator::max_jobs`] first.
    pub fn restore(&mut self, id: JobId, spec: JobSpec, cancelled: bool) -> Result<(), SubmitError> {
        self.insert(id, spec)?;
        if cancelled {
            self.cancel(&id);
        }
        Ok(())
    }

    fn insert(&mut self, id: JobId, spec: JobSpec) -> Result<(), SubmitError> {
        if self.jobs.contains_key(&id) {
            return Err(SubmitError::Duplicate(id));
        }
        let key = u64::from_le_bytes(
            blake3::keyed_hash(&self.config.secret, id.as_bytes()).as_bytes()[..8]
                .try_into()
                .unwrap_or_default(),
        );
        self.jobs.insert(id, JobTable::new(spec, key));
        self.active.push(id);
        self.sort_active();
        Ok(())
    }

    fn sort_active(&mut self) {
        let jobs = &self.jobs;
        self.active.sort_by_key(|id| {
            jobs.get(id).map(|j| (Reverse(j.spec.policy.priority), j.spec.submitted_at_ms, *id))
        });
    }

    /// Hands `peer` up to `max` replicas to run, across jobs: highest priority first, equally
    /// ranked jobs in turn. Never two replicas of one task to one peer, nor a task whose lease
    /// the peer let lapse; none to a banned peer.
    pub fn lease(&mut self, peer: PeerId, max: usize, now: Millis) -> Vec<Lease> {
        self.lease_where(peer, max, now, |_| true)
    }

    /// [`Coordinator::lease`], only from the jobs whose spec `serves` accepts (a volunteer's
    /// filters on the modules and quorums its own slots run).
    pub fn lease_where(&mut self, peer: PeerId, max: usize, now: Millis, serves: impl Fn(&JobSpec) -> bool) -> Vec<Lease> {
        let mut out = Vec::new();
        if self.reputation.is_banned(&peer) {
            self.cool_off(&peer, now);
        }
        if max == 0 || self.reputation.is_banned(&peer) || self.active.is_empty() {
            return out;
        }
        self.turn = self.turn.wrapping_add(1);
        let top = self.jobs.get(&self.active[0]).map_or(0, |j| j.spec.policy.priority);
        let ties = self.active.iter().take_while(|id| self.jobs.get(id).is_some_and(|j| j.spec.policy.priority == top)).count();
        let order: Vec<JobId> = (0..self.active.len())
            .map(|k| if k < ties { self.active[(k + self.turn) % ties] } else { self.active[k] })
            .collect();
        for id in order {
            if !self.jobs.get(&id).is_some_and(|j| serves(&j.spec)) {
                continue;
            }
            let room = max - out.len();
            out.extend(self.lease_in(id, peer, room, now));
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// Hands `peer` up to `max` replicas of one job (a worker pulling work for a job it chose).
    /// Same rules as [`Coordinator::lease`].
    pub fn lease_job(&mut self, job: &JobId, peer: PeerId, max: usize, now: Millis) -> Vec<Lease> {
        if self.reputation.is_banned(&peer) {
            self.cool_off(&peer, now);
        }
        if max == 0 || self.reputation.is_banned(&peer) || !self.active.contains(job) {
            return Vec::new();
        }
        self.lease_in(*job, peer, max, now)
    }

    /// Notes the network `peer`'s lease request came from (`None`: no prefix, see
    /// [`crate::prefix`]): no replica of a task goes to it while a peer of that network holds
    /// or ran one. Call before [`Coordinator::lease_job`] with the request's source address.
    pub fn note_prefix(&mut self, peer: PeerId, prefix: Option<NetPrefix>) {
        let evicted = match prefix {
            None => None,
            Some(_) if self.prefixes.len() >= Self::MAX_PREFIXES && !self.prefixes.contains_key(&peer) => {
                self.prefixes.pop_first()
            }
            Some(_) => None,
        };
        let old = self.prefixes.remove(&peer).map(|p| (peer, p));
        for (p, net) in evicted.into_iter().chain(old) {
            if let Some(set) = self.networks.get_mut(&net.narrow) {
                set.remove(&p);
                if set.is_empty() {
                    self.networks.remove(&net.narrow);
                }
            }
        }
        let Some(prefix) = prefix else { return };
        self.networks.entry(prefix.narrow).or_default().insert(peer);
        self.prefixes.insert(peer, prefix);
    }

    /// Marks a job as held in standby (a backup coordinator: attestations replayed into it, no
    /// leases handed out) or as active again (after the coordinators before it died).
    pub fn set_standby(&mut self, job: &JobId, standby: bool) {
        if standby {
            self.standby.insert(*job);
        } else {
            self.standby.remove(job);
        }
    }

    /// Whether a job is held in standby.
    pub fn is_standby(&self, job: &JobId) -> bool {
        self.standby.contains(job)
    }

    /// How many live leases `peer` holds here.
    pub fn lease_count(&self, peer: &PeerId) -> usize {
        self.held.count(peer)
    }

    fn lease_in(&mut self, id: JobId, peer: PeerId, max: usize, now: Millis) -> Vec<Lease> {
        if self.standby.contains(&id) {
            return Vec::new();
        }
        let max = max.min(self.lease_room(&peer, now));
        if max == 0 {
            return Vec::new();
        }
        let Some(job) = self.jobs.get_mut(&id) else { return Vec::new() };
        // Not a task a peer of this one's network holds or ran a replica of, as far apart as the
        // job asks (or this coordinator's default).
        let (prefixes, diversity) = (&self.prefixes, job.spec.policy.diversity.unwrap_or(self.config.diversity));
        let mine = prefixes.get(&peer).filter(|_| diversity != Diversity::Off);
        let near = |other: &PeerId| mine.is_some_and(|m| prefixes.get(other).is_some_and(|o| o.same_network(m, diversity)));
        let picked = job.pick(&peer, max, near);
        if picked.is_empty() {
            return Vec::new();
        }
        job.started = true;
        let expires_at = now.saturating_add(job.spec.policy.limits.timeout_ms + self.config.lease_grace_ms);
        // Adaptive replication: a trusted peer runs an untouched task alone, unless the task is
        // one of the spot checks.
        let lone = job.spec.policy.adaptive.filter(|a| self.reputation.is_trusted(&peer, a.min_agreed));
        let used = self.lone_used.entry(peer).or_insert(0);
        let mut out = Vec::with_capacity(picked.len());
        for index in picked {
            let task = TaskId { job: id, index };
            let spot = lone.map(|a| spot_checked(&self.config.secret, &task, a.spot_check_per_mille));
            job.mutate(index, |t, _| {
                if t.load() == 0 {
                    match spot {
                        Some(false) if *used < Self::LONE_BUDGET => {
                            t.set_lone(Some(peer));
                            *used += 1;
                        }
                        Some(true) => t.check = true,
                        _ => {}
                    }
                }
                t.lease(peer, expires_at);
            });
            self.held.hold(peer, task);
            self.expiries.push(expires_at, task, peer);
            out.push(Lease { task, peer, expires_at });
        }
        self.sweep_expiries_if_due();
        out
    }

    /// Records an attestation whose signature the driver has checked. The peer must hold a live
    /// lease on the task. Whether it was taken alone (adaptive replication) is in
    /// [`TaskView::lone`] afterwards: store and replicate that mark with it.
    pub fn report(&mut self, att: impl Into<Arc<Attestation>>) -> Result<Reported, ReportError> {
        self.record(att.into(), None)
    }

    /// Replays an attestation recorded before a restart (no lease needed), as not taken alone.
    pub fn restore_attestation(&mut self, att: impl Into<Arc<Attestation>>) -> Result<Reported, ReportError> {
        self.record(att.into(), Some(false))
    }

    /// Replays an attestation recorded before a restart or by another coordinator of the job,
    /// with the recorder's decision whether it was taken alone. Reputation tables differ between
    /// coordinators, so the decision travels with the attestation and replay reaches the same
    /// verdicts. A `lone` mark the job's policy or the task's state rules out is refused.
    pub fn restore_attestation_lone(&mut self, att: impl Into<Arc<Attestation>>, lone: bool) -> Result<Reported, ReportError> {
        self.record(att.into(), Some(lone))
    }

    /// `replay` is `None` for a live report (lease needed, this coordinator decides whether it
    /// is taken alone) and `Some(lone)` for a replay.
    fn record(&mut self, att: Arc<Attestation>, replay: Option<bool>) -> Result<Reported, ReportError> {
        let need_lease = replay.is_none();
        let task = att.task;
        let job = self.jobs.get_mut(&task.job).ok_or(ReportError::UnknownJob(task.job))?;
        let adaptive = job.spec.policy.adaptive;
        if job.shed() && task.index < job.spec.task_count {
            // Ended and its task table let go ([`Coordinator::shed`]): every task is final.
            return Ok(Reported::Late);
        }
        let entry = job.tasks.get(task.index as usize).ok_or(ReportError::UnknownTask(task))?;
        let peer = att.peer;
        let leased = entry.leases.iter().any(|(p, _)| *p == peer);
        if let Some(key) = entry.verdict().agreed() {
            // Late: the verdict stands; the report still tells us whether the peer is honest
            // (unless the verdict rests on one peer alone, which proves nothing).
            if need_lease && !leased {
                // A replica whose lease lapsed before the verdict (known gap 1 was that this
                // went unjudged): a wrong answer counts against its peer, once; an agreeing one
                // counts for nothing, as it may be copied from the verified output. Either is
                // still refused: it holds no lease, and nothing of it is kept.
                let wrong = entry.lapsed().contains(&peer) && !entry.lone_verdict && key != &att.result;
                if wrong {
                    self.reputation.judged(peer, false);
                    self.distrust(peer);
                    self.mutate_task(task, |t, _| t.forget_lapse(&peer));
                }
                return Err(ReportError::NoLease { task, peer });
            }
            if !entry.lone_verdict {
                let agrees = key == &att.result;
                self.reputation.judged(peer, agrees);
                if !agrees {
                    self.distrust(peer);
                }
            }
            self.mutate_task(task, |t, _| {
                t.leases.retain(|(p, _)| *p != peer);
                t.let_go_of_leases_if_none();
            });
            return Ok(Reported::Late);
        }
        let attested = entry.attestations.iter().any(|a| a.peer == peer);
        if attested || (need_lease && !leased) || entry.verdict().is_final() {
            return Err(ReportError::NoLease { task, peer });
        }
        let lone = match replay {
            // Taken alone only if the peer still holds the lone lease and is still trusted:
            // evidence against it since the lease was given ends its lone replicas too.
            None => {
                entry.lone() == Some(peer)
                    && entry.attestations.is_empty()
                    && adaptive.is_some_and(|a| self.reputation.is_trusted(&peer, a.min_agreed))
            }
            Some(true) if adaptive.is_none() || !entry.attestations.is_empty() => {
                return Err(ReportError::NotLone(task));
            }
            Some(lone) => lone,
        };
        job.started = true;
        let (verdict, decided) = self
            .mutate_task(task, |t, policy| t.attest(att, policy, lone))
            .ok_or(ReportError::UnknownTask(task))?;
        if !decided {
            return Ok(Reported::Recorded);
        }
        let mut liars = Vec::new();
        if let (Some(key), Some(job), false) = (verdict.agreed(), self.jobs.get(&task.job), lone) {
            for a in &job.tasks[task.index as usize].attestations {
                let agrees = &a.result == key;
                self.reputation.judged(a.peer, agrees);
                if agrees {
                    self.lone_used.remove(&a.peer);
                } else {
                    liars.push(a.peer);
                }
            }
        }
        for p in liars {
            self.distrust(p);
        }
        self.events.push_back(Event::TaskFinal { task, verdict });
        self.after_final(task.job);
        Ok(Reported::Decided)
    }

    /// Changes one task through `f`, keeping the per-peer lease index true (see
    /// [`LeaseIndex::mutate`]). `None` when the task does not exist.
    fn mutate_task<R>(&mut self, task: TaskId, f: impl FnOnce(&mut TaskEntry, &Policy) -> R) -> Option<(R, bool)> {
        self.held.mutate(self.jobs.get_mut(&task.job)?, task, f)
    }

    /// Hands back a leased replica that produced no attestation. Past `max_replicas` deadline
    /// misses the task fails, so a task that can never finish in time does not loop forever.
    pub fn release(&mut self, task: TaskId, peer: PeerId, why: Release) {
        let Some((verdict, decided)) = self.mutate_task(task, |t, policy| {
            let before = t.leases.len();
            t.leases.retain(|(p, _)| *p != peer);
            t.let_go_of_leases_if_none();
            if why == Release::Deadline && t.leases.len() < before && !t.verdict.0.is_final() {
                t.timeouts += 1;
                if t.timeouts >= policy.max_replicas {
                    t.verdict.0 = Verdict::Failed(Failure::TimedOut(t.timeouts));
                    t.end_leases();
                }
            }
            t.verdict.0.clone()
        }) else {
            return;
        };
        if decided {
            self.events.push_back(Event::TaskFinal { task, verdict });
            self.after_final(task.job);
        }
    }

    /// Replays a lease the active coordinator gave (its replication stream) into a job this
    /// coordinator holds: should it come to lead, the worker's report for the lease is taken
    /// instead of the task running again, and meanwhile the task counts the replica out. The
    /// lease lapses here like any other. Returns whether it was taken (not when the task is final
    /// or the peer already holds, ran or let lapse a replica of it).
    pub fn restore_lease(&mut self, lease: Lease) -> bool {
        let Lease { task, peer, expires_at } = lease;
        let open = self
            .jobs
            .get(&task.job)
            .and_then(|j| j.tasks.get(task.index as usize))
            .is_some_and(|t| !t.verdict().is_final() && !t.involves(&peer));
        if !open {
            return false;
        }
        self.mutate_task(task, |t, _| t.lease(peer, expires_at));
        self.expiries.push(expires_at, task, peer);
        self.sweep_expiries_if_due();
        true
    }

    /// Sweeps the expiries of leases already ended once they pile up (which only spares the
    /// wake-ups they would have caused: `tick` skips them).
    fn sweep_expiries_if_due(&mut self) {
        if self.expiries.due_for_sweep() {
            let jobs = &self.jobs;
            self.expiries.sweep(|at, task, peer| {
                jobs.get(&task.job)
                    .and_then(|j| j.tasks.get(task.index as usize))
                    .is_some_and(|t| t.leases.iter().any(|(p, e)| p == peer && *e == at))
            });
        }
    }

    /// Replays a task that failed because `misses` replicas missed their deadline (a verdict no
    /// attestation carries: after a restart, or told by the active coordinator). Returns whether
    /// it changed anything.
    pub fn restore_timed_out(&mut self, task: TaskId, misses: u32) -> bool {
        let Some((verdict, decided)) = self.mutate_task(task, |t, _| {
            if !t.verdict.0.is_final() {
                t.timeouts = t.timeouts.max(misses);
                t.verdict.0 = Verdict::Failed(Failure::TimedOut(misses));
                t.end_leases();
            }
            t.verdict.0.clone()
        }) else {
            return false;
        };
        if decided {
            self.events.push_back(Event::TaskFinal { task, verdict });
            self.after_final(task.job);
        }
        decided
    }

    fn after_final(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else { return };
        let state = job.state();
        if state.is_final() {
            self.active.retain(|j| *j != id);
            self.events.push_back(Event::JobFinished { job: id, state });
        }
    }

    /// Expires lapsed leases; their replicas return to the pool, and their peers never get those
    /// tasks again and lose some reputation.
    ///
    /// The leases one answer granted share their expiry, and lapse together when that one
    /// answer was lost: they count as one lapse against the peer, not one each. The evidence is
    /// one lost message, and an honest peer behind a lossy link would otherwise be banned by two
    /// lost answers before any of its results was judged.
    pub fn tick(&mut self, now: Millis) {
        let mut blamed: std::collections::BTreeSet<(PeerId, Millis)> = std::collections::BTreeSet::new();
        while let Some((at, task, peer)) = self.expiries.pop_due(now) {
            let first = !blamed.contains(&(peer, at));
            if self.lapse(task, peer, Some(at), first) && first {
                blamed.insert((peer, at));
            }
        }
    }

    /// The membership layer declared `peer` dead at `now`: every live lease it holds lapses at
    /// once, exactly as if it had expired (an [`Event::LeaseExpired`] each, in task order), so its
    /// replicas return to the pool without waiting. Costs the peer's leases, not the job table.
    /// Returns how many leases lapsed. A peer that comes back may lease other tasks.
    pub fn peer_down(&mut self, peer: PeerId, now: Millis) -> usize {
        let _ = now; // The lapse takes effect at once; `now` is taken for symmetry with `tick`.
        let tasks = self.held.take(&peer);
        let n = tasks.len();
        // A crash is not a lie: these lapses cost the peer no reputation.
        let lapsed = tasks.into_iter().filter(|task| self.lapse(*task, peer, None, false)).count();
        debug_assert_eq!(lapsed, n, "the lease index held a lease the task does not");
        lapsed
    }

    /// The live leases `peer` holds, in task order.
    pub fn leases_of(&self, peer: &PeerId) -> Vec<Lease> {
        self.held
            .of(peer)
            .filter_map(|task| {
                let t = self.jobs.get(&task.job)?.tasks.get(task.index as usize)?;
                let lease = t.leases.iter().find(|(p, _)| p == peer);
                debug_assert!(lease.is_some(), "the lease index held a lease the task does not");
                let &(_, expires_at) = lease?;
                Some(Lease { task: *task, peer: *peer, expires_at })
            })
            .collect()
    }

    /// Lapses `peer`'s lease on `task` (the one expiring at `expiry`, when given): the replica
    /// returns to the pool, the task remembers the peer, and (when `blame`) the peer's record
    /// counts a lapse.
    fn lapse(&mut self, task: TaskId, peer: PeerId, expiry: Option<Millis>, blame: bool) -> bool {
        let lapsed = self
            .mutate_task(task, |t, policy| {
                t.lapse(&peer, expiry, policy.max_replicas.saturating_add(Self::LAPSED_SLACK) as usize)
            })
            .is_some_and(|(lapsed, _)| lapsed);
        if lapsed {
            if blame {
                self.reputation.lapsed(peer);
            }
            self.events.push_back(Event::LeaseExpired { task, peer });
        }
        lapsed
    }

    /// When the next lease lapses, so the driver knows when to tick.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.expiries.next()
    }

    /// Cancels a job: no more leases, outstanding ones void. Returns false for an unknown job.
    pub fn cancel(&mut self, id: &JobId) -> bool {
        let Some(job) = self.jobs.get_mut(id) else { return false };
        if job.state().is_final() {
            return true;
        }
        job.cancelled = true;
        let leased: Vec<u32> = (0..job.spec.task_count).filter(|&i| !job.tasks[i as usize].leases.is_empty()).collect();
        for index in leased {
            self.mutate_task(TaskId { job: *id, index }, |t, _| t.end_leases());
        }
        self.active.retain(|j| j != id);
        self.events.push_back(Event::JobFinished { job: *id, state: JobState::Cancelled });
        true
    }

    /// Forgets a job that has ended (its task table, its place in the queue, leases still
    /// indexed), so a long-running peer does not hold every job it ever coordinated: the driver
    /// calls it when retention removes the job's records. False for an unknown or unfinished job.
    pub fn forget(&mut self, id: &JobId) -> bool {
        if !self.jobs.get(id).is_some_and(|j| j.state().is_final()) {
            return false;
        }
        if let Some(job) = self.jobs.remove(id) {
            for (index, t) in job.tasks.iter().enumerate() {
                for (peer, _) in &t.leases {
                    self.held.unhold(peer, &TaskId { job: *id, index: index as u32 });
                }
            }
        }
        self.active.retain(|j| j != id);
        self.standby.remove(id);
        true
    }

    /// Most unfinished jobs held (`CoordinatorConfig::max_jobs`).
    pub fn max_jobs(&self) -> usize {
        self.config.max_jobs
    }

    /// How many jobs held have not ended: what `max_jobs` counts.
    pub fn open_jobs(&self) -> usize {
        // `active` holds exactly the jobs that are not final (see `after_final`, `cancel`).
        self.active.len()
    }

    /// Lets go of an ended job's task table (attestations, leases, lapses), keeping its spec and
    /// counts: [`Coordinator::job`] still answers, [`Coordinator::task`] and the other per-task
    /// reads answer nothing, and late reports are taken as [`Reported::Late`]. A driver that
    /// stores every verdict calls it once a job's end is durable and serves the tasks from its
    /// store, so a long-running peer does not keep every task it ever coordinated in memory.
    /// False for an unknown or unfinished job.
    pub fn shed(&mut self, id: &JobId) -> bool {
        let Some(job) = self.jobs.get_mut(id).filter(|j| j.state().is_final()) else { return false };
        let tasks = std::mem::take(&mut job.tasks);
        job.clear_open();
        for (index, t) in tasks.iter().enumerate() {
            for (peer, _) in &t.leases {
                self.held.unhold(peer, &TaskId { job: *id, index: index as u32 });
            }
        }
        true
    }

    /// Whether a job's task table was let go ([`Coordinator::shed`]).
    pub fn is_shed(&self, id: &JobId) -> bool {
        self.jobs.get(id).is_some_and(|j| j.shed())
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Reputation of the peers seen.
    pub fn reputation(&self) -> &Reputation {
        &self.reputation
    }

    /// Sets what this coordinator knows of `peer`, replacing its standing: for a driver that
    /// keeps reputation across restarts, and for the simulator's peers with a past. The standing
    /// only counts from now on (lone leases already given stand until they end).
    pub fn set_standing(&mut self, peer: PeerId, standing: crate::Standing) {
        self.reputation.set(peer, standing);
        if standing.disagreed > 0 || standing.invalid > 0 {
            self.distrust(peer);
        }
    }

    /// The standings changed since the last call, for a driver that stores them (and restores
    /// them with [`Coordinator::set_standing`] at start).
    pub fn take_changed_standings(&mut self) -> Vec<(PeerId, crate::Standing)> {
        self.reputation.take_changed()
    }

    /// Most live leases `peer` may hold here: [`Coordinator::NEW_KEY_LEASES`] for a key with no
    /// record, growing by [`Coordinator::LEASES_PER_AGREEMENT`] with each agreeing result, up to
    /// `max_leases_per_peer`. Keys cost nothing, so a fresh one gets little until it has shown
    /// honest work.
    pub fn lease_quota(&self, peer: &PeerId) -> usize {
        let agreed = usize::try_from(self.reputation.get(peer).agreed).unwrap_or(usize::MAX);
        Self::NEW_KEY_LEASES.saturating_add(agreed.saturating_mul(Self::LEASES_PER_AGREEMENT)).min(self.config.max_leases_per_peer)
    }

    /// How many more leases `peer` may take here: its [`Coordinator::lease_quota`] less what it
    /// holds, and, for a key with no agreeing result whose network is known, no more than is
    /// left of the one batch ([`Coordinator::NEW_KEY_LEASES`]) that every such key of its /24
    /// (IPv4) or /48 (IPv6) shares: many fresh keys in one network cost what one does, so a
    /// banned peer's next key gets nothing while its siblings hold that network's batch, and
    /// none at all for [`Coordinator::BAN_COOL_OFF_MS`] after a banned key asked from there.
    pub fn lease_room(&self, peer: &PeerId, now: Millis) -> usize {
        let own = self.lease_quota(peer).saturating_sub(self.held.count(peer));
        let unproven = |p: &PeerId| self.reputation.get(p).agreed == 0;
        let Some(mine) = self.prefixes.get(peer).filter(|_| unproven(peer)) else { return own };
        if self.cooling.get(&mine.narrow).is_some_and(|until| now < *until) {
            return 0;
        }
        let Some(siblings) = self.networks.get(&mine.narrow) else { return own };
        // Whichever is fewer: the keys of its network, or the peers holding leases (a network
        // of many idle keys costs no more than the holders).
        let shared: usize = if siblings.len() <= self.held.holder_count() {
            siblings.iter().filter(|p| unproven(p)).map(|p| self.held.count(p)).sum()
        } else {
            self.held.holders().filter(|(p, _)| siblings.contains(*p) && unproven(p)).map(|(_, n)| n).sum()
        };
        own.min(Self::NEW_KEY_LEASES.saturating_sub(shared))
    }

    /// A banned `peer` asked for leases: its network cools off (see [`Coordinator::lease_room`]).
    fn cool_off(&mut self, peer: &PeerId, now: Millis) {
        let Some(net) = self.prefixes.get(peer).map(|p| p.narrow) else { return };
        if self.cooling.len() >= Self::MAX_COOLING && !self.cooling.contains_key(&net) {
            self.cooling.retain(|_, until| now < *until);
            if self.cooling.len() >= Self::MAX_COOLING {
                return;
            }
        }
        self.cooling.insert(net, now.saturating_add(Self::BAN_COOL_OFF_MS));
    }

    /// Holds a dropped record (bad signature) against `peer`.
    pub fn penalize(&mut self, peer: PeerId) {
        self.reputation.invalid(peer);
        self.distrust(peer);
    }

    /// Evidence against `peer` just arrived: its lone leases become ordinary ones, so their tasks
    /// get the full quorum (its report on them will be checked like anyone's).
    fn distrust(&mut self, peer: PeerId) {
        let lone: Vec<TaskId> = self
            .held
            .of(&peer)
            .filter(|t| {
                self.jobs.get(&t.job).and_then(|j| j.tasks.get(t.index as usize)).is_some_and(|e| e.lone() == Some(peer))
            })
            .copied()
            .collect();
        for task in lone {
            self.mutate_task(task, |t, _| t.set_lone(None));
        }
    }

    /// Ids of every job held.
    pub fn job_ids(&self) -> impl Iterator<Item = &JobId> {
        self.jobs.keys()
    }

    /// A job's status.
    pub fn job(&self, id: &JobId) -> Option<JobView> {
        Some(self.jobs.get(id)?.view(*id, self.live_peers))
    }

    /// A job's sandbox limits (cheaper than [`Coordinator::job`]).
    pub fn limits(&self, id: &JobId) -> Option<crate::Limits> {
        Some(self.jobs.get(id)?.spec.policy.limits)
    }

    /// One task's status.
    pub fn task(&self, id: &TaskId) -> Option<TaskView> {
        let job = self.jobs.get(&id.job)?;
        Some(job.tasks.get(id.index as usize)?.view(*id, &job.spec.policy, self.live_peers))
    }

    /// A job's tasks that failed by deadline misses, as (index, misses): verdicts no
    /// attestation carries, which another coordinator must be told of.
    pub fn timed_out(&self, id: &JobId) -> Vec<(u32, u32)> {
        let Some(job) = self.jobs.get(id) else { return Vec::new() };
        (0u32..)
            .zip(&job.tasks)
            .filter_map(|(i, t)| match t.verdict() {
                Verdict::Failed(Failure::TimedOut(misses)) => Some((i, *misses)),
                _ => None,
            })
            .collect()
    }

    /// Indices of a job's tasks that have no final verdict yet.
    pub fn unfinished(&self, id: &JobId) -> Vec<u32> {
        let Some(job) = self.jobs.get(id) else { return Vec::new() };
        (0u32..).zip(&job.tasks).filter(|(_, t)| !t.verdict().is_final()).map(|(i, _)| i).collect()
    }

    /// The agreed attestation of a final task (the first that carried the agreed result).
    pub fn agreed_attestation(&self, id: &TaskId) -> Option<&Attestation> {
        let t = self.jobs.get(&id.job)?.tasks.get(id.index as usize)?;
        let key = t.verdict().agreed()?;
        t.attestations.iter().find(|a| &a.result == key).map(|a| &**a)
    }
}

/// Whether a trusted peer's lease on `task` is a spot check (full quorum) rather than a lone
/// replica: a keyed hash of the coordinator's secret and the task, below `per_mille` out of
/// 1,000. No peer can predict it, and the same task always gets the same answer here.
fn spot_checked(secret: &[u8; 32], task: &TaskId, per_mille: u32) -> bool {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"spare.v1 spot check\0");
    h.update(task.job.as_bytes());
    h.update(&task.index.to_le_bytes());
    let b = h.finalize();
    let mut x = [0u8; 8];
    x.copy_from_slice(&b.as_bytes()[..8]);
    u64::from_le_bytes(x) % 1_000 < u64::from(per_mille)
}
