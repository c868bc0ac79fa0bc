//! A virtual peer: what one simulated peer holds. The protocol state is the real thing (a
//! [`Membership`] per membership cell it belongs to, a [`Puller`], and a [`Coordinator`] when it
//! coordinates jobs); the rest mirrors what the real peer's event loops keep
//! (`worker/src/node/{mesh,slots,remote}.rs`): its advert, the ads it heard, its leased replicas,
//! its sandbox slots and its report batches.

use std::collections::VecDeque;

use crate::membership::Membership;
use crate::pull::Puller;
use crate::records::JobAd;
use crate::{Attestation, BlobId, Coordinator, JobId, Millis, PeerId, Release, TaskId};

use super::workload::Behaviour;

/// "Nothing scheduled" for the per-peer timer fields.
pub const NEVER: Millis = Millis::MAX;

/// Replicas held per slot for a mean run time (`node/slots.rs:leases_per_slot`).
pub fn leases_per_slot(mean_run_us: u64) -> u32 {
    match mean_run_us {
        0..=2_000 => 32,
        2_001..=20_000 => 8,
        20_001..=200_000 => 3,
        _ => 2,
    }
}

/// One membership cell as this peer belongs to it.
pub struct View {
    /// The cell.
    pub cell: u32,
    /// The real SWIM state machine with its records.
    pub m: Membership,
    /// When its next timer event is scheduled ([`NEVER`] if none).
    pub tick_at: Millis,
    /// When the bootstrap peers were last greeted.
    pub last_join: Millis,
    /// The peers greeted at start (the cell's bootstrap peers, by index).
    pub bootstrap: Vec<u32>,
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

/// One entry of a report batch.
#[derive(Clone, Debug)]
pub enum ReportItem {
    /// A signed attestation and the output it hashes.
    Attest(Attestation, Vec<u8>),
    /// A replica handed back.
    Release(TaskId, Release),
}

/// Report batching towards one coordinator (`node/remote.rs:reporter`).
pub struct Reporter {
    /// The coordinator.
    pub coordinator: u32,
    /// Items waiting for the next batch, each with when its lease lapses.
    pub queue: Vec<(Millis, ReportItem)>,
    /// The batch being sent, its attempt number, and when its first lease lapses.
    pub batch: Option<(Vec<ReportItem>, u32, Millis)>,
    /// A flush (linger end or retry) is scheduled.
    pub flush_pending: bool,
}

/// One attestation as a coordinator recorded it: what `Replicate` and `Adopt` carry
/// (`RecordedAttestation`), in recording order.
#[derive(Clone, Debug)]
pub struct Logged {
    /// The worker's signed attestation.
    pub att: Attestation,
    /// The recorder took it alone (adaptive replication).
    pub solo: bool,
    /// It carries the task's canonical output (it decided the task, or the task is final with
    /// its result).
    pub output: bool,
}

/// The stream of recorded attestations to one backup coordinator (`node/replicate.rs:replicator`).
pub struct Replicator {
    /// The backup.
    pub to: u32,
    /// Items recorded and not yet sent.
    pub queue: VecDeque<Logged>,
    /// The batch in flight and its attempt number.
    pub batch: Option<(Vec<Logged>, u32)>,
    /// A send is scheduled.
    pub flush_pending: bool,
}

/// A round of hand-overs (`Node::add_coordinators`): `Adopt` sent to each new coordinator, the
/// list settled once every one answered or failed.
pub struct AdoptRound {
    /// The coordinators kept (this peer first).
    pub keep: Vec<u32>,
    /// New ones that have not answered yet.
    pub waiting: Vec<u32>,
    /// New ones that adopted the job.
    pub adopted: Vec<u32>,
}

/// A coordinator held by a peer, with the jobs it coordinates. The simulated job is the only
/// one, so the per-job state (`JobMeta` in the real peer) is kept here directly.
pub struct Host {
    /// The real coordinator.
    pub coord: Coordinator,
    /// Jobs held here.
    pub jobs: Vec<JobId>,
    /// When its ticker next runs ([`NEVER`] if not scheduled).
    pub tick_at: Millis,
    /// This peer's list of the job's coordinators, the active one first.
    pub coordinators: Vec<u32>,
    /// Every attestation recorded here, in order (the store's attestation log).
    pub log: Vec<Logged>,
    /// Streams to the backups, while this peer leads.
    pub replicators: Vec<Replicator>,
    /// The hand-over round in progress, if any.
    pub adopting: Option<AdoptRound>,
    /// When its roles are next looked at ([`NEVER`] if not scheduled).
    pub roles_at: Millis,
    /// When a list shorter than wanted may next be topped up.
    pub top_up_at: Millis,
}

impl Host {
    /// A host of `job` with an empty log.
    pub fn new(coord: Coordinator, job: JobId, coordinators: Vec<u32>) -> Host {
        Host {
            coord,
            jobs: vec![job],
            tick_at: NEVER,
            coordinators,
            log: Vec::new(),
            replicators: Vec::new(),
            adopting: None,
            roles_at: NEVER,
            top_up_at: 0,
        }
    }
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
    /// Its memberships: one, or one per cell for a peer that bridges cells (a coordinator of
    /// the job), its home cell's first.
    pub views: Vec<View>,
    /// It is a member of every cell (see the module docs of `sim`).
    pub bridge: bool,
    /// Whether it publishes an advert (see the module docs of `sim` for the origin).
    pub advertises: bool,
    /// Sequence number of its last advert.
    pub advert_seq: u64,
    /// Free slots in its last advert.
    pub advertised_free: Option<u32>,
    /// When it last published an advert.
    pub advertised_at: Millis,
    /// When its mesh loop next runs.
    pub house_at: Millis,
    /// The newest ad of each job heard.
    pub ads: Vec<JobAd>,
    /// Whether the run's job ad has reached it.
    pub has_ad: bool,
    /// Liveness, in its own membership view, of the coordinators its ads name.
    pub coordinators: Vec<(PeerId, bool)>,
    /// The real pulling policy.
    pub puller: Puller,
    /// Mean run time, microseconds (weight 1/8 per run, from 100 ms).
    pub mean_run_us: u64,
    /// Replicas leased and not yet finished.
    pub replicas: u32,
    /// Replicas asked for in the remote lease request in flight.
    pub asking: Option<u32>,
    /// No new work before this time (after an abandoned replica).
    pub paused_until: Millis,
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
    /// Report batchers, one per coordinator.
    pub reporters: Vec<Reporter>,
    /// The coordinator it holds, if any.
    pub host: Option<Box<Host>>,
    /// Its position in the list of live workers (churn picks from it).
    pub live_pos: Option<u32>,
}

impl VirtualPeer {
    /// A peer that starts at `born` with these memberships.
    pub fn new(id: PeerId, cell: u32, born: Millis, behaviour: Behaviour, views: Vec<View>, initial: bool) -> VirtualPeer {
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
            views,
            bridge: false,
            advertises: true,
            advert_seq: 0,
            advertised_free: None,
            advertised_at: 0,
            house_at: NEVER,
            ads: Vec::new(),
            has_ad: false,
            coordinators: Vec::new(),
            puller: Puller::new(),
            mean_run_us: 100_000,
            replicas: 0,
            asking: None,
            paused_until: 0,
            slots_at: NEVER,
            busy: 0,
            waiting: VecDeque::new(),
            modules: Vec::new(),
            fetching: Vec::new(),
            reporters: Vec::new(),
            host: None,
            live_pos: None,
        }
    }

    /// Whether this peer coordinates `job`.
    pub fn holds(&self, job: &JobId) -> bool {
        self.host.as_ref().is_some_and(|h| h.jobs.contains(job))
    }

    /// Whether this peer is `job`'s active coordinator (its own slots lease from it; a standby
    /// one pulls like any worker, as `node/slots.rs` does).
    pub fn serves(&self, job: &JobId) -> bool {
        self.host.as_ref().is_some_and(|h| h.jobs.contains(job) && !h.coord.is_standby(job))
    }

    /// Its view of `cell`.
    pub fn view_of(&self, cell: u32) -> Option<usize> {
        self.views.iter().position(|v| v.cell == cell)
    }

    /// Free slots as its advert shows them.
    pub fn free_slots(&self, slots: u32) -> u32 {
        slots.saturating_sub(self.replicas.min(slots))
    }

    /// Folds a run's duration into the mean (`Node::note_run`).
    pub fn note_run(&mut self, ran_ms: u64) {
        let us = ran_ms * 1_000;
        self.mean_run_us = self.mean_run_us - self.mean_run_us / 8 + us / 8;
    }

    /// Forgets everything a crash loses.
    pub fn crash(&mut self, now: Millis) {
        self.alive = false;
        self.died = Some(now);
        self.views.clear();
        self.ads.clear();
        self.waiting.clear();
        self.fetching.clear();
        self.reporters.clear();
        self.host = None;
    }
}
