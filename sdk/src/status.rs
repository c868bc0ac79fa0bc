//! A job's status as the SDK hands it out: [`JobStatus`], its [`TaskCounts`] and
//! [`TaskStatus`]es, and the [`Event`]s of a watch, typed rather than the wire messages they come
//! from (`proto::JobStatus`, `proto::TaskStatus`, `proto::JobEvent`).

use crate::proto::{self, job_event};
use crate::{Error, JobId, JobState, Outcome, Reason, Result, TaskState, is_final};

/// A job's tasks by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TaskCounts {
    /// Tasks in the job.
    pub total: u32,
    /// Waiting for a replica to start, or for more peers to reach the quorum.
    pub pending: u32,
    /// At least one replica running.
    pub running: u32,
    /// A quorum agreed on an output with exit code 0.
    pub verified: u32,
    /// Replicas disagreed up to `max_replicas`.
    pub inconclusive: u32,
    /// A quorum agreed on a failure, or the task kept missing its deadline.
    pub failed: u32,
}

impl TaskCounts {
    /// Tasks that reached a final state (verified, failed or inconclusive).
    pub fn done(&self) -> u64 {
        u64::from(self.verified) + u64::from(self.failed) + u64::from(self.inconclusive)
    }
}

impl From<proto::TaskCounts> for TaskCounts {
    fn from(c: proto::TaskCounts) -> TaskCounts {
        TaskCounts {
            total: c.total,
            pending: c.pending,
            running: c.running,
            verified: c.verified,
            inconclusive: c.inconclusive,
            failed: c.failed,
        }
    }
}

/// One task in a job's status ([`Client::status_with_tasks`](crate::Client::status_with_tasks),
/// a watch's [`Event::TaskDone`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskStatus {
    /// The task's index in the job.
    pub index: u32,
    /// Where it stands.
    pub state: TaskState,
    /// Hex BLAKE3 of the agreed output (empty until decided).
    pub output_hash: String,
    /// Peers whose attestations make up the quorum (hex peer ids).
    pub verified_by: Vec<String>,
    /// How the agreed run ended, once there is one.
    pub outcome: Option<Outcome>,
    /// The sandbox's note on the outcome: which trap or which limit.
    pub message: String,
    /// Why the task failed or waits (empty otherwise).
    pub error: String,
    /// Attestations received so far, agreeing or not.
    pub attestations: u32,
    /// The verdict rests on one trusted peer's attestation alone (adaptive replication).
    pub lone: bool,
    /// For a failed or inconclusive task: the last line its deciding run wrote to stderr.
    pub stderr_line: String,
}

impl TaskStatus {
    /// True once it can no longer change: verified, inconclusive or failed.
    pub fn is_final(&self) -> bool {
        crate::is_task_final(self.state)
    }

    /// Why it has no verified result (`None` unless it failed or is inconclusive).
    pub fn reason(&self) -> Option<Reason> {
        matches!(self.state, TaskState::Failed | TaskState::Inconclusive).then(|| Reason::of_status(self))
    }
}

impl From<proto::TaskStatus> for TaskStatus {
    fn from(t: proto::TaskStatus) -> TaskStatus {
        TaskStatus {
            index: t.index,
            state: t.state(),
            outcome: t.outcome.as_ref().and_then(Outcome::from_proto),
            message: t.outcome.map(|o| o.message).unwrap_or_default(),
            output_hash: t.output_hash,
            verified_by: t.verified_by,
            error: t.error,
            attestations: t.attestations,
            lone: t.lone,
            stderr_line: t.stderr_line,
        }
    }
}

/// A job's status: its state, task counts, policy and what it waits for.
///
/// ```
/// use spare_sdk::{JobState, JobStatus, proto};
/// let wire = proto::JobStatus {
///     job_id: "ab".repeat(32),
///     state: JobState::Running as i32,
///     tasks: Some(proto::TaskCounts { total: 4, verified: 3, failed: 1, ..Default::default() }),
///     message: "waiting for more peers".into(),
///     ..Default::default()
/// };
/// let status = JobStatus::try_from(wire)?;
/// assert_eq!((status.state, status.tasks.done(), status.tasks.total), (JobState::Running, 4, 4));
/// assert!(!status.is_final() && status.has_failures());
/// # Ok::<(), spare_sdk::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobStatus {
    /// The job's id.
    pub job_id: JobId,
    /// Where it stands.
    pub state: JobState,
    /// Its tasks by state.
    pub tasks: TaskCounts,
    /// Every task, when asked for ([`Client::status_with_tasks`](crate::Client::status_with_tasks));
    /// empty otherwise.
    pub task_list: Vec<TaskStatus>,
    /// Its quorum, replicas, limits and priority, defaults filled in.
    pub policy: proto::Policy,
    /// Hex BLAKE3 of its module.
    pub module_id: String,
    /// Its free-form name.
    pub label: String,
    /// When the origin accepted it, in Unix milliseconds.
    pub submitted_at_ms: u64,
    /// Why it waits or failed, in words (e.g. "quorum 2 needs 2 distinct peers; 1 known").
    pub message: String,
    /// Peer id of the peer that accepted it.
    pub origin: String,
    /// Addresses of the peers coordinating it, the active one first.
    pub coordinators: Vec<String>,
    /// Hex key of the submitter that owns it (signed its Submit; the only key that may cancel
    /// it); empty for jobs accepted before jobs had owners.
    pub owner: String,
}

impl JobStatus {
    /// True for the states a job never leaves: completed, failed, cancelled.
    pub fn is_final(&self) -> bool {
        is_final(self.state)
    }

    /// Whether some task failed or was inconclusive.
    pub fn has_failures(&self) -> bool {
        self.tasks.failed + self.tasks.inconclusive > 0
    }

    /// Its failed tasks grouped by reason (empty without a task list).
    pub fn failures(&self) -> crate::Failures {
        let mut failures = crate::Failures::default();
        for t in &self.task_list {
            if let Some(why) = t.reason() {
                failures.add(why, t.index);
            }
        }
        failures
    }
}

impl TryFrom<proto::JobStatus> for JobStatus {
    type Error = Error;

    /// # Errors
    /// [`Error::Protocol`] when the job id is not one.
    fn try_from(s: proto::JobStatus) -> Result<JobStatus> {
        let state = s.state();
        let job_id = s
            .job_id
            .parse()
            .map_err(|_| Error::Protocol(format!("the peer sent a status with a malformed job id {:?}", s.job_id)))?;
        Ok(JobStatus {
            job_id,
            state,
            tasks: s.tasks.map(TaskCounts::from).unwrap_or_default(),
            task_list: s.task_list.into_iter().map(TaskStatus::from).collect(),
            policy: s.policy.unwrap_or_default(),
            module_id: s.module_id,
            label: s.label,
            submitted_at_ms: s.submitted_at_ms,
            message: s.message,
            origin: s.origin,
            coordinators: s.coordinators,
            owner: s.owner,
        })
    }
}

/// One step of a job's watch ([`Client::watch`](crate::Client::watch)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one event at a time; boxing would only add an allocation
pub enum Event {
    /// The job as it stands: always the first event, and again when the stream fell behind.
    /// A task that finishes while the watch begins may be counted here and also get a
    /// `TaskDone` ([`Client::watch_progress`](crate::Client::watch_progress) counts it once).
    Snapshot(JobStatus),
    /// One task reached a final state.
    TaskDone(TaskStatus),
    /// The job reached a final state; the stream ends after it.
    Finished(JobStatus),
}

impl Event {
    /// The event a wire message carries (`None` for an empty one).
    ///
    /// # Errors
    /// [`Error::Protocol`] for a status with a malformed job id.
    pub fn from_proto(e: proto::JobEvent) -> Result<Option<Event>> {
        Ok(match e.event {
            None => None,
            Some(job_event::Event::Snapshot(s)) => Some(Event::Snapshot(s.try_into()?)),
            Some(job_event::Event::TaskDone(t)) => Some(Event::TaskDone(t.into())),
            Some(job_event::Event::Finished(s)) => Some(Event::Finished(s.try_into()?)),
        })
    }
}
