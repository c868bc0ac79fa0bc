//! The peer's protocol state behind one lock: the coordinator and what the sandbox needs of each
//! job. Every call into the coordinator drains its events here and turns them into store writes
//! and change notices, queued while the lock is held so that they land in the order the
//! coordinator made them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use spare_protocol::peer::host::{Write, verdict_write};
use spare_protocol::peer::outputs::PendingOutputs;
use spare_protocol::{Coordinator, Event, JobId, JobSpec, TaskId, Verdict};

use crate::store::{Op, StoredResult};

/// What a run needs of a job besides its coordinator spec.
#[derive(Clone, Debug)]
pub struct JobMeta {
    /// The spec as accepted.
    pub spec: JobSpec,
    /// argv[1..] of every task.
    pub args: Arc<Vec<String>>,
    /// Environment of every task.
    pub env: Arc<Vec<(String, String)>>,
    /// The peers coordinating it, the active one first. Change it with
    /// [`JobMeta::set_coordinators`].
    pub coordinators: Vec<spare_protocol::PeerId>,
    /// Every peer named as one of its coordinators since this peer has held it: a rival ad is
    /// settled only with one of these or the origin (see `heal.rs`).
    pub named: std::collections::BTreeSet<spare_protocol::PeerId>,
    /// Who submitted it here (its key), when this peer is its origin and still runs it: what
    /// the per-submitter bound counts.
    pub submitter: Option<spare_protocol::PeerId>,
    /// Bytes of its inputs counted against `submitter`'s bound (0 when it has none).
    pub input_bytes: u64,
    /// The submitter key that owns it: the only one that may cancel it (`None` for jobs from
    /// before owners).
    pub owner: Option<spare_protocol::PeerId>,
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
            coordinators: job.coordinators.clone(),
            named: job.coordinators.iter().copied().collect(),
            submitter: None,
            input_bytes: 0,
            owner: job.owner,
            content_digest: job.content_digest,
            nonce: job.nonce.clone(),
        }
    }

    /// A new list of coordinators; each is remembered as named.
    pub fn set_coordinators(&mut self, list: Vec<spare_protocol::PeerId>) {
        self.named.extend(list.iter().copied());
        self.coordinators = list;
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

/// The output and detail of the run whose attestation is being reported, so a verdict it decides
/// can keep the canonical output and say why (the protocol's, as `Hosts` uses it).
pub use spare_protocol::peer::host::Evidence;

/// The coordinator and job metadata.
pub struct Core {
    /// The sans-IO protocol state.
    pub coord: Coordinator,
    /// Jobs held, with what runs need.
    pub jobs: HashMap<JobId, JobMeta>,
    /// The outputs of attestations whose task is not final yet.
    pub outputs: PendingOutputs,
    /// Tasks final in the coordinator whose verdict's write is not durable yet: a status shows
    /// them as running, so it never shows a verdict a crash could take back. Only writes in
    /// flight are here; the announcer takes each out once its write is durable.
    pub undurable: HashSet<TaskId>,
}

impl Core {
    /// Whether `me` leads `job`: first of its coordinators, and not in standby.
    pub fn leads(&self, job: &JobId, me: &spare_protocol::PeerId) -> bool {
        self.jobs.get(job).is_some_and(|m| m.coordinators.first() == Some(me)) && !self.coord.is_standby(job)
    }

    /// Drains the coordinator's events into store writes and the changes to announce after them.
    pub fn drain(&mut self, evidence: Option<&Evidence<'_>>) -> (Vec<Op>, Vec<Change>) {
        let mut ops = Vec::new();
        let mut changes = Vec::new();
        while let Some(event) = self.coord.poll_event() {
            match event {
                Event::TaskFinal { task, verdict } => {
                    ops.push(Op::PutResult(task, self.result_of(&task, verdict, evidence)));
                    self.undurable.insert(task);
                    self.outputs.forget(&task);
                    changes.push(Change::TaskFinal(task));
                }
                Event::JobFinished { job, .. } => changes.push(Change::JobFinished(job)),
                Event::LeaseExpired { task, peer } => {
                    tracing::debug!(%task, peer = %peer.short(), "lease expired; replica back in the pool");
                }
            }
        }
        // Standings change with verdicts and lapses: stored with them, so they survive a restart.
        let standings = self.coord.take_changed_standings();
        if !standings.is_empty() {
            ops.push(Op::PutStandings(standings));
        }
        (ops, changes)
    }

    /// What the store keeps of a verdict, by the protocol's rule ([`verdict_write`]).
    fn result_of(&self, task: &TaskId, verdict: Verdict, evidence: Option<&Evidence<'_>>) -> StoredResult {
        let evidence: Vec<Evidence<'_>> = evidence.copied().into_iter().collect();
        match verdict_write(&self.coord, &self.outputs, *task, &verdict, &evidence) {
            Write::Verdict { verified_by, attestations, output, detail, .. } => {
                StoredResult { verdict, verified_by, output, message: detail.message, attestations, stderr: detail.stderr }
            }
            // verdict_write gives only verdicts.
            _ => StoredResult { verdict, verified_by: Vec::new(), output: Vec::new(), message: String::new(), attestations: 0, stderr: String::new() },
        }
    }
}

#[cfg(test)]
mod tests {
    use spare_protocol::{Attestation, BlobId, CoordinatorConfig, Outcome, PeerId, Policy, ResultKey};

    use super::*;

    /// Known gap 15, finding 8: a backup that completes a quorum with an attestation replayed
    /// without its output stores the bytes an agreeing one brought earlier, not nothing.
    #[test]
    fn a_verdict_completed_by_an_attestation_without_output_gets_an_earlier_ones_bytes() {
        let job = JobId([1; 32]);
        let spec = JobSpec {
            module: BlobId([3; 32]),
            task_count: 1,
            policy: Policy { quorum: 2, max_replicas: 3, ..Policy::default() },
            origin: PeerId([9; 32]),
            submitted_at_ms: 0,
            label: String::new(),
        };
        let mut core = Core { coord: Coordinator::new(CoordinatorConfig::default()), jobs: HashMap::new(), outputs: Default::default(), undurable: Default::default() };
        core.coord.submit(job, spec).expect("job accepted");
        while core.coord.poll_event().is_some() {}
        let task = TaskId { job, index: 0 };
        let result = ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(b"42\n") };
        let att = |peer: u8| Attestation { task, peer: PeerId([peer; 32]), result, fuel_used: 0, signature: vec![] };
        let detail = Detail::default();
        // The first comes with its output and decides nothing.
        core.coord.restore_attestation_lone(att(1), false).expect("recorded");
        core.outputs.keep(task, result.output_hash, b"42\n");
        let (ops, _) = core.drain(Some(&Evidence { att: &att(1), output: b"42\n", detail: &detail }));
        assert!(ops.is_empty(), "not final yet");
        // The second, replayed without its output, completes the quorum.
        core.coord.restore_attestation_lone(att(2), false).expect("recorded");
        let (ops, _) = core.drain(Some(&Evidence { att: &att(2), output: b"", detail: &detail }));
        let stored: Vec<&[u8]> = ops.iter().filter_map(|op| if let Op::PutResult(_, r) = op { Some(r.output.as_slice()) } else { None }).collect();
        assert_eq!(stored, vec![&b"42\n"[..]], "the verdict is stored with the agreed bytes");
        assert_eq!(core.outputs.bytes(), 0, "a final task's outputs are let go");
    }
}
