//! [`Host`]: the coordinator side of one peer for one job it coordinates, active or standby,
//! as one sans-IO machine composed of the small ones beside it (lease, report, replication,
//! catch-up, adoption, roles, takeover, heal, hand-over). The glue between them ("a lease
//! request arrives: grant, stream the lease to the backups"; "a report batch arrives: record,
//! stream, hold the answer until a backup has it") is written here once, for every driver.
//!
//! # Contract
//!
//! A driver owns one `Host` per job its peer coordinates, and never decides anything itself:
//!
//! - **Inputs** are `handle_*` calls, each with `now` (virtual or wall milliseconds, only ever
//!   compared): a lease request ([`Host::handle_lease`]), a report batch
//!   ([`Host::handle_report`]), a `Replicate` batch ([`Host::handle_replicate`]) or the answer to
//!   one this host sent ([`Host::handle_replicated`]), an `Adopt` ([`Host::handle_adopt`]) or the
//!   answer to one ([`Host::handle_adopted`]), a job ad of the job ([`Host::handle_ad`],
//!   [`Host::handle_rival`]), a member seen dead or the live count changing
//!   ([`Host::handle_members`]), the peer's own replicas ([`Host::lease_own`],
//!   [`Host::record_own`], [`Host::release_own`]), and a timer ([`Host::handle_timeout`]).
//!   Calls that answer at once (a lease, a `Replicate`, an `Adopt`) return the answer; a report
//!   batch's answer may be held, so it comes out as a [`Transmit`].
//! - **Outputs** are drained after **every** input, until empty: [`Host::poll_transmit`] gives
//!   the messages to send to a named peer (calls, and report answers), [`Host::poll_notice`] what
//!   the driver acts on or counts (verdicts, announce the job, wake the peer's own slots), and
//!   [`Host::poll_timeout`] when [`Host::handle_timeout`] is next due. The output queues only
//!   hold what one input produced, so they stay small when drained as said.
//! - **The membership view** the role rules need comes in through [`Members`], asked only by
//!   the inputs that look at roles or pick new coordinators.
//! - **Signatures** are checked with the [`Verifier`] the host is made with (the real peer's
//!   Ed25519 check, or the simulator's cheap stand-in).
//!
//! Peers are named by [`PeerId`], as job ads, adoption rounds and the heal rules name them; a
//! driver that indexes its peers otherwise maps at its edge (the simulator's ids carry their
//! index).

mod adopt;
mod heal;
mod messages;
mod own;
mod serve;
mod stream;
#[cfg(test)]
mod tests;

pub use messages::{AdoptKind, Logged, Members, Notice, ReportItem, Streamed, Transmit};
pub use own::OwnHost;
pub use serve::Tally;
pub use stream::NotCoordinator;

use std::collections::{BTreeSet, VecDeque};

use crate::peer::adoption::AdoptRound;
use crate::peer::catchup::CatchUps;
use crate::peer::handover::HandOver;
use crate::peer::replicators::Replicators;
use crate::peer::roles::Roles;
use crate::peer::takeover::Sync;
use crate::records::Verifier;
use crate::requests::TICK_MS;
use crate::{BlobId, Coordinator, Event, JobId, JobSpec, Millis, PeerId, SubmitError};

/// A report batch's answer, held until a backup holds what it recorded. They are kept in the
/// order they came, so by `until` too (`now` never goes back).
#[derive(Clone, Copy, Debug)]
struct Held {
    worker: PeerId,
    accepted: u32,
    rejected: u32,
    /// The log position (from 1) a backup must hold.
    upto: u64,
    /// When the wait for a backup gives up.
    until: Millis,
}

/// The coordinator side of one peer for one job (see the module docs for the contract).
pub struct Host {
    me: PeerId,
    job: JobId,
    origin: PeerId,
    /// The job's module (what this peer's own replicas run).
    module: BlobId,
    coord: Coordinator,
    verifier: Verifier,
    /// This peer's list of the job's coordinators, the active one first.
    coordinators: Vec<PeerId>,
    /// Every peer ever named one of the job's coordinators here (a rival is heard only from one).
    named: BTreeSet<PeerId>,
    /// Rival ads of the job heard, by announcer and sequence number.
    rivals: BTreeSet<(PeerId, u64)>,
    /// Every attestation recorded here, in order (the store's attestation log).
    log: Vec<Logged>,
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
}

impl Host {
    /// The host of `job` (submitted to `coord` already) on peer `me`, which started at
    /// `started`, with `coordinators` as its list. Roles are not looked at until
    /// [`Host::look_at_roles`] asks.
    pub fn new(me: PeerId, coord: Coordinator, job: JobId, coordinators: Vec<PeerId>, verifier: Verifier, started: Millis) -> Host {
        let (origin, module) = coord.job(&job).map_or((me, BlobId([0; 32])), |j| (j.spec.origin, j.spec.module));
        Host {
            me,
            job,
            origin,
            module,
            coord,
            verifier,
            named: coordinators.iter().copied().collect(),
            coordinators,
            rivals: BTreeSet::new(),
            log: Vec::new(),
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
        }
    }

    /// The host of `job`, which this peer did not hold, taken as `spec` says when an `Adopt`
    /// hands it over: in standby, until the role rules decide.
    pub fn adopt(me: PeerId, mut coord: Coordinator, job: JobId, spec: JobSpec, coordinators: Vec<PeerId>, verifier: Verifier, started: Millis) -> Result<Host, SubmitError> {
        coord.submit(job, spec)?;
        coord.set_standby(&job, true);
        Ok(Host::new(me, coord, job, coordinators, verifier, started))
    }

    /// The host a restarted peer builds from what it stored ([`Host::stored`]): the job back
    /// from its list and every attestation it recorded, in standby if it had backups (another
    /// coordinator may lead meanwhile; the role rules decide). The replayed verdicts describe
    /// the past: no notice is given for them.
    pub fn restore(me: PeerId, coord: Coordinator, job: JobId, coordinators: Vec<PeerId>, log: Vec<Logged>, verifier: Verifier, now: Millis) -> Host {
        let mut h = Host::new(me, coord, job, coordinators, verifier, now);
        for l in &log {
            // A log of this very coordinator: what it cannot take again it took before.
            let _ = h.coord.restore_attestation_lone((*l.att).clone(), l.lone);
        }
        while h.coord.poll_event().is_some() {}
        if h.coordinators.len() > 1 {
            h.coord.set_standby(&job, true);
        }
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

    /// The real coordinator (for reading verdicts and reputation).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coord
    }

    /// This peer's list of the job's coordinators, the active one first.
    pub fn coordinators(&self) -> &[PeerId] {
        &self.coordinators
    }

    /// Every attestation recorded here, in order.
    pub fn log(&self) -> &[Logged] {
        &self.log
    }

    /// The workers whose report answers are held (they get none should this peer stop).
    pub fn held_workers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.held.iter().map(|h| h.worker)
    }

    /// Whether this peer leads the job: first in its own list, and not in standby.
    pub fn leads(&self) -> bool {
        self.coordinators.first() == Some(&self.me) && !self.coord.is_standby(&self.job)
    }

    /// Whether the coordinator is active (not in standby): its verdicts are the job's.
    pub fn is_active(&self) -> bool {
        !self.coord.is_standby(&self.job)
    }

    /// Whether the job is final here.
    pub fn is_done(&self) -> bool {
        self.coord.job(&self.job).is_none_or(|v| v.state.is_final())
    }

    /// A record from `peer` failed its checks: the coordinator holds it against the peer.
    pub fn penalize(&mut self, peer: PeerId) {
        self.coord.penalize(peer);
    }

    /// Look at roles at `at` at the latest.
    pub fn look_at_roles(&mut self, at: Millis) {
        self.roles_at = Some(self.roles_at.map_or(at, |r| r.min(at)));
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next notice.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// When [`Host::handle_timeout`] is next due (`None`: no timer runs).
    pub fn poll_timeout(&self) -> Option<Millis> {
        // The coordinator's ticker runs on 200 ms boundaries, as the peer's does.
        let tick = self.coord.next_deadline().map(|d| d.div_ceil(TICK_MS) * TICK_MS);
        // Held answers wait in the order they came, so the first gives up first.
        let held = self.held.first().map(|h| h.until);
        let sync = self.syncing.as_ref().map(Sync::poll_timeout);
        [tick, held, self.replicate_at, self.catch_ups.poll_timeout(), self.roles_at, self.announce_at, self.hand_over_at, sync]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs whatever timer is due at `now`.
    pub fn handle_timeout(&mut self, now: Millis, members: &dyn Members) {
        if self.coord.next_deadline().is_some_and(|d| d <= now) {
            self.coord.tick(now);
            self.drain();
        }
        if let Some(upto) = self.held.iter().take_while(|h| h.until <= now).map(|h| h.upto).max() {
            self.answer_held(upto);
        }
        if self.replicate_at.is_some_and(|at| at <= now) {
            self.send_batches(now);
        }
        if self.catch_ups.poll_timeout().is_some_and(|at| at <= now) {
            self.send_catch_ups(now);
        }
        if self.roles_at.is_some_and(|at| at <= now) {
            self.roles_at = None;
            self.on_roles(now, members);
        }
        if self.syncing.as_ref().is_some_and(|s| s.poll_timeout() <= now) {
            // Leading without every backup's answer: the unanswered ones may lack what the
            // others gave, so every backup is caught up.
            self.syncing = None;
            self.lead(true, now, members);
        }
        if self.announce_at.is_some_and(|at| at <= now) {
            self.announce_at = None;
            self.announce();
            self.catch_up_backups(now);
        }
        if self.hand_over_at.is_some_and(|at| at <= now) {
            self.hand_over_at = None;
            if let Some(to) = self.handing_over.as_ref().map(|ho| ho.to) {
                self.send_hand_over(to);
            }
        }
    }

    /// Announce the job with this peer's list.
    fn announce(&mut self) {
        let done = self.is_done();
        self.notices.push_back(Notice::Announce { done });
    }

    /// Turns what the coordinator emitted into notices: a lapsed lease wakes the slots, the
    /// job's end is announced.
    fn drain(&mut self) {
        let leads = self.is_active();
        let (mut wake, mut finished) = (false, false);
        while let Some(event) = self.coord.poll_event() {
            let lone = leads && matches!(&event, Event::TaskFinal { task, .. } if self.coord.task(task).is_some_and(|t| t.lone));
            wake |= matches!(event, Event::LeaseExpired { .. });
            finished |= leads && matches!(event, Event::JobFinished { .. });
            self.notices.push_back(Notice::Coordinator { event, leads, lone });
        }
        if wake {
            self.notices.push_back(Notice::Wake);
        }
        // The job's end is news: the leader announces it.
        if finished {
            self.notices.push_back(Notice::Announce { done: true });
        }
    }

    /// Sets the list (each one named is remembered), and the replication streams to match.
    fn set_coordinators(&mut self, list: Vec<PeerId>) {
        let backups: Vec<PeerId> = if list.first() == Some(&self.me) { list[1..].to_vec() } else { Vec::new() };
        self.replicators.retain(|to| backups.contains(to));
        self.named.extend(list.iter().copied());
        self.coordinators = list;
    }
}
