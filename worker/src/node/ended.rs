//! Ended jobs let go of their task tables (`Coordinator::shed`) once their end is durable, and
//! their tasks are read back from the store: a peer does not keep every task it ever
//! coordinated in memory (finding 9: each finished 200k-task job kept ~300 MB resident).

use spare_protocol::{Failure, JobId, TaskId, TaskView, Verdict};

use super::Node;
use crate::store::{StoreError, StoredResult};

/// A task's view, with its stored result when it has one.
pub type TaskRecord = (TaskView, Option<StoredResult>);

/// Stored results read per round when listing a shed job's tasks.
const READ_CHUNK: usize = 1024;

impl Node {
    /// Lets go of an ended job's task table; its end (and so every verdict) must be durable.
    pub(crate) fn shed(&self, job: &JobId) {
        let mut core = self.core();
        if core.hosts.shed(job)
            && let Some(meta) = core.jobs.get_mut(job)
        {
            // Only runs need them (up to 64 KiB a job), and no task of it runs again; an
            // adoption or catch-up reads them from the store.
            meta.args = Default::default();
            meta.env = Default::default();
        }
    }

    /// One task's view, from the coordinator or, once its job was shed, from the store; with its
    /// stored result when it has one (output left out).
    pub fn task_view(&self, task: &TaskId) -> Option<TaskRecord> {
        let policy = {
            let core = self.core();
            if !core.coord().is_shed(&task.job) {
                let view = core.coord().task(task)?;
                drop(core);
                let stored = if view.state.is_final() { self.store().result(task).ok().flatten() } else { None };
                return Some((view, stored));
            }
            core.coord().job(&task.job)?.spec.policy
        };
        let stored = self.store().result_heads(&task.job, task.index, 1).ok()?.into_iter().find(|(i, _)| *i == task.index).map(|(_, r)| r);
        Some(ended_view(*task, stored, &policy))
    }

    /// Views of tasks `0..n` of a shed job, from the store, with their stored results (outputs
    /// left out). `None` when the job is not shed (its coordinator holds the tasks).
    pub fn shed_task_views(&self, job: &JobId, n: u32) -> Option<Result<Vec<TaskRecord>, StoreError>> {
        let policy = {
            let core = self.core();
            if !core.coord().is_shed(job) {
                return None;
            }
            core.coord().job(job)?.spec.policy
        };
        let read = || {
            let mut rows = Vec::new();
            let mut from = 0;
            while from < n {
                let chunk = self.store().result_heads(job, from, READ_CHUNK)?;
                let Some(&(last, _)) = chunk.last() else { break };
                rows.extend(chunk.into_iter().filter(|(i, _)| *i < n));
                from = last.saturating_add(1);
            }
            // Tasks with no stored verdict (a cancelled job's undecided ones) show as pending.
            let mut rows = rows.into_iter().peekable();
            let views = (0..n)
                .map(|index| {
                    let stored = rows.next_if(|(i, _)| *i == index).map(|(_, r)| r);
                    ended_view(TaskId { job: *job, index }, stored, &policy)
                })
                .collect();
            Ok(views)
        };
        Some(read())
    }

    /// A job's tasks that failed by deadline misses, as (index, misses): from its coordinator
    /// or, once shed, from the store.
    pub(crate) fn timed_out_of(&self, job: &JobId) -> Vec<(u32, u32)> {
        if !self.core().coord().is_shed(job) {
            return self.core().coord().timed_out(job);
        }
        let mut out = Vec::new();
        let mut from = 0;
        while let Ok(rows) = self.store().result_heads(job, from, READ_CHUNK) {
            let Some(&(last, _)) = rows.last() else { break };
            out.extend(rows.into_iter().filter_map(|(i, r)| match r.verdict {
                Verdict::Failed(Failure::TimedOut(misses)) => Some((i, misses)),
                _ => None,
            }));
            match last.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        out
    }
}

fn ended_view(task: TaskId, stored: Option<StoredResult>, policy: &spare_protocol::Policy) -> TaskRecord {
    match stored {
        Some(r) => (TaskView::ended(task, r.verdict.clone(), r.verified_by.clone(), r.attestations, policy), Some(r)),
        None => (TaskView::ended(task, Verdict::Pending, Vec::new(), 0, policy), None),
    }
}
