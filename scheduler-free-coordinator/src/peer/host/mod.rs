//! The coordinator side of one peer, as one sans-IO machine: [`Hosts`] for all the jobs it
//! coordinates, active or standby, sharing the peer's one [`Coordinator`]; a [`Host`] for each
//! job, composed of the small machines beside it (lease, report, replication, catch-up,
//! adoption, roles, takeover, heal, hand-over). The glue between them ("a lease request
//! arrives: grant, stream the lease to the backups"; "a report batch arrives: record, stream,
//! hold the answer until a backup has it") is written here once, for every driver.
//!
//! # Contract
//!
//! A driver owns one [`Hosts`] and never decides anything itself:
//!
//! - **Inputs** are `handle_*` calls, each with `now` (virtual or wall milliseconds, only ever
//!   compared): a lease request ([`Hosts::handle_lease`]), a report batch
//!   ([`Hosts::handle_report`]), a `Replicate` batch ([`Hosts::handle_replicate`]) or the
//!   answer to one this peer sent ([`Hosts::handle_replicated`]), an `Adopt`
//!   ([`Hosts::handle_adopt`]) or the answer to one ([`Hosts::handle_adopted`]), a job ad
//!   ([`Hosts::handle_ad`], [`Hosts::handle_rival`]), a member seen dead or the live count
//!   changing ([`Hosts::handle_members`]), the peer's own replicas ([`Hosts::lease_own`],
//!   [`Hosts::handle_own`]), and a timer ([`Hosts::handle_timeout`]). Calls that answer at
//!   once (a lease, a `Replicate`, an `Adopt`) return the answer; a report batch's answer may
//!   be held, so it comes out as a [`Transmit`] with the driver's id of the batch.
//! - **Outputs** are drained after **every** input, until empty: [`Hosts::poll_persist`] gives
//!   the [`Write`]s to make durable, in order, each with a rising id; [`Hosts::poll_transmit`]
//!   the messages to send to a named peer (calls, and report answers); [`Hosts::poll_notice`]
//!   what the driver acts on or counts (verdicts, announce a job, wake the peer's own slots),
//!   with the job; and [`Hosts::poll_timeout`] when [`Hosts::handle_timeout`] is next due.
//! - **Durability** (raft's `Ready` rule): report answers and notices wait for every write
//!   asked before them, and come out once [`Hosts::handle_durable`] says those are durable, so
//!   nothing is told that a crash could take back; `Adopt`s wait too (the driver fills them in
//!   from its store), `Replicate` batches go at once. An answer a call returns (a
//!   `Replicate`'s, an `Adopt`'s) is sent once [`Hosts::written`] is durable.
//! - **The membership view** the role rules need comes in through [`Members`], asked only by
//!   the inputs that look at roles or pick new coordinators.
//! - **Signatures** are checked with the [`Verifier`] the hosts are made with (the real peer's
//!   Ed25519 check, or the simulator's cheap stand-in).
//!
//! A `Host` borrows the coordinator for the length of one call; the events it drains for other
//! jobs (a dead peer's leases lapse in every job) go to theirs through `Hosts`.
//!
//! Peers are named by [`PeerId`], as job ads, adoption rounds and the heal rules name them; a
//! driver that indexes its peers otherwise maps at its edge (the simulator's ids carry their
//! index).

mod adopt;
mod heal;
mod hosts;
mod messages;
mod own;
mod persist;
mod serve;
mod stream;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod jobs_tests;
#[cfg(test)]
mod persist_tests;

pub use hosts::{BatchVerifier, Hosts};
pub use messages::{Adopt, AdoptKind, Logged, Members, Notice, Recorded, ReportItem, Streamed, Transmit, Write};
pub use own::OwnHost;
pub use persist::{Evidence, verdict_write};
pub use serve::Tally;
pub use stream::NotCoordinator;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use crate::peer::adoption::AdoptRound;
use crate::peer::catchup::CatchUps;
use crate::peer::handover::HandOver;
use crate::peer::outputs::PendingOutputs;
use crate::peer::replicators::Replicators;
use crate::peer::roles::Roles;
use crate::peer::takeover::Sync;
use crate::{Coordinator, Event, JobId, JobSpec, Millis, PeerId, SubmitError};

/// A report batch's answer, held until a backup holds what it recorded. They are kept in the
/// order they came, so by `until` too (`now` never goes back).
#[derive(Clone, Copy, Debug)]
struct Held {
    worker: PeerId,
    /// The driver's id of the batch.
    batch: u64,
    accepted: u32,
    rejected: u32,
    /// The log position (from 1) a backup must hold.
    upto: u64,
    /// When the wait for a backup gives up.
    until: Millis,
}

/// What a peer's hosts share, lent to one [`Host`] for each call: the peer's coordinator, and
/// the outputs of attestations whose task is not final (bounded for the peer, not per job).
struct Shared {
    coord: Coordinator,
    outputs: PendingOutputs,
}

/// The coordinator side of one peer for one job: driven through [`Hosts`] (see the module
/// docs for the contract).
pub struct Host {
    me: PeerId,
    job: JobId,
    origin: PeerId,
    /// This peer's list of the job's coordinators, the active one first.
    coordinators: Vec<PeerId>,
    /// Every peer ever named one of the job's coordinators here (a rival is heard only from one).
    named: BTreeSet<PeerId>,
    /// Rival ads of the job heard, by announcer and sequence number.
    rivals: BTreeSet<(PeerId, u64)>,
    /// Every attestation recorded here, in order (the store's attestation log), until the job
    /// ended and [`Host::shed`] let it go (the store keeps it).
    log: Vec<Logged>,
    /// Attestations recorded here so far: the log's length, also once it is shed.
    logged: u64,
    /// The log was let go: what needs it reads the store.
    shed: bool,
    /// Restored after a restart with this peer first in its list, and it has neither led the
    /// job nor followed another's list since (see `peer::heal::newer_ad`).
    restarted: bool,
    /// Streams to the backups, while this peer leads.
    replicators: Replicators<PeerId, Streamed>,
    /// Whole adoptions owed to backups.
    catch_ups: CatchUps,
    adopting: Option<AdoptRound>,
    handing_over: Option<HandOver>,
    /// The takeover sync in progress: the peer leads once it is over.
    syncing: Option<Sync>,
    held: Vec<Held>,
    roles: Roles,
    /// When roles are next looked at (`None`: not until an input asks).
    roles_at: Option<Millis>,
    /// When the job is announced again after merging a hand-over.
    announce_at: Option<Millis>,
    /// When a failed hand-over adoption is sent again.
    hand_over_at: Option<Millis>,
    /// When the stream to the backups may have a batch due.
    replicate_at: Option<Millis>,
    transmits: VecDeque<Transmit>,
    notices: VecDeque<Notice>,
    /// Notices held back, in order: a verdict this peer decided while leading goes out once a
    /// backup holds its deciding attestation (the log position `upto`, from 1) or the wait gives
    /// up at `until`, so an announced verdict survives the loss of this peer; what comes after
    /// one waits behind it (`upto` 0).
    gated: VecDeque<(u64, Millis, Notice)>,
    /// The log position (from 1) a backup is known to hold, or that the wait for one gave up on.
    acked: u64,
    /// The latest `now` this host was called with (notices are gated from it).
    clock: Millis,
    /// What the driver is to store, since the last call.
    writes: Vec<Write>,
    /// Events of the peer's other jobs met while draining the shared coordinator, for
    /// [`Hosts`] to hand to their hosts.
    spill: Vec<Event>,
}

impl Host {
    /// The host of `job` (submitted to `coord` already) on peer `me`, which started at
    /// `started`, with `coordinators` as its list. Roles are not looked at until
    /// [`Host::look_at_roles`] asks.
    fn new(me: PeerId, cx: &Shared, job: JobId, coordinators: Vec<PeerId>, started: Millis) -> Host {
        let origin = cx.coord.job(&job).map_or(me, |j| j.spec.origin);
        Host {
            me,
            job,
            origin,
            named: coordinators.iter().copied().collect(),
            coordinators,
            rivals: BTreeSet::new(),
            log: Vec::new(),
            logged: 0,
            shed: false,
            restarted: false,
            replicators: Replicators::default(),
            catch_ups: CatchUps::default(),
            adopting: None,
            handing_over: None,
            syncing: None,
            held: Vec::new(),
            roles: Roles::new(started),
            roles_at: None,
            announce_at: None,
            hand_over_at: None,
            replicate_at: None,
            transmits: VecDeque::new(),
            notices: VecDeque::new(),
            gated: VecDeque::new(),
            acked: 0,
            clock: started,
            writes: Vec::new(),
            spill: Vec::new(),
        }
    }

    /// The host of `job`, which this peer did not hold, taken as `spec` says when an `Adopt`
    /// hands it over: in standby, until the role rules decide.
    fn adopt(me: PeerId, cx: &mut Shared, job: JobId, spec: JobSpec, coordinators: Vec<PeerId>, started: Millis) -> Result<Host, SubmitError> {
        cx.coord.submit(job, spec)?;
        cx.coord.set_standby(&job, true);
        Ok(Host::new(me, cx, job, coordinators, started))
    }

    /// The host a restarted peer builds from what it stored ([`Host::stored`]): the job back
    /// (submitted to `coord` already) and every attestation it recorded, in standby if it had
    /// backups (another coordinator may lead meanwhile; the role rules decide). The replayed
    /// verdicts describe the past: no notice is given for them.
    fn restore(me: PeerId, cx: &mut Shared, job: JobId, coordinators: Vec<PeerId>, log: Vec<Logged>, now: Millis) -> Host {
        let mut h = Host::new(me, cx, job, coordinators, now);
        for l in &log {
            // A log of this very coordinator: what it cannot take again it took before.
            let _ = cx.coord.restore_attestation_lone(Arc::clone(&l.att), l.lone);
        }
        while let Some(event) = cx.coord.poll_event() {
            if event.job() != job {
                h.spill.push(event);
            }
        }
        if h.coordinators.len() > 1 {
            cx.coord.set_standby(&job, true);
        }
        h.logged = log.len() as u64;
        h.restarted = h.coordinators.first() == Some(&me);
        h.log = log;
        h
    }

    /// What survives a crash on disk: the list of coordinators and the attestation log.
    pub fn stored(self) -> (Vec<PeerId>, Vec<Logged>) {
        (self.coordinators, self.log)
    }

    /// The job.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// This peer's list of the job's coordinators, the active one first.
    pub fn coordinators(&self) -> &[PeerId] {
        &self.coordinators
    }

    /// Every attestation recorded here, in order.
    pub fn log(&self) -> &[Logged] {
        &self.log
    }

    /// Lets go of the attestation log of an ended job (its every verdict is durable, and the
    /// store keeps the log): a peer holds ended jobs until retention removes them, and a
    /// 200,000-task job's log is tens of megabytes. An `Adopt` of it then says so
    /// (`Transmit::Adopt::shed`) and the driver reads the log from its store.
    pub fn shed(&mut self) {
        self.log = Vec::new();
        self.shed = true;
    }

    /// Whether a round of adoptions to fill the list up is waiting for answers.
    pub fn is_adopting(&self) -> bool {
        self.adopting.is_some()
    }

    /// The workers whose report answers are held (they get none should this peer stop).
    pub fn held_workers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.held.iter().map(|h| h.worker)
    }

    /// Whether this peer leads the job: first in its own list, and not in standby.
    fn leads(&self, cx: &Shared) -> bool {
        self.coordinators.first() == Some(&self.me) && !cx.coord.is_standby(&self.job)
    }

    /// Whether the coordinator is active (not in standby): its verdicts are the job's.
    fn is_active(&self, cx: &Shared) -> bool {
        !cx.coord.is_standby(&self.job)
    }

    /// Whether the job is final here.
    fn is_done(&self, cx: &Shared) -> bool {
        cx.coord.job(&self.job).is_none_or(|v| v.state.is_final())
    }

    /// Look at roles at `at` at the latest.
    pub fn look_at_roles(&mut self, at: Millis) {
        self.roles_at = Some(self.roles_at.map_or(at, |r| r.min(at)));
    }

    /// The next message to send.
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next notice.
    fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// When [`Host::handle_timeout`] is next due (`None`: no timer runs); the coordinator's
    /// own deadline is [`Hosts`]'.
    fn poll_timeout(&self) -> Option<Millis> {
        // Held answers wait in the order they came, so the first gives up first.
        let held = self.held.first().map(|h| h.until);
        let sync = self.syncing.as_ref().map(Sync::poll_timeout);
        let gated = self.gated.front().map(|(_, until, _)| *until);
        [held, gated, self.replicate_at, self.catch_ups.poll_timeout(), self.roles_at, self.announce_at, self.hand_over_at, sync]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs whatever timer of this job is due at `now`.
    fn handle_timeout(&mut self, cx: &mut Shared, now: Millis, members: &dyn Members) {
        self.clock = now;
        self.release_gated();
        if let Some(upto) = self.held.iter().take_while(|h| h.until <= now).map(|h| h.upto).max() {
            self.answer_held(upto);
        }
        if self.replicate_at.is_some_and(|at| at <= now) {
            self.send_batches(now);
        }
        if self.catch_ups.poll_timeout().is_some_and(|at| at <= now) {
            self.send_catch_ups(cx, now);
        }
        if self.roles_at.is_some_and(|at| at <= now) {
            self.roles_at = None;
            self.on_roles(cx, now, members);
        }
        if self.syncing.as_ref().is_some_and(|s| s.poll_timeout() <= now) {
            // Leading without every backup's answer: the unanswered ones may lack what the
            // others gave, so every backup is caught up.
            self.syncing = None;
            self.lead(cx, true, now, members);
        }
        if self.announce_at.is_some_and(|at| at <= now) {
            self.announce_at = None;
            self.announce(cx);
            self.catch_up_backups(cx, now);
        }
        if self.hand_over_at.is_some_and(|at| at <= now) {
            self.hand_over_at = None;
            if let Some(to) = self.handing_over.as_ref().map(|ho| ho.to) {
                self.send_hand_over(to);
            }
        }
    }

    /// Announce the job with this peer's list.
    fn announce(&mut self, cx: &Shared) {
        let done = self.is_done(cx);
        self.notify(Notice::Announce { done }, None);
    }

    /// Tells the driver `n`, once a backup holds log position `upto` (if given, and if one may
    /// not yet), and after every notice held before it.
    fn notify(&mut self, n: Notice, upto: Option<u64>) {
        match upto {
            Some(upto) if upto > self.acked => {
                let until = self.clock + crate::peer::replication::BACKUP_ACK_TIMEOUT_MS;
                self.gated.push_back((upto, until, n));
            }
            _ if !self.gated.is_empty() => self.gated.push_back((0, 0, n)),
            _ => self.notices.push_back(n),
        }
    }

    /// Lets out the held notices whose wait is over, in order.
    fn release_gated(&mut self) {
        while let Some((upto, until, _)) = self.gated.front() {
            if *upto > self.acked && *until > self.clock {
                break;
            }
            if let Some((_, _, n)) = self.gated.pop_front() {
                self.notices.push_back(n);
            }
        }
    }

    /// Takes what the coordinator emitted: this job's events become notices (and verdicts
    /// writes, with the `evidence` of what was just recorded), other jobs' are spilled for
    /// [`Hosts`] to hand on.
    fn drain(&mut self, cx: &mut Shared, evidence: &[Evidence<'_>]) {
        let mut mine = Vec::new();
        while let Some(event) = cx.coord.poll_event() {
            if event.job() == self.job {
                mine.push(event);
            } else {
                self.spill.push(event);
            }
        }
        self.on_events(cx, mine, evidence);
    }

    /// Turns this job's coordinator events into notices: a lapsed lease wakes the slots, the
    /// job's end is announced.
    fn on_events(&mut self, cx: &mut Shared, events: Vec<Event>, evidence: &[Evidence<'_>]) {
        let leads = self.is_active(cx);
        // A verdict decided while leading, with backups, waits for one to hold what decided it.
        let gate = (self.leads(cx) && self.coordinators.len() > 1).then_some(self.logged);
        let (mut wake, mut finished) = (false, false);
        for event in events {
            let mut upto = None;
            if let Event::TaskFinal { task, verdict } = &event {
                self.write_verdict(cx, *task, verdict, evidence);
                upto = gate;
            }
            let lone = leads && matches!(&event, Event::TaskFinal { task, .. } if cx.coord.task(task).is_some_and(|t| t.lone));
            wake |= matches!(event, Event::LeaseExpired { .. });
            finished |= leads && matches!(event, Event::JobFinished { .. });
            let n = Notice::Coordinator { event, leads, lone };
            match n {
                // A lapse changes no verdict: nothing to keep in order with them.
                Notice::Coordinator { event: Event::LeaseExpired { .. }, .. } => self.notices.push_back(n),
                n => self.notify(n, upto),
            }
        }
        if wake {
            // The slots may pull at once, whatever waits for a backup.
            self.notices.push_back(Notice::Wake);
        }
        // The job's end is news: the leader announces it.
        if finished {
            self.notify(Notice::Announce { done: true }, None);
        }
    }

    /// Events of other jobs met while draining.
    fn take_spill(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.spill)
    }

    /// Sets the list (each one named is remembered), and the replication streams to match.
    fn set_coordinators(&mut self, list: Vec<PeerId>) {
        if list != self.coordinators {
            self.writes.push(Write::Coordinators { job: self.job, list: list.clone() });
        }
        let backups: Vec<PeerId> = if list.first() == Some(&self.me) { list[1..].to_vec() } else { Vec::new() };
        self.replicators.retain(|to| backups.contains(to));
        self.named.extend(list.iter().copied());
        self.coordinators = list;
    }
}
