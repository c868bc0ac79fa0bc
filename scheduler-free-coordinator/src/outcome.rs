//! What a replica produced, reduced to what a quorum compares: the outcome kind, the exit code
//! and the hash of stdout. Messages and timings are never compared.

use serde::{Deserialize, Serialize};

use crate::BlobId;

/// The deterministic result classes of running a task. A missed wall deadline is not among them:
/// it is not reproducible, so it releases the replica instead of being attested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Outcome {
    /// `_start` returned (code 0) or the module called `proc_exit(code)`.
    Exited(i32),
    /// A WebAssembly trap.
    Trapped,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The module asked for more memory than its limit.
    MemoryLimit,
    /// stdout passed its cap.
    OutputTooLarge,
}

impl Outcome {
    /// Whether this outcome is a success (exit code 0).
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }

    /// A short human name, as shown in status: `exit 0`, `trap`, `out of fuel`…
    pub fn describe(&self) -> String {
        match self {
            Outcome::Exited(c) => format!("exit {c}"),
            Outcome::Trapped => "trap".into(),
            Outcome::OutOfFuel => "out of fuel".into(),
            Outcome::MemoryLimit => "memory limit".into(),
            Outcome::OutputTooLarge => "output too large".into(),
        }
    }
}

/// What two replicas must share, bit for bit, to agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResultKey {
    /// How the run ended.
    pub outcome: Outcome,
    /// BLAKE3 of stdout (of the empty string when there is none).
    pub output_hash: BlobId,
}
