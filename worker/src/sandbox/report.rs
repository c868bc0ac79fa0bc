//! What goes into a run and what comes out: [`RunRequest`], [`RunReport`], [`RunOutcome`], and
//! where `prepare` found a module ([`Prepared`]).

use std::time::Duration;

use spare_protocol::{BlobId, Limits, Outcome, ResultKey};

use super::error::ModuleError;

/// How much of the end of a run's stderr is kept and travels with its attestation (for people:
/// why a task failed; never compared by a quorum): a [`Detail`](spare_protocol::Detail)'s bound.
pub const STDERR_TAIL_BYTES: usize = spare_protocol::detail::DETAIL_BYTES;

pub use spare_protocol::detail::tail_text;

/// One task to run.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// A module prepared on this sandbox.
    pub module: BlobId,
    /// stdin.
    pub input: Vec<u8>,
    /// argv after argv\[0\] (which is the module's hex id).
    pub args: Vec<String>,
    /// The environment, exactly.
    pub env: Vec<(String, String)>,
    /// Fuel (metered only below [`Limits::NO_FUEL_BUDGET`]), memory, wall deadline and stdout cap.
    pub limits: Limits,
    /// Seed of `random_get`: [`task_seed`](super::task_seed) of the task.
    pub seed: [u8; 32],
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// Deterministic: what a quorum compares. stdout is only meaningful for `Exited`.
    /// `message` says which trap or limit (for people; never compared).
    Done { outcome: Outcome, message: String },
    /// The wall deadline passed (epoch interruption). Not deterministic: never attested.
    Deadline,
    /// The module cannot run here (it should have been refused at submission).
    Invalid(ModuleError),
}

impl RunOutcome {
    /// The attestable outcome, if any.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            RunOutcome::Done { outcome, .. } => Some(*outcome),
            _ => None,
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    pub outcome: RunOutcome,
    /// stdout (up to `limits.output_bytes`).
    pub stdout: Vec<u8>,
    /// stderr (up to `stderr_bytes`).
    pub stderr: Vec<u8>,
    /// Fuel given minus fuel left (also on traps). Deterministic. 0 when the job set no fuel
    /// budget (its run was not metered).
    pub fuel_used: u64,
    /// Wall time of the run, for metrics (not deterministic).
    pub elapsed: Duration,
}

impl RunReport {
    /// What a quorum compares, for deterministic outcomes: the outcome and the BLAKE3 of stdout
    /// for `Exited`, of the empty string for every other outcome (their partial stdout is not
    /// part of the result). `None` for `Deadline` and `Invalid`.
    pub fn result_key(&self) -> Option<ResultKey> {
        let outcome = self.outcome.outcome()?;
        let output: &[u8] = if matches!(outcome, Outcome::Exited(_)) { &self.stdout } else { b"" };
        Some(ResultKey { outcome, output_hash: BlobId::of(output) })
    }
}

/// Where `prepare` found the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// Compiled now in this process (and written to the disk cache, if any).
    Compiled,
    /// Compiled now in a compiler process ([`SandboxConfig::compiler`](super::SandboxConfig::compiler)), and loaded from the
    /// disk cache it wrote.
    CompiledApart,
    /// Loaded from the disk cache.
    FromDisk,
    /// Already prepared in this sandbox.
    InMemory,
}
