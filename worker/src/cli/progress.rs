//! Following a job live until it ends (`submit --wait`, `status --watch`, `demo`): a bar on
//! stderr when it is a terminal, otherwise one line every few seconds, each with the tasks done,
//! the rate, an ETA and what the job waits for.
//!
//! Counting is the SDK's [`ProgressCounter`]: a task in the Watch snapshot and in an event
//! counts once; a status asked for every few seconds keeps the counts and the note fresh.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use spare_sdk::{Client, Event, JobId, JobState, JobStatus, ProgressCounter, state_name};

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

pub use spare_sdk::tasks_done as done;

/// What is known of a job while following it.
struct Progress {
    /// The latest status (counts, state, note); none before the snapshot.
    status: Option<JobStatus>,
    /// Tasks done, each once.
    counter: ProgressCounter,
    /// When following began, and how many tasks were done then (for the rate).
    since: Instant,
    done_at_start: Option<u64>,
}

impl Progress {
    fn new() -> Progress {
        Progress { status: None, counter: ProgressCounter::default(), since: Instant::now(), done_at_start: None }
    }

    /// Takes a status (snapshot, refresh or end) as the latest counts.
    fn update(&mut self, status: JobStatus) {
        self.counter.update(&status);
        self.done_at_start.get_or_insert(self.counter.progress().done);
        self.status = Some(status);
    }

    /// What the job waits for, in words (empty when nothing).
    fn note(&self) -> &str {
        self.status.as_ref().map_or("", |s| s.message.as_str())
    }

    fn total(&self) -> u64 {
        self.counter.progress().total
    }

    fn done(&self) -> u64 {
        self.counter.progress().done
    }

    /// Tasks done per second since following began, once some were.
    fn rate(&self) -> Option<f64> {
        let new = self.done().saturating_sub(self.done_at_start.unwrap_or(0));
        let secs = self.since.elapsed().as_secs_f64();
        (new > 0 && secs > 0.0).then(|| new as f64 / secs)
    }

    /// `running · 12.5 tasks/s · ETA 8s · 2 failed · waiting for more peers: …`
    fn summary(&self) -> String {
        let c = self.status.as_ref().map(|s| s.tasks).unwrap_or_default();
        let state = self.status.as_ref().map_or(JobState::Unspecified, |s| s.state);
        let mut parts = vec![state_name(state).to_string()];
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
        if !self.note().is_empty() {
            parts.push(self.note().to_string());
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
        let note_changed = p.note() != self.last_note;
        if note_changed || self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) {
            eprintln!("job {}: {}/{} tasks done · {}", job.short(), p.done(), p.total(), p.summary());
            self.last_line = Some(Instant::now());
            self.last_note = p.note().to_string();
        }
    }
}

/// Follows the job until it ends and returns its final status. `bar` is drawn on a terminal;
/// with `lines`, a line goes to stderr every few seconds when the bar is hidden.
pub async fn follow(client: &Client, id: &JobId, bar: &ProgressBar, lines: bool) -> anyhow::Result<JobStatus> {
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
                Some(event) => match event.map_err(err)? {
                    Event::Snapshot(s) => {
                        progress.update(s);
                        // Which tasks the snapshot counted: their events may follow it.
                        let listed = client.status_with_tasks(id).await.map_err(err)?;
                        progress.counter.count_final(&listed);
                    }
                    Event::TaskDone(t) => {
                        progress.counter.task_done(t.index);
                    }
                    Event::Finished(s) => {
                        bar.finish_and_clear();
                        return Ok(s);
                    }
                },
            },
            _ = refresh.tick() => {
                // Counts, and what the job waits for, even when no task ends for a while.
                if let Ok(s) = client.status(id).await {
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
    let s = client.status(id).await.map_err(err)?;
    if s.is_final() {
        return Ok(s);
    }
    anyhow::bail!("lost the job's event stream before it ended; `spare status {id} --watch` follows it again")
}
