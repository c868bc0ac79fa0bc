//! Why tasks failed, in words: one [`Reason`] per failed or inconclusive task (how it ended and
//! what it said on stderr), and [`Failures`], which groups tasks that failed for the same reason
//! so a job with 10,000 failed tasks reads as one line per cause, not one per task.

use std::collections::BTreeMap;
use std::fmt;

use crate::{Outcome, TaskResult, TaskState, TaskStatus};

/// Longest [`stderr_line`], in bytes (`TaskStatus.stderr_line` has the same bound).
pub const STDERR_LINE_BYTES: usize = 160;

/// The line of a task's stderr that says what went wrong: its last non-empty line, without
/// Rust's "note: run with `RUST_BACKTRACE=1`" hint, trimmed, at most [`STDERR_LINE_BYTES`].
///
/// ```
/// let tail = "thread 'main' panicked at src/main.rs:3:5:\nbad input: \"x y\"\n\
///             note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
/// assert_eq!(spare_sdk::stderr_line(tail), "bad input: \"x y\"");
/// ```
pub fn stderr_line(stderr: &str) -> &str {
    let line = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .unwrap_or("");
    let mut end = line.len().min(STDERR_LINE_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// Why one task has no verified result: how it ended, and its own words for it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reason {
    /// How it ended, as a past-tense phrase: `exited 2`, `trapped`, `ran out of fuel`…
    pub ended: String,
    /// The last line it wrote to stderr, or else the sandbox's note (which trap or limit);
    /// empty when there is neither.
    pub detail: String,
}

impl Reason {
    /// The reason of a task in a job's status (`spare status --tasks`, a Watch event).
    pub fn of_status(t: &TaskStatus) -> Reason {
        Reason::new(t.state, t.outcome, [&t.stderr_line, &t.message, &t.error])
    }

    /// The reason of a task's result (`spare results`).
    pub fn of_result(r: &TaskResult) -> Reason {
        Reason::new(r.state, r.outcome, [stderr_line(&r.stderr), &r.message, ""])
    }

    /// `details`: the first that is not blank is the detail.
    fn new(state: TaskState, outcome: Option<Outcome>, details: [&str; 3]) -> Reason {
        let ended = match (state, outcome) {
            (TaskState::Inconclusive, _) => "ended inconclusive".to_string(),
            (_, Some(o)) => ended(o),
            (state, None) => format!("ended {}", crate::task_state_name(state)),
        };
        let detail = details.into_iter().map(str::trim).find(|s| !s.is_empty()).unwrap_or("");
        Reason { ended, detail: detail.to_string() }
    }
}

/// How a run ended, as a past-tense phrase.
fn ended(o: Outcome) -> String {
    match o {
        Outcome::Exited(code) => format!("exited {code}"),
        Outcome::Trapped => "trapped".into(),
        Outcome::OutOfFuel => "ran out of fuel (raise --fuel)".into(),
        Outcome::MemoryLimit => "hit the memory limit (raise --memory)".into(),
        Outcome::OutputTooLarge => "wrote more output than allowed (raise --output-bytes)".into(),
        Outcome::Deadline => "kept missing the deadline (raise --timeout)".into(),
        Outcome::InvalidModule => "could not run the module".into(),
    }
}

impl fmt::Display for Reason {
    /// ``exited 2: `bad input` ``, or `trapped` when there is no detail; the detail is quoted
    /// in backticks unless it has its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            d if d.is_empty() => f.write_str(&self.ended),
            d if d.contains('`') => write!(f, "{}: {d}", self.ended),
            d => write!(f, "{}: `{d}`", self.ended),
        }
    }
}

/// Most task indices kept per reason (the count stays exact).
const INDICES_KEPT: usize = 5;

/// Failed tasks grouped by [`Reason`].
///
/// ```
/// use spare_sdk::{Failures, Reason};
/// let mut f = Failures::default();
/// for i in [3, 8, 9] {
///     f.add(Reason { ended: "exited 2".into(), detail: "bad input".into() }, i);
/// }
/// f.add(Reason { ended: "trapped".into(), detail: String::new() }, 5);
/// assert_eq!(f.lines(10), ["3 tasks exited 2: `bad input` (tasks 3, 8, 9)", "1 task trapped (task 5)"]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Failures {
    groups: BTreeMap<Reason, (u64, Vec<u32>)>,
}

impl Failures {
    /// Counts task `index` under `reason`.
    pub fn add(&mut self, reason: Reason, index: u32) {
        let (count, indices) = self.groups.entry(reason).or_default();
        *count += 1;
        if indices.len() < INDICES_KEPT {
            indices.push(index);
        }
    }

    /// Tasks counted.
    pub fn total(&self) -> u64 {
        self.groups.values().map(|(n, _)| n).sum()
    }

    /// True when no task was counted.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// One line per reason, the most frequent first, at most `max` of them (then one line
    /// counting the rest): `37 tasks exited 2: `bad input` (tasks 0, 4, 9, 12, 13, …)`.
    pub fn lines(&self, max: usize) -> Vec<String> {
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(b.0)));
        let mut out: Vec<String> = groups
            .iter()
            .take(max)
            .map(|(reason, (count, indices))| {
                let list: Vec<String> = indices.iter().map(u32::to_string).collect();
                let more = if *count > indices.len() as u64 { ", …" } else { "" };
                let tasks = if *count == 1 { "task" } else { "tasks" };
                format!("{count} {tasks} {reason} ({tasks} {}{more})", list.join(", "))
            })
            .collect();
        if groups.len() > max {
            let rest: u64 = groups[max..].iter().map(|(_, (n, _))| n).sum();
            out.push(format!("{rest} more tasks failed for {} other reasons", groups.len() - max));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_that_says_why() {
        assert_eq!(stderr_line(""), "");
        assert_eq!(stderr_line("one\n\n  two  \n\n"), "two");
        let long = "é".repeat(200);
        let line = stderr_line(&long);
        assert!(line.len() <= STDERR_LINE_BYTES && line.chars().all(|c| c == 'é'));
    }

    #[test]
    fn reasons_prefer_the_guests_words() {
        use crate::proto::{self, OutcomeKind};
        let t = TaskStatus {
            state: TaskState::Failed,
            outcome: Some(Outcome::Exited(2)),
            stderr_line: "bad input".into(),
            error: "exit 2".into(),
            ..Default::default()
        };
        assert_eq!(Reason::of_status(&t).to_string(), "exited 2: `bad input`");
        let t = TaskStatus { stderr_line: "LO is not a number: `x`".into(), ..t };
        assert_eq!(Reason::of_status(&t).to_string(), "exited 2: LO is not a number: `x`");
        let trapped = proto::Outcome { kind: OutcomeKind::Trapped as i32, exit_code: 0, message: "wasm trap: unreachable".into() };
        let r = proto::TaskResult { state: TaskState::Failed as i32, outcome: Some(trapped), ..Default::default() };
        assert_eq!(Reason::of_result(&r.into()).to_string(), "trapped: `wasm trap: unreachable`");
        let t = TaskStatus { state: TaskState::Inconclusive, error: "3 replicas gave no 2 agreeing results".into(), ..Default::default() };
        assert_eq!(Reason::of_status(&t).to_string(), "ended inconclusive: `3 replicas gave no 2 agreeing results`");
    }

    #[test]
    fn groups_by_reason_most_frequent_first() {
        let mut f = Failures::default();
        let r = |d: &str| Reason { ended: "exited 1".into(), detail: d.into() };
        for i in 0..40 {
            f.add(r("a"), i);
        }
        f.add(r("b"), 99);
        f.add(r("c"), 100);
        assert_eq!(f.total(), 42);
        assert_eq!(f.lines(1), ["40 tasks exited 1: `a` (tasks 0, 1, 2, 3, 4, …)", "2 more tasks failed for 2 other reasons"]);
    }
}
