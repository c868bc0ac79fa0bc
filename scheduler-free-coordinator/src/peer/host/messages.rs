//! What goes in and out of a [`Host`](super::Host): the entries of the messages it takes and
//! sends, what it tells its driver, and the membership view it asks.

use std::sync::Arc;

use crate::{Attestation, Detail, Event, JobId, Millis, PeerId, Release, Standing, TaskId, Verdict};

/// One entry of a report batch (`ReportRequest`).
#[derive(Clone, Debug)]
pub enum ReportItem {
    /// A signed attestation, the output it hashes, and what the run said besides.
    Attest(Attestation, Vec<u8>, Detail),
    /// A replica handed back.
    Release(TaskId, Release),
}

impl ReportItem {
    /// The job it reports on.
    pub fn job(&self) -> JobId {
        match self {
            ReportItem::Attest(att, ..) => att.task.job,
            ReportItem::Release(task, _) => task.job,
        }
    }
}

/// One attestation as a coordinator recorded it (`RecordedAttestation`), in recording order:
/// what `Replicate` and `Adopt` carry.
#[derive(Clone, Debug, PartialEq)]
pub struct Logged {
    /// The worker's signed attestation: one copy for every log and stream entry it is in (the
    /// three coordinators' logs of 200,000 each took 300 MB as copies).
    pub att: Arc<Attestation>,
    /// The recorder took it alone (adaptive replication).
    pub lone: bool,
}

/// An attestation as another coordinator sends what it recorded (`RecordedAttestation`): with
/// the run's output when the sender has it in hand (so whichever attestation completes the
/// quorum here, the verdict has its bytes) and its detail when it decided its task.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The attestation and its `lone` mark.
    pub logged: Logged,
    /// The output (empty when the sender no longer holds it).
    pub output: Vec<u8>,
    /// What the run said (empty unless it decided its task).
    pub detail: Detail,
}

impl Recorded {
    /// One that comes without its output or detail.
    pub fn bare(logged: Logged) -> Recorded {
        Recorded { logged, output: Vec::new(), detail: Detail::default() }
    }
}

/// A write for the driver's store. Writes are made durable in the order given; what waits for
/// one (report answers, notices) comes out of [`Hosts`](super::Hosts) only once it is.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// An attestation recorded, with its `lone` mark: appended to its job's log, whose order is
    /// the recording order (a restart replays it so).
    Attestation { logged: Logged },
    /// A task's final verdict, as the store keeps it: who verified it, how many attestations it
    /// took, the agreed output and the detail of the run that decided it.
    Verdict { task: TaskId, verdict: Verdict, verified_by: Vec<PeerId>, attestations: u32, output: Vec<u8>, detail: Detail },
    /// The job's list of coordinators changed.
    Coordinators { job: JobId, list: Vec<PeerId> },
    /// The job was cancelled (a restart must not run it again).
    Cancelled { job: JobId },
    /// Peers' standings, as they changed (they survive a restart).
    Standings(Vec<(PeerId, Standing)>),
}

/// One entry of the active coordinator's replication stream (`ReplicationEntry`), in recording
/// order: the backups hold the leases too, so a worker's report follows a takeover.
#[derive(Clone, Debug)]
pub enum Streamed {
    /// An attestation it recorded, and its place in the log from 1 (what a held report answer
    /// waits for).
    Attestation(Recorded, u64),
    /// A lease it gave another peer: the task, the worker, the time left when it was sent (the
    /// backup counts it from when it receives the entry).
    Lease { task: TaskId, peer: PeerId, expires_in: Millis },
    /// A replica handed back to it.
    Release { task: TaskId, peer: PeerId, why: Release },
}

/// `MeshService.Adopt` as a host takes it: the sender's list, every attestation it recorded, the
/// tasks it failed by deadline misses (no attestation carries those), and whether it cancelled
/// the job. The driver checks the request's signatures and that its list names the sender and
/// this peer.
#[derive(Clone, Debug)]
pub struct Adopt {
    pub from: PeerId,
    pub job: JobId,
    pub coordinators: Vec<PeerId>,
    pub log: Vec<Recorded>,
    pub kind: AdoptKind,
    /// `(index, misses)` of each task failed by deadline misses there.
    pub timed_out: Vec<(u32, u32)>,
    pub cancelled: bool,
}

/// What an `Adopt` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdoptKind {
    /// Joining the list (a round of [`AdoptRound`](crate::peer::adoption::AdoptRound)).
    Join,
    /// Bringing a backup up to date with the whole job.
    CatchUp,
    /// Stepping down: the sender hands the job to the winner of two leaders.
    HandOver,
    /// Taking over: the new leader's whole job, answered with what the backup recorded that it
    /// lacks ([`crate::peer::takeover`]).
    Sync,
}

/// A message for one peer.
#[derive(Clone, Debug)]
pub enum Transmit {
    /// The answer to that worker's report batch `batch` (the driver's id for it), sent once a
    /// backup holds what it recorded, or the wait for one gave up.
    ReportAnswer { to: PeerId, batch: u64, accepted: u32, rejected: u32 },
    /// `MeshService.Replicate`: a batch of the stream to that backup. Its outcome comes back
    /// through [`Host::handle_replicated`](super::Host::handle_replicated).
    Replicate { to: PeerId, job: JobId, items: Vec<Streamed> },
    /// `MeshService.Adopt`: the whole job, the list it names and every attestation recorded. Its
    /// answer (or failure) comes back through [`Host::handle_adopted`](super::Host::handle_adopted).
    /// `shed`: the host let go of its log ([`Host::shed`](super::Host::shed)): `log` is empty
    /// and the driver sends the one its store keeps.
    Adopt { to: PeerId, job: JobId, coordinators: Vec<PeerId>, log: Vec<Logged>, kind: AdoptKind, shed: bool },
}

/// Something the driver acts on or counts.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// The coordinator emitted `event`; `leads` says whether this host was active then, `lone`
    /// whether a final task was decided by one attestation (adaptive replication).
    Coordinator { event: Event, leads: bool, lone: bool },
    /// Announce the job with [`Host::coordinators`](super::Host::coordinators) (`done` once it ended).
    Announce { done: bool },
    /// The peer's own slots should look for work (a lease lapsed, a replica came back, the
    /// role changed).
    Wake,
    /// This peer took the job over from a leader it holds dead.
    TookOver,
    /// This peer handed the job to `to`, which leads now.
    HandedOver { to: PeerId },
    /// A replication batch to a backup was given up; the backup will be caught up instead.
    ReplicationDropped,
}

/// What a host knows of the mesh when it looks at roles or picks new coordinators.
pub trait Members {
    /// Whether `peer` counts as live (see [`Roles::counts_as_live`](crate::peer::roles::Roles::counts_as_live)).
    fn is_live(&self, peer: &PeerId) -> bool;
    /// Live peers, this one included.
    fn live_peers(&self) -> usize;
    /// Members seen active, for whether membership had time to learn who is alive
    /// ([`Roles::ready`](crate::peer::roles::Roles::ready)).
    fn active_members(&self) -> usize;
    /// The live peers other than this one: candidates for the job's list.
    fn live(&self) -> Vec<PeerId>;
    /// Whether `peer` may coordinate: only peers others can dial do (an advert that says its
    /// peer is unreachable, or this peer's own finding about itself, says no). A coordinator
    /// that may not is left out of the role rules while another that may is live, and never
    /// chosen as a new one.
    fn may_coordinate(&self, _peer: &PeerId) -> bool {
        true
    }
}
