//! A virtual peer: what one simulated peer holds. The protocol state is the real thing: a
//! [`MeshState`] (membership and what the peer published) per membership cell it belongs to, a
//! [`Puller`], its run times, a report queue per coordinator it reports to, and, when it
//! coordinates the job, a [`Host`] (all from [`crate::peer`]). The rest is the simulator's bookkeeping: the ads it heard, its
//! leased replicas, its sandbox slots and the times its events are scheduled.

use std::collections::VecDeque;

use crate::peer::host::{Host, Logged, ReportItem};
use crate::peer::mesh::MeshState;
use crate::peer::reporters::Reporters;
use crate::peer::slots::Slots;
use crate::pull::Puller;
use crate::records::JobAd;
use crate::{BlobId, JobId, Millis, PeerId, TaskId};

use super::workload::Behaviour;

/// "Nothing scheduled" for the per-peer timer fields.
pub const NEVER: Millis = Millis::MAX;

/// One membership cell as this peer belongs to it.
pub struct View {
    /// The cell.
    pub cell: u32,
    /// The real SWIM state machine with its records, and what this peer published there.
    pub mesh: MeshState,
    /// When its next timer event is scheduled ([`NEVER`] if none).
    pub tick_at: Millis,
    /// The addresses greeted at start (the cell's bootstrap peers).
    pub bootstrap: Vec<String>,
}

/// A leased replica on its way through this peer.
#[derive(Clone, Debug)]
pub struct Replica {
    /// The task.
    pub task: TaskId,
    /// The coordinator it was leased from; `None` for this peer's own.
    pub coordinator: Option<u32>,
    /// When the lease lapses.
    pub expires_at: Millis,
    /// The job's wall deadline per replica.
    pub timeout_ms: u64,
    /// The job's module.
    pub module: BlobId,
}

/// One simulated peer.
pub struct VirtualPeer {
    /// Its identity.
    pub id: PeerId,
    /// Its home cell.
    pub cell: u32,
    /// Not crashed.
    pub alive: bool,
    /// Present from the start (not a churn joiner).
    pub initial: bool,
    /// When it started.
    pub born: Millis,
    /// When it crashed.
    pub died: Option<Millis>,
    /// How it answers (a liar answers honestly for its first `liars_honest_for` runs).
    pub behaviour: Behaviour,
    /// Replicas it has run.
    pub runs: u32,
    /// Every byte it sent.
    pub bytes_sent: u64,
    /// The bytes of those that were gossip (`MeshService.Gossip`).
    pub gossip_sent: u64,
    /// Its memberships: one, or one per cell for a peer that bridges cells (a coordinator of
    /// the job), its home cell's first.
    pub views: Vec<View>,
    /// It is a member of every cell (see the module docs of `sim`).
    pub bridge: bool,
    /// Whether it publishes an advert (see the module docs of `sim` for the origin).
    pub advertises: bool,
    /// When its mesh loop next runs.
    pub house_at: Millis,
    /// The newest ad of each job heard.
    pub ads: Vec<JobAd>,
    /// Whether the run's job ad has reached it.
    pub has_ad: bool,
    /// Liveness, in its own membership view, of the coordinators its ads name.
    pub coordinators: Vec<(PeerId, bool)>,
    /// The real worker side: replicas held, the request out, pauses, the puller, run times.
    pub slots: Slots,
    /// When its slot loop next runs.
    pub slots_at: Millis,
    /// Sandbox slots running.
    pub busy: u32,
    /// Replicas waiting for a sandbox slot.
    pub waiting: VecDeque<Replica>,
    /// Modules fetched and ready.
    pub modules: Vec<BlobId>,
    /// Module fetches in flight, with the replicas waiting on each.
    pub fetching: Vec<(BlobId, Vec<Replica>)>,
    /// The real report queues, one per coordinator.
    pub reports: Reporters<u32, ReportItem>,
    /// When its next `Flush` is scheduled ([`NEVER`] if none).
    pub flush_at: Millis,
    /// The coordinator side it holds for the job, if any.
    pub host: Option<Box<Host>>,
    /// When its host's timer next runs ([`NEVER`] if not scheduled).
    pub host_at: Millis,
    /// What a crash left of its coordinator on disk: the list of the job's coordinators and
    /// every attestation recorded (a restart brings them back).
    pub stored: Option<(Vec<PeerId>, Vec<Logged>)>,
    /// Its position in the list of live workers (churn picks from it).
    pub live_pos: Option<u32>,
}

impl VirtualPeer {
    /// A peer that starts at `born` with these memberships.
    pub fn new(id: PeerId, cell: u32, born: Millis, behaviour: Behaviour, views: Vec<View>, initial: bool, slots: u32) -> VirtualPeer {
        VirtualPeer {
            id,
            cell,
            alive: true,
            initial,
            born,
            died: None,
            behaviour,
            runs: 0,
            bytes_sent: 0,
            gossip_sent: 0,
            views,
            bridge: false,
            advertises: true,
            house_at: NEVER,
            ads: Vec::new(),
            has_ad: false,
            coordinators: Vec::new(),
            slots: Slots::new(slots as usize, Puller::new()),
            slots_at: NEVER,
            busy: 0,
            waiting: VecDeque::new(),
            modules: Vec::new(),
            fetching: Vec::new(),
            reports: Reporters::default(),
            flush_at: NEVER,
            host: None,
            host_at: NEVER,
            stored: None,
            live_pos: None,
        }
    }

    /// Whether this peer coordinates `job`.
    pub fn holds(&self, job: &JobId) -> bool {
        self.host.as_ref().is_some_and(|h| h.job() == *job)
    }

    /// Whether this peer is `job`'s active coordinator (its own slots lease from it; a standby
    /// one pulls like any worker).
    pub fn serves(&self, job: &JobId) -> bool {
        self.host.as_ref().is_some_and(|h| h.job() == *job && h.is_active())
    }

    /// The coordinator it leases `job` from and reports to: the first one the job's ad names
    /// that is alive in its own view.
    pub fn first_live_coordinator(&self, job: &JobId) -> Option<PeerId> {
        first_live(self.id, &self.ads, &self.coordinators, job)
    }

    /// Its view of `cell`.
    pub fn view_of(&self, cell: u32) -> Option<usize> {
        self.views.iter().position(|v| v.cell == cell)
    }

    /// Free slots as its advert shows them.
    pub fn free_slots(&self, slots: u32) -> u32 {
        slots.saturating_sub(u32::try_from(self.slots.held()).unwrap_or(u32::MAX).min(slots))
    }

    /// Forgets everything a crash loses.
    pub fn crash(&mut self, now: Millis) {
        self.alive = false;
        self.died = Some(now);
        self.views.clear();
        self.ads.clear();
        self.waiting.clear();
        self.fetching.clear();
        self.reports = Reporters::default();
        self.stored = self.host.take().map(|h| h.stored());
        self.host_at = NEVER;
    }

    /// Starts again at `now` with fresh memberships `views`: what was in memory is gone (its
    /// slots, what it heard, its timers), what is on disk (fetched modules) stays.
    pub fn restart(&mut self, now: Millis, views: Vec<View>, slots: u32) {
        self.alive = true;
        self.born = now;
        self.views = views;
        self.coordinators.clear();
        self.slots = Slots::new(slots as usize, Puller::new());
        self.busy = 0;
        self.house_at = NEVER;
        self.slots_at = NEVER;
        self.flush_at = NEVER;
    }
}

/// The first coordinator `job`'s ad (among `ads`) names that is `me` or that `live` marks
/// alive (a peer that took over a job it worked on reports to itself, as the peer's
/// `addr_of` gives its own address).
pub fn first_live(me: PeerId, ads: &[JobAd], live: &[(PeerId, bool)], job: &JobId) -> Option<PeerId> {
    let ad = ads.iter().find(|a| a.job == *job)?;
    ad.coordinators.iter().find(|c| **c == me || live.iter().any(|(id, up)| id == *c && *up)).copied()
}
