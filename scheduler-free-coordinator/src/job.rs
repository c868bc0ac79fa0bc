//! A job's table: its spec, every task, the index of tasks that want more replicas, and counts
//! kept up to date as tasks change; and the index of live leases by peer, across jobs.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::task::{TaskEntry, needs_peers};
use crate::{BlobId, JobId, PeerId, Policy, TaskId, TaskState};

/// What the coordinator needs to know of a job (inputs and module bytes stay with the store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The WebAssembly module every task runs.
    pub module: BlobId,
    /// Number of tasks (inputs).
    pub task_count: u32,
    /// Quorum, replica bound, limits, priority.
    pub policy: Policy,
    /// The peer that accepted the submission.
    pub origin: PeerId,
    /// When the origin accepted it, Unix milliseconds.
    pub submitted_at_ms: u64,
    /// Free-form name.
    pub label: String,
}

/// Derives a JobId from the origin, a digest of the job's content (module, inputs, policy,
/// arguments) and a nonce, so the same content submitted twice makes two jobs.
pub fn derive_job_id(origin: &PeerId, content_digest: &[u8; 32], nonce: &[u8]) -> JobId {
    let mut h = blake3::Hasher::new_derive_key("spare.v1 job id");
    h.update(origin.as_bytes());
    h.update(content_digest);
    h.update(nonce);
    JobId(*h.finalize().as_bytes())
}

/// A job as status reports show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// No replica has started yet.
    Queued,
    /// Some task is not final.
    Running,
    /// Every task is verified.
    Completed,
    /// Every task is final and at least one failed or is inconclusive.
    Failed,
    /// Cancelled by the submitter.
    Cancelled,
}

impl JobState {
    /// Whether the job will change no more.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed | JobState::Cancelled)
    }
}

/// Task counts by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// All tasks.
    pub total: u32,
    /// Not final, no replica running.
    pub pending: u32,
    /// Not final, some replica running.
    pub running: u32,
    /// Verified.
    pub verified: u32,
    /// Inconclusive.
    pub inconclusive: u32,
    /// Failed.
    pub failed: u32,
}

/// A job as a status report shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    /// Its id.
    pub id: JobId,
    /// Its spec.
    pub spec: JobSpec,
    /// Where it stands.
    pub state: JobState,
    /// Its tasks by state.
    pub counts: TaskCounts,
    /// Why it waits, in words, when it waits on something outside it.
    pub message: Option<String>,
}

/// A task's place among those that want replicas: spot check first, then fewest replicas, then
/// (past the first replica) its block of task indices, then the keyed shuffle.
type OpenKey = (bool, u32, u32, u64, u32);

/// Tasks past their first replica are handed out a block of this many indices at a time.
pub const FURTHER_BLOCK: u32 = 256;

pub(crate) struct JobTable {
    pub spec: JobSpec,
    pub tasks: Vec<TaskEntry>,
    /// Tasks that want more replicas: spot checks of trusted peers first (adaptive replication:
    /// a trusted liar's lone lies are accepted until a check catches it, so checks must not
    /// wait), then fewest replicas first, then in an order peers cannot predict (a keyed
    /// shuffle), so colluders cannot arrange to pair up on a task. Further replicas are shuffled
    /// within blocks of [`FURTHER_BLOCK`] tasks: their verdicts, written as each task reaches
    /// its quorum, then land on a few pages of a store keyed by task instead of one page each.
    open: BTreeSet<OpenKey>,
    shuffle_key: u64,
    running: u32,
    verified: u32,
    inconclusive: u32,
    failed: u32,
    pub started: bool,
    pub cancelled: bool,
}

/// splitmix64: a cheap keyed permutation of task indices.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl JobTable {
    pub fn new(spec: JobSpec, shuffle_key: u64) -> JobTable {
        let n = spec.task_count;
        let mut t = JobTable {
            tasks: vec![TaskEntry::default(); n as usize],
            spec,
            open: BTreeSet::new(),
            shuffle_key,
            running: 0,
            verified: 0,
            inconclusive: 0,
            failed: 0,
            started: false,
            cancelled: false,
        };
        for i in 0..n {
            t.index(i);
        }
        t
    }

    fn key(&self, i: u32) -> OpenKey {
        let t = &self.tasks[i as usize];
        let load = t.load();
        // First replicas in one shuffle over the whole job; further ones block by block.
        let block = if load == 0 { 0 } else { i / FURTHER_BLOCK };
        (!t.check, load, block, mix(self.shuffle_key ^ u64::from(i)), i)
    }

    fn index(&mut self, i: u32) {
        if self.tasks[i as usize].wanted(&self.spec.policy) > 0 {
            let k = self.key(i);
            self.open.insert(k);
        }
    }

    /// Changes task `i` through `f`, keeping the open index and the counts true.
    /// Returns what `f` returned and whether the task just became final.
    pub fn mutate<R>(&mut self, i: u32, f: impl FnOnce(&mut TaskEntry, &Policy) -> R) -> (R, bool) {
        let k = self.key(i);
        self.open.remove(&k);
        let before = self.tasks[i as usize].state();
        let r = f(&mut self.tasks[i as usize], &self.spec.policy);
        self.tasks[i as usize].settle_lone();
        let after = self.tasks[i as usize].state();
        self.count(before, -1);
        self.count(after, 1);
        self.index(i);
        (r, !before.is_final() && after.is_final())
    }

    fn count(&mut self, s: TaskState, d: i32) {
        let c = match s {
            TaskState::Pending => return,
            TaskState::Running => &mut self.running,
            TaskState::Verified => &mut self.verified,
            TaskState::Inconclusive => &mut self.inconclusive,
            TaskState::Failed => &mut self.failed,
        };
        *c = c.wrapping_add_signed(d);
    }

    /// Up to `max` tasks that `peer` may take a replica of, most needed first: none it is
    /// involved in, nor any a peer `near` it (in its network) holds or ran a replica of.
    pub fn pick(&self, peer: &PeerId, max: usize, near: impl Fn(&PeerId) -> bool) -> Vec<u32> {
        self.open
            .iter()
            .filter(|&&(_, _, _, _, i)| {
                let t = &self.tasks[i as usize];
                !t.involves(peer) && !t.leases.iter().map(|(p, _)| p).chain(t.attestations.iter().map(|a| &a.peer)).any(&near)
            })
            .take(max)
            .map(|&(_, _, _, _, i)| i)
            .collect()
    }

    /// The job as a status report shows it.
    pub fn view(&self, id: JobId, live_peers: usize) -> JobView {
        let state = self.state();
        let q = self.spec.policy.quorum;
        let message = (!state.is_final() && q as usize > live_peers).then(|| needs_peers(q, live_peers));
        JobView { id, spec: self.spec.clone(), state, counts: self.counts(), message }
    }

    /// Whether the task table was let go (an ended job, see `Coordinator::shed`).
    pub fn shed(&self) -> bool {
        self.tasks.len() < self.spec.task_count as usize
    }

    /// Forgets which tasks want replicas (none do once the job has ended).
    pub fn clear_open(&mut self) {
        self.open = BTreeSet::new();
    }

    pub fn counts(&self) -> TaskCounts {
        let total = self.spec.task_count;
        let done = self.running + self.verified + self.inconclusive + self.failed;
        TaskCounts {
            total,
            pending: total.saturating_sub(done),
            running: self.running,
            verified: self.verified,
            inconclusive: self.inconclusive,
            failed: self.failed,
        }
    }

    pub fn state(&self) -> JobState {
        let c = self.counts();
        if self.cancelled {
            JobState::Cancelled
        } else if c.verified == c.total {
            JobState::Completed
        } else if c.verified + c.failed + c.inconclusive == c.total {
            JobState::Failed
        } else if self.started {
            JobState::Running
        } else {
            JobState::Queued
        }
    }
}

/// The tasks on which each peer holds a live lease, across jobs, so that a peer declared down is
/// released without scanning every task. Sets are ordered, so what comes out is deterministic.
#[derive(Debug, Default)]
pub(crate) struct LeaseIndex(HashMap<PeerId, BTreeSet<TaskId>>);

impl LeaseIndex {
    pub fn hold(&mut self, peer: PeerId, task: TaskId) {
        self.0.entry(peer).or_default().insert(task);
    }

    /// Every peer holding leases, with how many.
    pub fn holders(&self) -> impl Iterator<Item = (&PeerId, usize)> {
        self.0.iter().map(|(p, t)| (p, t.len()))
    }

    /// How many peers hold leases.
    pub fn holder_count(&self) -> usize {
        self.0.len()
    }

    pub fn unhold(&mut self, peer: &PeerId, task: &TaskId) {
        if let Some(set) = self.0.get_mut(peer) {
            set.remove(task);
            if set.is_empty() {
                self.0.remove(peer);
            }
        }
    }

    /// Changes task `task` of `job` through `f` (see [`JobTable::mutate`]), holding and unholding
    /// whichever leases `f` added or removed. `None` when the task does not exist.
    pub fn mutate<R>(
        &mut self,
        job: &mut JobTable,
        task: TaskId,
        f: impl FnOnce(&mut TaskEntry, &Policy) -> R,
    ) -> Option<(R, bool)> {
        let before: Vec<PeerId> = job.tasks.get(task.index as usize)?.leases.iter().map(|l| l.0).collect();
        let out = job.mutate(task.index, f);
        let after = &job.tasks[task.index as usize].leases;
        for p in &before {
            if !after.iter().any(|l| l.0 == *p) {
                self.unhold(p, &task);
            }
        }
        for (p, _) in after {
            if !before.contains(p) {
                self.hold(*p, task);
            }
        }
        Some(out)
    }

    /// Forgets every lease of `peer`, returning their tasks.
    pub fn take(&mut self, peer: &PeerId) -> BTreeSet<TaskId> {
        self.0.remove(peer).unwrap_or_default()
    }

    /// The tasks `peer` holds a lease on, in order.
    pub fn of(&self, peer: &PeerId) -> impl Iterator<Item = &TaskId> {
        self.0.get(peer).into_iter().flatten()
    }

    /// How many live leases `peer` holds.
    pub fn count(&self, peer: &PeerId) -> usize {
        self.0.get(peer).map_or(0, BTreeSet::len)
    }
}
