//! What goes in and out of a [`Work`](super::Work): the replicas it holds, the calls it makes,
//! what it tells its driver, and the peer's own jobs as it asks them.

use crate::peer::host::ReportItem;
use crate::{BlobId, JobId, Millis, PeerId, TaskId};

/// A leased replica on its way through this peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The task.
    pub task: TaskId,
    /// The coordinator it was leased from; `None` for this peer's own.
    pub coordinator: Option<PeerId>,
    /// When the lease lapses.
    pub expires_at: Millis,
    /// The job's wall deadline per replica.
    pub timeout_ms: u64,
    /// The job's module.
    pub module: BlobId,
}

/// A call to make.
#[derive(Clone, Debug)]
pub enum Transmit {
    /// `MeshService.Lease`: up to `max` replicas of `job`. Its answer comes back through
    /// [`Work::handle_leased`](super::Work::handle_leased) or [`Work::handle_lease_failed`](super::Work::handle_lease_failed).
    Lease { to: PeerId, job: JobId, max: u32 },
    /// `MeshService.Report`: a batch. Its answer comes back through [`Work::handle_report_sent`](super::Work::handle_report_sent).
    Report { to: PeerId, items: Vec<ReportItem> },
    /// `BlobService.Get` of a module. Its answer comes back through [`Work::handle_fetched`](super::Work::handle_fetched) or
    /// [`Work::handle_fetch_failed`](super::Work::handle_fetch_failed).
    Fetch { from: PeerId, module: BlobId },
}

/// Something the driver acts on or counts.
#[derive(Clone, Debug)]
pub enum Notice {
    /// Run it in a sandbox slot; its end comes back through [`Work::handle_ran`](super::Work::handle_ran).
    Run(Replica),
    /// The outcome of one of this peer's own replicas: for its own coordinator
    /// (`Host::record_own` / `Host::release_own`).
    Own(ReportItem),
    /// The number of replicas held changed (the advert's free slots).
    Held,
    /// A lease too close to lapsing was handed back.
    Stale,
    /// A report item was given up (its lease lapses at the coordinator).
    ReportDropped,
}

/// The jobs this peer coordinates itself, as the slot pass needs them.
pub trait Own {
    /// Whether this peer is `job`'s active coordinator (its slots do not ask for it).
    fn serves(&self, job: &JobId) -> bool;
    /// Up to `max` replicas leased from this peer's own active coordinator (with no
    /// coordinator named).
    fn lease(&mut self, max: usize, now: Millis) -> Vec<Replica>;
}

/// No job of its own.
pub struct NoOwn;

impl Own for NoOwn {
    fn serves(&self, _: &JobId) -> bool {
        false
    }
    fn lease(&mut self, _: usize, _: Millis) -> Vec<Replica> {
        Vec::new()
    }
}
