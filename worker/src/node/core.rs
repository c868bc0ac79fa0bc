//! The peer's protocol state behind one lock: its coordinator side ([`Hosts`], the sans-IO
//! machine this peer drives, see `host.rs`), what the sandbox needs of each job, and what the
//! driver keeps beside them (report calls waiting for their answer, verdicts not yet durable).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use spare_protocol::peer::host::Hosts;
use spare_protocol::{Coordinator, JobId, JobSpec, Millis, PeerId, TaskId};
use tokio::sync::oneshot;

/// What a run needs of a job besides its coordinator spec.
#[derive(Clone, Debug)]
pub struct JobMeta {
    /// The spec as accepted.
    pub spec: JobSpec,
    /// argv[1..] of every task.
    pub args: Arc<Vec<String>>,
    /// Environment of every task.
    pub env: Arc<Vec<(String, String)>>,
    /// Who submitted it here (its key), when this peer is its origin and still runs it: what
    /// the per-submitter bound counts.
    pub submitter: Option<PeerId>,
    /// Bytes of its inputs counted against `submitter`'s bound (0 when it has none).
    pub input_bytes: u64,
    /// The submitter key that owns it: the only one that may cancel it (`None` for jobs from
    /// before owners).
    pub owner: Option<PeerId>,
    /// The digest of its content and the nonce its id was derived from, which its ads carry
    /// (the digest is `None` for jobs stored before it was kept).
    pub content_digest: Option<[u8; 32]>,
    /// See `content_digest`.
    pub nonce: Vec<u8>,
}

impl JobMeta {
    /// What a run and the coordinator need of a stored job.
    pub fn of(job: &crate::store::StoredJob) -> JobMeta {
        JobMeta {
            spec: job.spec.clone(),
            args: Arc::new(job.args.clone()),
            env: Arc::new(job.env.clone()),
            submitter: None,
            input_bytes: 0,
            owner: job.owner,
            content_digest: job.content_digest,
            nonce: job.nonce.clone(),
        }
    }
}

/// A change that watchers hear of, once it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A task reached its final verdict.
    TaskFinal(TaskId),
    /// A job ended (completed, failed or cancelled).
    JobFinished(JobId),
}

pub use spare_protocol::Detail;

/// A report call's answer: attestations accepted, and rejected.
pub type ReportAnswer = (u32, u32);

/// The coordinator side and job metadata.
pub struct Core {
    /// The sans-IO coordinator side of this peer, for every job it coordinates.
    pub hosts: Hosts,
    /// Jobs held, with what runs need.
    pub jobs: HashMap<JobId, JobMeta>,
    /// Tasks final in the coordinator whose verdict's write is not durable yet: a status shows
    /// them as running, so it never shows a verdict a crash could take back. Only writes in
    /// flight are here; each goes once its verdict's notice (after the write) comes out.
    pub undurable: HashSet<TaskId>,
    /// Report calls waiting for their answer, by the batch id given to [`Hosts::handle_report`].
    pub(crate) answers: HashMap<u64, oneshot::Sender<ReportAnswer>>,
    /// The last batch id given.
    batches: u64,
    /// When the host timer sleeps until (`None`: no timer armed).
    pub(crate) armed: Option<Millis>,
}

impl Core {
    /// The state of a peer with no job yet.
    pub fn new(hosts: Hosts) -> Core {
        Core { hosts, jobs: HashMap::new(), undurable: HashSet::new(), answers: HashMap::new(), batches: 0, armed: None }
    }

    /// The peer's coordinator (verdicts, tasks, reputation).
    pub fn coord(&self) -> &Coordinator {
        self.hosts.coordinator()
    }

    /// `job`'s coordinators as this peer holds them, the active one first (`None`: not held).
    pub fn coordinators(&self, job: &JobId) -> Option<&[PeerId]> {
        self.hosts.host(job).map(|h| h.coordinators())
    }

    /// Whether this peer leads `job`: first of its coordinators, and not in standby.
    pub fn leads(&self, job: &JobId) -> bool {
        self.hosts.leads(job)
    }

    /// A new report call waiting for `answer`: its batch id.
    pub(crate) fn await_report(&mut self, answer: oneshot::Sender<ReportAnswer>) -> u64 {
        self.batches += 1;
        self.answers.insert(self.batches, answer);
        self.batches
    }
}
