//! A task's result as the SDK hands it out: [`TaskResult`] and its [`Outcome`], typed rather
//! than the wire messages they come from (`proto::TaskResult`, `proto::Outcome`).

use std::borrow::Cow;

use crate::proto::{self, OutcomeKind};
use crate::{Reason, TaskState};

/// How a task's run ended, as the peers that decided it agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// It called `proc_exit` or returned from `_start` (code 0).
    Exited(i32),
    /// A WebAssembly trap: `unreachable` (a Rust panic), an out-of-bounds access, a stack
    /// overflow…
    Trapped,
    /// It used up its fuel (`--fuel`).
    OutOfFuel,
    /// It asked for more memory than its limit (`--memory`).
    MemoryLimit,
    /// It wrote more than its output limit (`--output-bytes`).
    OutputTooLarge,
    /// Its replicas kept missing the wall deadline (`--timeout`).
    Deadline,
    /// The module could not be run at all.
    InvalidModule,
}

impl Outcome {
    /// The outcome a wire message carries (`None` when the peer set none).
    pub fn from_proto(o: &proto::Outcome) -> Option<Outcome> {
        Some(match o.kind() {
            OutcomeKind::Exited => Outcome::Exited(o.exit_code),
            OutcomeKind::Trapped => Outcome::Trapped,
            OutcomeKind::OutOfFuel => Outcome::OutOfFuel,
            OutcomeKind::MemoryLimit => Outcome::MemoryLimit,
            OutcomeKind::OutputTooLarge => Outcome::OutputTooLarge,
            OutcomeKind::Deadline => Outcome::Deadline,
            OutcomeKind::InvalidModule => Outcome::InvalidModule,
            OutcomeKind::Unspecified => return None,
        })
    }

    /// Its kind on the wire (the exit code aside).
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Exited(_) => OutcomeKind::Exited,
            Outcome::Trapped => OutcomeKind::Trapped,
            Outcome::OutOfFuel => OutcomeKind::OutOfFuel,
            Outcome::MemoryLimit => OutcomeKind::MemoryLimit,
            Outcome::OutputTooLarge => OutcomeKind::OutputTooLarge,
            Outcome::Deadline => OutcomeKind::Deadline,
            Outcome::InvalidModule => OutcomeKind::InvalidModule,
        }
    }

    /// True for an exit with code 0.
    pub fn is_success(&self) -> bool {
        *self == Outcome::Exited(0)
    }
}

/// One task's final result.
///
/// ```
/// use spare_sdk::{Outcome, TaskResult, TaskState, proto};
/// let wire = proto::TaskResult {
///     index: 7,
///     state: TaskState::Failed as i32,
///     outcome: Some(proto::Outcome { kind: proto::OutcomeKind::Exited as i32, exit_code: 2, message: String::new() }),
///     stderr: "bad input: \"x y\"\n".into(),
///     ..Default::default()
/// };
/// let r = TaskResult::from(wire);
/// assert_eq!((r.index, r.state, r.outcome), (7, TaskState::Failed, Some(Outcome::Exited(2))));
/// assert!(!r.is_verified());
/// assert_eq!(r.reason().map(|why| why.to_string()).as_deref(), Some("exited 2: `bad input: \"x y\"`"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResult {
    /// The task's index in the job.
    pub index: u32,
    /// Verified, failed or inconclusive.
    pub state: TaskState,
    /// The verified stdout (empty unless verified).
    pub output: Vec<u8>,
    /// Hex BLAKE3 of the agreed output (empty for an inconclusive task).
    pub output_hash: String,
    /// How the agreed run ended (`None` for an inconclusive task).
    pub outcome: Option<Outcome>,
    /// The sandbox's note on it: which trap or which limit (empty for a plain exit).
    pub message: String,
    /// The tail of what the deciding run wrote to stderr (at most 4 KiB).
    pub stderr: String,
    /// Peers whose attestations make up the quorum (hex peer ids).
    pub verified_by: Vec<String>,
}

impl TaskResult {
    /// True when a quorum verified its output.
    pub fn is_verified(&self) -> bool {
        self.state == TaskState::Verified
    }

    /// The output as text (invalid UTF-8 replaced).
    pub fn output_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.output)
    }

    /// Why it has no verified result (`None` when it has one).
    pub fn reason(&self) -> Option<Reason> {
        (!self.is_verified()).then(|| Reason::of_result(self))
    }
}

impl From<proto::TaskResult> for TaskResult {
    fn from(r: proto::TaskResult) -> TaskResult {
        TaskResult {
            index: r.index,
            state: r.state(),
            outcome: r.outcome.as_ref().and_then(Outcome::from_proto),
            message: r.outcome.map(|o| o.message).unwrap_or_default(),
            output: r.output,
            output_hash: r.output_hash,
            stderr: r.stderr,
            verified_by: r.verified_by,
        }
    }
}
