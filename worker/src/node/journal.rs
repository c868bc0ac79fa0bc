//! The lines of the peer's log a person reads: one per job that ends here (how, and why when
//! it failed), and a one-line summary every [`SUMMARY_EVERY`] while there is work.

use std::time::Duration;

use spare_protocol::{JobId, JobState, Verdict};

use super::Node;

/// How often the summary line is written while tasks run (or ran since the last one).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// Results looked through for the first failure named in a failed job's line.
const FAILURE_SCAN: usize = 4096;

impl Node {
    /// Logs how a job ended, with the first failure's reason when it failed.
    pub(super) fn log_job_end(&self, job: &JobId) {
        let Some(v) = self.core().coord().job(job) else { return };
        let c = v.counts;
        let took = Duration::from_millis(super::unix_ms().saturating_sub(v.spec.submitted_at_ms));
        let took = humantime::format_duration(took);
        match v.state {
            JobState::Completed => tracing::info!(job = %job, "job completed: {} tasks verified in {took}", c.verified),
            JobState::Cancelled => tracing::info!(job = %job, "job cancelled: {} of {} tasks verified", c.verified, c.total),
            JobState::Failed => {
                let why = self.first_failure(job).unwrap_or_else(|| "no reason stored".into());
                tracing::info!(
                    job = %job,
                    "job failed: {} of {} tasks failed, {} inconclusive, {} verified; first: {why}",
                    c.failed, c.total, c.inconclusive, c.verified
                );
            }
            JobState::Queued | JobState::Running => {}
        }
    }

    /// The first failed or inconclusive task of a job, in words.
    fn first_failure(&self, job: &JobId) -> Option<String> {
        let rows = self.store().results(job, 0, FAILURE_SCAN).ok()?;
        rows.into_iter().find(|(_, r)| !matches!(r.verdict, Verdict::Verified(_))).map(|(index, r)| {
            let detail = if r.message.is_empty() { String::new() } else { format!(" ({})", r.message.lines().next().unwrap_or("")) };
            let what = match &r.verdict {
                Verdict::Failed(spare_protocol::Failure::Agreed(k)) => format!("failed, {}", k.outcome.describe()),
                Verdict::Failed(spare_protocol::Failure::TimedOut(n)) => format!("failed, {n} replicas missed the deadline"),
                Verdict::Inconclusive => "inconclusive, the replicas disagreed".into(),
                Verdict::Pending | Verdict::Verified(_) => "no verdict".into(),
            };
            format!("task {index} {what}{detail}")
        })
    }
}

/// Writes the summary line every [`SUMMARY_EVERY`] while there is work, until shutdown.
pub(super) async fn summaries(node: Node) {
    let mut stop = node.shutdown_signal();
    let mut last = node.metrics().runs();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SUMMARY_EVERY) => {}
            _ = stop.changed() => return,
        }
        let now = node.metrics().runs();
        let (ran, failed) = (now.0 - last.0, now.1 - last.1);
        last = now;
        let running = node.running();
        if ran == 0 && running == 0 {
            continue;
        }
        let paused = node.paused().map(|p| format!("; paused: {p}")).unwrap_or_default();
        tracing::info!(
            "summary: {running} tasks running, {ran} run in the last {} ({failed} did not succeed), {} run since start{paused}",
            humantime::format_duration(SUMMARY_EVERY),
            now.0
        );
    }
}

/// When the bootstrap peers are first said to be unreachable, after start.
pub const UNREACHABLE_FIRST: Duration = Duration::from_secs(2);
/// The longest gap between two such warnings.
pub const UNREACHABLE_MAX_GAP: Duration = Duration::from_secs(600);

/// A warning repeated with doubling gaps: due at `first`, then `first`·2, ·4… apart, at most
/// `max` apart.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
    gap: Duration,
    max: Duration,
}

impl Backoff {
    /// Due first at `first` (time since start).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, gap: first, max }
    }

    /// Whether the warning is due at `now` (since start); if so, the next one is set further.
    pub fn due(&mut self, now: Duration) -> bool {
        if now < self.next {
            return false;
        }
        self.gap = (self.gap * 2).min(self.max);
        self.next = now + self.gap;
        true
    }

    /// Starts over (the condition cleared), so a new outage is reported soon again.
    pub fn reset(&mut self, now: Duration, first: Duration) {
        self.gap = first;
        self.next = now + first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_come_with_doubling_gaps() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(2), s(16));
        let due: Vec<u64> = (0..60).filter(|t| b.due(s(*t))).collect();
        assert_eq!(due, vec![2, 6, 14, 30, 46], "gaps 4, 8, 16, then at most 16");
        b.reset(s(60), s(2));
        assert!(!b.due(s(61)) && b.due(s(62)));
    }
}
