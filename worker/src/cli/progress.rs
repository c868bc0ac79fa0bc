//! Following a job live until it ends (`submit --wait`, `status --watch`, `demo`): a bar on
//! stderr when it is a terminal, otherwise one line every few seconds, each with the tasks done,
//! the rate, an ETA and what the job waits for.
//!
//! Counting: the Watch stream's snapshot has counts, its `task_done` events have indices, and a
//! task that ends while the watch begins may be in both, so counts and events are never added.
//! Once the snapshot is in, the tasks final by then are read by index (a status with tasks);
//! a task is done once it is among those or had an event, and the count shown is the larger of
//! that set's size and the latest counts (a status asked for every few seconds): never a task
//! twice, never above the total, exact whenever the job fits one task list (100,000 tasks).

use std::collections::HashSet;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use spare_sdk::proto::{self, job_event::Event};
use spare_sdk::{Client, JobId, state_name};

use super::units::show_duration;

/// How often the counts and the job's note are asked for while following.
const REFRESH: Duration = Duration::from_secs(2);
/// How often a line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// A bar for `total` tasks, hidden when stderr is not a terminal or `quiet` is set.
pub fn bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tasks done {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Tasks of a job that reached a final state.
pub fn done(c: &proto::TaskCounts) -> u64 {
    u64::from(c.verified + c.failed + c.inconclusive)
}

/// What is known of a job while following it.
pub struct Progress {
    /// The latest status (counts, state, note).
    status: proto::JobStatus,
    /// Tasks known final: had a `task_done` event, or were final in the task list read after
    /// the snapshot.
    seen: HashSet<u32>,
    /// When following began, and how many tasks were done then (for the rate).
    since: Instant,
    done_at_start: Option<u64>,
}

impl Progress {
    fn new() -> Progress {
        Progress { status: proto::JobStatus::default(), seen: HashSet::new(), since: Instant::now(), done_at_start: None }
    }

    /// Takes a status (snapshot, refresh or end) as the latest counts.
    pub fn update(&mut self, status: proto::JobStatus) {
        let c = status.tasks.unwrap_or_default();
        self.done_at_start.get_or_insert(done(&c));
        self.status = status;
    }

    /// Counts a task's final event.
    pub fn task_done(&mut self, index: u32) {
        self.seen.insert(index);
    }

    /// Counts the final tasks of a status with its task list.
    pub fn final_tasks(&mut self, status: &proto::JobStatus) {
        let fin = status.task_list.iter().filter(|t| spare_sdk::is_task_final(t.state()));
        self.seen.extend(fin.map(|t| t.index));
    }

    /// Tasks in the job.
    pub fn total(&self) -> u64 {
        u64::from(self.status.tasks.unwrap_or_default().total)
    }

    /// Tasks done: never one twice, never more than the job has.
    pub fn done(&self) -> u64 {
        let counted = done(&self.status.tasks.unwrap_or_default());
        counted.max(self.seen.len() as u64).min(self.total())
    }

    /// Tasks done per second since following began, once some were.
    fn rate(&self) -> Option<f64> {
        let new = self.done().saturating_sub(self.done_at_start.unwrap_or(0));
        let secs = self.since.elapsed().as_secs_f64();
        (new > 0 && secs > 0.0).then(|| new as f64 / secs)
    }

    /// `running · 12.5 tasks/s · ETA 8s · 2 failed · waiting for more peers: …`
    pub fn summary(&self) -> String {
        let c = self.status.tasks.unwrap_or_default();
        let mut parts = vec![state_name(self.status.state()).to_string()];
        if let Some(rate) = self.rate() {
            parts.push(format!("{rate:.1} tasks/s"));
            let left = self.total().saturating_sub(self.done());
            if left > 0 {
                parts.push(format!("ETA {}", show_duration(Duration::from_secs_f64(left as f64 / rate))));
            }
        }
        if c.failed > 0 {
            parts.push(format!("{} failed", c.failed));
        }
        if c.inconclusive > 0 {
            parts.push(format!("{} inconclusive", c.inconclusive));
        }
        if !self.status.message.is_empty() {
            parts.push(self.status.message.clone());
        }
        parts.join(" · ")
    }
}

/// Shows progress on a bar, or as a line every [`LINE_EVERY`] (and when the note changes).
struct Shown<'a> {
    bar: &'a ProgressBar,
    lines: bool,
    last_line: Option<Instant>,
    last_note: String,
}

impl Shown<'_> {
    fn show(&mut self, p: &Progress, job: &JobId) {
        self.bar.set_length(p.total());
        self.bar.set_position(p.done());
        self.bar.set_message(format!("· {}", p.summary()));
        if !self.lines {
            return;
        }
        let note_changed = p.status.message != self.last_note;
        if note_changed || self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) {
            eprintln!("job {}: {}/{} tasks done · {}", job.short(), p.done(), p.total(), p.summary());
            self.last_line = Some(Instant::now());
            self.last_note = p.status.message.clone();
        }
    }
}

/// Follows the job until it ends and returns its final status. `bar` is drawn on a terminal;
/// with `lines`, a line goes to stderr every few seconds when the bar is hidden.
pub async fn follow(client: &Client, id: &JobId, bar: &ProgressBar, lines: bool) -> anyhow::Result<proto::JobStatus> {
    let err = |e: spare_sdk::Error| anyhow::anyhow!("{e}");
    let mut events = client.watch(id).await.map_err(err)?;
    let mut progress = Progress::new();
    let mut shown = Shown { bar, lines: lines && bar.is_hidden(), last_line: None, last_note: String::new() };
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh.tick().await; // the first tick is now: the snapshot covers it
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => break,
                Some(event) => match event.map_err(err)?.event {
                    Some(Event::Snapshot(s)) => {
                        progress.update(s);
                        // Which tasks the snapshot counted: their events may follow it.
                        let listed = client.status(id, true).await.map_err(err)?;
                        progress.final_tasks(&listed);
                    }
                    Some(Event::TaskDone(t)) => progress.task_done(t.index),
                    Some(Event::Finished(s)) => {
                        progress.update(s);
                        bar.finish_and_clear();
                        return Ok(progress.status);
                    }
                    None => {}
                },
            },
            _ = refresh.tick() => {
                // Counts, and what the job waits for, even when no task ends for a while.
                if let Ok(s) = client.status(id, false).await {
                    progress.update(s);
                }
                shown.show(&progress, id);
            }
        }
        if !shown.lines {
            shown.show(&progress, id);
        }
    }
    bar.finish_and_clear();
    let s = client.status(id, false).await.map_err(err)?;
    if spare_sdk::is_final(s.state()) {
        return Ok(s);
    }
    anyhow::bail!("lost the job's event stream before it ended; `spare status {id} --watch` follows it again")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(total: u32, verified: u32) -> proto::JobStatus {
        let tasks = proto::TaskCounts { total, verified, ..Default::default() };
        proto::JobStatus { tasks: Some(tasks), ..Default::default() }
    }

    /// The snapshot counted tasks 0..30; events then arrive for 25..100 (25..30 twice, as a
    /// watch that begins while they end gets them). Adding events to the snapshot's count
    /// (the old logic) would say 105/100.
    #[test]
    fn a_task_in_the_snapshot_and_an_event_counts_once() {
        let mut p = Progress::new();
        p.update(status(100, 30));
        let mut listed = status(100, 30);
        listed.task_list = (0..100)
            .map(|i| proto::TaskStatus {
                index: i,
                state: if i < 30 { proto::TaskState::Verified } else { proto::TaskState::Pending } as i32,
                ..Default::default()
            })
            .collect();
        p.final_tasks(&listed);
        assert_eq!(p.done(), 30);
        for i in 25..100 {
            p.task_done(i);
            assert!(p.done() <= 100, "{} done of 100 after task {i}", p.done());
        }
        assert_eq!(p.done(), 100);
        p.task_done(99);
        assert_eq!(p.done(), 100, "a repeated event counts once");
        // A refresh catches up when events lag behind.
        let mut p = Progress::new();
        p.update(status(100, 30));
        p.task_done(3);
        assert_eq!(p.done(), 30);
        p.update(status(100, 60));
        assert_eq!(p.done(), 60);
    }
}
