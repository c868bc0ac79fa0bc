//! Counting a job's finished tasks while following it, each task once.
//!
//! A Watch stream starts with a snapshot (counts, no indices), then sends one event per task
//! that ends; a task that ends while the watch begins may be both in the snapshot's counts and
//! get an event. Adding events to the snapshot's count therefore over-counts (`126/100`).
//! [`ProgressCounter`] reads which tasks were final once the snapshot is in (a status with its
//! task list), then counts a task when it is among those or had an event, so no task is counted
//! twice; [`Client::watch_progress`] does it for you.

use std::collections::HashSet;

use futures::{Stream, StreamExt};

use crate::{Client, Event, JobId, JobStatus, Result, TaskCounts};

/// Tasks of a job that ended, out of all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Tasks that reached a final state (verified, failed or inconclusive).
    pub done: u64,
    /// Tasks in the job.
    pub total: u64,
}

/// Tasks of `counts` that reached a final state ([`TaskCounts::done`]).
pub fn tasks_done(counts: &TaskCounts) -> u64 {
    counts.done()
}

/// Counts a job's finished tasks from its statuses and Watch events, each task once.
///
/// ```
/// use spare_sdk::{JobStatus, ProgressCounter, TaskCounts, TaskState, TaskStatus, proto};
/// let wire = proto::JobStatus { job_id: "ab".repeat(32), ..Default::default() };
/// let mut snapshot = JobStatus::try_from(wire)?;
/// snapshot.tasks = TaskCounts { total: 3, verified: 1, ..Default::default() };
/// let mut counter = ProgressCounter::default();
/// counter.update(&snapshot);
/// // The status with tasks read after the snapshot: task 0 was already verified.
/// let task = |index, state| TaskStatus { index, state, ..Default::default() };
/// let listed = JobStatus {
///     task_list: vec![task(0, TaskState::Verified), task(1, TaskState::Running), task(2, TaskState::Pending)],
///     ..snapshot.clone()
/// };
/// counter.count_final(&listed);
/// counter.task_done(0); // its event came after the snapshot: still one task
/// counter.task_done(1);
/// assert_eq!(counter.progress().done, 2);
/// # Ok::<(), spare_sdk::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ProgressCounter {
    /// Finished tasks as the latest status counted them.
    counted: u64,
    total: u64,
    /// Tasks known finished by index.
    seen: HashSet<u32>,
}

impl ProgressCounter {
    /// Takes a status's counts (a snapshot, a fresh status, the final one).
    pub fn update(&mut self, status: &JobStatus) {
        self.counted = status.tasks.done();
        self.total = u64::from(status.tasks.total);
    }

    /// Counts the final tasks of a status that has its task list (`Client::status_with_tasks`).
    pub fn count_final(&mut self, status: &JobStatus) {
        self.update(status);
        let fin = status.task_list.iter().filter(|t| t.is_final());
        self.seen.extend(fin.map(|t| t.index));
    }

    /// Counts a task's final event; false when it was counted already.
    pub fn task_done(&mut self, index: u32) -> bool {
        self.seen.insert(index)
    }

    /// Tasks finished so far: never one twice, never more than the job has. Exact when the
    /// job fits one task list (100,000 tasks); a larger job's count is the larger of its
    /// latest counts and the tasks known by index.
    pub fn progress(&self) -> Progress {
        let done = self.counted.max(self.seen.len() as u64).min(self.total);
        Progress { done, total: self.total }
    }
}

impl Client {
    /// [`watch`](Self::watch), with the job's progress after each event, every task counted
    /// once (see [`ProgressCounter`]).
    ///
    /// ```no_run
    /// # async fn run(client: spare_sdk::Client, id: spare_sdk::JobId) -> spare_sdk::Result<()> {
    /// use futures::StreamExt;
    /// use spare_sdk::Event;
    /// let mut events = client.watch_progress(&id).await?;
    /// while let Some(item) = events.next().await {
    ///     let (event, p) = item?;
    ///     if let Event::TaskDone(task) = event {
    ///         println!("task {} done ({}/{})", task.index, p.done, p.total);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch_progress(
        &self,
        job: &JobId,
    ) -> Result<impl Stream<Item = Result<(Event, Progress)>> + Send + Unpin + 'static> {
        let events = self.watch(job).await?;
        let state = (events, ProgressCounter::default(), self.clone(), job.clone());
        let stream = futures::stream::unfold(state, |(mut events, mut counter, client, job)| async move {
            let item = match events.next().await? {
                Err(e) => Err(e),
                Ok(Event::Snapshot(s)) => {
                    counter.update(&s);
                    // Which tasks the snapshot counted: their events may follow it.
                    match client.status_with_tasks(&job).await {
                        Ok(listed) => {
                            counter.count_final(&listed);
                            Ok((Event::Snapshot(s), counter.progress()))
                        }
                        Err(e) => Err(e),
                    }
                }
                Ok(Event::TaskDone(t)) => {
                    counter.task_done(t.index);
                    Ok((Event::TaskDone(t), counter.progress()))
                }
                Ok(Event::Finished(s)) => {
                    counter.update(&s);
                    Ok((Event::Finished(s), counter.progress()))
                }
            };
            Some((item, (events, counter, client, job)))
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TaskState, TaskStatus, proto};

    fn status(total: u32, verified: u32) -> JobStatus {
        let wire = proto::JobStatus { job_id: "ab".repeat(32), ..Default::default() };
        let mut s = JobStatus::try_from(wire).expect("a valid id");
        s.tasks = TaskCounts { total, verified, ..Default::default() };
        s
    }

    /// The snapshot counted tasks 0..26; events then come for 0..100 (0..26 again, as a watch
    /// that begins while they end gets them). The old logic (the snapshot's count plus one per
    /// event) says 126/100.
    #[test]
    fn a_task_in_the_snapshot_and_an_event_counts_once() {
        let old = |snapshot: u64, events: u64| snapshot + events;
        assert_eq!(old(26, 100), 126, "what the example printed");
        let mut c = ProgressCounter::default();
        c.update(&status(100, 26));
        let mut listed = status(100, 26);
        listed.task_list = (0..100)
            .map(|i| TaskStatus {
                index: i,
                state: if i < 26 { TaskState::Verified } else { TaskState::Pending },
                ..Default::default()
            })
            .collect();
        c.count_final(&listed);
        for i in 0..100 {
            c.task_done(i);
            assert!(c.progress().done <= 100);
        }
        assert_eq!(c.progress(), Progress { done: 100, total: 100 });
        assert!(!c.task_done(42), "a repeated event counts once");
    }

    #[test]
    fn a_fresh_status_catches_up_when_events_lag() {
        let mut c = ProgressCounter::default();
        c.update(&status(100, 30));
        c.task_done(3);
        assert_eq!(c.progress().done, 30);
        c.update(&status(100, 60));
        assert_eq!(c.progress().done, 60);
    }
}
